"""The replay verify_chain compares the state tables with: the log through the projection.

:func:`ledger.log.projection.project` into a :class:`ledger.storage.memory.MemoryState`
defines what the tables must hold. Doing exactly that for a million events spends most of
its time building a frozen dataclass per event, so :class:`Replay` keeps each row as a
list in its table's column order and applies the same rules
(:data:`ledger.log.event_rules.EVENT_RULES`) to those lists, with the same lookups and
the same checks (a row that must be absent or present, a reference to a missing plan or
item). Anything else (a payload that is not an object, a missing key, a change of a
field the ledger never changes, an unknown event type: only a tampered log has these) is
*handed over*: the rows so far become a MemoryState, that event and every later one go
through ``project`` itself, so the outcome, state or error message, is the projection's
by construction. tests/ledger/test_replay.py checks the fast path against ``project`` on
random and malformed logs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final

from ledger.log.chain import EventRow
from ledger.log.event_rules import (
    EVENT_RULES,
    STATE_TABLES,
    EventRule,
    Insert,
    Record,
    TableName,
    Update,
)
from ledger.log.projection import project
from ledger.storage.memory import MemoryState
from ledger.storage.rows import Event, Item, Link, Plan, State
from schema.vocabulary import ITEM_COLUMNS, LINK_COLUMNS, PLAN_COLUMNS

#: The field (column) orders of the rows kept: :mod:`schema.vocabulary`'s.
PLAN_FIELDS: Final = PLAN_COLUMNS
ITEM_FIELDS: Final = ITEM_COLUMNS
LINK_FIELDS: Final = LINK_COLUMNS

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
        self._steps = fast_steps(
            EVENT_RULES, {"plans": self.plans, "items": self.items, "links": self.links})

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
        steps = self._steps
        for n, (row, payload) in enumerate(zip(rows, payloads, strict=True)):
            # row: seq, event_id, ts, event_type, ... (or a short row: seq, hash, ts,
            # event_type). Each branch reads and checks everything before it changes
            # anything: a branch that fails or declines leaves the state as it was for
            # project. The branches are fast_steps' kinds of Step.
            done = False
            if type(payload) is dict:
                try:
                    step = steps.get(row[3])
                    if step is None:  # an unknown event type
                        pass
                    elif step[0] is _UPDATE:
                        _, table, key, fields, at, version_at, updated_ts_at = step
                        target = table[payload[key]]
                        change = payload.get("change") or {}
                        if type(change) is dict and change.keys() <= fields:
                            version = payload["new_version"]
                            for name, value in change.items():
                                target[at[name]] = value
                            target[version_at] = version
                            target[updated_ts_at] = row[2]
                            done = True
                    elif step[0] is _INSERT:
                        _, table, values, references = step
                        new = values(payload, payload.get("change") or {}, row[2])
                        if new[0] not in table:
                            for at_column, other in references:
                                if new[at_column] not in other:
                                    break
                            else:
                                table[new[0]] = new
                                done = True
                    else:  # _RECORD
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
        self._steps = {}  # they hold the old tables

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


# --- the rules in the fast path's form ---------------------------------------------------

#: The kinds of :data:`Step`.
_RECORD: Final = "record"
_INSERT: Final = "insert"
_UPDATE: Final = "update"
#: One event type's rule bound to a Replay's tables, as a plain tuple (unpacked once per
#: event, so no attribute lookups): ``(_RECORD,)``; ``(_INSERT, rows, values,
#: ((column index, referenced rows), ...))``; ``(_UPDATE, rows, payload key of the row,
#: fields the fast path applies, column -> index, index of version, index of updated_ts)``.
Step = tuple[Any, ...]


def fast_steps(rules: Mapping[str, EventRule],
               tables: Mapping[TableName, dict[Any, list[Any]]]) -> dict[str, Step]:
    """Each event type's rule as a :data:`Step` on ``tables`` (rows as lists).

    Raises ValueError for an Update rule that would change a column it must not (the
    key, version and timestamps), one its table does not have, or a table whose rows
    never change.
    """
    out: dict[str, Step] = {}
    for event_type, rule in rules.items():
        match rule:
            case Record():
                out[event_type] = (_RECORD,)
            case Insert():
                spec = STATE_TABLES[rule.table]
                references = tuple((spec.columns.index(column), tables[other])
                                   for column, other in spec.references)
                out[event_type] = (_INSERT, tables[rule.table], rule.values, references)
            case Update():
                spec = STATE_TABLES[rule.table]
                at = {name: i for i, name in enumerate(spec.columns)}
                fixed = {spec.columns[0], "version", "created_ts", "updated_ts"}
                if spec.update is None or not rule.fields <= at.keys() - fixed:
                    raise ValueError(f"{event_type}: an update of {rule.table} cannot "
                                     f"change {sorted(rule.fields)}")
                out[event_type] = (_UPDATE, tables[rule.table], rule.key, rule.fields, at,
                                   at["version"], at["updated_ts"])
    return out
