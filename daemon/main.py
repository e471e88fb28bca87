"""labqd: the daemon's entry point."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
import threading

from .config import ConfigError, find_config, load
from .notify import notify
from .watchdog import Watchdog

log = logging.getLogger("labqd")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="labqd", description="The labq daemon: queue, scheduler "
                                 "and node links, serving the labq API on a unix socket.")
    ap.add_argument("--config", help="TOML config file (default: $LABQ_CONFIG, else built-in "
                    "defaults: local machine as the only node)")
    ap.add_argument("--check-config", action="store_true",
                    help="check the config, print the effective settings and exit")
    args = ap.parse_args(argv)
    try:
        cfg = load(find_config(args.config))
    except ConfigError as e:
        print(f"labqd: config error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # peewee logs every statement at debug, and job reads and listings come from the database:
    # at debug level that would bury what labqd itself has to say
    logging.getLogger("peewee").setLevel(max(logging.INFO, logging.getLogger().level))
    if args.check_config:
        group = f", group {cfg.socket_group}" if cfg.socket_group else ""
        print(f"socket    {cfg.socket} (mode {cfg.socket_mode:04o}{group})\n"
              f"database  {cfg.database}\nstate dir {cfg.state_dir}\n"
              f"config dir {cfg.config_dir} (files of nodes added at run time live here)")
        for n in cfg.nodes:
            how = f" via {n.agent_socket}" if n.agent_socket else ""
            shared = " shared account" if n.shared_account else ""
            print(f"node      {n.name} ({'local' if n.local else n.host}){how}{shared}")
        return 0
    return run(cfg)


def run(cfg) -> int:
    from .core import Core
    from .scheduler import Scheduler
    from .server import AlreadyRunning, make_server
    # whatever umask labqd was started with, its database, log copies and keys are its own:
    # they hold every job's environment
    os.umask(0o077)
    store = open_store(cfg)
    if store is None:
        return 1
    core = Core(cfg, store)
    try:
        server = make_server(core)
    except (AlreadyRunning, OSError, KeyError) as e:
        log.error("cannot listen on %s: %s", cfg.socket, e)
        return 1
    watchdog = Watchdog(core)
    scheduler = Scheduler(core.jobs, core.nodes, core.fair,
                          watchdog.loop_wait(cfg.scheduler.get("interval", 5)), core.clock)
    scheduler.observers.append(watchdog.beat)
    servers = [server]
    stopping = stop_on_signals(servers)
    try:
        extra = start_listeners(core, scheduler)
    except (OSError, ValueError, ImportError) as e:
        log.error("cannot listen for remote clients or metrics: %s", e)
        server.close()
        return 1
    servers += extra
    if core.metrics is not None:
        core.metrics.servers = servers
    core.start()
    scheduler.start()
    core.wake.set()
    return serve(core, server, stopping)


def open_store(cfg):
    """The database, its directories made private first; None (and why, logged) if not."""
    from .store import ForeignDatabase, Store
    try:
        private_dirs(cfg)
        return Store(cfg.database)
    except ForeignDatabase as e:
        log.error("%s", e)
    except OSError as e:
        log.error("cannot open the database %s: %s", cfg.database, e)
    return None


def stop_on_signals(servers: list) -> threading.Event:
    """SIGTERM or SIGINT closes every server once; the Event says a stop was asked for."""
    stopping = threading.Event()

    def on_term(signum, frame):
        if not stopping.is_set():
            stopping.set()
            notify("STOPPING=1")
            log.info("stopping on signal %d; running jobs keep running on their nodes", signum)
            for s in servers:
                threading.Thread(target=s.close, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    return stopping


def serve(core, server, stopping: threading.Event) -> int:
    """Serve clients until a stop is asked for, then stop the parts and close the store."""
    cfg = core.cfg
    server._listen()  # accept from here on; READY=1 only once a client can connect
    log.info("labqd listening on %s (database %s, %d node(s))", cfg.socket, cfg.database,
             len(core.nodes.nodes))
    notify("READY=1")
    try:
        server.start()
        if not stopping.is_set():
            log.error("the server loop ended without a stop being asked for")
            return 1
    except Exception:
        log.exception("the server loop failed")
        return 1
    finally:
        core.stop()
        try:
            cfg.socket.unlink(missing_ok=True)
        except OSError:
            pass
        core.store.close()
        log.info("labqd stopped")
    return 0


def start_listeners(core, scheduler) -> list:
    """The TLS listener ([daemon] listen) and the metrics endpoint ([metrics] listen), each
    only when configured; returns the servers to close on stop."""
    cfg = core.cfg
    servers = []
    if cfg.metrics_listen is not None:
        from .metrics import Metrics
        core.metrics = Metrics(core)
        core.jobs.observers.append(core.metrics.changed)
        scheduler.observers.append(core.metrics.scheduled)
    if cfg.listen is not None:
        from .remote import start_tls_server
        tls = start_tls_server(core)
        servers.append(tls)
    if core.metrics is not None:
        core.metrics.serve(*cfg.metrics_listen)
    return servers


def private_dirs(cfg) -> None:
    """Create the state directories 0700; tighten the files of an older labqd, and say so."""
    for d in {cfg.state_dir, cfg.database.parent}:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    # only labqd's own directories: a database configured into a shared directory leaves
    # that directory's mode alone
    for path in [cfg.state_dir, cfg.state_dir / "logs"]:
        _tighten(path, 0o700)
    for suffix in ("", "-wal", "-shm"):
        _tighten(cfg.database.with_name(cfg.database.name + suffix), 0o600)
    logs = cfg.state_dir / "logs"
    if logs.is_dir():
        for f in logs.iterdir():
            _tighten(f, 0o600)


def _tighten(path, mode: int) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
        log.warning("%s was readable by others (mode %o); made it %o", path,
                    stat.S_IMODE(st.st_mode), mode)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, mode)


if __name__ == "__main__":
    sys.exit(main())
