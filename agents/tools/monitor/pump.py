"""The monitor's socket pump: :class:`EventFollower` drives a :class:`Follower` with a
SUB and a DEALER (the zguide "Clone" pattern's sockets).

1. the SUB to the broker's PUB (topics ``event``, ``heartbeat``, ``checkpoint``) is
   connected *first*, so nothing published from then on can slip past unseen;
2. the DEALER to the broker's front end carries the follower's PING and REPLAY requests
   (catch-up and gap repair, pages of :data:`schema.wire.MAX_REPLAY_BATCH`);
3. what the sockets bring is decoded and fed to the :class:`Follower`, with the clock;
   its actions are performed here: requests sent, notes written to stderr, events and
   alerts queued for :meth:`EventFollower.next`.

Not thread-safe (ZeroMQ sockets belong to one thread): create and use it in one thread.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any, Final

import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agents.tools.monitor.follower import (
    DEFAULT_DEAD_AFTER,
    DEFAULT_REQUEST_TIMEOUT,
    Action,
    Alert,
    Deliver,
    Follower,
    FollowStats,
    Note,
    Send,
)
from broker.security import ClientKeys
from ledger.log.checkpoints import CheckpointWatch
from schema import wire
from schema.endpoints import DEFAULT_FRONT, DEFAULT_PUB
from schema.errors import CoordinatorError, ErrorCode, ProtocolError

DEFAULT_RCVHWM: Final = 4000
#: Messages read from the SUB socket per wake-up, so replies are never starved.
SUB_BATCH: Final = 2000
#: Longest single wait inside :meth:`EventFollower.next` (timers are checked this often).
TICK: Final = 0.1

#: What :meth:`EventFollower.next` hands out: an event row (as stored: ``payload`` is the
#: canonical JSON text) or an :class:`Alert`.
Item = dict[str, Any] | Alert


class EventFollower:
    """Events from the broker in seq order, each exactly once, hash chain checked.

    ``front``/``pub``: the broker's front end and PUB endpoint. ``from_seq``, ``live``,
    ``dead_after``, ``request_timeout``, ``actor`` and ``checkpoint_key`` are the
    :class:`Follower`'s; ``rcvhwm``: the SUB socket's receive high-water mark; CURVE
    keys as for :class:`agents.client.AgentClient`. Typical use::

        with EventFollower(bus.front, bus.pub) as follower:
            ...                       # produce events
            events = follower.collect(until_seq=7, timeout=10)

    The follow state (``last_seq``, ``head_hint``, ``stats``, ``alerts``, ``silent``,
    ``ledger_up``, ``checkpoints``, ``chain_ok``, ``caught_up``) is the follower's.
    """

    def __init__(self, front: str = DEFAULT_FRONT, pub: str = DEFAULT_PUB, *,
                 from_seq: int = 0, live: bool = False, rcvhwm: int = DEFAULT_RCVHWM,
                 dead_after: float = DEFAULT_DEAD_AFTER,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT, actor: str = "monitor",
                 ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
                 curve_secret: str | os.PathLike[str] | None = None,
                 server_key: str | os.PathLike[str] | None = None,
                 checkpoint_key: Ed25519PublicKey | None = None) -> None:
        self.follower = Follower(
            now=time.monotonic(), from_seq=from_seq, live=live, dead_after=dead_after,
            request_timeout=request_timeout, actor=actor, pub=pub,
            id_prefix=f"{actor}:{uuid.uuid4().hex[:12]}", checkpoint_key=checkpoint_key)
        self.front, self.pub = front, pub
        curve = ClientKeys.maybe(curve_secret, server_key)  # as for AgentClient
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        # SUB first (Clone pattern): whatever is published from here on reaches us or
        # shows up as a gap
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.rcvhwm = max(1, rcvhwm)
        for topic in (wire.TOPIC_EVENT, wire.TOPIC_HEARTBEAT, wire.TOPIC_CHECKPOINT):
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        if curve is not None:
            curve.apply(self.sub)
            curve.apply(self.dealer)
        self.sub.connect(pub)
        self.dealer.connect(front)
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.dealer, zmq.POLLIN)
        self._out: collections.deque[Item] = collections.deque()
        self._handed = from_seq
        self._closed = False

    # --- the follower's state ----------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self.follower.last_seq

    @property
    def head_hint(self) -> int:
        return self.follower.head_hint

    @property
    def stats(self) -> FollowStats:
        return self.follower.stats

    @property
    def alerts(self) -> list[Alert]:
        return self.follower.alerts

    @property
    def silent(self) -> bool:
        return self.follower.silent

    @property
    def ledger_up(self) -> bool | None:
        return self.follower.ledger_up

    @property
    def checkpoints(self) -> CheckpointWatch:
        return self.follower.checkpoints

    @property
    def chain_ok(self) -> bool:
        return self.follower.chain_ok

    @property
    def caught_up(self) -> bool:
        """Everything up to the last known head was delivered (or is waiting in
        :meth:`next`'s queue) and no fetch is under way."""
        return self.follower.caught_up

    @property
    def handed_seq(self) -> int:
        """The seq of the last event handed out by :meth:`next` (the start seq before)."""
        return max(self._handed, self.follower.start_seq)

    # --- public ----------------------------------------------------------------------

    def next(self, timeout: float) -> Item | None:
        """The next event (in seq order) or alert; None if none within ``timeout`` s."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if not self._out:
                self._pump(0)
            if not self._out:
                self._perform(self.follower.tick(time.monotonic()))
            if self._out:
                item = self._out.popleft()
                if isinstance(item, dict):
                    self._handed = int(item["seq"])
                return item
            now = time.monotonic()
            if now >= deadline:
                return None
            self._pump(min(deadline - now, TICK))

    def follow(self, *, idle: float | None = None, poll: float = TICK) -> Iterator[Item]:
        """Yield items as they come; stop after ``idle`` seconds without a new one once
        caught up (None: never stop; close() or break out of the loop)."""
        quiet_since = time.monotonic()
        while not self._closed:
            item = self.next(poll)
            now = time.monotonic()
            if item is not None:
                quiet_since = now
                yield item
            elif idle is not None and self.caught_up and now - quiet_since >= idle:
                return

    def collect(self, until_seq: int, timeout: float) -> list[dict[str, Any]]:
        """The next events up to and including seq ``until_seq``, in order (alerts are
        kept in :attr:`alerts`). Raises TIMEOUT if it is not reached in ``timeout`` s."""
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while self.handed_seq < until_seq:
            item = self.next(max(0.0, deadline - time.monotonic()))
            if isinstance(item, dict):
                events.append(item)
            elif item is None and time.monotonic() >= deadline:
                raise CoordinatorError(
                    ErrorCode.TIMEOUT, f"seq {until_seq} not reached in {timeout}s "
                    f"(last delivered {self.last_seq}, head seen {self.head_hint})",
                    details=self.stats.summary())
        return events

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.sub.close(linger=0)
        self.dealer.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> EventFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sockets ---------------------------------------------------------------------

    def _pump(self, wait: float) -> None:
        ready = dict(self.poller.poll(math.ceil(wait * 1000) if wait > 0 else 0))
        if self.dealer in ready:
            while True:
                try:
                    frames = self.dealer.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_dealer(frames)
        if self.sub in ready:
            for _ in range(SUB_BATCH):
                if self._out and len(self._out) >= SUB_BATCH:
                    break  # the consumer is behind: leave the rest in the socket (HWM)
                try:
                    frames = self.sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_sub(frames)

    def _on_sub(self, frames: list[bytes]) -> None:
        now = time.monotonic()
        try:
            if len(frames) != 4:
                raise ProtocolError(ErrorCode.MALFORMED_FRAME,
                                    f"expected 4 frames on the PUB stream, got {len(frames)}")
            msg = wire.decode(frames[1:])
        except CoordinatorError as exc:
            self._perform(self.follower.on_undecodable(str(exc), now))
            return
        self._perform(self.follower.on_published(frames[0], msg, now))

    def _on_dealer(self, frames: list[bytes]) -> None:
        try:
            msg = wire.decode(frames, wire.MAX_REPLY_BYTES)
        except CoordinatorError as exc:
            self._perform(self.follower.on_undecodable_reply(str(exc)))
            return
        self._perform(self.follower.on_reply(msg, time.monotonic()))

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Deliver):
                self._out.append(action.row)
            elif isinstance(action, Send):
                self.dealer.send_multipart(wire.encode(action.msg))
            elif isinstance(action, Note):
                print(f"monitor: {action.text}", file=sys.stderr)
            else:
                self._out.append(action)
