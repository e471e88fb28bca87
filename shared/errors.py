"""Typed errors. Each carries a stable code that crosses the wire, a message and details."""
from __future__ import annotations

from typing import Any


class LabqError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class ValidationError(LabqError):
    code = "VALIDATION_ERROR"


class NotFound(LabqError):
    code = "NOT_FOUND"


class PermissionDenied(LabqError):
    code = "PERMISSION_DENIED"


class InvalidState(LabqError):
    code = "INVALID_STATE"


class QuotaExceeded(LabqError):
    code = "QUOTA_EXCEEDED"


class RateLimited(LabqError):
    code = "RATE_LIMITED"


class Unauthenticated(LabqError):
    """A token that is not valid (unknown, wrong, expired or revoked), or none where one is
    needed: labqd over TCP knows a caller only by their token."""
    code = "UNAUTHENTICATED"


class StorageError(LabqError):
    """The daemon could not write its state (disk full, read-only file system)."""
    code = "STORAGE_ERROR"


class DuplicateJob(LabqError):
    """A submit's key is already used by one of the submitter's jobs: details["id"] is it."""
    code = "DUPLICATE_JOB"


class BadEncoding(LabqError):
    """A file of jobs that is not UTF-8 text."""
    code = "BAD_ENCODING"


class BadFormat(LabqError):
    """A file of jobs in a format labq does not read."""
    code = "BAD_FORMAT"


class DaemonUnavailable(LabqError):
    """No daemon answers on the socket, or the connection to it was lost."""
    code = "UNAVAILABLE"


class VersionMismatch(LabqError):
    """The client and labqd speak protocols too far apart to understand each other; the
    message says which side to upgrade."""
    code = "VERSION_MISMATCH"


class InternalError(LabqError):
    code = "INTERNAL"


_BY_CODE = {cls.code: cls for cls in (
    ValidationError, NotFound, PermissionDenied, InvalidState, QuotaExceeded, RateLimited,
    StorageError, DaemonUnavailable, InternalError, DuplicateJob, BadEncoding, BadFormat,
    Unauthenticated, VersionMismatch)}


def from_wire(data: dict[str, Any]) -> LabqError:
    cls = _BY_CODE.get(data.get("code", ""), InternalError)
    err = cls(str(data.get("message", "")), data.get("details") or {})
    if cls is InternalError and data.get("code"):
        err.code = str(data["code"])
    return err
