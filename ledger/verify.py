"""verify_chain: check the hash chain and that the state tables equal a replay of the log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from ledger.chain import ChainReport, verify_events
from ledger.memory import MemoryState
from ledger.model import Event, State
from ledger.persistence import Store
from ledger.projection import project

#: Called once per event, in seq order, with the replayed state just after it (None once
#: the replay has failed); ledger.checkpoints uses it to hash the state at checkpoint seqs.
Observer = Callable[[Event, State | None], None]


def verify_store(store: Store, *, observe: Observer | None = None) -> dict[str, Any]:
    """The verify_chain JSON: chain_status, events, head_hash, mismatches."""
    replay = MemoryState()
    touched: dict[tuple[str, str], int] = {}
    replay_errors: list[tuple[int, str]] = []

    def replaying(events: Iterator[Event]) -> Iterator[Event]:
        for ev in events:
            yield ev
            if replay_errors:
                continue  # the state after a failed replay step means nothing
            try:
                payload = orjson.loads(ev.payload)
                project(ev, payload, replay)
            except Exception as exc:  # any malformed event is a finding, not a crash
                replay_errors.append((ev.seq, f"replay failed: {exc}"))
                continue
            for kind, key in (("plan", ev.plan_id), ("item", ev.item_id)):
                if key:
                    touched[(kind, key)] = ev.seq
            if ev.event_type == "PLAN_LINK_ADDED":
                touched[("link", payload["change"]["link_id"])] = ev.seq

    source = store.iter_events()
    if observe is not None:
        source = _observed(source, observe, replay, replay_errors)
    report: ChainReport = verify_events(replaying(source))
    for seq, reason in replay_errors:
        report.add(seq, reason)
    if report.ok:
        # Only an intact log says what the tables should hold. Comparing against the
        # replay of a broken one would blame rows the break never touched (a deleted
        # state change shows up as a mismatch at the seq of the row's previous event),
        # so the first reported seq would no longer be the first affected one.
        _compare_state(store, replay, touched, report)
    report.mismatches.sort(key=lambda m: m.seq)
    return {
        "chain_status": "OK" if report.ok else "BROKEN",
        "events": report.events,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "mismatches": [m.to_dict() for m in report.mismatches],
        "mismatch_count": report.mismatch_count,
    }


def _observed(events: Iterator[Event], observe: Observer, replay: MemoryState,
              replay_errors: list[tuple[int, str]]) -> Iterator[Event]:
    # ``replaying`` asks for the next event only after it has replayed this one, so the
    # state seen here is the state just after ``ev``.
    for ev in events:
        yield ev
        observe(ev, None if replay_errors else replay.state)


def _compare_state(store: Store, replay: MemoryState, touched: dict[tuple[str, str], int],
                   report: ChainReport) -> None:
    actual = store.load_state()
    expected = replay.state
    for kind, have, want in (("plan", actual.plans, expected.plans),
                             ("item", actual.items, expected.items),
                             ("link", actual.links, expected.links)):
        for key in sorted(set(have) | set(want)):
            a, b = have.get(key), want.get(key)
            if a == b:
                continue
            seq = touched.get((kind, key), report.head_seq)
            if a is None:
                reason = f"state: {kind} {key!r} is in the log but missing from the table"
            elif b is None:
                reason = f"state: {kind} {key!r} is in the table but not in the log"
            else:
                fields = [f for f, v in a.to_dict().items() if b.to_dict()[f] != v]
                reason = (f"state: {kind} {key!r} differs from the replayed log in "
                          f"{', '.join(fields)}")
            report.add(seq, reason)
