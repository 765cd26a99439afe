"""L3 rules: which event a command produces against the current state, or why not.

Pure: :func:`decide` reads through a :class:`ledger.storage.base.StateReader` and writes
nothing. The order of checks (exists -> expected_version -> everything else) is the spec
pack's section 2.1 versioning rule: a stale command is a conflict whatever else is wrong
with it. The legal state transitions are :data:`TRANSITIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ledger.storage.base import StateReader
from ledger.storage.rows import Item, Plan
from schema.commands import (
    AddItem,
    AddLink,
    Command,
    CreatePlan,
    StateChange,
    UpdateItem,
    UpdatePlan,
)
from schema.errors import ErrorCode, RejectedError
from schema.vocabulary import EventType

#: The only legal item state transitions (from -> allowed targets).
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "TODO": frozenset({"IN_PROGRESS", "BLOCKED"}),
    "IN_PROGRESS": frozenset({"DONE", "BLOCKED", "TODO"}),
    "BLOCKED": frozenset({"TODO", "IN_PROGRESS"}),
    "DONE": frozenset({"IN_PROGRESS"}),
}


def transition_allowed(src: str, dst: str) -> bool:
    return dst in TRANSITIONS.get(src, frozenset())




@dataclass(slots=True)
class Decision:
    event_type: str
    payload: dict[str, Any]
    plan_id: str | None
    item_id: str | None
    new_version: int | None
    current_version: int | None = None


# --- decide: pure checks against the state, no writes --------------------------------


def _payload(cmd: Command, plan_id: str | None, item_id: str | None,
             expected: int | None, new: int | None, change: dict[str, Any],
             **extra: Any) -> dict[str, Any]:
    return {"plan_id": plan_id, "item_id": item_id, "actor": cmd.actor, "action": cmd.action,
            "expected_version": expected, "new_version": new, "change": change, **extra}


def _conflict(cmd: Command, plan_id: str | None, item_id: str | None, expected: int,
              current: int, change: dict[str, Any]) -> Decision:
    payload = _payload(cmd, plan_id, item_id, expected, None, change, current_version=current)
    return Decision(EventType.PLAN_CONFLICT_DETECTED, payload, plan_id, item_id, None, current)


def _plan(state: StateReader, plan_id: str, field: str = "plan_id") -> Plan:
    plan = state.get_plan(plan_id)
    if plan is None:
        raise RejectedError(ErrorCode.UNKNOWN_PLAN, f"{field}: no plan {plan_id!r}", field=field)
    return plan


def _item(state: StateReader, item_id: str, field: str = "item_id") -> Item:
    item = state.get_item(item_id)
    if item is None:
        raise RejectedError(ErrorCode.UNKNOWN_ITEM, f"{field}: no item {item_id!r}", field=field)
    return item


def _writable(plan: Plan) -> None:
    if plan.status == "ARCHIVED":
        raise RejectedError(ErrorCode.PLAN_ARCHIVED,
                            f"plan {plan.plan_id!r} is archived; unarchive it with UPDATE_PLAN",
                            field="plan_id")


def _same_plan(cmd_plan_id: str | None, item: Item) -> None:
    if cmd_plan_id is not None and cmd_plan_id != item.plan_id:
        raise RejectedError(ErrorCode.PLAN_MISMATCH,
                            f"plan_id: item {item.item_id!r} belongs to plan {item.plan_id!r}, "
                            f"not {cmd_plan_id!r}", field="plan_id")


def decide(cmd: Command, state: StateReader) -> Decision:
    """The event a command produces against ``state``, or RejectedError.

    Order of checks for a mutation of something existing: it exists; the version matches
    (a stale command is a conflict whatever else is wrong with it); then everything else.
    """
    match cmd:
        case CreatePlan():
            if state.get_plan(cmd.plan_id) is not None:
                raise RejectedError(ErrorCode.DUPLICATE_ID,
                                    f"plan_id: plan {cmd.plan_id!r} already exists",
                                    field="plan_id")
            change: dict[str, Any] = {
                "title": cmd.title, "owner_agent": cmd.owner_agent or cmd.actor,
                "status": cmd.status}
            return Decision(EventType.PLAN_CREATED,
                             _payload(cmd, cmd.plan_id, None, None, 1, change),
                             cmd.plan_id, None, 1)
        case UpdatePlan():
            plan = _plan(state, cmd.plan_id)
            change = cmd.change.model_dump(exclude_unset=True)
            if plan.version != cmd.expected_version:
                return _conflict(cmd, plan.plan_id, None, cmd.expected_version, plan.version,
                                 change)
            if not change:
                raise RejectedError(ErrorCode.EMPTY_CHANGE, "change: nothing to change",
                                    field="change")
            for key, value in change.items():
                if value is None:
                    raise RejectedError(ErrorCode.INVALID_VALUE,
                                        f"change.{key}: cannot be null", field=f"change.{key}")
            previous = {k: getattr(plan, k) for k in change}
            new = plan.version + 1
            return Decision(EventType.PLAN_UPDATED,
                             _payload(cmd, plan.plan_id, None, cmd.expected_version, new,
                                      change, previous=previous),
                             plan.plan_id, None, new)
        case AddItem():
            plan = _plan(state, cmd.plan_id)
            _writable(plan)
            if state.get_item(cmd.item_id) is not None:
                raise RejectedError(ErrorCode.DUPLICATE_ID,
                                    f"item_id: item {cmd.item_id!r} already exists",
                                    field="item_id")
            change = {"kind": cmd.kind, "title": cmd.title, "state": cmd.state,
                      "priority": cmd.priority, "assigned_to": cmd.assigned_to,
                      "due_ts": cmd.due_ts}
            return Decision(EventType.PLAN_ITEM_ADDED,
                             _payload(cmd, plan.plan_id, cmd.item_id, None, 1, change),
                             plan.plan_id, cmd.item_id, 1)
        case UpdateItem():
            item = _item(state, cmd.item_id)
            change = cmd.change.model_dump(exclude_unset=True)
            if item.version != cmd.expected_version:
                return _conflict(cmd, item.plan_id, item.item_id, cmd.expected_version,
                                 item.version, change)
            _same_plan(cmd.plan_id, item)
            _writable(_plan(state, item.plan_id))
            if not change:
                raise RejectedError(ErrorCode.EMPTY_CHANGE, "change: nothing to change",
                                    field="change")
            for key in ("title", "kind", "priority"):
                if key in change and change[key] is None:
                    raise RejectedError(ErrorCode.INVALID_VALUE,
                                        f"change.{key}: cannot be null", field=f"change.{key}")
            previous = {k: getattr(item, k) for k in change}
            new = item.version + 1
            return Decision(EventType.PLAN_ITEM_UPDATED,
                             _payload(cmd, item.plan_id, item.item_id, cmd.expected_version,
                                      new, change, previous=previous),
                             item.plan_id, item.item_id, new)
        case StateChange():
            item = _item(state, cmd.item_id)
            change = {"state": cmd.change.state}
            if item.version != cmd.expected_version:
                return _conflict(cmd, item.plan_id, item.item_id, cmd.expected_version,
                                 item.version, change)
            _same_plan(cmd.plan_id, item)
            _writable(_plan(state, item.plan_id))
            if not transition_allowed(item.state, cmd.change.state):
                raise RejectedError(
                    ErrorCode.INVALID_TRANSITION,
                    f"change.state: {item.state} -> {cmd.change.state} is not allowed "
                    f"for item {item.item_id!r}",
                    field="change.state", details={"from": item.state, "to": cmd.change.state})
            new = item.version + 1
            return Decision(EventType.PLAN_ITEM_STATE_CHANGED,
                             _payload(cmd, item.plan_id, item.item_id, cmd.expected_version,
                                      new, change, previous={"state": item.state}),
                             item.plan_id, item.item_id, new)
        case AddLink():
            src = _item(state, cmd.from_item_id, "from_item_id")
            dst = _item(state, cmd.to_item_id, "to_item_id")
            _same_plan(cmd.plan_id, src)
            _writable(_plan(state, src.plan_id))
            if state.get_link(cmd.link_id) is not None:
                raise RejectedError(ErrorCode.DUPLICATE_ID,
                                    f"link_id: link {cmd.link_id!r} already exists",
                                    field="link_id")
            if src.item_id == dst.item_id:
                raise RejectedError(ErrorCode.INVALID_LINK, "to_item_id: an item cannot link "
                                    "to itself", field="to_item_id")
            if src.plan_id != dst.plan_id:
                raise RejectedError(ErrorCode.INVALID_LINK,
                                    f"to_item_id: {dst.item_id!r} is in plan {dst.plan_id!r},"
                                    f" {src.item_id!r} in {src.plan_id!r}", field="to_item_id")
            existing = state.find_link(src.item_id, dst.item_id, cmd.link_type)
            if existing is not None:
                raise RejectedError(ErrorCode.INVALID_LINK,
                                    f"link_id: {src.item_id} {cmd.link_type} {dst.item_id} "
                                    f"exists already as {existing.link_id!r}", field="link_id")
            change = {"link_id": cmd.link_id, "from_item_id": src.item_id,
                      "to_item_id": dst.item_id, "link_type": cmd.link_type}
            return Decision(EventType.PLAN_LINK_ADDED,
                             _payload(cmd, src.plan_id, src.item_id, None, None, change),
                             src.plan_id, src.item_id, None)
    raise AssertionError(f"unhandled command {cmd!r}")  # pragma: no cover
