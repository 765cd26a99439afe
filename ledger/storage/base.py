"""The storage interface of the ledger (L0 state + L1 log + command records).

A backend implements :class:`Store` (its stores), :class:`ReadSnapshot` (one consistent
read view of a store), :class:`Inspection` (a read-only look at a store that may be
damaged, for the start-up and integrity checks) and :class:`Backend` (opens all three
from a :class:`Locator`). :mod:`ledger.storage.factory` is the one place that turns what
the user typed (``data/x.db``, a URL) into a locator and a backend; nothing above L0
names a backend. Backends today: :mod:`ledger.storage.sqlite` (with
:mod:`ledger.storage.sqlite_integrity`), :mod:`ledger.storage.postgres` (with
:mod:`ledger.storage.postgres_store` and :mod:`ledger.storage.postgres_integrity`) and
:mod:`ledger.storage.memory`.
tests/ledger/test_store_contract.py runs one contract against each.

Driver errors never leave a backend raw: each backend translates them into
:class:`schema.errors.StorageError` in one function of its own.

One writer per store: :meth:`Backend.acquire_writer` takes the store's
:class:`WriterLease`, an operating-system lock that dies with its process (SQLite: an
``flock`` on ``<db>.lock`` beside the file). The factory takes it, in one place, for
every store it opens for writing, and the store releases it when it closes; read-only
opens never take it. A second writer is refused with DB_LOCKED naming the holder.
"""

from __future__ import annotations

import os
import socket
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ledger.storage.rows import Event, Item, Link, Plan, State
from schema.clock import utc_now
from schema.errors import ErrorCode, StorageError

#: How hard a commit is made durable: ``full`` survives a power loss, ``normal`` a
#: process crash only, ``off`` nothing (bulk fills in benchmarks and tests).
Durability = Literal["full", "normal", "off"]
#: One event row as a backend reads it: the values of :data:`schema.vocabulary.EVENT_COLUMNS`
#: in that order (a plain tuple: verify_chain reads millions of them).
EventRow = tuple[Any, ...]
#: The tables every ledger store holds.
LEDGER_TABLES: Final = ("meta", "events", "commands", "plans", "plan_items", "plan_links")
#: :meth:`ReadSnapshot.table_rows` takes one of these.
PLANS, ITEMS, LINKS = 0, 1, 2
#: What every DB_DAMAGED message ends with: where to look next.
DAMAGE_HINT: Final = "run bin/verify_chain --db {db} to see where"


@dataclass(frozen=True, slots=True)
class Locator:
    """Where a store lives, as the factory resolved it: enough to open the same store
    again in another process (:class:`ledger.log.verify_parallel.ChainHelper` does), and
    nothing a report should not print. Picklable.

    ``scheme`` names the backend (``sqlite``, ``memory``, ``postgresql``),
    ``address`` is what that backend opens (SQLite: the absolute file path; PostgreSQL:
    the URL as typed, which may hold a password, so it is left out of the repr),
    ``shown`` is what reports and the ready line print (SQLite: the path relative to
    the sandbox root, e.g. ``data/x.db``; PostgreSQL: the URL, password masked),
    ``name`` the short name error messages use (SQLite: the file name; PostgreSQL: the
    URL without password and parameters).
    """

    scheme: str
    address: str = field(repr=False)  # a URL may hold a password
    shown: str
    name: str

    def describe(self) -> str:
        return self.shown


def damaged(name: str, what: str, **details: Any) -> StorageError:
    """StorageError(DB_DAMAGED) for store ``name``, saying what failed and where to look."""
    return StorageError(ErrorCode.DB_DAMAGED,
                        f"{name}: {what}; the ledger will not serve it "
                        f"({DAMAGE_HINT.format(db=name)})", details=details)


class StoreLost(StorageError):
    """The store this process writes is no longer the one its locator names (SQLite: the
    file was unlinked, replaced by a rename, or its folder moved; or the writer lock file
    was): whatever it commits now reaches nobody. Code DB_ERROR; the store refuses every
    later transaction, and its owner stops acknowledging (docs/DURABILITY.md)."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(ErrorCode.DB_ERROR, message, details={"reason": "store_lost",
                                                               **details})


def writer_holder(role: str | None = None, **extra: Any) -> dict[str, Any]:
    """Who takes a writer lease: this process's ``pid``, ``host``, the time it ``started``
    writing (UTC, ISO 8601) and its ``role`` (default: the program's name); ``extra``
    fields (e.g. ``supervisor``: the pid of a process whose death takes this one down,
    see :meth:`WriterLease`) are kept as given. JSON-serialisable."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now(),
            "role": role or os.path.basename(sys.argv[0] or "python"), **extra}


def locked(name: str, holder: dict[str, Any] | None) -> StorageError:
    """StorageError(DB_LOCKED) for store ``name``, naming the writer that holds it."""
    if holder:
        who = (f"{holder.get('role', '?')} (pid {holder.get('pid', '?')} on "
               f"{holder.get('host', '?')}, writing since {holder.get('started', '?')})")
    else:
        who = "another process (it has not said who yet)"
    return StorageError(ErrorCode.DB_LOCKED,
                        f"{name} is being written by {who}; one writer per database: stop "
                        "that one first (read-only commands keep working meanwhile)",
                        details={"holder": holder})


