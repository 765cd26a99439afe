"""Is a ledger database file fit to serve? The start-up check and the damage report.

:func:`startup_check` runs every time the ledger starts, before it opens the database
for writing. It must stay fast on a big database, so it does not run
``PRAGMA integrity_check`` (which also cross-checks every index against its table, several
times slower: docs/DURABILITY.md has figures); it checks:

- with ``pages=True``, ``PRAGMA quick_check``: every page of the file is read and its
  b-tree structure and record format checked (a truncated file, a torn or overwritten
  page, a file that is not a database all fail here). It does not check that index
  contents match their tables; ``bin/verify_chain`` runs the full integrity_check;
- the ledger schema is there (an existing file is never initialised over: an empty or
  foreign file is damage, not a new database);
- the chain tail: the first event is seq 1, the last event's hash recomputes from its
  columns, its prev_hash is the hash of the event before it, and the newest command
  record points to no event past the last one (a cut-off tail). These two take
  constant time, whatever the length of the log.

With ``pages=True`` (``--startup-check full``) it also runs ``PRAGMA quick_check`` and
checks that the number of events equals the last seq; both read the whole file (about
0.8 s per GB). ``pages=False`` leaves them out: start-up time then does not grow with the
log. The ledger's default, ``--startup-check background``, runs :func:`startup_check`
with ``pages=False`` before serving and the two page checks afterwards, while it serves,
in a :class:`PageCheck` (a thread of its own with its own read-only connection; SQLite
releases the GIL while a statement runs, so the check uses another core). If that finds
damage, the ledger stops taking commands and exits as if it had refused to start.
``--startup-check tail`` skips the page checks altogether: damaged pages or a hole in
the middle of the log are then found only when read, or by ``bin/verify_chain``.

The middle of the chain is not re-hashed at start (that reads the whole log: it is what
``bin/verify_chain`` is for). A failure raises :class:`ledger.errors.StorageError`
with code ``DB_DAMAGED`` saying what failed; the ledger then refuses to start (or,
when a background :class:`PageCheck` fails, stops serving and exits).

:func:`damage_report` is what ``bin/verify_chain`` prints for a file that SQLite itself
finds damaged: the full ``integrity_check`` messages, the tables they concern, and how
far the event log can still be read.

Both open the file read-only (``mode=ro``): a damaged file is never written to, not
even by a WAL checkpoint.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing, suppress
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote

from ledger.log.chain import GENESIS_HASH, event_hash
from schema.errors import ErrorCode, StorageError
from schema.vocabulary import EVENT_COLUMNS

LEDGER_TABLES: Final = ("meta", "events", "commands", "plans", "plan_items", "plan_links")
#: SQLite error names that mean the file itself is damaged (rather than busy, locked
#: or unreadable for lack of permission).
DAMAGE_ERRORS: Final = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR_SHORT_READ",
                        "SQLITE_FORMAT")
#: Most integrity_check messages reported (SQLite's own default is 100).
MAX_MESSAGES: Final = 20
HINT: Final = "run bin/verify_chain --db {db} to see where"
#: ``--startup-check`` modes; the first is the default
STARTUP_MODES: Final = ("background", "full", "tail")

log = logging.getLogger("ledger")


def _connect(path: Path) -> sqlite3.Connection:
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _is_damage(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    return (name.startswith(DAMAGE_ERRORS) or "malformed" in text
            or "not a database" in text)


def _damaged(path: Path, what: str, **details: Any) -> StorageError:
    return StorageError(ErrorCode.DB_DAMAGED,
                        f"{path.name}: {what}; the ledger will not serve it "
                        f"({HINT.format(db=path.name)})", details=details)


def _sqlite_failure(path: Path, exc: sqlite3.Error, doing: str) -> StorageError:
    if _is_damage(exc):
        return _damaged(path, f"{doing}: {exc}", sqlite_error=getattr(
            exc, "sqlite_errorname", None))
    return StorageError(ErrorCode.DB_ERROR, f"{path.name}: {doing}: {exc}")


def startup_check(path: Path, *, pages: bool = True) -> dict[str, Any]:
    """Check an existing database before serving it; a missing file passes (the ledger
    creates it). Returns what was checked; raises StorageError(DB_DAMAGED).

    ``pages=False`` leaves out the two checks whose time grows with the file
    (``PRAGMA quick_check`` and counting the events).
    """
    if not path.exists():
        return {"checked": False, "reason": "new database"}
    try:
        with closing(_connect(path)) as conn:
            if pages:
                _quick_check(path, conn)
            result = _tail_check(path, conn)
            if pages:
                result |= _count_check(path, conn, result["head_seq"])
            return result | {"quick_check": "ok" if pages else "skipped"}
    except sqlite3.Error as exc:
        raise _sqlite_failure(path, exc, "reading it") from exc


def pages_check(path: Path, conn: sqlite3.Connection) -> dict[str, Any]:
    """``PRAGMA quick_check`` and the event count against the last seq, in one read
    transaction (one snapshot, so a writer committing meanwhile cannot make them
    disagree). Raises StorageError(DB_DAMAGED); sqlite3 errors that are not damage
    propagate."""
    conn.execute("BEGIN")
    try:
        _quick_check(path, conn)
        (last_seq,) = conn.execute("SELECT MAX(seq) FROM events").fetchone()
        return _count_check(path, conn, last_seq or 0) | {"quick_check": "ok"}
    finally:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")


PageState = Literal["running", "ok", "failed", "stopped"]


class PageCheck:
    """The start-up checks whose time grows with the file (:func:`pages_check`), run on a
    thread of their own from a read-only connection of their own, while the ledger
    serves (``--startup-check background``).

    ``state`` is ``running``, then ``ok`` or ``failed`` (``error`` says why: DB_DAMAGED,
    or DB_ERROR if the file could not be read), or ``stopped`` if :meth:`stop` interrupted
    it first. ``on_failure`` is called once, on the check's thread, with the error.
    """

    def __init__(self, path: Path,
                 on_failure: Callable[[StorageError], None] | None = None) -> None:
        self.path = path
        self.on_failure = on_failure
        self._started = 0.0
        self.state: PageState = "running"
        self.error: StorageError | None = None
        self.result: dict[str, Any] = {}
        self.seconds: float | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
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
                if self._conn is not None:
                    self._conn.interrupt()
            self._thread.join(0.05)

    def _run(self) -> None:
        error: StorageError | None = None
        try:
            with self._lock:
                if self._stopping:
                    return
                self._conn = _connect(self.path)
            self.result = pages_check(self.path, self._conn)
        except StorageError as exc:
            error = exc
        except sqlite3.Error as exc:
            if not self._stopping:
                error = _sqlite_failure(self.path, exc, "reading it")
        except Exception as exc:  # a bug: the file was not checked, as a failed full check
            log.exception("the page check failed")
            error = StorageError(ErrorCode.DB_ERROR, f"{self.path.name}: the page check "
                                 f"failed: {exc}")
        finally:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
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


def _count_check(path: Path, conn: sqlite3.Connection, last_seq: int) -> dict[str, Any]:
    (count,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
    if count != last_seq:
        raise _damaged(path, f"chain tail: {count} events but the last seq is {last_seq} "
                       "(events are missing from the log)", events=count, last_seq=last_seq)
    return {"events": count}


def _quick_check(path: Path, conn: sqlite3.Connection) -> None:
    try:
        problems = [str(r[0]) for r in conn.execute(f"PRAGMA quick_check({MAX_MESSAGES})")]
    except sqlite3.Error as exc:
        if not _is_damage(exc):
            raise
        problems = [str(exc)]
    if problems != ["ok"]:
        lines = [line for p in problems for line in p.splitlines()]
        shown = "; ".join(lines[:4]) + (f" (and {len(lines) - 4} more)" if len(lines) > 4
                                        else "")
        raise _damaged(path, f"PRAGMA quick_check failed: {shown}", quick_check=lines)


def _tail_check(path: Path, conn: sqlite3.Connection) -> dict[str, Any]:
    """Schema and chain tail; constant time whatever the length of the log."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = [t for t in LEDGER_TABLES if t not in tables]
    if missing:
        what = ("the file is empty" if not tables
                else f"tables missing: {', '.join(missing)}")
        raise _damaged(path, f"not a ledger database ({what}); the ledger creates a "
                       "database only where no file exists", missing_tables=missing)
    # MIN and MAX in separate statements: each is then one b-tree descent
    (first_seq,) = conn.execute("SELECT MIN(seq) FROM events").fetchone()
    (last_seq,) = conn.execute("SELECT MAX(seq) FROM events").fetchone()
    last_seq = last_seq or 0
    if first_seq not in (None, 1):
        raise _damaged(path, f"chain head: the first event is seq {first_seq}, not 1 "
                       "(events are missing from the log)", first_seq=first_seq)
    if last_seq:
        rows = conn.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events "
                            "ORDER BY seq DESC LIMIT 2").fetchall()
        last = dict(zip(EVENT_COLUMNS, rows[0], strict=True))
        before = rows[1][EVENT_COLUMNS.index("hash")] if len(rows) > 1 else GENESIS_HASH
        try:
            computed = event_hash(last)
        except (TypeError, ValueError):
            computed = None
        if computed != last["hash"]:
            raise _damaged(path, f"chain tail: the hash of event seq {last_seq} does not "
                           "match its contents", seq=last_seq)
        if last["prev_hash"] != before:
            raise _damaged(path, f"chain tail: event seq {last_seq} does not link to event "
                           f"seq {last_seq - 1} (prev_hash differs)", seq=last_seq)
    # the newest command record (rowids only grow: commands are never deleted)
    row = conn.execute("SELECT seq FROM commands WHERE seq IS NOT NULL "
                       "ORDER BY rowid DESC LIMIT 1").fetchone()
    command_seq = row[0] if row else None
    if command_seq is not None and command_seq > last_seq:
        raise _damaged(path, f"chain tail: a command record points to event seq "
                       f"{command_seq}, after the last event {last_seq} (the tail of the log "
                       "was cut off)", last_seq=last_seq, command_seq=command_seq)
    return {"checked": True, "head_seq": last_seq}


