"""The board service: the model, the follower thread feeding it, the bus queries (PING,
QUERY verify, the task timeline) and the live subscribers, on one asyncio loop.

Everything that touches the :class:`~agents.tools.board.model.BoardModel` runs on the
loop's thread: the follower's batches are moved there with ``call_soon_threadsafe``, so
the model needs no lock, and :meth:`Board.subscribe` takes a snapshot and registers the
subscriber in one step: a subscriber gets every event after its snapshot's seq, in order,
each once. A subscriber whose queue is full (a page that stopped reading) is dropped,
never waited for (no peer can stall another); its page reconnects and starts again from a
fresh snapshot.

Read-only: the bus client here sends PING and QUERY only; the board has no way to send a
command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agents.client.aio import AsyncAgentClient
from agents.tools.board.model import FOLLOWER_FAILED, BoardModel
from agents.tools.board.pump import Batch, BoardPump
from agents.tools.monitor.follower import DEFAULT_DEAD_AFTER, DEFAULT_REQUEST_TIMEOUT
from agents.tools.monitor.output import summarise
from schema.errors import CoordinatorError

#: Messages a subscriber may have waiting before it is dropped.
QUEUE_SIZE: Final = 10_000
#: Seconds between status messages (the rate chart and the ages move with time).
STATUS_EVERY: Final = 1.0
#: Seconds between PINGs (the ledger's start-up check, the broker's head).
PING_EVERY: Final = 2.0
#: Seconds between the ledger's own verifications (QUERY verify, the whole chain: its
#: cost grows with the log, so it is asked rarely, and only when the head moved).
VERIFY_EVERY: Final = 60.0
#: How long a QUERY verify may take before it is given up (s); never retried.
VERIFY_TIMEOUT: Final = 120.0
#: Most events an item timeline returns (the newest).
TIMELINE_LIMIT: Final = 500


@dataclass(eq=False, slots=True)
class Subscription:
    """One live page: ``queue`` of ``(kind, data)`` messages, None when it is dropped."""

    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None]
    dropped: bool = False
    sent: int = field(default=0)


class Board:
    """The running board (see the module doc). Parameters: the broker's ``front`` and
    ``pub``; ``actor`` (the board's name in its requests; with CURVE, the key's identity);
    the follower's ``dead_after``, ``request_timeout``, ``checkpoint_key``; CURVE key
    paths; the loops' periods ``ping_every``, ``verify_every`` (0: never verify),
    ``status_every``; ``queue_size`` per subscriber; ``clock`` (seconds since the epoch).
    """

    def __init__(self, model: BoardModel, *, front: str, pub: str, actor: str = "board",
                 dead_after: float = DEFAULT_DEAD_AFTER,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 checkpoint_key: Ed25519PublicKey | None = None,
                 curve_secret: str | os.PathLike[str] | None = None,
                 server_key: str | os.PathLike[str] | None = None,
                 ping_every: float = PING_EVERY, verify_every: float = VERIFY_EVERY,
                 status_every: float = STATUS_EVERY, queue_size: int = QUEUE_SIZE,
                 clock: Callable[[], float] = time.time) -> None:
        self.model = model
        self.front, self.pub, self.actor = front, pub, actor
        self.ping_every, self.verify_every = ping_every, verify_every
        self.status_every, self.queue_size = status_every, queue_size
        self.clock = clock
        self.pump = BoardPump(self._post, front=front, pub=pub, actor=actor,
                              dead_after=dead_after, request_timeout=request_timeout,
                              checkpoint_key=checkpoint_key, curve_secret=curve_secret,
                              server_key=server_key)
        self.curve_secret, self.server_key = curve_secret, server_key
        self.subscribers: set[Subscription] = set()
        self.closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._client: AsyncAgentClient | None = None
        self._pump_error_seen = False

    # --- life -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = self._new_client(timeout=3.0, retries=1)
        self.pump.start()
        self._tasks = [self._loop.create_task(self._status_loop()),
                       self._loop.create_task(self._ping_loop())]
        if self.verify_every > 0:
            self._tasks.append(self._loop.create_task(self._verify_loop()))

    async def stop(self) -> None:
        self.closing = True
        for sub in list(self.subscribers):
            self._drop(sub)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(self.pump.stop)
        if self._client is not None:
            await self._client.close()

    # --- the follower's batches (pump thread -> loop) ----------------------------------

    def _post(self, batch: Batch) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.ingest, batch)

    def ingest(self, batch: Batch) -> None:
        """Apply a batch to the model and tell the subscribers (on the loop's thread)."""
        model = self.model
        health_changed = False
        applied = False
        for up in batch.connection:
            model.set_connection(up, batch.at)
            health_changed = True
        for item in batch.items:
            if "alert" in item:
                model.apply_alert(item, batch.at)
                health_changed = True
                continue
            change = model.apply_event(item, batch.at)
            if change is not None:
                applied = True
                self._broadcast("event", change)
        model.set_follow(batch.follow)
        if health_changed or applied:  # the header moves with the events, not a second later
            self._broadcast("status", model.status(self.clock()))

    # --- subscribers ------------------------------------------------------------------

    def subscribe(self) -> tuple[dict[str, Any], Subscription]:
        """A snapshot, and a subscription to every change after it (same loop step: no
        event can fall between them)."""
        sub = Subscription(asyncio.Queue(self.queue_size))
        self.subscribers.add(sub)
        return self.model.snapshot(self.clock()), sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    def _broadcast(self, kind: str, data: dict[str, Any]) -> None:
        for sub in list(self.subscribers):
            try:
                sub.queue.put_nowait((kind, data))
            except asyncio.QueueFull:
                self._drop(sub)

    def _drop(self, sub: Subscription) -> None:
        """Stop serving a subscriber: its stream ends (the page reconnects)."""
        self.subscribers.discard(sub)
        sub.dropped = True
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    # --- the bus: queries only ---------------------------------------------------------

    async def timeline(self, item_id: str) -> list[dict[str, Any]]:
        """The L2 task timeline of an item (``QUERY task-timeline``), oldest first, the
        newest :data:`TIMELINE_LIMIT` events, each with a ``summary``. Raises
        CoordinatorError (TIMEOUT, LEDGER_UNAVAILABLE, ...) when the bus cannot answer."""
        assert self._client is not None, "start() first"
        events = await self._client.timeline("task", item_id)
        return [{**e, "summary": summarise(e)} for e in events[-TIMELINE_LIMIT:]]

    def _new_client(self, *, timeout: float, retries: int) -> AsyncAgentClient:
        return AsyncAgentClient(self.front, self.actor, timeout=timeout, retries=retries,
                                curve_secret=self.curve_secret, server_key=self.server_key)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.status_every)  # the clock moves the chart and ages
            if self.pump.error is not None and not self._pump_error_seen:
                self._pump_error_seen = True
                self.model.apply_alert({"alert": FOLLOWER_FAILED,
                                        "message": f"the board's follower stopped: "
                                                   f"{self.pump.error!r}"}, self.clock())
            self._broadcast("status", self.model.status(self.clock()))

    async def _ping_loop(self) -> None:
        assert self._client is not None
        while True:
            try:
                result: dict[str, Any] | None = await self._client.ping()
                error = None
            except CoordinatorError as exc:
                result, error = None, exc.to_dict()
            self.model.set_ping(result, error, self.clock())
            await asyncio.sleep(self.ping_every)  # a poll period, not a wait for an event

    async def _verify_loop(self) -> None:
        verified_head: int | None = None
        async with self._new_client(timeout=VERIFY_TIMEOUT, retries=0) as client:
            while True:
                head = self.model.status(self.clock())["head_seq"]
                if head != verified_head:
                    try:
                        result = await client.query("verify")
                    except CoordinatorError as exc:
                        self.model.set_verify(None, exc.to_dict(), self.clock())
                    else:
                        verified_head = int(result.get("head_seq") or 0)
                        self.model.set_verify(result, None, self.clock())
                        self._broadcast("status", self.model.status(self.clock()))
                await asyncio.sleep(self.verify_every)  # a period, not a wait for an event
