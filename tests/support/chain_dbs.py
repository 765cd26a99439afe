"""A ledger database as the tamper tests see it, on either backend.

The tests in tests/ledger/test_chain.py alter a database the way an attacker with write
access would (plain SQL, no ledger code) and check that verify_chain finds it. The same
SQL text (sqlite3's ``?`` placeholders) runs on both backends: on SQLite through sqlite3,
with the append-only triggers dropped (and foreign keys off, sqlite3's default); on
PostgreSQL through psycopg with ``session_replication_role = replica``, under which
neither the triggers nor the foreign keys fire.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Protocol

from psycopg.rows import dict_row

from agents.tools.pgcluster import PgUrl
from ledger.log.verify import verify_store
from ledger.storage.base import Store
from ledger.storage.sqlite import SqliteStore
from tests.support.helpers import drop_append_only_triggers, event_rows, raw_connect
from tests.support.pgstore import RawPg, open_pg_store


class Raw(Protocol):
    """A plain session: ``execute(sql, params)`` returns a cursor (``fetchone()``)."""

    def execute(self, query: str, params: Any = ..., /) -> Any: ...


class ChainDb(Protocol):
    backend: str

    def open(self) -> Store: ...

    def rows(self) -> list[dict[str, Any]]: ...

    def raw(self, *, triggers: bool) -> Any: ...


def verify(db: ChainDb) -> dict[str, Any]:
    with db.open() as store:
        return verify_store(store)


class SqliteDb:
    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self) -> Store:
        return SqliteStore(self.path, readonly=True)

    def rows(self) -> list[dict[str, Any]]:
        return event_rows(self.path)

    @contextmanager
    def raw(self, *, triggers: bool) -> Iterator[Raw]:
        with closing(raw_connect(self.path)) as conn:
            if not triggers:
                drop_append_only_triggers(conn)
            yield conn


class PgDb:
    backend = "postgres"

    def __init__(self, url: PgUrl) -> None:
        self.url = url

    def open(self) -> Store:
        return open_pg_store(self.url, readonly=True)

    def rows(self) -> list[dict[str, Any]]:
        with closing(self.url.connect()) as conn, conn.cursor(row_factory=dict_row) as cur:
            return list(cur.execute("SELECT * FROM events ORDER BY seq"))

    @contextmanager
    def raw(self, *, triggers: bool) -> Iterator[Raw]:
        conn = RawPg(self.url, triggers=triggers)
        try:
            yield conn
        finally:
            conn.close()

