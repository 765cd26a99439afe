"""bin/bench's reference appender (agents/tools/bench_reference.py): it writes the same
event columns with the same preimage as the ledger, a chain that verifies, in a table
whose only index is the primary key; and its figures exist."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from agents.tools import bench
from agents.tools.bench_reference import append_reference, events_table_sql
from ledger.log.chain import verify_rows
from ledger.plans.ledger import Ledger
from ledger.storage.factory import file_locator, open_store
from schema.vocabulary import EVENT_COLUMNS


def _rows(db: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY seq"
                            ).fetchall()


def test_the_events_table_has_the_schema_columns_and_no_other_index() -> None:
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute(events_table_sql())
        columns = tuple(r[1] for r in conn.execute("PRAGMA table_info(events)"))
        objects = conn.execute("SELECT type, name FROM sqlite_master").fetchall()
    assert columns == EVENT_COLUMNS
    assert objects == [("table", "events")]  # seq is the rowid: no index of its own


def test_the_reference_chain_verifies_and_matches_the_ledgers_events(tmp_path: Path) -> None:
    work = bench.make_workload(2, 150)
    commands = bench.merged(work)
    ref = append_reference(tmp_path / "ref.db", commands, batch=16, durability="normal",
                           plan_id=bench.PLAN)
    assert ref["commands"] == len(commands) == 300
    assert ref["batch"] == 16
    for key in ("seconds", "commands_per_s", "cpu_seconds", "cpu_us_per_command"):
        assert ref[key] > 0, key

    rows = _rows(tmp_path / "ref.db")
    report = verify_rows(rows)  # type: ignore[arg-type]
    assert report.ok and report.events == len(commands)
    with closing(sqlite3.connect(tmp_path / "ref.db")) as conn:
        assert conn.execute("SELECT type, name FROM sqlite_master").fetchall() == [
            ("table", "events")]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        # one timestamp per commit group, as the ledger writes them
        assert conn.execute("SELECT count(DISTINCT ts) FROM events").fetchone() == (
            len(commands) // 16 + 1,)

    # the ledger on the same commands: every event has the same routing columns, and
    # the reference's payload keys are the ledger's (which adds the previous values)
    with open_store(file_locator(tmp_path / "ledger.db"), create=True,
                    durability="normal") as store:
        ledger = Ledger(store)
        ledger.apply(bench._create_plan("bench"))
        results = ledger.apply_many([c for c, _ in commands])
        assert [r.status for r in results] == [e for _, e in commands]
    same = ("event_type", "session_id", "task_id", "actor", "plan_id", "item_id",
            "command_id")
    index = {c: i for i, c in enumerate(EVENT_COLUMNS)}
    for mine, theirs in zip(rows, _rows(tmp_path / "ledger.db")[1:], strict=True):
        assert [mine[index[c]] for c in same] == [theirs[index[c]] for c in same]
        mine_payload = orjson.loads(mine[index["payload"]])  # type: ignore[arg-type]
        theirs_payload = orjson.loads(theirs[index["payload"]])  # type: ignore[arg-type]
        assert set(theirs_payload) - set(mine_payload) <= {"previous"}
        assert {k: theirs_payload[k] for k in mine_payload} == mine_payload


def test_the_reference_refuses_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "ref.db").write_bytes(b"")
    with pytest.raises(FileExistsError):
        append_reference(tmp_path / "ref.db", [], batch=4, durability="full", plan_id="P")
