"""In-memory backend of :class:`ledger.persistence.Store`.

Used by verify_chain to replay the log into a fresh state, and by the store contract
tests as the second implementation that keeps the interface honest. Not durable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ledger.log.chain import GENESIS_HASH
from ledger.storage.base import EVENT_FILTER_COLUMNS, CommandRecord, Store, Transaction
from ledger.storage.rows import Event, Item, Link, Plan, State
from schema.errors import ErrorCode, StorageError


class MemoryState(Transaction):
    """State + log held in dicts; doubles as the transaction object."""

    def __init__(self) -> None:
        self.state = State()
        self.events: list[Event] = []
        self.commands: dict[str, CommandRecord] = {}

    def get_plan(self, plan_id: str) -> Plan | None:
        return self.state.plans.get(plan_id)

    def get_item(self, item_id: str) -> Item | None:
        return self.state.items.get(item_id)

    def get_link(self, link_id: str) -> Link | None:
        return self.state.links.get(link_id)

    def find_link(self, from_item_id: str, to_item_id: str, link_type: str) -> Link | None:
        for link in self.state.links.values():
            if (link.from_item_id, link.to_item_id, link.link_type) == (
                    from_item_id, to_item_id, link_type):
                return link
        return None

    def _require_absent(self, table: dict[str, Any], key: str) -> None:
        if key in table:
            raise StorageError(ErrorCode.DB_ERROR, f"UNIQUE constraint failed: {key}")

    def _require_present(self, table: dict[str, Any], key: str) -> None:
        if key not in table:
            raise StorageError(ErrorCode.DB_ERROR, f"no row to update: {key}")

    def insert_plan(self, plan: Plan) -> None:
        self._require_absent(self.state.plans, plan.plan_id)
        self.state.plans[plan.plan_id] = plan

    def update_plan(self, plan: Plan) -> None:
        self._require_present(self.state.plans, plan.plan_id)
        self.state.plans[plan.plan_id] = plan

    def insert_item(self, item: Item) -> None:
        self._require_absent(self.state.items, item.item_id)
        if item.plan_id not in self.state.plans:
            raise StorageError(ErrorCode.DB_ERROR, "FOREIGN KEY constraint failed")
        self.state.items[item.item_id] = item

    def update_item(self, item: Item) -> None:
        self._require_present(self.state.items, item.item_id)
        self.state.items[item.item_id] = item

    def insert_link(self, link: Link) -> None:
        self._require_absent(self.state.links, link.link_id)
        if link.from_item_id not in self.state.items or link.to_item_id not in self.state.items:
            raise StorageError(ErrorCode.DB_ERROR, "FOREIGN KEY constraint failed")
        self.state.links[link.link_id] = link

    def head(self) -> tuple[int, str]:
        if not self.events:
            return 0, GENESIS_HASH
        last = self.events[-1]
        return last.seq, last.hash

    def append_event(self, event: Event) -> None:
        seq, head_hash = self.head()
        if event.seq != seq + 1 or event.prev_hash != head_hash:
            raise StorageError(ErrorCode.DB_ERROR, "events must be appended at seq = head + 1"
                               " with prev_hash = head hash")
        self.events.append(event)

    def get_command(self, command_id: str) -> CommandRecord | None:
        return self.commands.get(command_id)

    def put_command(self, record: CommandRecord) -> None:
        self._require_absent(self.commands, record.command_id)
        self.commands[record.command_id] = record


class MemoryStore(Store):
    def __init__(self) -> None:
        self._data = MemoryState()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        # Work on a copy and publish it on commit: reads outside the transaction see the
        # last committed state (as the Store contract says), and an exception discards
        # every change.
        live = self._data
        work = MemoryState()
        work.state = State(dict(live.state.plans), dict(live.state.items),
                           dict(live.state.links))
        work.events = list(live.events)
        work.commands = dict(live.commands)
        yield work
        self._data = work

    def get_plan(self, plan_id: str) -> Plan | None:
        return self._data.get_plan(plan_id)

    def get_item(self, item_id: str) -> Item | None:
        return self._data.get_item(item_id)

    def get_link(self, link_id: str) -> Link | None:
        return self._data.get_link(link_id)

    def find_link(self, from_item_id: str, to_item_id: str, link_type: str) -> Link | None:
        return self._data.find_link(from_item_id, to_item_id, link_type)

    def head(self) -> tuple[int, str]:
        return self._data.head()

    def list_plans(self) -> list[Plan]:
        return sorted(self._data.state.plans.values(), key=lambda p: p.plan_id)

    def list_items(self, plan_id: str | None = None) -> list[Item]:
        items = [i for i in self._data.state.items.values()
                 if plan_id is None or i.plan_id == plan_id]
        return sorted(items, key=lambda i: (i.plan_id, i.item_id) if plan_id is None
                      else ("", i.item_id))

    def list_links(self, plan_id: str | None = None) -> list[Link]:
        links = [lk for lk in self._data.state.links.values()
                 if plan_id is None or lk.plan_id == plan_id]
        return sorted(links, key=lambda lk: lk.link_id)

    def get_command(self, command_id: str) -> CommandRecord | None:
        return self._data.get_command(command_id)

    def iter_events(self, from_seq: int = 1, to_seq: int | None = None, *,
                    limit: int | None = None,
                    filters: dict[str, Any] | None = None) -> Iterator[Event]:
        for column in filters or {}:
            if column not in EVENT_FILTER_COLUMNS:
                raise ValueError(f"cannot filter events by {column!r}")
        n = 0
        for ev in list(self._data.events):
            if ev.seq < from_seq or (to_seq is not None and ev.seq > to_seq):
                continue
            if any(getattr(ev, c) != v for c, v in (filters or {}).items()):
                continue
            if limit is not None and n >= limit:
                return
            n += 1
            yield ev

    def count_by(self, column: str) -> dict[str, int]:
        if column not in EVENT_FILTER_COLUMNS:
            raise ValueError(f"cannot count events by {column!r}")
        counts: dict[str, int] = {}
        for ev in self._data.events:
            key = str(getattr(ev, column))
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def close(self) -> None:
        pass
