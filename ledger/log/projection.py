"""Event -> state rows. The only code that writes plans, items and links.

The ledger applies each new event through :func:`project`; verify_chain replays the whole
log through the same function into an empty in-memory state and compares, so the tables
can never silently drift from the log.
"""

from __future__ import annotations

from typing import Any

from ledger.storage.base import StateWriter
from ledger.storage.rows import Event, Item, Link, Plan
from schema.errors import CoordinatorError, ErrorCode
from schema.vocabulary import EventType


class ProjectionError(CoordinatorError):
    """An event that cannot be applied to the state it follows."""


def project(event: Event, payload: dict[str, Any], target: StateWriter) -> None:
    """Apply one event (with its parsed payload) to the state in ``target``."""
    kind = event.event_type
    change: dict[str, Any] = payload.get("change") or {}
    ts = event.ts
    if kind == EventType.PLAN_CONFLICT_DETECTED:
        return
    if kind == EventType.PLAN_CREATED:
        target.insert_plan(Plan(
            plan_id=payload["plan_id"], title=change["title"],
            owner_agent=change["owner_agent"], status=change["status"],
            version=payload["new_version"], created_ts=ts, updated_ts=ts))
    elif kind == EventType.PLAN_UPDATED:
        plan = _need(target.get_plan(payload["plan_id"]), event, "plan")
        target.update_plan(plan.with_changes(**change, version=payload["new_version"],
                                             updated_ts=ts))
    elif kind == EventType.PLAN_ITEM_ADDED:
        target.insert_item(Item(
            item_id=payload["item_id"], plan_id=payload["plan_id"], kind=change["kind"],
            title=change["title"], state=change["state"], priority=change["priority"],
            assigned_to=change.get("assigned_to"), due_ts=change.get("due_ts"),
            version=payload["new_version"], created_ts=ts, updated_ts=ts))
    elif kind in (EventType.PLAN_ITEM_UPDATED, EventType.PLAN_ITEM_STATE_CHANGED):
        item = _need(target.get_item(payload["item_id"]), event, "item")
        target.update_item(item.with_changes(**change, version=payload["new_version"],
                                             updated_ts=ts))
    elif kind == EventType.PLAN_LINK_ADDED:
        target.insert_link(Link(
            link_id=change["link_id"], plan_id=payload["plan_id"],
            from_item_id=change["from_item_id"], to_item_id=change["to_item_id"],
            link_type=change["link_type"], created_ts=ts))
    else:
        raise ProjectionError(ErrorCode.CHAIN_BROKEN,
                              f"seq {event.seq}: unknown event type {kind!r}")


def _need(row: Any, event: Event, what: str) -> Any:
    if row is None:
        raise ProjectionError(ErrorCode.CHAIN_BROKEN,
                              f"seq {event.seq}: {event.event_type} refers to a missing {what}")
    return row
