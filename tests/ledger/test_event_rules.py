"""The one rule table (ledger.log.event_rules) that drives both replays.

The projection and the fast replay are both driven by EVENT_RULES: every event type has
one rule, each rule puts each value in its column, and a rule added to the table is
applied by both (the fast path without handing the event over).
tests/ledger/test_replay.py checks the two against each other on random and malformed
logs.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from ledger.log.chain import EventRow, event_row
from ledger.log.event_rules import EVENT_RULES, STATE_TABLES, Insert, Record, Update
from ledger.log.projection import ProjectionError, project
from ledger.log.replay import Replay, fast_steps, state_tables
from ledger.storage.memory import MemoryState, MemoryStore
from ledger.storage.rows import Event, Item, Link, Plan, State
from schema.commands import ItemChange, PlanChange, StateChangeBody
from schema.errors import StorageError
from schema.vocabulary import (
    EVENT_TYPES,
    ITEM_COLUMNS,
    LINK_COLUMNS,
    PLAN_COLUMNS,
    EventType,
)
from tests.support.helpers import Cmds, deterministic_ledger, small_log


def small_rows() -> list[EventRow]:
    """The small log plus an item update (every event type) as event rows, from a real
    ledger."""
    store = MemoryStore()
    ledger = deterministic_ledger(store)
    for command in [*small_log(), Cmds().update_item(
            "I-2", 1, {"title": "Second, renamed", "assigned_to": "Mary"},
            command_id="cmd-more")]:
        ledger.apply(command)
    rows = [event_row(e) for e in store.iter_events()]
    assert {r[3] for r in rows} == set(EVENT_TYPES)
    return rows


def by_projection(rows: list[EventRow]) -> State:
    memory = MemoryState()
    for row in rows:
        project(Event(*row), orjson.loads(row[10]), memory)
    return memory.state


def by_fast_replay(rows: list[EventRow]) -> Replay:
    replay = Replay()
    replay.apply(rows, [orjson.loads(r[10]) for r in rows])
    return replay


def appended(rows: list[EventRow], event_type: str, payload: dict[str, Any]) -> list[EventRow]:
    """``rows`` plus one event of ``event_type`` (the replays do not check the chain)."""
    last = rows[-1]
    seq = last[0] + 1
    return [*rows, (seq, f"ev-x{seq}", f"2026-06-01T00:00:0{seq % 10}Z", event_type,
                    "S-X", None, "Liam", payload.get("plan_id"), payload.get("item_id"),
                    f"cmd-x{seq}", json.dumps(payload), last[12], "f" * 64)]


# --- the rule table ----------------------------------------------------------------------


def test_every_event_type_has_exactly_one_rule() -> None:
    assert len(set(EVENT_TYPES)) == len(EVENT_TYPES)
    assert sorted(EVENT_RULES) == sorted(EVENT_TYPES)
    for event_type in EVENT_TYPES:
        assert isinstance(EVENT_RULES[event_type], Insert | Update | Record), event_type


def test_each_insert_rule_puts_each_value_in_its_column() -> None:
    """Checked by column name against what the ledger wrote, not against the rule."""
    for row in small_rows():
        rule = EVENT_RULES[row[3]]
        if not isinstance(rule, Insert):
            continue
        payload = json.loads(row[10])
        change = payload["change"]
        values = rule.values(payload, change, row[2])
        columns = STATE_TABLES[rule.table].columns
        assert len(values) == len(columns), row[3]
        for column, value in zip(columns, values, strict=True):
            if column == "version":
                want = payload["new_version"]
            elif column in ("created_ts", "updated_ts"):
                want = row[2]
            elif column in change:
                want = change[column]
            else:
                want = payload[column]
            assert value == want, (row[3], column)


def test_the_fast_path_applies_the_change_fields_the_commands_have() -> None:
    """What an update event's change can hold is its command's change model."""
    expected: dict[str, type[BaseModel]] = {
        EventType.PLAN_UPDATED: PlanChange, EventType.PLAN_ITEM_UPDATED: ItemChange,
        EventType.PLAN_ITEM_STATE_CHANGED: StateChangeBody}
    updates = {t: r for t, r in EVENT_RULES.items() if isinstance(r, Update)}
    assert set(updates) == set(expected)
    for event_type, rule in updates.items():
        assert rule.fields == set(expected[event_type].model_fields), event_type


def test_a_good_log_replays_fast_without_a_hand_over() -> None:
    rows = small_rows()
    replay = by_fast_replay(rows)
    assert not replay.handed_over and replay.error is None
    assert replay.state() == by_projection(rows)


def test_a_new_event_type_is_one_entry_for_both_replays(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = small_rows()
    rows = appended(rows, "PLAN_RETITLED", {"plan_id": "P-1", "new_version": 9,
                                            "change": {"title": "Retitled"}})
    rows = appended(rows, "PLAN_ITEM_COPIED", {"plan_id": "P-1", "item_id": "I-9",
                                               "new_version": 1, "change": {"from": "I-1"}})
    # without the entries: the projection refuses the first, the fast path hands it over
    with pytest.raises(ProjectionError, match="unknown event type 'PLAN_RETITLED'"):
        by_projection(rows)
    replay = by_fast_replay(rows)
    assert replay.handed_over and replay.error is not None
    assert "unknown event type 'PLAN_RETITLED'" in replay.error[1]

    monkeypatch.setitem(EVENT_RULES, "PLAN_RETITLED",
                        Update("plans", "plan_id", frozenset({"title"})))
    monkeypatch.setitem(EVENT_RULES, "PLAN_ITEM_COPIED", Insert(
        "items", lambda p, c, ts: [p["item_id"], p["plan_id"], "NOTE", f"copy of {c['from']}",
                                   "TODO", 0, None, None, p["new_version"], ts, ts]))
    state = by_projection(rows)
    assert state.plans["P-1"].title == "Retitled" and state.plans["P-1"].version == 9
    assert state.plans["P-1"].updated_ts == rows[-2][2]
    assert state.items["I-9"] == Item("I-9", "P-1", "NOTE", "copy of I-1", "TODO", 0, None,
                                      None, 1, rows[-1][2], rows[-1][2])
    replay = by_fast_replay(rows)
    assert not replay.handed_over and replay.error is None
    assert replay.state() == state
    assert [{k: tuple(v) for k, v in t.items()} for t in replay.tables()] == list(
        state_tables(state))


def test_a_new_rule_is_refused_by_both_replays_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """An insert whose reference names no row: the store refuses it in the projection,
    and the fast path hands it over, to the same error."""
    monkeypatch.setitem(EVENT_RULES, "PLAN_ITEM_COPIED", Insert(
        "items", lambda p, c, ts: [p["item_id"], p["plan_id"], "NOTE", "copy", "TODO", 0,
                                   None, None, 1, ts, ts]))
    rows = appended(small_rows(), "PLAN_ITEM_COPIED", {"plan_id": "P-nowhere",
                                                       "item_id": "I-9"})
    with pytest.raises(StorageError, match="FOREIGN KEY"):
        by_projection(rows)
    replay = by_fast_replay(rows)
    assert replay.handed_over
    assert replay.error is not None and "FOREIGN KEY" in replay.error[1]


@pytest.mark.parametrize("rule", [
    Update("items", "item_id", frozenset({"version"})),
    Update("items", "item_id", frozenset({"item_id"})),
    Update("plans", "plan_id", frozenset({"created_ts"})),
    Update("plans", "plan_id", frozenset({"colour"})),
    Update("links", "link_id", frozenset({"link_type"})),
])
def test_an_update_rule_cannot_change_what_it_must_not(rule: Update) -> None:
    with pytest.raises(ValueError, match="cannot change"):
        fast_steps({"X": rule}, {"plans": {}, "items": {}, "links": {}})


def test_the_state_tables_have_the_vocabularys_columns() -> None:
    assert {t.row: t.columns for t in STATE_TABLES.values()} == {
        Plan: PLAN_COLUMNS, Item: ITEM_COLUMNS, Link: LINK_COLUMNS}
