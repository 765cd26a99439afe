"""L3 plans: turn a command into an outcome (applied, conflict or rejected).

:class:`Ledger` is the library a process drives: ``apply`` validates, checks the
command_id record, decides against the current state, and commits the event, its state
rows and the command record in one transaction. It returns only after the commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from ledger.chain import canonical_json, event_hash
from ledger.commands import (
    AddItem,
    AddLink,
    Command,
    CreatePlan,
    StateChange,
    UpdateItem,
    UpdatePlan,
    parse_command,
)
from ledger.errors import CoordinatorError, ErrorCode, RejectedError, ValidationError
from ledger.event_ids import EventIds
from ledger.model import Event, EventType, Item, Link, Plan, transition_allowed
from ledger.persistence import (
    CommandRecord,
    StateReader,
    StateWriter,
    Store,
    Transaction,
)
from ledger.projection import project

Status = Literal["APPLIED", "CONFLICT", "REJECTED"]


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class CommandResult:
    """What the ledger answers for one command (and what a retry gets again)."""

    command_id: str | None
    action: str | None
    status: Status
    event_type: str | None = None
    seq: int | None = None
    hash: str | None = None
    new_version: int | None = None
    current_version: int | None = None
    error: dict[str, Any] | None = None
    replayed: bool = False
    #: Events this call wrote (empty when replayed or rejected); not part of to_dict().
    events: list[Event] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "APPLIED"

    @property
    def wrote_event(self) -> bool:
        """True when this call appended an event (not a replay, not a rejection)."""
        return self.seq is not None and not self.replayed

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id, "action": self.action, "status": self.status,
            "event_type": self.event_type, "seq": self.seq, "hash": self.hash,
            "new_version": self.new_version, "current_version": self.current_version,
            "error": self.error, "replayed": self.replayed,
        }

    @classmethod
    def from_outcome(cls, outcome: Mapping[str, Any], *, replayed: bool) -> CommandResult:
        return cls(
            outcome.get("command_id"), outcome.get("action"), outcome["status"],
            event_type=outcome.get("event_type"), seq=outcome.get("seq"),
            hash=outcome.get("hash"), new_version=outcome.get("new_version"),
            current_version=outcome.get("current_version"), error=outcome.get("error"),
            replayed=replayed)

    @classmethod
    def rejected(cls, command_id: str | None, action: str | None,
                 error: CoordinatorError) -> CommandResult:
        return cls(command_id, action, "REJECTED", error=error.to_dict())


@dataclass(slots=True)
class _Decision:
    event_type: str
    payload: dict[str, Any]
    plan_id: str | None
    item_id: str | None
    new_version: int | None
    current_version: int | None = None


def fingerprint(command: Command) -> str:
    return hashlib.sha256(canonical_json(command.fingerprint_dict()).encode()).hexdigest()


class _RowCache:
    """Committed plan and item rows, kept across transactions by the single writer.

    Valid only while the log's head is the one it was filled at: every state change
    appends an event, so another writer (a second Ledger, bin/os_l3_plan on the same
    file) moves the head and the next batch starts from an empty cache.
    """

    MAX_ROWS: Final = 100_000  # then start again from empty: a bound, not an LRU

    def __init__(self) -> None:
        self.plans: dict[str, Plan] = {}
        self.items: dict[str, Item] = {}
        self.head: tuple[int, str] | None = None

    def sync(self, head: tuple[int, str]) -> None:
        if head != self.head or len(self.plans) + len(self.items) > self.MAX_ROWS:
            self.plans.clear()
            self.items.clear()
            self.head = head


class _Batch(StateWriter):
    """The state one group commit decides against: its own writes, over the row cache,
    over the transaction. Writes stay here until :meth:`flush` (once, before COMMIT), so
    every row read from the transaction meanwhile is committed state and safe to cache.
    """

    def __init__(self, tx: Transaction, cache: _RowCache) -> None:
        self.tx = tx
        self.cache = cache
        self.head = tx.head()
        cache.sync(self.head)
        self.events: list[Event] = []
        self.records: dict[str, CommandRecord] = {}
        self.plans: dict[str, Plan] = {}
        self.items: dict[str, Item] = {}
        self.links: dict[str, Link] = {}
        self.new_plans: set[str] = set()
        self.new_items: set[str] = set()

    def get_plan(self, plan_id: str) -> Plan | None:
        plan = self.plans.get(plan_id) or self.cache.plans.get(plan_id)
        if plan is None and (plan := self.tx.get_plan(plan_id)) is not None:
            self.cache.plans[plan_id] = plan
        return plan

    def get_item(self, item_id: str) -> Item | None:
        item = self.items.get(item_id) or self.cache.items.get(item_id)
        if item is None and (item := self.tx.get_item(item_id)) is not None:
            self.cache.items[item_id] = item
        return item

    def get_link(self, link_id: str) -> Link | None:
        return self.links.get(link_id) or self.tx.get_link(link_id)

    def find_link(self, from_item_id: str, to_item_id: str, link_type: str) -> Link | None:
        for link in self.links.values():
            if (link.from_item_id, link.to_item_id, link.link_type) == (
                    from_item_id, to_item_id, link_type):
                return link
        return self.tx.find_link(from_item_id, to_item_id, link_type)

    def insert_plan(self, plan: Plan) -> None:
        self.plans[plan.plan_id] = plan
        self.new_plans.add(plan.plan_id)

    def update_plan(self, plan: Plan) -> None:
        self.plans[plan.plan_id] = plan

    def insert_item(self, item: Item) -> None:
        self.items[item.item_id] = item
        self.new_items.add(item.item_id)

    def update_item(self, item: Item) -> None:
        self.items[item.item_id] = item

    def insert_link(self, link: Link) -> None:
        self.links[link.link_id] = link

    def append(self, event: Event) -> None:
        self.events.append(event)
        self.head = (event.seq, event.hash)

    def flush(self) -> None:
        """Write the batch into the transaction: each row once, in its final version
        (parents before children, for the foreign keys)."""
        tx = self.tx
        for plan_id, plan in self.plans.items():
            if plan_id in self.new_plans:
                tx.insert_plan(plan)
            else:
                tx.update_plan(plan)
        tx.insert_items(i for k, i in self.items.items() if k in self.new_items)
        tx.update_items(i for k, i in self.items.items() if k not in self.new_items)
        for link in self.links.values():
            tx.insert_link(link)
        tx.append_events(self.events)
        tx.put_commands(self.records.values())

    def committed(self) -> None:
        """After COMMIT: the batch's rows are now the committed state."""
        self.cache.plans.update(self.plans)
        self.cache.items.update(self.items)
        self.cache.head = self.head


