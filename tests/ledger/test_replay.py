"""ledger.replay.Replay (verify's fast replay) against the projection it stands in for.

The reference below is what verify_store did before the fast path: every event's
payload parsed and applied with ledger.projection.project to a MemoryState, the first
failure recorded as ``replay failed: <the exception>``. The fast replay must end in the
same state with the same error, on good logs and on logs with every kind of malformed
event (which it hands over to project), and with events after the hand-over.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
import pytest

from ledger.log.chain import ChainWalk, EventRow, event_row
from ledger.log.checkpoints import state_hash, tables_hash
from ledger.log.projection import project
from ledger.log.replay import Replay, Table, state_tables
from ledger.storage.memory import MemoryState, MemoryStore
from ledger.storage.rows import Event, State
from tests.support.helpers import Cmds, deterministic_ledger


def reference(rows: Sequence[EventRow]) -> tuple[State, tuple[int, str] | None, list[Any]]:
    """(state, first error, state hash after each event: None once failed)."""
    memory = MemoryState()
    hashes: list[Any] = []
    error = None
    for row in rows:
        ev = Event(*row)
        if error is None:
            try:
                project(ev, orjson.loads(ev.payload), memory)
            except Exception as exc:
                error = (ev.seq, f"replay failed: {exc}")
        hashes.append(None if error else fingerprint(state_tables(memory.state)))
    return memory.state, error, hashes


def fingerprint(tables: tuple[Table, Table, Table]) -> Any:
    """The tables, comparable whatever their keys (a malformed log can mix key types)."""
    return tuple(sorted((repr(k), tuple(v)) for k, v in table.items()) for table in tables)


def batches(rows: Sequence[EventRow], size: int) -> Iterator[Sequence[EventRow]]:
    for at in range(0, len(rows), size):
        yield rows[at:at + size]


def fast(rows: Sequence[EventRow], size: int = 4, *, short: bool = False
         ) -> tuple[State, tuple[int, str] | None, list[Any]]:
    hashes: list[Any] = []

    def observe(seq: int, hash_: str, replay: Replay | None) -> None:
        assert hash_ == rows[seq - 1][12]
        hashes.append(None if replay is None else fingerprint(replay.tables()))

    full = {row[0]: row for row in rows}
    replay = Replay(observe=observe, observe_seqs=[r[0] for r in rows],
                    full_rows=lambda short_rows: [full[r[0]] for r in short_rows])
    for batch in batches(rows, size):
        payloads: list[Any] = []
        ChainWalk().feed(batch, payloads)
        if short:  # the layout verify reads while a helper checks the chain
            batch = [(r[0], r[12], r[2], r[3], r[10]) for r in batch]
        replay.apply(batch, payloads, short=short)
    return replay.state(), replay.error, hashes


def good_log(seed: int, n: int = 60) -> list[EventRow]:
    """Every event type, from a real ledger (conflicts too: stale versions)."""
    rng = random.Random(seed)
    store = MemoryStore()
    ledger = deterministic_ledger(store)
    c = Cmds()
    ledger.apply(c.create_plan("P-1", "One"))
    ledger.apply(c.create_plan("P-2", "Two", actor="Mary"))
    for i in range(n):
        items = store.list_items()
        r = rng.random()
        if r < 0.25 or len(items) < 3:
            ledger.apply(c.add_item(rng.choice(["P-1", "P-2"]), f"I-{i}", f"Item {i} ✓",
                                    priority=rng.randint(0, 3)))
        elif r < 0.45:
            item = rng.choice(items)
            dst = {"TODO": "IN_PROGRESS", "IN_PROGRESS": "DONE", "DONE": "IN_PROGRESS",
                   "BLOCKED": "TODO"}[item.state]
            version = item.version if rng.random() > 0.2 else item.version + 5  # conflict
            ledger.apply(c.state_change(item.item_id, version, dst))
        elif r < 0.7:
            item = rng.choice(items)
            change = rng.choice([{"title": f"T{i}"}, {"priority": 4, "assigned_to": "Codex"},
                                 {"due_ts": "2026-03-01T00:00:00Z", "kind": "NOTE"}])
            ledger.apply(c.update_item(item.item_id, item.version, change))
        elif r < 0.85:
            a = rng.choice(items)
            same = [x for x in items if x.plan_id == a.plan_id and x.item_id != a.item_id]
            if same:
                ledger.apply(c.add_link(f"L-{i}", a.item_id, rng.choice(same).item_id))
        else:
            plan = rng.choice(store.list_plans())
            change = rng.choice([{"title": f"Plan {i}"}, {"owner_agent": "Mary"},
                                 {"status": "ACTIVE", "title": f"P{i}"}])
            ledger.apply(c.update_plan(plan.plan_id, plan.version, change))
    item = store.list_items()[0]
    ledger.apply(c.state_change(item.item_id, item.version + 7, "BLOCKED"))  # a conflict
    plan = store.get_plan("P-2")
    assert plan is not None
    ledger.apply(c.update_plan("P-2", plan.version, {"status": "ARCHIVED"}))
    rows = [event_row(e) for e in store.iter_events()]
    assert {r[3] for r in rows} >= {"PLAN_CREATED", "PLAN_UPDATED", "PLAN_ITEM_ADDED",
                                    "PLAN_ITEM_UPDATED", "PLAN_ITEM_STATE_CHANGED",
                                    "PLAN_LINK_ADDED", "PLAN_CONFLICT_DETECTED"}
    return rows


def with_payload(row: EventRow, payload: Any, event_type: str | None = None) -> EventRow:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    out = list(row)
    out[10] = text
    if event_type is not None:
        out[3] = event_type
    return tuple(out)


def assert_same(rows: Sequence[EventRow]) -> tuple[State, tuple[int, str] | None]:
    want_state, want_error, want_hashes = reference(rows)
    for size in (1, 3, 500):
        for short in (False, True):
            state, error, hashes = fast(rows, size, short=short)
            assert error == want_error
            assert state == want_state
            assert state_tables(state) == state_tables(want_state)
            assert hashes == want_hashes
    return want_state, want_error


@pytest.mark.parametrize("seed", range(5))
def test_a_good_log_replays_as_the_projection_does(seed: int) -> None:
    rows = good_log(seed)
    state, error = assert_same(rows)
    assert error is None
    replay = Replay()
    payloads: list[Any] = []
    ChainWalk().feed(rows, payloads)
    replay.apply(rows, payloads)
    assert tables_hash(*replay.tables()) == state_hash(state)  # what checkpoints sign


Edit = Callable[[dict[str, Any]], Any]


def _set(path: tuple[str, ...], value: Any) -> Edit:
    def edit(p: dict[str, Any]) -> Any:
        target = p
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return p
    return edit


def _drop(*path: str) -> Edit:
    def edit(p: dict[str, Any]) -> Any:
        target = p
        for key in path[:-1]:
            target = target[key]
        target.pop(path[-1], None)
        return p
    return edit


EDITS: dict[str, Edit] = {
    "not JSON": lambda p: "{not json",
    "a list": lambda p: [p],
    "a string": lambda p: json.dumps("text"),
    "null": lambda p: "null",
    "no change": _drop("change"),
    "change null": _set(("change",), None),
    "change empty": _set(("change",), {}),
    "change a list": _set(("change",), ["title"]),
    "change a string": _set(("change",), "title"),
    "change version": _set(("change", "version"), 9),
    "change updated_ts": _set(("change", "updated_ts"), "x"),
    "change item_id": _set(("change", "item_id"), "I-elsewhere"),
    "change plan_id": _set(("change", "plan_id"), "P-2"),
    "change created_ts": _set(("change", "created_ts"), "then"),
    "change unknown": _set(("change", "colour"), "red"),
    "change state null": _set(("change", "state"), None),
    "change priority list": _set(("change", "priority"), [1, 2]),
    "no item_id": _drop("item_id"),
    "item_id missing": _set(("item_id",), "I-nowhere"),
    "item_id a list": _set(("item_id",), ["I-1"]),
    "item_id a number": _set(("item_id",), 7),
    "no plan_id": _drop("plan_id"),
    "plan_id missing": _set(("plan_id",), "P-nowhere"),
    "plan_id a dict": _set(("plan_id",), {"a": 1}),
    "no new_version": _drop("new_version"),
    "new_version text": _set(("new_version",), "two"),
    "no link_id": _drop("change", "link_id"),
    "link to nowhere": _set(("change", "to_item_id"), "I-nowhere"),
    "link_id a list": _set(("change", "link_id"), ["L"]),
}


def _first_of(rows: Sequence[EventRow], event_type: str) -> int:
    return next(i for i, r in enumerate(rows) if r[3] == event_type)


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
@pytest.mark.parametrize("event_type", ["PLAN_CREATED", "PLAN_UPDATED", "PLAN_ITEM_ADDED",
                                        "PLAN_ITEM_UPDATED", "PLAN_ITEM_STATE_CHANGED",
                                        "PLAN_LINK_ADDED", "PLAN_CONFLICT_DETECTED"])
def test_a_malformed_event_gets_the_projections_verdict(edit: str, event_type: str) -> None:
    rows = good_log(11)
    i = _first_of(rows, event_type)
    edited = EDITS[edit](json.loads(rows[i][10]))
    rows[i] = with_payload(rows[i], edited)
    assert_same(rows)


@pytest.mark.parametrize(("event_type", "to"), [
    ("PLAN_ITEM_UPDATED", "BOGUS"), ("PLAN_ITEM_ADDED", "PLAN_CREATED"),
    ("PLAN_ITEM_STATE_CHANGED", "PLAN_LINK_ADDED"), ("PLAN_LINK_ADDED", "PLAN_UPDATED"),
    ("PLAN_UPDATED", "PLAN_ITEM_UPDATED"), ("PLAN_CONFLICT_DETECTED", "PLAN_ITEM_ADDED"),
    ("PLAN_ITEM_ADDED", "PLAN_CONFLICT_DETECTED"),
])
def test_a_changed_event_type_gets_the_projections_verdict(event_type: str, to: str) -> None:
    rows = good_log(12)
    i = _first_of(rows, event_type)
    rows[i] = with_payload(rows[i], rows[i][10], to)
    assert_same(rows)


@pytest.mark.parametrize("what", ["plan twice", "item twice", "link twice"])
def test_a_repeated_insert_gets_the_projections_verdict(what: str) -> None:
    rows = good_log(13)
    event_type = {"plan twice": "PLAN_CREATED", "item twice": "PLAN_ITEM_ADDED",
                  "link twice": "PLAN_LINK_ADDED"}[what]
    i = _first_of(rows, event_type)
    rows.insert(i + 1, rows[i])
    rows = [(n, *r[1:]) for n, r in enumerate(rows, start=1)]
    _, error = assert_same(rows)
    assert error is not None and "UNIQUE" in error[1]


def test_after_a_hand_over_the_rest_of_the_log_still_replays() -> None:
    """Valid but unusual changes (fields the ledger never changes this way): project
    applies them, and every later event goes through it too."""
    rows = good_log(14, n=120)
    updates = [i for i, r in enumerate(rows) if r[3] == "PLAN_ITEM_UPDATED"]
    first = updates[0]
    payload = json.loads(rows[first][10])
    payload["change"]["created_ts"] = "rewritten"
    rows[first] = with_payload(rows[first], payload)
    plan_updates = [i for i, r in enumerate(rows) if r[3] == "PLAN_UPDATED"]
    if plan_updates:
        payload = json.loads(rows[plan_updates[-1]][10])
        payload["change"]["created_ts"] = "also"
        rows[plan_updates[-1]] = with_payload(rows[plan_updates[-1]], payload)
    state, error = assert_same(rows)
    assert error is None
    assert any(item.created_ts == "rewritten" for item in state.items.values())


def test_the_fast_path_does_not_hand_over_a_good_log() -> None:
    rows = good_log(15, n=200)
    replay = Replay()
    for batch in batches(rows, 50):
        payloads: list[Any] = []
        ChainWalk().feed(batch, payloads)
        replay.apply(batch, payloads)
    assert not replay.handed_over and replay.error is None


def test_short_rows_without_full_rows_cannot_be_handed_over() -> None:
    rows = good_log(16)
    rows[5] = with_payload(rows[5], "[]")
    replay = Replay()
    payloads: list[Any] = []
    ChainWalk().feed(rows, payloads)
    with pytest.raises(ValueError, match="full_rows"):
        replay.apply([(r[0], r[12], r[2], r[3], r[10]) for r in rows], payloads, short=True)


@pytest.mark.parametrize("seed", range(30))
def test_random_edits_get_the_projections_verdict(seed: int) -> None:
    rng = random.Random(seed)
    rows = good_log(100 + seed, n=40)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(rows))
        try:
            payload = json.loads(rows[i][10])
        except ValueError:
            continue
        edit = EDITS[rng.choice(sorted(EDITS))]
        try:
            rows[i] = with_payload(rows[i], edit(payload))
        except (KeyError, TypeError):  # the edit does not apply to this payload's shape
            continue
    assert_same(rows)
