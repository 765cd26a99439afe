"""The agent client library: what any agent script imports to talk to the bus.

``AgentClient`` (blocking) and ``AsyncAgentClient`` (asyncio) speak the protocol of
broker/protocol.py over one DEALER socket. Every request carries an id (for commands,
the command_id); replies are matched by that id, so a late reply to an earlier attempt is
recognised and dropped. A request that gets no reply within ``timeout`` is re-sent with
the same id, up to ``retries`` times (zguide "Lazy Pirate"): the ledger applies a
command_id at most once, so a retry can never apply a command twice. LEDGER_UNAVAILABLE
and BUSY answers are retried the same way, after a short back-off.

With ``curve_secret`` (this agent's ``.key_secret``) and ``server_key`` (the broker's
``.key``) the socket is a CURVE client, for a broker started with ``--curve-secret``;
``actor`` must then be the name the broker allows that key under.

Replies are :class:`broker.protocol.Reply`; a command's outcome is in ``status``
(APPLIED, CONFLICT or REJECTED). Queries return their ``result`` dict or raise
:class:`ledger.errors.CoordinatorError`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from broker.security import ClientKeys
from schema import wire
from schema.endpoints import DEFAULT_FRONT
from schema.errors import CoordinatorError, ErrorCode

RETRYABLE = frozenset({str(ErrorCode.LEDGER_UNAVAILABLE), str(ErrorCode.BUSY)})


def new_id(actor: str) -> str:
    return f"{actor}:{uuid.uuid4().hex}"


def _raise_for(reply: wire.Reply) -> dict[str, Any]:
    if not reply.ok:
        err = reply.error or {}
        code = err.get("code", "INTERNAL_ERROR")
        raise CoordinatorError(ErrorCode(code) if code in ErrorCode.__members__ else
                               ErrorCode.INTERNAL_ERROR, err.get("message", "request failed"),
                               field=err.get("field"), details=err.get("details"))
    return reply.result or {}


def _retryable(reply: wire.Reply) -> bool:
    return not reply.ok and reply.status is None and (reply.error or {}).get("code") in RETRYABLE


class _Commands:
    """Command builders shared by the sync and async clients."""

    actor: str
    session_id: str

    def _command(self, action: str, command_id: str | None, fields: dict[str, Any]
                 ) -> wire.CommandMsg:
        body = {"action": action, **{k: v for k, v in fields.items() if v is not None}}
        return wire.CommandMsg(id=command_id or new_id(self.actor), actor=self.actor,
                               session_id=self.session_id, command=body)

    def _change_command(self, action: str, command_id: str | None, ids: dict[str, Any],
                        expected_version: int, change: dict[str, Any]) -> wire.CommandMsg:
        body = {"action": action, **ids, "expected_version": expected_version,
                "change": change}
        return wire.CommandMsg(id=command_id or new_id(self.actor), actor=self.actor,
                               session_id=self.session_id, command=body)


class AgentClient(_Commands):
    """A blocking client. Not thread-safe: one per thread."""

    def __init__(self, front: str = DEFAULT_FRONT, actor: str = "agent", *,
                 session_id: str | None = None, timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.05, ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
                 curve_secret: str | os.PathLike[str] | None = None,
                 server_key: str | os.PathLike[str] | None = None) -> None:
        #: CURVE keys (``curve_secret``: this agent's .key_secret, ``server_key``: the
        #: broker's .key), also for other sockets to the same broker (``curve.apply``)
        self.curve = ClientKeys.maybe(curve_secret, server_key)
        self.actor = actor
        self.session_id = session_id or f"{actor}-{uuid.uuid4().hex[:8]}"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if self.curve is not None:
            self.curve.apply(self.sock)
        self.sock.connect(front)
        self.deliveries: collections.deque[wire.Deliver] = collections.deque()
        self.stats = {"requests": 0, "resends": 0, "stale_replies": 0}

    # --- transport -------------------------------------------------------------------

    def _recv_until(self, request_id: str, deadline: float, *,
                    until_delivery: bool = False) -> wire.Reply | None:
        """Read until the reply to ``request_id`` arrives (returned) or ``deadline``
        (None); agent messages read meanwhile are queued on ``deliveries``, and with
        ``until_delivery`` the first one ends the wait (returning None)."""
        while (remaining := deadline - time.monotonic()) > 0:
            if not self.sock.poll(max(1, int(remaining * 1000))):
                return None
            msg = wire.decode(self.sock.recv_multipart(), wire.MAX_REPLY_BYTES)
            if isinstance(msg, wire.Deliver):
                self.deliveries.append(msg)
                if until_delivery:
                    return None
            elif isinstance(msg, wire.Reply) and msg.id == request_id:
                return msg
            else:
                self.stats["stale_replies"] += 1
        return None

    def request(self, msg: Any) -> wire.Reply:
        """Send ``msg`` and return its reply, re-sending with the same id on silence."""
        self.stats["requests"] += 1
        frames = wire.encode(msg)
        delay = self.backoff
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["resends"] += 1
            self.sock.send_multipart(frames)
            reply = self._recv_until(msg.id, time.monotonic() + self.timeout)
            if reply is None:
                continue
            if _retryable(reply) and attempt < self.retries:
                self._recv_until("", time.monotonic() + delay)  # back off, still reading
                delay = min(delay * 2, 1.0)
                continue
            return reply
        raise CoordinatorError(ErrorCode.TIMEOUT,
                               f"no reply to {msg.type} {msg.id} after {self.retries + 1} "
                               f"attempts of {self.timeout}s")

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plan commands ---------------------------------------------------------------

    def create_plan(self, plan_id: str, title: str, *, owner_agent: str | None = None,
                    status: str | None = None, command_id: str | None = None) -> wire.Reply:
        return self.request(self._command("CREATE_PLAN", command_id, {
            "plan_id": plan_id, "title": title, "owner_agent": owner_agent, "status": status}))

    def update_plan(self, plan_id: str, expected_version: int, *,
                    command_id: str | None = None, **change: Any) -> wire.Reply:
        return self.request(self._change_command("UPDATE_PLAN", command_id,
                                                 {"plan_id": plan_id}, expected_version, change))

    def add_item(self, plan_id: str, item_id: str, title: str, *,
                 command_id: str | None = None, **fields: Any) -> wire.Reply:
        return self.request(self._command("ADD_ITEM", command_id, {
            "plan_id": plan_id, "item_id": item_id, "title": title, **fields}))

    def update_item(self, item_id: str, expected_version: int, *,
                    command_id: str | None = None, **change: Any) -> wire.Reply:
        return self.request(self._change_command("UPDATE_ITEM", command_id,
                                                 {"item_id": item_id}, expected_version, change))

    def change_state(self, item_id: str, expected_version: int, state: str, *,
                     command_id: str | None = None) -> wire.Reply:
        return self.request(self._change_command("STATE_CHANGE", command_id,
                                                 {"item_id": item_id}, expected_version,
                                                 {"state": state}))

    def add_link(self, link_id: str, from_item_id: str, to_item_id: str,
                 link_type: str = "DEPENDS_ON", *, command_id: str | None = None) -> wire.Reply:
        return self.request(self._command("ADD_LINK", command_id, {
            "link_id": link_id, "from_item_id": from_item_id, "to_item_id": to_item_id,
            "link_type": link_type}))

    def send_command(self, command: dict[str, Any], command_id: str | None = None
                     ) -> wire.Reply:
        """Send a raw command dict (``action`` + fields), e.g. a scenario step."""
        return self.request(wire.CommandMsg(id=command_id or new_id(self.actor),
                                            actor=self.actor, session_id=self.session_id,
                                            command=command))

    def retry_on_conflict(self, item_id: str, attempt: Callable[[int], wire.Reply], *,
                          max_attempts: int = 5) -> tuple[wire.Reply, int]:
        """The usual conflict loop: read the item's version, apply, and on CONFLICT
        retry with the fresh version. Returns (last reply, conflicts met)."""
        conflicts = 0
        version = self.item_version(item_id)
        while True:
            reply = attempt(version)
            if reply.status != "CONFLICT" or conflicts + 1 >= max_attempts:
                return reply, conflicts
            conflicts += 1
            version = reply.current_version or self.item_version(item_id)

    # --- queries ---------------------------------------------------------------------

    def query(self, name: str, **params: Any) -> dict[str, Any]:
        return _raise_for(self.request(wire.Query(id=new_id(self.actor), actor=self.actor,
                                                  query=name, params=params)))

    def list_plans(self) -> list[dict[str, Any]]:
        return list(self.query("list-plans")["plans"])

    def show_plan(self, plan_id: str) -> dict[str, Any]:
        return self.query("show-plan", plan_id=plan_id)

    def list_items(self, plan_id: str) -> list[dict[str, Any]]:
        return list(self.query("list-items", plan_id=plan_id)["items"])

    def get_item(self, item_id: str) -> dict[str, Any] | None:
        item = self.query("get-item", item_id=item_id)["item"]
        return dict(item) if item else None

    def item_version(self, item_id: str) -> int:
        item = self.get_item(item_id)
        if item is None:
            raise CoordinatorError(ErrorCode.UNKNOWN_ITEM, f"no item {item_id!r}",
                                   field="item_id")
        return int(item["version"])

    def timeline(self, kind: str, value: str) -> list[dict[str, Any]]:
        """kind: session, task or plan."""
        return list(self.query(f"{kind}-timeline", **{f"{kind}_id": value})["events"])

    def replay(self, from_seq: int = 1, to_seq: int | None = None,
               limit: int = wire.MAX_REPLAY_BATCH) -> list[dict[str, Any]]:
        reply = self.request(wire.Replay(id=new_id(self.actor), actor=self.actor,
                                         from_seq=from_seq, to_seq=to_seq, limit=limit))
        return list(_raise_for(reply)["events"])

    def ping(self) -> dict[str, Any]:
        return _raise_for(self.request(wire.Ping(id=new_id(self.actor), actor=self.actor)))

    def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        """Ping until the broker reports the ledger up (a handshake, not a sleep)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.ping()
            if status.get("ledger_up"):
                return status
            if time.monotonic() >= deadline:
                raise CoordinatorError(ErrorCode.LEDGER_UNAVAILABLE,
                                       f"the ledger did not come up within {timeout}s")
            self._recv_until("", min(deadline, time.monotonic() + 0.05))

    # --- agent messages --------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """Register this connection under ``actor`` so others can SEND to it."""
        return _raise_for(self.request(wire.Hello(id=new_id(self.actor), actor=self.actor)))

    def send(self, to: str | None, kind: str, data: dict[str, Any] | None = None
             ) -> dict[str, Any]:
        return _raise_for(self.request(wire.Send(id=new_id(self.actor), actor=self.actor,
                                                 session_id=self.session_id, to=to, kind=kind,
                                                 data=data or {})))

    def receive(self, timeout: float) -> wire.Deliver | None:
        """The next agent message addressed to us, or None after ``timeout``."""
        if not self.deliveries:
            self._recv_until("", time.monotonic() + timeout, until_delivery=True)
        return self.deliveries.popleft() if self.deliveries else None


