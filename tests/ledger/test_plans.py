"""L3 semantics through ledger.plans.Ledger.apply, on every Store backend.

Versions, state transitions, conflicts (version check first), rejections that name the
field and write nothing, command_id idempotency, and one-transaction atomicity.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from ledger.plans import ledger as plans_core
from ledger.plans.ledger import CommandResult, Ledger
from ledger.plans.rules import TRANSITIONS
from ledger.storage.base import Store
from schema.commands import parse_command
from tests.support.helpers import ALLOWED_TRANSITIONS, ITEM_STATES, Cmds, capture

SPEC_PAYLOAD_KEYS = {"plan_id", "item_id", "actor", "action", "expected_version", "new_version",
                     "change"}
#: How to bring a fresh (TODO, version 1) item into a state.
PATHS = {"TODO": [], "IN_PROGRESS": ["IN_PROGRESS"], "BLOCKED": ["BLOCKED"],
         "DONE": ["IN_PROGRESS", "DONE"]}
UNKNOWN_STATES = ("FINISHED", "todo", "Done", "CANCELLED")


def applied(result: CommandResult) -> CommandResult:
    assert result.status == "APPLIED", result.to_dict()
    return result


@pytest.fixture
def world(ledger: Ledger, cmds: Cmds) -> Ledger:
    """P-1 (I-1, I-2, link L-1: I-1 DEPENDS_ON I-2), P-2 (I-3), P-ARCH (I-A1, I-A2), archived.

    Every plan is at version 1 except P-ARCH (2); every item at version 1, TODO.
    """
    for cmd in (
        cmds.create_plan("P-1", "Plan one"),
        cmds.add_item("P-1", "I-1", "First"),
        cmds.add_item("P-1", "I-2", "Second"),
        cmds.add_link("L-1", "I-1", "I-2"),
        cmds.create_plan("P-2", "Plan two", actor="Mary"),
        cmds.add_item("P-2", "I-3", "Third"),
        cmds.create_plan("P-ARCH", "Old plan"),
        cmds.add_item("P-ARCH", "I-A1", "Old one"),
        cmds.add_item("P-ARCH", "I-A2", "Old two"),
        cmds.update_plan("P-ARCH", 1, {"status": "ARCHIVED"}),
    ):
        applied(ledger.apply(cmd))
    return ledger


def last_event(store: Store) -> Any:
    seq, _ = store.head()
    return next(store.iter_events(seq, seq))


def drive(ledger: Ledger, cmds: Cmds, item_id: str, path: list[str]) -> int:
    """Apply the state changes in ``path`` to a fresh item; return its version after."""
    version = 1
    for state in path:
        version = applied(ledger.apply(cmds.state_change(item_id, version, state))).new_version
    return version


def without(cmd: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in cmd.items() if k != key}


# --- creation and versions ------------------------------------------------------------


def test_create_plan(ledger: Ledger, cmds: Cmds) -> None:
    res = applied(ledger.apply(cmds.create_plan("P-1", "Plan one", actor="Codex")))
    assert (res.event_type, res.seq, res.new_version, res.replayed) == (
        "PLAN_CREATED", 1, 1, False)
    plan = ledger.store.get_plan("P-1")
    assert plan is not None
    ev = last_event(ledger.store)
    assert (plan.title, plan.owner_agent, plan.status, plan.version) == (
        "Plan one", "Codex", "ACTIVE", 1)
    assert plan.created_ts == plan.updated_ts == ev.ts
    assert (res.seq, res.hash) == ledger.store.head()
    assert res.events == [ev]


def test_create_plan_with_owner_and_status(ledger: Ledger, cmds: Cmds) -> None:
    applied(ledger.apply(cmds.create_plan("P-1", owner_agent="Mary", status="ARCHIVED")))
    plan = ledger.store.get_plan("P-1")
    assert plan is not None
    assert (plan.owner_agent, plan.status) == ("Mary", "ARCHIVED")


def test_add_item_defaults_and_fields(ledger: Ledger, cmds: Cmds) -> None:
    applied(ledger.apply(cmds.create_plan("P-1")))
    applied(ledger.apply(cmds.add_item("P-1", "I-1", "Defaults")))
    applied(ledger.apply(cmds.add_item("P-1", "I-2", "Given", kind="CHECK", priority=-3,
                                       assigned_to="Codex", due_ts="2026-03-01T12:00:00Z")))
    i1, i2 = ledger.store.get_item("I-1"), ledger.store.get_item("I-2")
    assert i1 is not None and i2 is not None
    assert (i1.kind, i1.state, i1.priority, i1.assigned_to, i1.due_ts, i1.version) == (
        "TASK", "TODO", 0, None, None, 1)
    assert (i2.kind, i2.priority, i2.assigned_to, i2.due_ts) == (
        "CHECK", -3, "Codex", "2026-03-01T12:00:00Z")


def test_add_item_and_add_link_leave_the_plan_version(world: Ledger, cmds: Cmds) -> None:
    store = world.store
    before = store.get_plan("P-1")
    applied(world.apply(cmds.add_item("P-1", "I-4", "Fourth")))
    applied(world.apply(cmds.add_link("L-2", "I-4", "I-1", link_type="RELATED")))
    assert store.get_plan("P-1") == before
    assert before is not None and before.version == 1
    assert [i.version for i in store.list_items("P-1")] == [1, 1, 1]


def test_update_plan_bumps_only_the_plan_version(world: Ledger, cmds: Cmds) -> None:
    store = world.store
    items_before = store.list_items()
    res = applied(world.apply(cmds.update_plan("P-1", 1, {"title": "Renamed",
                                                          "owner_agent": "Mary"})))
    assert (res.event_type, res.new_version) == ("PLAN_UPDATED", 2)
    plan = store.get_plan("P-1")
    assert plan is not None
    assert (plan.title, plan.owner_agent, plan.version) == ("Renamed", "Mary", 2)
    assert plan.updated_ts == last_event(store).ts
    assert store.list_items() == items_before
    payload = json.loads(last_event(store).payload)
    assert (payload["expected_version"], payload["new_version"]) == (1, 2)
    assert payload["change"] == {"title": "Renamed", "owner_agent": "Mary"}
    assert payload["previous"] == {"title": "Plan one", "owner_agent": "Liam"}
    res = applied(world.apply(cmds.update_plan("P-1", 2, {"status": "ARCHIVED"})))
    assert res.new_version == 3


def test_update_item_bumps_only_the_item_version(world: Ledger, cmds: Cmds) -> None:
    store = world.store
    plan_before = store.get_plan("P-1")
    other_before = store.get_item("I-2")
    res = applied(world.apply(cmds.update_item(
        "I-1", 1, {"title": "First, renamed", "priority": 7, "kind": "NOTE",
                   "assigned_to": "Codex", "due_ts": "2026-05-01T00:00:00+00:00"})))
    assert (res.event_type, res.new_version) == ("PLAN_ITEM_UPDATED", 2)
    item = store.get_item("I-1")
    assert item is not None
    assert (item.title, item.priority, item.kind, item.assigned_to, item.due_ts, item.state,
            item.version) == ("First, renamed", 7, "NOTE", "Codex",
                              "2026-05-01T00:00:00+00:00", "TODO", 2)
    assert item.updated_ts == last_event(store).ts
    assert item.created_ts == next(store.iter_events(filters={"item_id": "I-1"})).ts
    assert store.get_plan("P-1") == plan_before
    assert store.get_item("I-2") == other_before
    applied(world.apply(cmds.update_item("I-1", 2, {"assigned_to": None, "due_ts": None})))
    item = store.get_item("I-1")
    assert item is not None
    assert (item.assigned_to, item.due_ts, item.version) == (None, None, 3)


def test_state_changes_bump_the_item_version_each_time(world: Ledger, cmds: Cmds) -> None:
    version = drive(world, cmds, "I-1", ["IN_PROGRESS", "BLOCKED", "TODO", "IN_PROGRESS",
                                         "DONE", "IN_PROGRESS"])
    assert version == 7
    item = world.store.get_item("I-1")
    assert item is not None
    assert (item.state, item.version) == ("IN_PROGRESS", 7)
    plan = world.store.get_plan("P-1")
    assert plan is not None and plan.version == 1


def test_archived_plan_can_be_unarchived_and_used_again(world: Ledger, cmds: Cmds) -> None:
    applied(world.apply(cmds.update_plan("P-ARCH", 2, {"status": "ACTIVE"})))
    applied(world.apply(cmds.add_item("P-ARCH", "I-A3", "New again")))
    applied(world.apply(cmds.state_change("I-A1", 1, "IN_PROGRESS")))


# --- events ---------------------------------------------------------------------------


def test_every_mutation_writes_one_event_of_the_spec_shape(ledger: Ledger, cmds: Cmds) -> None:
    steps = [
        (cmds.create_plan("P-1", session_id="S-X"), "PLAN_CREATED", "P-1", None),
        (cmds.add_item("P-1", "I-1"), "PLAN_ITEM_ADDED", "P-1", "I-1"),
        (cmds.add_item("P-1", "I-2"), "PLAN_ITEM_ADDED", "P-1", "I-2"),
        (cmds.update_item("I-1", 1, {"priority": 2}), "PLAN_ITEM_UPDATED", "P-1", "I-1"),
        (cmds.state_change("I-1", 2, "IN_PROGRESS", actor="Codex"),
         "PLAN_ITEM_STATE_CHANGED", "P-1", "I-1"),
        (cmds.add_link("L-1", "I-2", "I-1"), "PLAN_LINK_ADDED", "P-1", "I-2"),
        (cmds.update_plan("P-1", 1, {"title": "New"}), "PLAN_UPDATED", "P-1", None),
        (cmds.update_item("I-2", 9, {"priority": 1}, actor="Mary"),
         "PLAN_CONFLICT_DETECTED", "P-1", "I-2"),
    ]
    for seq, (cmd, event_type, plan_id, item_id) in enumerate(steps, start=1):
        res = ledger.apply(cmd)
        assert res.seq == seq
        ev = last_event(ledger.store)
        assert res.events == [ev]
        assert (ev.seq, ev.event_type, ev.plan_id, ev.item_id) == (
            seq, event_type, plan_id, item_id)
        assert ev.task_id == (item_id or plan_id)
        assert (ev.actor, ev.session_id, ev.command_id) == (
            cmd["actor"], cmd["session_id"], cmd["command_id"])
        ts = datetime.fromisoformat(ev.ts)
        assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0
        assert ev.ts.endswith("Z")
        assert abs((datetime.now(UTC) - ts).total_seconds()) < 600
        payload = json.loads(ev.payload)
        assert set(payload) >= SPEC_PAYLOAD_KEYS
        assert (payload["plan_id"], payload["item_id"], payload["actor"], payload["action"]) == (
            plan_id, item_id, cmd["actor"], cmd["action"])
        assert payload["new_version"] == res.new_version
        assert payload["expected_version"] == cmd.get("expected_version")
    assert ledger.store.count_by("event_type")["PLAN_ITEM_ADDED"] == 2
    assert len(list(ledger.store.iter_events())) == len(steps)


def test_result_dict_is_json(world: Ledger, cmds: Cmds) -> None:
    for cmd in (cmds.add_item("P-1", "I-9"), cmds.update_item("I-1", 5, {"priority": 1}),
                cmds.add_item("P-NOPE", "I-10"), {"action": "NOPE"}):
        out = world.apply(cmd).to_dict()
        assert json.loads(json.dumps(out)) == out
        assert set(out) == {"command_id", "action", "status", "event_type", "seq", "hash",
                            "new_version", "current_version", "error", "replayed"}


# --- transitions ----------------------------------------------------------------------


def test_the_transition_table_is_the_issue_s() -> None:
    table = {(src, dst) for src, targets in TRANSITIONS.items() for dst in targets}
    assert table == ALLOWED_TRANSITIONS


@pytest.mark.parametrize(("src", "dst"), sorted(ALLOWED_TRANSITIONS))
def test_every_allowed_transition(world: Ledger, cmds: Cmds, src: str, dst: str) -> None:
    version = drive(world, cmds, "I-1", PATHS[src])
    res = applied(world.apply(cmds.state_change("I-1", version, dst)))
    assert (res.event_type, res.new_version) == ("PLAN_ITEM_STATE_CHANGED", version + 1)
    item = world.store.get_item("I-1")
    assert item is not None
    assert (item.state, item.version) == (dst, version + 1)
    assert item.updated_ts == last_event(world.store).ts
    payload = json.loads(last_event(world.store).payload)
    assert payload["change"] == {"state": dst}
    assert payload["previous"] == {"state": src}


DISALLOWED = sorted((src, dst) for src in ITEM_STATES for dst in (*ITEM_STATES, *UNKNOWN_STATES)
                    if (src, dst) not in ALLOWED_TRANSITIONS)


def test_disallowed_list_covers_self_transitions_and_todo_to_done() -> None:
    assert ("TODO", "DONE") in DISALLOWED
    assert all((s, s) in DISALLOWED for s in ITEM_STATES)
    assert len(DISALLOWED) == 4 * 8 - 8


@pytest.mark.parametrize(("src", "dst"), DISALLOWED)
def test_every_disallowed_transition_is_rejected_and_writes_nothing(
        world: Ledger, cmds: Cmds, src: str, dst: str) -> None:
    version = drive(world, cmds, "I-1", PATHS[src])
    before = capture(world.store)
    cmd = cmds.state_change("I-1", version, dst)
    res = world.apply(cmd)
    assert res.status == "REJECTED"
    assert res.error is not None
    assert (res.error["code"], res.error["field"]) == ("INVALID_TRANSITION", "change.state")
    assert res.error["details"] == {"from": src, "to": dst}
    assert (res.seq, res.events) == (None, [])
    assert capture(world.store) == before
    record = world.store.get_command(cmd["command_id"])
    assert record is not None and (record.status, record.seq) == ("REJECTED", None)


# --- conflicts ------------------------------------------------------------------------


STALE: list[tuple[str, Callable[[Cmds], dict[str, Any]], str | None, int]] = [
    # (id, command, item_id, current version); I-1 is at version 2 when these run
    ("update-item-old", lambda c: c.update_item("I-1", 1, {"priority": 5}, actor="Mary"),
     "I-1", 2),
    ("update-item-future", lambda c: c.update_item("I-1", 3, {"title": "x"}), "I-1", 2),
    ("update-item-zero", lambda c: c.update_item("I-1", 0, {"assigned_to": "Mary"}), "I-1", 2),
    ("state-change-old", lambda c: c.state_change("I-1", 1, "BLOCKED"), "I-1", 2),
    ("update-plan-old", lambda c: c.update_plan("P-1", 0, {"title": "x"}), None, 1),
    ("update-plan-future", lambda c: c.update_plan("P-1", 2, {"status": "ARCHIVED"}), None, 1),
]


@pytest.mark.parametrize(("cmd_of", "item_id", "current"), [s[1:] for s in STALE],
                         ids=[s[0] for s in STALE])
def test_stale_expected_version_is_a_recorded_conflict(
        world: Ledger, cmds: Cmds, cmd_of: Callable[[Cmds], dict[str, Any]],
        item_id: str | None, current: int) -> None:
    store = world.store
    applied(world.apply(cmds.state_change("I-1", 1, "IN_PROGRESS")))
    state_before = store.load_state()
    seq_before, _ = store.head()
    cmd = cmd_of(cmds)
    res = world.apply(cmd)
    assert res.status == "CONFLICT"
    assert (res.event_type, res.current_version, res.new_version) == (
        "PLAN_CONFLICT_DETECTED", current, None)
    assert res.error is not None
    assert (res.error["code"], res.error["field"]) == ("VERSION_CONFLICT", "expected_version")
    assert store.load_state() == state_before
    events = list(store.iter_events(seq_before + 1))
    assert len(events) == 1
    ev = events[0]
    assert (ev.seq, ev.hash) == (res.seq, res.hash) == store.head()
    assert (ev.event_type, ev.plan_id, ev.item_id, ev.actor, ev.command_id) == (
        "PLAN_CONFLICT_DETECTED", "P-1", item_id, cmd["actor"], cmd["command_id"])
    payload = json.loads(ev.payload)
    assert payload["expected_version"] == cmd["expected_version"]
    assert payload["current_version"] == current
    assert payload["change"] == cmd["change"]
    assert payload["action"] == cmd["action"]
    assert payload["new_version"] is None
    record = store.get_command(cmd["command_id"])
    assert record is not None and (record.status, record.seq) == ("CONFLICT", ev.seq)


VERSION_FIRST: list[tuple[str, Callable[[Cmds], dict[str, Any]]]] = [
    ("illegal-transition", lambda c: c.state_change("I-1", 4, "DONE")),
    ("self-transition", lambda c: c.state_change("I-1", 4, "TODO")),
    ("unknown-state", lambda c: c.state_change("I-1", 4, "FINISHED")),
    ("plan-mismatch", lambda c: c.update_item("I-1", 4, {"title": "x"}, plan_id="P-2")),
    ("plan-mismatch-state", lambda c: c.state_change("I-1", 4, "IN_PROGRESS", plan_id="P-2")),
    ("archived-state", lambda c: c.state_change("I-A1", 4, "IN_PROGRESS")),
    ("archived-update", lambda c: c.update_item("I-A1", 4, {"priority": 1})),
    ("empty-item-change", lambda c: c.update_item("I-1", 4, {})),
    ("empty-plan-change", lambda c: c.update_plan("P-1", 4, {})),
    ("null-plan-title", lambda c: c.update_plan("P-1", 4, {"title": None})),
]


@pytest.mark.parametrize("cmd_of", [v[1] for v in VERSION_FIRST],
                         ids=[v[0] for v in VERSION_FIRST])
def test_the_version_check_comes_first(world: Ledger, cmds: Cmds,
                                       cmd_of: Callable[[Cmds], dict[str, Any]]) -> None:
    state_before = world.store.load_state()
    seq_before, _ = world.store.head()
    res = world.apply(cmd_of(cmds))
    assert res.status == "CONFLICT", res.to_dict()
    assert res.event_type == "PLAN_CONFLICT_DETECTED"
    assert world.store.head()[0] == seq_before + 1
    assert world.store.load_state() == state_before


def test_conflict_on_an_unknown_item_is_not_possible(world: Ledger, cmds: Cmds) -> None:
    """The target must exist before its version can be compared."""
    res = world.apply(cmds.state_change("I-NOPE", 99, "DONE"))
    assert res.status == "REJECTED"
    assert res.error is not None and res.error["code"] == "UNKNOWN_ITEM"


# --- rejections -----------------------------------------------------------------------


Builder = Callable[[Cmds], dict[str, Any]]
#: (code, field, remembered under its command_id?, command)
REJECTIONS: list[tuple[str, str, bool, Builder]] = [
    ("UNKNOWN_PLAN", "plan_id", True, lambda c: c.add_item("P-NOPE", "I-9")),
    ("UNKNOWN_PLAN", "plan_id", True, lambda c: c.update_plan("P-NOPE", 1, {"title": "x"})),
    ("UNKNOWN_ITEM", "item_id", True, lambda c: c.state_change("I-NOPE", 1, "IN_PROGRESS")),
    ("UNKNOWN_ITEM", "item_id", True, lambda c: c.update_item("I-NOPE", 1, {"title": "x"})),
    ("UNKNOWN_ITEM", "from_item_id", True, lambda c: c.add_link("L-9", "I-NOPE", "I-1")),
    ("UNKNOWN_ITEM", "to_item_id", True, lambda c: c.add_link("L-9", "I-1", "I-NOPE")),
    ("DUPLICATE_ID", "plan_id", True, lambda c: c.create_plan("P-1")),
    ("DUPLICATE_ID", "item_id", True, lambda c: c.add_item("P-1", "I-1")),
    ("DUPLICATE_ID", "item_id", True, lambda c: c.add_item("P-2", "I-1")),
    ("DUPLICATE_ID", "link_id", True, lambda c: c.add_link("L-1", "I-2", "I-1")),
    ("MISSING_FIELD", "title", False, lambda c: without(c.add_item("P-1", "I-9"), "title")),
    ("MISSING_FIELD", "expected_version", False,
     lambda c: without(c.state_change("I-1", 1, "IN_PROGRESS"), "expected_version")),
    ("MISSING_FIELD", "change", False,
     lambda c: without(c.update_item("I-1", 1, {"title": "x"}), "change")),
    ("MISSING_FIELD", "change.state", False, lambda c: c.state_change("I-1", 1, "x", change={})),
    ("MISSING_FIELD", "action", False, lambda c: without(c.create_plan("P-9"), "action")),
    ("MISSING_FIELD", "command_id", False,
     lambda c: without(c.create_plan("P-9"), "command_id")),
    ("MISSING_FIELD", "actor", False, lambda c: without(c.create_plan("P-9"), "actor")),
    ("MISSING_FIELD", "session_id", False,
     lambda c: without(c.create_plan("P-9"), "session_id")),
    ("MISSING_FIELD", "plan_id", False, lambda c: without(c.create_plan("P-9"), "plan_id")),
    ("MISSING_FIELD", "link_id", False,
     lambda c: without(c.add_link("L-9", "I-1", "I-2"), "link_id")),
    ("INVALID_TYPE", "expected_version", False,
     lambda c: c.state_change("I-1", "1", "IN_PROGRESS")),
    ("INVALID_TYPE", "expected_version", False,
     lambda c: c.state_change("I-1", True, "IN_PROGRESS")),
    ("INVALID_TYPE", "expected_version", False,
     lambda c: c.state_change("I-1", 1.0, "IN_PROGRESS")),
    ("INVALID_TYPE", "expected_version", False,
     lambda c: c.update_plan("P-1", "3", {"title": "x"})),
    ("INVALID_TYPE", "priority", False, lambda c: c.add_item("P-1", "I-9", priority="3")),
    ("INVALID_TYPE", "priority", False, lambda c: c.add_item("P-1", "I-9", priority=True)),
    ("INVALID_TYPE", "change.priority", False,
     lambda c: c.update_item("I-1", 1, {"priority": "2"})),
    ("INVALID_TYPE", "title", False, lambda c: c.add_item("P-1", "I-9", title=5)),
    ("INVALID_TYPE", "change", False, lambda c: c.update_item("I-1", 1, ["title"])),
    ("INVALID_TYPE", "plan_id", False, lambda c: c.create_plan(7)),
    ("INVALID_TYPE", "change.state", False, lambda c: c.state_change("I-1", 1, 3)),
    ("UNKNOWN_FIELD", "colour", False, lambda c: c.add_item("P-1", "I-9", colour="red")),
    ("UNKNOWN_FIELD", "change.state", False,
     lambda c: c.update_item("I-1", 1, {"state": "IN_PROGRESS"})),
    ("UNKNOWN_FIELD", "change.version", False,
     lambda c: c.update_plan("P-1", 1, {"version": 5})),
    ("UNKNOWN_FIELD", "version", False,
     lambda c: c.state_change("I-1", 1, "IN_PROGRESS", version=1)),
    ("UNKNOWN_ACTION", "action", False, lambda c: c.create_plan("P-9", action="DELETE_PLAN")),
    ("UNKNOWN_ACTION", "action", False, lambda c: c.create_plan("P-9", action="create_plan")),
    ("UNKNOWN_ACTION", "action", False, lambda c: c.create_plan("P-9", action=5)),
    ("PLAN_MISMATCH", "plan_id", True,
     lambda c: c.update_item("I-1", 1, {"title": "x"}, plan_id="P-2")),
    ("PLAN_MISMATCH", "plan_id", True,
     lambda c: c.state_change("I-1", 1, "IN_PROGRESS", plan_id="P-2")),
    ("PLAN_MISMATCH", "plan_id", True, lambda c: c.add_link("L-9", "I-1", "I-2", plan_id="P-2")),
    ("PLAN_ARCHIVED", "plan_id", True, lambda c: c.add_item("P-ARCH", "I-9")),
    ("PLAN_ARCHIVED", "plan_id", True, lambda c: c.state_change("I-A1", 1, "IN_PROGRESS")),
    ("PLAN_ARCHIVED", "plan_id", True, lambda c: c.update_item("I-A1", 1, {"title": "x"})),
    ("PLAN_ARCHIVED", "plan_id", True, lambda c: c.add_link("L-9", "I-A1", "I-A2")),
    ("INVALID_LINK", "to_item_id", True, lambda c: c.add_link("L-9", "I-1", "I-1")),
    ("INVALID_LINK", "to_item_id", True, lambda c: c.add_link("L-9", "I-1", "I-3")),
    ("INVALID_LINK", "link_id", True, lambda c: c.add_link("L-9", "I-1", "I-2")),
    ("EMPTY_CHANGE", "change", True, lambda c: c.update_item("I-1", 1, {})),
    ("EMPTY_CHANGE", "change", True, lambda c: c.update_plan("P-1", 1, {})),
    ("INVALID_VALUE", "change.title", True, lambda c: c.update_plan("P-1", 1, {"title": None})),
    ("INVALID_VALUE", "change.status", True,
     lambda c: c.update_plan("P-1", 1, {"status": None})),
    ("INVALID_VALUE", "change.priority", True,
     lambda c: c.update_item("I-1", 1, {"priority": None})),
    ("INVALID_VALUE", "change.status", False,
     lambda c: c.update_plan("P-1", 1, {"status": "DONE"})),
    ("INVALID_VALUE", "item_id", False, lambda c: c.add_item("P-1", "bad id")),
    ("INVALID_VALUE", "due_ts", False, lambda c: c.add_item("P-1", "I-9", due_ts="soon")),
    ("INVALID_VALUE", "expected_version", False, lambda c: c.state_change("I-1", -1, "DONE")),
    ("INVALID_VALUE", "kind", False, lambda c: c.add_item("P-1", "I-9", kind="EPIC")),
    ("INVALID_VALUE", "title", False, lambda c: c.add_item("P-1", "I-9", title="")),
    ("INVALID_VALUE", "link_type", False,
     lambda c: c.add_link("L-9", "I-1", "I-2", link_type="BLOCKS")),
    # NUL: PostgreSQL text cannot hold it, so no backend takes it
    ("INVALID_VALUE", "title", False, lambda c: c.add_item("P-1", "I-9", title="a\x00b")),
    ("INVALID_VALUE", "change.title", False,
     lambda c: c.update_plan("P-1", 1, {"title": "x\x00"})),
    ("INVALID_VALUE", "change.state", False, lambda c: c.state_change("I-1", 1, "DONE\x00")),
    ("INVALID_VALUE", "due_ts", False,
     lambda c: c.add_item("P-1", "I-9", due_ts="2026-02-01T00:00:00Z\x00")),
    ("INVALID_VALUE", "session_id", False,
     lambda c: c.create_plan("P-9", session_id="S\x00")),
]


@pytest.mark.parametrize(("code", "field", "remembered", "cmd_of"), REJECTIONS,
                         ids=[f"{r[0]}-{r[1]}-{i}" for i, r in enumerate(REJECTIONS)])
def test_rejection_names_the_field_and_writes_nothing(
        world: Ledger, cmds: Cmds, code: str, field: str, remembered: bool,
        cmd_of: Builder) -> None:
    store = world.store
    before = capture(store)
    cmd = cmd_of(cmds)
    res = world.apply(cmd)
    assert res.status == "REJECTED", res.to_dict()
    assert res.error is not None
    assert (res.error["code"], res.error["field"]) == (code, field)
    assert res.error["message"]
    assert (res.seq, res.hash, res.event_type, res.events, res.replayed) == (
        None, None, None, [], False)
    assert capture(store) == before
    cid = cmd.get("command_id")
    if isinstance(cid, str):
        assert res.command_id == cid
        record = store.get_command(cid)
        if remembered:
            assert record is not None
            assert (record.status, record.seq) == ("REJECTED", None)
            assert json.loads(record.outcome)["error"] == res.error
        else:
            assert record is None


def test_update_item_refuses_a_state_change(world: Ledger, cmds: Cmds) -> None:
    res = world.apply(cmds.update_item("I-1", 1, {"state": "IN_PROGRESS", "title": "x"}))
    assert res.status == "REJECTED"
    assert res.error is not None
    assert res.error["field"] == "change.state"
    assert "STATE_CHANGE" in res.error["message"]
    item = world.store.get_item("I-1")
    assert item is not None and (item.state, item.title, item.version) == ("TODO", "First", 1)


def test_every_problem_is_listed_when_there_are_several(world: Ledger, cmds: Cmds) -> None:
    res = world.apply(without(cmds.add_item("P-1", "I-9", priority="x", colour=1), "title"))
    assert res.error is not None
    fields = {p["field"] for p in res.error["details"]["problems"]}
    assert fields == {"title", "priority", "colour"}


def test_a_non_mapping_command_is_rejected(world: Ledger) -> None:
    res = world.apply(["CREATE_PLAN"])  # type: ignore[arg-type]
    assert res.status == "REJECTED"
    assert res.error is not None and res.error["code"] == "INVALID_TYPE"


# --- command_id idempotency -----------------------------------------------------------


def assert_replay(world: Ledger, cmd: Any, first: CommandResult) -> None:
    before = capture(world.store)
    again = world.apply(cmd)
    assert again.replayed is True
    assert again.events == []
    assert {**again.to_dict(), "replayed": False} == first.to_dict()
    assert capture(world.store) == before


RESENDS: list[tuple[str, Builder]] = [
    ("create-plan", lambda c: c.create_plan("P-9")),
    ("add-item", lambda c: c.add_item("P-1", "I-9", priority=3)),
    ("update-item", lambda c: c.update_item("I-1", 1, {"title": "Again"})),
    ("state-change", lambda c: c.state_change("I-1", 1, "IN_PROGRESS")),
    ("add-link", lambda c: c.add_link("L-9", "I-2", "I-1")),
    ("update-plan", lambda c: c.update_plan("P-1", 1, {"title": "Again"})),
    ("conflict", lambda c: c.update_item("I-1", 5, {"title": "Stale"})),
    ("rejected", lambda c: c.state_change("I-1", 1, "DONE")),
    ("unknown-plan", lambda c: c.add_item("P-NOPE", "I-9")),
]


@pytest.mark.parametrize("cmd_of", [r[1] for r in RESENDS], ids=[r[0] for r in RESENDS])
def test_resending_a_command_id_replays_the_outcome(world: Ledger, cmds: Cmds,
                                                    cmd_of: Builder) -> None:
    cmd = cmd_of(cmds)
    first = world.apply(cmd)
    assert first.replayed is False
    assert_replay(world, cmd, first)
    assert_replay(world, dict(cmd), first)
    assert_replay(world, parse_command(cmd), first)


def test_replay_returns_the_original_outcome_after_the_state_moved_on(
        world: Ledger, cmds: Cmds) -> None:
    cmd = cmds.state_change("I-1", 1, "IN_PROGRESS")
    first = applied(world.apply(cmd))
    applied(world.apply(cmds.state_change("I-1", 2, "DONE")))
    assert_replay(world, cmd, first)
    item = world.store.get_item("I-1")
    assert item is not None and (item.state, item.version) == ("DONE", 3)


def test_a_remembered_rejection_stays_rejected(world: Ledger, cmds: Cmds) -> None:
    cmd = cmds.add_item("P-NEW", "I-9")
    first = world.apply(cmd)
    assert first.status == "REJECTED"
    applied(world.apply(cmds.create_plan("P-NEW")))
    assert_replay(world, cmd, first)
    assert world.store.get_item("I-9") is None


def test_defaults_spelled_out_are_the_same_command(world: Ledger, cmds: Cmds) -> None:
    cmd = cmds.add_item("P-1", "I-9")
    first = applied(world.apply(cmd))
    assert_replay(world, {**cmd, "kind": "TASK", "state": "TODO", "priority": 0,
                          "assigned_to": None}, first)


def test_same_command_id_with_other_content_is_refused(world: Ledger, cmds: Cmds) -> None:
    cmd = cmds.update_item("I-1", 1, {"title": "Mine"})
    first = applied(world.apply(cmd))
    for other in ({**cmd, "change": {"title": "Yours"}},
                  {**cmd, "actor": "Mary"},
                  {**cmd, "session_id": "S-OTHER"},
                  {**cmd, "plan_id": "P-1"},
                  {**cmd, "change": {"title": "Mine", "assigned_to": None}},
                  {**cmds.create_plan("P-9"), "command_id": cmd["command_id"]}):
        before = capture(world.store)
        res = world.apply(other)
        assert res.status == "REJECTED"
        assert res.error is not None
        assert (res.error["code"], res.error["field"]) == ("COMMAND_ID_REUSED", "command_id")
        assert res.replayed is False
        assert capture(world.store) == before
    assert_replay(world, cmd, first)
    assert world.store.get_plan("P-9") is None


def test_a_malformed_command_does_not_use_up_its_command_id(world: Ledger, cmds: Cmds) -> None:
    cmd = cmds.add_item("P-1", "I-9", priority="high")
    assert world.apply(cmd).status == "REJECTED"
    assert world.store.get_command(cmd["command_id"]) is None
    res = applied(world.apply({**cmd, "priority": 4}))
    assert res.replayed is False


# --- atomicity ------------------------------------------------------------------------


def test_a_failure_mid_command_commits_nothing(world: Ledger, cmds: Cmds,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The event is appended before the state rows are written: if writing them fails,
    the event and the command record must go too."""
    real_project = plans_core.project

    def failing(*args: Any) -> None:
        raise RuntimeError("disk on fire")

    before = capture(world.store)
    cmd = cmds.state_change("I-1", 1, "IN_PROGRESS")
    monkeypatch.setattr(plans_core, "project", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        world.apply(cmd)
    assert capture(world.store) == before
    assert world.store.get_command(cmd["command_id"]) is None
    monkeypatch.setattr(plans_core, "project", real_project)
    res = applied(world.apply(cmd))
    assert res.seq == before["head"][0] + 1


def test_a_failure_writing_the_command_record_commits_nothing(
        world: Ledger, cmds: Cmds, monkeypatch: pytest.MonkeyPatch) -> None:
    before = capture(world.store)
    cmd = cmds.update_plan("P-1", 1, {"title": "Never"})
    real = plans_core.CommandRecord

    def broken(*args: Any) -> Any:
        raise OSError("record lost")

    monkeypatch.setattr(plans_core, "CommandRecord", broken)
    with pytest.raises(OSError, match="record lost"):
        world.apply(cmd)
    monkeypatch.setattr(plans_core, "CommandRecord", real)
    assert capture(world.store) == before
    plan = world.store.get_plan("P-1")
    assert plan is not None and (plan.title, plan.version) == ("Plan one", 1)
