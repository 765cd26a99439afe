"""The simulated agents, one process each: ``bin/agent --name Liam|Mary|Codex ...``.

Roles (from the name unless ``--role`` says otherwise):

- **Liam** (planner) creates the plan and fills it with ``--items`` items, ids
  ``<plan>-I001``...: one in three is assigned straight to a worker, one in three is left
  unassigned in a shared pool, and one in three is asked of Mary (SEND kind "request", no
  recipient). While the work goes on he re-prioritises each item the moment he sees it
  go IN_PROGRESS, using the version from that event: he and the worker moving it to DONE
  both write against the same version, so exactly one of them meets a conflict.
- **Mary** (coordinator) registers with HELLO, turns every request into an item assigned
  to a worker (round-robin over ``--workers``) and acknowledges it to the sender.
- **Codex** (worker; any other name works too, and several processes may share one)
  takes items that are TODO and assigned to its name or to nobody, and works them
  TODO -> IN_PROGRESS -> DONE with expected versions. It acts on what the event stream
  told it, so two workers that saw the same item added both claim it with version 1: one
  wins, the loser gets CONFLICT, re-reads, sees the item taken and moves on. A conflict on
  its own item (Liam's re-prioritisation) is retried with the fresh version
  (``AgentClient.retry_on_conflict``).

Every agent follows the broker's event stream (SUB) to wake up, and re-reads the plan
(list-items) whenever the stream has been quiet for a second, so a lost event only costs
time. Before Liam adds items he waits for a "ready" message from Mary and from every
worker, each sent once its subscription is live, so all of them see every item added.

Coordination ends when all ``--items`` items of the plan are DONE; each agent then
prints ONE JSON object on stdout ({"ok", "agent", "commands", "applied", "conflicts_met",
"conflicts_resolved", "rejected", "items_done", ...}) and exits 0, or 1 after an error,
``--timeout`` or SIGINT/SIGTERM (the JSON then has "ok": false and "error").

:func:`run_agents` starts Liam, Mary and the workers as child processes and merges
their reports; it is what ``bin/run_scenario --agents`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq

from agents.client import AgentClient
from agents.tools.launch import stop_process
from broker.security import CurvePaths, add_client_args, client_paths
from ledger.runtime.service import add_version_arg, install_stop_signals, setup_logging
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


class Planner(SimAgent):
    """Liam: creates the plan, adds items, asks Mary for some, re-prioritises."""

    def __init__(self, config: Config, stop: threading.Event | None = None) -> None:
        super().__init__(config, stop)
        self.ready: dict[str, set[str]] = {"coordinator": set(), "worker": set()}
        self.extras = {"items_added": 0, "requests_sent": 0, "requests_accepted": 0,
                       "reprioritised": 0}
        self.reprioritised: set[str] = set()
        self.index = {item_id: n for n, item_id in enumerate(self.expected, 1)}

    def start(self) -> None:
        self.wait_subscribed()
        self.client.hello()
        reply = self.command(lambda: self.client.create_plan(
            self.plan_id, f"Simulated agents: {self.config.items} items", owner_agent=self.name))
        if reply.status != "APPLIED":
            raise CoordinatorError(ErrorCode.EXPECTATION_FAILED,
                                   f"could not create plan {self.plan_id}: {reply.error}")
        want_workers = len(self.config.workers)
        while len(self.ready["coordinator"]) < 1 or len(self.ready["worker"]) < want_workers:
            self.check()
            self.pump(min(0.5, self.remaining()))
        workers = self.config.workers
        for n, item_id in enumerate(self.expected, 1):
            title = f"Task {n} of {self.plan_id}"
            if n % 3 == 0:  # ask the coordinator to place it
                self.client.send(None, "request", {
                    "plan_id": self.plan_id, "item_id": item_id, "title": title,
                    "priority": n})
                self.extras["requests_sent"] += 1
                continue
            assignee = workers[(n // 3) % len(workers)] if n % 3 == 1 else None  # else: pool
            reply = self.command(functools.partial(
                self.client.add_item, self.plan_id, item_id, title, priority=n,
                assigned_to=assignee))
            if reply.status == "APPLIED":
                self.extras["items_added"] += 1

    def on_delivery(self, msg: wire.Deliver) -> None:
        if msg.kind == "ready":
            role = str(msg.data.get("role"))
            if role in self.ready:
                self.ready[role].add(str(msg.data.get("session_id", msg.actor)))
        elif msg.kind == "accepted":
            self.extras["requests_accepted"] += 1

    def on_event(self, event_type: str, item_id: str | None, payload: dict[str, Any]) -> None:
        if (event_type != EventType.PLAN_ITEM_STATE_CHANGED or item_id is None
                or (payload.get("change") or {}).get("state") != "IN_PROGRESS"
                or item_id in self.reprioritised):
            return
        limit = self.config.reprioritise
        if 0 <= limit <= len(self.reprioritised):
            return
        self.reprioritised.add(item_id)
        # the version the event announced: whoever writes next against it wins
        priority = 100 + self.index.get(item_id, 0)
        applied = self.pursue(
            item_id, int(payload["new_version"]),
            lambda v: self.client.update_item(item_id, v, priority=priority),
            lambda it: it.state == "IN_PROGRESS", {"priority": priority})
        if applied is not None:
            self.extras["reprioritised"] += 1

    def extra(self) -> dict[str, Any]:
        return dict(self.extras)


class Coordinator(SimAgent):
    """Mary: turns requests into items assigned to workers, round-robin."""

    def __init__(self, config: Config, stop: threading.Event | None = None) -> None:
        super().__init__(config, stop)
        self.next_worker = 0
        self.extras = {"requests_handled": 0, "items_added": 0}

    def start(self) -> None:
        self.wait_subscribed()
        self.client.hello()
        self.send_until_delivered(PLANNER, "ready", {
            "role": "coordinator", "name": self.name, "session_id": self.client.session_id})

    def on_delivery(self, msg: wire.Deliver) -> None:
        if msg.kind != "request":
            return
        self.extras["requests_handled"] += 1
        data = msg.data
        item_id, priority = data.get("item_id"), data.get("priority", 0)
        if not isinstance(item_id, str) or not isinstance(priority, int):
            log.warning("%s: bad request %s from %s: %s", self.name, msg.id, msg.actor, data)
            return
        workers = self.config.workers
        assignee = workers[self.next_worker % len(workers)]
        self.next_worker += 1
        # the request's id makes the command id: a request delivered twice adds one item
        reply = self.command(functools.partial(
            self.client.add_item, str(data.get("plan_id", self.plan_id)), item_id,
            str(data.get("title", item_id)), priority=priority, assigned_to=assignee,
            command_id=f"{self.name}:{msg.id}"))
        if reply.status == "APPLIED":
            self.extras["items_added"] += 1
        with contextlib.suppress(CoordinatorError):  # the requester may have gone
            self.client.send(msg.actor, "accepted", {
                "item_id": data["item_id"], "assigned_to": assignee, "status": reply.status})

    def extra(self) -> dict[str, Any]:
        return dict(self.extras)


class Worker(SimAgent):
    """Codex: claims TODO items assigned to it or to nobody, works them to DONE."""

    def __init__(self, config: Config, stop: threading.Event | None = None) -> None:
        super().__init__(config, stop)
        self.tried: set[tuple[str, int]] = set()
        self.extras = {"claims_won": 0, "claims_lost": 0}

    def start(self) -> None:
        self.wait_subscribed()
        self.resync()  # whatever exists already
        self.client.hello()
        self.send_until_delivered(PLANNER, "ready", {
            "role": "worker", "name": self.name, "session_id": self.client.session_id})

    def eligible(self, item: ItemView) -> bool:
        return item.state == "TODO" and item.assigned_to in (None, self.name)

    def act(self) -> None:
        for item_id in sorted(self.view):
            item = self.view[item_id]
            if self.eligible(item) and (item_id, item.version) not in self.tried:
                self.work(item_id)

    def work(self, item_id: str) -> None:
        item = self.view[item_id]
        self.tried.add((item_id, item.version))
        version = item.version
        if item.assigned_to is None:  # from the pool: claim it by assigning it to us
            reply = self.pursue(
                item_id, version,
                lambda v: self.client.update_item(item_id, v, assigned_to=self.name),
                lambda it: it.state == "TODO" and it.assigned_to is None,
                {"assigned_to": self.name})
            if reply is None or reply.new_version is None:
                self.extras["claims_lost"] += 1
                return
            version = reply.new_version
        # TODO -> IN_PROGRESS is the claim among workers of the same name
        reply = self.pursue(
            item_id, version, lambda v: self.client.change_state(item_id, v, "IN_PROGRESS"),
            lambda it: it.state == "TODO" and it.assigned_to == self.name,
            {"state": "IN_PROGRESS"})
        if reply is None or reply.new_version is None:
            self.extras["claims_lost"] += 1
            return
        self.extras["claims_won"] += 1
        self.finish(item_id, reply.new_version)

    def finish(self, item_id: str, version: int) -> None:
        """IN_PROGRESS -> DONE with the version our claim produced; on a conflict (Liam
        re-prioritised meanwhile) the client's conflict loop re-reads and retries."""
        # the "work": read the plan for context (one round trip, during which Liam may
        # well re-prioritise the item; the DONE below still says the version we hold)
        self.client.show_plan(self.plan_id)
        reply = self.command(lambda: self.client.change_state(item_id, version, "DONE"))
        if reply.status == "CONFLICT":
            reply, more = self.client.retry_on_conflict(
                item_id, lambda v: self.command(
                    lambda: self.client.change_state(item_id, v, "DONE")),
                max_attempts=MAX_CONFLICT_RETRIES)
            if reply.status == "APPLIED":
                self.counts["conflicts_resolved"] += 1 + more
        if reply.status == "APPLIED" and reply.new_version is not None:
            self.counts["items_done"] += 1
            view = self.view.get(item_id)
            if view is not None:
                view.apply({"state": "DONE"}, reply.new_version)

    def extra(self) -> dict[str, Any]:
        return dict(self.extras)