class Ledger:
    """Applies plan commands to a :class:`Store`. Single writer: one Ledger per store."""

    def __init__(self, store: Store, *, clock: Callable[[], str] = utc_now,
                 new_event_id: Callable[[], str] | None = None) -> None:
        self.store = store
        self._clock = clock
        self._new_event_id = new_event_id or EventIds()
        self._cache = _RowCache()

    def apply(self, command: Command | Mapping[str, Any]) -> CommandResult:
        """Validate and apply one command; the result is returned after the commit.

        Malformed input is rejected without touching the database. Storage failures
        raise :class:`ledger.errors.StorageError` and nothing is committed.
        """
        return self.apply_many([command])[0]

    def apply_many(self, commands: Sequence[Command | Mapping[str, Any]]
                   ) -> list[CommandResult]:
        """Group commit: apply commands one after another in ONE transaction.

        Each command sees the state left by the ones before it (a conflict inside a batch
        is a conflict against that state), exactly as if applied one by one; the batch
        commits once and the results are returned after that commit. A storage failure
        rolls the whole batch back and raises; nothing of it is acknowledged.
        """
        results: list[CommandResult | None] = []
        valid: list[tuple[int, Command]] = []
        for i, command in enumerate(commands):
            try:
                valid.append((i, parse_command(command)))
                results.append(None)
            except ValidationError as exc:
                raw = command if isinstance(command, Mapping) else {}
                cid, action = raw.get("command_id"), raw.get("action")
                results.append(CommandResult.rejected(
                    cid if isinstance(cid, str) else None,
                    action if isinstance(action, str) else None, exc))
        if not valid:
            return [r for r in results if r is not None]
        ts = self._clock()  # one commit, one time: every event of the batch shares it
        with self.store.transaction() as tx:
            batch = _Batch(tx, self._cache)
            known = tx.get_commands([cmd.command_id for _, cmd in valid])
            done = [(i, self._apply_in(batch, known, cmd, ts)) for i, cmd in valid]
            batch.flush()
        batch.committed()
        for i, result in done:
            results[i] = result
        return [r for r in results if r is not None]

    def _apply_in(self, batch: _Batch, known: dict[str, CommandRecord], cmd: Command,
                  ts: str) -> CommandResult:
        fp = fingerprint(cmd)
        record = batch.records.get(cmd.command_id) or known.get(cmd.command_id)
        if record is not None:
            if record.fingerprint != fp:
                return CommandResult.rejected(cmd.command_id, cmd.action, RejectedError(
                    ErrorCode.COMMAND_ID_REUSED,
                    f"command_id {cmd.command_id!r} was already used for a different command",
                    field="command_id"))
            return CommandResult.from_outcome(json.loads(record.outcome), replayed=True)
        try:
            decision = decide(cmd, batch)
        except RejectedError as exc:
            result = CommandResult.rejected(cmd.command_id, cmd.action, exc)
            batch.records[cmd.command_id] = CommandRecord(
                cmd.command_id, fp, result.status, None, canonical_json(result.to_dict()), ts)
            return result
        event = self._event(batch.head, cmd, decision, ts)
        batch.append(event)
        project(event, decision.payload, batch)
        status: Status = ("CONFLICT" if decision.event_type == EventType.PLAN_CONFLICT_DETECTED
                          else "APPLIED")
        result = CommandResult(
            cmd.command_id, cmd.action, status, event_type=event.event_type, seq=event.seq,
            hash=event.hash, new_version=decision.new_version,
            current_version=decision.current_version, events=[event])
        if status == "CONFLICT":
            result.error = {
                "code": str(ErrorCode.VERSION_CONFLICT),
                "message": f"expected version {decision.payload['expected_version']}, "
                           f"current version is {decision.current_version}",
                "field": "expected_version",
            }
        batch.records[cmd.command_id] = CommandRecord(
            cmd.command_id, fp, status, event.seq, canonical_json(result.to_dict()), ts)
        return result

    def _event(self, head: tuple[int, str], cmd: Command, d: _Decision, ts: str) -> Event:
        seq, prev = head
        fields: dict[str, Any] = {
            "seq": seq + 1, "event_id": self._new_event_id(), "ts": ts,
            "event_type": d.event_type, "session_id": cmd.session_id,
            "task_id": d.item_id or d.plan_id, "actor": cmd.actor, "plan_id": d.plan_id,
            "item_id": d.item_id, "command_id": cmd.command_id,
            "payload": canonical_json(d.payload), "prev_hash": prev,
        }
        return Event(**fields, hash=event_hash(fields))


