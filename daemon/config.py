"""labqd's configuration: TOML, checked key by key at start.

Every unknown key and bad value stops the daemon with the key's path and why; nothing is
silently ignored. The fully commented example lives in systemd/labq.toml.
"""
from __future__ import annotations

import grp
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labq.paths import daemon_socket, state_dir

from .configvalues import (
    ADDRESS,
    BOOL,
    DURATION,
    INT,
    LIST,
    MAP,
    MODE,
    NUM,
    ONE_OF,
    PATHV,
    RATE,
    SIZE_MB,
    STR,
    TABLE,
)
from .configvalues import (
    ConfigError as ConfigError,
)

GPU = TABLE({"type": STR, "memory_mb": INT(0, 1 << 24), "index": INT(0, 1023)},
            required=("type",))
NODE = TABLE({
    "name": STR, "host": STR, "port": INT(1, 65535), "user": STR, "identity_file": PATHV,
    "known_hosts": PATHV, "local": BOOL, "gpus": LIST(GPU), "gpu_indices": LIST(INT(0, 1023)),
    "cpus": INT(1, 1 << 16), "memory": SIZE_MB, "python": STR, "job_root": STR,
    "ssh_config": PATHV, "enabled": BOOL, "shared_account": BOOL, "agent_socket": PATHV,
    "scratch_root": STR, "kind": ONE_OF("host", "slurm"), "partition": STR, "account": STR,
    "qos": STR, "max_gpus": INT(0, 1 << 20), "max_jobs": INT(1, 1 << 20),
    "gpu_types": LIST(STR), "poll": DURATION, "sbatch_args": LIST(STR),
}, required=("name",), removed={
    "run_as_owner": "run_as_owner is gone: a node whose agent runs as root always runs jobs as "
                    "their owners; remove the key",
})
GROUP = TABLE({"share": NUM(0, 1e9), "max_gpus": INT(0, 1 << 20),
               "max_gpus_by_type": MAP(INT(0, 1 << 20)), "users": MAP(NUM(0, 1e9))})
# what the admin's notification command may name; see labq.daemon.channels
NOTIFY_FIELDS = ("id", "name", "user", "state", "exit_code", "node", "runtime")
NOTIFY = TABLE({
    "retry_base": DURATION, "retry_max": DURATION, "max_attempts": INT(1, 1000),
    "mail": TABLE({"sendmail": PATHV, "smtp_host": STR, "smtp_port": INT(1, 65535),
                   "starttls": BOOL, "ca_file": PATHV, "username": STR,
                   "password_file": PATHV, "from": STR,
                   "domain": STR, "timeout": DURATION}),
    "webhook": TABLE({"allow_hosts": LIST(STR), "timeout": DURATION},
                     required=("allow_hosts",)),
    "command": TABLE({"argv": LIST(STR), "timeout": DURATION}, required=("argv",)),
})
SCHEMA = TABLE({
    "daemon": TABLE({
        "socket": PATHV, "socket_mode": MODE, "socket_group": STR, "database": PATHV,
        "state_dir": PATHV, "admin_group": STR, "log_copy_max": SIZE_MB,
        "kill_grace": DURATION, "heartbeat": DURATION, "node_timeout": DURATION,
        "requeue_grace": DURATION, "local_node": BOOL, "log_level": ONE_OF(
            "debug", "info", "warning", "error"),
        "max_connections_per_user": INT(1, 1 << 16), "max_connections": INT(1, 1 << 20),
        "idle_timeout": DURATION, "listen": ADDRESS, "tls_cert": PATHV, "tls_key": PATHV,
        "results_max": SIZE_MB, "retention": DURATION, "node_keep": DURATION,
    }),
    "tokens": TABLE({"max_days": INT(1, 3660), "max_per_user": INT(1, 1000),
                     "failed_logins": RATE}),
    "metrics": TABLE({"listen": ADDRESS}),
    "scheduler": TABLE({
        "weight_age": NUM(0, 1e9), "weight_fairshare": NUM(0, 1e9),
        "weight_priority": NUM(0, 1e9), "weight_size": NUM(0, 1e9),
        "weight_short": NUM(0, 1e9), "short_step": NUM(0, 100), "max_age": DURATION,
        "default_time_limit": DURATION, "usage_half_life": DURATION,
        "cpu_weight": NUM(0, 1e6), "backfill": BOOL, "starved_first": BOOL,
        "starved_reservations": INT(1, 1 << 16),
        "preempt_max": INT(0, 1 << 20), "preempt_min_run": DURATION,
        "preempt_max_run": DURATION,
        "preempt_over_share": BOOL, "preempt_share_floor": NUM(0, 1),
        "interval": DURATION,
        "unsatisfiable_dependency": ONE_OF("cancel", "pend"),
    }),
    "limits": TABLE({
        "user_max_jobs": INT(0, 1 << 30), "user_max_gpus": INT(0, 1 << 30),
        "user_max_pending": INT(0, 1 << 30), "job_max_gpus": INT(0, 1 << 20),
        "job_max_time": DURATION, "partition_user_max_jobs": MAP(INT(0, 1 << 30)),
        "job_max_pids": INT(16, 1 << 22), "submit_rate": RATE, "user_max_storage": SIZE_MB,
        "job_max_stage": SIZE_MB,
    }),
    "groups": MAP(GROUP),
    "node": LIST(NODE),
    "notify": NOTIFY,
})