_PAGE = re.compile(r"\b(?:Tree|Page|page) (\d+)\b")
_INDEX = re.compile(r"\bindex (\w+)")


def damage_report(path: Path) -> dict[str, Any] | None:
    """None if the file passes ``PRAGMA integrity_check``; otherwise the verify_chain JSON
    for a damaged file: chain_status DAMAGED, the integrity messages, where the damage is
    (the tables it concerns, a truncation the header reveals) and how far the event log
    can still be read."""
    try:
        conn = _connect(path)
    except sqlite3.Error as exc:
        raise _sqlite_failure(path, exc, "opening it") from exc
    with closing(conn):
        try:
            rows = conn.execute(f"PRAGMA integrity_check({MAX_MESSAGES})").fetchall()
            messages = [line for r in rows for line in str(r[0]).splitlines()]
        except sqlite3.Error as exc:
            if not _is_damage(exc):
                raise _sqlite_failure(path, exc, "checking it") from exc
            messages = [f"integrity_check could not run: {exc}"]
        if messages == ["ok"]:
            return None
        tables = _tables_named(conn, messages)
        readable, last_seq, stopped = _readable_events(conn)
    where = [f"table {t}" for t in tables]
    truncated = _truncation(path)
    if truncated:
        where.insert(0, truncated)
    report: dict[str, Any] = {
        "ok": False, "chain_status": "DAMAGED",
        "error": {"code": str(ErrorCode.DB_DAMAGED),
                  "message": f"{path.name} fails PRAGMA integrity_check"
                             + (f" ({'; '.join(where)})" if where else "")
                             + f"; the event log reads up to seq {last_seq}"
                             + (f", then: {stopped}" if stopped else "")},
        "integrity_check": messages, "tables": tables, "truncated": truncated,
        "events_readable": readable, "last_readable_seq": last_seq, "read_error": stopped,
    }
    return report


