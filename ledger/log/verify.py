"""verify_chain: check the hash chain and that the state tables equal a replay of the log.

One pass over the log, a batch of rows at a time: :class:`ledger.chain.ChainWalk` checks
each row's seq, link and hash and parses its payload, and :class:`ledger.replay.Replay`
applies the parsed payloads. Rows stay plain tuples (no Event per row). Everything is
read from one :meth:`ledger.storage.base.Store.read_snapshot`, so the tables compared
are the ones the log read belongs to, whatever the ledger commits meanwhile.

With a :class:`ledger.verify_parallel.ChainHelper`, a second process checks the chain of
the chunks of the log it gets to first (see that module), and this one only replays
those; the report is the same.
"""

from __future__ import annotations

import gc
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

from ledger.log.chain import ChainReport, ChainWalk, EventRow
from ledger.log.replay import (
    ITEM_FIELDS,
    LINK_FIELDS,
    PLAN_FIELDS,
    FullRows,
    Observer,
    Replay,
    Table,
)
from ledger.log.verify_parallel import (
    ChainHelper,
    ChunkReport,
    check_chunk,
    chunk_bounds,
    chunk_count,
    walk_after,
)
from ledger.storage.base import ITEMS, LINKS, PLANS, ReadSnapshot, Store
from schema.vocabulary import EventType

__all__ = ["Observer", "verify_chain_only", "verify_store"]


def _tables(snap: ReadSnapshot) -> tuple[Table, Table, Table]:
    """(plans, items, links) as read, keyed by their first value."""
    plans, items, links = ({row[0]: row for row in snap.table_rows(which)}
                           for which in (PLANS, ITEMS, LINKS))
    return plans, items, links


def _full_rows(snap: ReadSnapshot) -> FullRows:
    """The full rows for a run of short ones (the replay hands such events over)."""
    def full_rows(rows: Sequence[EventRow]) -> list[EventRow]:
        return [row for batch in snap.event_rows(rows[0][0] - 1, rows[-1][0])
                for row in batch]
    return full_rows


