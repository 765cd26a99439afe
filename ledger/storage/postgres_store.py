"""PostgreSQL backend of :class:`ledger.storage.base.Store` (psycopg 3).

The same store as :mod:`ledger.storage.sqlite`, row for row: the schema
(``schema/postgres/*.sql``, version :data:`SCHEMA_VERSION`, the same as SQLite's) has the
same tables, keys and checks, compares text byte-wise (``COLLATE "C"``: every listing
sorts as SQLite's BINARY does), stores 64-bit integers (BIGINT) and the same canonical
payload and timestamp text, and refuses UPDATE, DELETE and TRUNCATE of the event log
and the command records, and any insert that does not continue the chain. So hashes,
head and state hash are byte-identical on both backends.

Sessions. A store holds:

- a read session (autocommit: each read sees the last committed state), re-opened if
  it broke;
- for writing, one writer session, opened at the first :meth:`PgStore.transaction` and
  kept for the store's life. Every write transaction begins with :meth:`PgStore.begin_sql`
  (``BEGIN`` and a transaction-level advisory lock, :data:`WRITER_LOCK`: a second writer
  waits for the first, as SQLite's ``BEGIN IMMEDIATE`` does, and gives DB_BUSY after
  :data:`LOCK_TIMEOUT_MS`) in one round trip; this is where a fencing check belongs. A
  writer session that breaks is never replaced: the store then refuses every write
  (DB_CONNECTION_LOST) and its owner must open a new one. Group commit writes each
  table's new rows with one COPY, and the changed items with one UPDATE;
- with the writer lease (:class:`PgLease`, taken by the factory for every writer), a
  session of its own holding the session-level advisory lock :data:`LEASE_LOCK`, which
  the server releases when that session ends however it ends (one writer per database:
  a second one gets DB_LOCKED naming the holder, read from that session's last query);
- read snapshots (:class:`PgSnapshot`, ``REPEATABLE READ READ ONLY``) on sessions of
  their own, kept for reuse; one can be exported (``pg_export_snapshot()``) and attached
  to from another process (:meth:`PgStore.shared_snapshot`), so that a verify_chain
  helper reads exactly what the verifier reads.

Durability (``synchronous_commit`` of the writer session): ``full`` is ``on`` (a commit
returns once its WAL is flushed, and on a synchronous standby once it confirmed);
``normal`` and ``off`` are ``off`` (the writer's own crash loses nothing; a crash of
the server may lose the last ~0.6 s of commits).

Errors: every psycopg error becomes a StorageError (or, for a malformed URL, a
CoordinatorError INVALID_VALUE) in :func:`connect_error` and :func:`storage_error`, with
any password scrubbed: DB_UNREACHABLE, DB_AUTH_FAILED, DB_NOT_INITIALISED (no such
database, or no ledger schema in it), DB_SCHEMA_VERSION, DB_UNSUPPORTED (a server older
than PostgreSQL 14, or not UTF8), DB_BUSY (a lock held too long), DB_READ_ONLY (a
standby), DB_CONNECTION_LOST, DB_DAMAGED (data or index corruption, in the integrity
checks) and DB_ERROR. This module and :mod:`ledger.storage.postgres_integrity` are the
only importers of ``psycopg``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from importlib.resources import files
from typing import Any, Final

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict

from ledger.storage.base import (
    EVENT_FILTER_COLUMNS,
    LEDGER_TABLES,
    CommandRecord,
    DamageReport,
    Durability,
    EventRow,
    Locator,
    ReadSnapshot,
    Store,
    StoreLost,
    Transaction,
    WriterLease,
    damaged,
    locked,
)
from ledger.storage.postgres import SCHEMA_VERSION, PostgresBackend, scrubber
from ledger.storage.rows import Event, Item, Link, Plan
from ledger.storage.sql import COMMAND_COLS as _COMMAND_COLS
from ledger.storage.sql import EVENT_COLS as _EVENT_COLS
from ledger.storage.sql import HEAD_SQL as _HEAD_SQL
from ledger.storage.sql import ITEM_COLS as _ITEM_COLS
from ledger.storage.sql import LINK_COLS as _LINK_COLS
from ledger.storage.sql import PLAN_COLS as _PLAN_COLS
from ledger.storage.sql import SHORT_COLS as _SHORT_COLS
from ledger.storage.sql import TABLE_SQL as _TABLE_SQL
from schema.errors import CoordinatorError, ErrorCode, StorageError
from schema.vocabulary import GENESIS_HASH

__all__ = ["Connection", "PgLease", "PgSnapshot", "PgStore", "connect", "initialise",
           "ledger_tables", "size_bytes", "storage_error"]

Connection = psycopg.Connection[tuple[Any, ...]]
Scrub = Callable[[str], str]

#: the SQL files are package data of ``schema`` (importlib.resources: works installed too)
SCHEMA_DIR: Final = files("schema") / "postgres"
SCHEMA_FILES: Final = ("plan_schema.sql", "event_log_schema.sql")
#: CREATE OR REPLACE TRIGGER (and transition tables) need PostgreSQL 14.
MIN_SERVER_VERSION: Final = 140000
#: libpq's connect_timeout when neither the URL nor PGCONNECT_TIMEOUT sets one (s).
CONNECT_TIMEOUT: Final = 10
#: How long a writer waits for another's lock before DB_BUSY (SQLite's busy timeout).
LOCK_TIMEOUT_MS: Final = 5000
#: pg_advisory_xact_lock keys: every write transaction takes WRITER_LOCK first,
#: initialise() takes INIT_LOCK (two bin/init_db at once must not race on CREATE).
WRITER_LOCK: Final = 0x4C33_4C45_4447_5231  # "L3LEDGR1"
INIT_LOCK: Final = 0x4C33_4C45_4447_5230
#: pg_try_advisory_lock key of the writer lease (session level: PgLease)
LEASE_LOCK: Final = 0x4C33_4C45_4447_5232
#: what starts the holder's JSON in the comment of the lease session's query
_HOLDER_MARK: Final = "l3-writer "
_HOLDER_SQL: Final = (
    "SELECT a.query, a.pid, a.backend_start FROM pg_locks l "
    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 1")
APPLICATION_NAME: Final = "l3-ledger"
#: Event rows fetched at a time by a read snapshot and by iter_events.
BATCH: Final = 2000

_TABLES_SQL: Final = ("SELECT c.relname FROM pg_class c WHERE c.relkind IN ('r', 'p') "
                      "AND c.relnamespace = current_schema()::regnamespace "
                      "AND c.relname = ANY(%s)")


def _unnest_insert(table: str, columns: str, types: Sequence[str]) -> str:
    """``INSERT`` of many rows in one statement, each column one binary array (``%b``:
    psycopg sends each element as it is, with no text quoting; the events trigger then
    checks all the rows at once)."""
    arrays = ", ".join(f"%b::{t}[]" for t in types)
    return f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays})"


_INSERT_EVENTS: Final = _unnest_insert("events", _EVENT_COLS, ["bigint"] + ["text"] * 12)
_INSERT_COMMANDS: Final = _unnest_insert(
    "commands", _COMMAND_COLS, ("text", "text", "text", "bigint", "text", "text"))
_INSERT_ITEMS: Final = _unnest_insert(
    "plan_items", _ITEM_COLS, ["text"] * 5 + ["bigint", "text", "text", "bigint", "text", "text"])
_UPDATED_ITEM_COLS: Final = ("kind", "title", "state", "priority", "assigned_to", "due_ts",
                             "version", "updated_ts", "item_id")
_UPDATED_ITEM_TYPES: Final = ("text", "text", "text", "bigint", "text", "text", "bigint",
                              "text", "text")
_UPDATE_ITEMS: Final = (
    "UPDATE plan_items AS t SET "
    + ", ".join(f"{c} = u.{c}" for c in _UPDATED_ITEM_COLS[:-1])
    + " FROM unnest(" + ", ".join(f"%b::{t}[]" for t in _UPDATED_ITEM_TYPES) + ")"
    + f" AS u({', '.join(_UPDATED_ITEM_COLS)}) WHERE t.item_id = u.item_id")

#: SQLSTATEs: the session is gone (class 08, and the server shutting down or crashed)
_LOST_STATES: Final = frozenset({"57P01", "57P02", "57P03"})
#: ... a lock or a resource held too long, a conflict to retry
_BUSY_STATES: Final = frozenset({"55P03", "40001", "40P01", "57014", "53300"})
#: ... the data or an index is corrupt (and amcheck's findings)
DAMAGE_STATES: Final = frozenset({"XX001", "XX002"})
_READ_ONLY_STATE: Final = "25006"


# --------------------------------------------------------------------------- errors


def _hint(locator: Locator) -> str:
    return f"bin/init_db --db {locator.name}"


def connect_error(exc: psycopg.Error, locator: Locator, scrub: Scrub) -> CoordinatorError:
    """THE translation of a failed connection attempt. libpq reports these as text
    only (no SQLSTATE), so they are told apart by libpq's and the server's words."""
    text = scrub(str(exc).strip()).removeprefix("connection failed: ")
    low = text.lower()
    where = locator.name
    if isinstance(exc, psycopg.ProgrammingError):  # libpq could not parse the URL
        return CoordinatorError(ErrorCode.INVALID_VALUE,
                                f"{locator.shown}: not a valid PostgreSQL URL: {text}",
                                field="db")
    if ("password" in low or "authentication" in low or "pg_hba.conf" in low
            or ("role" in low and "does not exist" in low)
            or "permission denied for database" in low):
        return StorageError(ErrorCode.DB_AUTH_FAILED,
                            f"{where}: the server refused the credentials: {text} (the "
                            "password comes from the URL, PGPASSWORD or the password file)")
    if "database" in low and "does not exist" in low:
        return StorageError(ErrorCode.DB_NOT_INITIALISED,
                            f"{where}: {text}; create it (createdb, or CREATE DATABASE), "
                            f"then run {_hint(locator)}")
    if "too many clients" in low or "connection slots" in low:
        return StorageError(ErrorCode.DB_BUSY, f"{where}: {text}")
    return StorageError(ErrorCode.DB_UNREACHABLE, f"{where}: cannot connect: {text}")


def is_lost(exc: psycopg.Error, conn: Connection | None) -> bool:
    """Whether ``exc`` says the session itself is gone."""
    state = getattr(exc, "sqlstate", None) or ""
    if state.startswith("08") or state in _LOST_STATES:
        return True
    return conn is not None and (conn.broken or conn.closed)


def storage_error(exc: psycopg.Error, doing: str, *, name: str, scrub: Scrub,
                  conn: Connection | None = None, damage: bool = False,
                  committing: bool = False) -> StorageError:
    """THE translation of an error on an open session. ``damage`` (the integrity checks,
    which read data that may be corrupt): corruption is DB_DAMAGED, with the hint where
    to look. ``committing``: the error came from COMMIT (so a lost session leaves the
    outcome unknown)."""
    text = scrub(str(exc).strip())
    state = getattr(exc, "sqlstate", None) or ""
    if damage and state in DAMAGE_STATES:
        return damaged(name, f"{doing}: {text}", sqlstate=state)
    if is_lost(exc, conn):
        what = ("the transaction may or may not have been committed; resend it with the "
                "same command ids (each is applied once)" if committing else
                "nothing of the transaction was committed")
        return StorageError(ErrorCode.DB_CONNECTION_LOST,
                            f"{name}: the connection to the database was lost while "
                            f"{doing}: {text}; {what}", details={"sqlstate": state or None})
    if state in _BUSY_STATES:
        return StorageError(ErrorCode.DB_BUSY, f"{name}: {doing}: {text}",
                            details={"sqlstate": state})
    if state == _READ_ONLY_STATE:
        return StorageError(ErrorCode.DB_READ_ONLY,
                            f"{name}: {doing}: {text} (a standby, or a read-only session: "
                            "the ledger writes to the primary only)",
                            details={"sqlstate": state})
    return StorageError(ErrorCode.DB_ERROR, f"{name}: {doing}: {text}",
                        details={"sqlstate": state} if state else None)


# --------------------------------------------------------------------------- sessions


def connect(locator: Locator, *, settings: dict[str, str] | None = None,
            check_server: bool = True, role: str = "") -> Connection:
    """An autocommit session to the database ``locator`` names, with ``settings``
    (``SET name = value``, ours only) applied. The URL goes to libpq as it is; this
    adds only ``fallback_application_name`` (``l3-ledger``, plus `` role``: what
    ``pg_stat_activity`` shows unless the URL names one) and a ``connect_timeout`` of
    :data:`CONNECT_TIMEOUT` s when neither the URL nor the environment sets one.
    ``check_server``: refuse (DB_UNSUPPORTED) a server before :data:`MIN_SERVER_VERSION`
    or one whose database is not UTF8."""
    scrub = scrubber(locator.address)
    try:
        params = conninfo_to_dict(locator.address)
    except psycopg.Error as exc:
        raise connect_error(exc, locator, scrub) from None
    extra: dict[str, Any] = {"fallback_application_name":
                             f"{APPLICATION_NAME} {role}".strip()}
    if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
        extra["connect_timeout"] = CONNECT_TIMEOUT
    try:
        conn: Connection = psycopg.connect(locator.address, autocommit=True, **extra)
    except psycopg.Error as exc:
        raise connect_error(exc, locator, scrub) from None
    try:
        if check_server:
            _check_server(conn, locator)
        if settings:
            conn.execute("; ".join(f"SET {k} = {v}" for k, v in settings.items()))
    except psycopg.Error as exc:
        conn.close()
        raise storage_error(exc, "setting up the session", name=locator.name,
                            scrub=scrub, conn=conn) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _check_server(conn: Connection, locator: Locator) -> None:
    version = conn.info.server_version
    encoding = conn.info.parameter_status("server_encoding")
    problem = None
    if version < MIN_SERVER_VERSION:
        problem = (f"the server is PostgreSQL {version // 10000}; the ledger needs "
                   f"{MIN_SERVER_VERSION // 10000} or newer")
    elif encoding != "UTF8":
        problem = (f"the database's encoding is {encoding}; the ledger needs UTF8 (so that "
                   "text compares byte for byte as in SQLite)")
    if problem is not None:
        raise StorageError(ErrorCode.DB_UNSUPPORTED, f"{locator.name}: {problem}")


def _tables(conn: Connection) -> set[str]:
    """Which of the ledger's tables the session's current schema holds."""
    return {r[0] for r in conn.execute(_TABLES_SQL, (list(LEDGER_TABLES),))}


def _schema_version(conn: Connection) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else str(row[0])


def _version_error(locator: Locator, found: str | None) -> StorageError:
    return StorageError(
        ErrorCode.DB_SCHEMA_VERSION,
        f"{locator.name} holds ledger schema version {found}; this ledger reads version "
        f"{SCHEMA_VERSION} only (no migration from {found} exists): use the ledger that "
        "wrote it, or another database", details={"found": found, "expected": SCHEMA_VERSION})


def _one_shot(locator: Locator, doing: str, work: Callable[[Connection], Any]) -> Any:
    """Run ``work`` on a session of its own, closed afterwards."""
    conn = connect(locator)
    try:
        return work(conn)
    except psycopg.Error as exc:
        raise storage_error(exc, doing, name=locator.name, scrub=scrubber(locator.address),
                            conn=conn) from None
    finally:
        conn.close()


def ledger_tables(locator: Locator) -> set[str]:
    """The ledger tables the database holds (empty: nothing of ours is there yet)."""
    return set(_one_shot(locator, "listing tables", _tables))


def size_bytes(locator: Locator) -> int | None:
    """The ledger tables' size with their indexes and TOAST (None if unknown)."""
    def size(conn: Connection) -> int | None:
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c "
            "WHERE c.relkind IN ('r', 'p') AND c.relnamespace = current_schema()::regnamespace"
            " AND c.relname = ANY(%s)", (list(LEDGER_TABLES),)).fetchone()
        return None if row is None or row[0] is None else int(row[0])
    try:
        result: int | None = _one_shot(locator, "measuring", size)
    except CoordinatorError:
        return None
    return result


