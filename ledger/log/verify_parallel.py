"""A helper process that takes the chain checks of part of the log off verify_store.

The chain checks of one row need only that row and the stored hash of the row before
it, so any run of rows can be checked on its own once it knows where the previous row
left off (:class:`ledger.chain.ChainWalk` with ``expected_seq`` and ``prev_hash``). The
replay cannot be split: it stays in the verifying process and goes through every event
in order.

The log is cut into chunks of :data:`CHUNK` seqs (chunk k is seqs ``k*CHUNK + 1 ..
(k+1)*CHUNK``, the last one up to the head the verifier read). The verifier, which must
replay every chunk in order, decides who checks which chain: between two batches it
hands the helper the next chunks ahead of its own position (so that the helper always
has :data:`AHEAD` of them to do), and does the chain checks of the chunks it reaches
that nobody has; of the helper's it only replays the rows. Its replay alone is faster
than the helper's chain checks, so it keeps catching up and taking a chunk itself: the
two stay busy to the end, whatever else is running on the machine. Each chunk's chain is
walked from the row before it (:class:`ChunkReport`), and the verifier adds the chunk
reports in seq order, which gives exactly what one walk over the whole log would: the
same mismatches, in the same order, under the same cap.

They share nothing but a pipe (no lock a dying helper could leave taken): if the
helper fails or dies, the verifier stops handing it chunks and checks the ones it has
no report for itself.

The helper opens the same store read-only from its locator (through
:func:`ledger.storage.factory.open_store`, any backend that can be opened from another
process) and reads the verifier's own snapshot when the backend can share one
(PostgreSQL: ``pg_export_snapshot()``, :meth:`ledger.storage.base.Store.shared_snapshot`);
otherwise (SQLite) one of its own, taken when its first chunk arrives: after the
verifier read its head, so the log being append-only, its rows up to that head are the
verifier's rows.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Final

from ledger.log.chain import ChainReport, ChainWalk
from ledger.storage.base import Locator, ReadSnapshot
from ledger.storage.factory import open_store

#: Seqs per chunk.
CHUNK: Final = 16384
#: Chunks handed to the helper and not yet reported, at most.
AHEAD: Final = 2


def chunk_bounds(k: int, chunk: int, head: int) -> tuple[int, int]:
    """(exclusive low, inclusive high) seqs of chunk ``k``."""
    return k * chunk, min((k + 1) * chunk, head)


def chunk_count(head: int, chunk: int) -> int:
    return 0 if head < 1 else (head - 1) // chunk + 1


@dataclass
class ChunkReport:
    """The chain checks of one chunk: what a :class:`ChainReport` holds."""

    chunk: int
    events: int
    head_seq: int
    head_hash: str
    mismatches: list[tuple[int, str]] = field(default_factory=list)
    mismatch_count: int = 0

    @classmethod
    def of(cls, chunk: int, report: ChainReport) -> ChunkReport:
        return cls(chunk, report.events, report.head_seq, report.head_hash,
                   [(m.seq, m.reason) for m in report.mismatches], report.mismatch_count)

    def add_to(self, report: ChainReport) -> None:
        """Add this chunk to the report of the rows before it, as if walked on from there."""
        if not self.events:
            return
        report.events += self.events
        report.head_seq = self.head_seq
        report.head_hash = self.head_hash
        for seq, reason in self.mismatches:
            report.add(seq, reason)
        report.mismatch_count += self.mismatch_count - len(self.mismatches)


def walk_after(before: tuple[int, str] | None) -> ChainWalk:
    """A walk that goes on from the row ``before`` (seq, stored hash); None: the start."""
    if before is None:
        return ChainWalk()
    return ChainWalk(expected_seq=before[0] + 1, prev_hash=before[1])


def check_chunk(snap: ReadSnapshot, k: int, chunk: int, head: int) -> ChunkReport:
    """The chain checks of chunk ``k``, going on from the row before it (the walk, like
    Store.iter_events, starts at seq 1)."""
    low, high = chunk_bounds(k, chunk, head)
    walk = walk_after(snap.row_upto(low))
    for rows in snap.event_rows(low, high):
        walk.feed(rows)
    return ChunkReport.of(k, walk.report)


def _helper_main(locator: Locator, conn: Connection) -> None:
    """The helper process: check each chunk it is sent, send back its report; None ends."""
    gc.disable()  # as in verify_store: many short-lived objects, no cycles
    try:
        with contextlib.ExitStack() as opened:
            snap: ReadSnapshot | None = None
            while (job := conn.recv()) is not None:
                k, chunk, head, token = job
                if snap is None:  # now, after the verifier has read its head
                    store = opened.enter_context(open_store(locator, readonly=True))
                    snap = opened.enter_context(store.shared_snapshot(token))
                conn.send(check_chunk(snap, k, chunk, head))
    except EOFError:  # the verifier is gone
        return
    except BaseException as exc:  # the verifier checks the chunks itself
        with contextlib.suppress(OSError):
            conn.send(repr(exc))
    finally:
        conn.close()


class ChainHelper:
    """The helper process, and the verifier's end of the pipe to it.

    ``locator``: the store to check (``store.locator``, or
    :func:`ledger.storage.factory.locate`). Start it early (before threads and database
    connections, so that it can be forked cheaply), then pass it to
    :func:`ledger.log.verify.verify_store`, which hands it work once it has read the head.
    Use as a context manager, or call :meth:`close`.

    ``held``: it gets no work before :meth:`release` (bin/verify_chain releases it when
    its integrity check is done and a core is free: the split costs some extra work,
    worth doing only on a core that would otherwise be idle).
    """

    def __init__(self, locator: Locator, *, method: str | None = None, chunk: int = CHUNK,
                 held: bool = False) -> None:
        self.chunk = chunk
        if method is None:  # fork only a process without other threads
            method = "fork" if threading.active_count() == 1 else "spawn"
        ctx: Any = multiprocessing.get_context(method)
        self._pipe, child_end = ctx.Pipe()
        self._process: BaseProcess = ctx.Process(
            target=_helper_main, args=(locator, child_end),
            name="verify-chain-helper", daemon=True)
        self._process.start()
        child_end.close()
        self._released = threading.Event()
        if not held:
            self._released.set()
        self._head = 0
        self._token: str | None = None
        self._pending = 0
        #: the chunks handed over, and the reports received
        self.assigned: list[int] = []
        self.reports: dict[int, ChunkReport] = {}
        #: why the helper stopped helping, if it did
        self.error: str | None = None

    def release(self) -> None:
        """Let a held helper have work (any thread may call this)."""
        self._released.set()

    # --- the verifier's side ------------------------------------------------------------

    def begin(self, head: int, token: str | None = None) -> None:
        """The verifier read ``head``, in the snapshot ``token`` names, if its backend
        shares snapshots (:meth:`ledger.storage.base.ReadSnapshot.export`)."""
        self._head = head
        self._token = token

    def want_work(self) -> bool:
        """Whether to hand over another chunk now (takes in the reports that came)."""
        while self.error is None and self._pending and self._pipe.poll():
            self._receive()
        return (self.error is None and self._pending < AHEAD
                and self._released.is_set())

    def assign(self, k: int) -> bool:
        """Hand over chunk ``k``; False if the helper is gone (the verifier keeps it)."""
        try:
            self._pipe.send((k, self.chunk, self._head, self._token))
        except OSError as exc:
            self.error = f"the helper process is gone ({exc})"
            return False
        self._pending += 1
        self.assigned.append(k)
        return True

    def finish(self) -> None:
        """No more work: wait for the reports of the chunks handed over (or for the
        helper to be found gone)."""
        with contextlib.suppress(OSError):
            self._pipe.send(None)
        while self.error is None and self._pending:
            self._receive()

    def _receive(self) -> None:
        try:
            item = self._pipe.recv()
        except (EOFError, OSError):
            self.error = "the helper process ended without reporting"
            return
        if isinstance(item, ChunkReport):
            self.reports[item.chunk] = item
            self._pending -= 1
        else:
            self.error = str(item)

    def close(self) -> None:
        """Stop the helper (at once if it is still busy: nobody waits for it)."""
        with contextlib.suppress(OSError):
            self._pipe.send(None)
        self._process.join(0.5 if self.error is None and not self._pending else 0.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._pipe.close()

    def __enter__(self) -> ChainHelper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
