"""The broker: the gateway of the spec pack (ingress -> normalise -> route).

Sockets:
- ROUTER ``--front`` (bound): agents' DEALERs. Every request is size-checked, decoded,
  normalised and validated; malformed input gets a specific error and goes no further.
- DEALER -> ledger ROUTER ``--ledger``: QUERY and REPLAY, and the COMMANDs taken in one
  round (every request already waiting, up to DRAIN_MAX) as ONE COMMANDS message, each
  tagged with a request key so replies find their way back (a REPLIES is split back to
  the commands' clients by position); at most ``--max-inflight`` requests at once (else
  BUSY).
- SUB -> ledger PUB ``--ledger-pub``: each commit group's EVENTS message is republished
  as one EVENT per event on PUB ``--pub`` (bound), the rest as-is, plus the broker's own
  heartbeat, so agents and monitors need only the broker's addresses.

The ledger counts as up while it has been heard from (reply, event or heartbeat) within
``--liveness`` seconds. While it is down, requests for it get LEDGER_UNAVAILABLE at once,
and requests in flight are failed the moment it is declared down or their
``--request-timeout`` expires (the command may have been applied: retry with the same
command_id, which is idempotent).

Without CURVE, --front and --pub bind to loopback or ipc:// only (INSECURE_BIND). With
``--curve-secret``/``--curve-allow`` both are CURVE servers admitting only the allowed
keys, and a request whose actor is not its key's identity gets ACTOR_MISMATCH
(broker/security.py).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zmq

from broker.normalise import normalise
from broker.security import CurveServer, user_id
from ledger.runtime.sandbox import resolve_key
from ledger.runtime.service import (
    LINGER_MS,
    add_version_arg,
    announce,
    install_stop_signals,
    positive_float,
    positive_int,
    settle_heap,
    setup_logging,
)
from ledger.runtime.sockets import NOBLOCK, send_frames
from schema import internal, wire
from schema.clock import utc_now
from schema.commands import parse_command
from schema.endpoints import (
    COORDINATOR,
    DEFAULT_FRONT,
    DEFAULT_LEDGER,
    DEFAULT_LEDGER_PUB,
    DEFAULT_PUB,
    require_local_bind,
)
from schema.errors import CoordinatorError, ErrorCode, ProtocolError

PROBE_KEY = b"\x00" * 8  # request key of the broker's own liveness probes
PUB_HWM = 100_000

log = logging.getLogger("broker")


#: Most messages taken from one socket per poll, so no socket starves the others.
DRAIN_MAX = 256
#: COMMANDS messages at the ledger at once. While this many are there, new commands
#: wait in the broker and go together once one is answered: while the ledger commits
#: one group, the next is already waiting for it, and the one after grows, so under
#: load each ledger round takes ONE message however many clients sent to it. With
#: nothing at the ledger a command goes at once: no added latency when idle.
BATCHES_AT_LEDGER = 2


@dataclass(slots=True)
class _Waiting:
    """A request at the ledger: whom to answer, with which id."""

    envelope: list[bytes]
    request_id: str


@dataclass(slots=True)
class _InFlight:
    """One message to the ledger: a QUERY/REPLAY (one request) or a COMMANDS batch
    (several, answered by one REPLIES in the same order)."""

    requests: list[_Waiting]
    deadline: float
    batched: bool = False


def _drain(sock: zmq.Socket[bytes], *, copy: bool = True) -> Iterator[Any]:
    """The messages waiting on ``sock``, at most DRAIN_MAX of them."""
    for _ in range(DRAIN_MAX):
        try:
            yield sock.recv_multipart(NOBLOCK, copy=copy)
        except zmq.Again:
            return


@dataclass(slots=True)
class BrokerConfig:
    front: str = DEFAULT_FRONT
    pub: str = DEFAULT_PUB
    ledger: str = DEFAULT_LEDGER
    ledger_pub: str = DEFAULT_LEDGER_PUB
    max_inflight: int = 1024
    request_timeout: float = 10.0
    heartbeat: float = 1.0
    liveness: float = 3.0
    #: CURVE on the front end and the PUB (broker/security.py); None: loopback only
    curve: CurveServer | None = None


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        if config.curve is None:
            for name in ("front", "pub"):
                require_local_bind(getattr(config, name), name, why="without CURVE "
                                   "(--curve-secret and --curve-allow) the broker")
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        #: the ZAP handler admitting only allowed keys (None without CURVE)
        self.auth = config.curve.start_authenticator(self.ctx) if config.curve else None
        self.front = self._socket(zmq.ROUTER)
        self.front.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.front.setsockopt(zmq.MAXMSGSIZE, 4 * wire.MAX_FRAME_BYTES)
        self.pub = self._socket(zmq.PUB)
        self.pub.sndhwm = PUB_HWM
        if config.curve is not None:
            config.curve.apply(self.front)
            config.curve.apply(self.pub)
        self.front.bind(config.front)
        self.pub.bind(config.pub)
        self.backend = self._socket(zmq.DEALER)
        self.backend.setsockopt(zmq.IMMEDIATE, 1)  # never queue for an absent ledger
        self.backend.connect(config.ledger)
        self.ledger_sub = self._socket(zmq.SUB)
        self.ledger_sub.rcvhwm = PUB_HWM
        self.ledger_sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.ledger_sub.connect(config.ledger_pub)
        self.endpoints = {
            "front": self.front.getsockopt(zmq.LAST_ENDPOINT).decode(),  # type: ignore[union-attr]
            "pub": self.pub.getsockopt(zmq.LAST_ENDPOINT).decode(),  # type: ignore[union-attr]
            "ledger": config.ledger, "ledger_pub": config.ledger_pub,
        }
        self.agents: dict[str, bytes] = {}
        #: by request key, in the order sent (so in deadline order: one timeout for all)
        self.inflight: dict[bytes, _InFlight] = {}
        self.inflight_requests = 0
        self.batches_at_ledger = 0
        #: commands taken from the front in this poll round, sent as one COMMANDS
        self._outbox: list[tuple[_Waiting, dict[str, Any]]] = []
        self._outbox_bytes = 0
        self._keys = itertools.count(1)
        self.ledger_seen = float("-inf")
        #: False from a send the backend refused (not connected) until the next answer
        self.backend_ok = True
        self.head_seq = 0
        self.head_hash = "0" * 64
        #: the ledger's committed head from its last probe reply; PING reports it (the
        #: heartbeat keeps head_seq, the head already republished, so it never runs
        #: ahead of the events on the PUB stream)
        self.probed_head: tuple[int, str] = (0, "0" * 64)
        #: the ledger's start-up check as its last probe reply reported it
        self.ledger_check: dict[str, Any] | None = None
        #: the holder of the ledger database's writer lock, as that reply named it
        self.ledger_writer: dict[str, Any] | None = None
        self.stats = {"requests": 0, "forwarded": 0, "refused": 0, "events": 0}

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(kind)
        sock.linger = LINGER_MS
        return sock

    @property
    def ledger_up(self) -> bool:
        """Heard from within --liveness, and the request path is connected (after a
        restart the event stream may reconnect before it)."""
        return self.backend_ok and time.monotonic() - self.ledger_seen < self.config.liveness

    # --- loop ----------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        for sock in (self.front, self.backend, self.ledger_sub):
            poller.register(sock, zmq.POLLIN)
        next_beat = next_probe = 0.0
        was_up = False
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + self.config.heartbeat
                if now >= next_probe:
                    self._probe_ledger()
                    # probe fast while the ledger is down, at the heartbeat rate when up
                    next_probe = now + (self.config.heartbeat if self.ledger_up else 0.05)
                up = self.ledger_up
                if was_up != up:
                    log.info("ledger is %s", "up" if up else "DOWN")
                    was_up = up
                self._expire(now, up)
                for sock, _ in poller.poll(int(max(0.0, min(next_beat - now, 0.1)) * 1000)):
                    if sock is self.front:
                        self._drain_front()
                    elif sock is self.backend:
                        for frames in _drain(self.backend):
                            self._on_backend(frames)
                    else:
                        for frames in _drain(self.ledger_sub):
                            self._on_ledger_pub(frames)
        finally:
            self.close()

    # --- agents -> broker ----------------------------------------------------------

    def _drain_front(self) -> None:
        """Every request already waiting (bounded); the commands among them go to the
        ledger together, as one COMMANDS message."""
        if self.auth is None:
            for frames in _drain(self.front):
                self._on_front(frames)
        else:  # CURVE: the key's identity comes along
            for parts in _drain(self.front, copy=False):
                self._on_front([p.bytes for p in parts], user_id(parts[-1]))
        self._flush_commands()

    def _reply(self, envelope: list[bytes], reply: wire.Reply | wire.Deliver) -> None:
        try:
            send_frames(self.front, [*envelope, *wire.encode(reply)])
        except zmq.ZMQError as exc:  # the client went away: nothing to do
            log.debug("reply to a gone client dropped: %s", exc)

    def _refuse(self, envelope: list[bytes], request_id: str | None,
                error: CoordinatorError, *, rejected: bool = False) -> None:
        """Answer with an error. ``rejected``: a command refused for its content (status
        REJECTED, final) rather than for the bus's state (status None, retryable)."""
        self.stats["refused"] += 1
        reply = wire.error_reply(request_id, error)
        retryable = error.code in (ErrorCode.LEDGER_UNAVAILABLE, ErrorCode.BUSY)
        if rejected and not retryable:
            reply = reply.model_copy(update={"status": "REJECTED"})
        self._reply(envelope, reply)

    def _on_front(self, frames: list[bytes], identity: str | None = None) -> None:
        """One request. ``identity``: the sender's CURVE identity (None without CURVE);
        a request acting as anyone else is refused with ACTOR_MISMATCH."""
        self.stats["requests"] += 1
        # [identity, (b"" if the client is a REQ socket), PROTOCOL, header, body]
        cut = 2 if len(frames) > 1 and frames[1] == b"" else 1
        envelope, body = frames[:cut], frames[cut:]
        request_id = None
        is_command = False
        try:
            too_big = max((len(f) for f in body), default=0)
            if too_big > wire.MAX_FRAME_BYTES:
                raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE,
                                         f"frame of {too_big} bytes exceeds the limit of "
                                         f"{wire.MAX_FRAME_BYTES}")
            request_id = wire.header_id(body)
            header, data = normalise(*wire.decode_parts(body))
            kind = header.get("type")
            if isinstance(kind, str) and kind in wire.PUBLIC_TYPES \
                    and kind not in wire.REQUEST_TYPES:
                # before its body is validated: the answer is about the type, not the body
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{kind} is not a request",
                                    field="type")
            msg = wire.from_parts(header, data)
            request_id = msg.id
            is_command = isinstance(msg, wire.CommandMsg)
            if identity is not None and msg.actor is not None and msg.actor != identity:
                raise CoordinatorError(
                    ErrorCode.ACTOR_MISMATCH, f"this connection's key belongs to "
                    f"{identity!r}; it cannot act as {msg.actor!r}", field="actor",
                    details={"identity": identity, "actor": msg.actor})
            self._route(envelope, msg, sum(len(f) for f in body))
        except CoordinatorError as exc:
            self._refuse(envelope, request_id, exc, rejected=is_command)

    def _route(self, envelope: list[bytes], msg: Any, size: int = 0) -> None:
        """``size``: the request's encoded size (to bound a COMMANDS message)."""
        match msg:
            case wire.Hello():
                if msg.actor is None:
                    raise CoordinatorError(ErrorCode.MISSING_FIELD, "HELLO needs an actor",
                                           field="actor")
                self.agents[msg.actor] = envelope[0]
                self._reply(envelope, wire.Reply(id=msg.id, ok=True,
                                                 result={"registered": msg.actor}))
            case wire.Ping():
                head_seq, head_hash = max((self.head_seq, self.head_hash), self.probed_head)
                self._reply(envelope, wire.Reply(id=msg.id, ok=True, result={
                    "broker_up": True, "ledger_up": self.ledger_up, "head_seq": head_seq,
                    "head_hash": head_hash,
                    "inflight": self.inflight_requests + len(self._outbox),
                    "ledger_startup_check": self.ledger_check,
                    "ledger_writer": self.ledger_writer}))
            case wire.CommandMsg():
                # validate the command here, so malformed ones never reach the ledger
                command = {**msg.command, "command_id": msg.id, "actor": msg.actor,
                           "session_id": msg.session_id}
                parse_command(command)
                self._queue_command(envelope, msg, command, size)
            case wire.Query() | wire.Replay():
                self._forward(envelope, msg)
            case wire.Send():
                self._deliver(envelope, msg)
            case _:
                raise CoordinatorError(ErrorCode.INVALID_MESSAGE,
                                       f"{msg.type} is not a request", field="type")

    def _admit(self) -> None:
        """Raise unless one more request may go to the ledger now."""
        if not self.ledger_up:
            raise CoordinatorError(ErrorCode.LEDGER_UNAVAILABLE,
                                   "the ledger is not reachable; retry later with the same id")
        waiting = self.inflight_requests + len(self._outbox)
        if waiting >= self.config.max_inflight:
            raise CoordinatorError(ErrorCode.BUSY, f"{waiting} requests in flight "
                                   "(the limit); retry shortly")

    def _send_backend(self, msg: wire.BaseMessage, requests: list[_Waiting], *,
                      batched: bool = False) -> None:
        key = next(self._keys).to_bytes(8, "big")
        try:
            send_frames(self.backend, [key, *wire.encode(msg)], NOBLOCK)
        except zmq.Again:
            self.backend_ok = False
            raise CoordinatorError(ErrorCode.LEDGER_UNAVAILABLE,
                                   "the ledger is not connected; retry later") from None
        self.inflight[key] = _InFlight(requests, time.monotonic() + self.config.request_timeout,
                                       batched)
        self.inflight_requests += len(requests)
        self.batches_at_ledger += batched
        self.stats["forwarded"] += len(requests)

    def _forward(self, envelope: list[bytes], msg: wire.Query | wire.Replay) -> None:
        self._admit()
        self._send_backend(msg, [_Waiting(envelope, msg.id)])

    def _queue_command(self, envelope: list[bytes], msg: wire.CommandMsg,
                       command: dict[str, Any], size: int) -> None:
        self._admit()
        if (len(self._outbox) >= internal.MAX_COMMAND_BATCH
                or self._outbox_bytes + size > internal.MAX_BATCH_BYTES // 2):
            self._flush_commands(hold=False)
        self._outbox.append((_Waiting(envelope, msg.id), command))
        self._outbox_bytes += size

    def _flush_commands(self, *, hold: bool = True) -> None:
        """Send the waiting commands as one COMMANDS, unless (``hold``) enough are at
        the ledger already (BATCHES_AT_LEDGER): then they go when one is answered."""
        if not self._outbox or (hold and self.batches_at_ledger >= BATCHES_AT_LEDGER):
            return
        outbox, self._outbox, self._outbox_bytes = self._outbox, [], 0
        batch = internal.CommandBatch(id=f"batch-{len(outbox)}", commands=[c for _, c in outbox])
        requests = [w for w, _ in outbox]
        try:
            self._send_backend(batch, requests, batched=True)
        except CoordinatorError as exc:  # not connected: none of them was sent
            for waiting in requests:
                self._refuse(waiting.envelope, waiting.request_id, exc)

    def _deliver(self, envelope: list[bytes], msg: wire.Send) -> None:
        target = msg.to or COORDINATOR
        identity = self.agents.get(target)
        if identity is None:
            raise CoordinatorError(ErrorCode.UNKNOWN_RECIPIENT,
                                   f"no agent {target!r} is connected", field="to")
        try:
            self.front.send_multipart([identity, *wire.encode(wire.Deliver(
                id=msg.id, actor=msg.actor, session_id=msg.session_id, to=target,
                kind=msg.kind, data=msg.data))])
        except zmq.ZMQError:
            self.agents.pop(target, None)
            raise CoordinatorError(ErrorCode.UNKNOWN_RECIPIENT,
                                   f"agent {target!r} has disconnected", field="to") from None
        self._reply(envelope, wire.Reply(id=msg.id, ok=True, result={"delivered_to": target}))

    # --- ledger -> broker ----------------------------------------------------------

    def _probe_ledger(self) -> None:
        """Broker -> ledger heartbeat over the request path: any reply proves it alive."""
        ping = wire.Ping(id="broker-probe", actor="broker")
        try:
            send_frames(self.backend, [PROBE_KEY, *wire.encode(ping)], NOBLOCK)
        except zmq.ZMQError:  # not connected: down, whatever the event stream says
            self.backend_ok = False

    def _on_backend(self, frames: list[bytes]) -> None:
        self.ledger_seen = time.monotonic()
        self.backend_ok = True
        if frames[0] == PROBE_KEY:
            with contextlib.suppress(CoordinatorError, KeyError, TypeError, ValueError):
                result = wire.decode(frames[1:]).result or {}
                self.probed_head = (int(result["head_seq"]), str(result["head_hash"]))
                self.ledger_check = result.get("startup_check")
                self.ledger_writer = result.get("writer")
            return
        pending = self.inflight.pop(frames[0], None)
        if pending is None:
            return  # already answered with LEDGER_UNAVAILABLE
        self._done(pending)
        answers = [frames[1:]] if not pending.batched else self._split_replies(
            frames[1:], pending.requests)
        for waiting, answer in zip(pending.requests, answers, strict=True):
            with contextlib.suppress(zmq.ZMQError):
                send_frames(self.front, [*waiting.envelope, *answer])
        if pending.batched:
            self._flush_commands()  # what waited while the ledger was busy goes now

    def _done(self, pending: _InFlight) -> None:
        self.inflight_requests -= len(pending.requests)
        self.batches_at_ledger -= pending.batched

    def _split_replies(self, frames: list[bytes], requests: list[_Waiting]
                       ) -> list[list[bytes]]:
        """The REPLY frames for each command of a batch, from the ledger's REPLIES. A
        single REPLY instead is the ledger refusing the whole batch (e.g. its database
        was found damaged): each command gets that error under its own id."""
        try:
            msg = internal.decode(frames, wire.MAX_REPLY_BYTES)
        except CoordinatorError as exc:
            log.warning("malformed reply from the ledger: %s", exc)
            msg = wire.error_reply(None, CoordinatorError(
                ErrorCode.LEDGER_UNAVAILABLE, "the ledger's answer could not be read; the "
                "command may or may not have been applied: retry with the same id"))
        if isinstance(msg, internal.ReplyBatch) and len(msg.replies) == len(requests):
            return [[wire.PROTOCOL, *parts] for parts in msg.replies]
        if isinstance(msg, internal.ReplyBatch):
            log.warning("the ledger answered %d of %d commands", len(msg.replies),
                        len(requests))
            msg = wire.error_reply(None, CoordinatorError(
                ErrorCode.LEDGER_UNAVAILABLE, "the ledger's answer did not cover this "
                "command; it may or may not have been applied: retry with the same id"))
        return [wire.encode(msg.model_copy(update={"id": w.request_id})) for w in requests]

    def _on_ledger_pub(self, frames: list[bytes]) -> None:
        self.ledger_seen = time.monotonic()
        if frames[0] == internal.TOPIC_COMMITTED:
            try:
                batch = internal.decode(frames[1:], wire.MAX_REPLY_BYTES)
            except CoordinatorError as exc:
                log.warning("malformed events from the ledger: %s", exc)
                return
            if not isinstance(batch, internal.EventBatch):
                log.warning("unexpected %s on the ledger's committed topic", batch.type)
                return
            for parts in batch.events:
                send_frames(self.pub, [wire.TOPIC_EVENT, wire.PROTOCOL, *parts])
            self.stats["events"] += len(batch.events)
            if batch.head_seq >= self.head_seq:
                self.head_seq, self.head_hash = batch.head_seq, batch.head_hash
        elif frames[0] == wire.TOPIC_HEARTBEAT:
            try:
                beat = wire.decode(frames[1:])
                if beat.head_seq >= self.head_seq:
                    self.head_seq, self.head_hash = beat.head_seq, beat.head_hash
            except CoordinatorError:
                log.warning("malformed heartbeat from the ledger")
        else:  # everything else the ledger publishes (checkpoints, ...) goes out as-is
            self.pub.send_multipart(frames)

    def _expire(self, now: float, up: bool) -> None:
        """Fail what the ledger has not answered in time (everything, and the commands
        held for it, once it is down). Keys are in send order, so in deadline order:
        stop at the first one still due."""
        dead: list[bytes] = []
        for key, pending in self.inflight.items():
            if up and pending.deadline > now:
                break
            dead.append(key)
        for key in dead:
            pending = self.inflight.pop(key)
            self._done(pending)
            reason = ("the ledger stopped answering" if not up
                      else f"no answer from the ledger within {self.config.request_timeout}s")
            for waiting in pending.requests:
                self._refuse(waiting.envelope, waiting.request_id, CoordinatorError(
                    ErrorCode.LEDGER_UNAVAILABLE,
                    f"{reason}; the command may or may not have been applied: retry with "
                    "the same id (retries are idempotent)"))
        if not self._outbox:
            return
        if up:
            self._flush_commands()  # held behind batches that have now expired
            return
        held, self._outbox, self._outbox_bytes = self._outbox, [], 0
        for waiting, _ in held:  # never sent: certainly not applied
            self._refuse(waiting.envelope, waiting.request_id, CoordinatorError(
                ErrorCode.LEDGER_UNAVAILABLE,
                "the ledger stopped answering before this command was sent to it; retry "
                "later with the same id"))

    def _heartbeat(self) -> None:
        beat = wire.Heartbeat(id=str(self.head_seq), source="broker", head_seq=self.head_seq,
                              head_hash=self.head_hash, ts=utc_now(), ledger_up=self.ledger_up)
        self.pub.send_multipart([wire.TOPIC_HEARTBEAT, *wire.encode(beat)])

    def close(self) -> None:
        for sock in (self.front, self.pub, self.backend, self.ledger_sub):
            sock.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


def _load_curve(secret: str | None, allow: str | None) -> CurveServer | None:
    if secret is None and allow is None:
        return None
    if secret is None or allow is None:
        raise CoordinatorError(ErrorCode.USAGE_ERROR,
                               "--curve-secret and --curve-allow go together",
                               field="curve_allow" if allow is None else "curve_secret")
    return CurveServer.load(resolve_key(secret, must_exist=True), resolve_key(allow))


def main(argv: list[str] | None = None) -> None:
    d = BrokerConfig()
    p = argparse.ArgumentParser(
        prog="broker",
        description="Run the broker: agents connect a DEALER to --front and a SUB to --pub; "
        "the broker validates and normalises every request, forwards plan commands and "
        "queries to the ledger, routes agent messages (no recipient: Mary) and republishes "
        "the ledger's events. Binds to loopback by default. Stop with Ctrl-C or SIGTERM.")
    p.add_argument("--front", default=d.front, metavar="ADDR",
                   help=f"ROUTER for agents (default {d.front}; port * picks a free one)")
    p.add_argument("--pub", default=d.pub, metavar="ADDR",
                   help=f"PUB for events and heartbeats (default {d.pub})")
    p.add_argument("--ledger", default=d.ledger, metavar="ADDR",
                   help=f"the ledger's ROUTER (default {d.ledger})")
    p.add_argument("--ledger-pub", default=d.ledger_pub, metavar="ADDR",
                   help=f"the ledger's PUB (default {d.ledger_pub})")
    p.add_argument("--max-inflight", type=positive_int, default=d.max_inflight, metavar="N",
                   help=f"requests at the ledger at once before BUSY (default {d.max_inflight})")
    p.add_argument("--request-timeout", type=positive_float, default=d.request_timeout,
                   metavar="S",
                   help=f"fail a request the ledger has not answered in S seconds "
                   f"(default {d.request_timeout})")
    p.add_argument("--heartbeat", type=positive_float, default=d.heartbeat, metavar="S",
                   help=f"heartbeat interval (default {d.heartbeat})")
    p.add_argument("--liveness", type=positive_float, default=d.liveness, metavar="S",
                   help=f"declare the ledger down after S silent seconds (default {d.liveness})")
    sec = p.add_argument_group(
        "CURVE (without it, --front and --pub must be loopback or ipc://)")
    sec.add_argument("--curve-secret", metavar="PATH",
                     help="the broker's secret key file under keys/ (bin/keygen broker "
                     "makes keys/broker.key_secret); agents need the matching .key")
    sec.add_argument("--curve-allow", metavar="DIR",
                     help="directory under keys/ of allowed agents' public keys, e.g. "
                     "keys/allowed/ holding Liam.key: that key may connect, as 'Liam' only")
    p.add_argument("--verbose", action="store_true")
    add_version_arg(p)
    args = p.parse_args(argv)
    setup_logging("broker", args.verbose)
    stop = install_stop_signals()
    try:
        curve = _load_curve(args.curve_secret, args.curve_allow)
        config = BrokerConfig(args.front, args.pub, args.ledger, args.ledger_pub,
                              args.max_inflight, args.request_timeout, args.heartbeat,
                              args.liveness, curve=curve)
        broker = Broker(config)
    except CoordinatorError as exc:
        announce({"ok": False, "error": exc.to_dict()})
        sys.exit(2)
    except zmq.ZMQError as exc:
        announce({"ok": False, "error": {"code": str(ErrorCode.BIND_FAILED),
                                         "message": str(exc)}})
        sys.exit(2)
    settle_heap()
    announce({"ok": True, "ready": True, "role": "broker", "endpoints": broker.endpoints,
              "curve": curve is not None,
              "allowed": sorted(curve.allowed.values()) if curve else None})
    broker.serve(stop)
    log.info("stopped: %s", broker.stats)


if __name__ == "__main__":
    main()
