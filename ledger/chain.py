"""The L1 hash chain as pure functions: canonical bytes, link hash, verify.

No storage, no sockets. docs/HASH_CHAIN.md documents the exact preimage; keep the two
in step (tests/test_outsider_verify.py re-verifies a database with only hashlib+json).

Preimage of an event's ``hash``: the UTF-8 bytes of the JSON object holding every
event column except ``hash`` (``payload`` as its stored text, a JSON string), keys
sorted, no whitespace, non-ASCII characters unescaped. The first event's ``prev_hash``
is :data:`GENESIS_HASH`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ledger.model import EVENT_COLUMNS, Event

GENESIS_HASH: Final = "0" * 64
HASHED_COLUMNS: Final = tuple(c for c in EVENT_COLUMNS if c != "hash")
#: How many mismatches a report lists; the total is always counted.
MAX_LISTED_MISMATCHES: Final = 100


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, no whitespace, unescaped UTF-8.

    Byte-identical to ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` for the values the ledger writes (str, int within 64 bits,
    bool, None, lists and str-keyed dicts; never floats), which is what
    docs/HASH_CHAIN.md promises; orjson just does it several times faster
    (tests/test_chain.py checks the equivalence on random values).
    """
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode("utf-8")


def preimage(fields: Mapping[str, Any]) -> bytes:
    """The exact bytes hashed for one event (all columns but ``hash``)."""
    return orjson.dumps({c: fields[c] for c in HASHED_COLUMNS}, option=orjson.OPT_SORT_KEYS)


def event_hash(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(preimage(fields)).hexdigest()


def _hash_hashed_columns(row: dict[str, Any]) -> str:
    """event_hash for a row that already holds exactly the hashed columns (the verify
    loop builds it once, so no second dict is made per event)."""
    return hashlib.sha256(orjson.dumps(row, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(slots=True)
class Mismatch:
    seq: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "reason": self.reason}


@dataclass(slots=True)
class ChainReport:
    events: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    mismatches: list[Mismatch] = field(default_factory=list)
    mismatch_count: int = 0

    @property
    def ok(self) -> bool:
        return self.mismatch_count == 0

    def add(self, seq: int, reason: str) -> None:
        self.mismatch_count += 1
        if len(self.mismatches) < MAX_LISTED_MISMATCHES:
            self.mismatches.append(Mismatch(seq, reason))


def verify_events(events: Iterable[Event]) -> ChainReport:
    """Walk events in storage order and report every broken link.

    Checks, per row: seq is previous seq + 1 (first is 1), prev_hash equals the previous
    row's stored hash (first: genesis), hash equals the hash of the row's contents, and
    payload is a JSON object. A deleted, inserted, reordered or edited row is therefore
    reported at the first seq it affects.
    """
    report = ChainReport()
    expected_seq = 1
    prev_hash = GENESIS_HASH
    for ev in events:
        report.events += 1
        row = ev.to_row()
        del row["hash"]  # the preimage is every other column
        if ev.seq != expected_seq:
            report.add(min(ev.seq, expected_seq),
                       f"sequence broken: expected seq {expected_seq}, found {ev.seq}")
        if ev.prev_hash != prev_hash:
            report.add(ev.seq, "prev_hash does not match the hash of the previous event")
        try:
            actual = _hash_hashed_columns(row)
        except (TypeError, ValueError) as exc:
            report.add(ev.seq, f"row cannot be encoded: {exc}")
            actual = ""
        if actual != ev.hash:
            report.add(ev.seq, "hash does not match the event's contents")
        try:
            if not isinstance(orjson.loads(ev.payload), dict):
                report.add(ev.seq, "payload is not a JSON object")
        except (TypeError, ValueError):
            report.add(ev.seq, "payload is not valid JSON")
        expected_seq = ev.seq + 1
        prev_hash = ev.hash
        report.head_seq = ev.seq
        report.head_hash = ev.hash
    return report
