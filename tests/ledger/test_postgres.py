"""The PostgreSQL backend: its schema rules, its snapshots, and the same results as SQLite.

Each test gets a fresh database on the session's throwaway cluster (tests/support/pg.py);
the store contract and the ledger's rule and scenario tests run on it elsewhere
(test_store_contract.py, conftest's ``store`` fixture). Here: what only PostgreSQL needs
showing (triggers, collation and types in the catalog, exported snapshots, verify with a
live writer) and the cross-backend checks of issue 11, item 2: with the clock and the
event ids injected, one command sequence gives byte-identical events, head and state hash
on SQLite and PostgreSQL; without injection, a log written by either backend re-hashes
and replays on the other into the very tables the first one holds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agents.tools.bench import make_workload
from agents.tools.pgcluster import PgUrl
from ledger.log.chain import event_hash
from ledger.log.checkpoints import state_hash
from ledger.log.projection import project
from ledger.log.verify import verify_store
from ledger.log.verify_parallel import ChainHelper
from ledger.plans.ledger import Ledger
from ledger.server import reader
from ledger.storage.base import Store
from ledger.storage.postgres_store import PgStore
from ledger.storage.sqlite import SqliteStore
from schema import wire
from schema.errors import CoordinatorError
from schema.scenario import load_scenario
from tests.support.helpers import SCENARIO_FILES, Cmds, deterministic_ledger, init_db
from tests.support.pgstore import RawPg, open_pg_store

LEDGER_TABLES = ("meta", "events", "commands", "plans", "plan_items", "plan_links")


@pytest.fixture
def pg_store(pg_db: PgUrl) -> Iterator[PgStore]:
    with open_pg_store(pg_db) as store:
        yield store


@pytest.fixture
def raw(pg_db: PgUrl) -> Iterator[RawPg]:
    conn = RawPg(pg_db)
    yield conn
    conn.close()


def mixed_commands() -> list[dict[str, Any]]:
    """Every scenario file's steps, then the bench's mix (adds, updates, state changes,
    stale versions), ids in mixed case so that byte order and other orders differ."""
    commands: list[dict[str, Any]] = []
    for path in SCENARIO_FILES:
        commands += [step.command.model_dump(mode="json", exclude_unset=True) | {
            "command_id": step.command.command_id, "actor": step.command.actor,
            "session_id": step.command.session_id} for step in load_scenario(path).steps]
    c = Cmds(session_id="S-MIX")
    commands += [c.create_plan(pid, f"plan {pid} — ✓") for pid in
                 ("P-BENCH", "p-lower", "P-Upper", "P.dot", "P-1", "P-10", "P-9")]
    commands += [c.add_item("P-Upper", iid, f"item {iid}", actor="Mary") for iid in
                 ("i-b", "I-B", "I-a", "I-_", "I-0")]
    work = make_workload(2, 60, seed=11)
    commands += [{**cmd, "session_id": "S-BENCH"} for stream in work.streams
                 for cmd in stream]
    return commands


def apply_in_batches(ledger: Ledger, commands: list[dict[str, Any]]) -> list[str]:
    """Apply in groups of 1, 7 and 64, as the ledger process would; the statuses."""
    statuses: list[str] = []
    at, sizes = 0, (1, 7, 64)
    while at < len(commands):
        size = sizes[at % 3]
        statuses += [r.status for r in ledger.apply_many(commands[at:at + size])]
        at += size
    return statuses


def everything(store: Store) -> dict[str, Any]:
    seq, head = store.head()
    return {"events": [e.to_row() for e in store.iter_events()], "head": (seq, head),
            "state_hash": state_hash(store.load_state()), "plans": store.list_plans(),
            "items": store.list_items(), "links": store.list_links(),
            "by_task": store.count_by("task_id"), "by_actor": store.count_by("actor")}


# --- the same results on both backends ------------------------------------------------


def test_injected_clock_and_ids_give_byte_identical_logs_on_both_backends(
        sqlite_store: SqliteStore, pg_store: PgStore) -> None:
    commands = mixed_commands()
    on_sqlite = apply_in_batches(deterministic_ledger(sqlite_store), commands)
    on_pg = apply_in_batches(deterministic_ledger(pg_store), commands)
    assert on_sqlite == on_pg
    assert {"APPLIED", "CONFLICT", "REJECTED"} <= set(on_pg)
    a, b = everything(sqlite_store), everything(pg_store)
    assert len(a["events"]) > 150
    for key in a:
        assert a[key] == b[key], key
    assert [p.plan_id for p in b["plans"]][:4] == ["P-1", "P-10", "P-9", "P-BENCH"]
    assert verify_store(sqlite_store) == verify_store(pg_store)
    assert verify_store(pg_store)["chain_status"] == "OK"


def copy_log(source: Store, target: Store) -> None:
    """``source``'s events into the empty ``target`` as they are, with the state rows
    replayed from them (the projection, through ``target``'s own transaction)."""
    import orjson

    with target.transaction() as tx:
        for event in source.iter_events():
            project(event, orjson.loads(event.payload), tx)
            tx.append_event(event)


@pytest.mark.parametrize("direction", ["sqlite->postgres", "postgres->sqlite"])
def test_a_log_written_by_one_backend_rehashes_and_replays_on_the_other(
        sqlite_store: SqliteStore, pg_store: PgStore, direction: str) -> None:
    source, target = ((sqlite_store, pg_store) if direction.startswith("sqlite")
                      else (pg_store, sqlite_store))
    Ledger(source).apply_many(mixed_commands()[:80])  # the real clock and event ids
    apply_in_batches(Ledger(source), mixed_commands()[80:])
    for row in (e.to_row() for e in source.iter_events()):
        assert event_hash(row) == row["hash"], row["seq"]
    copy_log(source, target)
    assert everything(target) == everything(source)
    assert verify_store(target) == verify_store(source)
    assert verify_store(target)["chain_status"] == "OK"


# --- the schema in PostgreSQL terms ---------------------------------------------------


def test_text_compares_bytewise_and_integers_are_64_bit(raw: RawPg) -> None:
    columns = raw.execute(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), co.collname "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "LEFT JOIN pg_collation co ON co.oid = a.attcollation "
        "WHERE c.relname = ANY(?) AND a.attnum > 0 AND NOT a.attisdropped",
        (list(LEDGER_TABLES),)).fetchall()
    assert {c[0] for c in columns} == set(LEDGER_TABLES)
    assert {(t, coll) for _, _, t, coll in columns} == {("text", "C"), ("bigint", None)}
    assert {(c[0], c[1]) for c in columns if c[2] == "bigint"} == {
        ("events", "seq"), ("commands", "seq"), ("plans", "version"),
        ("plan_items", "priority"), ("plan_items", "version")}


