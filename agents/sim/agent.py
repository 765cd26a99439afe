"""What every simulated agent shares: its configuration, its view of the plan's items,
and :class:`SimAgent`, the loop each role runs (events and messages in, commands out,
counters kept). The roles are in :mod:`agents.sim.roles`."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import zmq

from agents.client import AgentClient
from broker.security import CurvePaths
from schema import wire
from schema.endpoints import COORDINATOR, DEFAULT_FRONT, DEFAULT_PUB
from schema.errors import CoordinatorError, ErrorCode
from schema.vocabulary import EventType

PLANNER: Final = "Liam"
DEFAULT_WORKER: Final = "Codex"
DEFAULT_TIMEOUT: Final = 60.0
#: Re-read the plan when the event stream has been quiet this long (s).
RESYNC_AFTER: Final = 1.0
#: Most re-tries of one intent after conflicts before giving up on it.
MAX_CONFLICT_RETRIES: Final = 8
ROLES: Final = ("planner", "coordinator", "worker")

log = logging.getLogger("agent")


def role_of(name: str) -> str:
    return {PLANNER: "planner", COORDINATOR: "coordinator"}.get(name, "worker")


def item_ids(plan_id: str, items: int) -> list[str]:
    """The ids of a plan's items, known to every agent in advance."""
    return [f"{plan_id}-I{i:03d}" for i in range(1, items + 1)]


