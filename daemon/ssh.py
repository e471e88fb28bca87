"""Opening the one SSH exec channel a remote node's agent runs on.

~/.ssh/config of the daemon's user is honoured (HostName, User, Port, IdentityFile,
ProxyJump, UserKnownHostsFile); node entries in labq's config override it. Host keys are checked
against known_hosts and never accepted automatically.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import paramiko

CONNECT_TIMEOUT = 10.0


class HostKeyRefused(Exception):
    """The node's host key is unknown or changed: an admin has to look."""


class SshFailed(Exception):
    """The node could not be reached or logged into; worth retrying."""


@dataclass
class Target:
    host: str
    hostname: str
    port: int
    user: str | None
    identity_files: list[str]
    known_hosts: list[str]
    proxy_jump: str | None


def resolve(host: str, *, port=None, user=None, identity_file=None, known_hosts=None,
            ssh_config: Path | None = None) -> Target:
    cfg_path = Path(ssh_config) if ssh_config else Path.home() / ".ssh" / "config"
    entry: dict = {}
    if cfg_path.exists():
        entry = paramiko.SSHConfig.from_path(str(cfg_path)).lookup(host)
    ids = [str(identity_file)] if identity_file else [
        os.path.expanduser(p) for p in entry.get("identityfile", [])]
    if known_hosts:
        kh = [str(known_hosts)]
    else:
        kh = [os.path.expanduser(p) for p in (entry.get("userknownhostsfile") or
                                               "~/.ssh/known_hosts").split()]
    jump = entry.get("proxyjump")
    return Target(host=host, hostname=entry.get("hostname", host),
                  port=int(port or entry.get("port", 22)), user=user or entry.get("user"),
                  identity_files=ids, known_hosts=kh,
                  proxy_jump=None if jump in (None, "none") else jump)


def _split_jump(spec: str) -> tuple[str | None, str, int | None]:
    user, _, rest = spec.rpartition("@")
    host, _, port = rest.partition(":")
    return user or None, host, int(port) if port else None


def connect(target: Target, *, ssh_config: Path | None = None,
            _depth: int = 0) -> paramiko.SSHClient:
    if _depth > 4:
        raise SshFailed("ProxyJump chain longer than 4 hops")
    sock = None
    jump_client = None
    if target.proxy_jump:
        first = target.proxy_jump.split(",")[0]
        juser, jhost, jport = _split_jump(first)
        jt = resolve(jhost, port=jport, user=juser, ssh_config=ssh_config)
        if "," in target.proxy_jump:
            jt.proxy_jump = target.proxy_jump.split(",", 1)[1]
        jump_client = connect(jt, ssh_config=ssh_config, _depth=_depth + 1)
        try:
            sock = jump_client.get_transport().open_channel(
                "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0))
        except Exception as e:
            jump_client.close()
            raise SshFailed(f"cannot reach {target.hostname}:{target.port} through "
                            f"{jhost}: {e}") from None
    client = paramiko.SSHClient()
    for path in target.known_hosts:
        if os.path.exists(path):
            client.load_host_keys(path)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(target.hostname, port=target.port, username=target.user,
                       key_filename=target.identity_files or None, sock=sock,
                       timeout=CONNECT_TIMEOUT, banner_timeout=CONNECT_TIMEOUT,
                       auth_timeout=CONNECT_TIMEOUT, allow_agent=True,
                       look_for_keys=not target.identity_files)
    except paramiko.BadHostKeyException as e:
        client.close()
        raise HostKeyRefused(
            f"host key of {target.hostname}:{target.port} has CHANGED (got "
            f"{e.key.get_name()} {e.key.get_fingerprint().hex()}); refusing the node. If the "
            f"change is expected, update {', '.join(target.known_hosts)}") from None
    except paramiko.SSHException as e:
        client.close()
        if "not found in known_hosts" in str(e):
            raise HostKeyRefused(
                f"host key of {target.hostname}:{target.port} is not in "
                f"{', '.join(target.known_hosts)}; refusing the node. Add it after checking "
                f"its fingerprint (ssh-keyscan -p {target.port} {target.hostname})") from None
        raise SshFailed(f"ssh to {target.hostname}:{target.port} failed: {e}") from None
    except (OSError, socket.timeout, EOFError) as e:
        client.close()
        raise SshFailed(f"cannot connect to {target.hostname}:{target.port}: {e}") from None
    if jump_client is not None:
        client._labq_jump = jump_client  # keep the hop alive as long as the client
    return client