class WriterLease(ABC):
    """The right to write one store, held by at most one process at a time: an operating-
    system lock that is released when its process dies however it dies (so never stale
    after SIGKILL, unlike a pid file or a row). ``holder`` is :func:`writer_holder`'s
    dict. Released by :meth:`release` (idempotent), or by the store it was given to
    (:meth:`Store.hold_lease`) when that store closes."""

    holder: dict[str, Any]

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`StoreLost` if the lease no longer guards the store (SQLite: its
        lock file was removed or replaced, so another process could lock a new one; a
        server-side lock: the session holding it is gone). Cheap: the owner calls it
        before acknowledging each commit."""

    @abstractmethod
    def release(self) -> None: ...

    def __enter__(self) -> WriterLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


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


class ReadSnapshot(ABC):
    """One consistent read view of a store: the log and the tables as they were at one
    moment, whatever commits meanwhile (SQLite: one read transaction). Rows come as plain
    tuples, in batches; this is verify_chain's and the start-up check's way in.

    Used as a context manager (:meth:`Store.read_snapshot`, :meth:`Inspection.snapshot`);
    nothing may be read from it once the ``with`` block is left.
    """

    @abstractmethod
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last event, or (0, genesis) for an empty log."""

    @abstractmethod
    def first_seq(self) -> int | None:
        """The lowest seq in the log (None: no events)."""

    @abstractmethod
    def event_count(self) -> int: ...

    @abstractmethod
    def event_rows(self, after: int = 0, upto: int | None = None, *,
                   short: bool = False) -> Iterator[list[EventRow]]:
        """The rows with ``after < seq <= upto`` (no ``upto``: to the end) in seq order, a
        batch at a time. ``short``: only :data:`ledger.log.replay.SHORT_COLUMNS` and the
        payload (what the replay alone needs)."""

    @abstractmethod
    def last_rows(self, n: int) -> list[EventRow]:
        """The last ``n`` event rows, newest first."""

    @abstractmethod
    def row_upto(self, seq: int) -> tuple[int, str] | None:
        """(seq, hash) of the last event with ``1 <= seq' <= seq``, if any."""

    @abstractmethod
    def newest_command_seq(self) -> int | None:
        """The event seq of the command record written last (None: no record with an
        event). Command records are never deleted, so this is the newest commit's."""

    @abstractmethod
    def table_rows(self, which: int) -> Iterator[Sequence[Any]]:
        """The rows of plans (:data:`PLANS`), plan_items (:data:`ITEMS`) or plan_links
        (:data:`LINKS`) as tuples in field order, in the order of :meth:`Store.list_plans`,
        :meth:`Store.list_items` and :meth:`Store.list_links`."""

    def export(self) -> str | None:
        """A token with which another session, in this process or another, reads this
        very snapshot (:meth:`Store.shared_snapshot`) while it is open; None if the
        backend cannot share snapshots (SQLite: the log being append-only, a later
        snapshot holds the same rows up to this one's head)."""
        return None

    def load_state(self) -> State:
        state = State()
        state.plans = {row[0]: Plan(*row) for row in self.table_rows(PLANS)}
        state.items = {row[0]: Item(*row) for row in self.table_rows(ITEMS)}
        state.links = {row[0]: Link(*row) for row in self.table_rows(LINKS)}
        return state


@dataclass(frozen=True, slots=True)
class DamageReport:
    """What a full integrity check found wrong in a store (None from a sound one):
    ``check`` names the check (SQLite: ``PRAGMA integrity_check``), ``messages`` are its
    own words, ``tables`` the ledger tables they concern, ``truncated`` a truncation the
    store's own header reveals, then how far the event log can still be read (the
    count, the last seq, and the error that stopped the read, if one did)."""

    name: str
    check: str
    messages: list[str]
    tables: list[str]
    truncated: str | None
    events_readable: int
    last_readable_seq: int
    read_error: str | None


