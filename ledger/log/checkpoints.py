"""Signed checkpoints: tamper evidence that lives outside the database.

A checkpoint says, signed with the ledger's Ed25519 key: "at time ``ts`` the log ended at
``seq`` with hash ``head_hash``, and the plans/items/links state was ``state_hash``". The
ledger writes one every few seconds when the head moved, and at shutdown, as a JSON file
in a directory outside the database, and publishes it on the event stream (CHECKPOINT).
A database that no longer agrees with a checkpoint was truncated, rolled back or
rewritten, even if every hash in it was recomputed. docs/HASH_CHAIN.md ("Signed
checkpoints") documents the exact signed bytes and the state hash.

Pure parts (no files, no sockets): :func:`state_hash`, :func:`signed_bytes`,
:func:`make_checkpoint`, :func:`verify_signature`, :func:`check_against` (what a monitor
calls for a CHECKPOINT it received) and :class:`CheckpointWatch` (the bookkeeping around
it). File and key handling: :func:`load_or_create_key`, :func:`load_public_key`,
:func:`write_checkpoint`, :func:`load_checkpoints`. Auditing a store:
:func:`verify_with_checkpoints` (bin/verify_chain --checkpoints) and the cheaper
:func:`check_heads` (no replay; for startup and health checks). The ledger process's
periodic writer: :class:`CheckpointWriter`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger.log.chain import canonical_json
from ledger.log.replay import ITEM_FIELDS, LINK_FIELDS, PLAN_FIELDS, Replay, Table
from ledger.log.verify import verify_store
from ledger.log.verify_parallel import ChainHelper
from ledger.storage.base import Store
from ledger.storage.rows import Item, Link, Plan, State
from schema.clock import utc_now
from schema.errors import CoordinatorError, ErrorCode

FORMAT: Final = "L3CHECKPOINT/1"
#: The signed fields, in the order a checkpoint file lists them (the signed bytes sort them).
SIGNED_FIELDS: Final = ("format", "seq", "head_hash", "state_hash", "ts", "key_id")
FILE_FIELDS: Final = (*SIGNED_FIELDS, "signature")
DEFAULT_KEY: Final = "keys/ledger-checkpoint.pem"
DEFAULT_DIR: Final = "data/checkpoints"
DEFAULT_EVERY: Final = 10.0
FILE_SUFFIX: Final = ".json"
_HEX = frozenset("0123456789abcdef")

log = logging.getLogger("ledger.checkpoints")


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


_COLUMNS: Final = {cls: tuple(f.name for f in fields(cls)) for cls in (Plan, Item, Link)}


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
    document = {"plans": _table_rows(plans, PLAN_FIELDS),
                "plan_items": _table_rows(items, ITEM_FIELDS),
                "plan_links": _table_rows(links, LINK_FIELDS)}
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


class CheckpointWatch:
    """A monitor's bookkeeping for CHECKPOINT messages.

    Call :meth:`event` for every delivered event (in seq order) and :meth:`checkpoint`
    for every CHECKPOINT received; each returns the results that are now decided (not
    PENDING). The hashes of the last ``keep`` events are remembered; a checkpoint older
    than that is skipped (``stats["unchecked"]``).
    """

    def __init__(self, public_key: Ed25519PublicKey | None = None, *,
                 keep: int = 100_000) -> None:
        self.public_key = public_key
        self.keep = keep
        self._hashes: OrderedDict[int, str] = OrderedDict()
        self._pending: dict[int, list[Checkpoint]] = {}
        self.last_seq = 0
        self.stats = {"checked": 0, "ok": 0, "mismatches": 0, "unchecked": 0}

    def event(self, seq: int, hash_: str) -> list[CheckResult]:
        self._hashes[seq] = hash_
        self.last_seq = max(self.last_seq, seq)
        while len(self._hashes) > self.keep:
            self._hashes.popitem(last=False)
        waiting = [c for s in sorted(self._pending) if s <= seq for c in self._pending.pop(s)]
        return [r for c in waiting if (r := self._check(c)) is not None]

    def checkpoint(self, checkpoint: Checkpoint) -> list[CheckResult]:
        result = self._check(checkpoint)
        return [] if result is None else [result]

    def _check(self, checkpoint: Checkpoint) -> CheckResult | None:
        result = check_against(checkpoint, self._hashes, public_key=self.public_key)
        if result.verdict is Verdict.PENDING:
            if checkpoint.seq <= self.last_seq:
                self.stats["unchecked"] += 1  # an event before what we remember
            else:
                self._pending.setdefault(checkpoint.seq, []).append(checkpoint)
            return None
        self.stats["checked"] += 1
        self.stats["ok" if result.ok else "mismatches"] += 1
        return result


# --- keys -------------------------------------------------------------------------------


def public_key_path(key_path: Path) -> Path:
    """``keys/x.pem`` -> ``keys/x.pub`` (the public key written beside the private one)."""
    return key_path.with_suffix(".pub") if key_path.suffix == ".pem" else Path(
        f"{key_path}.pub")


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The ledger's signing key at ``path`` (PKCS#8 PEM, unencrypted, mode 0600).

    Created on first use, with its public key written beside it (:func:`public_key_path`);
    a key file readable by group or others is refused, as ssh does.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            _write_new(path, pem, 0o600)
        except FileExistsError:  # created meanwhile by someone else: use theirs
            return load_or_create_key(path)
        log.info("created checkpoint signing key %s (key id %s)", path,
                 key_id_of(key.public_key()))
    else:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise CheckpointError(ErrorCode.KEY_INVALID,
                                  f"{path.name}: the signing key is readable by others (mode "
                                  f"{mode:04o}); chmod 600 it", field="checkpoint_key")
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(ErrorCode.KEY_INVALID,
                                  f"{path.name}: not an unencrypted PEM private key: {exc}",
                                  field="checkpoint_key") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise CheckpointError(ErrorCode.KEY_INVALID,
                                  f"{path.name}: not an Ed25519 key", field="checkpoint_key")
        key = loaded
    pub = public_key_path(path)
    if not pub.exists():
        with contextlib.suppress(FileExistsError):
            _write_new(pub, _public_pem(key.public_key()), 0o644)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (SubjectPublicKeyInfo)."""
    try:
        loaded = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise CheckpointError(ErrorCode.FILE_NOT_FOUND, f"{path.name}: {exc.strerror}",
                              field="public_key") from None
    except (ValueError, TypeError) as exc:
        raise CheckpointError(ErrorCode.KEY_INVALID, f"{path.name}: not a PEM public key: {exc}",
                              field="public_key") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise CheckpointError(ErrorCode.KEY_INVALID, f"{path.name}: not an Ed25519 public key",
                              field="public_key")
    return loaded


