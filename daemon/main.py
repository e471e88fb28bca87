"""labqd: the daemon's entry point."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .config import ConfigError, find_config, load
from .notify import notify

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
    from .store import ForeignDatabase, Store
    try:
        store = Store(cfg.database)
    except ForeignDatabase as e:
        log.error("%s", e)
        return 1
    except OSError as e:
        log.error("cannot open the database %s: %s", cfg.database, e)
        return 1
    core = Core(cfg, store)
    try:
        server = make_server(core)
    except (AlreadyRunning, OSError, KeyError) as e:
        log.error("cannot listen on %s: %s", cfg.socket, e)
        return 1
    scheduler = Scheduler(core, cfg.scheduler.get("interval", 5))
    stopping = threading.Event()

    def on_term(signum, frame):
        if not stopping.is_set():
            stopping.set()
            notify("STOPPING=1")
            log.info("stopping on signal %d; running jobs keep running on their nodes", signum)
            threading.Thread(target=server.close, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    core.start()
    scheduler.start()
    core.wake.set()
    server._listen()  # accept from here on; READY=1 only once a client can connect
    log.info("labqd listening on %s (database %s, %d node(s))", cfg.socket, cfg.database,
             len(core.nodes))
    notify("READY=1")
    try:
        server.start()
    finally:
        core.stop()
        try:
            cfg.socket.unlink(missing_ok=True)
        except OSError:
            pass
        store.close()
        log.info("labqd stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