class Stopped(Exception):
    """The run ends early: deadline passed (TIMEOUT) or a stop signal (INTERRUPTED)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class ItemView:
    """What an agent knows of one item (from events, replies and re-reads)."""

    state: str
    assigned_to: str | None
    version: int
    priority: int = 0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ItemView:
        return cls(str(row["state"]), row.get("assigned_to"), int(row["version"]),
                   int(row.get("priority") or 0))

    def apply(self, change: dict[str, Any], version: int) -> None:
        for key in ("state", "assigned_to", "priority"):
            if key in change:
                setattr(self, key, change[key])
        self.version = version


@dataclass(slots=True)
class Config:
    name: str
    role: str
    front: str = DEFAULT_FRONT
    pub: str = DEFAULT_PUB
    plan_id: str = "P-AGENTS-001"
    items: int = 6
    workers: tuple[str, ...] = (DEFAULT_WORKER,)
    timeout: float = DEFAULT_TIMEOUT
    request_timeout: float = 2.0
    reprioritise: int = -1  # planner: how many items to re-prioritise (-1: all)
    curve: CurvePaths | None = None  # CURVE key files (--curve-secret, --server-key)


class SimAgent:
    """The loop every role shares: events and messages in, commands out, counters kept."""

    def __init__(self, config: Config, stop: threading.Event | None = None) -> None:
        self.config = config
        self.name = config.name
        self.plan_id = config.plan_id
        self.stop = stop or threading.Event()
        self.started = time.monotonic()
        self.deadline = self.started + config.timeout
        self.expected = item_ids(config.plan_id, config.items)
        self.view: dict[str, ItemView] = {}
        self.counts: dict[str, int] = {
            "commands": 0, "applied": 0, "conflicts_met": 0, "conflicts_resolved": 0,
            "rejected": 0, "items_done": 0}
        self.client = AgentClient(
            config.front, config.name, timeout=config.request_timeout, retries=3,
            session_id=f"S-{config.plan_id}-{config.name}-{uuid.uuid4().hex[:6]}",
            **(config.curve or {}))
        self.sub = self.client.ctx.socket(zmq.SUB)
        self.sub.linger = 0
        if self.client.curve is not None:
            self.client.curve.apply(self.sub)
        self.sub.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_EVENT)
        self.sub.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_HEARTBEAT)
        self.sub.connect(config.pub)
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.client.sock, zmq.POLLIN)
        self.last_news = time.monotonic()
        self.resync_wanted = False

    # --- hooks for the roles -----------------------------------------------------

    def start(self) -> None:
        """Everything before the main loop (register, announce, plan)."""

    def on_delivery(self, msg: wire.Deliver) -> None:
        """An agent message addressed to us."""

    def on_event(self, event_type: str, item_id: str | None, payload: dict[str, Any]) -> None:
        """After the view took in one event of our plan."""

    def act(self) -> None:
        """Look at the view and do what the role does (called after every change)."""

    def extra(self) -> dict[str, Any]:
        return {}

    # --- running -------------------------------------------------------------------

    def check(self) -> None:
        if self.stop.is_set():
            raise Stopped("INTERRUPTED", "stopped by SIGINT or SIGTERM")
        if time.monotonic() >= self.deadline:
            raise Stopped(str(ErrorCode.TIMEOUT), f"the plan was not done within "
                          f"{self.config.timeout}s")

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def run(self) -> dict[str, Any]:
        """Run to completion; the report is the JSON the process prints."""
        error: dict[str, Any] | None = None
        try:
            self.start()
            self.loop()
        except Stopped as exc:
            error = {"code": exc.code, "message": exc.message}
        except CoordinatorError as exc:
            error = exc.to_dict()
        except Exception as exc:  # a bug: still one JSON object on stdout
            log.exception("%s failed", self.name)
            error = {"code": str(ErrorCode.INTERNAL_ERROR), "message": repr(exc)}
        finally:
            self.close()
        return self.report(error)

    def loop(self) -> None:
        while True:
            self.check()
            if self.complete():
                self.resync()  # the ledger's word, not only the stream's
                if self.complete():
                    return
            self.act()
            self.pump(min(RESYNC_AFTER, self.remaining()))
            if self.resync_wanted or time.monotonic() - self.last_news >= RESYNC_AFTER:
                self.resync()

    def close(self) -> None:
        self.sub.close(linger=0)
        self.client.close()

    def report(self, error: dict[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": error is None, "agent": self.name, "role": self.config.role,
            "plan_id": self.plan_id, "session_id": self.client.session_id, **self.counts,
            **self.extra(), "resends": self.client.stats["resends"],
            "duration_s": round(time.monotonic() - self.started, 3)}
        if error is not None:
            out["error"] = error
        return out

    # --- input -----------------------------------------------------------------------

    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for events or messages and handle all that came."""
        if self.client.deliveries:  # queued while we waited for a reply
            self._deliveries()
            return
        ready = dict(self.poller.poll(int(timeout * 1000)))
        if self.client.sock in ready:
            msg = self.client.receive(0.01)  # reads what is waiting; a delivery ends it
            if msg is not None:
                self.client.deliveries.appendleft(msg)
            self._deliveries()
        if self.sub in ready:
            self._events()

    def _deliveries(self) -> None:
        while self.client.deliveries:
            msg = self.client.deliveries.popleft()
            log.debug("%s <- %s %s %s", self.name, msg.actor, msg.kind, msg.data)
            self.on_delivery(msg)

    def _events(self) -> None:
        """Take the stream one event at a time, acting on each before reading the next:
        an agent acts on what it knows, which may be out of date by then."""
        while True:
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frames[0] != wire.TOPIC_EVENT:
                continue  # heartbeat: proof of a live subscription, nothing more
            try:
                event = wire.decode(frames[1:]).event
            except (CoordinatorError, AttributeError):
                log.warning("%s: undecodable event ignored", self.name)
                self.resync_wanted = True
                continue
            if event.get("plan_id") != self.plan_id:
                continue
            self.last_news = time.monotonic()
            payload = json.loads(event["payload"])
            self._take_event(event["event_type"], event.get("item_id"), payload)
            self.on_event(event["event_type"], event.get("item_id"), payload)
            self.act()
            self._deliveries()
            self.check()

    def _take_event(self, event_type: str, item_id: str | None,
                    payload: dict[str, Any]) -> None:
        if item_id is None or event_type == EventType.PLAN_CONFLICT_DETECTED:
            return
        change = payload.get("change") or {}
        version = payload.get("new_version")
        if not isinstance(version, int):
            return
        view = self.view.get(item_id)
        if event_type == EventType.PLAN_ITEM_ADDED:
            if view is None:
                self.view[item_id] = ItemView(change.get("state", "TODO"),
                                              change.get("assigned_to"), version,
                                              int(change.get("priority") or 0))
            return
        if view is None or version > view.version + 1:
            self.resync_wanted = True  # we missed something
        if view is not None and version > view.version:
            view.apply(change, version)

    def wait_subscribed(self) -> None:
        """Handshake: wait for the first message on SUB (the broker's heartbeat comes
        every second), so events published from now on reach us."""
        while True:
            self.check()
            if self.sub.poll(int(min(0.5, self.remaining()) * 1000)):
                self._events()
                return

    def resync(self) -> bool:
        """Re-read the plan's items; False if the plan does not exist (yet)."""
        self.resync_wanted = False
        self.last_news = time.monotonic()
        try:
            rows = self.client.list_items(self.plan_id)
        except CoordinatorError as exc:
            if exc.code == ErrorCode.UNKNOWN_PLAN:
                return False
            raise
        for row in rows:
            fresh = ItemView.from_row(row)
            known = self.view.get(row["item_id"])
            if known is None or fresh.version >= known.version:
                self.view[row["item_id"]] = fresh
        return True

    def refresh(self, item_id: str) -> ItemView | None:
        row = self.client.get_item(item_id)
        if row is None:
            return None
        self.view[item_id] = fresh = ItemView.from_row(row)
        return fresh

    def complete(self) -> bool:
        return (all(i in self.view for i in self.expected)
                and all(v.state == "DONE" for v in self.view.values()))

    # --- output --------------------------------------------------------------------

    def command(self, send: Callable[[], wire.Reply]) -> wire.Reply:
        """Send one command and count its outcome; a bus failure is an error."""
        self.check()
        self.counts["commands"] += 1
        reply = send()
        if reply.status is None:  # the bus refused it even after the client's retries
            err = reply.error or {}
            raise CoordinatorError(ErrorCode.LEDGER_UNAVAILABLE,
                                   f"{err.get('code')}: {err.get('message', 'no outcome')}")
        key = {"APPLIED": "applied", "CONFLICT": "conflicts_met",
               "REJECTED": "rejected"}[reply.status]
        self.counts[key] += 1
        if reply.status == "REJECTED":
            log.warning("%s: rejected %s: %s", self.name, reply.id, reply.error)
        return reply

    def pursue(self, item_id: str, version: int, send: Callable[[int], wire.Reply],
               wanted: Callable[[ItemView], bool], change: dict[str, Any]
               ) -> wire.Reply | None:
        """Apply ``send(version)``; on CONFLICT re-read the item and, while ``wanted``
        still holds for it, retry with its fresh version. Returns the APPLIED reply, or
        None when the intent lapsed (someone else got there first) or was rejected.
        Every conflict met on the way is resolved by either outcome but a rejection."""
        met = 0
        reply = self.command(lambda: send(version))
        while reply.status == "CONFLICT":
            met += 1
            fresh = self.refresh(item_id)
            if fresh is None or not wanted(fresh) or met > MAX_CONFLICT_RETRIES:
                if fresh is not None and met <= MAX_CONFLICT_RETRIES:
                    self.counts["conflicts_resolved"] += met
                return None
            reply = self.command(functools.partial(send, fresh.version))
        if reply.status != "APPLIED":
            return None
        self.counts["conflicts_resolved"] += met
        view = self.view.get(item_id)
        if view is not None and reply.new_version is not None:
            view.apply(change, reply.new_version)
        return reply

    def send_until_delivered(self, to: str | None, kind: str, data: dict[str, Any]) -> None:
        """SEND, re-trying while the recipient has not registered yet (a handshake:
        between tries we keep reading our sockets)."""
        while True:
            self.check()
            try:
                self.client.send(to, kind, data)
                return
            except CoordinatorError as exc:
                if exc.code != ErrorCode.UNKNOWN_RECIPIENT:
                    raise
            self.pump(0.05)