@pytest.mark.parametrize("statement", [
    "UPDATE events SET actor = 'Eve' WHERE seq = 1",
    "UPDATE events SET actor = 'Eve' WHERE seq = 999",  # no row: refused all the same
    "DELETE FROM events WHERE seq = 1",
    "TRUNCATE events",
    "TRUNCATE events, commands, plans, plan_items, plan_links CASCADE",
    "UPDATE commands SET status = 'APPLIED'",
    "DELETE FROM commands",
    "TRUNCATE commands",
])
def test_the_log_and_the_command_records_are_append_only(
        pg_store: PgStore, raw: RawPg, statement: str) -> None:
    ledger = Ledger(pg_store)
    ledger.apply(Cmds().create_plan("P-1"))
    before = everything(pg_store)
    with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
        raw.execute(statement)
    assert everything(pg_store) == before
    assert pg_store.get_command("cmd-1") is not None


def test_out_of_order_inserts_are_refused_whoever_writes(pg_store: PgStore,
                                                         raw: RawPg) -> None:
    c = Cmds()
    Ledger(pg_store).apply_many([c.create_plan("P-1"), c.create_plan("P-2")])
    rows = [e.to_row() for e in pg_store.iter_events()]
    columns = ", ".join(rows[0])
    values = ", ".join("?" for _ in rows[0])
    good = dict(rows[1], seq=3, event_id="ev-x", prev_hash=rows[1]["hash"])
    for bad in (dict(good, seq=4),                       # a gap
                dict(good, prev_hash=rows[0]["hash"]),   # links to the wrong row
                dict(rows[0], seq=3, event_id="ev-y")):  # seq 3 linking to genesis
        with pytest.raises(psycopg.errors.RestrictViolation, match="appended at seq"):
            raw.execute(f"INSERT INTO events ({columns}) VALUES ({values})",
                        tuple(bad.values()))
    raw.execute(f"INSERT INTO events ({columns}) VALUES ({values})", tuple(good.values()))
    assert pg_store.head() == (3, good["hash"])


