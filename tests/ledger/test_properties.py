"""Property tests (hypothesis).

1. Random command sequences (every action, valid and stale versions, ids from small pools
   so duplicates and unknowns happen, re-sent and re-used command ids, malformed input)
   obey the L3 rules step by step; afterwards the chain verifies, the tables equal a
   replay of the log, and the in-memory backend fed the same commands agrees row for row.
   Group commit (Ledger.apply_many in random batches) decides exactly as one by one.
2. Any single-field alteration, deletion, insertion or swap of event rows is detected at
   the first affected seq.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from ledger.log.chain import GENESIS_HASH, canonical_json, event_hash
from ledger.log.projection import project
from ledger.log.verify import verify_store
from ledger.plans.ledger import CommandResult, fingerprint
from ledger.plans.scenario import apply_scenario
from ledger.storage.base import Store
from ledger.storage.memory import MemoryState, MemoryStore
from ledger.storage.rows import Link, State
from ledger.storage.sqlite import SqliteStore
from schema.commands import parse_command
from schema.scenario import load_scenario
from schema.vocabulary import EVENT_TYPES
from tests.support.helpers import (
    ALLOWED_TRANSITIONS,
    EVENT_COLUMNS_IN_TABLE,
    SCENARIO_FILES,
    copy_db,
    deterministic_ledger,
    drop_append_only_triggers,
    event_rows,
    init_db,
    raw_connect,
)

PLANS = ("P-1", "P-2")
ITEMS = ("I-1", "I-2", "I-3", "I-4")
LINKS = ("L-1", "L-2", "L-3")
ACTORS = ("Liam", "Codex", "Mary")
SESSIONS = ("S-1", "S-2")
STATES = ("TODO", "IN_PROGRESS", "DONE", "BLOCKED", "FINISHED")
TITLES = st.sampled_from(["Alpha", "Beta", "Ünïcode ✓ 東京", 'quote " and \\ back'])
NULLABLE = {"task_id", "plan_id", "item_id", "command_id"}

SEQUENCE_SETTINGS = settings(max_examples=100, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
TAMPER_SETTINGS = settings(max_examples=120, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])


# --- random command sequences -------------------------------------------------------------


def current_version(cmd: dict[str, Any], state: State) -> int | None:
    """The version the command's expected_version is checked against (None: no target)."""
    if cmd["action"] == "UPDATE_PLAN":
        plan = state.plans.get(cmd["plan_id"])
        return plan.version if plan else None
    if cmd["action"] in ("UPDATE_ITEM", "STATE_CHANGE"):
        item = state.items.get(cmd["item_id"])
        return item.version if item else None
    return None


def draw_version(data: st.DataObject, current: int | None) -> int:
    if current is not None and data.draw(st.integers(0, 2), label="current version?") > 0:
        return current
    return data.draw(st.integers(0, 4), label="expected_version")


def maybe(data: st.DataObject, strategy: st.SearchStrategy[Any]) -> Any:
    return data.draw(st.none() | strategy)


def pick(data: st.DataObject, existing: Any, pool: tuple[str, ...], label: str) -> str:
    """Mostly an id that exists (so commands get far), sometimes any id from the pool."""
    known = sorted(existing)
    if known and data.draw(st.integers(0, 3), label=f"{label} known?") > 0:
        return data.draw(st.sampled_from(known), label=label)
    return data.draw(st.sampled_from(pool), label=label)


