"""Group commit internals: the row cache, writes deferred to the end of a batch, and
time-ordered event ids. (tests/test_properties.py checks on random command sequences
that batches decide exactly as one-by-one application does.)"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from ledger.log.event_ids import EventIds
from ledger.plans import ledger as plans_core
from ledger.plans.ledger import CommandResult, Ledger
from ledger.storage.base import Store
from ledger.storage.sqlite import SqliteStore
from schema.commands import parse_command
from tests.support.helpers import Cmds, capture


def statuses(results: list[CommandResult]) -> list[str]:
    return [r.status for r in results]


def test_a_second_writer_invalidates_the_row_cache(sqlite_path: Path, cmds: Cmds) -> None:
    """Another Ledger on the same file moves the head; the first must not decide
    against the versions it cached before that."""
    with SqliteStore(sqlite_path) as a_store, SqliteStore(sqlite_path) as b_store:
        a, b = Ledger(a_store), Ledger(b_store)
        a.apply_many([cmds.create_plan("P-1"), cmds.add_item("P-1", "I-1")])
        assert a.apply(cmds.update_item("I-1", 1, {"priority": 1})).new_version == 2
        assert b.apply(cmds.update_item("I-1", 2, {"priority": 2})).new_version == 3
        stale = a.apply(cmds.update_item("I-1", 2, {"priority": 3}))
        assert (stale.status, stale.current_version) == ("CONFLICT", 3)
        assert a.apply(cmds.update_item("I-1", 3, {"priority": 4})).new_version == 4
        item = a_store.get_item("I-1")
        assert item is not None and (item.priority, item.version) == (4, 4)


def test_a_failed_batch_leaves_no_trace_in_the_cache(
        store: Store, cmds: Cmds, monkeypatch: pytest.MonkeyPatch) -> None:
    led = Ledger(store)
    led.apply_many([cmds.create_plan("P-1"), cmds.add_item("P-1", "I-1")])
    assert led.apply(cmds.update_item("I-1", 1, {"title": "cached"})).new_version == 2
    before = capture(store)

    def broken(self: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(plans_core._Batch, "flush", broken)
    with pytest.raises(OSError, match="disk on fire"):
        led.apply_many([cmds.update_item("I-1", 2, {"title": "never"}),
                        cmds.add_item("P-1", "I-2")])
    monkeypatch.undo()
    assert capture(store) == before
    # the versions the failed batch computed (3, and a new I-2) were never committed
    again = led.apply_many([cmds.update_item("I-1", 2, {"title": "after"}),
                            cmds.add_item("P-1", "I-2")])
    assert statuses(again) == ["APPLIED", "APPLIED"]
    assert again[0].new_version == 3
    item = store.get_item("I-1")
    assert item is not None and (item.title, item.version) == ("after", 3)


def test_one_batch_adds_changes_and_links_an_item(store: Store, cmds: Cmds) -> None:
    """Rows created and changed inside one batch are written once, in their final
    version; later commands of the batch see the earlier ones' writes."""
    led = Ledger(store)
    results = led.apply_many([
        cmds.create_plan("P-1"),
        cmds.add_item("P-1", "I-1"),
        cmds.add_item("P-1", "I-2"),
        cmds.update_item("I-1", 1, {"priority": 5}),
        cmds.state_change("I-1", 2, "IN_PROGRESS"),
        cmds.state_change("I-1", 2, "DONE"),  # stale inside the batch: a conflict
        cmds.add_link("L-1", "I-1", "I-2"),
        cmds.add_link("L-2", "I-1", "I-2"),  # the same link again: rejected
        cmds.update_plan("P-1", 1, {"title": "renamed"}),
    ])
    assert statuses(results) == ["APPLIED"] * 5 + ["CONFLICT", "APPLIED", "REJECTED",
                                                   "APPLIED"]
    assert [r.seq for r in results] == [1, 2, 3, 4, 5, 6, 7, None, 8]
    item = store.get_item("I-1")
    assert item is not None
    assert (item.priority, item.state, item.version) == (5, "IN_PROGRESS", 3)
    plan = store.get_plan("P-1")
    assert plan is not None and (plan.title, plan.version) == ("renamed", 2)
    assert [link.link_id for link in store.list_links("P-1")] == ["L-1"]
    assert store.head()[0] == 8


