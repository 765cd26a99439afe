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

from ledger.storage.rows import Event
from ledger.storage.rows import EventRow as EventRow
from ledger.storage.rows import event_row as event_row
from schema.vocabulary import EVENT_COLUMNS
from schema.vocabulary import GENESIS_HASH as GENESIS_HASH

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


class ChainWalk:
    """:func:`verify_events`, fed a batch of rows at a time (the verify loop's hot path).

    A walk can start in the middle of the log: ``expected_seq`` and ``prev_hash`` are then
    the seq + 1 and the stored hash of the row before the first one it is fed (a range of
    a parallel verify). Mismatches go to ``report`` in the order the rows are fed.
    """

    __slots__ = ("expected_seq", "prev_hash", "report")

    def __init__(self, *, expected_seq: int = 1, prev_hash: str = GENESIS_HASH) -> None:
        self.report = ChainReport()
        self.expected_seq = expected_seq
        self.prev_hash = prev_hash

    def feed(self, rows: Iterable[EventRow], payloads: list[Any] | None = None) -> None:
        """Check the next rows in storage order. With ``payloads``, append each row's
        parsed payload to it (or the exception parsing it raised), for the replay."""
        report = self.report
        add = report.add
        expected_seq = self.expected_seq
        prev_hash = self.prev_hash
        dumps, loads, sha256 = orjson.dumps, orjson.loads, hashlib.sha256
        sort_keys = orjson.OPT_SORT_KEYS
        keep = payloads.append if payloads is not None else None
        n = 0
        seq: Any = None
        for (seq, event_id, ts, event_type, session_id, task_id, actor, plan_id, item_id,
             command_id, payload, prev, stored) in rows:
            n += 1
            if seq != expected_seq:
                add(min(seq, expected_seq),
                    f"sequence broken: expected seq {expected_seq}, found {seq}")
            if prev != prev_hash:
                add(seq, "prev_hash does not match the hash of the previous event")
            try:
                # the preimage (docs/HASH_CHAIN.md): every column but hash, keys sorted
                actual = sha256(dumps(
                    {"actor": actor, "command_id": command_id, "event_id": event_id,
                     "event_type": event_type, "item_id": item_id, "payload": payload,
                     "plan_id": plan_id, "prev_hash": prev, "seq": seq,
                     "session_id": session_id, "task_id": task_id, "ts": ts},
                    option=sort_keys)).hexdigest()
            except (TypeError, ValueError) as exc:
                add(seq, f"row cannot be encoded: {exc}")
                actual = ""
            if actual != stored:
                add(seq, "hash does not match the event's contents")
            parsed: Any
            try:
                parsed = loads(payload)
            except (TypeError, ValueError) as exc:
                add(seq, "payload is not valid JSON")
                parsed = exc
            else:
                if not isinstance(parsed, dict):
                    add(seq, "payload is not a JSON object")
            if keep is not None:
                keep(parsed)
            expected_seq = seq + 1
            prev_hash = stored
        if n:
            report.events += n
            report.head_seq = seq
            report.head_hash = prev_hash
            self.expected_seq = expected_seq
            self.prev_hash = prev_hash


def verify_rows(rows: Iterable[EventRow]) -> ChainReport:
    """:func:`verify_events` for rows given as tuples (:data:`EventRow`)."""
    walk = ChainWalk()
    walk.feed(rows)
    return walk.report


def verify_events(events: Iterable[Event]) -> ChainReport:
    """Walk events in storage order and report every broken link.

    Checks, per row: seq is previous seq + 1 (first is 1), prev_hash equals the previous
    row's stored hash (first: genesis), hash equals the hash of the row's contents, and
    payload is a JSON object. A deleted, inserted, reordered or edited row is therefore
    reported at the first seq it affects.
    """
    return verify_rows(event_row(ev) for ev in events)
