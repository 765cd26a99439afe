"""Row types of the L0 state (plans, items, links) and of the L1 event log, as stored.

The vocabulary (states, kinds, event types, the event columns) is part of the contract
and lives in :mod:`schema.vocabulary`; the L3 rules over it in :mod:`ledger.plans.rules`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from operator import attrgetter
from typing import Any, Final

from schema.vocabulary import EVENT_COLUMNS, ITEM_COLUMNS


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: str
    title: str
    owner_agent: str
    status: str
    version: int
    created_ts: str
    updated_ts: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_changes(self, **kw: Any) -> Plan:
        return replace(self, **kw)


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    plan_id: str
    kind: str
    title: str
    state: str
    priority: int
    assigned_to: str | None
    due_ts: str | None
    version: int
    created_ts: str
    updated_ts: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_changes(self, **kw: Any) -> Item:
        # not dataclasses.replace: cheaper, and this runs once per item update
        fields: dict[str, Any] = dict(zip(ITEM_COLUMNS, _item_values(self), strict=True))
        fields.update(kw)
        return Item(**fields)


@dataclass(frozen=True, slots=True)
class Link:
    link_id: str
    plan_id: str
    from_item_id: str
    to_item_id: str
    link_type: str
    created_ts: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Event:
    """One L1 event row. ``payload`` is the stored canonical JSON text."""

    seq: int
    event_id: str
    ts: str
    event_type: str
    session_id: str
    task_id: str | None
    actor: str
    plan_id: str | None
    item_id: str | None
    command_id: str | None
    payload: str
    prev_hash: str
    hash: str

    def to_row(self) -> dict[str, Any]:
        # not dataclasses.asdict, which deep-copies
        return dict(zip(EVENT_COLUMNS, _event_values(self), strict=True))

    def to_dict(self) -> dict[str, Any]:
        """The row with ``payload`` parsed, as printed by timelines and sent on the wire."""
        out = self.to_row()
        out["payload"] = json.loads(self.payload)
        return out


_item_values: Final = attrgetter(*ITEM_COLUMNS)
_event_values: Final = attrgetter(*EVENT_COLUMNS)


@dataclass(slots=True)
class State:
    """The whole L0 plan state, used by replay and the in-memory store."""

    plans: dict[str, Plan] = field(default_factory=dict)
    items: dict[str, Item] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)


#: One event row as a tuple, in :data:`schema.vocabulary.EVENT_COLUMNS` order (what
#: ``SELECT seq, ..., hash FROM events`` returns).
EventRow = tuple[Any, ...]


def event_row(ev: Event) -> EventRow:
    """An :class:`Event` as an :data:`EventRow`."""
    row: EventRow = _event_values(ev)
    return row
