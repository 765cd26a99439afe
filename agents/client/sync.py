"""The blocking client: :class:`AgentClient`, one DEALER socket, one thread.

Every method of :class:`agents.client.core.Requests` is mounted here by :func:`blocking`
(the same parameters; it returns what the reply reads as), so this client and the
asyncio one offer the same calls. What is written here is the I/O: send, poll until the
reply with the request's id arrives or the attempt's timeout passes, and follow the
:class:`~agents.client.core.LazyPirate` decisions.
"""

from __future__ import annotations

import collections
import functools
import os
import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import zmq

from agents.client.base import ClientBase
from agents.client.core import (
    READY_POLL,
    Call,
    Done,
    GiveUp,
    LazyPirate,
    Request,
    Requests,
    ledger_ready,
    mounted_signature,
    retry_conflict,
    route,
)
from schema import wire
from schema.endpoints import DEFAULT_FRONT

P = ParamSpec("P")
T = TypeVar("T")


def blocking(build: Callable[Concatenate[Requests, P], Call[T]]
             ) -> Callable[Concatenate[AgentClient, P], T]:
    """``build`` (a :class:`Requests` method) as an :class:`AgentClient` method: send the
    request, wait for its reply, return ``Call.read`` of it."""

    @functools.wraps(build)
    def method(client: AgentClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        call = build(client.requests, *args, **kwargs)
        return call.read(client.request(call.msg))

    method.__dict__["__signature__"] = mounted_signature(build)
    return method


class AgentClient(ClientBase):
    """A blocking client. Not thread-safe: one per thread.

    ``front``: the broker's front end; ``actor``: who we are (with CURVE, the name the
    broker allows our key under); ``timeout`` (s) per attempt, ``retries`` re-sends,
    ``backoff`` (s) first pause before re-sending a LEDGER_UNAVAILABLE/BUSY refusal;
    ``curve_secret`` (our ``.key_secret``) and ``server_key`` (the broker's ``.key``) for
    a broker started with ``--curve-secret``. Agent messages that arrive while we wait
    for a reply are kept on :attr:`deliveries` for :meth:`receive`.
    """

    def __init__(self, front: str = DEFAULT_FRONT, actor: str = "agent", *,
                 session_id: str | None = None, timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.05, ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
                 curve_secret: str | os.PathLike[str] | None = None,
                 server_key: str | os.PathLike[str] | None = None) -> None:
        super().__init__(actor, session_id=session_id, timeout=timeout, retries=retries,
                         backoff=backoff, curve_secret=curve_secret, server_key=server_key)
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self._connect(self.sock, front)
        self.deliveries: collections.deque[wire.Deliver] = collections.deque()

    # --- transport -------------------------------------------------------------------

    def _recv_until(self, request_id: str, deadline: float, *,
                    until_delivery: bool = False) -> wire.Reply | None:
        """Read until the reply to ``request_id`` arrives (returned) or ``deadline``
        (None); agent messages read meanwhile are queued on ``deliveries``, and with
        ``until_delivery`` the first one ends the wait (returning None)."""
        while (remaining := deadline - time.monotonic()) > 0:
            if not self.sock.poll(max(1, int(remaining * 1000))):
                return None
            msg = self._decode(self.sock.recv_multipart())
            if msg is None:
                continue
            routed = route(msg, (request_id,))
            if isinstance(routed, wire.Deliver):
                self.deliveries.append(routed)
                if until_delivery:
                    return None
            elif routed is not None:
                return routed
            else:
                self.stats["stale_replies"] += 1
        return None

    def request(self, msg: Request) -> wire.Reply:
        """Send ``msg`` and return its reply, re-sending with the same id on silence and
        after a retryable refusal. Raises TIMEOUT when no attempt was answered."""
        pirate = LazyPirate(msg, self.policy, self.stats)
        while True:
            self.sock.send_multipart(pirate.frames_to_send())
            decision = pirate.decide(self._recv_until(msg.id, time.monotonic() + self.timeout))
            if isinstance(decision, Done):
                return decision.reply
            if isinstance(decision, GiveUp):
                raise decision.error
            if decision.delay:
                self._recv_until("", time.monotonic() + decision.delay)  # back off, reading

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the requests (agents.client.core.Requests) -----------------------------------

    create_plan = blocking(Requests.create_plan)
    update_plan = blocking(Requests.update_plan)
    add_item = blocking(Requests.add_item)
    update_item = blocking(Requests.update_item)
    change_state = blocking(Requests.change_state)
    add_link = blocking(Requests.add_link)
    send_command = blocking(Requests.send_command)
    query = blocking(Requests.query)
    list_plans = blocking(Requests.list_plans)
    show_plan = blocking(Requests.show_plan)
    list_items = blocking(Requests.list_items)
    get_item = blocking(Requests.get_item)
    item_version = blocking(Requests.item_version)
    timeline = blocking(Requests.timeline)
    replay = blocking(Requests.replay)
    ping = blocking(Requests.ping)
    hello = blocking(Requests.hello)
    send = blocking(Requests.send)

    # --- loops over requests -----------------------------------------------------------

    def retry_on_conflict(self, item_id: str, attempt: Callable[[int], wire.Reply], *,
                          max_attempts: int = 5) -> tuple[wire.Reply, int]:
        """The usual conflict loop: read the item's version, call ``attempt(version)``,
        and on CONFLICT retry with the fresh version (the reply's ``current_version``,
        else re-read), at most ``max_attempts`` tries. Returns (last reply, conflicts
        met)."""
        conflicts = 0
        version = self.item_version(item_id)
        while True:
            reply = attempt(version)
            if not retry_conflict(reply, conflicts, max_attempts):
                return reply, conflicts
            conflicts += 1
            version = reply.current_version or self.item_version(item_id)

    def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        """PING until the broker reports the ledger up (a handshake, not a sleep); the
        PING result. Raises LEDGER_UNAVAILABLE after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.ping()
            if ledger_ready(status, time.monotonic(), deadline, timeout):
                return status
            self._recv_until("", min(deadline, time.monotonic() + READY_POLL))

    def receive(self, timeout: float) -> wire.Deliver | None:
        """The next agent message addressed to us, or None after ``timeout`` seconds."""
        if not self.deliveries:
            self._recv_until("", time.monotonic() + timeout, until_delivery=True)
        return self.deliveries.popleft() if self.deliveries else None
