"""The storage interface of the ledger (L0 state + L1 log + command records).

A backend is one module implementing :class:`Store` (see :mod:`ledger.sqlite` and
:mod:`ledger.memory`); tests/test_store_contract.py runs the same contract against each.
Driver errors never leave a backend raw: they become :class:`ledger.errors.StorageError`
at the transaction boundary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ledger.storage.rows import Event, Item, Link, Plan, State


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """The remembered outcome of one command_id (written with its event, if any)."""

    command_id: str
    fingerprint: str
    status: str
    seq: int | None
    outcome: str  # canonical JSON of the result, as first returned
    ts: str


class StateReader(ABC):
    """Point reads of the current state."""

    @abstractmethod
    def get_plan(self, plan_id: str) -> Plan | None: ...

    @abstractmethod
    def get_item(self, item_id: str) -> Item | None: ...

    @abstractmethod
    def get_link(self, link_id: str) -> Link | None: ...

    @abstractmethod
    def find_link(self, from_item_id: str, to_item_id: str, link_type: str) -> Link | None: ...


class StateWriter(StateReader):
    """What the projection needs to turn an event into state rows."""

    @abstractmethod
    def insert_plan(self, plan: Plan) -> None: ...

    @abstractmethod
    def update_plan(self, plan: Plan) -> None: ...

    @abstractmethod
    def insert_item(self, item: Item) -> None: ...

    @abstractmethod
    def update_item(self, item: Item) -> None: ...

    @abstractmethod
    def insert_link(self, link: Link) -> None: ...


class Transaction(StateWriter):
    """One atomic unit: state rows, the event and the command record commit together."""

    @abstractmethod
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last event, or (0, genesis) for an empty log."""

    @abstractmethod
    def append_event(self, event: Event) -> None: ...

    @abstractmethod
    def get_command(self, command_id: str) -> CommandRecord | None: ...

    @abstractmethod
    def put_command(self, record: CommandRecord) -> None: ...

    # Bulk forms used by the ledger's group commit. These defaults loop over the
    # one-row methods; a backend overrides them where one statement does it faster.

    def get_commands(self, command_ids: Sequence[str]) -> dict[str, CommandRecord]:
        """The records of those command_ids that have one."""
        return {cid: r for cid in command_ids if (r := self.get_command(cid)) is not None}

    def append_events(self, events: Sequence[Event]) -> None:
        for event in events:
            self.append_event(event)

    def put_commands(self, records: Iterable[CommandRecord]) -> None:
        for record in records:
            self.put_command(record)

    def insert_items(self, items: Iterable[Item]) -> None:
        for item in items:
            self.insert_item(item)

    def update_items(self, items: Iterable[Item]) -> None:
        for item in items:
            self.update_item(item)


class Store(StateReader):
    """A ledger database. Reads outside a transaction see the last committed state."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Transaction]:
        """Begin a write transaction; commit on normal exit, roll back on exception."""

    @abstractmethod
    def head(self) -> tuple[int, str]: ...

    @abstractmethod
    def list_plans(self) -> list[Plan]: ...

    @abstractmethod
    def list_items(self, plan_id: str | None = None) -> list[Item]: ...

    @abstractmethod
    def list_links(self, plan_id: str | None = None) -> list[Link]: ...

    @abstractmethod
    def get_command(self, command_id: str) -> CommandRecord | None: ...

    @abstractmethod
    def iter_events(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        *,
        limit: int | None = None,
        filters: dict[str, Any] | None = None,
    ) -> Iterator[Event]:
        """Events with from_seq <= seq <= to_seq in seq order. ``filters`` maps an event
        column (session_id, task_id, plan_id, item_id, actor, event_type) to a value."""

    @abstractmethod
    def count_by(self, column: str) -> dict[str, int]:
        """Number of events per value of one column (event_type, actor, session_id)."""

    @abstractmethod
    def close(self) -> None: ...

    def load_state(self) -> State:
        state = State()
        for p in self.list_plans():
            state.plans[p.plan_id] = p
        for i in self.list_items():
            state.items[i.item_id] = i
        for link in self.list_links():
            state.links[link.link_id] = link
        return state

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EVENT_FILTER_COLUMNS = frozenset(
    {"session_id", "task_id", "plan_id", "item_id", "actor", "event_type", "command_id"}
)