def draw_command(data: st.DataObject, state: State) -> dict[str, Any]:
    action = data.draw(st.sampled_from(["CREATE_PLAN", "UPDATE_PLAN", "ADD_ITEM", "UPDATE_ITEM",
                                        "STATE_CHANGE", "ADD_LINK"]), label="action")
    cmd: dict[str, Any] = {"action": action, "actor": data.draw(st.sampled_from(ACTORS)),
                           "session_id": data.draw(st.sampled_from(SESSIONS))}
    if action == "CREATE_PLAN":
        cmd.update(plan_id=data.draw(st.sampled_from(PLANS)), title=data.draw(TITLES))
        owner = maybe(data, st.sampled_from(ACTORS))
        if owner:
            cmd["owner_agent"] = owner
    elif action == "UPDATE_PLAN":
        cmd["plan_id"] = pick(data, state.plans, PLANS, "plan_id")
        cmd["change"] = data.draw(st.fixed_dictionaries({}, optional={
            "title": TITLES, "status": st.sampled_from(["ACTIVE", "ACTIVE", "ARCHIVED"]),
            "owner_agent": st.sampled_from(ACTORS)}))
    elif action == "ADD_ITEM":
        cmd.update(plan_id=pick(data, state.plans, PLANS, "plan_id"),
                   item_id=data.draw(st.sampled_from(ITEMS)), title=data.draw(TITLES))
        cmd.update(data.draw(st.fixed_dictionaries({}, optional={
            "kind": st.sampled_from(["TASK", "NOTE", "CHECK"]),
            "priority": st.integers(-5, 5), "assigned_to": st.sampled_from(ACTORS),
            "state": st.sampled_from(["TODO", "BLOCKED"])})))
    elif action in ("UPDATE_ITEM", "STATE_CHANGE"):
        cmd["item_id"] = pick(data, state.items, ITEMS, "item_id")
        if action == "UPDATE_ITEM":
            cmd["change"] = data.draw(st.fixed_dictionaries({}, optional={
                "title": TITLES, "priority": st.integers(-5, 5),
                "assigned_to": st.none() | st.sampled_from(ACTORS),
                "kind": st.sampled_from(["TASK", "NOTE"]),
                "due_ts": st.none() | st.just("2026-06-30T12:00:00Z")}))
        else:
            cmd["change"] = {"state": data.draw(st.sampled_from(STATES))}
        plan_id = maybe(data, st.sampled_from(PLANS))
        if plan_id:
            cmd["plan_id"] = plan_id
    else:
        cmd.update(link_id=data.draw(st.sampled_from(LINKS)),
                   from_item_id=pick(data, state.items, ITEMS, "from_item_id"),
                   to_item_id=pick(data, state.items, ITEMS, "to_item_id"),
                   link_type=data.draw(st.sampled_from(["DEPENDS_ON", "RELATED"])))
    if action in ("UPDATE_PLAN", "UPDATE_ITEM", "STATE_CHANGE"):
        cmd["expected_version"] = draw_version(data, current_version(cmd, state))
    return cmd


def check_fresh_outcome(cmd: dict[str, Any], res: CommandResult, before: State,
                        after: State, head_before: int, head_after: int) -> None:
    """The L3 rules, written independently of ledger.plans, for a first-time command."""
    action = cmd["action"]
    current = current_version(cmd, before)
    stale = current is not None and cmd["expected_version"] != current
    assert res.replayed is False
    if stale:  # the version check comes first, whatever else is wrong
        assert res.status == "CONFLICT", res.to_dict()
    if res.status == "CONFLICT":
        assert stale
        assert res.event_type == "PLAN_CONFLICT_DETECTED"
        assert res.current_version == current
    if res.status in ("APPLIED", "CONFLICT"):
        assert head_after == head_before + 1 == res.seq
        assert len(res.events) == 1
    else:
        assert head_after == head_before
        assert res.events == []
        assert res.error is not None and res.error.get("field")
    if res.status != "APPLIED":
        assert after == before
        return
    # applied: exactly the right versions moved, nothing disappeared
    assert set(before.plans) <= set(after.plans)
    assert set(before.items) <= set(after.items)
    assert set(before.links) <= set(after.links)
    for pid, plan in before.plans.items():
        bump = action == "UPDATE_PLAN" and cmd["plan_id"] == pid
        assert after.plans[pid].version == plan.version + bump
    for iid, item in before.items.items():
        bump = action in ("UPDATE_ITEM", "STATE_CHANGE") and cmd["item_id"] == iid
        assert after.items[iid].version == item.version + bump
    if action == "STATE_CHANGE":
        src = before.items[cmd["item_id"]].state
        assert (src, cmd["change"]["state"]) in ALLOWED_TRANSITIONS
        assert after.items[cmd["item_id"]].state == cmd["change"]["state"]
    elif action == "CREATE_PLAN":
        assert cmd["plan_id"] not in before.plans
        assert after.plans[cmd["plan_id"]].version == 1
    elif action == "ADD_ITEM":
        assert cmd["item_id"] not in before.items
        assert before.plans[cmd["plan_id"]].status == "ACTIVE"
        assert after.items[cmd["item_id"]].version == 1
    elif action == "ADD_LINK":
        src, dst = before.items[cmd["from_item_id"]], before.items[cmd["to_item_id"]]
        assert src.item_id != dst.item_id and src.plan_id == dst.plan_id
        assert after.links[cmd["link_id"]].plan_id == src.plan_id


