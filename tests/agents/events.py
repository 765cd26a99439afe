"""Event rows for the monitor's tests: well-formed, correctly linked, or tampered."""

from __future__ import annotations

from typing import Any

from ledger.log.chain import GENESIS_HASH, canonical_json, event_hash


def chain_rows(count: int, *, first: int = 1, prev: str = GENESIS_HASH
               ) -> list[dict[str, Any]]:
    """``count`` well-formed, correctly linked event rows starting at seq ``first``."""
    rows = []
    for seq in range(first, first + count):
        row: dict[str, Any] = {
            "seq": seq, "event_id": f"e-{seq}", "ts": "2026-01-01T00:00:00.000000Z",
            "event_type": "PLAN_ITEM_ADDED", "session_id": "S-fake", "task_id": f"I-{seq}",
            "actor": "Faker", "plan_id": "P-FAKE", "item_id": f"I-{seq}",
            "command_id": f"c-{seq}", "prev_hash": prev,
            "payload": canonical_json({"action": "ADD_ITEM", "change": {"title": f"fake {seq}"},
                                       "item_id": f"I-{seq}", "new_version": 1})}
        row["hash"] = prev = event_hash(row)
        rows.append(row)
    return rows


def tampered_rows() -> list[dict[str, Any]]:
    """Seven rows: seq 3's payload edited (hash not recomputed); seq 5 replaced by a forged
    row whose own hash is right, so the break shows as seq 6's prev_hash."""
    rows = chain_rows(7)
    rows[2] = dict(rows[2], payload=rows[2]["payload"].replace("fake 3", "forged"))
    forged = dict(rows[4], actor="Mallory")
    forged["hash"] = event_hash(forged)
    rows[4] = forged
    return rows
