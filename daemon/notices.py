"""Notifications: where each user's go, which a job's change sends, and the thread that
delivers them.

A job's change and its messages are written in one transaction (labq.daemon.store); this
part's own thread sends what is due, so a slow relay or webhook never holds up the scheduler
or a request. A message is marked as being sent before it leaves and is never sent again after
that: a failed try puts it back with a later time (exponential backoff) until
notify.max_attempts, and a message labqd was sending when it stopped is not resent, as it may
have left. Failures go into the job's events, where `labq events` shows them.
"""
from __future__ import annotations

import logging
import pwd
import threading
from typing import Any

from labq.errors import PermissionDenied, ValidationError
from labq.protocol import NotifySettingsReply, check_webhook_url
from labq.states import JobState

from . import store as st
from .channels import ChannelError, host_allowed, send
from .clock import SYSTEM, Clock
from .config import Config
from .identity import Caller

log = logging.getLogger("labqd.notify")
S = JobState
BATCH = 50


class Notices:
    def __init__(self, cfg: Config, store: st.Store, clock: Clock = SYSTEM):
        self.cfg = cfg.notify
        self.store = store
        self.clock = clock
        self.settings: dict[int, dict[str, Any]] = store.notify_settings()
        self.wake = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.retry_base = self.cfg.get("retry_base", 30)
        self.retry_max = self.cfg.get("retry_max", 3600)
        self.max_attempts = self.cfg.get("max_attempts", 10)

    @property
    def channels(self) -> list[str]:
        return [c for c in ("mail", "webhook", "command") if c in self.cfg]

    # -- users' settings -------------------------------------------------------------------
    def _whose(self, caller: Caller, user: str | None, verb: str) -> tuple[int, str]:
        if user is None or user == caller.user:
            return caller.uid, caller.user
        if not caller.admin:
            raise PermissionDenied(f"{caller.user} may not {verb} {user}'s notifications; "
                                   "only admins may", {"user": user})
        try:
            return pwd.getpwnam(user).pw_uid, user
        except KeyError:
            raise ValidationError(f"user: no account {user!r}", {"field": "user"}) from None

    def show(self, caller: Caller, user: str | None) -> NotifySettingsReply:
        uid, name = self._whose(caller, user, "see")
        row = self.settings.get(uid, {})
        return {"user": name, "webhook": row.get("webhook"), "mail": row.get("mail"),
                "mail_to": self._mail_to(name, row), "channels": self.channels}

    def set(self, caller: Caller, channel: str, value: str | None,
            user: str | None) -> NotifySettingsReply:
        uid, name = self._whose(caller, user, "change")
        if value is not None:
            if channel not in self.cfg:
                raise PermissionDenied(f"labqd's admin has not enabled {channel} notifications "
                                       f"(the [notify.{channel}] config table)",
                                       {"channel": channel})
            if channel == "webhook":
                host = check_webhook_url(value)
                allowed = self.cfg["webhook"]["allow_hosts"]
                if not host_allowed(host, allowed):
                    raise PermissionDenied(
                        f"webhooks may go only to hosts labqd's admin allows "
                        f"({', '.join(allowed) or 'none'}); not to {host}",
                        {"channel": channel, "host": host, "allowed": allowed})
        self.store.save_notify_setting(uid, name, **{channel: value})
        self.settings[uid] = dict(self.settings.get(uid, {"uid": uid}), user=name,
                                  **{channel: value})
        return self.show(caller, user)

    def _mail_to(self, user: str, row: dict[str, Any]) -> str | None:
        mail = self.cfg.get("mail")
        if mail is None:
            return None
        if row.get("mail"):
            return str(row["mail"])
        # the local MTA delivers to a bare account name; a relay needs a domain
        domain = mail.get("domain")
        return f"{user}@{domain}" if domain else (user if "sendmail" in mail else None)

    # -- what a change sends ---------------------------------------------------------------
    def for_change(self, job: dict[str, Any], dst: JobState, now: float) -> list[dict]:
        """The messages a job's change to `dst` sends (called under the job table's lock)."""
        when = job.get("notify")
        if not when or not self.cfg:
            return []
        if dst == S.RUNNING:
            if when != "all":
                return []
        elif not dst.final or (when == "fail" and dst == S.COMPLETED):
            return []
        start = job.get("start_time")
        end = job.get("end_time") or now
        payload = {"event": "start" if dst == S.RUNNING else "end", "id": job["id"],
                   "name": job["name"], "user": job["owner"], "state": dst.value,
                   "exit_code": job.get("exit_code"), "node": job.get("node"),
                   "runtime": round(end - start) if start and dst.final else None}
        row = self.settings.get(job.get("owner_uid"), {})
        out = []
        for channel, target in (("mail", self._mail_to(job["owner"], row)),
                                ("webhook", row.get("webhook")), ("command", None)):
            if channel in self.cfg and (target or channel == "command"):
                out.append({"channel": channel, "target": target, "payload": payload})
        return out

    # -- delivery --------------------------------------------------------------------------
    def start(self) -> None:
        for n in self.store.unfinished_sends():
            why = (f"notify {n['channel']}: not sent again, as labqd stopped while sending it "
                   "and it may have left")
            self.store.finish_notification(n["id"], "failed", self.clock.time(), error=why,
                                           event=self._event(n, why))
        self.thread = threading.Thread(target=self._loop, name="notify", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self.stopping = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)  # a message being sent finishes, and is marked so

    def _loop(self) -> None:
        while not self.stopping:
            try:
                busy = self.deliver_due()
            except Exception:
                log.exception("delivering notifications failed; trying again shortly")
                busy = False
            if not busy:
                nxt = self.store.next_notification_time()
                left = 5.0 if nxt is None else nxt - self.clock.time()
                self.wake.wait(min(5.0, max(0.05, left)))
                self.wake.clear()

    def deliver_due(self) -> bool:
        """Send what is due now; True if there may be more."""
        due = self.store.notifications_due(self.clock.time(), BATCH)
        for n in due:
            if self.stopping:
                return False
            if self.store.claim_notification(n["id"]):
                self._deliver(n, n["attempts"] + 1)
        return len(due) == BATCH

    def _deliver(self, n: dict[str, Any], attempt: int) -> None:
        try:
            send(n["channel"], n["target"], n["payload"], self.cfg)
        except ChannelError as e:
            self._failed(n, attempt, str(e), e.permanent)
            return
        except Exception as e:  # a sender's bug must not take the queue down with it
            log.exception("notify %s for job %s", n["channel"], n["job"])
            self._failed(n, attempt, f"{type(e).__name__} (see labqd's log)", False)
            return
        self.store.finish_notification(n["id"], "sent", self.clock.time())
        log.info("notify %s for job %s sent", n["channel"], n["job"])

    def _failed(self, n: dict[str, Any], attempt: int, error: str, permanent: bool) -> None:
        now = self.clock.time()
        log.warning("notify %s for job %s, try %d: %s", n["channel"], n["job"], attempt, error)
        if permanent or attempt >= self.max_attempts:
            why = f"notify {n['channel']} failed after {attempt} tries, giving up: {error}"
            self.store.finish_notification(n["id"], "failed", now, error=error,
                                           event=self._event(n, why))
            return
        delay = min(self.retry_max, self.retry_base * 2 ** (attempt - 1))
        # the first failure goes into the job's history; later ones only to the log
        why = f"notify {n['channel']} failed, trying again: {error}" if attempt == 1 else None
        self.store.finish_notification(n["id"], "pending", now, error=error,
                                       next_try=now + delay,
                                       event=self._event(n, why) if why else None)

    @staticmethod
    def _event(n: dict[str, Any], why: str) -> tuple[int, str, str]:
        return (n["job"], n["payload"]["state"], why)
