"""The PostgreSQL side of the integrity checks: PostgreSQL's own, in place of SQLite's
file checks.

:class:`PgInspection` is the PostgreSQL :class:`ledger.storage.base.Inspection`: a
read-only session (``default_transaction_read_only``) that needs neither the schema nor
sound data to open. What its checks mean, and when the ledger runs them, is
backend-neutral (:mod:`ledger.log.integrity`); this module only knows how PostgreSQL
finds damage:

- data checksums (``initdb --data-checksums``, PostgreSQL 18's default; ``SHOW
  data_checksums``): every page read from disk is checked, and a bad one is an error
  (SQLSTATE XX001) on whatever reads it;
- ``amcheck`` (a contrib extension shipped with the server; bin/init_db creates it when
  its role may): ``verify_heapam`` checks every page and tuple of a table (and with
  ``check_toast`` its TOAST), ``bt_index_check`` every page of a b-tree index (and with
  ``heapallindexed`` that every row of the table is in it). Both take only
  AccessShareLock: a live ledger keeps writing. (``bt_index_parent_check`` is left out:
  it takes ShareLock, which would stop the ledger's writes while it runs.)

:meth:`PgInspection.check_pages` (the start-up page check) runs ``verify_heapam`` on each
ledger table and ``bt_index_check`` on each of their indexes; :meth:`PgInspection.damage`
(bin/verify_chain) the same with TOAST and ``heapallindexed``, and reports what it finds
as SQLite's integrity check does: the messages, the tables they concern and how far the
event log can still be read. Without ``amcheck`` (not installed, or this role may not
run it) both read every row of every ledger table instead, which the data checksums
then check; the report's ``check`` says which ran.

Every psycopg error is translated by :func:`ledger.storage.postgres_store.storage_error`
(with ``damage=True``: corruption is DB_DAMAGED).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Final

import psycopg
from psycopg import pq, sql

from ledger.storage.base import (
    LEDGER_TABLES,
    DamageReport,
    Inspection,
    Locator,
    ReadSnapshot,
    damaged,
)
from ledger.storage.postgres import scrubber
from ledger.storage.postgres_store import (
    DAMAGE_STATES,
    Connection,
    PgSnapshot,
    _tables,
    connect,
    storage_error,
)
from schema.errors import StorageError

#: Most check messages reported (as SQLite's side).
MAX_MESSAGES: Final = 20
_READING: Final = "reading it"
_AMCHECK_SQL: Final = """
SELECT n.nspname,
       coalesce(has_function_privilege(to_regprocedure(format(
           '%I.verify_heapam(regclass,boolean,boolean,text,bigint,bigint)', n.nspname)),
           'EXECUTE'), false)
       AND coalesce(has_function_privilege(to_regprocedure(format(
           '%I.bt_index_check(regclass,boolean)', n.nspname)), 'EXECUTE'), false)
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'amcheck'"""
_INDEXES_SQL: Final = (
    "SELECT c.relname, i.indexrelid::regclass::text FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_class x ON x.oid = i.indexrelid "
    "JOIN pg_am a ON a.oid = x.relam WHERE a.amname = 'btree' "
    "AND c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(%s) "
    "ORDER BY 1, 2")


class PgInspection(Inspection):
    """A read-only session to a ledger database on PostgreSQL, damaged or not."""

    def __init__(self, locator: Locator) -> None:
        self.locator = locator
        self.name = locator.name
        self._scrub = scrubber(locator.address)
        self._lock = threading.Lock()
        self._closed = False
        self.conn: Connection = connect(locator,
                                        settings={"default_transaction_read_only": "on"})

    def _fail(self, exc: psycopg.Error, doing: str = _READING) -> StorageError:
        return storage_error(exc, doing, name=self.name, scrub=self._scrub, conn=self.conn,
                             damage=True)

    def tables(self) -> set[str]:
        try:
            return _tables(self.conn)
        except psycopg.Error as exc:
            raise self._fail(exc) from None

    @contextmanager
    def snapshot(self) -> Iterator[ReadSnapshot]:
        with PgSnapshot(self.conn, lambda exc, doing: self._fail(exc, _READING)) as snap:
            yield snap

    # ---- the checks

    def _amcheck(self) -> str | None:
        """The schema amcheck's functions are in, if this session may run them."""
        try:
            row = self.conn.execute(_AMCHECK_SQL).fetchone()
        except psycopg.Error as exc:
            raise self._fail(exc, "looking for amcheck") from None
        return str(row[0]) if row is not None and row[1] else None

    def _probe(self, query: sql.Composed, params: tuple[Any, ...] = ()
               ) -> tuple[list[tuple[Any, ...]], str | None]:
        """Run one check: (its rows, None), or ([], the error) if it raised corruption.
        Inside a transaction (a snapshot) a savepoint keeps the transaction usable."""
        in_tx = self.conn.info.transaction_status != pq.TransactionStatus.IDLE
        try:
            if in_tx:
                self.conn.execute("SAVEPOINT l3_check")
            try:
                rows = self.conn.execute(query, params).fetchall()
            except psycopg.Error as exc:
                if (getattr(exc, "sqlstate", None) or "") not in DAMAGE_STATES:
                    raise
                if in_tx:
                    self.conn.execute("ROLLBACK TO SAVEPOINT l3_check")
                return [], self._scrub(str(exc).strip())
            if in_tx:
                self.conn.execute("RELEASE SAVEPOINT l3_check")
        except psycopg.Error as exc:
            raise self._fail(exc, "checking it") from None
        return rows, None

    def _run_checks(self, *, full: bool) -> tuple[str, list[str], list[str]]:
        """(the check's name, its messages, the tables they concern)."""
        present = sorted(self.tables() & set(LEDGER_TABLES))
        messages: list[str] = []
        tables: list[str] = []

        def found(table: str, text: str) -> None:
            if len(messages) < MAX_MESSAGES:
                messages.append(text)
            if table not in tables:
                tables.append(table)

        schema = self._amcheck()
        if schema is None:
            for table in present:
                # every column of every row: every heap page and TOAST value is read
                _, error = self._probe(sql.SQL("SELECT sum(length(t::text)) FROM {} AS t"
                                               ).format(sql.Identifier(table)))
                if error is not None:
                    found(table, f"{table}: {error}")
            return ("a read of every table (data checksums; amcheck is not installed or "
                    "not allowed)", messages, tables)
        heap = sql.SQL("SELECT blkno, offnum, attnum, msg FROM {}.verify_heapam("
                       "%s::regclass, check_toast => %s) LIMIT %s").format(
                           sql.Identifier(schema))
        for table in present:
            rows, error = self._probe(heap, (table, full, MAX_MESSAGES))
            for blkno, offnum, attnum, msg in rows:
                found(table, f"{table}: block {blkno}, offset {offnum}"
                      + (f", attribute {attnum}" if attnum is not None else "") + f": {msg}")
            if error is not None:
                found(table, f"{table}: {error}")
        index = sql.SQL("SELECT {}.bt_index_check(%s::regclass, %s)").format(
            sql.Identifier(schema))
        try:
            indexes = self.conn.execute(_INDEXES_SQL, (present,)).fetchall()
        except psycopg.Error as exc:
            raise self._fail(exc, "listing indexes") from None
        for table, name in indexes:
            _, error = self._probe(index, (name, full))
            if error is not None:
                found(table, f"index {name}: {error}")
        what = "verify_heapam, bt_index_check" + (" with heapallindexed" if full else "")
        return f"amcheck ({what})", messages, tables

    def check_pages(self) -> None:
        check, messages, _ = self._run_checks(full=False)
        if messages:
            shown = "; ".join(messages[:4]) + (f" (and {len(messages) - 4} more)"
                                               if len(messages) > 4 else "")
            raise damaged(self.name, f"{check} failed: {shown}", page_check=messages)

    def damage(self) -> DamageReport | None:
        check, messages, tables = self._run_checks(full=True)
        if not messages:
            return None
        readable, last_seq, stopped = self._readable_events()
        return DamageReport(name=self.name, check=check, messages=messages, tables=tables,
                            truncated=None, events_readable=readable,
                            last_readable_seq=last_seq, read_error=stopped)

    def _readable_events(self) -> tuple[int, int, str | None]:
        """(events read in seq order, the last seq read, the error that stopped it)."""
        count = last = 0
        while True:
            try:
                rows = self.conn.execute("SELECT seq, hash FROM events WHERE seq > %s "
                                         "ORDER BY seq LIMIT 10000", (last,)).fetchall()
            except psycopg.Error as exc:
                return count, last, self._scrub(str(exc).strip())
            if not rows:
                return count, last, None
            count += len(rows)
            last = int(rows[-1][0])

    def interrupt(self) -> None:
        # a cancel request goes on a connection of its own; one sent while no statement
        # runs is ignored, so callers repeat it until the check has ended
        with self._lock:
            if not self._closed:
                with suppress(psycopg.Error):
                    self.conn.cancel_safe(timeout=2.0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.conn.close()