def initialise(locator: Locator) -> bool:
    """Create the ledger schema in the database ``locator`` names, or add what is
    missing (idempotent; data is kept), in one transaction; then ``amcheck`` for the
    integrity checks, if this role may create it (else they read every table instead).
    Never creates the database itself. Returns True if no ledger table was there.
    Raises DB_SCHEMA_VERSION for a schema of another version (nothing changed)."""
    def create(conn: Connection) -> bool:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (INIT_LOCK,))
            present = _tables(conn)
            if "meta" in present and (found := _schema_version(conn)) not in (
                    None, SCHEMA_VERSION):
                raise _version_error(locator, found)
            for name in SCHEMA_FILES:
                conn.execute((SCHEMA_DIR / name).read_text())
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                         "ON CONFLICT (key) DO NOTHING", (SCHEMA_VERSION,))
        with suppress(psycopg.Error), conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        return not present
    return bool(_one_shot(locator, "initialising", create))


# --------------------------------------------------------------------------- reads


def _nul(*values: Any) -> bool:
    """A NUL character in a key: no row can hold one (the driver would refuse it)."""
    return any(isinstance(v, str) and "\x00" in v for v in values)


class _Reads:
    """Point reads shared by the store (its read session) and a transaction."""

    def _one(self, query: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def get_plan(self, plan_id: str) -> Plan | None:
        if _nul(plan_id):
            return None
        row = self._one(f"SELECT {_PLAN_COLS} FROM plans WHERE plan_id = %s", (plan_id,))
        return Plan(*row) if row else None

    def get_item(self, item_id: str) -> Item | None:
        if _nul(item_id):
            return None
        row = self._one(f"SELECT {_ITEM_COLS} FROM plan_items WHERE item_id = %s",
                        (item_id,))
        return Item(*row) if row else None

    def get_link(self, link_id: str) -> Link | None:
        if _nul(link_id):
            return None
        row = self._one(f"SELECT {_LINK_COLS} FROM plan_links WHERE link_id = %s",
                        (link_id,))
        return Link(*row) if row else None

    def find_link(self, from_item_id: str, to_item_id: str, link_type: str) -> Link | None:
        if _nul(from_item_id, to_item_id, link_type):
            return None
        row = self._one(f"SELECT {_LINK_COLS} FROM plan_links WHERE from_item_id = %s "
                        "AND to_item_id = %s AND link_type = %s",
                        (from_item_id, to_item_id, link_type))
        return Link(*row) if row else None

    def get_command(self, command_id: str) -> CommandRecord | None:
        if _nul(command_id):
            return None
        row = self._one(f"SELECT {_COMMAND_COLS} FROM commands WHERE command_id = %s",
                        (command_id,))
        return CommandRecord(*row) if row else None

    def head(self) -> tuple[int, str]:
        row = self._one(_HEAD_SQL)
        return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)