def _truncation(path: Path) -> str | None:
    """A file shorter than its header says (page size x page count), described."""
    with path.open("rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return f"the file header is missing or not SQLite's ({len(header)} bytes read)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    size = path.stat().st_size
    if pages and size < page_size * pages:
        return (f"the file is truncated: {size} bytes, its header says {pages} pages of "
                f"{page_size} = {pages * page_size} bytes (pages {size // page_size + 1}.."
                f"{pages} are missing)")
    return None


def _tables_named(conn: sqlite3.Connection, messages: list[str]) -> list[str]:
    """The tables the damage concerns: pages and indexes the integrity messages name,
    mapped through sqlite_master and dbstat, plus every table that cannot be read to
    its end (empty if even the schema cannot be read)."""
    try:
        schema = conn.execute("SELECT name, tbl_name, type, rootpage FROM sqlite_master"
                              ).fetchall()
    except sqlite3.Error:
        return []
    by_root = {int(root): tbl for _, tbl, _, root in schema if root}
    by_name = {name: tbl for name, tbl, _, _ in schema}
    pages = {int(n) for text in messages for n in _PAGE.findall(text)}
    if pages:
        try:
            for name, page in conn.execute("SELECT name, pageno FROM dbstat"):
                if int(page) in pages and name in by_name:
                    by_root.setdefault(int(page), by_name[name])
        except sqlite3.Error:
            pass  # dbstat walks the same damaged b-trees; take what the roots say
    found: list[str] = []

    def add(name: str | None) -> None:
        if name and name not in found:
            found.append(name)

    for text in messages:
        for page in _PAGE.findall(text):
            add(by_root.get(int(page)))
        for index in _INDEX.findall(text):
            add(by_name.get(index))
    for name, _, kind, _ in schema:
        if kind == "table" and not name.startswith("sqlite_"):
            try:
                for _ in conn.execute(f'SELECT * FROM "{name}"'):
                    pass
            except sqlite3.Error:
                add(name)
    return found


def _readable_events(conn: sqlite3.Connection) -> tuple[int, int, str | None]:
    """(events read, last seq read, the error that stopped the read or None)."""
    count = last = 0
    try:
        for (seq,) in conn.execute("SELECT seq FROM events ORDER BY seq"):
            count += 1
            last = int(seq)
    except sqlite3.Error as exc:
        return count, last, str(exc)
    return count, last, None
