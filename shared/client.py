"""The one client library: the CLI, the TUI and users' scripts all talk to labqd through it."""
from __future__ import annotations

import json
import os
import time
from _thread import allocate_lock  # threading.Lock, without importing threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, cast

from . import protocol
from .calls import ClusterCalls, sends
from .connection import exported_env, open_socket
from .errors import DaemonUnavailable, InternalError, LabqError, ValidationError, from_wire
from .logcalls import REFUSED, LogCalls
from .models import Event, Job
from .protocol import PROTOCOL, Op, Request
from .spec import MAX_REQUEST_CHARS, submit_request
from .units import parse_duration_s

if TYPE_CHECKING:
    from pathlib import Path

    from .protocol import (
        ExperimentReply,
    )
    from .remote import Remote

def default_address() -> str | Path:
    """LABQ_URL, else LABQ_SOCKET, else the URL of the last `labq login`, else one's own
    daemon's socket or the system daemon's."""
    from .paths import client_socket
    if os.environ.get("LABQ_SOCKET") and not os.environ.get("LABQ_URL"):
        return os.environ["LABQ_SOCKET"]  # as text: the command then needs no pathlib
    if os.environ.get("LABQ_URL") or not os.environ.get("LABQ_SOCKET"):
        from .remote import default_url
        url = default_url()
        if url:
            return url
    return client_socket()


def connect(socket: str | os.PathLike[str] | None = None, timeout: float = 30.0, *,
            token: str | None = None, fingerprint: str | None = None) -> Client:
    """labqd on a unix socket (a path), or over TLS (a labq://HOST:PORT URL, with `token` and
    the certificate's `fingerprint`, else LABQ_TOKEN, LABQ_FINGERPRINT or what `labq login`
    saved); without either, default_address()."""
    where = default_address() if socket is None else socket
    if isinstance(where, str) and where.startswith("labq://"):
        from .remote import Remote
        return Client(where, timeout, remote=Remote.resolve(where, token, fingerprint))
    return Client(where, timeout)




