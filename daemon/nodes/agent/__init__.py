"""The node agent: one stdlib-only program per node, speaking JSON lines on stdin/stdout.

labqd starts it over one SSH exec channel (remote nodes) or a pipe (the local machine). It
probes the node, launches jobs detached so they outlive the agent, the link and labqd, streams
their log bytes and exit records back, and on start reports what it finds in the job
directories. It must run on any python3 >= 3.8 without third-party packages (psutil and pynvml
are used when importable).

Job directory layout (<root>/<cluster>/<node>/<job id>.<run>/, run = the job's restart count,
so a requeued job never collides with what an earlier run left behind; keyed by node too, so
two node entries on one host never share a directory):
    spec.json   what to run          pid     {"pid", "pgid", "start", "shepherd", "uid"}
    log         stdout + stderr      exit    {"code", "signal", "reason", "end"} once ended
    stderr      "start end" lines: where in `log` the job's stderr is (see streams.py)
    cancel      asks the shepherd to stop the job ("cancel" or "timeout")
Every directory from <root> down is the agent's own, never a symlink, and closed to others
(checked at start; the agent refuses to run otherwise); the records are 0600. A job writes
its log only through the descriptor it inherits.

Each job has a shepherd: a process forked from the agent, in its own session, that spawns
the job (posix_spawn, or a fork with no Python in the child where the job's account differs)
in a new session (so its process group is its own), as the job owner's account and, where
the node allows, born in a cgroup of its own (memory and pids limits; killed whole); it
enforces the time limit, carries out cancel requests (SIGTERM, SIGKILL to all of the job
after the grace period) and writes the exit record. Because the shepherd, not the agent,
owns the job, the agent can die and come back freely.
"""
