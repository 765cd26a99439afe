"""The vocabulary of plans and of the event log: item states, plan statuses, item kinds,
link types, event types, the columns of an event row (in hash-preimage order) and of the
state tables' rows.

These values cross every boundary: scenario files, wire messages, the database and the
hash preimage (docs/HASH_CHAIN.md). Spec pack sections 2.1 (tables) and 2.2 (L1 event
types); PLAN_UPDATED and PLAN_LINK_ADDED are ours.
"""

from __future__ import annotations

from typing import Final, Literal

ItemState = Literal["TODO", "IN_PROGRESS", "DONE", "BLOCKED"]
ITEM_STATES: Final = ("TODO", "IN_PROGRESS", "DONE", "BLOCKED")
PlanStatus = Literal["ACTIVE", "ARCHIVED"]
PLAN_STATUSES: Final = ("ACTIVE", "ARCHIVED")
ItemKind = Literal["TASK", "NOTE", "CHECK"]
LinkType = Literal["DEPENDS_ON", "RELATED"]

class EventType:
    PLAN_CREATED: Final = "PLAN_CREATED"
    PLAN_UPDATED: Final = "PLAN_UPDATED"
    PLAN_ITEM_ADDED: Final = "PLAN_ITEM_ADDED"
    PLAN_ITEM_UPDATED: Final = "PLAN_ITEM_UPDATED"
    PLAN_ITEM_STATE_CHANGED: Final = "PLAN_ITEM_STATE_CHANGED"
    PLAN_LINK_ADDED: Final = "PLAN_LINK_ADDED"
    PLAN_CONFLICT_DETECTED: Final = "PLAN_CONFLICT_DETECTED"


EVENT_TYPES: Final = (
    EventType.PLAN_CREATED,
    EventType.PLAN_UPDATED,
    EventType.PLAN_ITEM_ADDED,
    EventType.PLAN_ITEM_UPDATED,
    EventType.PLAN_ITEM_STATE_CHANGED,
    EventType.PLAN_LINK_ADDED,
    EventType.PLAN_CONFLICT_DETECTED,
)


#: Column order of the events table; the hash preimage covers all but ``hash``.
EVENT_COLUMNS: Final = (
    "seq",
    "event_id",
    "ts",
    "event_type",
    "session_id",
    "task_id",
    "actor",
    "plan_id",
    "item_id",
    "command_id",
    "payload",
    "prev_hash",
    "hash",
)


# The state tables' columns, in table order (schema/plan_schema.sql), which is also the
# field order of the row types (ledger.storage.rows.Plan, Item, Link) and of the lists
# verify's replay keeps. Every other column list is derived from these.
#: Column order of the plans table.
PLAN_COLUMNS: Final = ("plan_id", "title", "owner_agent", "status", "version", "created_ts",
                       "updated_ts")
#: Column order of the plan_items table.
ITEM_COLUMNS: Final = ("item_id", "plan_id", "kind", "title", "state", "priority",
                       "assigned_to", "due_ts", "version", "created_ts", "updated_ts")
#: Column order of the plan_links table.
LINK_COLUMNS: Final = ("link_id", "plan_id", "from_item_id", "to_item_id", "link_type",
                       "created_ts")

#: ``prev_hash`` of the first event (docs/HASH_CHAIN.md).
GENESIS_HASH: Final = "0" * 64