# --- checkpoint files -------------------------------------------------------------------


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write one checkpoint file atomically (temp file, fsync, rename, fsync the
    directory). Never overwrites: a name already taken gets a numeric suffix."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(checkpoint.to_dict(), indent=2, ensure_ascii=False) + "\n"
    stem = checkpoint.file_name[:-len(FILE_SUFFIX)]
    tmp = directory / f".{stem}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    n = 0
    while True:
        target = directory / (f"{stem}{FILE_SUFFIX}" if n == 0 else f"{stem}.{n}{FILE_SUFFIX}")
        try:
            os.link(tmp, target)  # atomic, and never replaces an existing file
            break
        except FileExistsError:
            n += 1
    tmp.unlink()
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target


@dataclass(frozen=True, slots=True)
class LoadedCheckpoint:
    """One file of a checkpoint directory: the checkpoint, or why it cannot be used."""

    name: str
    checkpoint: Checkpoint | None
    problem: CheckResult | None = None

    @property
    def usable(self) -> bool:
        return self.checkpoint is not None and self.problem is None


def _seq_from_name(name: str) -> int:
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def load_checkpoint_file(path: Path, public_key: Ed25519PublicKey | None) -> LoadedCheckpoint:
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise CheckpointError(ErrorCode.CHECKPOINT_INVALID, "not a JSON object")
        checkpoint = Checkpoint.from_dict(data, strict=True)
    except (OSError, ValueError, CoordinatorError) as exc:
        message = exc.message if isinstance(exc, CoordinatorError) else str(exc)
        return LoadedCheckpoint(path.name, None, CheckResult(
            Verdict.MALFORMED, _seq_from_name(path.name), f"not a checkpoint: {message}"))
    if public_key is not None:
        bad = verify_signature(checkpoint, public_key)
        if bad is not None:
            return LoadedCheckpoint(path.name, checkpoint,
                                    CheckResult(bad[0], checkpoint.seq, bad[1]))
    return LoadedCheckpoint(path.name, checkpoint)


def load_checkpoints(directory: Path, public_key: Ed25519PublicKey | None
                     ) -> list[LoadedCheckpoint]:
    """Every ``*.json`` file of ``directory``, parsed and signature-checked, by seq."""
    if not directory.is_dir():
        raise CheckpointError(ErrorCode.FILE_NOT_FOUND,
                              f"{directory.name}: no such checkpoint directory",
                              field="checkpoints")
    files = sorted(p for p in directory.iterdir()
                   if p.suffix == FILE_SUFFIX and not p.name.startswith("."))
    loaded = [load_checkpoint_file(p, public_key) for p in files]
    return sorted(loaded, key=lambda lc: (lc.checkpoint.seq if lc.checkpoint
                                          else _seq_from_name(lc.name), lc.name))