@dataclass
class NodeConfig:
    name: str
    local: bool = False
    host: str | None = None
    port: int | None = None
    user: str | None = None
    identity_file: Path | None = None
    known_hosts: Path | None = None
    ssh_config: Path | None = None
    gpus: list[dict] | None = None
    gpu_indices: list[int] | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    python: str = "python3"
    job_root: str = "~/.local/state/labq-node"
    enabled: bool = True
    # a non-root agent runs only its own account's jobs, unless this lets it run everyone's
    # as that account
    shared_account: bool = False
    # the socket of a root agent that systemd starts (local node only); labqd then connects
    # there instead of spawning the agent itself
    agent_socket: Path | None = None
    # where runs' scratch directories (staged files) go; default <job_root>/<cluster>/<node>/
    # scratch. A root agent's must be passable by every job's user.
    scratch_root: str | None = None
    # kind = "slurm": a Slurm cluster reached through this host (its login host), whose
    # jobs go in with sbatch; labq may have max_gpus GPUs and max_jobs jobs there at once
    kind: str = "host"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    max_gpus: int = 0
    max_jobs: int = 100
    gpu_types: list[str] = field(default_factory=list)
    poll_s: float = 2.0
    sbatch_args: list[str] = field(default_factory=list)

    def slurm_pool(self) -> dict:
        """What the pool's agent is told at start."""
        return {"partition": self.partition, "account": self.account, "qos": self.qos,
                "gpu_types": self.gpu_types, "poll_s": self.poll_s,
                "sbatch_args": self.sbatch_args}


