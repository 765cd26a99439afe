"""The request core both clients share: everything but the sockets and the waiting.

:class:`Requests` builds every request a client makes as a :class:`Call` (the message,
plus how to read its reply); :class:`LazyPirate` makes the retry decisions of one request
(zguide chapter 4, "Client-Side Reliability (Lazy Pirate Pattern)"): re-send with the
same id on silence, back off and re-send on a retryable refusal, give up after
``retries`` re-sends. :func:`result_of` maps an error reply to
:class:`schema.errors.CoordinatorError`; :func:`route` sorts what arrives on the socket.

Nothing here touches a socket or reads the clock (it imports neither zmq nor any module
that does: an import contract in pyproject.toml): ``agents.client.sync`` (blocking) and
``agents.client.aio`` (asyncio) run the same decisions with their own I/O, so the two
clients cannot drift apart.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from schema import wire
from schema.errors import CoordinatorError, ErrorCode

#: Error codes that mean "the bus could not decide now", not "no": a request refused
#: with one of them (and no ``status``) is re-sent after a back-off.
RETRYABLE: Final = frozenset({str(ErrorCode.LEDGER_UNAVAILABLE), str(ErrorCode.BUSY)})
#: Longest back-off between two re-sends of a refused request (s); it doubles from
#: ``backoff`` up to this.
MAX_BACKOFF: Final = 1.0
#: How often ``wait_ready`` asks again while the ledger is down (s).
READY_POLL: Final = 0.05

#: What a client sends: every request type of the public protocol (docs/PROTOCOL.md).
Request = wire.Hello | wire.Ping | wire.CommandMsg | wire.Query | wire.Replay | wire.Send
T = TypeVar("T")


def new_id(actor: str) -> str:
    """A fresh request id, ``<actor>:<32 hex digits>`` (a command's command_id)."""
    return f"{actor}:{uuid.uuid4().hex}"


def result_of(reply: wire.Reply) -> dict[str, Any]:
    """The ``result`` of a successful reply ({} if it has none).

    Raises :class:`CoordinatorError` with the reply's error code, message, field and
    details when ``ok`` is false; a code this client does not know becomes
    INTERNAL_ERROR (the message is kept).
    """
    if not reply.ok:
        err = reply.error or {}
        code = err.get("code", "INTERNAL_ERROR")
        raise CoordinatorError(ErrorCode(code) if code in ErrorCode.__members__ else
                               ErrorCode.INTERNAL_ERROR, err.get("message", "request failed"),
                               field=err.get("field"), details=err.get("details"))
    return reply.result or {}


def is_retryable(reply: wire.Reply) -> bool:
    """A refusal by the bus itself (no ``status``) whose code is in :data:`RETRYABLE`."""
    return not reply.ok and reply.status is None and (reply.error or {}).get("code") in RETRYABLE


def route(msg: wire.BaseMessage, waiting: Container[str]) -> wire.Deliver | wire.Reply | None:
    """Sort a message read from the DEALER: an agent message (queued for ``receive``),
    the reply to a request in ``waiting``, or None for anything else: an answer to an
    attempt given up on, or a message a client never expects (dropped, counted stale)."""
    if isinstance(msg, wire.Deliver):
        return msg
    if isinstance(msg, wire.Reply) and msg.id in waiting:
        return msg
    return None


# --- Lazy Pirate: the decisions of one request ------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``timeout``: seconds to wait for each attempt's reply; ``retries``: re-sends after
    the first attempt; ``backoff``: first pause (s) before re-sending a refused request."""

    timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.05


@dataclass(frozen=True, slots=True)
class Resend:
    """Send the request again (same id) after reading for ``delay`` seconds (0: now)."""

    delay: float


@dataclass(frozen=True, slots=True)
class Done:
    """The request is answered: return ``reply`` (a retryable refusal, once the retries
    are spent, is returned too: its ``status`` is None)."""

    reply: wire.Reply


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No reply to any attempt: raise ``error`` (TIMEOUT)."""

    error: CoordinatorError


Decision = Resend | Done | GiveUp


class LazyPirate:
    """The retry decisions of one request; the caller does the I/O::

        pirate = LazyPirate(msg, policy, stats)
        while True:
            send(pirate.frames_to_send())
            decision = pirate.decide(reply_within(policy.timeout))   # None: silence
            ...                                                     # Done / GiveUp / Resend

    Re-sending with the same id is safe because the ledger applies a command_id at most
    once (a re-sent command gets the recorded outcome, ``replayed`` true). ``stats``
    (the client's counters) gets ``requests`` and ``resends`` counted.
    """

    def __init__(self, msg: Request, policy: RetryPolicy, stats: dict[str, int]) -> None:
        self.msg = msg
        self.policy = policy
        self.frames = wire.encode(msg)
        self.attempts = 0
        self._stats = stats
        self._delay = policy.backoff
        stats["requests"] += 1

    def frames_to_send(self) -> list[bytes]:
        """The frames of the next attempt (counted)."""
        if self.attempts:
            self._stats["resends"] += 1
        self.attempts += 1
        return self.frames

    @property
    def last_attempt(self) -> bool:
        return self.attempts > self.policy.retries

    def decide(self, reply: wire.Reply | None) -> Decision:
        """What to do after an attempt got ``reply`` (None: nothing within the timeout)."""
        if reply is None:
            if self.last_attempt:
                return GiveUp(CoordinatorError(
                    ErrorCode.TIMEOUT, f"no reply to {self.msg.type} {self.msg.id} after "
                    f"{self.attempts} attempts of {self.policy.timeout}s"))
            return Resend(0.0)
        if is_retryable(reply) and not self.last_attempt:
            delay, self._delay = self._delay, min(self._delay * 2, MAX_BACKOFF)
            return Resend(delay)
        return Done(reply)


def retry_conflict(reply: wire.Reply, conflicts: int, max_attempts: int) -> bool:
    """``retry_on_conflict``'s decision: try again (with the fresh version) after
    ``reply``, ``conflicts`` conflicts met before it, at most ``max_attempts`` tries."""
    return reply.status == "CONFLICT" and conflicts + 1 < max_attempts


def ledger_ready(status: dict[str, Any], now: float, deadline: float, timeout: float) -> bool:
    """``wait_ready``'s decision on a PING result: True when the broker reports the ledger
    up, False to ask again; raises LEDGER_UNAVAILABLE once ``deadline`` has passed."""
    if status.get("ledger_up"):
        return True
    if now >= deadline:
        raise CoordinatorError(ErrorCode.LEDGER_UNAVAILABLE,
                               f"the ledger did not come up within {timeout}s")
    return False


# --- the requests -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request: the message to send and how to read its reply into the method's
    return value (which may raise :class:`CoordinatorError`)."""

    msg: Request
    read: Callable[[wire.Reply], T]


def _reply(reply: wire.Reply) -> wire.Reply:
    return reply


def _field(name: str) -> Callable[[wire.Reply], Any]:
    return lambda reply: result_of(reply)[name]


def _rows(name: str) -> Callable[[wire.Reply], list[dict[str, Any]]]:
    return lambda reply: list(result_of(reply)[name])


def _item(reply: wire.Reply) -> dict[str, Any] | None:
    item = result_of(reply)["item"]
    return dict(item) if item else None


class Identity(Protocol):
    """Who sends: the header fields every request carries."""

    actor: str
    session_id: str


class Requests:
    """Every request of the client API, built once for both clients.

    Each method returns a :class:`Call`; ``AgentClient.<method>`` sends it and returns
    what ``Call.read`` makes of the reply, ``AsyncAgentClient.<method>`` awaits the same.
    Commands return the :class:`schema.wire.Reply` (outcome in ``status``: APPLIED,
    CONFLICT, REJECTED; None when the bus refused it); queries return their result or
    raise :class:`CoordinatorError` with the reply's error code.

    ``self`` is positional-only where a method takes ``**fields``: the clients mount
    these methods with their parameters (``typing.ParamSpec``), which must not let a
    field named ``self`` through.
    """

    def __init__(self, who: Identity) -> None:
        self._who = who

    # --- plan commands ---------------------------------------------------------------

    def _command(self, command_id: str | None, body: dict[str, Any]) -> Call[wire.Reply]:
        who = self._who
        return Call(wire.CommandMsg(id=command_id or new_id(who.actor), actor=who.actor,
                                    session_id=who.session_id, command=body), _reply)

    def _fields(self, action: str, command_id: str | None, fields: dict[str, Any]
                ) -> Call[wire.Reply]:
        return self._command(command_id, {"action": action, **{
            k: v for k, v in fields.items() if v is not None}})

    def _change(self, action: str, command_id: str | None, ids: dict[str, Any],
                expected_version: int, change: dict[str, Any]) -> Call[wire.Reply]:
        return self._command(command_id, {"action": action, **ids,
                                          "expected_version": expected_version,
                                          "change": change})

    def create_plan(self, plan_id: str, title: str, *, owner_agent: str | None = None,
                    status: str | None = None, command_id: str | None = None
                    ) -> Call[wire.Reply]:
        """CREATE_PLAN (``owner_agent`` defaults to the actor on the ledger's side)."""
        return self._fields("CREATE_PLAN", command_id, {
            "plan_id": plan_id, "title": title, "owner_agent": owner_agent, "status": status})

    def update_plan(self, /, plan_id: str, expected_version: int, *,
                    command_id: str | None = None, **change: Any) -> Call[wire.Reply]:
        """UPDATE_PLAN with ``change`` (title, status, owner_agent, ...)."""
        return self._change("UPDATE_PLAN", command_id, {"plan_id": plan_id},
                            expected_version, change)

    def add_item(self, /, plan_id: str, item_id: str, title: str, *,
                 command_id: str | None = None, **fields: Any) -> Call[wire.Reply]:
        """ADD_ITEM with optional ``fields`` (kind, priority, assigned_to, ...)."""
        return self._fields("ADD_ITEM", command_id, {
            "plan_id": plan_id, "item_id": item_id, "title": title, **fields})

    def update_item(self, /, item_id: str, expected_version: int, *,
                    command_id: str | None = None, **change: Any) -> Call[wire.Reply]:
        """UPDATE_ITEM with ``change`` (title, priority, assigned_to, ...; not state)."""
        return self._change("UPDATE_ITEM", command_id, {"item_id": item_id},
                            expected_version, change)

    def change_state(self, item_id: str, expected_version: int, state: str, *,
                     command_id: str | None = None) -> Call[wire.Reply]:
        """STATE_CHANGE of an item to ``state`` (TODO, IN_PROGRESS, DONE, ...)."""
        return self._change("STATE_CHANGE", command_id, {"item_id": item_id},
                            expected_version, {"state": state})

    def add_link(self, link_id: str, from_item_id: str, to_item_id: str,
                 link_type: str = "DEPENDS_ON", *, command_id: str | None = None
                 ) -> Call[wire.Reply]:
        """ADD_LINK between two items."""
        return self._fields("ADD_LINK", command_id, {
            "link_id": link_id, "from_item_id": from_item_id, "to_item_id": to_item_id,
            "link_type": link_type})

    def send_command(self, command: dict[str, Any], command_id: str | None = None
                     ) -> Call[wire.Reply]:
        """A raw command dict (``action`` + fields), e.g. a scenario step."""
        return self._command(command_id, command)

    # --- queries ---------------------------------------------------------------------

    def _query(self, name: str, params: dict[str, Any], read: Callable[[wire.Reply], T]
               ) -> Call[T]:
        actor = self._who.actor
        return Call(wire.Query(id=new_id(actor), actor=actor, query=name, params=params), read)

    def query(self, /, name: str, **params: Any) -> Call[dict[str, Any]]:
        """Any QUERY (docs/PROTOCOL.md lists them): its result dict."""
        return self._query(name, params, result_of)

    def list_plans(self) -> Call[list[dict[str, Any]]]:
        """Every plan, as rows."""
        return self._query("list-plans", {}, _rows("plans"))

    def show_plan(self, plan_id: str) -> Call[dict[str, Any]]:
        """``{"plan", "items", "links"}`` of one plan (UNKNOWN_PLAN if there is none)."""
        return self._query("show-plan", {"plan_id": plan_id}, result_of)

    def list_items(self, plan_id: str) -> Call[list[dict[str, Any]]]:
        """The items of a plan, as rows (UNKNOWN_PLAN if there is none)."""
        return self._query("list-items", {"plan_id": plan_id}, _rows("items"))

    def get_item(self, item_id: str) -> Call[dict[str, Any] | None]:
        """One item's row, or None if there is no such item."""
        return self._query("get-item", {"item_id": item_id}, _item)

    def item_version(self, item_id: str) -> Call[int]:
        """An item's current version (UNKNOWN_ITEM if there is no such item)."""
        def read(reply: wire.Reply) -> int:
            item = _item(reply)
            if item is None:
                raise CoordinatorError(ErrorCode.UNKNOWN_ITEM, f"no item {item_id!r}",
                                       field="item_id")
            return int(item["version"])
        return self._query("get-item", {"item_id": item_id}, read)

    def timeline(self, kind: str, value: str) -> Call[list[dict[str, Any]]]:
        """The events of one session, task or plan (``kind``), oldest first."""
        return self._query(f"{kind}-timeline", {f"{kind}_id": value}, _rows("events"))

    def replay(self, from_seq: int = 1, to_seq: int | None = None,
               limit: int = wire.MAX_REPLAY_BATCH) -> Call[list[dict[str, Any]]]:
        """Stored event rows ``from_seq`` <= seq (<= ``to_seq``), at most ``limit``."""
        actor = self._who.actor
        return Call(wire.Replay(id=new_id(actor), actor=actor, from_seq=from_seq,
                                to_seq=to_seq, limit=limit), _rows("events"))

    def ping(self) -> Call[dict[str, Any]]:
        """The broker's status: ``broker_up``, ``ledger_up``, ``head_seq``, ..."""
        actor = self._who.actor
        return Call(wire.Ping(id=new_id(actor), actor=actor), result_of)

    # --- agent messages --------------------------------------------------------------

    def hello(self) -> Call[dict[str, Any]]:
        """Register this connection under ``actor`` so others can SEND to it."""
        actor = self._who.actor
        return Call(wire.Hello(id=new_id(actor), actor=actor), result_of)

    def send(self, to: str | None, kind: str, data: dict[str, Any] | None = None
             ) -> Call[dict[str, Any]]:
        """An agent message to ``to`` (None: the coordinator, Mary):
        ``{"delivered_to": name}``, or UNKNOWN_RECIPIENT."""
        who = self._who
        return Call(wire.Send(id=new_id(who.actor), actor=who.actor,
                              session_id=who.session_id, to=to, kind=kind, data=data or {}),
                    result_of)


def mounted_signature(build: Callable[..., Call[Any]]) -> inspect.Signature:
    """The signature of a :class:`Requests` method as a client method: the same
    parameters, returning what its ``Call.read`` returns (for ``help()``)."""
    sig = inspect.signature(build)
    returns = sig.return_annotation
    if isinstance(returns, str) and returns.startswith("Call[") and returns.endswith("]"):
        returns = returns[len("Call["):-1]
    return sig.replace(return_annotation=returns)


#: The names of the :class:`Requests` methods both clients expose.
REQUEST_METHODS: Final = tuple(n for n in vars(Requests) if not n.startswith("_"))