def newest_checkpoints(directory: Path, public_key: Ed25519PublicKey | None, n: int = 3
                       ) -> list[LoadedCheckpoint]:
    """The ``n`` highest-seq checkpoint files of ``directory`` (file names start with the
    zero-padded seq), parsed and signature-checked; [] if there is no directory. Reads
    n files however many there are: cheap enough for every start of the ledger."""
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.iterdir()
                   if p.suffix == FILE_SUFFIX and not p.name.startswith("."))
    return [load_checkpoint_file(p, public_key) for p in files[-n:]]


# --- auditing a store -------------------------------------------------------------------


def verify_with_checkpoints(store: Store, checkpoints: Sequence[LoadedCheckpoint], *,
                            directory: str | None = None, public_key_name: str | None = None,
                            key_id: str | None = None,
                            helper: ChainHelper | None = None) -> dict[str, Any]:
    """verify_store's report, plus every checkpoint compared with the database.

    One pass over the log: the chain and state checks of :func:`ledger.verify.verify_store`,
    and for each checkpoint seq the event's hash and the hash of the replayed state there.
    Each finding is added to ``mismatches`` with the checkpoint file's name, its verdict
    (``kind``) and the seq it concerns: TRUNCATED at the first missing seq (head + 1),
    HISTORY_REWRITTEN and STATE_REWRITTEN at the checkpoint's seq (the rewrite lies after
    the last checkpoint that still matches, given as ``after_seq``), BAD_SIGNATURE,
    UNKNOWN_KEY and MALFORMED at the checkpoint's seq (such a checkpoint is not compared).
    ``helper``: as for verify_store.
    """
    usable = [lc for lc in checkpoints if lc.usable]
    wanted = {lc.checkpoint.seq for lc in usable if lc.checkpoint is not None}
    hashes: dict[int, str] = {}
    states: dict[int, str | None] = {}

    def observe(seq: int, hash_: str, replay: Replay | None) -> None:
        hashes[seq] = hash_
        states[seq] = None if replay is None else tables_hash(*replay.tables())

    report = verify_store(store, observe=observe, observe_seqs=wanted, helper=helper)
    head = int(report["head_seq"])
    findings: list[dict[str, Any]] = []

    def add(name: str, result: CheckResult, **extra: Any) -> None:
        findings.append({"seq": result.seq, "reason": f"checkpoint {name}: {result.reason}",
                         "checkpoint": name, "kind": str(result.verdict), **extra})

    last_good = 0
    ok = 0
    for lc in checkpoints:
        if lc.problem is not None:
            add(lc.name, lc.problem)
            continue
        cp = lc.checkpoint
        assert cp is not None
        result = check_against(cp, hashes, head_seq=head)
        if result.verdict is Verdict.HISTORY_REWRITTEN:
            add(lc.name, CheckResult(result.verdict, result.seq,
                                     f"{result.reason} after seq {last_good} (the last "
                                     "checkpoint that still matches)"), after_seq=last_good)
            continue
        if not result.ok:
            add(lc.name, result)
            continue
        replayed = states.get(cp.seq)
        if cp.seq > 0 and replayed is None:
            add(lc.name, CheckResult(Verdict.STATE_REWRITTEN, cp.seq,
                                     f"the log up to seq {cp.seq} cannot be replayed, so its "
                                     "state cannot match the signed state hash"),
                after_seq=last_good)
            continue
        if cp.seq > 0 and replayed != cp.state_hash:
            add(lc.name, CheckResult(Verdict.STATE_REWRITTEN, cp.seq,
                                     f"the state replayed up to seq {cp.seq} hashes to "
                                     f"{str(replayed)[:16]}…, the signed state hash is "
                                     f"{cp.state_hash[:16]}…"), after_seq=last_good)
            continue
        ok += 1
        last_good = max(last_good, cp.seq)

    mismatches = list(report["mismatches"]) + findings
    mismatches.sort(key=lambda m: m["seq"])
    total = int(report["mismatch_count"]) + len(findings)
    latest = max((lc.checkpoint.seq for lc in usable if lc.checkpoint is not None), default=None)
    summary: dict[str, Any] = {
        "status": "OK" if not findings else "BROKEN", "files": len(checkpoints),
        "matching": ok, "mismatching": len(findings), "latest_seq": latest,
        "last_matching_seq": last_good if ok else None,
    }
    if directory is not None:
        summary["dir"] = directory
    if public_key_name is not None:
        summary["public_key"] = public_key_name
    if key_id is not None:
        summary["key_id"] = key_id
    return {**report, "chain_status": "OK" if total == 0 else "BROKEN",
            "mismatches": mismatches, "mismatch_count": total, "checkpoints": summary}


