"""The one exception root of the project and its stable error codes.

Codes are part of the public contract: they travel on the wire, appear in CLI JSON and
are documented in docs/PROTOCOL.md. Never rename one; add new ones.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

import pydantic


class ErrorCode(StrEnum):
    # input shape (nothing reaches the state)
    MISSING_FIELD = "MISSING_FIELD"
    INVALID_TYPE = "INVALID_TYPE"
    INVALID_VALUE = "INVALID_VALUE"
    UNKNOWN_FIELD = "UNKNOWN_FIELD"
    UNKNOWN_ACTION = "UNKNOWN_ACTION"
    INVALID_JSON = "INVALID_JSON"
    SCENARIO_INVALID = "SCENARIO_INVALID"
    USAGE_ERROR = "USAGE_ERROR"
    # domain rejections (state and log untouched)
    UNKNOWN_PLAN = "UNKNOWN_PLAN"
    UNKNOWN_ITEM = "UNKNOWN_ITEM"
    DUPLICATE_ID = "DUPLICATE_ID"
    PLAN_MISMATCH = "PLAN_MISMATCH"
    PLAN_ARCHIVED = "PLAN_ARCHIVED"
    INVALID_TRANSITION = "INVALID_TRANSITION"
    INVALID_LINK = "INVALID_LINK"
    EMPTY_CHANGE = "EMPTY_CHANGE"
    COMMAND_ID_REUSED = "COMMAND_ID_REUSED"
    # the one rejection that is recorded in the log
    VERSION_CONFLICT = "VERSION_CONFLICT"
    # files, sandbox, storage
    PATH_NOT_ALLOWED = "PATH_NOT_ALLOWED"
    FILE_NOT_FOUND = "FILE_NOT_FOUND"
    FILE_TOO_LARGE = "FILE_TOO_LARGE"
    #: a file that would be overwritten (bin/keygen without --force)
    FILE_EXISTS = "FILE_EXISTS"
    DB_NOT_INITIALISED = "DB_NOT_INITIALISED"
    DB_ERROR = "DB_ERROR"
    DB_BUSY = "DB_BUSY"
    #: a database the ledger has no backend for: a URL of an unknown scheme, a store
    #: that exists only inside another process, a PostgreSQL server too old or not UTF8
    DB_UNSUPPORTED = "DB_UNSUPPORTED"
    #: a database server that cannot be reached (refused, unknown host, timeout,
    #: starting up or shutting down)
    DB_UNREACHABLE = "DB_UNREACHABLE"
    #: the database server refused the credentials (password, role, pg_hba.conf)
    DB_AUTH_FAILED = "DB_AUTH_FAILED"
    #: a ledger schema of another version than this code's (no migration for it)
    DB_SCHEMA_VERSION = "DB_SCHEMA_VERSION"
    #: the connection to the database server broke during a transaction: nothing of
    #: it is acknowledged (during COMMIT its outcome is unknown: resend, same id)
    DB_CONNECTION_LOST = "DB_CONNECTION_LOST"
    #: a write to a database that takes none (a PostgreSQL standby, a read-only session)
    DB_READ_ONLY = "DB_READ_ONLY"
    #: the database file fails PRAGMA quick_check/integrity_check, is not a ledger
    #: database, or its chain tail is broken: the ledger refuses to start on it
    DB_DAMAGED = "DB_DAMAGED"
    DB_ROLLED_BACK = "DB_ROLLED_BACK"
    #: another process holds the database's writer lock (one writer per database);
    #: ``details.holder`` names it: pid, host, since when, role
    DB_LOCKED = "DB_LOCKED"
    CHAIN_BROKEN = "CHAIN_BROKEN"
    #: a signed checkpoint file that cannot be read (bad JSON, fields, format)
    CHECKPOINT_INVALID = "CHECKPOINT_INVALID"
    #: a key file that cannot be used (not PEM, wrong algorithm, readable by others)
    KEY_INVALID = "KEY_INVALID"
    EXPECTATION_FAILED = "EXPECTATION_FAILED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    INTERRUPTED = "INTERRUPTED"
    # the wire (broker front end, ledger back end)
    MALFORMED_FRAME = "MALFORMED_FRAME"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    UNKNOWN_QUERY = "UNKNOWN_QUERY"
    UNKNOWN_RECIPIENT = "UNKNOWN_RECIPIENT"
    LEDGER_UNAVAILABLE = "LEDGER_UNAVAILABLE"
    BUSY = "BUSY"
    TIMEOUT = "TIMEOUT"
    BIND_FAILED = "BIND_FAILED"
    # who may write (CURVE, see broker/security.py)
    #: a request whose actor is not the identity bound to the sender's CURVE key
    ACTOR_MISMATCH = "ACTOR_MISMATCH"
    #: a bind address reachable from other machines, without CURVE (or for the ledger)
    INSECURE_BIND = "INSECURE_BIND"


class CoordinatorError(Exception):
    """Root of every error this project raises on purpose.

    ``field`` names the offending input (dotted path, e.g. ``steps.3.expected_version``)
    when there is one; ``details`` carries structured extras (versions, seq numbers).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        field: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = ErrorCode(code)
        self.message = message
        self.field = field
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.details:
            out["details"] = self.details
        return out


class ValidationError(CoordinatorError):
    """Input that is not well-formed (shape, type, unknown field or action)."""


class RejectedError(CoordinatorError):
    """A well-formed command the current state does not allow."""


class StorageError(CoordinatorError):
    """A database driver error, converted at the transaction boundary."""


class SandboxError(CoordinatorError):
    """A path outside the sandbox allowlist, or a file that cannot be used."""


class ProtocolError(CoordinatorError):
    """A frame or message that does not follow the protocol."""


_PYDANTIC_CODES: Final = {
    "missing": ErrorCode.MISSING_FIELD,
    "extra_forbidden": ErrorCode.UNKNOWN_FIELD,
}


def validation_error_from_pydantic(
    exc: pydantic.ValidationError, prefix: str = ""
) -> ValidationError:
    """Turn pydantic's report into our error: code and field of the first problem."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    first = errors[0]
    loc = ".".join(str(p) for p in (prefix, *first["loc"]) if p != "")
    kind = first["type"]
    if kind in _PYDANTIC_CODES:
        code = _PYDANTIC_CODES[kind]
    elif kind.endswith("_type") or kind in ("model_type", "dict_type"):
        code = ErrorCode.INVALID_TYPE
    else:
        code = ErrorCode.INVALID_VALUE
    msg = first["msg"]
    if kind == "extra_forbidden" and loc.endswith("change.state"):
        msg = "an item's state changes only through STATE_CHANGE"
    problems = [
        {"field": ".".join(str(p) for p in (prefix, *e["loc"]) if p != ""), "type": e["type"],
         "message": e["msg"]}
        for e in errors
    ]
    return ValidationError(code, f"{loc or 'input'}: {msg}", field=loc or None,
                           details={"problems": problems} if len(problems) > 1 else None)