def _arrays(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as one list per column (what an ``unnest`` statement takes)."""
    return [list(col) for col in zip(*rows, strict=True)]


class _PgTx(_Reads, Transaction):
    """A write transaction on the writer session. Writes are queued and sent together,
    in one pipeline (one round trip), before the next read of the transaction or with
    its COMMIT (:meth:`send`); so an error of a write shows there. psycopg errors are
    translated by :meth:`PgStore.transaction` when they leave it."""

    def __init__(self, conn: Connection, head: tuple[int, str]) -> None:
        self._conn = conn
        self._head = head  # read by BEGIN; the writer's own appends keep it fresh
        self.queued: list[tuple[str, Sequence[Any]]] = []

    def send(self, *then: str) -> list[psycopg.Cursor[Any]]:
        """Send the queued writes, then the statements ``then`` (COMMIT), in one pipeline;
        the cursors of ``then``, once every statement is done (raises the first error)."""
        queued, self.queued = self.queued, []
        if not queued and not then:
            return []
        with self._conn.pipeline():
            for query, params in queued:
                self._conn.execute(query, params)
            return [self._conn.execute(query) for query in then]

    def _one(self, query: str, params: Sequence[Any] = ()) -> Any:
        self.send()
        return self._conn.execute(query, params).fetchone()

    def head(self) -> tuple[int, str]:
        return self._head

    def insert_plan(self, plan: Plan) -> None:
        self.queued.append((f"INSERT INTO plans ({_PLAN_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                            (plan.plan_id, plan.title, plan.owner_agent, plan.status,
                             plan.version, plan.created_ts, plan.updated_ts)))

    def update_plan(self, plan: Plan) -> None:
        self.queued.append((
            "UPDATE plans SET title = %s, owner_agent = %s, status = %s, version = %s,"
            " updated_ts = %s WHERE plan_id = %s",
            (plan.title, plan.owner_agent, plan.status, plan.version, plan.updated_ts,
             plan.plan_id)))

    def insert_item(self, item: Item) -> None:
        self.insert_items((item,))

    def update_item(self, item: Item) -> None:
        self.update_items((item,))

    def insert_link(self, link: Link) -> None:
        self.queued.append((f"INSERT INTO plan_links ({_LINK_COLS}) VALUES "
                            "(%s,%s,%s,%s,%s,%s)",
                            (link.link_id, link.plan_id, link.from_item_id, link.to_item_id,
                             link.link_type, link.created_ts)))

    def append_event(self, event: Event) -> None:
        self.append_events((event,))

    def put_command(self, record: CommandRecord) -> None:
        self.put_commands((record,))

    def get_commands(self, command_ids: Sequence[str]) -> dict[str, CommandRecord]:
        wanted = [c for c in command_ids if not _nul(c)]
        if not wanted:
            return {}
        self.send()
        rows = self._conn.execute(f"SELECT {_COMMAND_COLS} FROM commands "
                                  "WHERE command_id = ANY(%b::text[])", (wanted,)).fetchall()
        return {row[0]: CommandRecord(*row) for row in rows}

    def append_events(self, events: Sequence[Event]) -> None:
        if not events:
            return
        self.queued.append((_INSERT_EVENTS, _arrays([
            (e.seq, e.event_id, e.ts, e.event_type, e.session_id, e.task_id, e.actor,
             e.plan_id, e.item_id, e.command_id, e.payload, e.prev_hash, e.hash)
            for e in events])))
        self._head = (events[-1].seq, events[-1].hash)

    def put_commands(self, records: Iterable[CommandRecord]) -> None:
        rows = [(r.command_id, r.fingerprint, r.status, r.seq, r.outcome, r.ts)
                for r in records]
        if rows:
            self.queued.append((_INSERT_COMMANDS, _arrays(rows)))

    def insert_items(self, items: Iterable[Item]) -> None:
        rows = [(i.item_id, i.plan_id, i.kind, i.title, i.state, i.priority, i.assigned_to,
                 i.due_ts, i.version, i.created_ts, i.updated_ts) for i in items]
        if rows:
            self.queued.append((_INSERT_ITEMS, _arrays(rows)))

    def update_items(self, items: Iterable[Item]) -> None:
        rows = [(i.kind, i.title, i.state, i.priority, i.assigned_to, i.due_ts, i.version,
                 i.updated_ts, i.item_id) for i in items]
        if rows:
            self.queued.append((_UPDATE_ITEMS, _arrays(rows)))


# --------------------------------------------------------------------------- snapshots


class PgSnapshot(ReadSnapshot):
    """A read snapshot on one session: ``BEGIN ISOLATION LEVEL REPEATABLE READ READ
    ONLY`` on entry, fixed at once (by reading the head, or by ``SET TRANSACTION
    SNAPSHOT`` to an exported one), ``ROLLBACK`` on exit. Errors are translated with
    ``fail``."""

    def __init__(self, conn: Connection, fail: Callable[[psycopg.Error, str], StorageError],
                 *, token: str | None = None) -> None:
        self.conn = conn
        self._fail = fail
        self._token = token

    def __enter__(self) -> PgSnapshot:
        begin: sql.SQL | sql.Composed = sql.SQL(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if self._token is not None:
            begin = sql.SQL("{}; SET TRANSACTION SNAPSHOT {}").format(
                begin, sql.Literal(self._token))
        try:
            self.conn.execute(begin)
            if self._token is None:
                self.head()  # the first read fixes the snapshot: now, not at first use
        except psycopg.Error as exc:
            self._end()
            raise self._fail(exc, "beginning a read") from None
        return self

    def _end(self) -> None:
        if not self.conn.closed and self.conn.info.transaction_status != \
                pq.TransactionStatus.IDLE:
            with suppress(psycopg.Error):
                self.conn.execute("ROLLBACK")

    def __exit__(self, *exc: object) -> None:
        self._end()

    def _all(self, query: str, params: Sequence[Any] = (),
             doing: str = "reading events") -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            raise self._fail(exc, doing) from None

    def export(self) -> str | None:
        """``pg_export_snapshot()`` (standbys too): another session, in another process
        too, attaches to this snapshot with it while this one is open."""
        return str(self._all("SELECT pg_export_snapshot()", doing="exporting the snapshot"
                             )[0][0])

    def head(self) -> tuple[int, str]:
        rows = self._all(_HEAD_SQL)
        return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)

    def first_seq(self) -> int | None:
        value = self._all("SELECT min(seq) FROM events")[0][0]
        return None if value is None else int(value)

    def event_count(self) -> int:
        return int(self._all("SELECT count(*) FROM events")[0][0])

    def event_rows(self, after: int = 0, upto: int | None = None, *,
                   short: bool = False) -> Iterator[list[EventRow]]:
        # keyset pages: each a range scan of the primary key, nothing held between them
        query = f"SELECT {_SHORT_COLS if short else _EVENT_COLS} FROM events WHERE seq > %s"
        query += (" AND seq <= %s" if upto is not None else "") + " ORDER BY seq LIMIT %s"
        while True:
            params = (after, upto, BATCH) if upto is not None else (after, BATCH)
            rows = self._all(query, params)
            if not rows:
                return
            yield rows
            if len(rows) < BATCH:
                return
            after = rows[-1][0]

    def last_rows(self, n: int) -> list[EventRow]:
        return list(self._all(f"SELECT {_EVENT_COLS} FROM events ORDER BY seq DESC LIMIT %s",
                              (n,)))

    def row_upto(self, seq: int) -> tuple[int, str] | None:
        rows = self._all("SELECT seq, hash FROM events WHERE seq >= 1 AND seq <= %s "
                         "ORDER BY seq DESC LIMIT 1", (seq,))
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def newest_command_seq(self) -> int | None:
        # command records are written in seq order and never deleted: the newest one
        # with an event has the highest seq (an index scan, however long the log)
        value = self._all("SELECT max(seq) FROM commands",
                          doing="reading command records")[0][0]
        return None if value is None else int(value)

    def table_rows(self, which: int) -> Iterator[Sequence[Any]]:
        try:
            cursor = self.conn.execute(_TABLE_SQL[which])
            while rows := cursor.fetchmany(BATCH):
                yield from rows
        except psycopg.Error as exc:
            raise self._fail(exc, "reading") from None


# --------------------------------------------------------------------------- the store


class PgStore(_Reads, Store):
    """A ledger database on a PostgreSQL server. Writes go through :meth:`transaction`
    only. Thread-safe: sessions are guarded, one write transaction at a time."""

    def __init__(self, locator: Locator, *, readonly: bool = False,
                 durability: Durability = "full") -> None:
        self._locator = locator
        self.readonly = readonly
        self.durability = durability
        self._scrub = scrubber(locator.address)
        self._lock = threading.Lock()  # the read session and the spare snapshot sessions
        self._write_lock = threading.Lock()
        self._writer: Connection | None = None
        #: why the writer session is gone, once it is (the store then refuses writes)
        self.lost: StorageError | None = None
        self._spares: list[Connection] = []
        self._closed = False
        self._reader: Connection | None = self._session()
        try:
            tables = _tables(self._reader)
            found = _schema_version(self._reader) if "meta" in tables else None
        except psycopg.Error as exc:
            self.close()
            raise self._fail(exc, "opening the database", self._reader) from None
        if "meta" not in tables or found is None:
            self.close()
            raise StorageError(ErrorCode.DB_NOT_INITIALISED,
                               f"{locator.name} has no ledger schema; run "
                               f"{_hint(locator)} first")
        if found != SCHEMA_VERSION:
            self.close()
            raise _version_error(locator, found)

    @property
    def locator(self) -> Locator:
        return self._locator

    # ---- sessions

    def _session(self, *, writer: bool = False) -> Connection:
        settings = {"lock_timeout": str(LOCK_TIMEOUT_MS)}
        if writer:
            settings["synchronous_commit"] = "on" if self.durability == "full" else "off"
        elif self.readonly:
            settings["default_transaction_read_only"] = "on"
        return connect(self._locator, settings=settings, role="writer" if writer else "")

    def _fail(self, exc: psycopg.Error, doing: str, conn: Connection | None = None, *,
              damage: bool = False, committing: bool = False) -> StorageError:
        return storage_error(exc, doing, name=self._locator.name, scrub=self._scrub,
                             conn=conn, damage=damage, committing=committing)

    def _read_session(self) -> Connection:
        """The read session (a new one if it broke); call with ``_lock`` held."""
        if self._closed:
            raise StorageError(ErrorCode.DB_ERROR, f"{self._locator.name}: the store is closed")
        if self._reader is None or self._reader.closed or self._reader.broken:
            if self._reader is not None:
                self._reader.close()
            self._reader = None
            self._reader = self._session()
        return self._reader

    def _query(self, query: str, params: Sequence[Any] = (), doing: str = "reading"
               ) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._read_session()
            try:
                return conn.execute(query, params).fetchall()
            except psycopg.Error as exc:
                raise self._fail(exc, doing, conn) from None

    def _one(self, query: str, params: Sequence[Any] = ()) -> Any:
        rows = self._query(query, params)
        return rows[0] if rows else None

    # ---- writing

    def begin_sql(self) -> str:
        """What every write transaction sends first: ``BEGIN`` and the writer lock
        (:data:`WRITER_LOCK`, released at COMMIT or ROLLBACK); the chain head is read
        after it, in the same round trip. The place for a check that this writer may
        still write (statements without parameters, separated by ``;``)."""
        return f"BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK})"

    def _writer_session(self) -> Connection:
        if self.lost is not None:
            raise StorageError(ErrorCode.DB_CONNECTION_LOST,
                               f"{self._locator.name}: this store's database session was "
                               f"lost ({self.lost.message}); it writes no more: open the "
                               "store again (restart the ledger)")
        if self._writer is None:
            self._writer = self._session(writer=True)
        return self._writer

    def _write_failed(self, exc: psycopg.Error, doing: str, conn: Connection, *,
                      committing: bool = False) -> StorageError:
        error = self._fail(exc, doing, conn, committing=committing)
        if error.code == ErrorCode.DB_CONNECTION_LOST:
            self.lost = error
            with suppress(psycopg.Error):
                conn.close()
        else:
            _rollback(conn)
        return error

    def _begin(self, conn: Connection) -> tuple[int, str]:
        """BEGIN, the writer lock, and the head, in one round trip."""
        try:
            cursor = conn.execute(f"{self.begin_sql()}; {_HEAD_SQL}")
            while cursor.nextset():
                pass
            row = cursor.fetchone()
        except psycopg.Error as exc:
            raise self._write_failed(exc, "beginning a transaction", conn) from None
        return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Commit on normal exit (the queued writes and COMMIT in one round trip), roll
        back on exception. A lost session while committing: DB_CONNECTION_LOST, the
        outcome unknown."""
        if self.readonly:
            raise StorageError(ErrorCode.DB_ERROR, "database was opened read-only")
        with self._write_lock:
            conn = self._writer_session()
            tx = _PgTx(conn, self._begin(conn))
            try:
                yield tx
            except psycopg.Error as exc:
                raise self._write_failed(exc, "writing", conn) from exc
            except BaseException:
                _rollback(conn)
                raise
            if conn.info.transaction_status == pq.TransactionStatus.INERROR:
                _rollback(conn)  # a statement failed and its error was swallowed
                raise StorageError(ErrorCode.DB_ERROR, f"{self._locator.name}: a statement "
                                   "of the transaction failed; nothing was committed")
            try:
                (commit,) = tx.send("COMMIT")
            except psycopg.Error as exc:
                # the session gone with COMMIT sent: it may have been committed
                raise self._write_failed(exc, "committing", conn, committing=True) from exc
            if commit.statusmessage != "COMMIT":
                raise StorageError(ErrorCode.DB_ERROR, f"{self._locator.name}: the server "
                                   f"answered COMMIT with {commit.statusmessage}; nothing "
                                   "was committed")
            self.check_lease()  # before anyone is told it committed

    # ---- snapshots

    def _snapshot_session(self) -> Connection:
        with self._lock:
            while self._spares:
                conn = self._spares.pop()
                if not (conn.closed or conn.broken):
                    return conn
                conn.close()
        return self._session()

    def _give_back(self, conn: Connection) -> None:
        healthy = not (conn.closed or conn.broken) and \
            conn.info.transaction_status == pq.TransactionStatus.IDLE
        with self._lock:
            if healthy and not self._closed and not self._spares:
                self._spares.append(conn)
                return
        conn.close()

    @contextmanager
    def read_snapshot(self) -> Iterator[ReadSnapshot]:
        """A REPEATABLE READ snapshot on a session of its own (so the store's other
        reads, on any thread, stay outside it), fixed on entry."""
        with self.shared_snapshot(None) as snap:
            yield snap

    @contextmanager
    def shared_snapshot(self, token: str | None) -> Iterator[ReadSnapshot]:
        conn = self._snapshot_session()
        try:
            with PgSnapshot(conn, lambda exc, doing: self._fail(exc, doing, conn),
                            token=token) as snap:
                yield snap
        finally:
            self._give_back(conn)

    def integrity_check(self) -> DamageReport | None:
        with PostgresBackend().inspect(self._locator) as inspection:
            return inspection.damage()

    # ---- reads

    def head(self) -> tuple[int, str]:
        rows = self._query(_HEAD_SQL, doing="reading the chain head")
        return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)

    def list_plans(self) -> list[Plan]:
        return [Plan(*r) for r in self._query(_TABLE_SQL[0])]

    def list_items(self, plan_id: str | None = None) -> list[Item]:
        if plan_id is None:
            rows = self._query(_TABLE_SQL[1])
        elif _nul(plan_id):
            rows = []
        else:
            rows = self._query(f"SELECT {_ITEM_COLS} FROM plan_items WHERE plan_id = %s"
                               " ORDER BY item_id", (plan_id,))
        return [Item(*r) for r in rows]

    def list_links(self, plan_id: str | None = None) -> list[Link]:
        if plan_id is None:
            rows = self._query(_TABLE_SQL[2])
        elif _nul(plan_id):
            rows = []
        else:
            rows = self._query(f"SELECT {_LINK_COLS} FROM plan_links WHERE plan_id = %s"
                               " ORDER BY link_id", (plan_id,))
        return [Link(*r) for r in rows]

    def iter_events(self, from_seq: int = 1, to_seq: int | None = None, *,
                    limit: int | None = None,
                    filters: dict[str, Any] | None = None) -> Iterator[Event]:
        where = ["seq >= %s"]
        params: list[Any] = []
        if to_seq is not None:
            where.append("seq <= %s")
            params.append(to_seq)
        for column, value in (filters or {}).items():
            if column not in EVENT_FILTER_COLUMNS:
                raise ValueError(f"cannot filter events by {column!r}")
            if _nul(value):
                return
            # as SQLite's "IS ?": a None filter matches NULL (and "=" can use an index)
            where.append(f"{column} IS NULL" if value is None else f"{column} = %s")
            if value is not None:
                params.append(value)
        query = (f"SELECT {_EVENT_COLS} FROM events WHERE {' AND '.join(where)} "
                 "ORDER BY seq LIMIT %s")
        left = limit
        while left is None or left > 0:
            page = BATCH if left is None else min(BATCH, left)
            rows = self._query(query, [from_seq, *params, page], doing="reading events")
            for row in rows:
                yield Event(*row)
            if len(rows) < page:
                return
            from_seq = rows[-1][0] + 1
            if left is not None:
                left -= len(rows)

    def count_by(self, column: str) -> dict[str, int]:
        if column not in EVENT_FILTER_COLUMNS:
            raise ValueError(f"cannot count events by {column!r}")
        # NULLS FIRST: where SQLite sorts them
        rows = self._query(f"SELECT {column}, count(*) FROM events GROUP BY {column}"
                           f" ORDER BY {column} NULLS FIRST")
        return {str(k): int(n) for k, n in rows}

    def close_store(self) -> None:
        with self._lock:
            self._closed = True
            sessions = [self._reader, self._writer, *self._spares]
            self._reader = self._writer = None
            self._spares = []
        for conn in sessions:
            if conn is not None:
                conn.close()