class Client(ClusterCalls, LogCalls):
    """A connection to labqd. Thread-safe: calls are serialised on the one connection."""


    def __init__(self, socket_path: str | os.PathLike[str], timeout: float = 30.0, *,
                 remote: Remote | None = None) -> None:
        self._socket = os.fspath(socket_path)  # text: a command need not import pathlib
        self.remote = remote  # labqd over TLS; socket_path then only names it
        self.timeout = timeout
        self._lock = allocate_lock()
        self._connect()

    @property
    def socket_path(self) -> Path:
        from pathlib import Path
        return Path(self._socket)

    @property
    def where(self) -> str:
        return self.remote.url if self.remote is not None else self._socket

    def _connect(self) -> None:
        # rpyc's wire, spoken by labq.wire: a command need not import rpyc (see there)
        from .wire import Connection
        if self.remote is not None:
            from .remote import open_tls
            self._conn = Connection(open_tls(self.remote, self.timeout), self.timeout)
        else:
            self._conn = Connection(open_socket(self._socket), self.timeout)

    # -- plumbing --------------------------------------------------------------------------
    def reconnect(self, within: float = 30.0) -> None:
        """Connect again (after labqd restarted), trying for up to `within` seconds."""
        deadline = time.monotonic() + within
        delay = 0.1
        self._four_args = False  # it may be a newer labqd now
        with self._lock:
            try:
                self._conn.close()
            except Exception:
                pass
            while True:
                try:
                    self._connect()
                    return
                except DaemonUnavailable:
                    if time.monotonic() + delay > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(2.0, delay * 2)

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:
            pass

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _remote(self, method: str, *args: Any) -> Any:
        from .wire import RemoteError
        with self._lock:
            try:
                if self._conn.in_call:  # a call cut off by Ctrl-C left it out of step
                    self._conn.close()
                    self._connect()
                return self._conn.call(method, *args)
            except LabqError:
                raise
            except RemoteError as e:
                raise InternalError(f"{REFUSED}: {e}") from None
            except (EOFError, OSError) as e:  # WireError is an EOFError; timeouts are OSError
                raise DaemonUnavailable(f"lost the connection to labqd: {e or type(e).__name__}",
                                        {"socket": self.where}) from None

    def call(self, op: Op | str, **args: Any) -> Any:
        """Send one request by name with arguments as given, unchecked; return its result as
        it came (plain JSON values) or raise its error. The methods below are the typed way;
        this is for what they do not cover."""
        return self._send(op.value if isinstance(op, Op) else op, args)

    def request(self, req: Request) -> Any:
        """Send one typed request; return its reply as its type says (a Job, [Node]...)."""
        # the methods below cast this to the type their request's `reply` names
        return req.read_reply(self._send(req.op.value, req.to_wire()))

    def _send(self, op: str, args: dict[str, Any]) -> Any:
        args["protocol"] = PROTOCOL  # so a labqd that cannot serve this client says so
        text = json.dumps(args)  # ASCII: as many bytes as characters
        if len(text) > MAX_REQUEST_CHARS:
            # labqd would refuse it too, or drop the connection once it passes its frame cap
            raise ValidationError(f"the request is {len(text)} bytes, more than labqd takes "
                                  f"({MAX_REQUEST_CHARS})", {"field": "args_json"})
        reply = json.loads(self._remote("call", op, text))
        if not reply.get("ok"):
            raise from_wire(reply.get("error") or {})
        return reply.get("result")

    # -- jobs ------------------------------------------------------------------------------
    @sends(Op.SUBMIT)
    def submit(self, command: list[str] | tuple[str, ...] | str, *, gpus: int = 0,
               gpu_type: str | None = None, gpu_memory: int | str | None = None,
               cpus: int = 1, memory: int | str | None = None,
               time_limit: int | str | None = None, name: str | None = None,
               priority: int = 5, after: list[int | str] | tuple[int | str, ...] = (),
               cwd: str | None = None, env: dict[str, str] | None = None,
               export_env: bool = True, group: str | None = None,
               partition: str | None = None, hold: bool = False, requeue: bool = True,
               notify: str | None = None, experiment: str | None = None,
               key: str | None = None, stage: list[str] | str | None = None,
               results: list[str] | None = None, preemptible: bool = False,
               early_signal: str | None = None, nodes: int | None = None,
               gpus_per_node: int | None = None) -> Job:
        """Queue a command: an argv list, or a string run with `bash -c`.

        The job gets the caller's environment (minus session variables) unless export_env is
        False; `env` entries are added on top. Memory takes MiB or '16G'; time_limit takes
        seconds or '2h' / '1-00:00:00'; after takes ids (afterok), 'afterany:ID' or
        'exp:NAME' (every job of your experiment NAME). A `key` already used by one of your
        jobs is refused with DuplicateJob, whose details["id"] is that job. notify ('end',
        'fail' or 'all') tells the owner through the channels labqd's admin enabled.
        `nodes` (with `gpus_per_node`, or `gpus` as the total) makes a gang: one part on
        each of that many nodes, started together.
        """
        full_env = exported_env() if export_env else {}
        full_env.update(env or {})
        spec = submit_request(command, gpus=gpus, gpu_type=gpu_type, gpu_memory_mb=gpu_memory,
                              cpus=cpus, memory=memory, time_limit=time_limit, name=name,
                              priority=priority, after=after, cwd=cwd or os.getcwd(),
                              env=full_env, group=group, partition=partition, hold=hold,
                              requeue=requeue, notify=notify, experiment=experiment,
                              key=key, stage=self._upload(stage), results=results,
                              preemptible=preemptible, early_signal=early_signal,
                              nodes=nodes, gpus_per_node=gpus_per_node)
        job = cast(Job, self.request(protocol.SubmitRequest(spec=spec, echo_env=False)))
        job.env = dict(full_env)  # as labqd keeps it: what was sent
        return job

    def _upload(self, stage: list[str] | str | None) -> str | None:
        if not stage:
            return None
        from .client_files import upload
        return upload(self, stage)[0]

    @sends(Op.SUBMIT_ARRAY)
    def submit_array(self, command: list[str] | tuple[str, ...] | str, *,
                     array: str | None = None,
                     params: Mapping[str, Iterable[object]] | None = None,
                     max_running: int | None = None, **options: Any) -> list[Job]:
        """Queue an array (`array`: Slurm's '0-99', '1,3,5-7', '0-99:2', '%N' = at most N
        running) or a sweep (`params`: NAME -> values, one job per combination, `{NAME}` and
        `{index}` filled in the command). `options` are submit's. One job per task, in
        order; all queued or none."""
        export_env = options.pop("export_env", True)
        env = dict(exported_env() if export_env else {}, **(options.pop("env", None) or {}))
        gpu_memory = options.pop("gpu_memory", None)
        options["stage"] = self._upload(options.pop("stage", None))
        spec = submit_request(command, env=env, cwd=options.pop("cwd", None) or os.getcwd(),
                              gpu_memory_mb=gpu_memory, **options)
        grid = None if params is None else [[k, [str(v) for v in vals]]
                                            for k, vals in params.items()]
        return cast(list[Job], self.request(protocol.SubmitArrayRequest(
            spec=spec, array=array, params=grid, max_running=max_running)))

    def submit_script(self, script: str | os.PathLike[str], *args: str,
                      **overrides: Any) -> list[Job]:
        """Queue a batch script as sbatch does: `script` is a path, or the text itself when it
        starts with '#!'; `args` are its arguments. Its `#SBATCH` lines give the options and
        `overrides` (submit's, and `array`) win over them; each directive labq ignores is a
        `labq.sbatch.DirectiveWarning`. One job, or one per task of an array."""
        from .sbatch import submit_script
        return submit_script(self, script, args, overrides)

    @sends(Op.SUBMIT_MANY)
    def submit_many(self, specs: Iterable[Mapping[str, Any]], *,
                    export_env: bool = True) -> list[Job | LabqError]:
        """Queue many jobs in one request: every valid row in one transaction, the others
        refused. One result per row, in order: a Job, or the row's error (its code, message,
        and details["row"]). Rows take submit's options by their long names (`command` or
        `wrap`, `gpus`, `gpu_type`, `gpu_mem`, `cpus`, `mem`, `time`, `name`, `priority`,
        `after`, `group`, `experiment`, `key`, `env`, `hold`, ...)."""
        from .batchfile import plain_row, row_spec
        results: list[Job | LabqError | None] = []
        sent: list[dict[str, Any]] = []  # each distinct spec once
        rows: list[int] = []  # each row that was not refused here: its spec in `sent`
        where: list[int] = []  # and its place among the caller's rows
        seen: dict[str, int] = {}
        for i, row in enumerate(specs):
            # rows alike are sent once: a row of plain values is known by its repr
            key = repr(row) if plain_row(row) else None
            at = seen.get(key) if key is not None else None
            if at is None:
                try:
                    sent.append(row_spec(dict(row)))
                except LabqError as e:
                    e.details["row"] = i
                    results.append(e)
                    continue
                at = len(sent) - 1
                if key is not None:
                    seen[key] = at
            rows.append(at)
            where.append(i)
            results.append(None)
        if sent:
            defaults = {"env": exported_env() if export_env else {}, "cwd": os.getcwd()}
            replies = cast(list[Job | LabqError], self.request(
                protocol.SubmitManyRequest(specs=sent, defaults=defaults,
                                           rows=rows if len(rows) > len(sent) else None)))
            if len(replies) != len(rows):
                raise LabqError(f"labqd answered {len(replies)} of {len(rows)} rows: it is "
                                "older than this client; upgrade it", {"rows": len(rows)})
            for k, reply in enumerate(replies):
                if isinstance(reply, LabqError):
                    reply.details["row"] = where[k]
                results[where[k]] = reply
        return [r for r in results if r is not None]

    @sends(Op.EXPERIMENTS)
    def experiments(self, user: str | None = None) -> list[ExperimentReply]:
        """Each experiment (everyone's, or `user`'s): its jobs by state, first submit and
        last end."""
        return cast("list[ExperimentReply]", self.request(protocol.ExperimentsRequest(user=user)))

    @sends(Op.JOB)
    def job(self, job_id: int) -> Job:
        return cast(Job, self.request(protocol.JobRequest(id=job_id)))

    @sends(Op.JOBS)
    def jobs(self, *, states: list[str] | None = None, user: str | None = None,
             limit: int | None = None, after_id: int | None = None,
             changed_since: int | None = None, include_ended: bool = True,
             with_env: bool = False, experiment: str | None = None) -> list[Job]:
        """One page of jobs, oldest first: past `after_id` when given, else the newest
        `limit` (all without one). `changed_since=seq` gives the jobs changed after that
        Job.seq instead, in the order they changed. `env` is only filled with with_env=True
        (yours only); another user's command and environment are never listed."""
        return cast(list[Job], self.request(protocol.JobsRequest(
            states=states, user=user, limit=limit, after_id=after_id,
            changed_since=changed_since, include_ended=include_ended, with_env=with_env,
            experiment=experiment)))

    def iter_jobs(self, *, page: int = 500, states: list[str] | None = None,
                  user: str | None = None, include_ended: bool = True,
                  experiment: str | None = None) -> Iterator[list[Job]]:
        """Every job, oldest first, a page at a time: each job exactly once, also while jobs
        are being submitted (they come last)."""
        after = 0
        while True:
            jobs = self.jobs(states=states, user=user, limit=page, after_id=after,
                             include_ended=include_ended, experiment=experiment)
            if jobs:
                yield jobs
            if len(jobs) < page:
                return
            after = jobs[-1].id

    @sends(Op.EVENTS)
    def events(self, job_id: int) -> list[Event]:
        return cast(list[Event], self.request(protocol.EventsRequest(id=job_id)))

    @sends(Op.CANCEL)
    def cancel(self, *job_ids: int, reason: str | None = None,
               experiment: str | None = None, wait: bool = True) -> list[Job]:
        """Cancel jobs by id, or every active job of an experiment (yours; an admin's:
        anyone's). A running job is sent SIGTERM, then SIGKILL after the kill grace; with
        `wait` the reply comes once it has ended (or after the grace), without it at once."""
        return cast(list[Job], self.request(protocol.CancelRequest(
            ids=list(job_ids), reason=reason, experiment=experiment, wait=wait)))

    @sends(Op.HOLD)
    def hold(self, *job_ids: int, experiment: str | None = None) -> list[Job]:
        return cast(list[Job], self.request(protocol.HoldRequest(ids=list(job_ids),
                                                        experiment=experiment)))

    @sends(Op.RELEASE)
    def release(self, *job_ids: int, experiment: str | None = None) -> list[Job]:
        return cast(list[Job], self.request(protocol.ReleaseRequest(ids=list(job_ids),
                                                           experiment=experiment)))

    @sends(Op.WAIT)
    def wait(self, *job_ids: int, timeout: float | None = None,
             experiment: str | None = None) -> list[Job]:
        """Block until every job (or every job of an experiment) has ended; return them.
        Raises TimeoutError on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 10.0 if deadline is None else min(10.0, deadline - time.monotonic())
            jobs = cast(list[Job], self.request(protocol.WaitRequest(
                ids=list(job_ids), timeout=max(0.0, left), experiment=experiment)))
            if all(j.finished for j in jobs):
                return jobs
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"jobs still active after {timeout} s: "
                                   + " ".join(str(j.id) for j in jobs if not j.finished))

    @sends(Op.JOB_PRIORITY)
    def set_priority(self, job_id: int, priority: int) -> Job:
        """Change a pending or held job's priority (1-10); its owner may only lower it."""
        return cast(Job, self.request(protocol.JobPriorityRequest(id=job_id, priority=priority)))

    @sends(Op.JOB_TIME_LIMIT)
    def set_time_limit(self, job_id: int, time_limit: int | str) -> Job:
        """Change a pending or held job's time limit: seconds, or a duration such as "30m"
        or "1:30:00". Its owner may only lower it (and the priority); admins either way."""
        seconds = parse_duration_s(time_limit, "time_limit_s")
        return cast(Job, self.request(protocol.JobTimeLimitRequest(id=job_id,
                                                                   time_limit_s=seconds)))

    # -- run: submit, follow, wait, as srun does -----------------------------------------
    def run(self, command: list[str] | tuple[str, ...] | str, *,
            stdout: IO[Any] | None = None, stderr: IO[Any] | None = None,
            **options: Any) -> Job:
        """Submit `command` with submit's options, write its stdout to `stdout` (default
        sys.stdout) and its stderr to `stderr` (default sys.stderr) while it runs, and
        return the job once it has ended.

        Ctrl-C (KeyboardInterrupt) cancels the job and goes on following it to its end; a
        second one raises `labq.Detached`, and the job ends without anyone waiting."""
        from .follow import InterruptsRecorded
        with InterruptsRecorded() as interrupts:
            job = self.submit(command, **options)
        return self.attach(job.id, stdout=stdout, stderr=stderr,
                           interrupted=interrupts.count > 0)

    def attach(self, job_id: int, *, stdout: IO[Any] | None = None,
               stderr: IO[Any] | None = None, offset: int = 0, interrupted: bool = False,
               on_interrupt: Callable[[int], None] | None = None, poll: float = 5.0) -> Job:
        """Follow a job's output into `stdout` and `stderr` from `offset` until it has
        ended; return the ended job. Ctrl-C as in `run`; `interrupted` says one came
        already, so the job is cancelled first; `on_interrupt(job_id)` is called before each
        cancel is sent."""
        from .follow import attach
        return attach(self, job_id, stdout=stdout, stderr=stderr, offset=offset,
                      interrupted=interrupted, on_interrupt=on_interrupt, poll=poll)

    # -- results ---------------------------------------------------------------------------
    def download_results(self, job_id: int, path: str | os.PathLike[str], *,
                         extract: bool = False) -> list[list[Any]]:
        """Save a job's results as a zip archive at `path`, or with extract=True as files
        under the directory `path`; return [path, size] of each file."""
        from .client_files import save_dir, save_zip
        return (save_dir if extract else save_zip)(self, job_id, path)