def check_illegal_transition(cmd: dict[str, Any], res: CommandResult, before: State) -> None:
    if cmd["action"] != "STATE_CHANGE" or res.status != "REJECTED":
        return
    item = before.items.get(cmd["item_id"])
    if item is None:
        assert res.error is not None and res.error["code"] == "UNKNOWN_ITEM"
    elif (item.state, cmd["change"]["state"]) not in ALLOWED_TRANSITIONS:
        assert res.error is not None
        assert res.error["code"] in ("INVALID_TRANSITION", "PLAN_MISMATCH", "PLAN_ARCHIVED")


def draw_step(data: st.DataObject, i: int, sent: list[dict[str, Any]],
              state: State) -> dict[str, Any]:
    """A new command (id ``c<i>``), or now and then an exact re-send, an old command_id on
    new content, or a malformed command."""
    kind = data.draw(st.integers(0, 29), label="id kind") if sent else 9
    if kind == 0:
        return dict(data.draw(st.sampled_from(sent), label="re-send"))
    cmd = {**draw_command(data, state), "command_id": f"c{i}"}
    if kind == 1:
        cmd["command_id"] = data.draw(st.sampled_from(sent), label="reuse")["command_id"]
    elif kind == 2:  # a string where an int belongs (or where nothing belongs)
        cmd["expected_version"] = "1"
    return cmd


def replayed_state(store: Store) -> State:
    replay = MemoryState()
    for ev in store.iter_events():
        project(ev, json.loads(ev.payload), replay)
    return replay.state


@SEQUENCE_SETTINGS
@given(data=st.data())
def test_random_command_sequences_keep_log_and_state_consistent(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = init_db(Path(tmp) / "data" / "prop.db")
        with SqliteStore(path) as store:
            mem_store = MemoryStore()
            ledger, mem_ledger = deterministic_ledger(store), deterministic_ledger(mem_store)
            sent: list[dict[str, Any]] = []
            first: dict[str, dict[str, Any]] = {}  # command_id -> recorded outcome
            steps = data.draw(st.integers(1, 50), label="steps")
            for i in range(steps):
                cmd = draw_step(data, i, sent, store.load_state())
                malformed = isinstance(cmd.get("expected_version"), str)
                before, (head_before, _) = store.load_state(), store.head()
                record = store.get_command(cmd["command_id"])
                res = ledger.apply(cmd)
                mem_res = mem_ledger.apply(cmd)
                after, (head_after, _) = store.load_state(), store.head()
                assert res.to_dict() == mem_res.to_dict()
                event(f"{cmd['action']} {res.status}"
                      + (f" {res.error['code']}" if res.error else "")
                      + (" replayed" if res.replayed else ""))
                if malformed:  # shape is checked before anything else, records included
                    assert res.error is not None  # a string version, or one it has no use for
                    assert res.error["code"] in ("INVALID_TYPE", "UNKNOWN_FIELD")
                    assert res.error["field"] == "expected_version"
                    assert (after, head_after) == (before, head_before)
                elif record is not None:
                    if record.fingerprint == fingerprint(parse_command(cmd)):
                        assert res.replayed
                        assert {**res.to_dict(), "replayed": False} == first[cmd["command_id"]]
                    else:
                        assert res.error is not None
                        assert res.error["code"] == "COMMAND_ID_REUSED"
                    assert (after, head_after) == (before, head_before)
                else:
                    check_fresh_outcome(cmd, res, before, after, head_before, head_after)
                    check_illegal_transition(cmd, res, before)
                    first[cmd["command_id"]] = res.to_dict()
                sent.append(cmd)

            report = verify_store(store)
            assert report["chain_status"] == "OK", report["mismatches"]
            assert report["events"] == store.head()[0]
            assert replayed_state(store) == store.load_state()
            assert mem_store.load_state() == store.load_state()
            assert list(mem_store.iter_events()) == list(store.iter_events())
            assert verify_store(mem_store)["head_hash"] == report["head_hash"]


# --- tampering with event rows ---------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every scenario file applied to one database (conflicts, links, nulls, non-ASCII)."""
    path = init_db(tmp_path_factory.mktemp("props") / "data" / "template.db")
    with SqliteStore(path) as store:
        ledger = deterministic_ledger(store)
        for f in SCENARIO_FILES:
            assert apply_scenario(ledger, load_scenario(f))["ok"]
        assert verify_store(store)["chain_status"] == "OK"
        last = list(store.iter_events())[-1]
        assert last.event_type != "PLAN_CONFLICT_DETECTED"  # so deleting it is detectable
    return path


def verify(db: Path) -> dict[str, Any]:
    with SqliteStore(db, readonly=True) as store:
        return verify_store(store)


def first_mismatch(report: dict[str, Any]) -> int:
    assert report["chain_status"] == "BROKEN"
    return int(report["mismatches"][0]["seq"])


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)