# --- decide: pure checks against the state, no writes --------------------------------


def _payload(cmd: Command, plan_id: str | None, item_id: str | None,
             expected: int | None, new: int | None, change: dict[str, Any],
             **extra: Any) -> dict[str, Any]:
    return {"plan_id": plan_id, "item_id": item_id, "actor": cmd.actor, "action": cmd.action,
            "expected_version": expected, "new_version": new, "change": change, **extra}


def _conflict(cmd: Command, plan_id: str | None, item_id: str | None, expected: int,
              current: int, change: dict[str, Any]) -> _Decision:
    payload = _payload(cmd, plan_id, item_id, expected, None, change, current_version=current)
    return _Decision(EventType.PLAN_CONFLICT_DETECTED, payload, plan_id, item_id, None, current)


def _plan(state: StateReader, plan_id: str, field: str = "plan_id") -> Plan:
    plan = state.get_plan(plan_id)
    if plan is None:
        raise RejectedError(ErrorCode.UNKNOWN_PLAN, f"{field}: no plan {plan_id!r}", field=field)
    return plan


def _item(state: StateReader, item_id: str, field: str = "item_id") -> Item:
    item = state.get_item(item_id)
    if item is None:
        raise RejectedError(ErrorCode.UNKNOWN_ITEM, f"{field}: no item {item_id!r}", field=field)
    return item


