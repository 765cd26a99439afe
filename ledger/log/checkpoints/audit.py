"""Auditing a store against its checkpoint files.

:func:`verify_with_checkpoints` (bin/verify_chain --checkpoints) replays the whole log
once and compares every checkpoint with it; :func:`check_heads` is the cheap part without
the replay (one point read per checkpoint), for the ledger's startup and health checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.log.checkpoints.files import LoadedCheckpoint
from ledger.log.checkpoints.format import CheckResult, Verdict, check_against, tables_hash
from ledger.log.replay import Replay
from ledger.log.verify import verify_store
from ledger.log.verify_parallel import ChainHelper
from ledger.storage.base import Store


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
