"""The `labq` commands of remote access: `labq login` and `labq token create|list|revoke`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from .errors import DaemonUnavailable, LabqError
from .text import printable

if TYPE_CHECKING:
    from .client import Client


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def add_parsers(add: Any) -> None:
    """`add(name, fn, help, json_flag)` is labq.cli's; it returns the subparser."""
    p = add("login", cmd_login, "trust labqd at labq://HOST:PORT and keep your token for it "
            "in ~/.config/labq/remote.toml", json_flag=False)
    p.add_argument("url", help="labq://HOST[:PORT]")
    p.add_argument("--token", help="the token `labq token create` printed (default: "
                   "$LABQ_TOKEN)")
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--fingerprint", help="pin this SHA256:... fingerprint; refuse any other")
    trust.add_argument("--yes", "-y", action="store_true",
                       help="trust the fingerprint the server shows without asking")
    p = add("token", cmd_token, "tokens for labqd over TCP: create (printed once), list, "
            "revoke ID")
    p.add_argument("action", choices=["create", "list", "ls", "revoke"])
    p.add_argument("id", nargs="?", type=int, help="revoke: the token's id")
    p.add_argument("--user", "-u", help="create, list: another user's (admins)")
    p.add_argument("--days", type=int, help="create: valid this many days (default and "
                   "maximum: labqd's tokens.max_days)")
    p.add_argument("--note", help="create: what the token is for")


def cmd_token(q: Client, a: argparse.Namespace) -> int:
    if a.action == "create":
        info = q.create_token(user=a.user, days=a.days, note=a.note)
        if a.json:
            print(json.dumps(info, indent=2, sort_keys=True))
        else:
            print(info["token"])
            print(printable(f"token {info['id']} for {info['user']}, valid until "
                            f"{_when(info['expires'])}; it is shown only now"),
                  file=sys.stderr)
        return 0
    if a.action == "revoke":
        if a.id is None:
            raise SystemExit("labq: token revoke needs the token's id (labq token list)")
        info = q.revoke_token(a.id)
        print(json.dumps(info, indent=2, sort_keys=True) if a.json
              else f"revoked token {info['id']} of {printable(info['user'])}")
        return 0
    tokens = q.tokens(a.user)
    if a.json:
        print(json.dumps(tokens, indent=2, sort_keys=True))
        return 0
    now = time.time()
    rows = [[str(t["id"]), t["user"], _when(t["created"]), _when(t["expires"]),
             "revoked" if t["revoked"] else "expired" if t["expires"] <= now else "valid",
             _when(t["last_used"]), t["note"] or ""] for t in tokens]
    header = ["ID", "USER", "CREATED", "EXPIRES", "STATE", "LAST USED", "NOTE"]
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def cmd_login(a: argparse.Namespace) -> int:
    from . import remote
    from .client import Client
    url = a.url.rstrip("/")
    token = a.token or os.environ.get("LABQ_TOKEN")
    if not token:
        raise SystemExit("labq: login needs --token T (or LABQ_TOKEN): the token "
                         "`labq token create` printed on the head node")
    try:
        offered = remote.probe(url)
        pinned = _trust(url, offered, a)
        conn = Client(url, 30.0,
                      remote=remote.Remote.resolve(url, token, pinned))
        with conn:
            me = conn.whoami()
        path = remote.save(url, token, pinned)
    except LabqError as e:
        print(f"labq: {printable(e)}", file=sys.stderr)
        return 1
    print(printable(f"logged in to {url} as {me['user']}" + (" (admin)" if me["admin"] else "")
                    + f"; certificate {pinned} pinned; saved in {path}"))
    return 0


def _trust(url: str, offered: str, a: argparse.Namespace) -> str:
    """The fingerprint to pin: the one given, one pinned before, or the offered one once the
    user (or --yes) trusts it."""
    from . import remote
    if a.fingerprint:
        if a.fingerprint != offered:
            raise remote.mismatch(url, a.fingerprint, offered)
        return offered
    saved = ((remote.load_saved().get("servers") or {}).get(url) or {}).get("fingerprint")
    if saved and saved != offered:
        raise remote.mismatch(url, saved, offered)
    if saved or a.yes:
        return offered
    if not sys.stdin.isatty():
        raise DaemonUnavailable(
            f"the authenticity of labqd at {url} can't be established: its certificate's "
            f"fingerprint is {offered}. Check it with the admin (labqd logs it when it starts), "
            "then run again with --fingerprint " + offered + " (or --yes)",
            {"url": url, "fingerprint": offered})
    print(f"The authenticity of labqd at {url} can't be established.\n"
          f"Its certificate's fingerprint is {offered}.", file=sys.stderr)
    answer = input("Are you sure you want to trust it (yes/no)? ").strip().lower()
    if answer not in ("yes", "y"):
        raise DaemonUnavailable("not trusted; nothing was saved", {"url": url})
    return offered
