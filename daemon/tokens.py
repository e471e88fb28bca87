"""Tokens: who a caller over TCP is. A token reads `labq_ID_SECRET`; labqd keeps the SHA-256
of SECRET only, and compares digests in constant time. A token belongs to one Unix user and
acts as them (an admin when they are one); it expires, can be revoked, and each user holds at
most tokens.max_per_user valid ones (a new one revokes the oldest).

Every token is held in memory too: a request over TCP checks that its connection's token is
still valid without a database read.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import pwd
import secrets
import threading
from collections.abc import Iterable

from labq.errors import (
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    ValidationError,
)
from labq.protocol import TokenInfo

from . import store as st
from .clock import SYSTEM, Clock
from .config import Config
from .identity import Caller
from .ratelimit import Rate

log = logging.getLogger("labqd.tokens")
DAY = 86400.0
PREFIX = "labq_"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Tokens:
    def __init__(self, cfg: Config, store: st.Store, clock: Clock = SYSTEM):
        self.store, self.clock = store, clock
        self.max_days = cfg.tokens.get("max_days", 30)
        self.max_per_user = cfg.tokens.get("max_per_user", 1)
        self.lock = threading.Lock()
        self.rows: dict[int, dict] = {r["id"]: r for r in store.tokens()}
        # failed logins per source address: a guessed token costs its guesser time
        self.failures = Rate.parse(cfg.tokens.get("failed_logins", "10/min"), clock)

    # -- requests ----------------------------------------------------------------------------
    def create(self, caller: Caller, user: str | None, days: int | None,
               note: str | None) -> TokenInfo:
        user = user or caller.user
        if caller.by_token and not caller.admin:
            # a stolen token must not outlive its revocation by minting its successor
            raise PermissionDenied("a token cannot make tokens: run labq token create on "
                                   "labqd's machine, where your login says who you are",
                                   {"user": user})
        if user != caller.user and not caller.admin:
            raise PermissionDenied("only admins create tokens for other users",
                                   {"user": user})
        try:
            uid = caller.uid if user == caller.user else pwd.getpwnam(user).pw_uid
        except KeyError:
            raise NotFound(f"there is no user {user!r} on labqd's machine",
                           {"user": user}) from None
        if uid == 0:
            # a token that leaked would run jobs as root on every root agent: root stays local
            raise PermissionDenied("no token acts as root; make an admin account "
                                   "(daemon.admin_group) for remote administration",
                                   {"user": user})
        days = self.max_days if days is None else days
        if days > self.max_days:
            raise ValidationError(f"days: a token lasts at most {self.max_days} days "
                                  "(tokens.max_days)", {"field": "days"})
        secret = secrets.token_urlsafe(32)
        now = self.clock.time()
        row = {"uid": uid, "user": user, "digest": _digest(secret), "created": now,
               "expires": now + days * DAY, "revoked": None, "last_used": None, "note": note}
        with self.lock:
            row["id"] = self.store.insert_token(row)
            self.rows[row["id"]] = row
            valid = sorted((r for r in self.rows.values() if r["uid"] == uid
                            and self._valid(r, now)), key=lambda r: (r["created"], r["id"]))
            old = [r["id"] for r in valid[:-self.max_per_user]]
            if old:
                self._revoke(old, now)
        log.info("%s created token %d for %s (%d days)", caller.user, row["id"], user, days)
        return dict(self._info(row), token=f"{PREFIX}{row['id']}_{secret}")  # type: ignore

    def list(self, caller: Caller, user: str | None) -> list[TokenInfo]:
        if user is not None and user != caller.user and not caller.admin:
            raise PermissionDenied("only admins see other users' tokens", {"user": user})
        with self.lock:
            rows = list(self.rows.values())
        if not caller.admin:
            rows = [r for r in rows if r["uid"] == caller.uid]
        if user is not None:
            rows = [r for r in rows if r["user"] == user]
        return [self._info(r) for r in rows]

    def revoke(self, caller: Caller, token_id: int) -> TokenInfo:
        with self.lock:
            row = self.rows.get(token_id)
            if row is None or not (caller.admin or row["uid"] == caller.uid):
                # another user's token is as unknown as a missing one: ids tell nothing
                raise NotFound(f"you have no token {token_id}", {"id": token_id})
            if row["revoked"] is None:
                self._revoke([token_id], self.clock.time())
        log.info("%s revoked token %d of %s", caller.user, token_id, row["user"])
        return self._info(row)

    # -- authentication -----------------------------------------------------------------------
    def authenticate(self, text: str, source: str) -> dict:
        """The token's row, if `text` is a valid token; else Unauthenticated, or RateLimited
        once `source` has failed too often (then the token is not even looked at)."""
        wait = self.throttled(source)
        if wait > 0:
            retry = max(1, int(wait + 0.999))
            raise RateLimited(f"too many failed logins from {source}; try again in {retry} s",
                              {"retry_after": retry, "limit": "tokens.failed_logins"})
        row = self._match(text)
        now = self.clock.time()
        if row is None:
            self._failed(source)
            raise Unauthenticated("that token is not valid")
        self.check(row["id"])
        self.store.token_used(row["id"], now)
        row["last_used"] = now
        return row

    def throttled(self, source: str) -> float:
        """Seconds until `source` may try again (0: now)."""
        return 0.0 if self.failures is None else self.failures.wait_s(source, 0, need=1)

    def check(self, token_id: int) -> None:
        """Unauthenticated unless the token is still valid: asked on every request over TCP."""
        with self.lock:
            row = self.rows.get(token_id)
        if row is None:
            raise Unauthenticated("that token is not valid")
        if row["revoked"] is not None:
            raise Unauthenticated(f"token {token_id} was revoked; create a new one with "
                                  "`labq token create`", {"id": token_id})
        if row["expires"] <= self.clock.time():
            raise Unauthenticated(f"token {token_id} has expired; create a new one with "
                                  "`labq token create`", {"id": token_id})

    def _match(self, text: str) -> dict | None:
        tid, _, secret = text.removeprefix(PREFIX).partition("_")
        if not text.startswith(PREFIX) or not tid.isdigit() or len(tid) > 18 or not secret:
            return None
        with self.lock:
            row = self.rows.get(int(tid))
        if row is None or not hmac.compare_digest(row["digest"], _digest(secret)):
            return None
        return row

    def _failed(self, source: str) -> None:
        if self.failures is not None:
            self.failures.wait_s(source, 1)

    # -- helpers -------------------------------------------------------------------------------
    def _valid(self, row: dict, now: float) -> bool:
        return row["revoked"] is None and row["expires"] > now

    def _revoke(self, ids: Iterable[int], now: float) -> None:
        """Called with the lock held."""
        self.store.revoke_tokens(ids, now)
        for i in ids:
            self.rows[i]["revoked"] = now

    @staticmethod
    def _info(row: dict) -> TokenInfo:
        return {"id": row["id"], "user": row["user"], "created": row["created"],
                "expires": row["expires"], "revoked": row["revoked"],
                "last_used": row["last_used"], "note": row["note"], "token": None}