# --- snapshots --------------------------------------------------------------------------


def test_an_exported_snapshot_is_read_by_another_session(pg_db: PgUrl,
                                                         pg_store: PgStore) -> None:
    ledger, cmds = Ledger(pg_store), Cmds()
    ledger.apply_many([cmds.create_plan("P-1"), cmds.add_item("P-1", "I-1")])
    before = (pg_store.head(), pg_store.load_state())
    with pg_store.read_snapshot() as snap, open_pg_store(pg_db, readonly=True) as other:
        token = snap.export()
        assert token
        ledger.apply_many([cmds.add_item("P-1", "I-2"), cmds.update_plan("P-1", 1, {
            "title": "moved on"})])
        with other.shared_snapshot(token) as same:
            assert (same.head(), same.load_state()) == before
            assert same.event_count() == 2
        with other.read_snapshot() as fresh:
            assert fresh.head()[0] == 4
    with pytest.raises(CoordinatorError), open_pg_store(pg_db) as late, \
            late.shared_snapshot(token):  # the exporting snapshot has ended
        pass


def test_verify_with_a_helper_sees_one_snapshot_while_a_writer_commits(
        pg_db: PgUrl, pg_store: PgStore) -> None:
    """verify_chain's walk, its helper process and the table comparison read the same
    REPEATABLE READ snapshot: a ledger committing all the while never causes a false
    mismatch."""
    ledger = Ledger(pg_store)
    work = make_workload(3, 120, seed=5)
    commands = [{**c, "session_id": "S-V"} for s in work.streams for c in s]
    ledger.apply({"command_id": "plan", "actor": "bench", "session_id": "S-V",
                  "action": "CREATE_PLAN", "plan_id": "P-BENCH", "title": "b"})
    ledger.apply_many(commands[:200])
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        with open_pg_store(pg_db) as store:
            writer = Ledger(store)
            for at in range(200, len(commands), 4):
                if stop.is_set():
                    return
                writer.apply_many(commands[at:at + 4])
                written.append(at)

    thread = threading.Thread(target=write)
    thread.start()
    reports = []
    try:
        with open_pg_store(pg_db, readonly=True) as reader_store:
            for _ in range(3):
                with ChainHelper(reader_store.locator, chunk=16) as helper:
                    reports.append(verify_store(reader_store, helper=helper))
                    assert helper.error is None and helper.reports
    finally:
        stop.set()
        thread.join()
    assert written  # the writer did commit meanwhile
    for report in reports:
        assert (report["chain_status"], report["mismatches"]) == ("OK", [])
        assert report["events"] >= 201
    assert verify_store(pg_store)["events"] == pg_store.head()[0]


# --- NUL, alike on every backend --------------------------------------------------------


def test_nul_in_a_query_parameter_is_invalid_on_every_backend(store: Store) -> None:
    Ledger(store).apply(Cmds().create_plan("P-1"))
    for query, param in (("show-plan", "plan_id"), ("get-item", "item_id"),
                         ("session-timeline", "session_id")):
        msg = wire.Query(id="q-1", query=query, params={param: "P-1\x00"})
        with pytest.raises(CoordinatorError) as refused:
            reader.answer_query(store, msg)
        assert (refused.value.code, refused.value.field) == ("INVALID_VALUE",
                                                             f"params.{param}")
    # below the protocol, a NUL key finds nothing (no stored id can hold one)
    assert store.get_plan("P-1\x00") is None
    assert list(store.iter_events(filters={"plan_id": "P-1\x00"})) == []
    assert store.list_items("P-1\x00") == []


def test_a_sqlite_file_and_a_postgres_database_list_the_same_order(
        tmp_path: Path, pg_store: PgStore) -> None:
    sqlite = SqliteStore(init_db(tmp_path / "data" / "order.db"))
    c = Cmds()
    ids = ["P-b", "P-B", "P-a", "P-A", "P._", "P.9", "P-10", "P-9", "P@x", "P/x", "P+x"]
    for store in (sqlite, pg_store):
        Ledger(store).apply_many([c.create_plan(pid) for pid in ids])
    assert [p.plan_id for p in pg_store.list_plans()] == \
        [p.plan_id for p in sqlite.list_plans()] == sorted(ids, key=str.encode)
    sqlite.close()
