"""What both clients hold besides their own socket handling: :class:`ClientBase`."""

from __future__ import annotations

import os
import uuid
from typing import Any

import zmq

from agents.client.core import Requests, RetryPolicy
from broker.security import ClientKeys
from schema import wire
from schema.errors import CoordinatorError


class ClientBase:
    """What both clients hold besides their socket: who they are, the retry policy, the
    CURVE keys and the counters (``requests``, ``resends``, ``stale_replies``,
    ``malformed``)."""

    def __init__(self, actor: str, *, session_id: str | None, timeout: float, retries: int,
                 backoff: float, curve_secret: str | os.PathLike[str] | None,
                 server_key: str | os.PathLike[str] | None) -> None:
        #: CURVE keys (``curve_secret``: this agent's .key_secret, ``server_key``: the
        #: broker's .key), also for other sockets to the same broker (``curve.apply``)
        self.curve = ClientKeys.maybe(curve_secret, server_key)
        self.actor = actor
        self.session_id = session_id or f"{actor}-{uuid.uuid4().hex[:8]}"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.stats = {"requests": 0, "resends": 0, "stale_replies": 0, "malformed": 0}
        self.requests = Requests(self)

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.timeout, self.retries, self.backoff)

    def _connect(self, sock: zmq.Socket[Any], front: str) -> None:
        sock.linger = 0
        if self.curve is not None:
            self.curve.apply(sock)
        sock.connect(front)

    def _decode(self, frames: list[bytes]) -> wire.BaseMessage | None:
        """A message from the broker, or None (counted in ``malformed``) if it is not one."""
        try:
            msg: wire.BaseMessage = wire.decode(frames, wire.MAX_REPLY_BYTES)
        except CoordinatorError:
            self.stats["malformed"] += 1
            return None
        return msg
