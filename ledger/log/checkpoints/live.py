"""Checkpoints of a running bus: the ledger's periodic writer and a monitor's watch.

:class:`CheckpointWriter` runs in the ledger process: it signs and writes a checkpoint
every few seconds when the head moved, and at shutdown, off the hot path.
:class:`CheckpointWatch` is a monitor's bookkeeping (pure): it matches the CHECKPOINT
messages it receives with the events it was delivered.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger.log.checkpoints.files import write_checkpoint
from ledger.log.checkpoints.format import (
    Checkpoint,
    CheckResult,
    Verdict,
    check_against,
    key_id_of,
    make_checkpoint,
    state_hash,
)
from ledger.storage.rows import State
from schema.clock import utc_now

DEFAULT_EVERY: Final = 10.0

log = logging.getLogger("ledger.checkpoints")


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
