"""The checkpoint format, its state hash and signature, and comparing one with a log.

Pure: no files, no sockets, no store. A checkpoint says, signed with the ledger's Ed25519
key: "at time ``ts`` the log ended at ``seq`` with hash ``head_hash``, and the
plans/items/links state was ``state_hash``". docs/HASH_CHAIN.md ("Signed checkpoints")
documents the exact signed bytes (:func:`signed_bytes`) and the state hash
(:func:`state_hash`). :func:`check_against` is what a monitor calls for a CHECKPOINT it
received, and what the audit calls for each checkpoint file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger.log.chain import canonical_json
from ledger.log.replay import Table
from ledger.storage.rows import Item, Link, Plan, State
from schema.errors import CoordinatorError, ErrorCode
from schema.vocabulary import ITEM_COLUMNS, LINK_COLUMNS, PLAN_COLUMNS

FORMAT: Final = "L3CHECKPOINT/1"
#: The signed fields, in the order a checkpoint file lists them (the signed bytes sort them).
SIGNED_FIELDS: Final = ("format", "seq", "head_hash", "state_hash", "ts", "key_id")
FILE_FIELDS: Final = (*SIGNED_FIELDS, "signature")
FILE_SUFFIX: Final = ".json"
_HEX = frozenset("0123456789abcdef")


class CheckpointError(CoordinatorError):
    """A checkpoint file or key that cannot be used."""


class Verdict(StrEnum):
    """What comparing one checkpoint with a log found."""

    OK = "OK"
    #: the checker has not seen the event at the checkpoint's seq yet (monitors only)
    PENDING = "PENDING"
    #: the log ends before the checkpoint's seq: a cut-off tail or a rolled-back database
    TRUNCATED = "TRUNCATED"
    #: the event at the checkpoint's seq has another hash: the history was rewritten
    HISTORY_REWRITTEN = "HISTORY_REWRITTEN"
    #: the replayed state at the checkpoint's seq hashes differently
    STATE_REWRITTEN = "STATE_REWRITTEN"
    #: the signature does not verify with the trusted public key
    BAD_SIGNATURE = "BAD_SIGNATURE"
    #: signed (or claiming to be signed) by another key than the trusted one
    UNKNOWN_KEY = "UNKNOWN_KEY"
    #: not a checkpoint file (bad JSON, missing or extra fields, wrong types)
    MALFORMED = "MALFORMED"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    head_hash: str
    state_hash: str
    ts: str
    key_id: str
    signature: str = ""
    format: str = FORMAT

    def signed_fields(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in SIGNED_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in FILE_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, strict: bool = False) -> Checkpoint:
        """Build from a file's JSON object or a CHECKPOINT message's fields.

        ``strict`` (files): no other keys allowed. Otherwise keys other than the
        checkpoint's (a message's type, id, actor, session_id) are ignored.
        """
        missing = [f for f in FILE_FIELDS if f not in data]
        if missing:
            raise CheckpointError(ErrorCode.CHECKPOINT_INVALID,
                                  f"missing field(s): {', '.join(missing)}", field=missing[0])
        if strict:
            extra = sorted(set(data) - set(FILE_FIELDS))
            if extra:
                raise CheckpointError(ErrorCode.CHECKPOINT_INVALID,
                                      f"unknown field(s): {', '.join(map(str, extra))}",
                                      field=str(extra[0]))
        seq = data["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise CheckpointError(ErrorCode.CHECKPOINT_INVALID,
                                  "seq must be a non-negative integer", field="seq")
        for name in ("head_hash", "state_hash", "ts", "key_id", "signature", "format"):
            if not isinstance(data[name], str):
                raise CheckpointError(ErrorCode.CHECKPOINT_INVALID, f"{name} must be a string",
                                      field=name)
        if data["format"] != FORMAT:
            raise CheckpointError(ErrorCode.CHECKPOINT_INVALID,
                                  f"format {data['format']!r} is not {FORMAT!r}", field="format")
        return cls(seq=seq, head_hash=data["head_hash"], state_hash=data["state_hash"],
                   ts=data["ts"], key_id=data["key_id"], signature=data["signature"])

    @property
    def file_name(self) -> str:
        """``<seq, 12 digits>-<ts without punctuation>.json``: sorts by seq, then time."""
        stamp = "".join(ch for ch in self.ts if ch.isalnum())
        return f"{self.seq:012d}-{stamp}{FILE_SUFFIX}"


# --- pure functions ---------------------------------------------------------------------


_COLUMNS: Final = {Plan: PLAN_COLUMNS, Item: ITEM_COLUMNS, Link: LINK_COLUMNS}


def _rows(table: Mapping[str, Plan | Item | Link]) -> list[dict[str, Any]]:
    out = []
    for key in sorted(table):
        row = table[key]
        out.append({c: getattr(row, c) for c in _COLUMNS[type(row)]})
    return out


def _table_rows(table: Table, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    return [dict(zip(columns, table[key], strict=True)) for key in sorted(table)]


def state_document(state: State) -> dict[str, list[dict[str, Any]]]:
    """The state as the hash sees it: each table's rows as column -> value objects
    (every column), sorted by primary key."""
    return {"plans": _rows(state.plans), "plan_items": _rows(state.items),
            "plan_links": _rows(state.links)}


def tables_hash(plans: Table, items: Table, links: Table) -> str:
    """:func:`state_hash` of a state given as tables (primary key -> the row's values in
    field order), as verify's replay keeps it."""
    document = {"plans": _table_rows(plans, PLAN_COLUMNS),
                "plan_items": _table_rows(items, ITEM_COLUMNS),
                "plan_links": _table_rows(links, LINK_COLUMNS)}
    return hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()


