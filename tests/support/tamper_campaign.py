"""A tamper campaign: thousands of random single edits of a ledger database, each one
checked by ``verify_with_checkpoints`` (verify_store + the signed checkpoints).

``run_tamper_campaign(n, seed)`` builds one small database (every scenario in scenarios/
plus seeded random commands, signing a checkpoint every few events and at the head),
keeps its bytes (and the bytes it had at every seq) in memory, and then, ``n`` times:
writes a fresh copy to a temp file, drops the append-only triggers, applies one random
tampering with plain sqlite3 (as an attacker with write access to the file would), and
verifies. A tampering is *detected* when the report is BROKEN, and reported *at the
right seq* when the lowest seq in the report is the expected one:

==================  ======================================================  ===========
kind                the edit                                                expected
==================  ======================================================  ===========
field_edit          one column of one event row (seq too: moved past head)  that seq
delete_row          one event row deleted                                   its seq [1]
insert_row          a conflict event slipped in before row p, correctly     p + 1 [2]
                    linked and hashed (later rows shifted up); or a forged  (p if a
                    item update appended at head + 1, correctly linked      checkpoint
                                                                            is at p)
swap_rows           two event rows trade seq numbers                        the lower
truncate_tail       the database as it was at seq k (an older copy)         k + 1 [3]
cut_tail_rows       the event rows after seq k deleted, tables left as is   k + 1 [1]
rewrite_recomputed  one event edited, every later hash recomputed, tables   see [4]
                    rewritten to the new replay
rollback_fork       the copy at seq k restored and new commands applied     see [5]
edit_state_row      one column of one plans/items/links row, or the row     see [6]
                    deleted
==================  ======================================================  ===========

[1] Deleting the last rows leaves the tables ahead of the log: a table row the shortened
    log cannot explain is blamed (verify's convention for state rows) at the last event
    that touches it, or at the new head for a row no event creates; the expectation is
    the lowest of those and k + 1 (the checkpoint at the old head: TRUNCATED).
[2] A correctly forged row fits where it is: the chain breaks where the next row no
    longer links, unless a checkpoint signed the original row at p. A forged event with
    no effect on the state appended at the head is beyond any chain or checkpoint (it
    needs the writer's key), so appends forge a state change.
[3] Only the signed checkpoint at the old head can tell: TRUNCATED at k + 1.
[4] The chain and the tables are consistent again: the first signed checkpoint at or
    after the edited seq no longer matches (HISTORY_REWRITTEN), and it is the reported
    seq; the report also says after which checkpoint the rewrite lies (checked).
[5] The first checkpoint after k: HISTORY_REWRITTEN at its seq if the new history
    reaches it, else TRUNCATED at the new head + 1.
[6] verify's convention for state rows: the last event that touches the row.

Run it by hand: ``.venv/bin/python -m tests.tamper_campaign --n 3000 --seed 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.log.chain import GENESIS_HASH, canonical_json, event_hash
from ledger.log.checkpoints import (
    LoadedCheckpoint,
    make_checkpoint,
    state_hash,
    verify_with_checkpoints,
)
from ledger.log.projection import project
from ledger.plans.ledger import Ledger
from ledger.plans.rules import TRANSITIONS
from ledger.storage.memory import MemoryState
from ledger.storage.rows import Event
from ledger.storage.sqlite import SqliteStore, initialise
from schema.scenario import load_scenario
from tests.support.helpers import APPEND_ONLY_TRIGGERS, EVENT_COLUMNS_IN_TABLE, SCENARIO_FILES, Cmds

KINDS = ("field_edit", "delete_row", "insert_row", "swap_rows", "truncate_tail",
         "cut_tail_rows", "rewrite_recomputed", "rollback_fork", "edit_state_row")
CHECKPOINT_EVERY = 8
RANDOM_COMMANDS = 45
NULLABLE = frozenset({"task_id", "plan_id", "item_id", "command_id"})
STATE_TABLES = {"plans": ("plan_id", "plan"), "plan_items": ("item_id", "item"),
                "plan_links": ("link_id", "link")}
CHECKED_VALUES = {"status": ("ACTIVE", "ARCHIVED"), "kind": ("TASK", "NOTE", "CHECK"),
                  "state": ("TODO", "IN_PROGRESS", "DONE", "BLOCKED"),
                  "link_type": ("DEPENDS_ON", "RELATED")}


# --- the base database -----------------------------------------------------------------


def _db_bytes(path: Path) -> bytes:
    """The database's content now (a consistent copy via the backup API)."""
    with closing(sqlite3.connect(path)) as src, closing(sqlite3.connect(":memory:")) as mem:
        src.backup(mem)
        return mem.serialize()


