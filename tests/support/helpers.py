"""Shared helpers for the test suite (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, Final

from ledger.log.chain import GENESIS_HASH, event_hash
from ledger.plans.ledger import CommandResult, Ledger
from ledger.storage import sqlite as ledger_sqlite
from ledger.storage.base import Store
from ledger.storage.postgres_store import PgStore
from ledger.storage.rows import Event
from ledger.storage.sqlite import SqliteStore
from tests.support.pgstore import dump_pg_tables

ROOT: Final = Path(__file__).resolve().parents[2]
SCENARIO_DIR: Final = ROOT / "scenarios"
SCENARIO_FILES: Final = tuple(sorted(SCENARIO_DIR.glob("*.json")))

#: The issue's list of legal item state transitions, written out independently of
#: ledger.model so that a change there is caught.
ALLOWED_TRANSITIONS: Final = frozenset({
    ("TODO", "IN_PROGRESS"), ("TODO", "BLOCKED"),
    ("IN_PROGRESS", "DONE"), ("IN_PROGRESS", "BLOCKED"), ("IN_PROGRESS", "TODO"),
    ("BLOCKED", "TODO"), ("BLOCKED", "IN_PROGRESS"),
    ("DONE", "IN_PROGRESS"),
})
ITEM_STATES: Final = ("TODO", "IN_PROGRESS", "DONE", "BLOCKED")

STATE_TABLES: Final = ("plans", "plan_items", "plan_links")
APPEND_ONLY_TRIGGERS: Final = ("events_no_update", "events_no_delete", "events_append_in_order")
EVENT_COLUMNS_IN_TABLE: Final = ("seq", "event_id", "ts", "event_type", "session_id", "task_id",
                                 "actor", "plan_id", "item_id", "command_id", "payload",
                                 "prev_hash", "hash")


class Cmds:
    """Builds command dicts with fresh command_ids (``cmd-1``, ``cmd-2``, ...)."""

    def __init__(self, session_id: str = "S-TEST", actor: str = "Liam") -> None:
        self.session_id = session_id
        self.actor = actor
        self._n = itertools.count(1)

    def _cmd(self, action: str, fields: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        cmd = {"action": action, "command_id": f"cmd-{next(self._n)}", "actor": self.actor,
               "session_id": self.session_id, **fields}
        cmd.update(extra)
        return cmd

    def create_plan(self, plan_id: str, title: str = "A plan", **kw: Any) -> dict[str, Any]:
        return self._cmd("CREATE_PLAN", {"plan_id": plan_id, "title": title}, kw)

    def update_plan(self, plan_id: str, expected_version: Any, change: Any,
                    **kw: Any) -> dict[str, Any]:
        return self._cmd("UPDATE_PLAN", {"plan_id": plan_id, "expected_version": expected_version,
                                         "change": change}, kw)

    def add_item(self, plan_id: str, item_id: str, title: str = "An item",
                 **kw: Any) -> dict[str, Any]:
        return self._cmd("ADD_ITEM", {"plan_id": plan_id, "item_id": item_id, "title": title}, kw)

    def update_item(self, item_id: str, expected_version: Any, change: Any,
                    **kw: Any) -> dict[str, Any]:
        return self._cmd("UPDATE_ITEM", {"item_id": item_id, "expected_version": expected_version,
                                         "change": change}, kw)

    def state_change(self, item_id: str, expected_version: Any, state: Any,
                     **kw: Any) -> dict[str, Any]:
        return self._cmd("STATE_CHANGE", {"item_id": item_id,
                                          "expected_version": expected_version,
                                          "change": {"state": state}}, kw)

    def add_link(self, link_id: str, from_item_id: str, to_item_id: str,
                 **kw: Any) -> dict[str, Any]:
        return self._cmd("ADD_LINK", {"link_id": link_id, "from_item_id": from_item_id,
                                      "to_item_id": to_item_id}, kw)


class Counter:
    """Deterministic clock / event-id source, so two ledgers can be compared row by row."""

    def __init__(self, fmt: str) -> None:
        self._fmt = fmt
        self._n = itertools.count(1)

    def __call__(self) -> str:
        return self._fmt.format(next(self._n))


def deterministic_ledger(store: Store) -> Ledger:
    return Ledger(store, clock=Counter("2026-01-01T00:00:00.{:06d}Z"),
                  new_event_id=Counter("ev-{:06d}"))


def apply_all(ledger: Ledger, commands: Iterable[Mapping[str, Any]]) -> list[CommandResult]:
    return [ledger.apply(c) for c in commands]


def raw_connect(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection in autocommit mode (no ledger code involved)."""
    return sqlite3.connect(path, isolation_level=None)


