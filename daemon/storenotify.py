"""The notification rows of the store: each user's channels, and the messages to send with
their state (pending, sending, sent, failed). Part of Store, whose SQL this is."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import peewee as pw

from .schema import Notification, NotifySetting


class NotificationRows:
    """Mixed into Store, which holds the database and its write transaction."""

    if TYPE_CHECKING:
        def write(self) -> AbstractContextManager[None]: ...
        def add_event(self, job: int, who: str, src: str | None, dst: str,
                      reason: str | None, when: float) -> None: ...

    def notify_settings(self) -> dict[int, dict[str, Any]]:
        return {r["uid"]: r for r in NotifySetting.select().dicts()}

    def save_notify_setting(self, uid: int, user: str, **fields: Any) -> None:
        with self.write():
            NotifySetting.insert(uid=uid, user=user, **fields).on_conflict(
                conflict_target=[NotifySetting.uid],
                update={NotifySetting.user: user, **{getattr(NotifySetting, k): v
                                                     for k, v in fields.items()}}).execute()

    def notifications_due(self, now: float, limit: int = 50) -> list[dict[str, Any]]:
        return list(Notification.select().where((Notification.status == "pending")
                                                & (Notification.next_try <= now))
                    .order_by(Notification.next_try, Notification.id).limit(limit).dicts())

    def next_notification_time(self) -> float | None:
        row = (Notification.select(pw.fn.MIN(Notification.next_try).alias("t"))
               .where(Notification.status == "pending").dicts().first())
        return row["t"] if row else None

    def notifications(self, job_id: int) -> list[dict[str, Any]]:
        return list(Notification.select().where(Notification.job == job_id)
                    .order_by(Notification.id).dicts())

    def claim_notification(self, nid: int) -> bool:
        """Mark it being sent; False if it was not pending. Sending happens only after this
        is committed, so a message is never sent twice, whenever labqd stops."""
        with self.write():
            return bool(Notification.update(status="sending", attempts=Notification.attempts + 1)
                        .where((Notification.id == nid) & (Notification.status == "pending"))
                        .execute())

    def finish_notification(self, nid: int, status: str, when: float, *,
                            error: str | None = None, next_try: float | None = None,
                            event: tuple[int, str, str] | None = None) -> None:
        """Sent, failed for good, or back to pending for another try at `next_try`; `event`
        (job, state, reason) goes into the job's history in the same transaction."""
        fields: dict[str, Any] = {"status": status, "error": error}
        if next_try is not None:
            fields["next_try"] = next_try
        if status in ("sent", "failed"):
            fields["done_time"] = when
        with self.write():
            Notification.update(**fields).where(Notification.id == nid).execute()
            if event is not None:
                job, state, reason = event
                self.add_event(job, "labqd", state, state, reason, when)

    def unfinished_sends(self) -> list[dict[str, Any]]:
        """Messages a stopped labqd was sending: whether they left is unknown."""
        return list(Notification.select().where(Notification.status == "sending").dicts())
