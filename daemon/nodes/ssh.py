"""Opening the one SSH exec channel a remote node's agent runs on.

~/.ssh/config of the daemon's user is honoured (HostName, User, Port, IdentityFile,
ProxyJump, UserKnownHostsFile); node entries in labq's config override it. Host keys are checked
against known_hosts and never accepted automatically.

labqd reads the ssh_config, key and known_hosts files with its own rights, and what goes wrong
ends up in `labq nodes`, which every user sees. So errors name the file and the kind of problem,
never a line of the file: paramiko's own exceptions quote lines (a parse error) or carry the
whole file (an unknown key type), and are never passed on.
"""
from __future__ import annotations

import base64
import getpass
import hashlib
import io
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry

CONNECT_TIMEOUT = 10.0
TEXT_MAX = 8 << 20  # ssh_config and known_hosts
KEY_MAX = 1 << 20

# paramiko logs known_hosts lines it skips, at INFO; labqd's log is no place for the lines of
# whatever file a node names
logging.getLogger("paramiko.hostkeys").setLevel(logging.WARNING)


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
    # identity_file given by labq's config: it must exist; IdentityFile entries of an SSH
    # config that do not exist are skipped, as ssh does
    identity_required: bool = False


def fingerprint(key: paramiko.PKey) -> str:
    """The key's fingerprint as `ssh-keygen -l` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _read(path: str, what: str, limit: int) -> bytes:
    """A regular file's bytes; O_NONBLOCK so that a FIFO cannot hang the node's link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise SshFailed(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SshFailed(f"cannot read {what} {path}: not a regular file")
        if st.st_size > limit:
            raise SshFailed(f"cannot read {what} {path}: larger than {limit >> 10} KiB")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(limit + 1)[:limit]
    except OSError as e:
        raise SshFailed(f"cannot read {what} {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _text(path: str, what: str) -> str:
    try:
        return _read(path, what, TEXT_MAX).decode()
    except UnicodeDecodeError:
        raise SshFailed(f"cannot read {what} {path}: not UTF-8 text") from None


def _ssh_config_entry(path: Path, host: str) -> dict:
    text = _text(str(path), "ssh_config")
    parsed = paramiko.SSHConfig()
    lineno = 0

    def lines():
        nonlocal lineno
        # the line number is kept outside so that a parse error can name it
        for lineno, line in enumerate(text.splitlines(), 1):  # noqa: B007
            yield line
    try:
        parsed.parse(lines())
    except Exception:
        raise SshFailed(f"cannot parse ssh_config {path} (line {lineno})") from None
    try:
        return parsed.lookup(host)
    except Exception as e:
        raise SshFailed(f"cannot use ssh_config {path} for host {host} "
                        f"({type(e).__name__})") from None


def resolve(host: str, *, port=None, user=None, identity_file=None, known_hosts=None,
            ssh_config: Path | None = None) -> Target:
    if ssh_config:
        entry = _ssh_config_entry(Path(ssh_config), host)
    else:
        default = Path.home() / ".ssh" / "config"
        entry = _ssh_config_entry(default, host) if default.exists() else {}
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
                  proxy_jump=None if jump in (None, "none") else jump,
                  identity_required=bool(identity_file))


def _load_host_keys(client: paramiko.SSHClient, path: str) -> None:
    """Like paramiko's load_host_keys, with errors that name the line, not its text."""
    if not os.path.exists(path):
        return
    keys = client.get_host_keys()
    for lineno, line in enumerate(_text(path, "known_hosts").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entry = HostKeyEntry.from_line(line, lineno)
        except paramiko.SSHException:
            continue  # a key paramiko cannot use: skipped, as paramiko's own loader does
        except Exception:  # InvalidHostKey carries the line
            raise SshFailed(f"cannot parse known_hosts {path} (line {lineno})") from None
        if entry is not None:  # None: a key type paramiko does not know, or too few fields
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)


def _load_key(path: str, required: bool) -> paramiko.PKey | None:
    if path.endswith("-cert.pub"):  # naming the certificate names its key too, as in ssh
        path = path[:-len("-cert.pub")]
    if not required and not os.path.exists(path):
        return None
    data = _read(path, "identity file", KEY_MAX)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise SshFailed(f"identity file {path} is not a private key") from None
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            key = cls.from_private_key(io.StringIO(text))
            break
        except paramiko.PasswordRequiredException:
            raise SshFailed(f"identity file {path} is protected by a passphrase; labqd needs "
                            "a key without one") from None
        except Exception:
            continue
    else:
        raise SshFailed(f"identity file {path} is not a private key labqd can use "
                        "(ed25519, ecdsa or rsa)")
    cert = path + "-cert.pub"
    if os.path.exists(cert):
        try:
            key.load_certificate(_text(cert, "certificate").strip())
        except SshFailed:
            raise
        except Exception:
            raise SshFailed(f"certificate {cert} does not fit identity file {path}") from None
    return key


def _split_jump(spec: str) -> tuple[str | None, str, int | None]:
    user, _, rest = spec.rpartition("@")
    host, _, port = rest.partition(":")
    return user or None, host, int(port) if port else None


class _Refuse(paramiko.MissingHostKeyPolicy):
    def __init__(self, target: Target):
        self.target = target

    def missing_host_key(self, client, hostname, key):
        t = self.target
        raise HostKeyRefused(
            f"host key of {t.hostname}:{t.port} ({key.get_name()} {fingerprint(key)}) is not "
            f"in {', '.join(t.known_hosts)}; refusing the node. Add it after checking its "
            f"fingerprint (ssh-keyscan -p {t.port} {t.hostname} | ssh-keygen -lf -)")


def _transport(sock, **kw) -> paramiko.Transport:
    """paramiko's transport, offering AES-GCM first: an AEAD cipher needs no separate MAC
    pass over each packet, which makes a loopback channel about a fifth faster (staged
    files, bursts of launches). The server still picks from the whole list."""
    t = paramiko.Transport(sock, **kw)
    opts = t.get_security_options()
    opts.ciphers = tuple(sorted(opts.ciphers, key=lambda c: "-gcm@" not in c))
    return t


def _authenticate(client: paramiko.SSHClient, target: Target, keys: list[paramiko.PKey],
                  sock) -> None:
    """Log in with the first key that works; the agent and ~/.ssh keys as paramiko does."""
    common = dict(port=target.port, username=target.user, sock=sock, timeout=CONNECT_TIMEOUT,
                  banner_timeout=CONNECT_TIMEOUT, auth_timeout=CONNECT_TIMEOUT,
                  allow_agent=True, look_for_keys=not target.identity_files,
                  transport_factory=_transport)
    try:
        client.connect(target.hostname, pkey=keys[0] if keys else None, **common)
        return
    except paramiko.AuthenticationException:
        if len(keys) < 2:
            raise
    # connect() leaves its transport open after a failed login: try the other keys on it
    transport = client.get_transport()
    for key in keys[1:]:
        try:
            transport.auth_publickey(target.user or getpass.getuser(), key)
            return
        except paramiko.AuthenticationException:
            continue
    raise paramiko.AuthenticationException("Authentication failed.")


def connect(target: Target, *, ssh_config: Path | None = None,
            _depth: int = 0) -> paramiko.SSHClient:
    if _depth > 4:
        raise SshFailed("ProxyJump chain longer than 4 hops")
    keys = [k for k in (_load_key(p, target.identity_required)
                        for p in target.identity_files) if k is not None]
    client = paramiko.SSHClient()
    for path in target.known_hosts:
        _load_host_keys(client, path)
    client.set_missing_host_key_policy(_Refuse(target))
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
    try:
        _authenticate(client, target, keys, sock)
    except HostKeyRefused:
        client.close()
        if jump_client is not None:
            jump_client.close()
        raise
    except paramiko.BadHostKeyException as e:
        client.close()
        if jump_client is not None:
            jump_client.close()
        raise HostKeyRefused(
            f"host key of {target.hostname}:{target.port} has CHANGED (got "
            f"{e.key.get_name()} {fingerprint(e.key)}); refusing the node. If the "
            f"change is expected, update {', '.join(target.known_hosts)}") from None
    except paramiko.SSHException as e:
        client.close()
        if jump_client is not None:
            jump_client.close()
        why = str(e)
        if why.startswith("Indecipherable protocol version"):
            why = "it does not answer as an SSH server"  # paramiko quotes what it did send
        raise SshFailed(f"ssh to {target.hostname}:{target.port} failed: {why}") from None
    except (TimeoutError, OSError, EOFError) as e:
        client.close()
        if jump_client is not None:
            jump_client.close()
        raise SshFailed(f"cannot connect to {target.hostname}:{target.port}: {e}") from None
    if jump_client is not None:
        client._labq_jump = jump_client  # keep the hop alive as long as the client
    return client
