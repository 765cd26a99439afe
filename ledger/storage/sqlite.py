"""SQLite backend of :class:`ledger.storage.base.Store` (WAL mode, one writer).

Durability: ``synchronous=FULL`` by default, so a committed transaction survives a
process crash and a power loss; ``normal`` survives a process crash only (the last
commits may be lost on power loss). Every sqlite3 error becomes a StorageError in one
place, :func:`storage_error`. The integrity checks (``PRAGMA quick_check`` and
``integrity_check``, reading a damaged file) are in :mod:`ledger.storage.sqlite_integrity`.
This module and that one are the only importers of ``sqlite3``.

One writer per file: the factory takes a :class:`ledger.storage.file_lease.FileLease`
(``flock`` on ``<db>.lock``) before it opens a store for writing. A writer store checks
after each COMMIT that the file it writes, and its ``-wal``, are still the ones at its
path (:meth:`SqliteStore._confirm_in_place`), and raises StoreLost if not. Its
:meth:`SqliteStore.close_store` checkpoints the whole WAL into the file and truncates it
(``PRAGMA wal_checkpoint(TRUNCATE)``), so that after a clean stop the file alone holds
everything committed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from importlib.resources import files
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from ledger.storage.base import (
    EVENT_FILTER_COLUMNS,
    Backend,
    CommandRecord,
    DamageReport,
    Durability,
    EventRow,
    Inspection,
    Locator,
    ReadSnapshot,
    Store,
    StoreLost,
    Transaction,
    WriterLease,
    damaged,
)
from ledger.storage.file_lease import FileLease, lock_path
from ledger.storage.rows import Event, Item, Link, Plan
from ledger.storage.sql import COMMAND_COLS as _COMMAND_COLS
from ledger.storage.sql import EVENT_COLS as _EVENT_COLS
from ledger.storage.sql import ITEM_COLS as _ITEM_COLS
from ledger.storage.sql import LINK_COLS as _LINK_COLS
from ledger.storage.sql import PLAN_COLS as _PLAN_COLS
from ledger.storage.sql import SHORT_COLS as _SHORT_COLS
from ledger.storage.sql import TABLE_SQL as _TABLE_SQL
from schema.errors import ErrorCode, StorageError
from schema.vocabulary import GENESIS_HASH

__all__ = ["SCHEMA_VERSION", "Durability", "SqliteBackend", "SqliteStore", "file_locator",
           "initialise", "storage_error", "writer_pragmas"]

#: the SQL files are package data of ``schema`` (importlib.resources: works installed too)
SCHEMA_DIR: Final = files("schema")
SCHEMA_FILES: Final = ("plan_schema.sql", "event_log_schema.sql")
SCHEMA_VERSION: Final = "1"
SCHEME: Final = "sqlite"

#: Most parameters in one ``IN (...)`` list (SQLite allows 32766 since 3.32).
_IN_CHUNK: Final = 500
#: Event rows fetched at a time by a read snapshot.
BATCH: Final = 500
#: SQLite error names that mean the file itself is damaged (rather than busy, locked
#: or unreadable for lack of permission).
DAMAGE_ERRORS: Final = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR_SHORT_READ",
                        "SQLITE_FORMAT")

log = logging.getLogger("ledger.storage")


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether an sqlite3 error says the file itself is damaged."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    return (name.startswith(DAMAGE_ERRORS) or "malformed" in text
            or "not a database" in text)


def storage_error(exc: sqlite3.Error, doing: str, *, name: str | None = None,
                  damage: bool = False) -> StorageError:
    """THE translation of an sqlite3 error: DB_BUSY for a lock held too long, DB_ERROR
    otherwise. ``damage`` (the integrity checks, which read files that may be damaged):
    an error that says the file is damaged is DB_DAMAGED, with the hint where to look.
    ``name``: the file name the message starts with."""
    text = str(exc)
    if damage and is_damage(exc):
        return damaged(name or "the database", f"{doing}: {text}",
                       sqlite_error=getattr(exc, "sqlite_errorname", None))
    code = ErrorCode.DB_BUSY if "locked" in text or "busy" in text else ErrorCode.DB_ERROR
    return StorageError(code, f"{name}: {doing}: {text}" if name else f"{doing}: {text}")


def file_locator(path: Path, shown: str | None = None) -> Locator:
    """The locator of the SQLite file at ``path`` (``shown``: what reports print; default
    the path itself). For the factory, and for tools and tests that made the file."""
    path = Path(path).resolve()
    return Locator(SCHEME, str(path), shown or str(path), path.name)


def connect(path: Path, *, readonly: bool, check_same_thread: bool = True
            ) -> sqlite3.Connection:
    """A connection in autocommit mode with a busy timeout; ``readonly``: ``mode=ro``
    (nothing is ever written through it, not even a WAL checkpoint)."""
    if readonly:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True,
                               isolation_level=None, check_same_thread=check_same_thread)
    else:
        conn = sqlite3.connect(path, isolation_level=None,
                               check_same_thread=check_same_thread)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
    except BaseException:
        conn.close()
        raise
    return conn


def writer_pragmas(durability: Durability, *, manual_checkpoints: bool = False
                   ) -> tuple[str, ...]:
    """The PRAGMAs a store's writer connection runs after :func:`connect` (which sets
    ``busy_timeout``): WAL, ``synchronous`` from ``durability``, foreign keys, and no
    automatic WAL checkpoint with ``manual_checkpoints``. One list, so bin/bench's
    reference appender (agents/tools/bench_reference.py) writes under the same ones."""
    return ("PRAGMA journal_mode=WAL", f"PRAGMA synchronous={durability.upper()}",
            "PRAGMA foreign_keys=ON",
            *(("PRAGMA wal_autocheckpoint=0",) if manual_checkpoints else ()))


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def initialise(path: Path) -> bool:
    """Create the schema in ``path`` (idempotent). Returns True if the file was new."""
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            for name in SCHEMA_FILES:
                for statement in _statements((SCHEMA_DIR / name).read_text()):
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise storage_error(exc, f"initialising {path.name}") from exc
    return created


def _statements(script: str) -> Iterator[str]:
    """Split a schema script into complete statements (triggers contain ';')."""
    buf = ""
    for line in script.splitlines(keepends=True):
        if not buf and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf
            buf = ""
    if buf.strip():
        yield buf


class SqliteSnapshot(ReadSnapshot):
    """A read snapshot on one connection: ``BEGIN`` on entry (SQLite then fixes the
    snapshot at the first read), ``ROLLBACK`` on exit. Errors are translated with
    ``doing`` (default: what each read does), ``name`` and ``damage`` as
    :func:`storage_error` takes them."""

    def __init__(self, conn: sqlite3.Connection, *, doing: str | None = None,
                 name: str | None = None, damage: bool = False) -> None:
        self.conn = conn
        self._doing = doing
        self._name = name
        self._damage = damage

    def _fail(self, exc: sqlite3.Error, doing: str) -> StorageError:
        return storage_error(exc, self._doing or doing, name=self._name, damage=self._damage)

    def __enter__(self) -> SqliteSnapshot:
        try:
            self.conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise self._fail(exc, "beginning a read") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self.conn.in_transaction:
            with suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def _one(self, sql: str, params: Sequence[Any] = (), doing: str = "reading events"
             ) -> Any:
        try:
            return self.conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise self._fail(exc, doing) from exc

    def head(self) -> tuple[int, str]:
        row = self._one("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)

    def first_seq(self) -> int | None:
        # MIN on its own: one b-tree descent
        (seq,) = self._one("SELECT MIN(seq) FROM events")
        return seq if isinstance(seq, int) else None

    def event_count(self) -> int:
        (count,) = self._one("SELECT COUNT(*) FROM events")
        return int(count)

    def event_rows(self, after: int = 0, upto: int | None = None, *,
                   short: bool = False) -> Iterator[list[EventRow]]:
        sql = f"SELECT {_SHORT_COLS if short else _EVENT_COLS} FROM events WHERE seq > ?"
        params: list[Any] = [after]
        if upto is not None:
            sql += " AND seq <= ?"
            params.append(upto)
        try:
            cursor = self.conn.execute(sql + " ORDER BY seq", params)
            while rows := cursor.fetchmany(BATCH):
                yield rows
        except sqlite3.Error as exc:
            raise self._fail(exc, "reading events") from exc

    def last_rows(self, n: int) -> list[EventRow]:
        try:
            return self.conn.execute(f"SELECT {_EVENT_COLS} FROM events ORDER BY seq DESC "
                                     "LIMIT ?", (n,)).fetchall()
        except sqlite3.Error as exc:
            raise self._fail(exc, "reading events") from exc

    def row_upto(self, seq: int) -> tuple[int, str] | None:
        row = self._one("SELECT seq, hash FROM events WHERE seq >= 1 AND seq <= ? "
                        "ORDER BY seq DESC LIMIT 1", (seq,))
        return (row[0], row[1]) if row else None

    def newest_command_seq(self) -> int | None:
        # rowids only grow: commands are never deleted
        row = self._one("SELECT seq FROM commands WHERE seq IS NOT NULL "
                        "ORDER BY rowid DESC LIMIT 1", doing="reading command records")
        return row[0] if row else None

    def table_rows(self, which: int) -> Iterator[Sequence[Any]]:
        try:
            yield from self.conn.execute(_TABLE_SQL[which])
        except sqlite3.Error as exc:
            raise self._fail(exc, "reading") from exc


class _Reads:
    """Point reads shared by the store (read connection) and a transaction."""

    _conn: sqlite3.Connection

    def get_plan(self, plan_id: str) -> Plan | None:
        row = self._conn.execute(
            f"SELECT {_PLAN_COLS} FROM plans WHERE plan_id = ?", (plan_id,)).fetchone()
        return Plan(*row) if row else None

    def get_item(self, item_id: str) -> Item | None:
        row = self._conn.execute(
            f"SELECT {_ITEM_COLS} FROM plan_items WHERE item_id = ?", (item_id,)).fetchone()
        return Item(*row) if row else None

    def get_link(self, link_id: str) -> Link | None:
        row = self._conn.execute(
            f"SELECT {_LINK_COLS} FROM plan_links WHERE link_id = ?", (link_id,)).fetchone()
        return Link(*row) if row else None

    def find_link(self, from_item_id: str, to_item_id: str, link_type: str) -> Link | None:
        row = self._conn.execute(
            f"SELECT {_LINK_COLS} FROM plan_links WHERE from_item_id = ? AND to_item_id = ?"
            " AND link_type = ?", (from_item_id, to_item_id, link_type)).fetchone()
        return Link(*row) if row else None

    def get_command(self, command_id: str) -> CommandRecord | None:
        row = self._conn.execute(
            f"SELECT {_COMMAND_COLS} FROM commands WHERE command_id = ?", (command_id,)
        ).fetchone()
        return CommandRecord(*row) if row else None

    def head(self) -> tuple[int, str]:
        row = self._conn.execute(
            "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)


class _SqliteTx(_Reads, Transaction):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._head: tuple[int, str] | None = None  # the writer's own appends keep it fresh

    def head(self) -> tuple[int, str]:
        if self._head is None:
            self._head = super().head()
        return self._head

    def insert_plan(self, plan: Plan) -> None:
        self._conn.execute(f"INSERT INTO plans ({_PLAN_COLS}) VALUES (?,?,?,?,?,?,?)",
                           (plan.plan_id, plan.title, plan.owner_agent, plan.status,
                            plan.version, plan.created_ts, plan.updated_ts))

    def update_plan(self, plan: Plan) -> None:
        self._conn.execute(
            "UPDATE plans SET title = ?, owner_agent = ?, status = ?, version = ?,"
            " updated_ts = ? WHERE plan_id = ?",
            (plan.title, plan.owner_agent, plan.status, plan.version, plan.updated_ts,
             plan.plan_id))

    def insert_item(self, item: Item) -> None:
        self.insert_items((item,))

    def update_item(self, item: Item) -> None:
        self.update_items((item,))

    def insert_link(self, link: Link) -> None:
        self._conn.execute(f"INSERT INTO plan_links ({_LINK_COLS}) VALUES (?,?,?,?,?,?)",
                           (link.link_id, link.plan_id, link.from_item_id, link.to_item_id,
                            link.link_type, link.created_ts))

    def append_event(self, event: Event) -> None:
        self.append_events((event,))

    def put_command(self, record: CommandRecord) -> None:
        self.put_commands((record,))

    def get_commands(self, command_ids: Sequence[str]) -> dict[str, CommandRecord]:
        found: dict[str, CommandRecord] = {}
        for at in range(0, len(command_ids), _IN_CHUNK):
            chunk = command_ids[at:at + _IN_CHUNK]
            rows = self._conn.execute(
                f"SELECT {_COMMAND_COLS} FROM commands WHERE command_id IN"
                f" ({','.join('?' * len(chunk))})", chunk).fetchall()
            found.update((row[0], CommandRecord(*row)) for row in rows)
        return found

    def append_events(self, events: Sequence[Event]) -> None:
        if not events:
            return
        self._conn.executemany(
            f"INSERT INTO events ({_EVENT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(e.seq, e.event_id, e.ts, e.event_type, e.session_id, e.task_id, e.actor,
              e.plan_id, e.item_id, e.command_id, e.payload, e.prev_hash, e.hash)
             for e in events])
        self._head = (events[-1].seq, events[-1].hash)

    def put_commands(self, records: Iterable[CommandRecord]) -> None:
        self._conn.executemany(
            f"INSERT INTO commands ({_COMMAND_COLS}) VALUES (?,?,?,?,?,?)",
            [(r.command_id, r.fingerprint, r.status, r.seq, r.outcome, r.ts)
             for r in records])

    def insert_items(self, items: Iterable[Item]) -> None:
        self._conn.executemany(
            f"INSERT INTO plan_items ({_ITEM_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [(i.item_id, i.plan_id, i.kind, i.title, i.state, i.priority, i.assigned_to,
              i.due_ts, i.version, i.created_ts, i.updated_ts) for i in items])

    def update_items(self, items: Iterable[Item]) -> None:
        self._conn.executemany(
            "UPDATE plan_items SET kind = ?, title = ?, state = ?, priority = ?,"
            " assigned_to = ?, due_ts = ?, version = ?, updated_ts = ? WHERE item_id = ?",
            [(i.kind, i.title, i.state, i.priority, i.assigned_to, i.due_ts, i.version,
              i.updated_ts, i.item_id) for i in items])


class SqliteStore(_Reads, Store):
    """A ledger database file. Writes go through :meth:`transaction` only."""

    def __init__(self, path: Path | str, *, readonly: bool = False,
                 durability: Durability = "full", manual_checkpoints: bool = False,
                 locator: Locator | None = None) -> None:
        """``manual_checkpoints``: no WAL checkpoint inside COMMIT (SQLite's automatic
        one, every 1000 WAL pages, delays the reply of whichever commit crosses the mark);
        the owner calls :meth:`maintenance` instead, when it suits it. ``locator``: how
        the factory named the file (default: by its path)."""
        self.path = Path(path)
        self._locator = locator or file_locator(self.path)
        self.readonly = readonly
        self.durability = durability
        self.manual_checkpoints = manual_checkpoints
        self._writer: sqlite3.Connection | None = None
        #: set once the file written is no longer the one at the path: no more writes
        self._lost: StoreLost | None = None
        #: (st_dev, st_ino) of the file, and of its -wal once the writer has committed
        self._file_id: tuple[int, int] | None = None
        self._wal_id: tuple[int, int] | None = None
        self._wal_mode = False
        #: the paths stat'ed after each commit, as strings (faster to os.stat)
        self._file_name = str(self.path)
        self._wal_name = self._file_name + "-wal"
        if not self.path.exists():
            raise StorageError(ErrorCode.DB_NOT_INITIALISED,
                               f"no database at {self.path}; run bin/init_db first")
        try:
            self._conn = self._connect(readonly=True)
            has_meta = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
        except sqlite3.Error as exc:
            raise storage_error(exc, f"opening {self.path.name}") from exc
        if not has_meta:
            self._conn.close()
            raise StorageError(ErrorCode.DB_NOT_INITIALISED,
                               f"{self.path} has no ledger schema; run bin/init_db first")
        if not readonly:
            self._file_id = _file_id(self.path)

    @property
    def locator(self) -> Locator:
        return self._locator

    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        conn = connect(self.path, readonly=readonly, check_same_thread=False)
        if not readonly:
            for pragma in writer_pragmas(self.durability,
                                         manual_checkpoints=self.manual_checkpoints):
                row = conn.execute(pragma).fetchone()
                if pragma.startswith("PRAGMA journal_mode"):  # what SQLite could set
                    self._wal_mode = row is not None and str(row[0]).lower() == "wal"
        return conn


    def _lose(self, problem: str, **details: Any) -> StoreLost:
        self._lost = StoreLost(
            f"{self.locator.describe()}: {problem}; what this process commits now reaches "
            "nobody, so it stops writing (the commits not acknowledged: retry them with "
            "the same ids once a writer serves the database again)", **details)
        return self._lost

    def _confirm_in_place(self) -> None:
        """Raise StoreLost unless the file at the path, and its -wal, are the ones the
        writer connection has open, and the writer lease still guards them. Three
        ``stat`` calls: cheap enough for every commit group."""
        try:
            st = os.stat(self._file_name)
        except OSError:
            raise self._lose("the database file is gone from its path (removed, or its "
                             "folder moved or removed)", what="unlinked") from None
        if (st.st_dev, st.st_ino) != self._file_id:
            raise self._lose("another file has taken the database's path (replaced by a "
                             "rename or a copy)", what="replaced")
        if self._wal_mode:
            try:
                wal = os.stat(self._wal_name)
            except OSError:
                raise self._lose("its -wal file is gone from beside it",
                                 what="wal_unlinked") from None
            wal_id = (wal.st_dev, wal.st_ino)
            if self._wal_id is None:
                self._wal_id = wal_id
            elif wal_id != self._wal_id:
                raise self._lose("its -wal file was replaced", what="wal_replaced")
        try:
            self.check_lease()
        except StoreLost as exc:
            self._lost = exc
            raise

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        if self.readonly:
            raise StorageError(ErrorCode.DB_ERROR, "database was opened read-only")
        if self._lost is not None:
            raise self._lost
        try:
            if self._writer is None:
                self._writer = self._connect(readonly=False)
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise storage_error(exc, "beginning a transaction") from exc
        try:
            yield _SqliteTx(conn)
        except BaseException as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc, "writing") from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise storage_error(exc, "committing") from exc
        self._confirm_in_place()  # before anyone is told it committed

    @contextmanager
    def read_snapshot(self) -> Iterator[ReadSnapshot]:
        """One read transaction on a read-only connection of its own (so the store's
        other reads, on any thread, stay outside it), fixed on entry."""
        try:
            conn = self._connect(readonly=True)
        except sqlite3.Error as exc:
            raise storage_error(exc, "reading events") from exc
        try:
            with SqliteSnapshot(conn) as snap:
                snap.head()  # the first read fixes the snapshot: now, not at first use
                yield snap
        finally:
            conn.close()

    def maintenance(self) -> dict[str, Any]:
        """A PASSIVE WAL checkpoint: committed WAL pages copied back into the database
        file; never waits for readers, never blocks them. Returns ``{"wal_checkpoint":
        "PASSIVE", "wal_pages": pages in the WAL, "checkpointed": pages copied}``
        (nothing to do before the first write)."""
        if self._writer is None:
            return {}
        try:
            row = self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise storage_error(exc, "checkpointing the WAL") from exc
        return {"wal_checkpoint": "PASSIVE", "wal_pages": int(row[1]),
                "checkpointed": int(row[2])}

    def integrity_check(self) -> DamageReport | None:
        with SqliteBackend().inspect(self.locator) as inspection:
            return inspection.damage()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise storage_error(exc, "reading") from exc

    def head(self) -> tuple[int, str]:
        try:
            return super().head()
        except sqlite3.Error as exc:
            raise storage_error(exc, "reading the chain head") from exc

    def list_plans(self) -> list[Plan]:
        return [Plan(*r) for r in self._query(_TABLE_SQL[0])]

    def list_items(self, plan_id: str | None = None) -> list[Item]:
        if plan_id is None:
            rows = self._query(_TABLE_SQL[1])
        else:
            rows = self._query(f"SELECT {_ITEM_COLS} FROM plan_items WHERE plan_id = ?"
                               " ORDER BY item_id", (plan_id,))
        return [Item(*r) for r in rows]

    def list_links(self, plan_id: str | None = None) -> list[Link]:
        if plan_id is None:
            rows = self._query(_TABLE_SQL[2])
        else:
            rows = self._query(f"SELECT {_LINK_COLS} FROM plan_links WHERE plan_id = ?"
                               " ORDER BY link_id", (plan_id,))
        return [Link(*r) for r in rows]

    def iter_events(self, from_seq: int = 1, to_seq: int | None = None, *,
                    limit: int | None = None,
                    filters: dict[str, Any] | None = None) -> Iterator[Event]:
        where = ["seq >= ?"]
        params: list[Any] = [from_seq]
        if to_seq is not None:
            where.append("seq <= ?")
            params.append(to_seq)
        for column, value in (filters or {}).items():
            if column not in EVENT_FILTER_COLUMNS:
                raise ValueError(f"cannot filter events by {column!r}")
            where.append(f"{column} IS ?")  # IS: a None filter matches NULL
            params.append(value)
        sql = f"SELECT {_EVENT_COLS} FROM events WHERE {' AND '.join(where)} ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        try:
            cursor = self._conn.execute(sql, params)
            while rows := cursor.fetchmany(1000):
                for row in rows:
                    yield Event(*row)
        except sqlite3.Error as exc:
            raise storage_error(exc, "reading events") from exc

    def count_by(self, column: str) -> dict[str, int]:
        if column not in EVENT_FILTER_COLUMNS:
            raise ValueError(f"cannot count events by {column!r}")
        rows = self._query(f"SELECT {column}, COUNT(*) FROM events GROUP BY {column}"
                           f" ORDER BY {column}")
        return {str(k): int(n) for k, n in rows}

    def get_command(self, command_id: str) -> CommandRecord | None:
        try:
            return super().get_command(command_id)
        except sqlite3.Error as exc:
            raise storage_error(exc, "reading a command record") from exc

    def _final_checkpoint(self) -> dict[str, Any]:
        """``PRAGMA wal_checkpoint(TRUNCATE)``: every committed WAL frame copied into the
        file (and fsynced), the WAL emptied; it waits (busy_timeout) for readers of older
        snapshots. Returns ``{"wal_checkpoint": "TRUNCATE", "complete": bool,
        "wal_pages", "checkpointed"}``; ``complete`` is whether the file alone now holds
        every commit (all frames copied, even if a reader kept the WAL from being
        emptied)."""
        if self._writer is None:
            self._writer = self._connect(readonly=False)
        row = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        busy, pages, done = (int(v) for v in row)
        return {"wal_checkpoint": "TRUNCATE", "complete": busy == 0 or pages == done >= 0,
                "wal_pages": pages, "checkpointed": done}

    def close_store(self) -> None:
        """Close the connections; a writer store first checkpoints the whole WAL into the
        file (:meth:`_final_checkpoint`), so that a copy of the file alone, taken after
        this, holds every commit. Not a store whose file was lost (StoreLost): its
        WAL is left alone."""
        self._conn.close()
        if not self.readonly and self._lost is None:
            try:
                self.close_report = self._final_checkpoint()
            except sqlite3.Error as exc:
                self.close_report = {"wal_checkpoint": "TRUNCATE", "complete": False,
                                         "error": str(exc)}
            if not self.close_report["complete"]:
                log.warning("%s: the WAL could not be checkpointed into the file at close "
                            "(%s); the file alone is not a complete copy until the next "
                            "writer's close: copy it together with its -wal",
                            self.locator.describe(), self.close_report)
        if self._writer is not None:
            self._writer.close()
        self._writer = None


class SqliteBackend(Backend):
    """SQLite files: the locator's address is the file's absolute path."""

    scheme = SCHEME
    schema_version = SCHEMA_VERSION

    def open(self, locator: Locator, *, readonly: bool = False,
             durability: Durability = "full", manual_maintenance: bool = False
             ) -> SqliteStore:
        return SqliteStore(locator.address, readonly=readonly, durability=durability,
                           manual_checkpoints=manual_maintenance, locator=locator)

    def initialise(self, locator: Locator) -> bool:
        return initialise(Path(locator.address))

    def exists(self, locator: Locator) -> bool:
        return Path(locator.address).exists()

    def acquire_writer(self, locator: Locator, holder: dict[str, Any]) -> WriterLease:
        path = Path(locator.address)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(ErrorCode.DB_ERROR, f"{locator.name}: cannot make its "
                               f"folder: {exc.strerror}") from exc
        return FileLease(lock_path(path), locator.describe(), holder)

    def size_bytes(self, locator: Locator) -> int | None:
        path = Path(locator.address)
        return path.stat().st_size if path.is_file() else None

    def inspect(self, locator: Locator) -> Inspection:
        # imported here: the integrity module builds on this one
        from ledger.storage.sqlite_integrity import SqliteInspection

        return SqliteInspection(Path(locator.address), locator.name)
