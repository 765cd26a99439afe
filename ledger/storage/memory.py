"""In-memory backend of :class:`ledger.storage.base.Store`.

Used by the replay (:class:`MemoryState`), and by the store contract tests as the second
implementation that keeps the interface honest. Not durable, and it exists only in the
process that made it: its locator cannot be opened again (DB_UNSUPPORTED).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple
from itertools import islice
from typing import Any, Final

from ledger.storage.base import (
    EVENT_FILTER_COLUMNS,
    Backend,
    CommandRecord,
    DamageReport,
    Durability,
    EventRow,
    Inspection,
    Locator,
    ReadSnapshot,
    Store,
    Transaction,
    WriterLease,
)
from ledger.storage.rows import Event, Item, Link, Plan, State, event_row
from schema.errors import CoordinatorError, ErrorCode, StorageError
from schema.vocabulary import GENESIS_HASH

SCHEME: Final = "memory"
#: Event rows per batch of a read snapshot.
BATCH: Final = 500


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


def _plans(state: State) -> list[Plan]:
    return sorted(state.plans.values(), key=lambda p: p.plan_id)


def _items(state: State, plan_id: str | None = None) -> list[Item]:
    items = [i for i in state.items.values() if plan_id is None or i.plan_id == plan_id]
    return sorted(items, key=lambda i: (i.plan_id, i.item_id) if plan_id is None
                  else ("", i.item_id))


def _links(state: State, plan_id: str | None = None) -> list[Link]:
    links = [lk for lk in state.links.values() if plan_id is None or lk.plan_id == plan_id]
    return sorted(links, key=lambda lk: lk.link_id)


class MemorySnapshot(ReadSnapshot):
    """A read snapshot of a MemoryStore: the committed data it held on entry (a commit
    publishes new data and leaves the old as it was)."""

    def __init__(self, data: MemoryState) -> None:
        self._data = data

    def head(self) -> tuple[int, str]:
        return self._data.head()

    def first_seq(self) -> int | None:
        return self._data.events[0].seq if self._data.events else None

    def event_count(self) -> int:
        return len(self._data.events)

    def event_rows(self, after: int = 0, upto: int | None = None, *,
                   short: bool = False) -> Iterator[list[EventRow]]:
        chosen = (e for e in self._data.events
                  if e.seq > after and (upto is None or e.seq <= upto))
        rows = ((e.seq, e.hash, e.ts, e.event_type, e.payload) if short else event_row(e)
                for e in chosen)
        while batch := list(islice(rows, BATCH)):
            yield batch

    def last_rows(self, n: int) -> list[EventRow]:
        return [event_row(e) for e in reversed(self._data.events[-n:])] if n > 0 else []

    def row_upto(self, seq: int) -> tuple[int, str] | None:
        before = [e for e in self._data.events if 1 <= e.seq <= seq]
        return (before[-1].seq, before[-1].hash) if before else None

    def newest_command_seq(self) -> int | None:
        seqs = [r.seq for r in self._data.commands.values() if r.seq is not None]
        return seqs[-1] if seqs else None

    def table_rows(self, which: int) -> Iterator[Sequence[Any]]:
        state = self._data.state
        rows: list[Plan] | list[Item] | list[Link] = (
            _plans(state), _items(state), _links(state))[which]
        return (astuple(row) for row in rows)


class MemoryStore(Store):
    def __init__(self) -> None:
        self._data = MemoryState()
        self._locator = Locator(SCHEME, f"{id(self):x}", "memory", "memory")

    @property
    def locator(self) -> Locator:
        return self._locator

    @contextmanager
    def read_snapshot(self) -> Iterator[ReadSnapshot]:
        yield MemorySnapshot(self._data)

    def integrity_check(self) -> DamageReport | None:
        return None  # nothing below the rows to be damaged

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
        return _plans(self._data.state)

    def list_items(self, plan_id: str | None = None) -> list[Item]:
        return _items(self._data.state, plan_id)

    def list_links(self, plan_id: str | None = None) -> list[Link]:
        return _links(self._data.state, plan_id)

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

    def close_store(self) -> None:
        pass


class MemoryBackend(Backend):
    """In-memory stores cannot be opened from a locator: they live in one process."""

    scheme = SCHEME
    schema_version = "-"

    @staticmethod
    def _refuse(locator: Locator) -> CoordinatorError:
        return CoordinatorError(ErrorCode.DB_UNSUPPORTED,
                                f"{locator.describe()}: an in-memory store exists only in "
                                "the process that made it; it cannot be opened again",
                                field="db")

    def open(self, locator: Locator, *, readonly: bool = False,
             durability: Durability = "full", manual_maintenance: bool = False) -> Store:
        raise self._refuse(locator)

    def initialise(self, locator: Locator) -> bool:
        raise self._refuse(locator)

    def exists(self, locator: Locator) -> bool:
        return False

    def acquire_writer(self, locator: Locator, holder: dict[str, Any]) -> WriterLease:
        # an in-memory store has one writer by construction: the process that made it
        raise self._refuse(locator)

    def inspect(self, locator: Locator) -> Inspection:
        raise self._refuse(locator)