class Inspection(ABC):
    """A read-only look at a store that may be damaged, for the start-up checks and the
    damage report: opening it requires neither the schema nor sound data, and it never
    writes (SQLite: ``mode=ro``, so not even a WAL checkpoint). Every failure arrives as
    StorageError: DB_DAMAGED when the data itself is damaged, else DB_ERROR or DB_BUSY.
    Use as a context manager."""

    @abstractmethod
    def tables(self) -> set[str]:
        """The names of the tables the store holds (empty for an empty file)."""

    @abstractmethod
    def snapshot(self) -> AbstractContextManager[ReadSnapshot]:
        """A read snapshot through this inspection's connection."""

    @abstractmethod
    def check_pages(self) -> None:
        """The structural check whose time grows with the store (SQLite: ``PRAGMA
        quick_check``); inside :meth:`snapshot`, of that snapshot. Raises DB_DAMAGED."""

    @abstractmethod
    def damage(self) -> DamageReport | None:
        """The full integrity check (SQLite: ``PRAGMA integrity_check``); None if sound."""

    @abstractmethod
    def interrupt(self) -> None:
        """Make a check running on another thread stop soon (it then raises a
        StorageError that is not DB_DAMAGED). Safe to call at any time."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Inspection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store(StateReader):
    """A ledger database. Reads outside a transaction see the last committed state.

    A store opened for writing by the factory holds the store's :class:`WriterLease`
    (:attr:`writer` says who holds it) and releases it in :meth:`close`, after the
    backend's own :meth:`close_store`. A writer store confirms after each COMMIT that it
    still writes the store its locator names, and raises :class:`StoreLost` if not."""

    _lease: WriterLease | None = None
    #: what :meth:`close` did to leave a writer store self-contained, for the owner's
    #: log (SQLite: the final WAL checkpoint, ``{"complete": bool, ...}``); None before
    #: the close, for read-only stores, and for backends with nothing to do
    close_report: dict[str, Any] | None = None

    @property
    @abstractmethod
    def locator(self) -> Locator:
        """Where this store lives: :func:`ledger.storage.factory.open_store` opens it again
        from this (in another process, too, unless the backend is in-memory)."""

    def describe(self) -> str:
        """What a report prints for this store (``data/x.db``)."""
        return self.locator.describe()

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Transaction]:
        """Begin a write transaction; commit on normal exit, roll back on exception."""

    @abstractmethod
    def read_snapshot(self) -> AbstractContextManager[ReadSnapshot]:
        """A read view consistent across the log and the tables (see :class:`ReadSnapshot`);
        commits made meanwhile, through this store or any other, stay out of it."""

    def shared_snapshot(self, token: str | None) -> AbstractContextManager[ReadSnapshot]:
        """The snapshot another store of the same database exported
        (:meth:`ReadSnapshot.export`; it must still be open); with None, or for a backend
        that cannot share snapshots, a new :meth:`read_snapshot`."""
        return self.read_snapshot()

    def snapshot(self) -> tuple[int, str, State]:
        """Head seq, head hash and the whole state, from one :meth:`read_snapshot`
        (what a signed checkpoint signs)."""
        with self.read_snapshot() as snap:
            seq, head_hash = snap.head()
            return seq, head_hash, snap.load_state()

    @abstractmethod
    def integrity_check(self) -> DamageReport | None:
        """The backend's full integrity check of this store; None if it is sound."""

    def maintenance(self) -> dict[str, Any]:
        """Housekeeping the owner runs when it suits it, off the commit path (SQLite: a
        PASSIVE WAL checkpoint, with ``manual_maintenance``). Returns what it did, for the
        log; never blocks readers. Default: nothing to do."""
        return {}

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

    def hold_lease(self, lease: WriterLease) -> None:
        """Keep ``lease`` until :meth:`close` (the factory's writer-open path)."""
        self._lease = lease

    @property
    def writer(self) -> dict[str, Any] | None:
        """The holder of the writer lease this store holds (None: it holds none)."""
        return self._lease.holder if self._lease is not None else None

    def check_lease(self) -> None:
        """Raise :class:`StoreLost` if this store's writer lease no longer guards it."""
        if self._lease is not None:
            self._lease.check()

    def close(self) -> None:
        """Close the store (a writer store leaves it self-contained: SQLite checkpoints
        the WAL into the file, so a copy of the file alone is complete), then release
        its writer lease."""
        try:
            self.close_store()
        finally:
            if self._lease is not None:
                self._lease.release()
                self._lease = None

    @abstractmethod
    def close_store(self) -> None:
        """The backend's part of :meth:`close` (connections, files)."""

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


class Backend(ABC):
    """One storage engine, as :mod:`ledger.storage.factory` sees it: it opens, creates and
    inspects the stores its locators name. One instance per backend module."""

    #: the Locator scheme it serves
    scheme: str
    #: the version of the schema it creates (bin/init_db prints it)
    schema_version: str

    @abstractmethod
    def open(self, locator: Locator, *, readonly: bool, durability: Durability,
             manual_maintenance: bool) -> Store:
        """Open an existing store; DB_NOT_INITIALISED if it has no ledger schema."""

    @abstractmethod
    def initialise(self, locator: Locator) -> bool:
        """Create the store and its schema, or add what is missing (idempotent; data is
        kept). Returns True if the store is new."""

    @abstractmethod
    def exists(self, locator: Locator) -> bool:
        """Whether anything is there yet (a damaged store exists)."""

    @abstractmethod
    def acquire_writer(self, locator: Locator, holder: dict[str, Any]) -> WriterLease:
        """Take the store's writer lease for ``holder`` (:func:`writer_holder`), without
        waiting for a live holder. Raises StorageError(DB_LOCKED) with the current
        holder in ``details.holder`` (:func:`locked`) if another writer has it. Only
        :func:`ledger.storage.factory.open_store` and ``initialise_store`` call this."""

    def size_bytes(self, locator: Locator) -> int | None:
        """About how big the store is, if the backend can say cheaply (None: it cannot)."""
        return None

    @abstractmethod
    def inspect(self, locator: Locator) -> Inspection:
        """A read-only :class:`Inspection` of what is there, damaged or not."""
