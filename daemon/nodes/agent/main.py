"""Entry point: arguments, the directory, the lock, then serve."""
import json
import os
import pwd
import socket
import sys

from .cgroups import Containment, cg_destroy
from .files import Refused, is_dir, is_run_key, prepare_dir
from .server import Agent, remove_leftovers, take_lock

FLAGS = ("--no-root-jobs", "--from-socket")


def parse_args(argv):
    opts, i = {}, 0
    while i < len(argv):
        if argv[i] in FLAGS:
            opts[argv[i]] = True
            i += 1
        else:
            opts[argv[i]] = argv[i + 1] if i + 1 < len(argv) else ""
            i += 2
    return opts


def _names_from_stdin():
    """--from-socket: systemd started this agent on a connection from labqd, whose first line
    names the cluster and node. They become directory names, so only plain names pass."""
    try:
        first = json.loads(sys.stdin.buffer.readline(4096) or b"null")
        names = (first["cluster"], first["node"])
    except (ValueError, TypeError, KeyError):
        raise Refused("the first line must be {\"cluster\": ..., \"node\": ...}") from None
    for name in names:
        if not (isinstance(name, str) and 0 < len(name) <= 64 and name[0] not in ".-"
                and all(c.isalnum() and c.isascii() or c in "._-" for c in name)):
            raise Refused("bad cluster or node name %r" % (name,))
    return names


def main(argv=None):
    opts = parse_args(list(sys.argv[1:] if argv is None else argv))
    cluster = opts.get("--cluster", "default")
    node = opts.get("--node", socket.gethostname())
    try:
        if opts.get("--from-socket"):
            cluster, node = _names_from_stdin()
        directory = prepare_dir(opts.get("--root", "~/.local/state/labq-node"), cluster, node)
        if opts.get("--slurm"):
            from .slurm import slurm_version
            slurm_version()
    except (Refused, OSError) as e:
        sys.stdout.buffer.write((json.dumps({"ev": "refused", "error": str(e)}) + "\n").encode())
        sys.stdout.buffer.flush()
        raise SystemExit(3) from None
    if opts.get("--slurm"):
        # a Slurm pool's login host: Slurm contains the jobs, not this host's cgroups
        from .slurm import SlurmAgent
        agent = SlurmAgent(directory, cluster, node, json.loads(opts["--slurm"]),
                           Containment("slurm", "the cluster's own"),
                           bool(opts.get("--no-root-jobs")))
    else:
        containment = Containment.probe("labq-%s-%s" % (cluster, node),
                                        opts.get("--containment", "auto"))
        agent = Agent(directory, cluster, node, containment, bool(opts.get("--no-root-jobs")))
    containment = agent.containment
    agent.lock_fd = take_lock(agent.dir)
    remove_leftovers(agent.dir)
    runs = [n for n in os.listdir(agent.dir) if is_run_key(n) and is_dir(agent.jobdir(n))]
    for rec in containment.leftovers(runs):
        cg_destroy(rec)
    _load_name_services()
    agent.serve()


def _load_name_services():
    """Each shepherd looks up its job's account. Done once here, the name-service modules
    are loaded before the shepherds are forked, not once in each of them."""
    try:
        pw = pwd.getpwuid(os.getuid())
        os.getgrouplist(pw.pw_name, pw.pw_gid)
    except (KeyError, OSError):
        pass