@contextmanager
def gc_paused() -> Iterator[None]:
    """The walk makes millions of short-lived objects and no reference cycles, while the
    replayed state grows to hundreds of thousands of rows that every full collection
    would traverse again: the cyclic collector only costs time here."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def verify_store(store: Store, *, observe: Observer | None = None,
                 observe_seqs: Collection[int] = (),
                 helper: ChainHelper | None = None) -> dict[str, Any]:
    """The verify_chain JSON: chain_status, events, head_hash, mismatches.

    ``observe`` is called for each event whose seq is in ``observe_seqs`` (in seq order,
    with the replayed state just after it); ledger.checkpoints hashes the state there.
    ``helper``: a started ChainHelper on this store, to share the chain checks with
    (used only if the log has events; the caller closes it).
    """
    with gc_paused():  # and the replay is freed before the collector is back
        return _verify_store(store, observe, observe_seqs, helper)


def _verify_store(store: Store, observe: Observer | None, observe_seqs: Collection[int],
                  helper: ChainHelper | None) -> dict[str, Any]:
    walk = ChainWalk()
    with store.read_snapshot() as snap:
        replay = Replay(observe=observe, observe_seqs=observe_seqs,
                        full_rows=_full_rows(snap))
        head = snap.head()[0] if helper is not None else 0
        if helper is not None and head >= 1:
            _walk_with(helper, snap, head, walk, replay)
        else:
            for rows in snap.event_rows():
                payloads: list[Any] = []
                walk.feed(rows, payloads)
                replay.apply(rows, payloads)
        return finish(walk.report, replay, snap)


def _walk_with(helper: ChainHelper, snap: ReadSnapshot, head: int, walk: ChainWalk,
               replay: Replay) -> None:
    """verify_store's walk, sharing the chain checks with the helper process: replay
    every chunk, check the chain of those the helper was not handed, then add up the
    chunk reports in order."""
    chunk = helper.chunk
    count = chunk_count(head, chunk)
    helper.begin(head, snap.export())  # the helper reads this very snapshot, if it can
    theirs: set[int] = set()
    ahead = 0  # the next chunk that may be handed over

    def hand_over(current: int) -> None:
        nonlocal ahead
        while helper.want_work():
            ahead = max(ahead, current + 1)
            if ahead >= count or not helper.assign(ahead):
                return
            theirs.add(ahead)
            ahead += 1

    mine: dict[int, ChunkReport] = {}
    before: tuple[int, str] | None = None  # (seq, hash) of the last row read
    loads = orjson.loads
    for k in range(count):
        hand_over(k - 1)
        low, high = chunk_bounds(k, chunk, head)
        if k not in theirs:
            part = walk_after(before)
            for rows in snap.event_rows(low, high):
                payloads: list[Any] = []
                part.feed(rows, payloads)
                replay.apply(rows, payloads)
                hand_over(k)
            mine[k] = ChunkReport.of(k, part.report)
            if part.report.events:
                before = (part.report.head_seq, part.report.head_hash)
            continue
        for rows in snap.event_rows(low, high, short=True):  # replay only
            try:
                payloads = [loads(row[4]) for row in rows]
            except (TypeError, ValueError):  # one does not parse: as ChainWalk records it
                payloads = []
                for row in rows:
                    try:
                        payloads.append(loads(row[4]))
                    except (TypeError, ValueError) as exc:
                        payloads.append(exc)
            replay.apply(rows, payloads, short=True)
            before = (rows[-1][0], rows[-1][1])
            hand_over(k)
    helper.finish()
    for k in range(count):
        report = mine.get(k) or helper.reports.get(k)
        if report is None:  # the helper failed: check that chunk here
            report = check_chunk(snap, k, chunk, head)
        report.add_to(walk.report)


def verify_chain_only(store: Store) -> ChainReport:
    """Only the chain checks of :func:`verify_store` (seq, prev_hash, hash, payload is a
    JSON object); no replay, no state comparison."""
    walk = ChainWalk()
    with gc_paused(), store.read_snapshot() as snap:
        for rows in snap.event_rows():
            walk.feed(rows)
    return walk.report


def finish(report: ChainReport, replay: Replay, snap: ReadSnapshot) -> dict[str, Any]:
    """The report, once every row has been walked and replayed."""
    if replay.error is not None:
        report.add(*replay.error)
    if report.ok:
        # Only an intact log says what the tables should hold. Comparing against the
        # replay of a broken one would blame rows the break never touched (a deleted
        # state change shows up as a mismatch at the seq of the row's previous event),
        # so the first reported seq would no longer be the first affected one.
        _compare_state(snap, replay, report)
    report.mismatches.sort(key=lambda m: m.seq)
    return {
        "chain_status": "OK" if report.ok else "BROKEN",
        "events": report.events,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "mismatches": [m.to_dict() for m in report.mismatches],
        "mismatch_count": report.mismatch_count,
    }


def _same(rows: Iterable[Sequence[Any]], want: Table) -> bool:
    """Whether a table (its rows as tuples, keyed by the first value) is exactly the
    replayed one: the quick pass that settles an intact database."""
    get = want.get
    keys = set()
    for row in rows:
        replayed = get(row[0])
        if replayed is None or row != tuple(replayed):
            return False
        keys.add(row[0])
    return len(keys) == len(want)  # so also no key twice, none missing


def _compare_state(snap: ReadSnapshot, replay: Replay, report: ChainReport) -> None:
    expected = replay.tables()
    if all(_same(snap.table_rows(which), want) for which, want in enumerate(expected)):
        return
    names = (PLAN_FIELDS, ITEM_FIELDS, LINK_FIELDS)
    actual = _tables(snap)
    differing: list[set[Any]] = []
    for have, want in zip(actual, expected, strict=True):
        keys = set(have.keys() - want.keys())
        for key, replayed in want.items():
            row = have.get(key)
            if row is None or tuple(row) != tuple(replayed):
                keys.add(key)
        differing.append(keys)
    if not any(differing):
        return
    # where to report a row: the last event that touches it (no such event: the head)
    touched = _last_touching(snap)
    for kind, fields, have, want, keys, last in zip(
            ("plan", "item", "link"), names, actual, expected, differing, touched,
            strict=True):
        for key in sorted(keys):
            a, b = have.get(key), want.get(key)
            seq = last.get(key, report.head_seq)
            if a is None:
                reason = f"state: {kind} {key!r} is in the log but missing from the table"
            elif b is None:
                reason = f"state: {kind} {key!r} is in the table but not in the log"
            else:
                which = [f for f, v, w in zip(fields, a, b, strict=True) if w != v]
                reason = (f"state: {kind} {key!r} differs from the replayed log in "
                          f"{', '.join(which)}")
            report.add(seq, reason)


def _last_touching(snap: ReadSnapshot
                   ) -> tuple[dict[Any, int], dict[Any, int], dict[Any, int]]:
    """For each plan, item and link key, the seq of the last event that touches it: its
    plan_id or item_id column, or the link a PLAN_LINK_ADDED adds. Only asked once the
    whole log replayed (so every payload parses), and only when a table differs."""
    plans: dict[Any, int] = {}
    items: dict[Any, int] = {}
    links: dict[Any, int] = {}
    for rows in snap.event_rows():
        for row in rows:  # seq, ..., event_type, ..., plan_id, item_id, _, payload, ...
            seq = row[0]
            if key := row[7]:
                plans[key] = seq
            if key := row[8]:
                items[key] = seq
            if row[3] == EventType.PLAN_LINK_ADDED:
                links[orjson.loads(row[10])["change"]["link_id"]] = seq
    return plans, items, links
