"""The replay verify_chain compares the state tables with: the log through the projection.

:func:`ledger.projection.project` into a :class:`ledger.memory.MemoryState` defines what
the tables must hold. Doing exactly that for a million events spends most of its time
building a frozen dataclass per event, so :class:`Replay` keeps each row as a list in
its dataclass's field order and applies the event shapes the ledger writes itself, with
the same lookups and the same checks (a row that must be absent or present, a missing
plan or item behind a foreign key). Anything else (a payload that is not an object, a
missing key, a change of a field the ledger never changes, an unknown event type: only
a tampered log has these) is *handed over*: the rows so far become a MemoryState, that
event and every later one go through ``project`` itself, so the outcome, state or error
message, is the projection's by construction. tests/test_replay.py checks the fast
path against ``project`` on random and malformed logs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final

from ledger.log.chain import EventRow
from ledger.log.projection import project
from ledger.storage.memory import MemoryState
from ledger.storage.rows import Event, Item, Link, Plan, State
from schema.vocabulary import ITEM_COLUMNS, LINK_COLUMNS, PLAN_COLUMNS, EventType

#: The field (column) orders of the rows kept: :mod:`schema.vocabulary`'s.
PLAN_FIELDS: Final = PLAN_COLUMNS
ITEM_FIELDS: Final = ITEM_COLUMNS
LINK_FIELDS: Final = LINK_COLUMNS
#: The changes the fast path applies (ledger.commands.PlanChange, ItemChange and the
#: state change); any other key goes to ``project``.
_PLAN_CHANGES: Final = frozenset({"title", "owner_agent", "status"})
_ITEM_CHANGES: Final = frozenset({"kind", "title", "state", "priority", "assigned_to",
                                  "due_ts"})
_PLAN_AT: Final = {name: i for i, name in enumerate(PLAN_FIELDS)}
_ITEM_AT: Final = {name: i for i, name in enumerate(ITEM_FIELDS)}
_PLAN_VERSION: Final = _PLAN_AT["version"]
_PLAN_UPDATED_TS: Final = _PLAN_AT["updated_ts"]
_ITEM_VERSION: Final = _ITEM_AT["version"]
_ITEM_UPDATED_TS: Final = _ITEM_AT["updated_ts"]
_ITEM_UPDATES: Final = (EventType.PLAN_ITEM_UPDATED, EventType.PLAN_ITEM_STATE_CHANGED)

#: The columns of a *short* row, all the fast path needs: seq, ts and event_type sit at
#: the same positions as in a full :data:`ledger.chain.EventRow` (0, 2, 3).
SHORT_COLUMNS: Final = ("seq", "hash", "ts", "event_type")
#: Gives the full rows for a run of short rows (the same seqs, in order).
FullRows = Callable[[Sequence[EventRow]], Sequence[EventRow]]

#: A table as verify compares it: primary key -> the row's values in field order.
Table = Mapping[Any, Sequence[Any]]
#: Called for each observed seq with that event's seq, its stored hash and the replay
#: just after it (None once the replay has failed).
Observer = Callable[[int, str, "Replay | None"], None]


class Replay:
    """The log replayed so far; fed the rows and parsed payloads that
    :class:`ledger.chain.ChainWalk` produced, batch after batch.

    After the first event that cannot be applied, ``error`` is (its seq, the reason) and
    nothing more is applied.
    """

    def __init__(self, *, observe: Observer | None = None,
                 observe_seqs: Collection[int] = (), full_rows: FullRows | None = None) -> None:
        self.plans: dict[Any, list[Any]] = {}
        self.items: dict[Any, list[Any]] = {}
        self.links: dict[Any, list[Any]] = {}
        #: set once handed over: the state lives here from then on
        self.memory: MemoryState | None = None
        self.error: tuple[int, str] | None = None
        self._observe = observe
        self._observe_seqs = frozenset(observe_seqs) if observe is not None else frozenset()
        self._full_rows = full_rows
        self._short = False

    @property
    def handed_over(self) -> bool:
        return self.memory is not None

    def tables(self) -> tuple[Table, Table, Table]:
        """(plans, items, links) as replayed so far."""
        if self.memory is None:
            return self.plans, self.items, self.links
        return state_tables(self.memory.state)

    def state(self) -> State:
        """The replayed state as the dataclasses the projection writes."""
        if self.memory is not None:
            return self.memory.state
        return State({k: Plan(*v) for k, v in self.plans.items()},
                     {k: Item(*v) for k, v in self.items.items()},
                     {k: Link(*v) for k, v in self.links.items()})

    def apply(self, rows: Sequence[EventRow], payloads: Sequence[Any], *,
              short: bool = False) -> None:
        """Replay the next rows; ``payloads[i]`` is ``rows[i]``'s parsed payload, or the
        exception parsing it raised. ``short``: the rows hold only :data:`SHORT_COLUMNS`
        (``full_rows`` must then have been given, for events the fast path hands over)."""
        self._short = short
        observe, seqs = self._observe, self._observe_seqs
        if observe is None or not seqs:
            self._apply(rows, payloads)
            return
        hash_at = 1 if short else 12
        start = 0
        for i, row in enumerate(rows):
            if row[0] in seqs:
                self._apply(rows[start:i + 1], payloads[start:i + 1])
                start = i + 1
                observe(row[0], row[hash_at], None if self.error is not None else self)
        self._apply(rows[start:], payloads[start:])

    def _apply(self, rows: Sequence[EventRow], payloads: Sequence[Any]) -> None:
        if self.error is not None:
            return
        if self.memory is not None:
            self._apply_slowly(rows, payloads)
            return
        plans, items, links = self.plans, self.items, self.links
        item_changes, plan_changes = _ITEM_CHANGES, _PLAN_CHANGES
        item_at, plan_at = _ITEM_AT, _PLAN_AT
        item_version, item_updated_ts = _ITEM_VERSION, _ITEM_UPDATED_TS
        plan_version, plan_updated_ts = _PLAN_VERSION, _PLAN_UPDATED_TS
        item_updates = _ITEM_UPDATES
        item_added, conflict = EventType.PLAN_ITEM_ADDED, EventType.PLAN_CONFLICT_DETECTED
        link_added, plan_updated = EventType.PLAN_LINK_ADDED, EventType.PLAN_UPDATED
        plan_created = EventType.PLAN_CREATED
        for n, (row, payload) in enumerate(zip(rows, payloads, strict=True)):
            # Each branch reads and checks everything before it changes anything: a
            # branch that fails or declines leaves the state as it was for project.
            # row: seq, event_id, ts, event_type, session_id, task_id, actor, plan_id,
            # item_id, command_id, payload, prev_hash, hash
            done = False
            if type(payload) is dict:
                kind = row[3]
                ts = row[2]
                try:
                    change = payload.get("change") or {}
                    if kind in item_updates:
                        item = items[payload["item_id"]]
                        if type(change) is dict and change.keys() <= item_changes:
                            version = payload["new_version"]
                            for key, value in change.items():
                                item[item_at[key]] = value
                            item[item_version] = version
                            item[item_updated_ts] = ts
                            done = True
                    elif kind == item_added:
                        item_id = payload["item_id"]
                        new = [item_id, payload["plan_id"], change["kind"], change["title"],
                               change["state"], change["priority"], change.get("assigned_to"),
                               change.get("due_ts"), payload["new_version"], ts, ts]
                        if item_id not in items and new[1] in plans:
                            items[item_id] = new
                            done = True
                    elif kind == conflict:
                        done = True
                    elif kind == link_added:
                        link_id = change["link_id"]
                        link = [link_id, payload["plan_id"], change["from_item_id"],
                                change["to_item_id"], change["link_type"], ts]
                        if (link_id not in links and link[2] in items
                                and link[3] in items):
                            links[link_id] = link
                            done = True
                    elif kind == plan_updated:
                        plan = plans[payload["plan_id"]]
                        if type(change) is dict and change.keys() <= plan_changes:
                            version = payload["new_version"]
                            for key, value in change.items():
                                plan[plan_at[key]] = value
                            plan[plan_version] = version
                            plan[plan_updated_ts] = ts
                            done = True
                    elif kind == plan_created:
                        plan_id = payload["plan_id"]
                        new = [plan_id, change["title"], change["owner_agent"],
                               change["status"], payload["new_version"], ts, ts]
                        if plan_id not in plans:
                            plans[plan_id] = new
                            done = True
                except Exception:  # the projection says what is wrong with it
                    done = False
            if not done:
                self._hand_over()
                self._apply_slowly(rows[n:], payloads[n:])
                return

    def _hand_over(self) -> None:
        memory = MemoryState()
        memory.state = self.state()
        self.memory = memory
        self.plans, self.items, self.links = {}, {}, {}

    def _apply_slowly(self, rows: Sequence[EventRow], payloads: Sequence[Any]) -> None:
        """What verify_store did for every event before the fast path."""
        assert self.memory is not None
        if self._short and rows:
            if self._full_rows is None:
                raise ValueError("short rows need full_rows")
            full = self._full_rows(rows)
            if [r[0] for r in full] != [r[0] for r in rows]:
                raise ValueError("full_rows did not return the rows asked for")
            rows = full
        for row, payload in zip(rows, payloads, strict=True):
            ev = Event(*row)
            if isinstance(payload, Exception):  # the payload did not parse
                self.error = (ev.seq, f"replay failed: {payload}")
                return
            try:
                project(ev, payload, self.memory)
            except Exception as exc:  # any malformed event is a finding, not a crash
                self.error = (ev.seq, f"replay failed: {exc}")
                return


def state_tables(state: State) -> tuple[Table, Table, Table]:
    """A State's (plans, items, links) as :data:`Table` s."""
    return ({k: tuple(getattr(v, f) for f in PLAN_FIELDS) for k, v in state.plans.items()},
            {k: tuple(getattr(v, f) for f in ITEM_FIELDS) for k, v in state.items.items()},
            {k: tuple(getattr(v, f) for f in LINK_FIELDS) for k, v in state.links.items()})
