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
from typing import Any, Final, Literal

from ledger.log.chain import canonical_json, event_hash
from ledger.log.event_ids import EventIds
from ledger.log.projection import project
from ledger.plans.rules import Decision, decide
from ledger.storage.base import CommandRecord, StateWriter, Store, Transaction
from ledger.storage.rows import Event, Item, Link, Plan
from schema.clock import utc_now
from schema.commands import (
    Command,
    parse_command,
)
from schema.errors import CoordinatorError, ErrorCode, RejectedError, ValidationError
from schema.vocabulary import EventType

Status = Literal["APPLIED", "CONFLICT", "REJECTED"]


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

    def _event(self, head: tuple[int, str], cmd: Command, d: Decision, ts: str) -> Event:
        seq, prev = head
        fields: dict[str, Any] = {
            "seq": seq + 1, "event_id": self._new_event_id(), "ts": ts,
            "event_type": d.event_type, "session_id": cmd.session_id,
            "task_id": d.item_id or d.plan_id, "actor": cmd.actor, "plan_id": d.plan_id,
            "item_id": d.item_id, "command_id": cmd.command_id,
            "payload": canonical_json(d.payload), "prev_hash": prev,
        }
        return Event(**fields, hash=event_hash(fields))