def dump_tables(path: Path, tables: Iterable[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``tables``, read with raw sqlite3, sorted."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in tables}


def capture(store: Store) -> dict[str, Any]:
    """Everything a rejected command must leave as it was: head, state rows, events.

    For SQLite and PostgreSQL the state tables and the events table are also dumped with
    the plain driver.
    (The ``commands`` table is checked separately: a well-formed command that is
    rejected is remembered there on purpose, so a retry gets the same answer.)
    """
    out: dict[str, Any] = {
        "head": store.head(),
        "state": store.load_state(),
        "events": [e.to_row() for e in store.iter_events()],
    }
    if isinstance(store, SqliteStore):
        out["tables"] = dump_tables(store.path, (*STATE_TABLES, "events"))
    elif isinstance(store, PgStore):
        out["tables"] = dump_pg_tables(store, (*STATE_TABLES, "events"))
    return out


def make_event(seq: int, prev_hash: str, **overrides: Any) -> Event:
    """A well-formed event with a correct hash (override fields to vary it)."""
    fields: dict[str, Any] = {
        "seq": seq, "event_id": f"ev-{seq}", "ts": f"2026-01-01T00:00:{seq % 60:02d}.000000Z",
        "event_type": "PLAN_CONFLICT_DETECTED", "session_id": "S-1", "task_id": "I-1",
        "actor": "Liam", "plan_id": "P-1", "item_id": "I-1", "command_id": f"c-{seq}",
        "payload": '{"action":"STATE_CHANGE","change":{"state":"DONE"}}',
        "prev_hash": prev_hash,
    }
    fields.update(overrides)
    fields.pop("hash", None)
    return Event(**fields, hash=overrides.get("hash", event_hash(fields)))


def make_chain(n: int, **overrides: Any) -> list[Event]:
    events: list[Event] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        ev = make_event(seq, prev, **overrides)
        events.append(ev)
        prev = ev.hash
    return events


def make_sandbox(base: Path) -> Path:
    """``base/sbx`` holding a copy of scenarios/: a root for OS_SANDBOX_ROOT."""
    root = base / "sbx"
    root.mkdir(parents=True)
    shutil.copytree(SCENARIO_DIR, root / "scenarios")
    return root


def init_db(path: Path) -> Path:
    ledger_sqlite.initialise(path)
    return path


def build_db(path: Path, commands: Iterable[Mapping[str, Any]]) -> list[CommandResult]:
    """A fresh SQLite ledger at ``path`` with ``commands`` applied; the store is closed."""
    init_db(path)
    with SqliteStore(path) as store:
        return apply_all(Ledger(store), commands)


def copy_db(src: Path, dst: Path) -> Path:
    """A byte-for-byte logical copy of a closed database (sqlite3 backup API)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(src)) as s, closing(sqlite3.connect(dst)) as d:
        s.backup(d)
    return dst


def drop_append_only_triggers(conn: sqlite3.Connection) -> None:
    for name in APPEND_ONLY_TRIGGERS:
        conn.execute(f"DROP TRIGGER {name}")


def event_rows(path: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY seq")]


def small_log() -> list[dict[str, Any]]:
    """Seven commands, seven events, of every common kind; the last one changes state.

    1 PLAN_CREATED  2-3 PLAN_ITEM_ADDED (one non-ASCII title)  4 PLAN_LINK_ADDED
    5 PLAN_ITEM_STATE_CHANGED  6 PLAN_CONFLICT_DETECTED  7 PLAN_UPDATED
    """
    c = Cmds(session_id="S-SMALL")
    return [
        c.create_plan("P-1", "Small plan"),
        c.add_item("P-1", "I-1", "Café ✓ — 東京 \"quoted\" \\ back\nslash", assigned_to="Codex",
                   due_ts="2026-02-01T00:00:00Z"),
        c.add_item("P-1", "I-2", "Second", kind="CHECK", priority=3, actor="Mary"),
        c.add_link("L-1", "I-2", "I-1", link_type="RELATED"),
        c.state_change("I-1", 1, "IN_PROGRESS", actor="Codex"),
        c.update_item("I-2", 7, {"title": "stale"}, actor="Mary"),
        c.update_plan("P-1", 1, {"title": "Small plan, renamed"}),
    ]


SMALL_LOG_EVENTS: Final = 7