class AsyncAgentClient(_Commands):
    """The asyncio client: one reader task matches replies to waiting requests by id."""

    def __init__(self, front: str = DEFAULT_FRONT, actor: str = "agent", *,
                 session_id: str | None = None, timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.05, ctx: zmq.asyncio.Context | None = None,
                 curve_secret: str | os.PathLike[str] | None = None,
                 server_key: str | os.PathLike[str] | None = None) -> None:
        self.curve = ClientKeys.maybe(curve_secret, server_key)  # see AgentClient
        self.actor = actor
        self.session_id = session_id or f"{actor}-{uuid.uuid4().hex[:8]}"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if self.curve is not None:
            self.curve.apply(self.sock)
        self.sock.connect(front)
        self.deliveries: asyncio.Queue[wire.Deliver] = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future[wire.Reply]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.stats = {"requests": 0, "resends": 0, "stale_replies": 0}

    async def _read(self) -> None:
        while True:
            msg = wire.decode(await self.sock.recv_multipart(), wire.MAX_REPLY_BYTES)
            if isinstance(msg, wire.Deliver):
                self.deliveries.put_nowait(msg)
                continue
            future = self._waiting.get(msg.id) if isinstance(msg, wire.Reply) else None
            if future is not None and not future.done():
                future.set_result(msg)
            else:
                self.stats["stale_replies"] += 1

    async def request(self, msg: Any) -> wire.Reply:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())
        self.stats["requests"] += 1
        frames = wire.encode(msg)
        delay = self.backoff
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.stats["resends"] += 1
                future: asyncio.Future[wire.Reply] = asyncio.get_running_loop().create_future()
                self._waiting[msg.id] = future
                await self.sock.send_multipart(frames)
                try:
                    reply = await asyncio.wait_for(future, self.timeout)
                except TimeoutError:
                    continue
                if _retryable(reply) and attempt < self.retries:
                    await asyncio.sleep(delay)  # client back-off before re-sending
                    delay = min(delay * 2, 1.0)
                    continue
                return reply
        finally:
            self._waiting.pop(msg.id, None)
        raise CoordinatorError(ErrorCode.TIMEOUT,
                               f"no reply to {msg.type} {msg.id} after {self.retries + 1} "
                               f"attempts of {self.timeout}s")

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

    async def create_plan(self, plan_id: str, title: str, *, owner_agent: str | None = None,
                          command_id: str | None = None) -> wire.Reply:
        return await self.request(self._command("CREATE_PLAN", command_id, {
            "plan_id": plan_id, "title": title, "owner_agent": owner_agent}))

    async def update_plan(self, plan_id: str, expected_version: int, *,
                          command_id: str | None = None, **change: Any) -> wire.Reply:
        return await self.request(self._change_command(
            "UPDATE_PLAN", command_id, {"plan_id": plan_id}, expected_version, change))

    async def add_item(self, plan_id: str, item_id: str, title: str, *,
                       command_id: str | None = None, **fields: Any) -> wire.Reply:
        return await self.request(self._command("ADD_ITEM", command_id, {
            "plan_id": plan_id, "item_id": item_id, "title": title, **fields}))

    async def update_item(self, item_id: str, expected_version: int, *,
                          command_id: str | None = None, **change: Any) -> wire.Reply:
        return await self.request(self._change_command(
            "UPDATE_ITEM", command_id, {"item_id": item_id}, expected_version, change))

    async def change_state(self, item_id: str, expected_version: int, state: str, *,
                           command_id: str | None = None) -> wire.Reply:
        return await self.request(self._change_command(
            "STATE_CHANGE", command_id, {"item_id": item_id}, expected_version,
            {"state": state}))

    async def add_link(self, link_id: str, from_item_id: str, to_item_id: str,
                       link_type: str = "DEPENDS_ON", *, command_id: str | None = None
                       ) -> wire.Reply:
        return await self.request(self._command("ADD_LINK", command_id, {
            "link_id": link_id, "from_item_id": from_item_id, "to_item_id": to_item_id,
            "link_type": link_type}))

    async def send_command(self, command: dict[str, Any], command_id: str | None = None
                           ) -> wire.Reply:
        return await self.request(wire.CommandMsg(
            id=command_id or new_id(self.actor), actor=self.actor,
            session_id=self.session_id, command=command))

    async def query(self, name: str, **params: Any) -> dict[str, Any]:
        return _raise_for(await self.request(wire.Query(
            id=new_id(self.actor), actor=self.actor, query=name, params=params)))

    async def get_item(self, item_id: str) -> dict[str, Any] | None:
        item = (await self.query("get-item", item_id=item_id))["item"]
        return dict(item) if item else None

    async def item_version(self, item_id: str) -> int:
        item = await self.get_item(item_id)
        if item is None:
            raise CoordinatorError(ErrorCode.UNKNOWN_ITEM, f"no item {item_id!r}",
                                   field="item_id")
        return int(item["version"])

    async def retry_on_conflict(self, item_id: str,
                                attempt: Callable[[int], Awaitable[wire.Reply]], *,
                                max_attempts: int = 5) -> tuple[wire.Reply, int]:
        conflicts = 0
        version = await self.item_version(item_id)
        while True:
            reply = await attempt(version)
            if reply.status != "CONFLICT" or conflicts + 1 >= max_attempts:
                return reply, conflicts
            conflicts += 1
            version = reply.current_version or await self.item_version(item_id)

    async def replay(self, from_seq: int = 1, to_seq: int | None = None,
                     limit: int = wire.MAX_REPLAY_BATCH) -> list[dict[str, Any]]:
        reply = await self.request(wire.Replay(id=new_id(self.actor), actor=self.actor,
                                               from_seq=from_seq, to_seq=to_seq, limit=limit))
        return list(_raise_for(reply)["events"])

    async def ping(self) -> dict[str, Any]:
        return _raise_for(await self.request(wire.Ping(id=new_id(self.actor),
                                                       actor=self.actor)))

    async def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.ping()
            if status.get("ledger_up"):
                return status
            if time.monotonic() >= deadline:
                raise CoordinatorError(ErrorCode.LEDGER_UNAVAILABLE,
                                       f"the ledger did not come up within {timeout}s")
            await asyncio.sleep(0.05)  # poll interval of a readiness handshake

    async def hello(self) -> dict[str, Any]:
        return _raise_for(await self.request(wire.Hello(id=new_id(self.actor),
                                                        actor=self.actor)))

    async def send(self, to: str | None, kind: str, data: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
        return _raise_for(await self.request(wire.Send(
            id=new_id(self.actor), actor=self.actor, session_id=self.session_id, to=to,
            kind=kind, data=data or {})))

    async def receive(self, timeout: float) -> wire.Deliver | None:
        try:
            return await asyncio.wait_for(self.deliveries.get(), timeout)
        except TimeoutError:
            return None