AGENTS: Final[dict[str, type[SimAgent]]] = {
    "planner": Planner, "coordinator": Coordinator, "worker": Worker}


# --- run_agents: all of them as child processes ----------------------------------------


def _agent_argv(name: str, front: str, pub: str, plan_id: str, items: int,
                workers: list[str], timeout: float) -> list[str]:
    return [sys.executable, "-m", "agents.sim", "--name", name, "--broker", front,
            "--pub", pub, "--plan-id", plan_id, "--items", str(items),
            "--workers", ",".join(workers), "--timeout", str(timeout)]


def _tail(path: Path, lines: int = 20) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def run_agents(front: str, pub: str, *, plan_id: str, items: int, workers: list[str],
               timeout: float, log_dir: Path | None = None) -> dict[str, Any]:
    """Start Liam, Mary and the workers as processes against a running broker, wait for
    all of them (killing them on timeout, error or interrupt), and report.

    The report: {"ok", "plan_id", "items", "items_done", "agents": {label: its JSON},
    "conflicts_met", "conflicts_resolved", "conflict_events", "commands", "applied",
    "rejected", "verify", "duration_s"}. ``conflict_events`` counts the plan's
    PLAN_CONFLICT_DETECTED events in the ledger; it equals the conflicts the agents met.
    """
    if items < 1 or not workers:
        raise CoordinatorError(ErrorCode.USAGE_ERROR, "need at least one item and one worker")
    started = time.monotonic()
    names = [COORDINATOR, *workers, PLANNER]
    labels: list[str] = []
    for name in names:
        label, n = name, 1
        while label in labels:
            n += 1
            label = f"{name}#{n}"
        labels.append(label)
    owned_tmp = None
    if log_dir is None:
        owned_tmp = tempfile.TemporaryDirectory(prefix="agents-")
        log_dir = Path(owned_tmp.name)
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    outputs: dict[str, bytes] = {label: b"" for label in labels}
    try:
        for label, name in zip(labels, names, strict=True):
            logs[label] = log_dir / f"agent-{label.replace('#', '-')}.log"
            with open(logs[label], "wb") as err:
                procs[label] = subprocess.Popen(
                    _agent_argv(name, front, pub, plan_id, items, workers, timeout),
                    stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        failed = _wait_all(procs, outputs, time.monotonic() + timeout + 10.0)
        reports: dict[str, Any] = {}
        for label in labels:
            text = outputs[label].decode(errors="replace").strip()
            try:
                reports[label] = json.loads(text.splitlines()[-1])
            except (IndexError, ValueError):
                reports[label] = {"ok": False, "agent": label, "error": {
                    "code": "INTERNAL_ERROR", "message": f"no JSON on stdout: {text[:200]!r}"}}
            reports[label]["exit_code"] = procs[label].returncode
            if not reports[label].get("ok"):
                reports[label]["stderr_tail"] = _tail(logs[label])
    finally:
        for proc in procs.values():
            stop_process(proc)
        if owned_tmp is not None:
            owned_tmp.cleanup()
    with AgentClient(front, "run_agents", timeout=5.0) as client:
        try:
            final = client.list_items(plan_id)
        except CoordinatorError:
            final = []
        verify = client.query("verify")
        conflict_events = sum(1 for e in client.timeline("plan", plan_id)
                              if e["event_type"] == EventType.PLAN_CONFLICT_DETECTED)
    done = sum(1 for i in final if i["state"] == "DONE")

    def total(key: str) -> int:
        return sum(int(r.get(key, 0)) for r in reports.values())

    ok = (not failed and all(r.get("ok") for r in reports.values()) and done == items
          and len(final) == items and verify.get("chain_status") == "OK")
    return {
        "ok": ok, "plan_id": plan_id, "items": items, "items_done": done,
        "workers": list(workers), "agents": reports,
        "conflicts_met": total("conflicts_met"), "conflicts_resolved": total("conflicts_resolved"),
        "conflict_events": conflict_events, "commands": total("commands"),
        "applied": total("applied"), "rejected": total("rejected"),
        "verify": verify, "duration_s": round(time.monotonic() - started, 3)}


def _wait_all(procs: dict[str, subprocess.Popen[bytes]], outputs: dict[str, bytes],
              deadline: float) -> bool:
    """Read every child's stdout to EOF. As soon as one fails, SIGTERM the others (they
    print their counts and exit); at the deadline SIGTERM everyone, and SIGKILL what is
    left 10 s later. True if any failed or had to be stopped."""
    failed = False
    stage = 0  # 1: SIGTERM sent at the deadline, 2: SIGKILL sent
    sel = selectors.DefaultSelector()
    for label, proc in procs.items():
        assert proc.stdout is not None
        sel.register(proc.stdout.fileno(), selectors.EVENT_READ, label)

    def signal_all(sig: int) -> None:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failed = True
                if stage == 2:
                    break
                log.warning("agents still running at the deadline: %s",
                            "SIGKILL" if stage else "SIGTERM")
                signal_all(signal.SIGKILL if stage else signal.SIGTERM)
                stage += 1
                deadline = time.monotonic() + 10.0
                continue
            for key, _ in sel.select(remaining):
                label = str(key.data)
                chunk = os.read(int(key.fd), 65536)
                if chunk:
                    outputs[label] += chunk
                    continue
                sel.unregister(key.fd)
                code = procs[label].wait(10)
                if code != 0 and not failed:
                    failed = True
                    log.warning("agent %s exited with %s; stopping the others", label, code)
                    signal_all(signal.SIGTERM)
    finally:
        sel.close()
    return failed


# --- bin/agent -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="agent",
        description="Run one simulated agent against a running broker until every item of "
        "the plan is DONE, then print one JSON object with its counts. Liam plans (creates "
        "the plan, adds items, asks Mary for some, re-prioritises items in progress), Mary "
        "turns requests into items for the workers, and any other name (Codex, Codex-2, "
        "...) is a worker that claims and completes items. Start Liam, Mary and the "
        "workers with the same --plan-id and --items; Liam waits for the others.",
        epilog="example: bin/agent --name Mary & bin/agent --name Codex & "
        "bin/agent --name Codex-2 & bin/agent --name Liam --workers Codex,Codex-2")
    p.add_argument("--name", required=True, help="Liam, Mary, Codex, Codex-2, ...")
    p.add_argument("--role", choices=ROLES,
                   help="default: planner for Liam, coordinator for Mary, else worker")
    p.add_argument("--broker", default=DEFAULT_FRONT, metavar="ADDR",
                   help=f"the broker's front end (default {DEFAULT_FRONT})")
    p.add_argument("--pub", default=DEFAULT_PUB, metavar="ADDR",
                   help=f"the broker's event stream (default {DEFAULT_PUB})")
    p.add_argument("--plan-id", default="P-AGENTS-001", metavar="ID",
                   help="the plan (default P-AGENTS-001)")
    p.add_argument("--items", type=int, default=6, metavar="N",
                   help="items in the plan; every agent must be given the same (default 6)")
    p.add_argument("--workers", default=DEFAULT_WORKER, metavar="NAMES",
                   help="comma-separated worker names, one per worker process, repeated "
                   "if several share a name: Mary assigns round-robin over them, Liam "
                   "waits for that many (default Codex)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"give up after S seconds (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--request-timeout", type=float, default=2.0, metavar="S",
                   help="per-request timeout before the client re-sends (default 2)")
    p.add_argument("--reprioritise", type=int, default=-1, metavar="N",
                   help="Liam re-prioritises the first N items that go IN_PROGRESS "
                   "(default -1: all; 0: none)")
    add_client_args(p)
    p.add_argument("--verbose", action="store_true")
    add_version_arg(p)
    args = p.parse_args(argv)
    try:
        curve = client_paths(args, args.name)
    except CoordinatorError as exc:
        p.error(f"{exc.code}: {exc.message}")
    workers = tuple(w.strip() for w in args.workers.split(",") if w.strip())
    if args.items < 1:
        p.error("--items must be at least 1")
    if not workers:
        p.error("--workers needs at least one name")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    setup_logging(f"agent {args.name}", args.verbose)
    return Config(args.name, args.role or role_of(args.name), args.broker, args.pub,
                  args.plan_id, args.items, workers, args.timeout, args.request_timeout,
                  args.reprioritise, curve)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    stop = install_stop_signals()
    try:
        agent = AGENTS[config.role](config, stop)
    except zmq.ZMQError as exc:
        report: dict[str, Any] = {"ok": False, "agent": config.name, "error": {
            "code": str(ErrorCode.USAGE_ERROR), "message": f"bad address: {exc}"}}
    else:
        report = agent.run()
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