def check_heads(store: Store, checkpoints: Sequence[LoadedCheckpoint]
                ) -> list[tuple[str, CheckResult]]:
    """The cheap part of :func:`verify_with_checkpoints`, without the replay: each
    checkpoint's seq and head hash against the store (one point read per checkpoint).
    Returns (file name, result) for every checkpoint that does not match. Meant for a
    startup check (refuse to serve a database that a checkpoint says was rolled back or
    rewritten) and for health checks."""
    head_seq, _ = store.head()
    out: list[tuple[str, CheckResult]] = []
    for lc in checkpoints:
        if lc.problem is not None or lc.checkpoint is None:
            if lc.problem is not None:
                out.append((lc.name, lc.problem))
            continue
        cp = lc.checkpoint
        found = {ev.seq: ev.hash for ev in store.iter_events(cp.seq, cp.seq)} if cp.seq else {}
        result = check_against(cp, found, head_seq=head_seq)
        if not result.ok:
            out.append((lc.name, result))
    return out


# --- the ledger's periodic writer -------------------------------------------------------


class CheckpointWriter:
    """Writes a checkpoint every ``every`` seconds when the head moved, off the hot path.

    The ledger's main loop calls :meth:`poll` (cheap: a clock read and a queue check) and
    publishes what it returns; the snapshot, state hash, signature and file write happen
    on a worker thread. ``snapshot()`` must return (head seq, head hash, state) read in
    one read transaction, from a connection of its own (the writer's thread never waits
    for it). :meth:`close` stops the worker and writes the final checkpoint,
    synchronously, if the head moved since the last one.
    """

    def __init__(self, key: Ed25519PrivateKey, directory: Path,
                 snapshot: Callable[[], tuple[int, str, State]], *,
                 every: float = DEFAULT_EVERY, clock: Callable[[], str] = utc_now) -> None:
        self.key = key
        self.directory = directory
        self.snapshot = snapshot
        self.every = every
        self.clock = clock
        self.key_id = key_id_of(key.public_key())
        #: files written, oldest first
        self.written: list[Path] = []
        #: seq of the last checkpoint written by this process
        self.last_seq: int | None = None
        self._next_due = 0.0
        self._busy = False
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Checkpoint | Exception] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._next_due = time.monotonic() + self.every
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoints",
                                        daemon=True)
        self._thread.start()

    def poll(self, head_seq: int, now: float | None = None, *,
             wait: float = 0.0) -> list[Checkpoint]:
        """Checkpoints finished since the last call (to publish); starts one when due.
        ``wait``: block up to that many seconds for a checkpoint under way (tests)."""
        out: list[Checkpoint] = []
        while True:
            try:
                item = (self._done.get(timeout=wait) if wait > 0 and self._busy and not out
                        else self._done.get_nowait())
            except queue.Empty:
                break
            self._busy = False
            if isinstance(item, Checkpoint):
                out.append(item)
            else:
                log.error("checkpoint failed: %s", item)
        now = time.monotonic() if now is None else now
        if (self._thread is not None and not self._busy and now >= self._next_due
                and head_seq > 0 and head_seq != self.last_seq):
            self._busy = True
            self._next_due = now + self.every
            self._requests.put(True)
        return out

    def close(self, head_seq: int) -> list[Checkpoint]:
        """Stop the worker; return what it finished plus the final checkpoint, if any."""
        if self._thread is not None:
            self._requests.put(False)
            self._thread.join(timeout=30)
            self._thread = None
        out = self.poll(head_seq)
        if head_seq > 0 and head_seq != self.last_seq:
            try:
                out.append(self.write_now())
            except Exception as exc:  # a failed checkpoint must not hide the shutdown
                log.error("final checkpoint failed: %s", exc)
        return out

    def write_now(self) -> Checkpoint:
        seq, head_hash, state = self.snapshot()
        checkpoint = make_checkpoint(self.key, seq, head_hash, state_hash(state), self.clock())
        self.written.append(write_checkpoint(self.directory, checkpoint))
        self.last_seq = seq
        return checkpoint

    def _run(self) -> None:
        while self._requests.get():
            try:
                self._done.put(self.write_now())
            except Exception as exc:  # reported by poll; the ledger keeps serving
                self._done.put(exc)
