"""The three roles: :class:`Planner` (Liam), :class:`Coordinator` (Mary) and
:class:`Worker` (Codex and any other name); see :mod:`agents.sim`."""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Final

from agents.sim.agent import (
    MAX_CONFLICT_RETRIES,
    PLANNER,
    Config,
    ItemView,
    SimAgent,
    log,
)
from schema import wire
from schema.errors import CoordinatorError, ErrorCode
from schema.vocabulary import EventType


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
