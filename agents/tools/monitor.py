"""bin/monitor: follow the ledger's event stream and never silently miss an event.

The zguide "Clone" pattern with the ledger's log as the source of truth:

1. connect a SUB to the broker's PUB (topics ``event`` and ``heartbeat``) *first*, so
   nothing published from now on can slip past unseen;
2. ask for everything after the last seq we know with REPLAY requests on a DEALER to the
   broker's front end (pages of :data:`broker.protocol.MAX_REPLAY_BATCH`), buffering the
   live events that arrive meanwhile;
3. deliver strictly in seq order: a live or replayed event at or below the last delivered
   seq is a duplicate and dropped; a seq beyond the next one means a gap, fetched with
   REPLAY before anything later is delivered;
4. check the hash chain of every delivered event (``prev_hash`` equals the previous
   event's hash, ``hash`` equals :func:`ledger.chain.event_hash` of the row). Starting
   after seq N, event N is fetched first to get the link;
5. the broker's heartbeat carries the head seq: a head beyond the last delivered seq that
   no event fills is a silent tail loss, fetched with REPLAY; no heartbeat for
   ``dead_after`` seconds is a silent broker, reported once, and when it is heard again
   everything after the last seq is fetched (ZeroMQ reconnects by itself).

:class:`EventFollower` is the reusable part (tests and bin/run_scenario use it
in-process, with explicit timeouts); :func:`main` is the CLI that prints JSON lines or a
table. Filters of the CLI apply to what is printed, never to what is tracked: gap
detection needs every seq.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agents.client import RETRYABLE
from broker.security import ClientKeys, add_client_args, client_paths, identity_of
from ledger.log.chain import GENESIS_HASH, event_hash
from ledger.log.checkpoints import Checkpoint, CheckpointWatch, CheckResult, load_public_key
from ledger.runtime.sandbox import resolve_key
from ledger.runtime.service import add_version_arg, install_stop_signals
from schema import wire
from schema.endpoints import DEFAULT_FRONT, DEFAULT_PUB
from schema.errors import CoordinatorError, ErrorCode, ProtocolError

DEFAULT_RCVHWM: Final = 4000
DEFAULT_DEAD_AFTER: Final = 3.5
DEFAULT_REQUEST_TIMEOUT: Final = 5.0
#: Pause before asking again after a failed, refused or fruitless request.
RETRY_DELAY: Final = 0.5
#: Live events further ahead than this are not buffered (REPLAY fetches them later).
MAX_PENDING: Final = 100_000
#: Messages read from the SUB socket per wake-up, so replies are never starved.
SUB_BATCH: Final = 2000
#: Longest single wait inside :meth:`EventFollower.next` (timers are checked this often).
TICK: Final = 0.1

# alert kinds
CHAIN_BROKEN: Final = "CHAIN_BROKEN"
CHECKPOINT_MISMATCH: Final = "CHECKPOINT_MISMATCH"
BROKER_SILENT: Final = "BROKER_SILENT"
BROKER_RESUMED: Final = "BROKER_RESUMED"
LEDGER_DOWN: Final = "LEDGER_DOWN"
LEDGER_UP: Final = "LEDGER_UP"


@dataclass(frozen=True, slots=True)
class Alert:
    """Something the operator must see: a broken chain link, a silent broker, ..."""

    alert: str
    message: str
    seq: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alert": self.alert, "message": self.message, "seq": self.seq}
        if self.details:
            out["details"] = self.details
        return out


#: What :meth:`EventFollower.next` hands out: an event row (as stored: ``payload`` is the
#: canonical JSON text) or an :class:`Alert`.
Item = dict[str, Any] | Alert


@dataclass(slots=True)
class FollowStats:
    received: int = 0
    first_seq: int | None = None
    last_seq: int = 0
    #: REPLAY requests made because a gap was seen after catching up (lost live events,
    #: or a heartbeat head that no event filled)
    gaps_fetched: int = 0
    #: REPLAY requests made to catch up (at start, and after the broker was silent)
    catchup_fetches: int = 0
    #: events that came from REPLAY rather than the live stream
    fetched_events: int = 0
    duplicates_dropped: int = 0
    chain_breaks: int = 0
    checkpoint_mismatches: int = 0
    malformed: int = 0
    stale_replies: int = 0

    def summary(self) -> dict[str, Any]:
        return {"received": self.received, "first_seq": self.first_seq,
                "last_seq": self.last_seq, "gaps_fetched": self.gaps_fetched,
                "duplicates_dropped": self.duplicates_dropped,
                "chain": "OK" if self.chain_breaks == 0 else "BROKEN",
                "chain_breaks": self.chain_breaks,
                "checkpoint_mismatches": self.checkpoint_mismatches,
                "catchup_fetches": self.catchup_fetches,
                "fetched_events": self.fetched_events, "malformed": self.malformed}


@dataclass(slots=True)
class _Request:
    id: str
    kind: str  # "ping" | "catchup" | "gap"
    deadline: float
    from_seq: int = 0


class EventFollower:
    """Events from the broker in seq order, each exactly once, hash chain checked.

    ``from_seq``: the last seq already known (deliver ``from_seq + 1`` onwards; 0 means
    from the beginning). ``live``: start at the current head instead (asks PING).
    ``dead_after``: seconds without any message on the PUB stream (the broker heartbeats
    every second) before the broker is reported silent.

    Not thread-safe (ZeroMQ sockets belong to one thread): create and use it in one
    thread. Typical use::

        with EventFollower(bus.front, bus.pub) as follower:
            ...                       # produce events
            events = follower.collect(until_seq=7, timeout=10)
    """

    def __init__(self, front: str = DEFAULT_FRONT, pub: str = DEFAULT_PUB, *,
                 from_seq: int = 0, live: bool = False, rcvhwm: int = DEFAULT_RCVHWM,
                 dead_after: float = DEFAULT_DEAD_AFTER,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT, actor: str = "monitor",
                 ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
                 curve_secret: str | os.PathLike[str] | None = None,
                 server_key: str | os.PathLike[str] | None = None,
                 checkpoint_key: Ed25519PublicKey | None = None) -> None:
        if from_seq < 0:
            raise CoordinatorError(ErrorCode.USAGE_ERROR, "from_seq must be >= 0",
                                   field="from_seq")
        self.front, self.pub = front, pub
        self.dead_after = dead_after
        self.request_timeout = request_timeout
        self.actor = actor
        curve = ClientKeys.maybe(curve_secret, server_key)  # as for AgentClient
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        # SUB first (Clone pattern): whatever is published from here on reaches us or
        # shows up as a gap
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.rcvhwm = max(1, rcvhwm)
        self.sub.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_EVENT)
        self.sub.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_HEARTBEAT)
        self.sub.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_CHECKPOINT)
        #: signed checkpoints on the stream, checked against the events delivered
        self.checkpoints = CheckpointWatch(checkpoint_key)
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

        self.last_seq = from_seq
        #: hash of event ``last_seq``; None until fetched (starting after seq N > 0)
        self.last_hash: str | None = GENESIS_HASH if from_seq == 0 else None
        self.stats = FollowStats(last_seq=from_seq)
        self.alerts: list[Alert] = []
        self.silent = False
        self.ledger_up: bool | None = None
        self.head_hint = 0  # the highest head seq anyone told us about
        self._need_head = live
        self._synced = False
        self._pending: dict[int, dict[str, Any]] = {}
        self._out: collections.deque[Item] = collections.deque()
        self._req: _Request | None = None
        self._retry_at = 0.0
        self._last_heard = time.monotonic()
        #: seq of the last event handed out by next()
        self.handed_seq = from_seq
        self._ids = itertools.count(1)
        self._prefix = f"{actor}:{uuid.uuid4().hex[:12]}"
        self._closed = False

    # --- public ----------------------------------------------------------------------

    @property
    def chain_ok(self) -> bool:
        return self.stats.chain_breaks == 0 and self.stats.checkpoint_mismatches == 0

    @property
    def caught_up(self) -> bool:
        """Everything up to the last known head was delivered (or is waiting in
        :meth:`next`'s queue) and no fetch is under way."""
        return (self._synced and not self._need_head and self._req is None
                and self.last_hash is not None and not self._pending
                and self.head_hint <= self.last_seq)

    def next(self, timeout: float) -> Item | None:
        """The next event (in seq order) or alert; None if none within ``timeout`` s."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if not self._out:
                self._pump(0)
            if not self._out:
                now = time.monotonic()
                self._check_silence(now)
                self._maybe_request(now)
            if self._out:
                item = self._out.popleft()
                if isinstance(item, dict):
                    self.handed_seq = int(item["seq"])
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

    def _send(self, msg: Any, kind: str, from_seq: int = 0) -> None:
        self._req = _Request(msg.id, kind, time.monotonic() + self.request_timeout, from_seq)
        self.dealer.send_multipart(wire.encode(msg))

    def _new_id(self) -> str:
        return f"{self._prefix}:{next(self._ids)}"

    # --- the live stream -------------------------------------------------------------

    def _heard(self) -> None:
        self._last_heard = time.monotonic()
        if self.silent:
            self.silent = False
            self._synced = False  # fetch whatever was published while we heard nothing
            self._alert(BROKER_RESUMED, f"the broker is heard again; resuming after seq "
                        f"{self.last_seq}", self.last_seq)

    def _on_sub(self, frames: list[bytes]) -> None:
        self._heard()
        try:
            if len(frames) != 4:
                raise ProtocolError(ErrorCode.MALFORMED_FRAME,
                                         f"expected 4 frames on the PUB stream, got {len(frames)}")
            msg = wire.decode(frames[1:])
        except CoordinatorError as exc:
            self.stats.malformed += 1
            print(f"monitor: ignored a malformed message on the PUB stream: {exc}",
                  file=sys.stderr)
            return
        if frames[0] == wire.TOPIC_EVENT and isinstance(msg, wire.EventMsg):
            self._on_live_event(msg.event)
        elif frames[0] == wire.TOPIC_HEARTBEAT and isinstance(msg, wire.Heartbeat):
            self._on_heartbeat(msg)
        elif frames[0] == wire.TOPIC_CHECKPOINT and isinstance(msg, wire.CheckpointMsg):
            try:
                checkpoint = Checkpoint.from_dict(msg.model_dump())
            except CoordinatorError:
                self.stats.malformed += 1
                return
            self._checkpoint_results(self.checkpoints.checkpoint(checkpoint))
        else:
            self.stats.malformed += 1

    def _on_live_event(self, row: dict[str, Any]) -> None:
        seq = row.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            self.stats.malformed += 1
            return
        self.head_hint = max(self.head_hint, seq)
        if seq <= self.last_seq or seq in self._pending:
            self.stats.duplicates_dropped += 1
            return
        if seq - self.last_seq > MAX_PENDING:
            return  # far ahead of us: REPLAY will bring it in order
        self._pending[seq] = row
        self._advance()

    def _on_heartbeat(self, beat: wire.Heartbeat) -> None:
        if beat.ledger_up != self.ledger_up and (self.ledger_up is not None
                                                 or not beat.ledger_up):
            if beat.ledger_up:
                self._alert(LEDGER_UP, "the broker reports the ledger up again", self.last_seq)
            else:
                self._alert(LEDGER_DOWN, "the broker reports the ledger down; events resume "
                            "when it is back", self.last_seq)
        self.ledger_up = beat.ledger_up
        self.head_hint = max(self.head_hint, beat.head_seq)

    def _check_silence(self, now: float) -> None:
        if not self.silent and now - self._last_heard > self.dead_after:
            self.silent = True
            self._alert(BROKER_SILENT, f"nothing heard from the broker for "
                        f"{now - self._last_heard:.1f}s (no heartbeat); still trying, will "
                        f"resume after seq {self.last_seq}", self.last_seq,
                        {"pub": self.pub, "dead_after": self.dead_after})

    # --- requests --------------------------------------------------------------------

    def _wanted(self) -> tuple[int, int | None, str] | None:
        """The range to fetch next: (from_seq, to_seq or None, reason), or None."""
        nxt = self.last_seq + 1
        need_anchor = self.last_hash is None
        gap = bool(self._pending) and nxt not in self._pending
        behind = self.head_hint > self.last_seq and nxt not in self._pending
        if need_anchor:
            if self._synced and not self._pending and self.head_hint < self.last_seq:
                return None  # event last_seq does not exist yet: wait for news
        elif self._synced and not gap and not behind:
            return None
        start = self.last_seq if need_anchor else nxt
        upper = max(start, min(self._pending) - 1) if self._pending else None
        return start, upper, "gap" if self._synced else "catchup"

    def _maybe_request(self, now: float) -> None:
        if self._req is not None:
            if now < self._req.deadline:
                return
            print(f"monitor: no reply to {self._req.kind} request {self._req.id} within "
                  f"{self.request_timeout}s; will ask again", file=sys.stderr)
            self._req = None
            self._retry_at = now + RETRY_DELAY
        if self.silent or now < self._retry_at:
            return
        if self._need_head:
            self._send(wire.Ping(id=self._new_id(), actor=self.actor), "ping")
            return
        wanted = self._wanted()
        if wanted is None:
            return
        start, upper, reason = wanted
        limit = wire.MAX_REPLAY_BATCH
        if upper is not None:
            limit = min(limit, upper - start + 1)
        if reason == "gap":
            self.stats.gaps_fetched += 1
        else:
            self.stats.catchup_fetches += 1
        self._send(wire.Replay(id=self._new_id(), actor=self.actor, from_seq=max(1, start),
                               to_seq=upper, limit=limit), reason, start)

    def _on_dealer(self, frames: list[bytes]) -> None:
        try:
            msg = wire.decode(frames, wire.MAX_REPLY_BYTES)
        except CoordinatorError as exc:
            self.stats.malformed += 1
            print(f"monitor: ignored a malformed reply: {exc}", file=sys.stderr)
            return
        req = self._req
        if not isinstance(msg, wire.Reply) or req is None or msg.id != req.id:
            self.stats.stale_replies += 1  # an answer to a request we gave up on
            return
        self._req = None
        if not msg.ok:
            err = msg.error or {}
            retryable = err.get("code") in RETRYABLE
            if not retryable:  # not the bus's state: worth a line, and a longer pause
                print(f"monitor: {req.kind} request refused: {err.get('code')}: "
                      f"{err.get('message')}; will ask again", file=sys.stderr)
            self._retry_at = time.monotonic() + RETRY_DELAY * (1 if retryable else 4)
            return
        result = msg.result or {}
        if req.kind == "ping":
            if not result.get("ledger_up", True):  # its head may be stale: ask again
                self._retry_at = time.monotonic() + RETRY_DELAY
                return
            head = int(result.get("head_seq", 0))
            self._need_head = False
            self.last_seq = self.stats.last_seq = self.handed_seq = head
            self.last_hash = GENESIS_HASH if head == 0 else None
            self.head_hint = max(self.head_hint, head)
            return
        rows = list(result.get("events", []))
        progress = self._on_replayed(req, rows)
        ledger_head = result.get("head_seq")
        if (not rows and isinstance(ledger_head, int) and self._pending
                and ledger_head >= min(self._pending)
                and req.from_seq in (self.last_seq, self.last_seq + 1)):
            # the ledger has later events but none of the range we asked for: its log
            # has a hole (only a tampered database does that); report it, do not loop
            self._missing_from_ledger(req.from_seq, self._pending[min(self._pending)])
            self._advance()
            progress = True
        if isinstance(ledger_head, int):
            # the ledger's own head is the truth (a heartbeat can only be behind it)
            self.head_hint = max(ledger_head, max(self._pending, default=0))
            if self.last_seq >= ledger_head:
                self._synced = True
        if not progress:
            self._retry_at = time.monotonic() + RETRY_DELAY

    def _on_replayed(self, req: _Request, rows: list[dict[str, Any]]) -> bool:
        """Take the rows of a REPLAY reply; True if they brought anything new."""
        progress = False
        for i, row in enumerate(rows):
            seq = row.get("seq") if isinstance(row, dict) else None
            if not isinstance(seq, int) or isinstance(seq, bool):
                self.stats.malformed += 1
                continue
            if self.last_hash is None and seq == self.last_seq:
                self._take_anchor(row)
                progress = True
                continue
            if seq <= self.last_seq:
                self.stats.duplicates_dropped += 1
                continue
            if i == 0 and seq > req.from_seq and req.from_seq in (self.last_seq,
                                                                   self.last_seq + 1):
                self._missing_from_ledger(req.from_seq, row)
            self.stats.fetched_events += 1
            progress = True
            if seq in self._pending:
                self.stats.duplicates_dropped += 1  # the live copy
            self._pending[seq] = row
        self._advance()
        return progress

    def _take_anchor(self, row: dict[str, Any]) -> None:
        """Event ``last_seq`` (already known to the caller): its hash links the next."""
        computed = _hash_or_none(row)
        if computed is None or computed != row.get("hash"):
            self._chain_alert(row["seq"], "the hash of the starting event does not match "
                              "its contents", {"hash": row.get("hash"), "computed": computed})
        stored = row.get("hash")
        self.last_hash = stored if isinstance(stored, str) else ""

    def _missing_from_ledger(self, wanted: int, row: dict[str, Any]) -> None:
        """The ledger itself has no event ``wanted`` (its next is row's seq): the log has
        a hole. Report it and continue from what exists, linked by its prev_hash."""
        self._chain_alert(row["seq"], f"the ledger has no event seq {wanted}..{row['seq'] - 1}",
                          {"missing_from": wanted, "missing_to": row["seq"] - 1})
        self.last_seq = self.stats.last_seq = row["seq"] - 1
        prev = row.get("prev_hash")
        self.last_hash = prev if isinstance(prev, str) else ""

    # --- delivery --------------------------------------------------------------------

    def _advance(self) -> None:
        if self.last_hash is None:
            return  # the link of the starting event is not known yet
        while (row := self._pending.pop(self.last_seq + 1, None)) is not None:
            self._deliver(row)

    def _deliver(self, row: dict[str, Any]) -> None:
        seq = int(row["seq"])
        computed = _hash_or_none(row)
        problems = []
        if row.get("prev_hash") != self.last_hash:
            problems.append(f"prev_hash does not match the hash of seq {seq - 1}")
        if computed is None:
            problems.append("the row cannot be hashed (missing or invalid columns)")
        elif computed != row.get("hash"):
            problems.append("hash does not match the event's contents")
        if problems:
            self._chain_alert(seq, "; ".join(problems), {
                "expected_prev_hash": self.last_hash, "prev_hash": row.get("prev_hash"),
                "hash": row.get("hash"), "computed_hash": computed})
        stored = row.get("hash")
        self.last_seq = seq
        self.last_hash = stored if isinstance(stored, str) else ""
        self._checkpoint_results(self.checkpoints.event(seq, self.last_hash))
        s = self.stats
        s.received += 1
        s.last_seq = seq
        if s.first_seq is None:
            s.first_seq = seq
        self._out.append(row)

    def _checkpoint_results(self, results: list[CheckResult]) -> None:
        for result in results:
            if not result.ok:
                self.stats.checkpoint_mismatches += 1
                self._alert(CHECKPOINT_MISMATCH, f"signed checkpoint at seq {result.seq} "
                            f"does not match: {result.reason}", result.seq, result.to_dict())

    def _chain_alert(self, seq: int, reason: str, details: dict[str, Any]) -> None:
        self.stats.chain_breaks += 1
        self._alert(CHAIN_BROKEN, f"hash chain broken at seq {seq}: {reason}", seq, details)

    def _alert(self, kind: str, message: str, seq: int | None,
               details: dict[str, Any] | None = None) -> None:
        alert = Alert(kind, message, seq, details or {})
        self.alerts.append(alert)
        self._out.append(alert)


def _hash_or_none(row: dict[str, Any]) -> str | None:
    try:
        return event_hash(row)
    except (KeyError, TypeError, ValueError):
        return None


# --- the CLI ---------------------------------------------------------------------------


def event_line(row: dict[str, Any]) -> dict[str, Any]:
    """The printed form of an event: the row with ``payload`` parsed."""
    out = dict(row)
    with contextlib.suppress(KeyError, TypeError, ValueError):
        out["payload"] = json.loads(row["payload"])
    return out


def _short(value: Any, width: int) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "~"


def summarise(row: dict[str, Any]) -> str:
    """A few words on what an event did, for the table view."""
    payload = event_line(row).get("payload")
    if not isinstance(payload, dict):
        return ""
    raw_change = payload.get("change")
    change: dict[str, Any] = raw_change if isinstance(raw_change, dict) else {}
    kind = row.get("event_type")
    version = f"v{payload.get('new_version')}" if payload.get("new_version") else ""
    if kind == "PLAN_ITEM_STATE_CHANGED":
        before = (payload.get("previous") or {}).get("state", "?")
        return f"{before} -> {change.get('state')} {version}"
    if kind == "PLAN_CONFLICT_DETECTED":
        return (f"CONFLICT {payload.get('action')}: expected v{payload.get('expected_version')}"
                f", current v{payload.get('current_version')}")
    if kind == "PLAN_LINK_ADDED":
        return f"{change.get('from_item_id')} {change.get('link_type')} {change.get('to_item_id')}"
    if kind in ("PLAN_CREATED", "PLAN_ITEM_ADDED"):
        who = change.get("assigned_to") or change.get("owner_agent")
        return f"{change.get('title')!r}" + (f" @{who}" if who else "") + f" {version}"
    fields = ", ".join(f"{k}={v}" for k, v in change.items())
    return f"{fields} {version}".strip()


TABLE_HEADER: Final = (f"{'SEQ':>6}  {'TIME':12}  {'TYPE':23}  {'ACTOR':10}  {'PLAN':14}  "
                       f"{'ITEM':10}  SUMMARY")


def table_line(row: dict[str, Any]) -> str:
    ts = str(row.get("ts") or "")
    clock = ts[11:23] if len(ts) >= 23 else ts
    return (f"{row.get('seq', '?'):>6}  {clock:12}  {_short(row.get('event_type'), 23):23}  "
            f"{_short(row.get('actor'), 10):10}  {_short(row.get('plan_id'), 14):14}  "
            f"{_short(row.get('item_id'), 10):10}  {summarise(row)}")


def alert_table_line(alert: Alert) -> str:
    return f"{'!!':>6}  {alert.alert}: {alert.message}"


@dataclass(slots=True)
class Filters:
    plan_ids: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()
    actors: frozenset[str] = frozenset()

    def match(self, row: dict[str, Any]) -> bool:
        return ((not self.plan_ids or row.get("plan_id") in self.plan_ids)
                and (not self.event_types or row.get("event_type") in self.event_types)
                and (not self.actors or row.get("actor") in self.actors))


DESCRIPTION = """Follow the ledger's committed events through the broker and print them, in
seq order, each exactly once, checking the hash chain as they arrive. Subscribes to the
broker's PUB first, then fetches everything after --from-seq with REPLAY, drops duplicates,
fetches gaps, and watches the broker's heartbeat (head seq) for a silent tail loss or a
dead broker.

Output (stdout): JSON lines by default - one {"ready": true, ...} line, then one line per
event (the stored row, payload parsed) and per alert ({"alert": "CHAIN_BROKEN" |
"BROKER_SILENT" | "BROKER_RESUMED" | "LEDGER_DOWN" | "LEDGER_UP", ...}); --format table
prints a readable live view instead. At exit one {"summary": {...}} JSON line. Filters
change what is printed, never what is tracked. Exit status 1 if the chain was broken."""

EPILOG = """examples:
  bin/monitor                                   # everything, from seq 1, then live
  bin/monitor --live --format table             # only what happens from now on
  bin/monitor --from-seq 1200 --plan-id P-1 --event-type PLAN_CONFLICT_DETECTED
  bin/monitor --until-seq 7                     # exit 0 once seq 7 was delivered"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monitor", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", default=DEFAULT_FRONT, metavar="ADDR",
                   help=f"the broker's front end, for REPLAY and PING (default {DEFAULT_FRONT})")
    p.add_argument("--pub", default=DEFAULT_PUB, metavar="ADDR",
                   help=f"the broker's PUB endpoint (default {DEFAULT_PUB})")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=_non_negative_int, default=0, metavar="N",
                       help="the last seq already known: print N+1 onwards (default 0: "
                       "from the beginning)")
    start.add_argument("--live", action="store_true",
                       help="start at the current head: print only new events")
    p.add_argument("--plan-id", action="append", default=[], metavar="ID",
                   help="print only events of this plan (repeatable)")
    p.add_argument("--event-type", action="append", default=[], metavar="TYPE",
                   help="print only events of this type, e.g. PLAN_CONFLICT_DETECTED "
                   "(repeatable)")
    p.add_argument("--actor", action="append", default=[], metavar="NAME",
                   help="print only events by this actor (repeatable)")
    p.add_argument("--format", choices=("json", "table"), default="json",
                   help="json: one JSON object per line (default); table: a live view")
    stop = p.add_argument_group("when to stop (default: on Ctrl-C or SIGTERM)")
    stop.add_argument("--until-seq", type=_non_negative_int, metavar="N",
                      help="exit 0 once seq N was delivered")
    stop.add_argument("--count", type=_positive_int, metavar="N",
                      help="exit after printing N events (after filters)")
    stop.add_argument("--idle-exit", type=_non_negative_float, metavar="S",
                      help="exit after S seconds with nothing new, once caught up")
    p.add_argument("--checkpoint-key", metavar="PATH",
                   help="the ledger's checkpoint public key (e.g. keys/ledger-checkpoint.pub):"
                   " also check the signature of every CHECKPOINT on the stream. Without "
                   "it, checkpoints are still compared with the events (head hash)")
    p.add_argument("--dead-after", type=_positive_float, default=DEFAULT_DEAD_AFTER,
                   metavar="S", help="report the broker silent after S seconds without a "
                   f"heartbeat (default {DEFAULT_DEAD_AFTER})")
    p.add_argument("--rcvhwm", type=_positive_int, default=DEFAULT_RCVHWM, metavar="N",
                   help=f"receive high-water mark of the SUB socket (default {DEFAULT_RCVHWM})")
    p.add_argument("--request-timeout", type=_positive_float, default=DEFAULT_REQUEST_TIMEOUT,
                   metavar="S", help="ask again when a REPLAY gets no answer in S seconds "
                   f"(default {DEFAULT_REQUEST_TIMEOUT})")
    add_client_args(p)
    add_version_arg(p)
    return p


