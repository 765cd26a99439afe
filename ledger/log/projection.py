"""Event -> state rows. The only code that writes plans, items and links.

The ledger applies each new event through :func:`project`; verify_chain replays the whole
log through the same rules (:data:`ledger.log.event_rules.EVENT_RULES`, mostly through
the fast :class:`ledger.log.replay.Replay`, which hands anything unusual to this
function) into an empty in-memory state and compares, so the tables can never silently
drift from the log.
"""

from __future__ import annotations

from typing import Any

from ledger.log.event_rules import EVENT_RULES, STATE_TABLES, Insert, Record, Update
from ledger.storage.base import StateWriter
from ledger.storage.rows import Event
from schema.errors import CoordinatorError, ErrorCode


class ProjectionError(CoordinatorError):
    """An event that cannot be applied to the state it follows."""


def project(event: Event, payload: dict[str, Any], target: StateWriter) -> None:
    """Apply one event (with its parsed payload) to the state in ``target``, by its
    event type's rule.

    Raises ProjectionError (CHAIN_BROKEN) for an unknown event type or an update of a
    missing row; the store's StorageError for an insert it refuses (a taken key, a
    reference to no row); KeyError, TypeError or ValueError for a payload that lacks
    what the rule needs.
    """
    change: dict[str, Any] = payload.get("change") or {}
    rule = EVENT_RULES.get(event.event_type)
    match rule:
        case Record():
            return
        case Insert():
            table = STATE_TABLES[rule.table]
            table.insert(target, table.row(*rule.values(payload, change, event.ts)))
        case Update():
            table = STATE_TABLES[rule.table]
            if table.update is None:
                raise ProjectionError(ErrorCode.CHAIN_BROKEN,
                                      f"seq {event.seq}: {event.event_type} updates "
                                      f"{rule.table}, whose rows never change")
            row = _need(table.get(target, payload[rule.key]), event, table.noun)
            table.update(target, row.with_changes(**change, version=payload["new_version"],
                                                  updated_ts=event.ts))
        case _:
            raise ProjectionError(ErrorCode.CHAIN_BROKEN,
                                  f"seq {event.seq}: unknown event type {event.event_type!r}")


def _need(row: Any, event: Event, what: str) -> Any:
    if row is None:
        raise ProjectionError(ErrorCode.CHAIN_BROKEN,
                              f"seq {event.seq}: {event.event_type} refers to a missing {what}")
    return row
