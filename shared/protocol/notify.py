"""Requests about where one's job notifications go."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Self

from ..spec import MAX_IDENT
from .args import arg_error, check_text

if TYPE_CHECKING:
    pass

from .base import NotifySettingsReply, Op, Request

# -- notifications ----------------------------------------------------------------------------
NOTIFY_CHANNELS = ("webhook", "mail")  # the ones a user sets; the admin's command is not theirs
MAX_URL = 2048
MAX_MAIL = 254  # RFC 5321's longest path
_MAIL = re.compile(r"[^@\s\x00-\x1f\x7f<>(),;:\"\[\]]+@[A-Za-z0-9.-]+")


class NotifyShowRequest(Request, op=Op.NOTIFY_SHOW, reply=NotifySettingsReply):
    """One's own notification settings; admins may name another user."""
    user: str | None = None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(user=check_text(args, "user", MAX_IDENT))


class NotifySetRequest(Request, op=Op.NOTIFY_SET, reply=NotifySettingsReply):
    """Set or clear (value None) where one's notifications go; admins may name another user.
    Which webhook hosts are allowed is labqd's config, so labqd checks that part."""
    channel: str
    value: str | None = None
    user: str | None = None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        channel = args.get("channel")
        if type(channel) is not str or channel not in NOTIFY_CHANNELS:
            raise arg_error("channel", f"must be one of {', '.join(NOTIFY_CHANNELS)}")
        limit = MAX_URL if channel == "webhook" else MAX_MAIL
        value = check_text(args, "value", limit)
        if value is not None:
            if " " in value:
                raise arg_error("value", "must not hold spaces")
            if channel == "webhook":
                check_webhook_url(value)
            elif not _MAIL.fullmatch(value):
                raise arg_error("value", f"{value[:80]!r} is not a mail address like "
                                "name@example.org")
        return cls(channel=channel, value=value or None,
                   user=check_text(args, "user", MAX_IDENT))


def check_webhook_url(url: str) -> str:
    """The URL's host, lower case, if it is an http(s) URL with one; else ValidationError."""
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError on a port out of range
    except ValueError as e:
        raise arg_error("value", f"not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise arg_error("value", "a webhook must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise arg_error("value", "a webhook URL must not carry a user name or password")
    return host.lower()
