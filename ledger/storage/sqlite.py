"""SQLite backend of :class:`ledger.persistence.Store` (WAL mode, one writer).

Durability: ``synchronous=FULL`` by default, so a committed transaction survives a
process crash and a power loss; ``normal`` survives a process crash only (the last
commits may be lost on power loss). Every sqlite3 error becomes a StorageError here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from importlib.resources import files
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote

from ledger.log.chain import GENESIS_HASH
from ledger.storage.base import EVENT_FILTER_COLUMNS, CommandRecord, Store, Transaction
from ledger.storage.rows import Event, Item, Link, Plan, State
from schema.errors import ErrorCode, StorageError
from schema.vocabulary import EVENT_COLUMNS, ITEM_COLUMNS, LINK_COLUMNS, PLAN_COLUMNS

#: the SQL files are package data of ``schema`` (importlib.resources: works installed too)
SCHEMA_DIR: Final = files("schema")
SCHEMA_FILES: Final = ("plan_schema.sql", "event_log_schema.sql")
SCHEMA_VERSION: Final = "1"
Durability = Literal["full", "normal", "off"]

_PLAN_COLS: Final = ", ".join(PLAN_COLUMNS)
_ITEM_COLS: Final = ", ".join(ITEM_COLUMNS)
_LINK_COLS: Final = ", ".join(LINK_COLUMNS)
_EVENT_COLS: Final = ", ".join(EVENT_COLUMNS)
_COMMAND_COLS: Final = "command_id, fingerprint, status, seq, outcome, ts"
#: Most parameters in one ``IN (...)`` list (SQLite allows 32766 since 3.32).
_IN_CHUNK: Final = 500


def _storage_error(exc: sqlite3.Error, doing: str) -> StorageError:
    text = str(exc)
    code = ErrorCode.DB_BUSY if "locked" in text or "busy" in text else ErrorCode.DB_ERROR
    return StorageError(code, f"{doing}: {text}")


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
        raise _storage_error(exc, f"initialising {path.name}") from exc
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
                 durability: Durability = "full", manual_checkpoints: bool = False) -> None:
        """``manual_checkpoints``: no WAL checkpoint inside COMMIT (SQLite's automatic
        one, every 1000 WAL pages, delays the reply of whichever commit crosses the mark);
        the owner calls :meth:`checkpoint` instead, when it suits it."""
        self.path = Path(path)
        self.readonly = readonly
        self.durability = durability
        self.manual_checkpoints = manual_checkpoints
        self._writer: sqlite3.Connection | None = None
        if not self.path.exists():
            raise StorageError(ErrorCode.DB_NOT_INITIALISED,
                               f"no database at {self.path}; run bin/init_db first")
        try:
            self._conn = self._connect(readonly=True)
            has_meta = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
        except sqlite3.Error as exc:
            raise _storage_error(exc, f"opening {self.path.name}") from exc
        if not has_meta:
            self._conn.close()
            raise StorageError(ErrorCode.DB_NOT_INITIALISED,
                               f"{self.path} has no ledger schema; run bin/init_db first")

    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        if readonly:
            uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                   check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.durability.upper()}")
            conn.execute("PRAGMA foreign_keys=ON")
            if self.manual_checkpoints:
                conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        if self.readonly:
            raise StorageError(ErrorCode.DB_ERROR, "database was opened read-only")
        try:
            if self._writer is None:
                self._writer = self._connect(readonly=False)
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _storage_error(exc, "beginning a transaction") from exc
        try:
            yield _SqliteTx(conn)
        except BaseException as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _storage_error(exc, "writing") from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise _storage_error(exc, "committing") from exc

    def checkpoint(self) -> int:
        """Copy committed WAL pages back into the database file (PASSIVE: never waits
        for readers, never blocks them); returns how many pages the WAL holds."""
        if self._writer is None:
            return 0
        try:
            row = self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise _storage_error(exc, "checkpointing the WAL") from exc
        return int(row[1])

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _storage_error(exc, "reading") from exc

    def head(self) -> tuple[int, str]:
        try:
            return super().head()
        except sqlite3.Error as exc:
            raise _storage_error(exc, "reading the chain head") from exc

    def snapshot(self) -> tuple[int, str, State]:
        """Head seq, head hash and the whole state, read in ONE read transaction: a
        consistent snapshot even while another connection commits (signed checkpoints)."""
        try:
            self._conn.execute("BEGIN")
            try:
                seq, head_hash = _Reads.head(self)
                state = self.load_state()
            finally:
                self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _storage_error(exc, "reading a snapshot") from exc
        return seq, head_hash, state

    def list_plans(self) -> list[Plan]:
        return [Plan(*r) for r in self._query(f"SELECT {_PLAN_COLS} FROM plans ORDER BY plan_id")]

    def list_items(self, plan_id: str | None = None) -> list[Item]:
        if plan_id is None:
            rows = self._query(f"SELECT {_ITEM_COLS} FROM plan_items ORDER BY plan_id, item_id")
        else:
            rows = self._query(f"SELECT {_ITEM_COLS} FROM plan_items WHERE plan_id = ?"
                               " ORDER BY item_id", (plan_id,))
        return [Item(*r) for r in rows]

    def list_links(self, plan_id: str | None = None) -> list[Link]:
        if plan_id is None:
            rows = self._query(f"SELECT {_LINK_COLS} FROM plan_links ORDER BY link_id")
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
            raise _storage_error(exc, "reading events") from exc

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
            raise _storage_error(exc, "reading a command record") from exc

    def close(self) -> None:
        # the read-only connection first: the last one to close (the writer) can then
        # checkpoint the WAL back into the database file
        for conn in (self._conn, self._writer):
            if conn is not None:
                conn.close()
        self._writer = None