def test_a_command_id_sent_twice_in_one_batch_is_applied_once(store: Store,
                                                             cmds: Cmds) -> None:
    led = Ledger(store)
    led.apply_many([cmds.create_plan("P-1"), cmds.add_item("P-1", "I-1")])
    once = cmds.update_item("I-1", 1, {"priority": 1})
    other = {**once, "change": {"priority": 2}}
    first, again, reused = led.apply_many([once, once, other])
    assert (first.status, first.replayed, again.replayed) == ("APPLIED", False, True)
    assert again.to_dict() == {**first.to_dict(), "replayed": True}
    assert reused.error is not None and reused.error["code"] == "COMMAND_ID_REUSED"
    assert store.head()[0] == 3


def test_a_small_cache_bound_changes_no_decision(store: Store, cmds: Cmds,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plans_core._RowCache, "MAX_ROWS", 2)
    led = Ledger(store)
    led.apply_many([cmds.create_plan("P-1")] + [cmds.add_item("P-1", f"I-{n}")
                                                for n in range(6)])
    for version in (1, 2):
        results = led.apply_many([cmds.update_item(f"I-{n}", version, {"priority": n})
                                  for n in range(6)])
        assert statuses(results) == ["APPLIED"] * 6
    assert [i.version for i in store.list_items("P-1")] == [3] * 6


UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_event_ids_are_uuid7_and_increase_even_when_the_clock_steps_back() -> None:
    now = [1_800_000_000_000_000_000]
    ids = EventIds(clock_ns=lambda: now[0])
    seen = []
    for step in (0, 0, 5_000_000, -3_600_000_000_000, 0, 1_000_000):
        now[0] += step
        seen.append(ids())
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    for text in seen:
        assert UUID7.match(text), text
        assert uuid.UUID(text).version == 7
    # the first 48 bits are the clock's milliseconds
    assert int(seen[0].replace("-", "")[:12], 16) == 1_800_000_000_000


def test_the_ledger_writes_ordered_event_ids(sqlite_store: SqliteStore, cmds: Cmds) -> None:
    led = Ledger(sqlite_store)
    led.apply_many([cmds.create_plan("P-1")] + [cmds.add_item("P-1", f"I-{n}")
                                                for n in range(50)])
    ids = [e.event_id for e in sqlite_store.iter_events()]
    assert len(ids) == 51 and ids == sorted(ids) and all(UUID7.match(i) for i in ids)


def pydantic_fingerprint_dict(command: Any) -> dict[str, Any]:
    out = command.model_dump(mode="json", exclude={"command_id"})
    if hasattr(command, "change"):
        out["change"] = command.change.model_dump(mode="json", exclude_unset=True)
    return out


def test_the_fingerprint_content_is_pydantic_s_json_dump(cmds: Cmds) -> None:
    """fingerprint_dict reads the fields directly; it must equal the JSON dump, or a
    command re-sent after an upgrade would be refused as COMMAND_ID_REUSED."""
    samples = [
        cmds.create_plan("P-1"), cmds.create_plan("P-2", owner_agent="Mary", status="ARCHIVED"),
        cmds.update_plan("P-1", 1, {"title": "t", "status": "ACTIVE"}),
        cmds.update_plan("P-1", 2, {"owner_agent": None}),
        cmds.add_item("P-1", "I-1"),
        cmds.add_item("P-1", "I-2", kind="CHECK", state="BLOCKED", priority=-3,
                      assigned_to="Codex", due_ts="2026-12-01T10:00:00Z"),
        cmds.update_item("I-1", 4, {"priority": 2, "assigned_to": None}),
        cmds.update_item("I-1", 4, {"title": "héllo ✓"}, plan_id="P-1"),
        cmds.state_change("I-1", 5, "DONE"), cmds.state_change("I-1", 5, "NOPE"),
        cmds.add_link("L-1", "I-1", "I-2"), cmds.add_link("L-2", "I-1", "I-2",
                                                          link_type="RELATED"),
    ]
    for raw in samples:
        command = parse_command(raw)
        assert command.fingerprint_dict() == pydantic_fingerprint_dict(command), raw