def new_value(column: str, n: int) -> st.SearchStrategy[Any]:
    if column == "seq":
        return st.integers(n + 1, n + 10**6)
    options = [TEXT, st.integers(-(10**6), 10**6), st.binary(max_size=8)]
    if column in NULLABLE:
        options.append(st.none())
    if column in ("hash", "prev_hash"):
        options.append(HEX64)
    if column == "payload":
        options.append(st.dictionaries(st.sampled_from(["plan_id", "item_id", "change",
                                                        "new_version"]),
                                       st.none() | st.integers(0, 3) | TEXT)
                       .map(canonical_json))
    if column == "event_type":
        options.append(st.sampled_from(EVENT_TYPES))
    return st.one_of(options)


@TAMPER_SETTINGS
@given(data=st.data())
def test_any_single_field_alteration_is_detected_at_its_seq(template: Path,
                                                            data: st.DataObject) -> None:
    rows = event_rows(template)
    seq = data.draw(st.integers(1, len(rows)), label="seq")
    column = data.draw(st.sampled_from(EVENT_COLUMNS_IN_TABLE), label="column")
    value = data.draw(new_value(column, len(rows)), label="value")
    old = rows[seq - 1][column]
    with tempfile.TemporaryDirectory() as tmp:
        db = copy_db(template, Path(tmp) / "t.db")
        with closing(raw_connect(db)) as conn:
            drop_append_only_triggers(conn)
            try:
                conn.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", (value, seq))
            except sqlite3.IntegrityError:  # e.g. a duplicate event_id
                assume(False)
            where = value if column == "seq" else seq
            stored = conn.execute(f"SELECT {column} FROM events WHERE seq = ?",
                                  (where,)).fetchone()[0]
        assume(stored != old or type(stored) is not type(old))
        assert first_mismatch(verify(db)) == seq


@TAMPER_SETTINGS
@given(data=st.data())
def test_deleting_any_row_is_detected(template: Path, data: st.DataObject) -> None:
    n = len(event_rows(template))
    seq = data.draw(st.integers(1, n), label="seq")
    with tempfile.TemporaryDirectory() as tmp:
        db = copy_db(template, Path(tmp) / "t.db")
        with closing(raw_connect(db)) as conn:
            drop_append_only_triggers(conn)
            conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
        report = verify(db)
    if seq < n:
        assert first_mismatch(report) == seq
    else:  # a cut tail is caught through the state tables (the last event changed state)
        assert report["chain_status"] == "BROKEN"


@TAMPER_SETTINGS
@given(data=st.data())
def test_inserting_a_row_anywhere_is_detected(template: Path, data: st.DataObject) -> None:
    rows = event_rows(template)
    n = len(rows)
    seq = data.draw(st.integers(1, n + 1), label="insert before")
    # A forged row correctly linked to its predecessor; at the very end it must carry a
    # wrong hash (a perfectly forged tail event is out of a plain chain's reach).
    forge_hash = seq <= n and data.draw(st.booleans(), label="correct hash")
    payload = data.draw(st.one_of(
        TEXT, st.dictionaries(st.sampled_from(["plan_id", "item_id", "change", "new_version"]),
                              st.none() | st.integers(0, 3) | TEXT).map(canonical_json)))
    fields: dict[str, Any] = {
        "seq": seq, "event_id": "forged-" + data.draw(TEXT), "ts": data.draw(TEXT),
        "event_type": data.draw(st.sampled_from(EVENT_TYPES) | TEXT),
        "session_id": data.draw(st.sampled_from(SESSIONS) | TEXT),
        "task_id": data.draw(st.none() | st.sampled_from(ITEMS)),
        "actor": data.draw(st.sampled_from(ACTORS)),
        "plan_id": data.draw(st.none() | st.sampled_from(PLANS)),
        "item_id": data.draw(st.none() | st.sampled_from(ITEMS)),
        "command_id": data.draw(st.none() | TEXT), "payload": payload,
        "prev_hash": GENESIS_HASH if seq == 1 else rows[seq - 2]["hash"],
    }
    fields["hash"] = event_hash(fields) if forge_hash else data.draw(HEX64)
    assume(fields["hash"] != event_hash(fields) or forge_hash)
    with tempfile.TemporaryDirectory() as tmp:
        db = copy_db(template, Path(tmp) / "t.db")
        with closing(raw_connect(db)) as conn:
            drop_append_only_triggers(conn)
            conn.execute("UPDATE events SET seq = seq + 1000000 WHERE seq >= ?", (seq,))
            conn.execute("UPDATE events SET seq = seq - 999999 WHERE seq >= 1000000")
            conn.execute(f"INSERT INTO events ({', '.join(fields)}) VALUES "
                         f"({', '.join('?' for _ in fields)})", tuple(fields.values()))
        first = first_mismatch(verify(db))
    if forge_hash:  # the forged row itself may be fine; the one after it cannot be
        assert first in (seq, seq + 1)
    else:
        assert first == seq


