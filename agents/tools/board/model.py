"""The board's model: what the page shows, built from the follower's output. Pure: no
sockets, no clock of its own (every method that depends on time takes ``now``, seconds
since the epoch), no threads.

Fed, in order, what :class:`agents.tools.monitor.follower.Follower` hands out (events in
seq order, each exactly once, and alerts) plus what the pump around it sees (the SUB
connection dropping and coming back, the follower's counters) and what the board asks
the bus (PING, QUERY verify). It keeps:

- the plan state (plans, items, links), built by the ledger's own rule table
  (:func:`ledger.log.projection.project` into a :class:`~ledger.storage.memory.MemoryState`,
  the same rules ``verify_chain`` replays the log by), so a card shows exactly what the
  ledger's tables hold after the same events;
- a feed of the last ``feed_size`` events (a ring buffer: bounded memory);
- per-second counts of commands and conflicts by the events' own ``ts``, for the last
  ``rate_window`` seconds;
- the chain status as the board checked it, the ledger's own last verification, the last
  signed checkpoint and its verdict, the broker's and ledger's liveness, and notices (a
  broker restart, a broken chain) for the page's banner.

Every output is a JSON-ready dict; the server sends them as they are (docs of the shapes:
:meth:`BoardModel.snapshot`, :meth:`BoardModel.apply_event`, :meth:`BoardModel.status`).
"""

from __future__ import annotations

import collections
import contextlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from agents.tools.monitor.follower import (
    BROKER_RESUMED,
    BROKER_SILENT,
    CHAIN_BROKEN,
    CHECKPOINT_MISMATCH,
    LEDGER_DOWN,
    LEDGER_UP,
)
from agents.tools.monitor.output import summarise
from ledger.log.projection import project
from ledger.storage.memory import MemoryState
from ledger.storage.rows import Event, Item
from schema.errors import CoordinatorError
from schema.vocabulary import EVENT_COLUMNS, EventType

#: Events kept in the feed (the page shows these; older ones are in the ledger).
FEED_SIZE: Final = 2000
#: Seconds the rate chart covers.
RATE_WINDOW: Final = 60
#: Notices kept for the page (newest last).
NOTICES: Final = 20
#: How long the page's banner keeps saying that the broker came back (s).
RESUMED_BANNER_FOR: Final = 120.0
#: The alert the board raises itself when its follower thread died.
FOLLOWER_FAILED: Final = "BOARD_FOLLOWER_FAILED"
#: Item states, in the board's column order (schema.vocabulary's item states).
COLUMNS: Final = ("TODO", "IN_PROGRESS", "BLOCKED", "DONE")


def iso(ts: float) -> str:
    """Seconds since the epoch as the ledger writes times: ``2026-01-01T00:00:00.000000Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def epoch(ts: Any) -> float | None:
    """An event's ISO 8601 ``ts`` as seconds since the epoch; None if it is not one."""
    if not isinstance(ts, str):
        return None
    try:
        parsed = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class FollowState:
    """What the pump reports about its follower with every batch (its public state)."""

    last_seq: int = 0
    head_hint: int = 0
    caught_up: bool = False
    silent: bool = False
    ledger_up: bool | None = None
    #: the last checkpoint decided, ``CheckResult.to_dict()``, or None
    checkpoint: dict[str, Any] | None = None
    #: ``CheckpointWatch.stats``: checked, ok, mismatches, unchecked
    checkpoint_stats: dict[str, int] = field(default_factory=dict)
    #: ``FollowStats.summary()``
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _ItemMeta:
    last_seq: int = 0
    conflicts: int = 0
    last_conflict_seq: int | None = None


