"""What each event type does to the state: the one table every replay is driven by.

:data:`EVENT_RULES` gives every event type (:data:`schema.vocabulary.EVENT_TYPES`) one
rule: :class:`Insert` (the event adds a row), :class:`Update` (it changes one row) or
:class:`Record` (it changes no state: the event itself is the record, as for a
conflict). Two interpreters read the table:

- :func:`ledger.log.projection.project`: rows as the dataclasses of
  :mod:`ledger.storage.rows`, written through a StateWriter. The ledger writes the state
  with it, and it defines what a replay of the log must give.
- :class:`ledger.log.replay.Replay`: rows as lists, in dicts, for verify_chain and the
  checkpoints, a few times faster; what it cannot apply it hands to ``project``.

A new event type is one entry here. A new *kind* of rule (a delete, say) needs both
interpreters taught it; tests/ledger/test_event_rules.py checks that they agree.

:data:`STATE_TABLES` says how each state table is reached: its row type, its columns
(:mod:`schema.vocabulary`), the StateWriter methods, and its references (the foreign keys
of schema/plan_schema.sql: a column that must name an existing row of another table).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from ledger.storage.base import StateReader, StateWriter
from ledger.storage.rows import Item, Link, Plan
from schema.vocabulary import ITEM_COLUMNS, LINK_COLUMNS, PLAN_COLUMNS, EventType

TableName = Literal["plans", "items", "links"]
#: (payload, its ``change`` object or ``{}`` when that is absent or null, the event's ts)
#: -> the new row's values, in its table's column order. Raises (KeyError, TypeError...)
#: for an event that lacks what the row needs.
RowValues = Callable[[Mapping[str, Any], Mapping[str, Any], str], list[Any]]


@dataclass(frozen=True, slots=True)
class StateTable:
    """One state table as the replays reach it."""

    name: TableName
    #: how error messages name one row ("plan")
    noun: str
    row: type[Plan | Item | Link]
    #: column order; the first is the primary key
    columns: tuple[str, ...]
    get: Callable[[StateReader, Any], Any]
    insert: Callable[[StateWriter, Any], None]
    #: None: rows of this table are never changed
    update: Callable[[StateWriter, Any], None] | None
    #: (column, table whose primary key it names)
    references: tuple[tuple[str, TableName], ...] = ()


STATE_TABLES: Final[Mapping[TableName, StateTable]] = {
    "plans": StateTable("plans", "plan", Plan, PLAN_COLUMNS,
                        get=lambda s, key: s.get_plan(key),
                        insert=lambda w, row: w.insert_plan(row),
                        update=lambda w, row: w.update_plan(row)),
    "items": StateTable("items", "item", Item, ITEM_COLUMNS,
                        get=lambda s, key: s.get_item(key),
                        insert=lambda w, row: w.insert_item(row),
                        update=lambda w, row: w.update_item(row),
                        references=(("plan_id", "plans"),)),
    "links": StateTable("links", "link", Link, LINK_COLUMNS,
                        get=lambda s, key: s.get_link(key),
                        insert=lambda w, row: w.insert_link(row),
                        update=None,
                        references=(("plan_id", "plans"), ("from_item_id", "items"),
                                    ("to_item_id", "items"))),
}


@dataclass(frozen=True, slots=True)
class Insert:
    """The event adds the row ``values(payload, change, ts)`` to ``table``.

    Refused (the store raises; the fast replay hands the event over) when the row's key
    is taken or a reference names no row.
    """

    table: TableName
    values: RowValues


@dataclass(frozen=True, slots=True)
class Update:
    """The event changes the row of ``table`` whose key is ``payload[key]``: every field
    of ``change``, then ``version`` = the payload's ``new_version`` and ``updated_ts`` =
    the event's ts. A missing row is an error.

    ``fields``: the change fields the ledger writes for this event type (the command's
    change, schema.commands). The fast replay applies only those and hands an event with
    any other to the projection, which applies every field its row type has (a log the
    ledger did not write can still replay; verify then compares the tables).
    """

    table: TableName
    key: str
    fields: frozenset[str]


@dataclass(frozen=True, slots=True)
class Record:
    """The event changes no state."""


EventRule = Insert | Update | Record

#: The rule of every event type. Spec pack section 2.2 (L1 event types); the payloads are
#: the ones ledger.plans.rules.decide writes (docs/PROTOCOL.md).
EVENT_RULES: Final[Mapping[str, EventRule]] = {
    EventType.PLAN_CREATED: Insert("plans", lambda p, c, ts: [
        p["plan_id"], c["title"], c["owner_agent"], c["status"], p["new_version"], ts, ts]),
    EventType.PLAN_UPDATED: Update("plans", "plan_id",
                                   frozenset({"title", "owner_agent", "status"})),
    EventType.PLAN_ITEM_ADDED: Insert("items", lambda p, c, ts: [
        p["item_id"], p["plan_id"], c["kind"], c["title"], c["state"], c["priority"],
        c.get("assigned_to"), c.get("due_ts"), p["new_version"], ts, ts]),
    EventType.PLAN_ITEM_UPDATED: Update("items", "item_id", frozenset(
        {"kind", "title", "priority", "assigned_to", "due_ts"})),
    EventType.PLAN_ITEM_STATE_CHANGED: Update("items", "item_id", frozenset({"state"})),
    EventType.PLAN_LINK_ADDED: Insert("links", lambda p, c, ts: [
        c["link_id"], p["plan_id"], c["from_item_id"], c["to_item_id"], c["link_type"], ts]),
    EventType.PLAN_CONFLICT_DETECTED: Record(),
}
