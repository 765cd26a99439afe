"""The monitor's follow logic as a pure state machine: no sockets, no clock of its own.

:class:`Follower` is fed what the socket pump received, decoded (live events,
heartbeats, checkpoints from the broker's PUB; replies to its PING/REPLAY requests from
the DEALER), the time (``now``, seconds on any monotonic clock), and answers with
:data:`Action`\\ s: :class:`Deliver` an event, raise an :class:`Alert`, :class:`Send` a
request (PING for the head, REPLAY from seq N), or a :class:`Note` for the operator's
log. It implements the zguide "Clone" pattern's client side with the ledger's log as the
source of truth (docs/PROTOCOL.md, "Following without missing anything"):

- deliver strictly in seq order: a live or replayed event at or below the last delivered
  seq is a duplicate and dropped; a seq beyond the next one is a gap, fetched with REPLAY
  before anything later is delivered;
- check the hash chain of every delivered event (``prev_hash`` is the previous event's
  hash, ``hash`` is :func:`ledger.log.chain.event_hash` of the row); starting after seq
  N > 0, event N is fetched first to have the link;
- a heartbeat's head seq beyond the last delivered seq, with no event to fill it, is a
  silent tail loss: fetched with REPLAY; no message for ``dead_after`` seconds is a
  silent broker, reported once; when it is heard again everything after the last seq
  is fetched;
- signed checkpoints on the stream are compared with the delivered events
  (:class:`ledger.log.checkpoints.CheckpointWatch`).

Requests are decided only in :meth:`Follower.tick` (the pump calls it when it has
nothing to hand out), one at a time; a request without a reply in ``request_timeout``
seconds is given up and asked again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agents.client.core import RETRYABLE
from ledger.log.chain import GENESIS_HASH, event_hash
from ledger.log.checkpoints import Checkpoint, CheckpointWatch, CheckResult
from schema import wire
from schema.errors import CoordinatorError, ErrorCode

DEFAULT_DEAD_AFTER: Final = 3.5
DEFAULT_REQUEST_TIMEOUT: Final = 5.0
#: Pause before asking again after a failed, refused or fruitless request (s).
RETRY_DELAY: Final = 0.5
#: Live events further ahead than this are not buffered (REPLAY fetches them later).
MAX_PENDING: Final = 100_000

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


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand out the next event in seq order: the row as stored (``payload`` is the
    canonical JSON text)."""

    row: dict[str, Any]

    @property
    def seq(self) -> int:
        return int(self.row["seq"])


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` on the DEALER now. ``kind``: ``ping`` (ask the head, for a live
    start), ``catchup`` (REPLAY at start or after a silence) or ``gap`` (REPLAY of lost
    events)."""

    msg: wire.Ping | wire.Replay
    kind: str


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the operator's log (stderr): nothing is wrong with the events, but a
    request went unanswered or was refused, or a message was not understood."""

    text: str


Action = Deliver | Alert | Send | Note


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


class Follower:
    """Events in seq order, each exactly once, hash chain and checkpoints checked.

    ``from_seq``: the last seq already known (deliver ``from_seq + 1`` onwards; 0: from
    the beginning). ``live``: start at the current head instead (asks PING first).
    ``dead_after``: seconds without any message on the PUB stream (the broker heartbeats
    every second) before the broker is reported silent. ``request_timeout``: seconds to
    wait for a reply before asking again. ``id_prefix``: request ids are
    ``<id_prefix>:<n>``; ``actor`` goes in their header. ``pub`` only labels the
    BROKER_SILENT alert. ``now``: the clock at creation (the silence timer starts then).

    Every method that takes input returns the actions it leads to, in order; the caller
    performs them (see :class:`agents.tools.monitor.pump.EventFollower`).
    """

    def __init__(self, *, now: float, from_seq: int = 0, live: bool = False,
                 dead_after: float = DEFAULT_DEAD_AFTER,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT, actor: str = "monitor",
                 id_prefix: str = "monitor", pub: str = "",
                 checkpoint_key: Ed25519PublicKey | None = None) -> None:
        if from_seq < 0:
            raise CoordinatorError(ErrorCode.USAGE_ERROR, "from_seq must be >= 0",
                                   field="from_seq")
        self.dead_after = dead_after
        self.request_timeout = request_timeout
        self.actor = actor
        self.pub = pub
        #: signed checkpoints on the stream, checked against the events delivered
        self.checkpoints = CheckpointWatch(checkpoint_key)
        #: the last checkpoint decided (OK or not), for a status display (the board)
        self.last_checkpoint: CheckResult | None = None
        #: the seq after which delivery starts: ``from_seq``, or the head a live start
        #: learned from PING
        self.start_seq = from_seq
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
        self._req: _Request | None = None
        self._retry_at = 0.0
        self._last_heard = now
        self._ids = itertools.count(1)
        self._prefix = id_prefix
        self._out: list[Action] = []

    # --- state -----------------------------------------------------------------------

    @property
    def chain_ok(self) -> bool:
        return self.stats.chain_breaks == 0 and self.stats.checkpoint_mismatches == 0

    @property
    def caught_up(self) -> bool:
        """Everything up to the last known head was delivered and no fetch is under way."""
        return (self._synced and not self._need_head and self._req is None
                and self.last_hash is not None and not self._pending
                and self.head_hint <= self.last_seq)

    @property
    def in_flight(self) -> str | None:
        """The id of the request awaiting its reply, if any."""
        return None if self._req is None else self._req.id

    # --- input: the PUB stream --------------------------------------------------------

    def on_published(self, topic: bytes, msg: wire.BaseMessage, now: float) -> list[Action]:
        """A decoded message from the PUB stream, under ``topic``."""
        self._heard(now)
        if topic == wire.TOPIC_EVENT and isinstance(msg, wire.EventMsg):
            self._on_live_event(msg.event)
        elif topic == wire.TOPIC_HEARTBEAT and isinstance(msg, wire.Heartbeat):
            self._on_heartbeat(msg)
        elif topic == wire.TOPIC_CHECKPOINT and isinstance(msg, wire.CheckpointMsg):
            try:
                checkpoint = Checkpoint.from_dict(msg.model_dump())
            except CoordinatorError:
                self.stats.malformed += 1
            else:
                self._checkpoint_results(self.checkpoints.checkpoint(checkpoint))
        else:
            self.stats.malformed += 1
        return self._take()

    def on_undecodable(self, reason: str, now: float) -> list[Action]:
        """Something arrived on the PUB stream that is not a message (still proof the
        broker is there)."""
        self._heard(now)
        self.stats.malformed += 1
        self._out.append(Note(f"ignored a malformed message on the PUB stream: {reason}"))
        return self._take()

    def _heard(self, now: float) -> None:
        self._last_heard = now
        if self.silent:
            self.silent = False
            self._synced = False  # fetch whatever was published while we heard nothing
            self._alert(BROKER_RESUMED, f"the broker is heard again; resuming after seq "
                        f"{self.last_seq}", self.last_seq)

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

    # --- time: silence and requests ---------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Check the silence timer and the request in flight; decide the next request
        (at most one :class:`Send`). Call it when nothing else is to be handed out."""
        self._check_silence(now)
        self._maybe_request(now)
        return self._take()

    def _check_silence(self, now: float) -> None:
        if not self.silent and now - self._last_heard > self.dead_after:
            self.silent = True
            self._alert(BROKER_SILENT, f"nothing heard from the broker for "
                        f"{now - self._last_heard:.1f}s (no heartbeat); still trying, will "
                        f"resume after seq {self.last_seq}", self.last_seq,
                        {"pub": self.pub, "dead_after": self.dead_after})

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
            self._out.append(Note(f"no reply to {self._req.kind} request {self._req.id} "
                                  f"within {self.request_timeout}s; will ask again"))
            self._req = None
            self._retry_at = now + RETRY_DELAY
        if self.silent or now < self._retry_at:
            return
        if self._need_head:
            self._send(wire.Ping(id=self._new_id(), actor=self.actor), "ping", now)
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
                               to_seq=upper, limit=limit), reason, now, start)

    def _send(self, msg: wire.Ping | wire.Replay, kind: str, now: float,
              from_seq: int = 0) -> None:
        self._req = _Request(msg.id, kind, now + self.request_timeout, from_seq)
        self._out.append(Send(msg, kind))

    def _new_id(self) -> str:
        return f"{self._prefix}:{next(self._ids)}"

    # --- input: replies ----------------------------------------------------------------

    def on_undecodable_reply(self, reason: str) -> list[Action]:
        """Something arrived on the DEALER that is not a message."""
        self.stats.malformed += 1
        self._out.append(Note(f"ignored a malformed reply: {reason}"))
        return self._take()

    def on_reply(self, msg: wire.BaseMessage, now: float) -> list[Action]:
        """A decoded message from the DEALER: the reply to the request in flight, or a
        stale one (an answer to a request given up on), which is dropped."""
        req = self._req
        if not isinstance(msg, wire.Reply) or req is None or msg.id != req.id:
            self.stats.stale_replies += 1
            return self._take()
        self._req = None
        if not msg.ok:
            err = msg.error or {}
            retryable = err.get("code") in RETRYABLE
            if not retryable:  # not the bus's state: worth a line, and a longer pause
                self._out.append(Note(f"{req.kind} request refused: {err.get('code')}: "
                                      f"{err.get('message')}; will ask again"))
            self._retry_at = now + RETRY_DELAY * (1 if retryable else 4)
            return self._take()
        result = msg.result or {}
        if req.kind == "ping":
            self._on_head(result, now)
        else:
            self._on_replay(req, result, now)
        return self._take()

    def _on_head(self, result: dict[str, Any], now: float) -> None:
        if not result.get("ledger_up", True):  # its head may be stale: ask again
            self._retry_at = now + RETRY_DELAY
            return
        head = int(result.get("head_seq", 0))
        self._need_head = False
        self.start_seq = self.last_seq = self.stats.last_seq = head
        self.last_hash = GENESIS_HASH if head == 0 else None
        self.head_hint = max(self.head_hint, head)

    def _on_replay(self, req: _Request, result: dict[str, Any], now: float) -> None:
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
            self._retry_at = now + RETRY_DELAY

    def _on_replayed(self, req: _Request, rows: list[Any]) -> bool:
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

    # --- output ------------------------------------------------------------------------

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

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
        self._out.append(Deliver(row))

    def _checkpoint_results(self, results: list[CheckResult]) -> None:
        for result in results:
            self.last_checkpoint = result
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