def _random_command(store: SqliteStore, rng: random.Random, c: Cmds, n: int) -> dict[str, Any]:
    items = store.list_items()
    plans = store.list_plans()
    actor = rng.choice(["Liam", "Mary", "Codex"])
    r = rng.random()

    def version(v: int) -> int:  # mostly right, sometimes stale: a recorded conflict
        return v if rng.random() > 0.2 else (v + 1 if v == 1 else v - 1)

    if r < 0.35 and items:
        item = rng.choice(items)
        dst = rng.choice(sorted(TRANSITIONS[item.state]))
        return c.state_change(item.item_id, version(item.version), dst, actor=actor)
    if r < 0.55 and items:
        item = rng.choice(items)
        return c.update_item(item.item_id, version(item.version),
                             {"title": f"T{n} ✓ ünï \"q\"", "priority": rng.randint(0, 5)},
                             actor=actor)
    if r < 0.7 or not items:
        plan = rng.choice(plans)
        return c.add_item(plan.plan_id, f"I-T{n}", f"Item {n}", actor=actor,
                          priority=rng.randint(0, 3))
    if r < 0.85 and len(items) >= 2:
        a = rng.choice(items)
        same = [i for i in items if i.plan_id == a.plan_id and i.item_id != a.item_id]
        if same:
            return c.add_link(f"L-T{n}", a.item_id, rng.choice(same).item_id, actor=actor,
                              link_type=rng.choice(["DEPENDS_ON", "RELATED"]))
    plan = rng.choice(plans)
    return c.update_plan(plan.plan_id, version(plan.version), {"title": f"Plan {n}"},
                         actor=actor)


@dataclass
class Base:
    """The untouched database and everything the expectations are computed from."""

    bytes_at: dict[int, bytes]  # the database's bytes when its head was at each seq
    rows: list[dict[str, Any]]  # the event rows, seq order
    checkpoints: list[LoadedCheckpoint]
    checkpoint_seqs: list[int]
    state_rows: dict[str, list[dict[str, Any]]]

    @property
    def head(self) -> int:
        return len(self.rows)

    @property
    def data(self) -> bytes:
        return self.bytes_at[self.head]


def build_base(workdir: Path, seed: int) -> Base:
    rng = random.Random(seed)
    path = workdir / "base.db"
    initialise(path)
    key = Ed25519PrivateKey.generate()
    checkpoints: list[LoadedCheckpoint] = []
    bytes_at = {0: _db_bytes(path)}
    with SqliteStore(path, durability="off") as store:
        ledger = Ledger(store)

        def after_commit() -> None:
            seq, head_hash, state = store.snapshot()
            if seq not in bytes_at:
                bytes_at[seq] = _db_bytes(path)
                if seq % CHECKPOINT_EVERY == 0:
                    sign(seq, head_hash, state)

        def sign(seq: int, head_hash: str, state: Any) -> None:
            cp = make_checkpoint(key, seq, head_hash, state_hash(state),
                                 f"2026-01-01T00:00:{seq:02d}.000000Z")
            checkpoints.append(LoadedCheckpoint(cp.file_name, cp))

        for scenario_file in SCENARIO_FILES:
            scenario = load_scenario(scenario_file)
            for step in scenario.steps:
                ledger.apply(step.command)
                after_commit()
        cmds = Cmds(session_id="S-TAMPER")
        for n in range(RANDOM_COMMANDS):
            ledger.apply(_random_command(store, rng, cmds, n))
            after_commit()
        seq, head_hash, state = store.snapshot()
        if seq % CHECKPOINT_EVERY:
            sign(seq, head_hash, state)
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY seq")]
        state_rows = {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t}")]
                      for t in STATE_TABLES}
    return Base(bytes_at, rows, checkpoints, [lc.checkpoint.seq for lc in checkpoints
                                              if lc.checkpoint], state_rows)