def _writable(plan: Plan) -> None:
    if plan.status == "ARCHIVED":
        raise RejectedError(ErrorCode.PLAN_ARCHIVED,
                            f"plan {plan.plan_id!r} is archived; unarchive it with UPDATE_PLAN",
                            field="plan_id")


def _same_plan(cmd_plan_id: str | None, item: Item) -> None:
    if cmd_plan_id is not None and cmd_plan_id != item.plan_id:
        raise RejectedError(ErrorCode.PLAN_MISMATCH,
                            f"plan_id: item {item.item_id!r} belongs to plan {item.plan_id!r}, "
                            f"not {cmd_plan_id!r}", field="plan_id")


def decide(cmd: Command, state: StateReader) -> _Decision:
    """The event a command produces against ``state``, or RejectedError.

    Order of checks for a mutation of something existing: it exists; the version matches
    (a stale command is a conflict whatever else is wrong with it); then everything else.
    """
    match cmd:
        case CreatePlan():
            if state.get_plan(cmd.plan_id) is not None:
                raise RejectedError(ErrorCode.DUPLICATE_ID,
                                    f"plan_id: plan {cmd.plan_id!r} already exists",
                                    field="plan_id")
            change: dict[str, Any] = {
                "title": cmd.title, "owner_agent": cmd.owner_agent or cmd.actor,
                "status": cmd.status}
            return _Decision(EventType.PLAN_CREATED,
                             _payload(cmd, cmd.plan_id, None, None, 1, change),
                             cmd.plan_id, None, 1)
        case UpdatePlan():
            plan = _plan(state, cmd.plan_id)
            change = cmd.change.model_dump(exclude_unset=True)
            if plan.version != cmd.expected_version:
                return _conflict(cmd, plan.plan_id, None, cmd.expected_version, plan.version,
                                 change)
            if not change:
                raise RejectedError(ErrorCode.EMPTY_CHANGE, "change: nothing to change",
                                    field="change")
            for key, value in change.items():
                if value is None:
                    raise RejectedError(ErrorCode.INVALID_VALUE,
                                        f"change.{key}: cannot be null", field=f"change.{key}")
            previous = {k: getattr(plan, k) for k in change}
            new = plan.version + 1
            return _Decision(EventType.PLAN_UPDATED,
                             _payload(cmd, plan.plan_id, None, cmd.expected_version, new,
                                      change, previous=previous),
                             plan.plan_id, None, new)
        case AddItem():
            plan = _plan(state, cmd.plan_id)
            _writable(plan)
            if state.get_item(cmd.item_id) is not None:
                raise RejectedError(ErrorCode.DUPLICATE_ID,
                                    f"item_id: item {cmd.item_id!r} already exists",
                                    field="item_id")
            change = {"kind": cmd.kind, "title": cmd.title, "state": cmd.state,
                      "priority": cmd.priority, "assigned_to": cmd.assigned_to,
                      "due_ts": cmd.due_ts}
            return _Decision(EventType.PLAN_ITEM_ADDED,
                             _payload(cmd, plan.plan_id, cmd.item_id, None, 1, change),
                             plan.plan_id, cmd.item_id, 1)
        case UpdateItem():
            item = _item(state, cmd.item_id)
            change = cmd.change.model_dump(exclude_unset=True)
            if item.version != cmd.expected_version:
                return _conflict(cmd, item.plan_id, item.item_id, cmd.expected_version,
                                 item.version, change)
            _same_plan(cmd.plan_id, item)
            _writable(_plan(state, item.plan_id))
            if not change:
                raise RejectedError(ErrorCode.EMPTY_CHANGE, "change: nothing to change",
                                    field="change")
            for key in ("title", "kind", "priority"):
                if key in change and change[key] is None:
                    raise RejectedError(ErrorCode.INVALID_VALUE,
                                        f"change.{key}: cannot be null", field=f"change.{key}")
            previous = {k: getattr(item, k) for k in change}
            new = item.version + 1
            return _Decision(EventType.PLAN_ITEM_UPDATED,
                             _payload(cmd, item.plan_id, item.item_id, cmd.expected_version,
                                      new, change, previous=previous),
                             item.plan_id, item.item_id, new)
        case StateChange():
            item = _item(state, cmd.item_id)
            change = {"state": cmd.change.state}
            if item.version != cmd.expected_version:
                return _conflict(cmd, item.plan_id, item.item_id, cmd.expected_version,
                                 item.version, change)
            _same_plan(cmd.plan_id, item)
            _writable(_plan(state, item.plan_id))
            if not transition_allowed(item.state, cmd.change.state):
                raise RejectedError(
                    ErrorCode.INVALID_TRANSITION,
                    f"change.state: {item.state} -> {cmd.change.state} is not allowed "
                    f"for item {item.item_id!r}",
                    field="change.state", details={"from": item.state, "to": cmd.change.state})
            new = item.version + 1
            return _Decision(EventType.PLAN_ITEM_STATE_CHANGED,
                             _payload(cmd, item.plan_id, item.item_id, cmd.expected_version,
                                      new, change, previous={"state": item.state}),
                             item.plan_id, item.item_id, new)
        case AddLink():
            src = _item(state, cmd.from_item_id, "from_item_id")
            dst = _item(state, cmd.to_item_id, "to_item_id")
            _same_plan(cmd.plan_id, src)
            _writable(_plan(state, src.plan_id))
            if state.get_link(cmd.link_id) is not None:
                raise RejectedError(ErrorCode.DUPLICATE_ID,
                                    f"link_id: link {cmd.link_id!r} already exists",
                                    field="link_id")
            if src.item_id == dst.item_id:
                raise RejectedError(ErrorCode.INVALID_LINK, "to_item_id: an item cannot link "
                                    "to itself", field="to_item_id")
            if src.plan_id != dst.plan_id:
                raise RejectedError(ErrorCode.INVALID_LINK,
                                    f"to_item_id: {dst.item_id!r} is in plan {dst.plan_id!r},"
                                    f" {src.item_id!r} in {src.plan_id!r}", field="to_item_id")
            existing = state.find_link(src.item_id, dst.item_id, cmd.link_type)
            if existing is not None:
                raise RejectedError(ErrorCode.INVALID_LINK,
                                    f"link_id: {src.item_id} {cmd.link_type} {dst.item_id} "
                                    f"exists already as {existing.link_id!r}", field="link_id")
            change = {"link_id": cmd.link_id, "from_item_id": src.item_id,
                      "to_item_id": dst.item_id, "link_type": cmd.link_type}
            return _Decision(EventType.PLAN_LINK_ADDED,
                             _payload(cmd, src.plan_id, src.item_id, None, None, change),
                             src.plan_id, src.item_id, None)
    raise AssertionError(f"unhandled command {cmd!r}")  # pragma: no cover