def state_hash(state: State) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`state_document`.

    Equal to ``sha256(json.dumps({"plans": [...], "plan_items": [...], "plan_links":
    [...]}, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())`` where
    each list holds the table's rows as column -> value objects, sorted by primary key.
    """
    return hashlib.sha256(canonical_json(state_document(state)).encode("utf-8")).hexdigest()


def signed_bytes(checkpoint: Checkpoint) -> bytes:
    """The exact bytes the Ed25519 signature covers: the canonical JSON (sorted keys, no
    whitespace, UTF-8) of the six fields format, seq, head_hash, state_hash, ts, key_id."""
    return canonical_json(checkpoint.signed_fields()).encode("utf-8")


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def make_checkpoint(key: Ed25519PrivateKey, seq: int, head_hash: str, state_digest: str,
                    ts: str) -> Checkpoint:
    unsigned = Checkpoint(seq=seq, head_hash=head_hash, state_hash=state_digest, ts=ts,
                          key_id=key_id_of(key.public_key()))
    signature = key.sign(signed_bytes(unsigned)).hex()
    return Checkpoint(seq=seq, head_hash=head_hash, state_hash=state_digest, ts=ts,
                      key_id=unsigned.key_id, signature=signature)


def verify_signature(checkpoint: Checkpoint, public_key: Ed25519PublicKey
                     ) -> tuple[Verdict, str] | None:
    """None when ``checkpoint`` is signed by ``public_key``; else (verdict, reason)."""
    expected = key_id_of(public_key)
    if checkpoint.key_id != expected:
        return Verdict.UNKNOWN_KEY, (f"signed by key {checkpoint.key_id!r}, not by the trusted "
                                     f"key {expected!r}")
    sig = checkpoint.signature
    if len(sig) != 128 or not set(sig) <= _HEX:
        return Verdict.BAD_SIGNATURE, "the signature is not 64 bytes of lowercase hex"
    try:
        public_key.verify(bytes.fromhex(sig), signed_bytes(checkpoint))
    except InvalidSignature:
        return Verdict.BAD_SIGNATURE, "the signature does not verify: the checkpoint was altered"
    return None


@dataclass(frozen=True, slots=True)
class CheckResult:
    verdict: Verdict
    seq: int
    reason: str

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": str(self.verdict), "seq": self.seq, "reason": self.reason}


def check_against(checkpoint: Checkpoint,
                  hash_at_seq: Callable[[int], str | None] | Mapping[int, str], *,
                  public_key: Ed25519PublicKey | None = None,
                  head_seq: int | None = None) -> CheckResult:
    """Compare one checkpoint with the events a checker has seen.

    ``hash_at_seq(seq)`` (or a mapping) gives the hash of the event at ``seq`` as the
    checker saw it, None if it has not. ``public_key``: also check the signature (a
    checkpoint that fails it is not compared). ``head_seq``: the last seq the log has;
    a checkpoint beyond it is TRUNCATED (without it, such a checkpoint is PENDING).

    For a monitor: keep the hash of each delivered event (or use :class:`CheckpointWatch`)
    and call this for every CHECKPOINT message; PENDING means "ask again once the event
    at that seq has been delivered".
    """
    seq = checkpoint.seq
    if public_key is not None:
        bad = verify_signature(checkpoint, public_key)
        if bad is not None:
            return CheckResult(bad[0], seq, bad[1])
    if seq == 0:
        return CheckResult(Verdict.OK, 0, "checkpoint of the empty log")
    lookup = hash_at_seq.get if isinstance(hash_at_seq, Mapping) else hash_at_seq
    seen = lookup(seq)
    if seen is None:
        if head_seq is None:
            return CheckResult(Verdict.PENDING, seq, f"event {seq} not seen yet")
        if seq > head_seq:
            return CheckResult(Verdict.TRUNCATED, head_seq + 1,
                               f"signed head is seq {seq} but the log ends at seq {head_seq}: "
                               "a cut-off tail or a rolled-back database")
        return CheckResult(Verdict.HISTORY_REWRITTEN, seq, f"the log has no event at seq {seq}")
    if seen != checkpoint.head_hash:
        return CheckResult(Verdict.HISTORY_REWRITTEN, seq,
                           f"the event at seq {seq} has hash {seen[:16]}…, the signed head "
                           f"hash is {checkpoint.head_hash[:16]}…: the history was rewritten")
    return CheckResult(Verdict.OK, seq, "matches")
