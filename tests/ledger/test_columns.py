"""One definition of each table's columns: schema.vocabulary's.

The row types, the row helpers, the rule table's tables and the SQL schema agree with
PLAN_COLUMNS, ITEM_COLUMNS, LINK_COLUMNS and EVENT_COLUMNS.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import fields
from pathlib import Path

from ledger.log.chain import event_row
from ledger.storage.rows import Event, Item, Link, Plan
from schema.vocabulary import EVENT_COLUMNS, ITEM_COLUMNS, LINK_COLUMNS, PLAN_COLUMNS


def test_the_row_types_have_the_vocabularys_columns() -> None:
    for row_type, columns in ((Plan, PLAN_COLUMNS), (Item, ITEM_COLUMNS),
                              (Link, LINK_COLUMNS), (Event, EVENT_COLUMNS)):
        assert tuple(f.name for f in fields(row_type)) == columns, row_type.__name__


def test_the_sql_tables_have_the_vocabularys_columns(sqlite_path: Path) -> None:
    with closing(sqlite3.connect(sqlite_path)) as conn:
        for table, columns in (("plans", PLAN_COLUMNS), ("plan_items", ITEM_COLUMNS),
                               ("plan_links", LINK_COLUMNS), ("events", EVENT_COLUMNS)):
            have = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
            assert have == columns, table


def test_the_row_helpers_keep_every_column() -> None:
    ev = Event(*(f"v{i}" for i in range(len(EVENT_COLUMNS))))  # type: ignore[arg-type]
    assert ev.to_row() == {c: f"v{i}" for i, c in enumerate(EVENT_COLUMNS)}
    assert list(ev.to_row()) == list(EVENT_COLUMNS)
    assert event_row(ev) == tuple(f"v{i}" for i in range(len(EVENT_COLUMNS)))
    item = Item(*(f"v{i}" for i in range(len(ITEM_COLUMNS))))  # type: ignore[arg-type]
    changed = item.with_changes(title="new", version=2)
    assert [getattr(changed, c) for c in ITEM_COLUMNS] == [
        "new" if c == "title" else 2 if c == "version" else getattr(item, c)
        for c in ITEM_COLUMNS]

