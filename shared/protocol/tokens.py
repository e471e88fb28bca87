"""labq.protocol's requests for remote access: the tokens a script presents over TCP. Imported
by labq.protocol, which is where users and labqd find them."""
from __future__ import annotations

from typing import Any, Self, TypedDict

from ..spec import MAX_IDENT
from .args import check_int, check_text
from .base import Op, Request

MAX_TOKEN_DAYS = 3660  # labqd's tokens.max_days narrows this
MAX_TOKEN_NOTE = 200


class TokenInfo(TypedDict):
    id: int
    user: str
    created: float
    expires: float
    revoked: float | None
    last_used: float | None
    note: str | None
    token: str | None  # the secret, in the reply to a create only: labqd keeps its hash


class TokenCreateRequest(Request, op=Op.TOKEN_CREATE, reply=TokenInfo):
    """A token for the caller, or (admins) for `user`; valid `days` (labqd's default and
    maximum: tokens.max_days). Beyond tokens.max_per_user the user's oldest are revoked."""
    user: str | None = None
    days: int | None = None
    note: str | None = None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        days = None if args.get("days") is None else check_int(args, "days", 1, MAX_TOKEN_DAYS)
        return cls(user=check_text(args, "user", MAX_IDENT), days=days,
                   note=check_text(args, "note", MAX_TOKEN_NOTE))


class TokenListRequest(Request, op=Op.TOKEN_LIST, reply=list[TokenInfo]):
    """The caller's tokens; an admin's: everyone's, or `user`'s. Never the secrets."""
    user: str | None = None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(user=check_text(args, "user", MAX_IDENT))


class TokenRevokeRequest(Request, op=Op.TOKEN_REVOKE, reply=TokenInfo):
    """Revoke one of one's own tokens (an admin: anyone's); it is refused from then on, also
    on a connection already open with it."""
    id: int

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(id=check_int(args, "id", 1, 1 << 62))