@TAMPER_SETTINGS
@given(data=st.data())
def test_swapping_two_rows_is_detected(template: Path, data: st.DataObject) -> None:
    rows = event_rows(template)
    a, b = sorted(data.draw(st.lists(st.integers(1, len(rows)), min_size=2, max_size=2,
                                     unique=True), label="rows"))
    cols = [c for c in EVENT_COLUMNS_IN_TABLE if c != "seq"]
    with tempfile.TemporaryDirectory() as tmp:
        db = copy_db(template, Path(tmp) / "t.db")
        with closing(raw_connect(db)) as conn:
            drop_append_only_triggers(conn)
            conn.execute("UPDATE events SET event_id = 'tmp-' || event_id WHERE seq IN (?, ?)",
                         (a, b))
            for target, source in ((a, b), (b, a)):
                conn.execute(f"UPDATE events SET {', '.join(f'{c} = ?' for c in cols)} "
                             "WHERE seq = ?", (*(rows[source - 1][c] for c in cols), target))
        assert first_mismatch(verify(db)) == a


def without_times(state: State) -> State:
    return State({k: p.with_changes(created_ts="", updated_ts="") for k, p in state.plans.items()},
                 {k: i.with_changes(created_ts="", updated_ts="") for k, i in state.items.items()},
                 {k: Link(**{**lk.to_dict(), "created_ts": ""}) for k, lk in state.links.items()})


def without(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in keys}


@SEQUENCE_SETTINGS
@given(data=st.data())
def test_group_commit_equals_applying_one_by_one(data: st.DataObject) -> None:
    """Ledger.apply_many on SQLite, in random batches, decides exactly what one-by-one
    application on the in-memory store decides (a batch shares one timestamp, so times
    and hashes differ; nothing else may)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = init_db(Path(tmp) / "data" / "batch.db")
        with SqliteStore(path) as store:
            mem_store = MemoryStore()
            ledger, mem_ledger = deterministic_ledger(store), deterministic_ledger(mem_store)
            sent: list[dict[str, Any]] = []
            batch: list[dict[str, Any]] = []
            expected: list[CommandResult] = []
            steps = data.draw(st.integers(1, 50), label="steps")
            for i in range(steps):
                cmd = draw_step(data, i, sent, mem_store.load_state())
                sent.append(cmd)
                batch.append(cmd)
                expected.append(mem_ledger.apply(cmd))
                if i == steps - 1 or data.draw(st.integers(0, 3), label="commit?") == 0:
                    got = ledger.apply_many(batch)
                    assert [without(r.to_dict(), "hash") for r in got] == [
                        without(r.to_dict(), "hash") for r in expected]
                    assert [len(r.events) for r in got] == [len(r.events) for r in expected]
                    event(f"batch of {min(len(batch), 5)}{'+' if len(batch) > 5 else ''}")
                    batch, expected = [], []
            report = verify_store(store)
            assert report["chain_status"] == "OK", report["mismatches"]
            assert replayed_state(store) == store.load_state()
            assert without_times(store.load_state()) == without_times(mem_store.load_state())
            ignore = ("ts", "hash", "prev_hash")
            assert [without(e.to_row(), *ignore) for e in store.iter_events()] == [
                without(e.to_row(), *ignore) for e in mem_store.iter_events()]
