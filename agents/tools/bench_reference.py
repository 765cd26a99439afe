"""bin/bench's reference appender: the floor the ledger core is measured against.

One process appends one hash-chained event per command of the bench's mix to a SQLite
file, and does nothing else: no validation, no command records, no state tables, no
secondary indexes, no triggers. What it shares with the ledger, so the two are compared
on the cost of the ledger's own work only:

- the event columns (:data:`schema.vocabulary.EVENT_COLUMNS`) and the preimage and hash
  of :mod:`ledger.log.chain` (docs/HASH_CHAIN.md): a reference database verifies;
- the ``events`` table of ``schema/event_log_schema.sql``, read from that file, minus its
  UNIQUE constraint: the primary key (``seq``, SQLite's rowid) is its only index;
- UUIDv7 event ids (:class:`ledger.log.event_ids.EventIds`), one timestamp per commit
  group, canonical JSON payloads of the same keys the ledger writes (without the
  ``previous`` values, which need the state the reference does not keep);
- the group size (one transaction, ``BEGIN IMMEDIATE`` … ``COMMIT``, per group), and
  the connection and PRAGMAs of a store's writer
  (:func:`ledger.storage.sqlite.connect` and :func:`~ledger.storage.sqlite.writer_pragmas`),
  hence the same durability (``synchronous=FULL``: an fdatasync of the WAL per commit).

On the bench machine such an appender measured about 23 µs of CPU per command at
group 64 (issue 12): a figure far above that means the reference is wrong.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from agents.tools.cpu import self_cpu_seconds
from ledger.log.chain import GENESIS_HASH, canonical_json, event_hash
from ledger.log.event_ids import EventIds
from ledger.storage.base import Durability
from ledger.storage.sqlite import SCHEMA_DIR, connect, writer_pragmas
from schema.clock import utc_now
from schema.vocabulary import EVENT_COLUMNS, EventType

#: The event each action of the mix appends when applied.
EVENT_TYPE_OF: Final = {
    "CREATE_PLAN": EventType.PLAN_CREATED, "UPDATE_PLAN": EventType.PLAN_UPDATED,
    "ADD_ITEM": EventType.PLAN_ITEM_ADDED, "UPDATE_ITEM": EventType.PLAN_ITEM_UPDATED,
    "STATE_CHANGE": EventType.PLAN_ITEM_STATE_CHANGED, "ADD_LINK": EventType.PLAN_LINK_ADDED,
}
#: Command fields that are not part of an event's ``change``.
_ENVELOPE: Final = frozenset({"command_id", "actor", "session_id", "action", "plan_id",
                              "item_id", "expected_version"})
#: What an ADD_ITEM's event records for the fields the command left out (the defaults
#: of schema.commands.AddItem; tests/agents/test_bench_reference.py compares the events).
_ADD_ITEM_DEFAULTS: Final = {"kind": "TASK", "state": "TODO", "priority": 0,
                             "assigned_to": None, "due_ts": None}
_INSERT: Final = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})")


def events_table_sql() -> str:
    """``CREATE TABLE events (...)`` as ``schema/event_log_schema.sql`` has it, without
    comments and without ``UNIQUE``: the same columns, only the primary key's index."""
    text = SCHEMA_DIR.joinpath("event_log_schema.sql").read_text()
    match = re.search(r"CREATE TABLE IF NOT EXISTS events \((.*?)\n\);", text, re.DOTALL)
    if match is None:
        raise ValueError("schema/event_log_schema.sql has no events table")
    body = re.sub(r"--[^\n]*", "", match.group(1))
    body = re.sub(r"\s+UNIQUE\b", "", body)
    return f"CREATE TABLE events ({body}\n)"


def reference_event(cmd: Mapping[str, Any], expected: str, seq: int, prev_hash: str,
                    ts: str, event_id: str, plan_id: str) -> dict[str, Any]:
    """The event row (every column, ``hash`` included) the reference appends for
    ``cmd`` whose outcome is ``expected`` (APPLIED or CONFLICT)."""
    action = cmd["action"]
    item_id = cmd.get("item_id")
    plan = cmd.get("plan_id") or plan_id
    version = cmd.get("expected_version")
    change = cmd.get("change")
    if change is None:
        change = {k: v for k, v in cmd.items() if k not in _ENVELOPE}
        if action == "ADD_ITEM":
            change = {**_ADD_ITEM_DEFAULTS, **change}
    payload: dict[str, Any] = {
        "plan_id": plan, "item_id": item_id, "actor": cmd["actor"], "action": action,
        "expected_version": version, "change": change}
    if expected == "CONFLICT":
        event_type = EventType.PLAN_CONFLICT_DETECTED
        payload["new_version"] = None
        payload["current_version"] = (version or 0) + 1
    else:
        event_type = EVENT_TYPE_OF[action]
        payload["new_version"] = 1 if version is None else version + 1
    fields: dict[str, Any] = {
        "seq": seq, "event_id": event_id, "ts": ts, "event_type": event_type,
        "session_id": cmd["session_id"], "task_id": item_id or plan, "actor": cmd["actor"],
        "plan_id": plan, "item_id": item_id, "command_id": cmd["command_id"],
        "payload": canonical_json(payload), "prev_hash": prev_hash}
    fields["hash"] = event_hash(fields)
    return fields


def append_reference(path: Path, commands: Sequence[tuple[Mapping[str, Any], str]], *,
                     batch: int, durability: Durability, plan_id: str) -> dict[str, Any]:
    """Create ``path`` (must not exist) and append one event per ``(command, expected
    outcome)``, ``batch`` per transaction. Returns ``{"commands", "batch", "seconds",
    "commands_per_s", "cpu_seconds", "cpu_us_per_command"}``; the CPU is this process's
    (``getrusage``) over the appends and commits alone. Raises FileExistsError if
    ``path`` exists, and sqlite3.Error on a storage failure."""
    if path.exists():
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, readonly=False)
    try:
        for pragma in writer_pragmas(durability):
            conn.execute(pragma)
        conn.execute(events_table_sql())
        new_id = EventIds()
        columns = EVENT_COLUMNS
        seq, prev = 0, GENESIS_HASH
        cpu0, started = self_cpu_seconds(), time.perf_counter()
        for at in range(0, len(commands), batch):
            ts = utc_now()  # one commit, one time, as the ledger does
            rows = []
            for cmd, expected in commands[at:at + batch]:
                seq += 1
                event = reference_event(cmd, expected, seq, prev, ts, new_id(), plan_id)
                prev = event["hash"]
                rows.append(tuple(event[c] for c in columns))
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        elapsed, cpu_s = time.perf_counter() - started, self_cpu_seconds() - cpu0
    finally:
        conn.close()
    n = len(commands)
    return {"commands": n, "batch": batch, "seconds": elapsed,
            "commands_per_s": n / elapsed if elapsed else 0.0, "cpu_seconds": cpu_s,
            "cpu_us_per_command": cpu_s * 1e6 / n if n else 0.0}