@dataclass
class Config:
    socket: Path
    socket_mode: int
    socket_group: str | None
    database: Path
    state_dir: Path
    admin_group: str | None
    log_copy_max_bytes: int = 64 << 20
    kill_grace_s: int = 10
    heartbeat_s: int = 5
    node_timeout_s: int = 30
    requeue_grace_s: int = 60
    log_level: str = "info"
    max_connections_per_user: int = 64
    max_connections: int = 1024
    idle_timeout_s: int = 3600
    results_max_bytes: int = 1 << 30  # results kept per job
    retention_s: int | None = None  # files of jobs ended longer ago are removed
    node_keep_s: int = 86400  # a node keeps an ended run's scratch directory this long
    nodes: list[NodeConfig] = field(default_factory=list)
    scheduler: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, dict] = field(default_factory=dict)
    notify: dict[str, Any] = field(default_factory=dict)  # [notify], checked by _check_notify
    # remote access (off unless listen is set): TLS on TCP, callers known by their tokens
    listen: tuple[str, int] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tokens: dict[str, Any] = field(default_factory=dict)
    metrics_listen: tuple[str, int] | None = None
    source: Path | None = None
    # where files named by nodes added through the API must lie; see confine_node_paths()
    config_dir: Path | None = None

    @property
    def serves_others(self) -> bool:
        """Whether users other than labqd's own may connect to the socket."""
        return bool(self.socket_mode & 0o077)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError("", f"config file {path} does not exist") from None
    except OSError as e:  # unreadable, a directory, ...
        raise ConfigError("", f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{path} is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # its message gives line and column, not the text
        raise ConfigError("", f"{path} is not valid TOML: {e}") from None


def default_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "labq"


def load(path: Path | None) -> Config:
    """Read and check the config; `path` None means embedded defaults."""
    raw = _read_config(path) if path is not None else {}
    data = SCHEMA("", raw)
    d = data.get("daemon", {})
    sdir = d.get("state_dir") or (d["database"].parent if "database" in d else state_dir())
    cfg = Config(
        socket=d.get("socket") or daemon_socket(),
        socket_mode=_socket_mode(d),
        socket_group=d.get("socket_group"),
        database=d.get("database") or sdir / "labq.db",
        state_dir=sdir,
        admin_group=d.get("admin_group"),
        log_copy_max_bytes=d.get("log_copy_max", 64) << 20,
        kill_grace_s=d.get("kill_grace", 10),
        heartbeat_s=d.get("heartbeat", 5),
        node_timeout_s=d.get("node_timeout", 30),
        requeue_grace_s=d.get("requeue_grace", 60),
        log_level=d.get("log_level", "info"),
        max_connections_per_user=d.get("max_connections_per_user", 64),
        max_connections=d.get("max_connections", 1024),
        idle_timeout_s=max(1, d.get("idle_timeout", 3600)),
        results_max_bytes=d.get("results_max", 1024) << 20,
        retention_s=d.get("retention"), node_keep_s=d.get("node_keep", 86400),
        scheduler=data.get("scheduler", {}),
        limits=data.get("limits", {}),
        groups=data.get("groups", {}),
        notify=data.get("notify", {}),
        listen=d.get("listen"), tls_cert=d.get("tls_cert"), tls_key=d.get("tls_key"),
        tokens=data.get("tokens", {}), metrics_listen=data.get("metrics", {}).get("listen"),
        source=Path(path) if path else None,
        config_dir=(Path(os.path.realpath(path)).parent if path
                    else Path(os.path.realpath(default_config_dir()))),
    )
    _check_timing(d, cfg)
    if ("tls_cert" in d) != ("tls_key" in d):
        raise ConfigError("daemon.tls_key" if "tls_cert" in d else "daemon.tls_cert",
                          "give both tls_cert and tls_key, or neither (labqd then makes a "
                          "self-signed pair in its state directory)")
    _check_notify(cfg.notify)
    if cfg.scheduler.get("interval") == 0:
        raise ConfigError("scheduler.interval", "must be at least 1s (0 would make the "
                          "scheduler spin)")
    _add_nodes(cfg, data.get("node", []), d.get("local_node"))
    return cfg


def _add_nodes(cfg: Config, nodes: list[dict], local_node: bool | None) -> None:
    """The [[node]] entries, checked, and the local machine when `local_node` (by default:
    when there is no entry) asks for it and no entry is it."""
    seen: dict[str, int] = {}
    first_local = None
    for i, n in enumerate(nodes):
        where = f"node[{i}]"
        if n["name"] in seen:
            raise ConfigError(f"{where}.name", f"duplicate node name {n['name']!r}")
        seen[n["name"]] = i
        ncfg = node_config(n, where)
        if ncfg.local and ncfg.kind != "slurm":  # a local Slurm pool runs nothing here
            if first_local is not None:
                raise ConfigError(f"{where}.local", f"node[{first_local}] is the local machine "
                                  "already; there is one local node at most")
            if local_node is True:
                raise ConfigError("daemon.local_node", f"{where} ({ncfg.name}) is the local "
                                  "machine already; remove local_node or that entry")
            first_local = i
        check_node(ncfg, cfg, where)
        cfg.nodes.append(ncfg)
    if (not nodes if local_node is None else local_node) and first_local is None:
        cfg.nodes.insert(0, NodeConfig(name=socket.gethostname().split(".")[0] or "local",
                                       local=True))


def _socket_mode(d: dict) -> int:
    group = d.get("socket_group")
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise ConfigError("daemon.socket_group", f"there is no group {group!r} on this "
                              "machine") from None
    if "socket_mode" not in d:
        return 0o660 if group is not None else 0o600
    mode = d["socket_mode"]
    if group is None and mode & 0o070 and not mode & 0o007:
        # the socket would keep labqd's primary group, which nobody chose for this
        raise ConfigError("daemon.socket_mode", f"\"{mode:04o}\" opens the socket to a group, "
                          "but socket_group names none; set socket_group, or use \"0600\" "
                          "(labqd's user only) or \"0666\" (every local user)")
    if group is not None and not mode & 0o070:
        raise ConfigError("daemon.socket_mode", f"\"{mode:04o}\" keeps socket_group "
                          f"{group!r} out; give the group read and write (\"0660\")")
    # A world-accessible socket ("0666") is allowed when asked for: connecting grants nothing
    # by itself, labqd decides every request from the caller's uid (SO_PEERCRED) and bounds
    # what each uid may send. It is never a default, since it lets every local account reach
    # the API at all.
    return mode


LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _check_notify(n: dict) -> None:
    mail = n.get("mail")
    if mail is not None and ("sendmail" in mail) == ("smtp_host" in mail):
        raise ConfigError("notify.mail", "give either sendmail (the local MTA's sendmail "
                          "program) or smtp_host (a relay), one of them")
    if mail is not None and "password_file" in mail and "username" not in mail:
        raise ConfigError("notify.mail.password_file", "needs notify.mail.username")
    if mail is not None and "ca_file" in mail and not mail.get("starttls"):
        raise ConfigError("notify.mail.ca_file", "needs notify.mail.starttls = true")
    if (mail is not None and "username" in mail and not mail.get("starttls")
            and mail.get("smtp_host") not in LOOPBACK):
        raise ConfigError("notify.mail.username", "needs notify.mail.starttls = true: the "
                          "password would cross the network in clear")
    hosts = n.get("webhook", {}).get("allow_hosts", [])
    for i, h in enumerate(hosts):
        if not h or " " in h or "/" in h:
            raise ConfigError(f"notify.webhook.allow_hosts[{i}]", f"{h!r} is not a host name "
                              "(a name like hooks.slack.com, or *.example.org for its "
                              "subdomains)")
    cmd = n.get("command")
    if cmd is not None:
        if not cmd["argv"] or not os.path.isabs(cmd["argv"][0]):
            raise ConfigError("notify.command.argv", "must start with the program's absolute "
                              "path")
        for i, arg in enumerate(cmd["argv"]):
            for name in re.findall(r"\{([^{}]*)\}", arg):
                if name not in NOTIFY_FIELDS:
                    raise ConfigError(f"notify.command.argv[{i}]", f"unknown field {{{name}}}; "
                                      f"known: {', '.join('{' + f + '}' for f in NOTIFY_FIELDS)}")


def _check_timing(d: dict, cfg: Config) -> None:
    if cfg.heartbeat_s < 1:
        raise ConfigError("daemon.heartbeat", "must be at least 1s")
    if cfg.node_timeout_s < 2:
        raise ConfigError("daemon.node_timeout", "must be at least 2s")
    if cfg.heartbeat_s >= cfg.node_timeout_s:
        # every node would count as lost between two pings
        key = "daemon.heartbeat" if "heartbeat" in d else "daemon.node_timeout"
        raise ConfigError(key, f"heartbeat ({cfg.heartbeat_s}s) must be shorter than "
                          f"node_timeout ({cfg.node_timeout_s}s)")


def node_config(n: dict, where: str) -> NodeConfig:
    """A checked [[node]] entry (as NODE returns it) to a NodeConfig."""
    if not n.get("local") and "host" not in n:
        raise ConfigError(f"{where}.host", "is required unless local = true")
    if n.get("local") and any(k in n for k in ("host", "port", "user", "identity_file")):
        raise ConfigError(where, "a local node takes no host, port, user or identity_file")
    if "gpus" in n and "gpu_indices" in n:
        raise ConfigError(f"{where}.gpu_indices", "give either gpus (declare) or "
                          "gpu_indices (restrict detected GPUs), not both")
    if "agent_socket" in n:
        if not n.get("local"):
            raise ConfigError(f"{where}.agent_socket", "is for the local node only (local = "
                              "true); remote nodes are reached over SSH")
        if not n["agent_socket"].is_absolute():
            raise ConfigError(f"{where}.agent_socket", "must be an absolute path")
        if n.get("shared_account"):
            raise ConfigError(f"{where}.shared_account", "is for nodes whose agent is not "
                              "root; the agent on agent_socket runs as root and runs every "
                              "job as its owner")
    slurm_keys = ("partition", "account", "qos", "max_gpus", "max_jobs", "gpu_types", "poll",
                  "sbatch_args")
    if n.get("kind") != "slurm":
        for k in slurm_keys:
            if k in n:
                raise ConfigError(f"{where}.{k}", 'is for Slurm pools (kind = "slurm")')
    elif any(k in n for k in ("gpus", "gpu_indices", "agent_socket")):
        raise ConfigError(where, "a Slurm pool takes max_gpus and gpu_types, not gpus, "
                          "gpu_indices or agent_socket")
    return NodeConfig(
        kind=n.get("kind", "host"), partition=n.get("partition"), account=n.get("account"),
        qos=n.get("qos"), max_gpus=n.get("max_gpus", 0), max_jobs=n.get("max_jobs", 100),
        gpu_types=n.get("gpu_types", []), poll_s=n.get("poll", 2.0),
        sbatch_args=n.get("sbatch_args", []),
        name=n["name"], local=n.get("local", False), host=n.get("host"), port=n.get("port"),
        user=n.get("user"), identity_file=n.get("identity_file"),
        known_hosts=n.get("known_hosts"), ssh_config=n.get("ssh_config"),
        gpus=n.get("gpus"), gpu_indices=n.get("gpu_indices"), cpus=n.get("cpus"),
        memory_mb=n.get("memory"), python=n.get("python", "python3"),
        job_root=n.get("job_root", "~/.local/state/labq-node"),
        enabled=n.get("enabled", True), shared_account=n.get("shared_account", False),
        agent_socket=n.get("agent_socket"), scratch_root=n.get("scratch_root"))


def check_node(ncfg: NodeConfig, cfg: Config, where: str) -> None:
    """What a node may be given how labqd itself is set up."""
    if ncfg.local and ncfg.shared_account and ncfg.agent_socket is None and cfg.serves_others:
        # the local agent runs as labqd's own account, which holds labqd's database and keys:
        # other users' jobs must never run as it
        raise ConfigError(f"{where}.shared_account", "would run other users' jobs as labqd's "
                          "own account on the local node; give the local node a root agent "
                          "(agent_socket) instead")


NODE_FILE_KEYS = ("ssh_config", "identity_file", "known_hosts")


def confine_node_paths(ncfg: NodeConfig, config_dir: Path, where: str = "node") -> dict:
    """The files a node names, resolved, if they all lie inside labqd's config directory.

    labqd reads these files with its own rights; a node added through the API would otherwise
    let a non-root admin have it read any file it can (keys, /etc/shadow). The config directory
    is written only by whoever controls labqd anyway. Returns {key: resolved path}; using the
    resolved paths keeps a link swapped in later from redirecting labqd elsewhere.
    """
    base = Path(os.path.realpath(config_dir))
    out = {}
    for key in NODE_FILE_KEYS:
        given = getattr(ncfg, key)
        if given is None:
            continue
        real = Path(os.path.realpath(given))
        if real == base or not real.is_relative_to(base):
            raise ConfigError(f"{where}.{key}", f"a node added while labqd runs may name only "
                              f"files inside labqd's config directory {base}, after following "
                              f"links and '..' (got {str(given)!r})")
        out[key] = real
    return out


def find_config(cli_path: str | None) -> Path | None:
    if cli_path:
        return Path(cli_path)
    if os.environ.get("LABQ_CONFIG"):
        return Path(os.environ["LABQ_CONFIG"])
    return None
