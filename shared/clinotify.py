"""`labq notify`: where your notifications go."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import Client


def add_parser(p: argparse.ArgumentParser) -> None:
    from .protocol import NOTIFY_CHANNELS  # its module is imported for this command only
    p.add_argument("action", choices=["show", "set", "unset"], nargs="?", default="show")
    p.add_argument("channel", nargs="?", choices=NOTIFY_CHANNELS)
    p.add_argument("value", nargs="?", help="set: the webhook URL or mail address")
    p.add_argument("--user", help="admins: another user's settings")


def cmd_notify(q: Client, a: argparse.Namespace) -> int:
    from .text import printable
    if a.action == "show":
        info = q.notify_settings(a.user)
    else:
        if a.channel is None or (a.action == "set") != (a.value is not None):
            raise SystemExit("labq: usage: labq notify set webhook|mail VALUE, or "
                             "labq notify unset webhook|mail")
        info = q.set_notify(a.channel, a.value, user=a.user)
    if a.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    enabled = info["channels"]
    print(printable(f"user:     {info['user']}"))
    print(printable(f"webhook:  {info['webhook'] or '-'}"
                    + ("" if "webhook" in enabled else "  (not enabled by the admin)")))
    print(printable(f"mail:     {info['mail_to'] or '-'}"
                    + ("" if "mail" in enabled else "  (not enabled by the admin)")))
    print(f"channels: {', '.join(enabled) or 'none (labqd has no [notify] config)'}")
    return 0


def warn_if_unheard(q: Client, when: str) -> None:
    """After a submit with --notify: the job is queued either way, but a user whose
    notifications reach nowhere is told so, once, rather than waiting for a message."""
    info = q.notify_settings()
    heard = [c for c in info["channels"]
             if c == "command" or (c == "webhook" and info["webhook"])
             or (c == "mail" and info["mail_to"])]
    if not heard:
        print(f"labq: note: --notify {when}: no notification will reach you; labqd has "
              + ("no channel enabled (ask its admin)" if not info["channels"] else
                 "webhooks only: labq notify set webhook URL"), file=sys.stderr)