# --- expectations ----------------------------------------------------------------------

_WRITES = {"PLAN_CREATED": "plan", "PLAN_UPDATED": "plan", "PLAN_ITEM_ADDED": "item",
           "PLAN_ITEM_UPDATED": "item", "PLAN_ITEM_STATE_CHANGED": "item",
           "PLAN_LINK_ADDED": "link"}
_CREATES = {"PLAN_CREATED", "PLAN_ITEM_ADDED", "PLAN_LINK_ADDED"}


def _row_key(row: dict[str, Any]) -> tuple[str, str] | None:
    kind = _WRITES.get(row["event_type"])
    if kind == "plan":
        return ("plan", row["plan_id"])
    if kind == "item":
        return ("item", row["item_id"])
    if kind == "link":
        return ("link", json.loads(row["payload"])["change"]["link_id"])
    return None


def touched_upto(rows: list[dict[str, Any]], k: int) -> dict[tuple[str, str], int]:
    """verify's convention: a state row is blamed at the last event (<= k) naming it."""
    out: dict[tuple[str, str], int] = {}
    for row in rows[:k]:
        if row["plan_id"]:
            out[("plan", row["plan_id"])] = row["seq"]
        if row["item_id"]:
            out[("item", row["item_id"])] = row["seq"]
        if row["event_type"] == "PLAN_LINK_ADDED":
            out[("link", json.loads(row["payload"])["change"]["link_id"])] = row["seq"]
    return out


def cut_expected(base: Base, k: int) -> int:
    """Events after k gone, tables untouched: see note [1] of the module docstring."""
    found = {k + 1}  # the checkpoint at the old head: TRUNCATED
    created = {key: r["seq"] for r in base.rows if r["event_type"] in _CREATES
               and (key := _row_key(r)) is not None}
    touched = touched_upto(base.rows, k)
    for row in base.rows[k:]:
        key = _row_key(row)
        if key is not None:
            found.add(touched[key] if created[key] <= k else k)
    return min(found)


def first_checkpoint_from(base: Base, seq: int) -> int:
    return min(s for s in base.checkpoint_seqs if s >= seq)


# --- tampering helpers -----------------------------------------------------------------


def _mutate_text(rng: random.Random, value: str | None, nullable: bool) -> str | None:
    if value is None:
        return rng.choice(["x", "P-1", "I-001", "", "Eve"])
    choice = rng.randrange(6)
    if choice == 0 and nullable:
        return None
    if choice == 1 and value:
        i = rng.randrange(len(value))
        repl = rng.choice("0123456789abcdefXYZ ✓é\"\\{}")
        return value[:i] + repl + value[i + 1:]
    if choice == 2:
        return value + rng.choice([" ", "0", "x", "}"])
    if choice == 3 and value:
        return value[:-1]
    if choice == 4:
        return value.swapcase()
    return "".join(rng.choice("abcdef0123456789") for _ in range(max(1, len(value))))