class PgLease(WriterLease):
    """The writer lease of a PostgreSQL database: ``pg_try_advisory_lock(LEASE_LOCK)`` on
    a session of its own, held while that session lives (the server releases it when
    the session ends, however its client died). The query that took it carries the
    holder as a JSON comment, which ``pg_stat_activity`` shows a refused writer.
    Raises StorageError DB_LOCKED (naming the holder) and what :func:`connect` raises."""

    def __init__(self, locator: Locator, holder: dict[str, Any]) -> None:
        self.holder = holder
        self._name = locator.name
        scrub = scrubber(locator.address)
        text = json.dumps(holder, separators=(",", ":")).replace("*/", "* /")
        self._conn: Connection | None = connect(locator, role="writer lease")
        conn = self._conn
        try:
            row = conn.execute(f"SELECT pg_try_advisory_lock({LEASE_LOCK}) "
                               f"/* {_HOLDER_MARK}{text} */").fetchone()
            current = None if row and row[0] else self._current(conn)
        except psycopg.Error as exc:
            self.release()
            raise storage_error(exc, "taking the writer lock", name=self._name, scrub=scrub,
                                conn=conn) from None
        if not (row and row[0]):
            self.release()
            raise locked(self._name, current)

    @staticmethod
    def _current(conn: Connection) -> dict[str, Any] | None:
        """The holder, as its session's query names it (or that session's pid and start,
        if it does not)."""
        row = conn.execute(_HOLDER_SQL, (LEASE_LOCK >> 32, LEASE_LOCK & 0xFFFFFFFF)
                           ).fetchone()
        if row is None:
            return None  # released meanwhile
        query, backend_pid, started = row
        mark = str(query or "").find(_HOLDER_MARK)
        if mark >= 0:
            with suppress(ValueError):
                found = json.loads(str(query)[mark + len(_HOLDER_MARK):].rsplit("*/", 1)[0])
                if isinstance(found, dict):
                    return found
        return {"backend_pid": backend_pid, "started": str(started)}

    def check(self) -> None:
        """Raise StoreLost once the lease's session is known to be gone (no round trip:
        what the driver has seen)."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            raise StoreLost(f"{self._name}: the session holding this writer's lock is "
                            "gone; another writer could start, so this one stops",
                            what="lease_session_lost")

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # the server drops the session's advisory locks


def _rollback(conn: Connection) -> None:
    if not (conn.closed or conn.broken):
        with suppress(psycopg.Error):
            conn.execute("ROLLBACK")