def _number(kind: type[int] | type[float], check: Callable[[float], bool], what: str
            ) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


_non_negative_int = _number(int, lambda v: v >= 0, ">= 0")
_positive_int = _number(int, lambda v: v > 0, "> 0")
_non_negative_float = _number(float, lambda v: v >= 0, ">= 0")
_positive_float = _number(float, lambda v: v > 0, "> 0")


class _Printer:
    def __init__(self, fmt: str, out: TextIO, err: TextIO) -> None:
        self.fmt, self.out, self.err = fmt, out, err

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def json(self, obj: dict[str, Any]) -> None:
        self.line(json.dumps(obj))

    def event(self, row: dict[str, Any]) -> None:
        if self.fmt == "table":
            self.line(table_line(row))
        else:
            self.json(event_line(row))

    def alert(self, alert: Alert) -> None:
        if self.fmt == "table":
            self.line(alert_table_line(alert))
        else:
            self.json(alert.to_dict())
        loud = "!!! " if alert.alert in (CHAIN_BROKEN, CHECKPOINT_MISMATCH) else ""
        self.err.write(f"monitor: {loud}{alert.alert}: {alert.message}\n")
        self.err.flush()


def run_monitor(argv: list[str] | None = None, *, out: TextIO | None = None,
                err: TextIO | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        curve = client_paths(args, "monitor")
        checkpoint_key = (load_public_key(resolve_key(args.checkpoint_key, must_exist=True))
                          if args.checkpoint_key else None)
    except CoordinatorError as exc:
        (out or sys.stdout).write(json.dumps({"ok": False, "error": exc.to_dict()}) + "\n")
        return 2
    stop = install_stop_signals()
    printer = _Printer(args.format, out or sys.stdout, err or sys.stderr)
    filters = Filters(frozenset(args.plan_id),
                      frozenset(t.strip().upper().replace("-", "_") for t in args.event_type),
                      frozenset(args.actor))
    follower = EventFollower(args.broker, args.pub, from_seq=args.from_seq, live=args.live,
                             rcvhwm=args.rcvhwm, dead_after=args.dead_after,
                             request_timeout=args.request_timeout,
                             actor=identity_of(curve, "monitor"),
                             checkpoint_key=checkpoint_key, **curve)
    printed = 0
    try:
        if args.format == "table":
            printer.line(TABLE_HEADER)
        else:
            printer.json({"ok": True, "ready": True, "role": "monitor", "broker": args.broker,
                          "pub": args.pub, "from_seq": args.from_seq, "live": args.live})
        quiet_since = time.monotonic()
        done = args.until_seq is not None and args.until_seq <= args.from_seq
        while not done and not stop.is_set():
            item = follower.next(TICK * 2)
            now = time.monotonic()
            if item is None:
                done = (args.idle_exit is not None and follower.caught_up
                        and now - quiet_since >= args.idle_exit)
                continue
            if isinstance(item, Alert):
                printer.alert(item)
                continue
            quiet_since = now
            if filters.match(item):
                printer.event(item)
                printed += 1
            done = ((args.count is not None and printed >= args.count)
                    or (args.until_seq is not None and item["seq"] >= args.until_seq))
        printer.json({"summary": {**follower.stats.summary(), "printed": printed}})
    except BrokenPipeError:  # e.g. piped into head: the reader has gone
        return 0 if follower.chain_ok else 1
    finally:
        follower.close()
    return 0 if follower.chain_ok else 1


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_monitor(argv))


if __name__ == "__main__":
    main()
