"""The board's bus follower: the monitor's :class:`~agents.tools.monitor.pump.EventFollower`
(and so its pure :class:`~agents.tools.monitor.follower.Follower`: catch-up by seq, gap
repair, duplicates dropped, hash chain and signed checkpoints checked) run in a thread of
its own, plus a ZeroMQ socket monitor on its SUB that sees the connection to the broker
drop and come back (a broker restart).

ZeroMQ sockets belong to one thread, and the web server runs an asyncio loop, so the
follower lives here and hands what it delivers to ``post`` in :class:`Batch`\\ es, in
order; the server's ``post`` moves them onto its loop (``call_soon_threadsafe``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from zmq.utils.monitor import recv_monitor_message

from agents.tools.board.model import FollowState
from agents.tools.monitor.follower import DEFAULT_DEAD_AFTER, DEFAULT_REQUEST_TIMEOUT, Alert
from agents.tools.monitor.pump import EventFollower

#: Longest wait for the follower's next item (s); the stop flag is checked this often.
TICK: Final = 0.1
#: Most items in one batch (catch-up delivers up to 1000 events per REPLAY page).
BATCH: Final = 500
#: A batch with nothing new is still posted this often (s), for the follower's counters.
IDLE_POST: Final = 1.0
#: Socket monitor events that say the SUB's connection is down (first) or up (second).
_DOWN: Final = zmq.EVENT_DISCONNECTED
_UP: Final = zmq.EVENT_HANDSHAKE_SUCCEEDED


@dataclass(frozen=True, slots=True)
class Batch:
    """What the follower handed out since the last batch, in order: event rows (dicts)
    and alerts (``Alert.to_dict()``, marked ``{"alert": ...}``); the connection changes
    seen (True: connected, False: lost), the follower's state after them, and when."""

    items: list[dict[str, Any]] = field(default_factory=list)
    connection: list[bool] = field(default_factory=list)
    follow: FollowState = field(default_factory=FollowState)
    at: float = 0.0


def follow_state(f: EventFollower) -> FollowState:
    last = f.follower.last_checkpoint
    return FollowState(last_seq=f.last_seq, head_hint=f.head_hint, caught_up=f.caught_up,
                       silent=f.silent, ledger_up=f.ledger_up,
                       checkpoint=last.to_dict() if last is not None else None,
                       checkpoint_stats=dict(f.checkpoints.stats),
                       stats=f.stats.summary())


class BoardPump(threading.Thread):
    """Follows the bus from seq 1 and calls ``post(batch)`` (from this thread) with what
    arrived. ``front``/``pub``, ``dead_after``, ``request_timeout``, ``checkpoint_key``
    and the CURVE key paths are :class:`EventFollower`'s; ``actor`` names the board in
    its requests. :meth:`stop` ends it; :attr:`error` holds what killed it, if anything.
    """

    def __init__(self, post: Callable[[Batch], None], *, front: str, pub: str,
                 actor: str = "board", dead_after: float = DEFAULT_DEAD_AFTER,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 checkpoint_key: Ed25519PublicKey | None = None,
                 curve_secret: str | os.PathLike[str] | None = None,
                 server_key: str | os.PathLike[str] | None = None) -> None:
        super().__init__(name="board-follower", daemon=True)
        self.post = post
        self.front, self.pub, self.actor = front, pub, actor
        self.dead_after, self.request_timeout = dead_after, request_timeout
        self.checkpoint_key = checkpoint_key
        self.curve_secret, self.server_key = curve_secret, server_key
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the server's status, not lost
            self.error = exc
            raise

    def _run(self) -> None:
        with EventFollower(self.front, self.pub, actor=self.actor, dead_after=self.dead_after,
                           request_timeout=self.request_timeout,
                           checkpoint_key=self.checkpoint_key, curve_secret=self.curve_secret,
                           server_key=self.server_key) as f:
            monitor = f.sub.get_monitor_socket(_DOWN | _UP)
            try:
                self._loop(f, monitor)
            finally:
                f.sub.disable_monitor()
                monitor.close(linger=0)

    def _loop(self, f: EventFollower, monitor: zmq.Socket[bytes]) -> None:
        last_state: FollowState | None = None
        last_post = 0.0
        while not self._halt.is_set():
            items: list[dict[str, Any]] = []
            item = f.next(TICK)
            while item is not None:
                items.append(item.to_dict() if isinstance(item, Alert) else item)
                if len(items) >= BATCH:
                    break
                item = f.next(0)
            connection = _connection_changes(monitor)
            state = follow_state(f)
            now = time.time()
            if items or connection or state != last_state or now - last_post >= IDLE_POST:
                self.post(Batch(items, connection, state, now))
                last_state, last_post = state, now


def _connection_changes(monitor: zmq.Socket[bytes]) -> list[bool]:
    out: list[bool] = []
    while monitor.poll(0):
        event = recv_monitor_message(monitor)["event"]
        if event == _DOWN:
            out.append(False)
        elif event == _UP:
            out.append(True)
    return out