def _update_event(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    cols = [c for c in EVENT_COLUMNS_IN_TABLE if c != "seq"]
    conn.execute(f"UPDATE events SET {', '.join(f'{c} = ?' for c in cols)} WHERE seq = ?",
                 (*(row[c] for c in cols), row["seq"]))


def _insert_event(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    cols = list(EVENT_COLUMNS_IN_TABLE)
    conn.execute(f"INSERT INTO events ({', '.join(cols)}) VALUES "
                 f"({', '.join('?' for _ in cols)})", tuple(row[c] for c in cols))


def _shift_up(conn: sqlite3.Connection, from_seq: int) -> None:
    conn.execute("UPDATE events SET seq = seq + 1000000 WHERE seq >= ?", (from_seq,))
    conn.execute("UPDATE events SET seq = seq - 999999 WHERE seq >= 1000000")


def _replay(rows: list[dict[str, Any]]) -> MemoryState:
    state = MemoryState()
    for row in rows:
        ev = Event(**row)
        project(ev, json.loads(ev.payload), state)
    return state


def _write_state(conn: sqlite3.Connection, replay: MemoryState) -> None:
    for table in STATE_TABLES:
        conn.execute(f"DELETE FROM {table}")
    for table, rows in (("plans", replay.state.plans.values()),
                        ("plan_items", replay.state.items.values()),
                        ("plan_links", replay.state.links.values())):
        for obj in rows:
            d = obj.to_dict()
            conn.execute(f"INSERT INTO {table} ({', '.join(d)}) VALUES "
                         f"({', '.join('?' for _ in d)})", tuple(d.values()))


# --- the tamperings: each edits the open connection and returns (expected seq, note) ---

Tamper = Callable[[sqlite3.Connection, Base, random.Random], tuple[int, str]]


def t_field_edit(conn: sqlite3.Connection, base: Base, rng: random.Random) -> tuple[int, str]:
    row = dict(rng.choice(base.rows))
    s = row["seq"]
    col = rng.choice(EVENT_COLUMNS_IN_TABLE)
    if col == "seq":
        new = base.head + rng.randint(1, 5)
        conn.execute("UPDATE events SET seq = ? WHERE seq = ?", (new, s))
        return s, f"seq {s} -> {new}"
    for _ in range(20):
        value = _mutate_text(rng, row[col], col in NULLABLE)
        if value == row[col]:
            continue
        try:
            conn.execute(f"UPDATE events SET {col} = ? WHERE seq = ?", (value, s))
        except sqlite3.IntegrityError:
            continue
        stored = conn.execute(f"SELECT {col} FROM events WHERE seq = ?", (s,)).fetchone()[0]
        if stored != row[col]:
            return s, f"seq {s}: {col}"
    raise RuntimeError(f"no effective edit of {col} at seq {s}")


def t_delete_row(conn: sqlite3.Connection, base: Base, rng: random.Random) -> tuple[int, str]:
    s = rng.randint(1, base.head)
    conn.execute("DELETE FROM events WHERE seq = ?", (s,))
    return (s if s < base.head else cut_expected(base, s - 1)), f"seq {s} deleted"


def t_insert_row(conn: sqlite3.Connection, base: Base, rng: random.Random) -> tuple[int, str]:
    pos = rng.randint(1, base.head + 1)
    prev = GENESIS_HASH if pos == 1 else base.rows[pos - 2]["hash"]
    if pos <= base.head:
        template = rng.choice([r for r in base.rows
                               if r["event_type"] == "PLAN_CONFLICT_DETECTED"])
        forged = {**template, "seq": pos, "event_id": f"forged-{pos}", "prev_hash": prev}
        forged["hash"] = event_hash(forged)
        _shift_up(conn, pos)
        _insert_event(conn, forged)
        # the chain breaks only where the next row no longer links; a checkpoint at pos
        # sees the forged row itself
        return (pos if pos in base.checkpoint_seqs else pos + 1), f"forged in at seq {pos}"
    item = rng.choice(base.state_rows["plan_items"])
    payload = {"action": "UPDATE_ITEM", "actor": "Eve", "change": {"title": "forged"},
               "expected_version": item["version"], "item_id": item["item_id"],
               "new_version": item["version"] + 1, "plan_id": item["plan_id"],
               "previous": {"title": item["title"]}}
    forged = {**base.rows[-1], "seq": pos, "event_id": "forged-append", "actor": "Eve",
              "event_type": "PLAN_ITEM_UPDATED", "task_id": item["item_id"],
              "plan_id": item["plan_id"], "item_id": item["item_id"],
              "command_id": "forged", "payload": canonical_json(payload), "prev_hash": prev}
    forged["hash"] = event_hash(forged)
    _insert_event(conn, forged)
    return pos, f"item update of {item['item_id']} forged at head + 1"


def t_swap_rows(conn: sqlite3.Connection, base: Base, rng: random.Random) -> tuple[int, str]:
    a, b = sorted(rng.sample(range(1, base.head + 1), 2))
    conn.execute("UPDATE events SET seq = 9999999 WHERE seq = ?", (a,))
    conn.execute("UPDATE events SET seq = ? WHERE seq = ?", (a, b))
    conn.execute("UPDATE events SET seq = ? WHERE seq = 9999999", (b,))
    return a, f"seq {a} <-> {b}"


def t_cut_tail_rows(conn: sqlite3.Connection, base: Base, rng: random.Random
                    ) -> tuple[int, str]:
    k = rng.randint(1, base.head - 1)
    conn.execute("DELETE FROM events WHERE seq > ?", (k,))
    return cut_expected(base, k), f"events after {k} deleted, tables left"


def t_rewrite_recomputed(conn: sqlite3.Connection, base: Base, rng: random.Random
                         ) -> tuple[int, str]:
    rows = [dict(r) for r in base.rows]
    s = rng.randint(1, base.head)
    row = rows[s - 1]
    col = rng.choice(["event_id", "ts", "session_id", "actor", "command_id", "payload"])
    if col == "event_id":
        row["event_id"] = f"rw-{row['event_id']}"
    elif col == "ts":
        row["ts"] = row["ts"][:-2] + ("2Z" if row["ts"].endswith("1Z") else "1Z")
    elif col == "payload":
        payload = json.loads(row["payload"])
        change = payload.get("change") or {}
        if isinstance(change.get("title"), str):
            change["title"] += " (rewritten)"
        else:
            payload["actor"] = "Eve"
        row["payload"] = canonical_json(payload)
    else:
        row[col] = (row[col] or "") + "-rw"
    prev = GENESIS_HASH if s == 1 else rows[s - 2]["hash"]
    for r in rows[s - 1:]:
        r["prev_hash"] = prev
        r["hash"] = prev = event_hash(r)
        _update_event(conn, r)
    _write_state(conn, _replay(rows))
    return first_checkpoint_from(base, s), f"seq {s}: {col}, {base.head - s + 1} rehashed"


def t_edit_state_row(conn: sqlite3.Connection, base: Base, rng: random.Random
                     ) -> tuple[int, str]:
    table = rng.choice(list(STATE_TABLES))
    if not base.state_rows[table]:
        table = "plan_items"
    row = rng.choice(base.state_rows[table])
    pk, kind = STATE_TABLES[table]
    key = (kind, row[pk])
    expected = touched_upto(base.rows, base.head)[key]
    if rng.random() < 0.15:
        conn.execute(f"DELETE FROM {table} WHERE {pk} = ?", (row[pk],))
        return expected, f"{table} {row[pk]} deleted"
    for _ in range(30):
        col = rng.choice(list(row))
        old = row[col]
        if col in CHECKED_VALUES:
            value: Any = rng.choice([v for v in CHECKED_VALUES[col] if v != old])
        elif isinstance(old, int):
            value = old + rng.choice([-1, 1, 2, 7]) if col != "version" else old + 1
        else:
            value = _mutate_text(rng, old, col in ("assigned_to", "due_ts"))
        if value == old:
            continue
        try:
            conn.execute(f"UPDATE {table} SET {col} = ? WHERE {pk} = ?", (value, row[pk]))
        except sqlite3.IntegrityError:
            continue
        new_key = row[pk] if col != pk else value
        stored = conn.execute(f"SELECT {col} FROM {table} WHERE {pk} = ?",
                              (new_key,)).fetchone()
        if stored is not None and stored[0] != old:
            return expected, f"{table} {row[pk]}: {col}"
    raise RuntimeError(f"no effective edit of {table} {row[pk]}")


TAMPERS: dict[str, Tamper] = {
    "field_edit": t_field_edit, "delete_row": t_delete_row, "insert_row": t_insert_row,
    "swap_rows": t_swap_rows, "cut_tail_rows": t_cut_tail_rows,
    "rewrite_recomputed": t_rewrite_recomputed, "edit_state_row": t_edit_state_row,
}


def _fresh(path: Path, data: bytes) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(data)


def _fork(path: Path, rng: random.Random, n: int) -> None:
    """New commands applied to a restored older copy: a forked history."""
    cmds = Cmds(session_id="S-FORK", actor="Eve")
    with SqliteStore(path, durability="off") as store:
        ledger = Ledger(store)
        plan_id = f"P-FORK-{rng.randrange(10**6)}"
        results = [ledger.apply(cmds.create_plan(plan_id, "Fork", command_id="fork-plan"))]
        results += [ledger.apply(cmds.add_item(plan_id, f"I-FORK-{i}", command_id=f"fork-{i}"))
                    for i in range(n - 1)]
        assert all(r.status == "APPLIED" for r in results), results


@dataclass
class Tally:
    tried: int = 0
    detected: int = 0
    at_right_seq: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)


def run_tamper_campaign(n: int = 3000, seed: int = 1, *,
                        workdir: Path | None = None) -> dict[str, Any]:
    """Try ``n`` random tamperings (spread evenly over KINDS); return the counts."""
    started = time.monotonic()
    shm = Path("/dev/shm")  # the copies are throwaway: keep them in memory when we can
    tmp_root = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="tamper-", dir=tmp_root) as tmp:
        work = workdir or Path(tmp)
        base = build_base(work, seed)
        rng = random.Random(seed + 1)
        case = work / "case.db"
        tallies = {kind: Tally() for kind in KINDS}
        for i in range(n):
            kind = KINDS[i % len(KINDS)]
            note = ""
            if kind in ("truncate_tail", "rollback_fork"):
                k = rng.randint(0 if kind == "rollback_fork" else 1, base.head - 1)
                _fresh(case, base.bytes_at[k])
                if kind == "truncate_tail":
                    expected, note = k + 1, f"the copy at seq {k}"
                else:
                    m = rng.randint(1, 2 * CHECKPOINT_EVERY)
                    _fork(case, rng, m)
                    new_head = k + m
                    c = min(s for s in base.checkpoint_seqs if s > k)
                    expected = c if c <= new_head else new_head + 1
                    note = f"the copy at seq {k} + {m} new events"
            else:
                _fresh(case, base.data)
                with closing(sqlite3.connect(case, isolation_level=None)) as conn:
                    conn.execute("PRAGMA synchronous=OFF")  # a throwaway copy: no fsync
                    conn.execute("PRAGMA journal_mode=MEMORY")
                    conn.execute("BEGIN")
                    for trigger in APPEND_ONLY_TRIGGERS:
                        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
                    expected, note = TAMPERS[kind](conn, base, rng)
                    conn.execute("COMMIT")
            with SqliteStore(case, readonly=True) as store:
                report = verify_with_checkpoints(store, base.checkpoints)
            tally = tallies[kind]
            tally.tried += 1
            detected = report["chain_status"] != "OK"
            first = min((m["seq"] for m in report["mismatches"]), default=None)
            right = detected and first == expected
            if kind == "rewrite_recomputed" and right:
                at = [m for m in report["mismatches"] if m["seq"] == expected]
                right = any(m.get("kind") == "HISTORY_REWRITTEN"
                            and m.get("after_seq", expected) < expected for m in at)
            tally.detected += detected
            tally.at_right_seq += right
            if not right and len(tally.failures) < 5:
                tally.failures.append({"case": i, "note": note, "expected": expected,
                                       "first_reported": first,
                                       "mismatches": report["mismatches"][:4]})
    total = Tally()
    for t in tallies.values():
        total.tried += t.tried
        total.detected += t.detected
        total.at_right_seq += t.at_right_seq
    return {
        "seed": seed, "events": base.head, "checkpoints": base.checkpoint_seqs,
        "tried": total.tried, "detected": total.detected, "at_right_seq": total.at_right_seq,
        "passed_unnoticed": total.tried - total.detected,
        "seconds": round(time.monotonic() - started, 2),
        "by_kind": {k: {"tried": t.tried, "detected": t.detected,
                        "at_right_seq": t.at_right_seq, **({"failures": t.failures}
                                                           if t.failures else {})}
                    for k, t in tallies.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.tamper_campaign",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    result = run_tamper_campaign(args.n, args.seed)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if result["tried"] == result["detected"] == result["at_right_seq"] else 1


if __name__ == "__main__":
    sys.exit(main())
