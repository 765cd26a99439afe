"""The asyncio client: :class:`AsyncAgentClient`, one DEALER socket, one event loop.

Every method of :class:`agents.client.core.Requests` is mounted here by :func:`awaiting`
(the same parameters as on :class:`agents.client.AgentClient`, awaited), so the two
clients offer the same calls. One reader task reads the socket and hands each reply to
the request waiting for its id, so many requests can be in flight at once; each request
follows the :class:`~agents.client.core.LazyPirate` decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

import zmq
import zmq.asyncio

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


def awaiting(build: Callable[Concatenate[Requests, P], Call[T]]
             ) -> Callable[Concatenate[AsyncAgentClient, P], Coroutine[Any, Any, T]]:
    """``build`` (a :class:`Requests` method) as an :class:`AsyncAgentClient` coroutine
    method: send the request, await its reply, return ``Call.read`` of it."""

    @functools.wraps(build)
    async def method(client: AsyncAgentClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        call = build(client.requests, *args, **kwargs)
        return call.read(await client.request(call.msg))

    method.__dict__["__signature__"] = mounted_signature(build)
    return method


class AsyncAgentClient(ClientBase):
    """The asyncio client; the parameters are :class:`agents.client.AgentClient`'s.
    Use it from one event loop; ``async with`` closes it."""

    def __init__(self, front: str = DEFAULT_FRONT, actor: str = "agent", *,
                 session_id: str | None = None, timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.05, ctx: zmq.asyncio.Context | None = None,
                 curve_secret: str | os.PathLike[str] | None = None,
                 server_key: str | os.PathLike[str] | None = None) -> None:
        super().__init__(actor, session_id=session_id, timeout=timeout, retries=retries,
                         backoff=backoff, curve_secret=curve_secret, server_key=server_key)
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self._connect(self.sock, front)
        self.deliveries: asyncio.Queue[wire.Deliver] = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future[wire.Reply]] = {}
        self._reader: asyncio.Task[None] | None = None

    # --- transport -------------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            msg = self._decode(await self.sock.recv_multipart())
            if msg is None:
                continue
            routed = route(msg, self._waiting)
            if isinstance(routed, wire.Deliver):
                self.deliveries.put_nowait(routed)
            elif routed is not None and not (future := self._waiting[routed.id]).done():
                future.set_result(routed)
            else:
                self.stats["stale_replies"] += 1

    async def request(self, msg: Request) -> wire.Reply:
        """Send ``msg`` and return its reply, re-sending with the same id on silence and
        after a retryable refusal. Raises TIMEOUT when no attempt was answered."""
        loop = asyncio.get_running_loop()
        if self._reader is None:
            self._reader = loop.create_task(self._read())
        pirate = LazyPirate(msg, self.policy, self.stats)
        try:
            while True:
                future: asyncio.Future[wire.Reply] = loop.create_future()
                self._waiting[msg.id] = future
                await self.sock.send_multipart(pirate.frames_to_send())
                try:
                    reply: wire.Reply | None = await asyncio.wait_for(future, self.timeout)
                except TimeoutError:
                    reply = None
                decision = pirate.decide(reply)
                if isinstance(decision, Done):
                    return decision.reply
                if isinstance(decision, GiveUp):
                    raise decision.error
                if decision.delay:
                    await asyncio.sleep(decision.delay)  # client back-off before re-sending
        finally:
            self._waiting.pop(msg.id, None)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    async def __aenter__(self) -> AsyncAgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the requests (agents.client.core.Requests) -----------------------------------

    create_plan = awaiting(Requests.create_plan)
    update_plan = awaiting(Requests.update_plan)
    add_item = awaiting(Requests.add_item)
    update_item = awaiting(Requests.update_item)
    change_state = awaiting(Requests.change_state)
    add_link = awaiting(Requests.add_link)
    send_command = awaiting(Requests.send_command)
    query = awaiting(Requests.query)
    list_plans = awaiting(Requests.list_plans)
    show_plan = awaiting(Requests.show_plan)
    list_items = awaiting(Requests.list_items)
    get_item = awaiting(Requests.get_item)
    item_version = awaiting(Requests.item_version)
    timeline = awaiting(Requests.timeline)
    replay = awaiting(Requests.replay)
    ping = awaiting(Requests.ping)
    hello = awaiting(Requests.hello)
    send = awaiting(Requests.send)

    # --- loops over requests -----------------------------------------------------------

    async def retry_on_conflict(self, item_id: str,
                                attempt: Callable[[int], Awaitable[wire.Reply]], *,
                                max_attempts: int = 5) -> tuple[wire.Reply, int]:
        """As :meth:`agents.client.AgentClient.retry_on_conflict`, ``attempt`` awaited."""
        conflicts = 0
        version = await self.item_version(item_id)
        while True:
            reply = await attempt(version)
            if not retry_conflict(reply, conflicts, max_attempts):
                return reply, conflicts
            conflicts += 1
            version = reply.current_version or await self.item_version(item_id)

    async def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        """PING until the broker reports the ledger up; the PING result. Raises
        LEDGER_UNAVAILABLE after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = await self.ping()
            if ledger_ready(status, time.monotonic(), deadline, timeout):
                return status
            await asyncio.sleep(READY_POLL)  # poll interval of a readiness handshake

    async def receive(self, timeout: float) -> wire.Deliver | None:
        """The next agent message addressed to us, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.deliveries.get(), timeout)
        except TimeoutError:
            return None
