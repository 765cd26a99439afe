"""The ledger's PostgreSQL stores in tests: URLs, the template's schema, raw access.

The databases themselves come from the fixtures of :mod:`tests.support.pg` (a throwaway
cluster per test session, one database per test, copied from a template that
:func:`load_schema` filled once); these helpers turn them into ledger stores.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import closing
from typing import Any, Final
from urllib.parse import quote

import psycopg

from agents.tools.pgcluster import PgUrl
from ledger.storage.postgres import pg_locator
from ledger.storage.postgres_store import PgStore, initialise

#: psycopg's placeholder for sqlite3's "?" (the tamper tests' SQL is written for both)
_QMARK: Final = "?"


def store_url(url: PgUrl) -> str:
    """The ``postgresql://`` URL the ledger gets for ``url``: the cluster's password
    file, or (a user's server given with a password) the password itself."""
    if url.password is not None and url.passfile is None:
        netloc = (f"{quote(url.user, safe='')}:{quote(url.password, safe='')}"
                  f"@{url.host}:{url.port}")
        return f"postgresql://{netloc}/{quote(url.dbname, safe='')}"
    return url.url()


def load_schema(url: PgUrl) -> None:
    """The ledger schema, into the template database (pg_template_setup)."""
    initialise(pg_locator(store_url(url)))


def open_pg_store(url: PgUrl, **kw: Any) -> PgStore:
    return PgStore(pg_locator(store_url(url)), **kw)


class RawPg:
    """A plain superuser session on a test database, no ledger code involved: what an
    attacker with write access to the database (or a test) uses. ``execute`` takes
    sqlite3-style ``?`` placeholders, so one SQL text serves both backends.
    ``triggers=False``: the append-only triggers do not fire for this session
    (``session_replication_role = replica``), as if dropped."""

    def __init__(self, url: PgUrl, *, triggers: bool = True) -> None:
        self.conn = url.connect(autocommit=True)
        if not triggers:
            self.conn.execute("SET session_replication_role = replica")

    def execute(self, query: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(query.replace(_QMARK, "%s"), params)

    def close(self) -> None:
        self.conn.close()


def dump_pg_tables(store: PgStore, tables: Iterable[str]
                   ) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``tables`` of ``store``'s database, read with plain psycopg on a
    session of its own, sorted (helpers.capture)."""
    with closing(psycopg.connect(store.locator.address, autocommit=True)) as conn:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in tables}
