"""Is a ledger store fit to serve? The start-up check and the damage report.

:func:`startup_check` runs every time the ledger starts, before it opens the store for
writing. It must stay fast on a big store, so it does not run the backend's full
integrity check (SQLite: ``PRAGMA integrity_check``, which also cross-checks every index
against its table, several times slower: docs/DURABILITY.md has figures); it checks:

- with ``pages=True``, the backend's page check (:meth:`Inspection.check_pages`; SQLite:
  ``PRAGMA quick_check``, every page read and its structure checked: a truncated file, a
  torn or overwritten page, a file that is not a database all fail here), and that the
  number of events equals the last seq; both read the whole store (SQLite: about 0.8 s
  per GB);
- the ledger schema is there (an existing store is never initialised over: an empty or
  foreign file is damage, not a new database);
- the chain tail: the first event is seq 1, the last event's hash recomputes from its
  columns, its prev_hash is the hash of the event before it, and the newest command
  record points to no event past the last one (a cut-off tail). These take constant
  time, whatever the length of the log.

``pages=False`` leaves out the page checks: start-up time then does not grow with the
log. The ledger's default, ``--startup-check background``, runs :func:`startup_check`
with ``pages=False`` before serving and the page checks afterwards, while it serves, in
a :class:`PageCheck` (a thread of its own with its own read-only inspection; SQLite
releases the GIL while a statement runs, so the check uses another core). If that finds
damage, the ledger stops taking commands and exits as if it had refused to start.
``--startup-check tail`` skips the page checks altogether: damaged pages or a hole in
the middle of the log are then found only when read, or by ``bin/verify_chain``.

The middle of the chain is not re-hashed at start (that reads the whole log: it is what
``bin/verify_chain`` is for). A failure raises :class:`schema.errors.StorageError` with
code ``DB_DAMAGED`` saying what failed; the ledger then refuses to start (or, when a
background :class:`PageCheck` fails, stops serving and exits).

:func:`damage_report` is what ``bin/verify_chain`` prints for a store its backend finds
damaged: the full check's messages, the tables they concern, and how far the event log
can still be read.

Everything here reads through :class:`ledger.storage.base.Inspection` (from
:func:`ledger.storage.factory.inspect_store`), which never writes: a damaged file is not
even WAL-checkpointed. The backend's own side (SQLite: :mod:`ledger.storage.sqlite_integrity`)
knows how to find damage; this module knows what to check and what to say.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Literal

from ledger.log.chain import GENESIS_HASH, event_hash
from ledger.storage.base import (
    LEDGER_TABLES,
    DamageReport,
    Inspection,
    Locator,
    ReadSnapshot,
    damaged,
)
from ledger.storage.factory import inspect_store, store_exists
from schema.errors import ErrorCode, StorageError
from schema.vocabulary import EVENT_COLUMNS

#: ``--startup-check`` modes; the first is the default
STARTUP_MODES: Final = ("background", "full", "tail")
_HASH_AT: Final = EVENT_COLUMNS.index("hash")

log = logging.getLogger("ledger")


def startup_check(locator: Locator, *, pages: bool = True) -> dict[str, Any]:
    """Check an existing store before serving it; a missing one passes (the ledger
    creates it). Returns what was checked; raises StorageError(DB_DAMAGED), or
    DB_ERROR/DB_BUSY if the store cannot be read at all.

    ``pages=False`` leaves out the two checks whose time grows with the store (the
    backend's page check and counting the events).
    """
    if not store_exists(locator):
        return {"checked": False, "reason": "new database"}
    with inspect_store(locator) as inspection:
        if pages:
            inspection.check_pages()
        _require_schema(locator.name, inspection)
        with inspection.snapshot() as snap:
            result = _tail_check(locator.name, snap)
            if pages:
                result |= _count_check(locator.name, snap, result["head_seq"])
    return result | {"quick_check": "ok" if pages else "skipped"}


def pages_check(name: str, inspection: Inspection) -> dict[str, Any]:
    """The page check and the event count against the last seq, in one read snapshot
    (so a writer committing meanwhile cannot make them disagree). Raises
    StorageError(DB_DAMAGED), or another StorageError if the store cannot be read."""
    with inspection.snapshot() as snap:
        inspection.check_pages()
        last_seq = snap.head()[0]
        return _count_check(name, snap, last_seq) | {"quick_check": "ok"}


PageState = Literal["running", "ok", "failed", "stopped"]


class PageCheck:
    """The start-up checks whose time grows with the store (:func:`pages_check`), run on
    a thread of their own from an inspection of their own, while the ledger serves
    (``--startup-check background``).

    ``state`` is ``running``, then ``ok`` or ``failed`` (``error`` says why: DB_DAMAGED,
    or DB_ERROR if the store could not be read), or ``stopped`` if :meth:`stop`
    interrupted it first. ``on_failure`` is called once, on the check's thread, with the
    error.
    """

    def __init__(self, locator: Locator,
                 on_failure: Callable[[StorageError], None] | None = None) -> None:
        self.locator = locator
        self.on_failure = on_failure
        self._started = 0.0
        self.state: PageState = "running"
        self.error: StorageError | None = None
        self.result: dict[str, Any] = {}
        self.seconds: float | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._inspection: Inspection | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ledger-page-check",
                                        daemon=True)

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def status(self) -> dict[str, Any]:
        """What the ready line and PING report: ``{"pages": state, ...}``."""
        out: dict[str, Any] = {"pages": self.state}
        if self.seconds is not None:
            out["pages_seconds"] = round(self.seconds, 3)
        if "events" in self.result:
            out["events"] = self.result["events"]
        if self.error is not None:
            out["error"] = self.error.to_dict()
        return out

    def stop(self, timeout: float = 5.0) -> None:
        """Interrupt the check if it is still running, and wait for its thread (at most
        ``timeout`` seconds). The interrupt is repeated: one sent while no statement runs
        yet (the thread just connected) is a no-op in SQLite."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            with self._lock:
                if self._inspection is not None:
                    self._inspection.interrupt()
            self._thread.join(0.05)

    def _run(self) -> None:
        error: StorageError | None = None
        try:
            with self._lock:
                if self._stopping:
                    return
                self._inspection = inspect_store(self.locator)
            self.result = pages_check(self.locator.name, self._inspection)
        except StorageError as exc:
            # interrupted by stop(): not a finding (damage found first still is)
            if not self._stopping or exc.code == ErrorCode.DB_DAMAGED:
                error = exc
        except Exception as exc:  # a bug: the store was not checked, as a failed full check
            log.exception("the page check failed")
            error = StorageError(ErrorCode.DB_ERROR, f"{self.locator.name}: the page check "
                                 f"failed: {exc}")
        finally:
            with self._lock:
                if self._inspection is not None:
                    self._inspection.close()
                    self._inspection = None
            self.seconds = time.monotonic() - self._started
            self.error = error
            self.state = ("failed" if error is not None else "ok" if self.result
                          else "stopped")
            self.done.set()
        if self.state == "ok":
            log.info("start-up check: every page read, %d events, in %.2f s",
                     self.result["events"], self.seconds)
        if error is not None and self.on_failure is not None:
            self.on_failure(error)


def _count_check(name: str, snap: ReadSnapshot, last_seq: int) -> dict[str, Any]:
    count = snap.event_count()
    if count != last_seq:
        raise damaged(name, f"chain tail: {count} events but the last seq is {last_seq} "
                      "(events are missing from the log)", events=count, last_seq=last_seq)
    return {"events": count}


def _require_schema(name: str, inspection: Inspection) -> None:
    tables = inspection.tables()
    missing = [t for t in LEDGER_TABLES if t not in tables]
    if missing:
        what = ("the file is empty" if not tables
                else f"tables missing: {', '.join(missing)}")
        raise damaged(name, f"not a ledger database ({what}); the ledger creates a "
                      "database only where no file exists", missing_tables=missing)


def _tail_check(name: str, snap: ReadSnapshot) -> dict[str, Any]:
    """The chain tail; constant time whatever the length of the log."""
    first_seq = snap.first_seq()
    if first_seq not in (None, 1):
        raise damaged(name, f"chain head: the first event is seq {first_seq}, not 1 "
                      "(events are missing from the log)", first_seq=first_seq)
    rows = snap.last_rows(2)
    last_seq = int(rows[0][0]) if rows else 0
    if last_seq:
        last = dict(zip(EVENT_COLUMNS, rows[0], strict=True))
        before = rows[1][_HASH_AT] if len(rows) > 1 else GENESIS_HASH
        try:
            computed = event_hash(last)
        except (TypeError, ValueError):
            computed = None
        if computed != last["hash"]:
            raise damaged(name, f"chain tail: the hash of event seq {last_seq} does not "
                          "match its contents", seq=last_seq)
        if last["prev_hash"] != before:
            raise damaged(name, f"chain tail: event seq {last_seq} does not link to event "
                          f"seq {last_seq - 1} (prev_hash differs)", seq=last_seq)
    command_seq = snap.newest_command_seq()
    if command_seq is not None and command_seq > last_seq:
        raise damaged(name, f"chain tail: a command record points to event seq "
                      f"{command_seq}, after the last event {last_seq} (the tail of the log "
                      "was cut off)", last_seq=last_seq, command_seq=command_seq)
    return {"checked": True, "head_seq": last_seq}


def damage_report(locator: Locator) -> dict[str, Any] | None:
    """None if the store passes its backend's full integrity check; otherwise the
    verify_chain JSON for a damaged store (:func:`damage_json`)."""
    with inspect_store(locator) as inspection:
        found = inspection.damage()
    return None if found is None else damage_json(found)


def damage_json(found: DamageReport) -> dict[str, Any]:
    """chain_status DAMAGED, the check's messages, where the damage is (the tables it
    concerns, a truncation) and how far the event log can still be read."""
    where = [f"table {t}" for t in found.tables]
    if found.truncated:
        where.insert(0, found.truncated)
    return {
        "ok": False, "chain_status": "DAMAGED",
        "error": {"code": str(ErrorCode.DB_DAMAGED),
                  "message": f"{found.name} fails {found.check}"
                             + (f" ({'; '.join(where)})" if where else "")
                             + f"; the event log reads up to seq {found.last_readable_seq}"
                             + (f", then: {found.read_error}" if found.read_error else "")},
        "integrity_check": found.messages, "tables": found.tables,
        "truncated": found.truncated, "events_readable": found.events_readable,
        "last_readable_seq": found.last_readable_seq, "read_error": found.read_error,
    }