class BoardModel:
    """Plans, items, links, the feed, the rates and the bus's health, from events.

    ``feed_size``: events kept in the feed. ``rate_window``: seconds of the rate chart.
    ``signature_checked``: the follower verifies checkpoint signatures (it was given the
    ledger's public key); only labels the checkpoint status.
    """

    def __init__(self, *, feed_size: int = FEED_SIZE, rate_window: int = RATE_WINDOW,
                 signature_checked: bool = False, broker: str = "", pub: str = "") -> None:
        if feed_size < 1 or rate_window < 1:
            raise ValueError("feed_size and rate_window must be >= 1")
        self.rate_window = rate_window
        self.signature_checked = signature_checked
        self.broker, self.pub = broker, pub
        self.state = MemoryState()
        self.feed: collections.deque[dict[str, Any]] = collections.deque(maxlen=feed_size)
        #: the last seq applied (events are applied in seq order, each once)
        self.seq = 0
        self.applied = 0
        self.duplicates_ignored = 0
        self._items: dict[str, _ItemMeta] = {}
        self._rates: dict[int, list[int]] = {}
        self.totals = {"commands": 0, "conflicts": 0}
        # health
        self.follow = FollowState()
        self.chain_breaks: list[dict[str, Any]] = []
        self.checkpoint_mismatches: list[dict[str, Any]] = []
        self.state_errors: list[dict[str, Any]] = []
        self.follower_failed: str | None = None
        self.connected: bool | None = None
        self.connection_lost_at: float | None = None
        self.lost_after_seq: int | None = None
        self.reconnected_at: float | None = None
        self.restarts = 0
        self.ping: dict[str, Any] | None = None
        self.ping_at: float | None = None
        self.ping_error: dict[str, Any] | None = None
        self.verify: dict[str, Any] | None = None
        self.verify_at: float | None = None
        self.verify_error: dict[str, Any] | None = None
        self.notices: collections.deque[dict[str, Any]] = collections.deque(maxlen=NOTICES)

    # --- events -----------------------------------------------------------------------

    def apply_event(self, row: dict[str, Any], now: float) -> dict[str, Any] | None:
        """Apply one delivered event (the stored row, ``payload`` the JSON text).

        Returns the change for the page, ``{"seq", "entry": feed entry, "plan": plan row
        or None, "item": item row or None, "link": link row or None}``, or None for an
        event at or below the last seq applied (a duplicate: ignored and counted).
        An event the state cannot follow (possible only after a broken chain) still
        goes in the feed; the error is kept in ``state_errors``.
        """
        seq = int(row["seq"])
        if seq <= self.seq:
            self.duplicates_ignored += 1
            return None
        self.seq = seq
        self.applied += 1
        kind = row.get("event_type")
        conflict = kind == EventType.PLAN_CONFLICT_DETECTED
        payload = _payload(row)
        if not conflict:
            try:
                event = Event(**{c: row[c] for c in EVENT_COLUMNS})
                project(event, payload, self.state)
            except (CoordinatorError, KeyError, TypeError, ValueError) as exc:
                self.state_errors.append({"seq": seq, "error": str(exc)[:300]})
                del self.state_errors[:-NOTICES]
        item_id = row.get("item_id")
        item = self.state.state.items.get(item_id) if isinstance(item_id, str) else None
        if isinstance(item_id, str) and (item is not None or conflict):
            meta = self._items.setdefault(item_id, _ItemMeta())
            if conflict:
                meta.conflicts += 1
                meta.last_conflict_seq = seq
            else:
                meta.last_seq = seq
        plan_id = row.get("plan_id")
        plan = self.state.state.plans.get(plan_id) if isinstance(plan_id, str) else None
        link = None
        if kind == EventType.PLAN_LINK_ADDED:
            link_id = payload.get("link_id") or (payload.get("change") or {}).get("link_id")
            found = self.state.state.links.get(link_id) if isinstance(link_id, str) else None
            link = found.to_dict() if found is not None else None
        self._count(row.get("ts"), conflict, now)
        entry = {"seq": seq, "ts": row.get("ts"), "event_type": kind,
                 "actor": row.get("actor"), "plan_id": plan_id, "item_id": item_id,
                 "session_id": row.get("session_id"), "command_id": row.get("command_id"),
                 "conflict": conflict, "summary": summarise(row)}
        self.feed.append(entry)
        return {"seq": seq, "entry": entry,
                "plan": plan.to_dict() if plan is not None else None,
                "item": self._item(item) if item is not None else None, "link": link}

    def _item(self, item: Item) -> dict[str, Any]:
        meta = self._items.get(item.item_id) or _ItemMeta()
        return {**item.to_dict(), "last_seq": meta.last_seq, "conflicts": meta.conflicts,
                "last_conflict_seq": meta.last_conflict_seq}

    def _count(self, ts: Any, conflict: bool, now: float) -> None:
        self.totals["commands"] += 1
        self.totals["conflicts"] += conflict
        when = epoch(ts)
        if when is None:
            return
        second = min(int(when), int(now))
        if second <= int(now) - self.rate_window:
            return  # older than the chart
        counts = self._rates.setdefault(second, [0, 0])
        counts[0] += 1
        counts[1] += conflict

    # --- what the follower and the pump report ----------------------------------------

    def apply_alert(self, alert: dict[str, Any], now: float) -> None:
        """An alert of the follower (``Alert.to_dict()``)."""
        kind = alert.get("alert")
        record = {"seq": alert.get("seq"), "message": alert.get("message"), "at": iso(now)}
        if kind == CHAIN_BROKEN:
            self.chain_breaks.append(record)
            del self.chain_breaks[:-NOTICES]
        elif kind == CHECKPOINT_MISMATCH:
            self.checkpoint_mismatches.append(record)
            del self.checkpoint_mismatches[:-NOTICES]
        elif kind == FOLLOWER_FAILED:
            self.follower_failed = str(alert.get("message"))
        quiet = kind in (BROKER_SILENT, BROKER_RESUMED, LEDGER_DOWN, LEDGER_UP)
        self._notice(str(kind), str(alert.get("message")), now,
                     "warning" if quiet else "error")

    def set_follow(self, follow: FollowState) -> None:
        self.follow = follow

    def set_connection(self, connected: bool, now: float) -> None:
        """The SUB's connection to the broker went down (False) or was made (True)."""
        if connected == self.connected:
            return
        first = self.connected is None
        self.connected = connected
        if not connected:
            self.connection_lost_at = now
            self.lost_after_seq = self.seq
            self.reconnected_at = None
            self._notice("BROKER_CONNECTION_LOST", f"lost the connection to the broker "
                         f"({self.pub}) after seq {self.seq}; reconnecting", now, "warning")
        elif not first and self.connection_lost_at is not None:
            self.reconnected_at = now
            self.restarts += 1
            self._notice("BROKER_RECONNECTED", f"the broker is back (restarted or reachable "
                         f"again); resuming after seq {self.lost_after_seq}, fetching what "
                         f"was missed", now, "info")

    def set_ping(self, result: dict[str, Any] | None, error: dict[str, Any] | None,
                 now: float) -> None:
        """The broker's answer to PING (or the error when there was none)."""
        self.ping_at = now
        if result is not None:
            self.ping, self.ping_error = result, None
        else:
            self.ping_error = error

    def set_verify(self, result: dict[str, Any] | None, error: dict[str, Any] | None,
                   now: float) -> None:
        """The ledger's answer to QUERY verify (or the error when there was none)."""
        if result is not None:
            self.verify, self.verify_at, self.verify_error = result, now, None
        else:
            self.verify_error = error

    def _notice(self, kind: str, message: str, now: float, level: str) -> None:
        self.notices.append({"kind": kind, "message": message, "at": iso(now),
                             "level": level})

    # --- outputs ----------------------------------------------------------------------

    def rates(self, now: float) -> dict[str, Any]:
        """Commands (every event: an applied command or a recorded conflict) and
        conflicts per second, oldest first, for the ``rate_window`` seconds up to
        ``now``, by the events' own ``ts``. Rejected commands write no event and are not
        counted."""
        last = int(now)
        first = last - self.rate_window + 1
        for second in [s for s in self._rates if s < first]:
            del self._rates[second]
        commands = [self._rates.get(s, (0, 0))[0] for s in range(first, last + 1)]
        conflicts = [self._rates.get(s, (0, 0))[1] for s in range(first, last + 1)]
        return {"window": self.rate_window, "end": iso(last), "commands": commands,
                "conflicts": conflicts, "commands_last_window": sum(commands),
                "conflicts_last_window": sum(conflicts), "totals": dict(self.totals)}

    def chain(self) -> dict[str, Any]:
        """The hash chain as the board checked it, event by event."""
        f = self.follow
        first = f.stats.get("first_seq")
        if self.chain_breaks:
            first_break = self.chain_breaks[0]["seq"]
            return {"status": "BROKEN", "broken_at": first_break,
                    "breaks": len(self.chain_breaks), "last": self.chain_breaks[-1],
                    "checked_from": first, "checked_to": self.seq}
        return {"status": "OK" if self.seq else "EMPTY", "broken_at": None, "breaks": 0,
                "checked_from": first, "checked_to": self.seq}

    def checkpoint(self) -> dict[str, Any]:
        """The last signed checkpoint decided, and whether its signature is checked."""
        last = self.follow.checkpoint
        return {"last": last, "signature_checked": self.signature_checked,
                "stats": dict(self.follow.checkpoint_stats),
                "mismatches": list(self.checkpoint_mismatches[-3:])}

    def broker_state(self) -> str:
        """``up``, ``disconnected`` (the SUB lost its connection), ``silent`` (connected
        but no heartbeat for a while) or ``unknown`` (never connected yet)."""
        if self.connected is False:
            return "disconnected"
        if self.follow.silent:
            return "silent"
        if self.connected is None:
            return "unknown"
        return "up"

    def banner(self, now: float) -> dict[str, Any] | None:
        """The one message the page must show above everything, if any: a broken chain
        or checkpoint, a broker gone, a broker that came back (for a while)."""
        if self.follower_failed is not None:
            return {"level": "error", "kind": FOLLOWER_FAILED,
                    "text": f"The board stopped following the bus (restart it): "
                            f"{self.follower_failed}"}
        if self.chain_breaks:
            b = self.chain_breaks[0]
            return {"level": "error", "kind": "CHAIN_BROKEN",
                    "text": f"Hash chain BROKEN at seq {b['seq']} (as this board checked "
                            f"it): {b['message']}"}
        if self.checkpoint_mismatches:
            m = self.checkpoint_mismatches[-1]
            return {"level": "error", "kind": "CHECKPOINT_MISMATCH", "text": m["message"]}
        broker = self.broker_state()
        if broker in ("disconnected", "silent"):
            since = self.connection_lost_at if broker == "disconnected" else None
            when = f" since {iso(since)[11:19]} UTC" if since is not None else ""
            return {"level": "warning", "kind": "BROKER_DOWN",
                    "text": f"The broker is {broker}{when}: the board shows everything up "
                            f"to seq {self.seq} and resumes by itself when it is back."}
        if (self.reconnected_at is not None
                and now - self.reconnected_at < RESUMED_BANNER_FOR):
            lost = self.connection_lost_at or self.reconnected_at
            return {"level": "info", "kind": "BROKER_RESTARTED",
                    "text": f"The broker restarted: connection lost at {iso(lost)[11:19]}, "
                            f"back at {iso(self.reconnected_at)[11:19]} UTC. The board "
                            f"resumed after seq {self.lost_after_seq}; no event is lost "
                            f"or shown twice."}
        if self.follow.ledger_up is False:
            return {"level": "warning", "kind": "LEDGER_DOWN",
                    "text": "The broker reports the ledger down: no commands are being "
                            "committed until it is back."}
        return None

    def status(self, now: float) -> dict[str, Any]:
        """The header: ``seq`` (last applied), ``head_seq``, ``caught_up``, ``chain``,
        ``ledger_verify``, ``checkpoint``, ``broker``, ``ledger``, ``rates``, ``banner``,
        ``notices``, ``counts``, ``now``."""
        f = self.follow
        ping = self.ping or {}
        head = max(f.head_hint, self.seq, int(ping.get("head_seq") or 0))
        ledger_up = f.ledger_up if f.ledger_up is not None else ping.get("ledger_up")
        return {
            "now": iso(now), "seq": self.seq, "head_seq": head,
            "caught_up": f.caught_up and self.seq >= f.last_seq,
            "chain": self.chain(),
            "ledger_verify": {"result": _verify_summary(self.verify),
                              "at": iso(self.verify_at) if self.verify_at else None,
                              "error": self.verify_error,
                              "startup_check": ping.get("ledger_startup_check")},
            "checkpoint": self.checkpoint(),
            "broker": {"state": self.broker_state(), "silent": f.silent,
                       "front": self.broker, "pub": self.pub,
                       "restarts_seen": self.restarts,
                       "last_ping": iso(self.ping_at) if self.ping_at else None,
                       "ping_error": self.ping_error},
            "ledger": {"up": ledger_up},
            "rates": self.rates(now),
            "banner": self.banner(now),
            "notices": list(self.notices),
            "counts": {"plans": len(self.state.state.plans),
                       "items": len(self.state.state.items),
                       "links": len(self.state.state.links), "applied": self.applied,
                       "duplicates_ignored": self.duplicates_ignored,
                       "state_errors": len(self.state_errors),
                       "feed": len(self.feed), "feed_size": self.feed.maxlen},
            "follower": asdict(f)["stats"],
        }

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything the page needs to draw itself: ``seq``, ``plans``, ``items``,
        ``links``, ``feed`` (oldest first), ``columns``, ``status``."""
        s = self.state.state
        return {"seq": self.seq, "columns": list(COLUMNS),
                "plans": [p.to_dict() for p in sorted(s.plans.values(),
                                                      key=lambda p: p.plan_id)],
                "items": [self._item(i) for i in sorted(s.items.values(),
                                                        key=lambda i: i.item_id)],
                "links": [lk.to_dict() for lk in sorted(s.links.values(),
                                                        key=lambda lk: lk.link_id)],
                "feed": list(self.feed), "status": self.status(now)}

    def plan(self, plan_id: str) -> dict[str, Any] | None:
        """``{"plan", "items", "links"}`` of one plan, or None if the board has none."""
        s = self.state.state
        plan = s.plans.get(plan_id)
        if plan is None:
            return None
        return {"plan": plan.to_dict(),
                "items": [self._item(i) for i in sorted(s.items.values(),
                                                        key=lambda i: i.item_id)
                          if i.plan_id == plan_id],
                "links": [lk.to_dict() for lk in s.links.values() if lk.plan_id == plan_id]}

    def feed_entries(self, *, plan_id: str | None = None, actor: str | None = None,
                     event_type: str | None = None, limit: int | None = None
                     ) -> list[dict[str, Any]]:
        """The feed (oldest first) filtered by plan, actor and event type (None: any);
        the newest ``limit`` of the matches."""
        matches = [e for e in self.feed if feed_match(e, plan_id=plan_id, actor=actor,
                                                      event_type=event_type)]
        return matches[-limit:] if limit else matches


def feed_match(entry: dict[str, Any], *, plan_id: str | None, actor: str | None,
               event_type: str | None) -> bool:
    """Does a feed entry pass the filters (None or "": any)?"""
    return ((not plan_id or entry.get("plan_id") == plan_id)
            and (not actor or entry.get("actor") == actor)
            and (not event_type or entry.get("event_type") == event_type))


def _payload(row: dict[str, Any]) -> dict[str, Any]:
    payload = row.get("payload")
    if isinstance(payload, str):
        with contextlib.suppress(ValueError):
            payload = json.loads(payload)
    return payload if isinstance(payload, dict) else {}


def _verify_summary(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {k: result.get(k) for k in ("chain_status", "events", "head_seq",
                                       "mismatch_count")} | {
        "mismatches": list(result.get("mismatches") or [])[:3]}
