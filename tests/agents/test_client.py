"""The agent client library (sync and asyncio) against a real ledger and broker.

Every test talks to real processes on free loopback ports. Waits are handshakes
(wait_ready, a reply, a delivery) with timeouts, never sleeps.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from typing import Any

import pytest

from agents.client import AgentClient, AsyncAgentClient
from agents.tools.launch import Bus
from schema import wire
from schema.errors import CoordinatorError, ErrorCode
from tests.support.buses import BusFactory


@pytest.fixture(scope="module")
def bus(module_bus_factory: BusFactory) -> Bus:
    """One bus for the tests that leave it running; each uses its own plan ids."""
    return module_bus_factory.start("data/client.db", ready=True)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def events_of(client: AgentClient, command_id: str) -> list[dict[str, Any]]:
    return [e for e in client.replay(1) if e["command_id"] == command_id]


# --- plan commands and queries ---------------------------------------------------------


def test_sync_client_commands_queries_and_replay(bus: Bus) -> None:
    plan, i1, i2 = uid("P"), uid("I"), uid("I")
    with AgentClient(bus.front, "Liam", session_id=uid("S")) as liam:
        head = liam.query("summary")["events"]  # the ledger's committed head
        created = liam.create_plan(plan, "Client plan")
        assert (created.ok, created.status, created.event_type, created.new_version) == (
            True, "APPLIED", "PLAN_CREATED", 1)
        assert created.seq == head + 1 and created.hash is not None and len(created.hash) == 64
        assert liam.add_item(plan, i1, "First", assigned_to="Codex").status == "APPLIED"
        assert liam.add_item(plan, i2, "Second", kind="CHECK", priority=3).status == "APPLIED"
        updated = liam.update_item(i1, 1, title="First, renamed", priority=5)
        assert (updated.status, updated.event_type, updated.new_version) == (
            "APPLIED", "PLAN_ITEM_UPDATED", 2)
        moved = liam.change_state(i1, 2, "IN_PROGRESS")
        assert (moved.status, moved.event_type, moved.new_version) == (
            "APPLIED", "PLAN_ITEM_STATE_CHANGED", 3)
        linked = liam.add_link(uid("L"), i2, i1)
        assert (linked.status, linked.event_type) == ("APPLIED", "PLAN_LINK_ADDED")
        renamed = liam.update_plan(plan, 1, title="Client plan, renamed")
        assert (renamed.status, renamed.new_version) == ("APPLIED", 2)

        stale = liam.change_state(i1, 1, "DONE")
        assert (stale.ok, stale.status, stale.current_version) == (False, "CONFLICT", 3)
        assert stale.event_type == "PLAN_CONFLICT_DETECTED"
        assert stale.error is not None and stale.error["code"] == "VERSION_CONFLICT"
        bad = liam.change_state(i2, 1, "DONE")  # TODO -> DONE is not a transition
        assert (bad.status, bad.seq) == ("REJECTED", None)
        assert bad.error is not None and bad.error["code"] == "INVALID_TRANSITION"

        plans = {p["plan_id"]: p for p in liam.list_plans()}
        assert plans[plan]["title"] == "Client plan, renamed" and plans[plan]["version"] == 2
        shown = liam.show_plan(plan)
        assert shown["plan"]["owner_agent"] == "Liam"
        assert [lk["from_item_id"] for lk in shown["links"]] == [i2]
        items = {i["item_id"]: i for i in liam.list_items(plan)}
        assert (items[i1]["state"], items[i1]["version"], items[i1]["priority"]) == (
            "IN_PROGRESS", 3, 5)
        assert (items[i2]["kind"], items[i2]["state"], items[i2]["version"]) == ("CHECK", "TODO", 1)
        assert liam.get_item(i1) == items[i1]
        assert liam.get_item(uid("missing")) is None
        assert liam.item_version(i1) == 3
        assert liam.query("get-plan", plan_id=plan)["plan"]["version"] == 2

        task = liam.timeline("task", i1)
        assert [e["event_type"] for e in task] == [
            "PLAN_ITEM_ADDED", "PLAN_ITEM_UPDATED", "PLAN_ITEM_STATE_CHANGED",
            "PLAN_CONFLICT_DETECTED"]
        assert task[-1]["payload"]["current_version"] == 3
        session = liam.timeline("session", liam.session_id)
        assert len(session) == 8 and {e["actor"] for e in session} == {"Liam"}
        assert len(liam.timeline("plan", plan)) == 8
        assert liam.session_id in {s["session_id"] for s in
                                   liam.query("list-sessions")["sessions"]}
        summary = liam.query("summary")
        assert summary["events"] == head + 8

        replayed = liam.replay(head + 1)
        assert [e["seq"] for e in replayed] == list(range(head + 1, head + 9))
        assert replayed[0]["command_id"] == created.id
        assert [e["seq"] for e in liam.replay(head + 2, head + 4)] == [head + 2, head + 3,
                                                                       head + 4]
        assert len(liam.replay(head + 1, limit=2)) == 2
        verify = liam.query("verify")
        assert verify["chain_status"] == "OK" and verify["events"] == head + 8

        with pytest.raises(CoordinatorError) as unknown:
            liam.query("no-such-query")
        assert unknown.value.code == ErrorCode.UNKNOWN_QUERY
        with pytest.raises(CoordinatorError) as missing:
            liam.show_plan(uid("P-missing"))
        assert missing.value.code == ErrorCode.UNKNOWN_PLAN


async def test_async_client_commands_queries_and_replay(bus: Bus) -> None:
    plan, item = uid("P"), uid("I")
    async with AsyncAgentClient(bus.front, "Codex") as codex:
        head = (await codex.query("summary"))["events"]
        assert (await codex.create_plan(plan, "Async plan")).status == "APPLIED"
        assert (await codex.add_item(plan, item, "Work", assigned_to="Codex")).new_version == 1
        assert (await codex.update_item(item, 1, priority=2)).new_version == 2
        assert (await codex.change_state(item, 2, "IN_PROGRESS")).new_version == 3
        assert (await codex.change_state(item, 3, "DONE")).new_version == 4
        other = uid("I")
        assert (await codex.add_item(plan, other, "Other")).status == "APPLIED"
        assert (await codex.add_link(uid("L"), other, item)).status == "APPLIED"
        assert (await codex.update_plan(plan, 1, status="ARCHIVED")).status == "APPLIED"
        archived = await codex.change_state(other, 1, "IN_PROGRESS")
        assert archived.status == "REJECTED"
        assert archived.error is not None and archived.error["code"] == "PLAN_ARCHIVED"
        stale = await codex.update_item(item, 2, title="stale")
        assert (stale.status, stale.current_version) == ("CONFLICT", 4)

        got = await codex.get_item(item)
        assert got is not None and (got["state"], got["version"], got["priority"]) == (
            "DONE", 4, 2)
        listed = await codex.query("list-items", plan_id=plan)
        assert {i["item_id"] for i in listed["items"]} == {item, other}
        timeline = (await codex.query("task-timeline", task_id=item))["events"]
        assert [e["event_type"] for e in timeline][-1] == "PLAN_CONFLICT_DETECTED"
        events = await codex.replay(head + 1)
        assert [e["seq"] for e in events] == list(range(head + 1, head + 10))
        assert {e["session_id"] for e in events} == {codex.session_id}
        assert (await codex.query("verify"))["chain_status"] == "OK"
        with pytest.raises(CoordinatorError) as unknown:
            await codex.get_item("")  # params.item_id: required
        assert unknown.value.code == ErrorCode.MISSING_FIELD


async def test_async_client_reads_what_the_sync_client_reads(bus: Bus) -> None:
    """The reads the async client once lacked (list_plans, show_plan, list_items,
    timeline), and create_plan's status, against the same plan as the sync client."""
    plan, first, second = uid("P"), uid("I"), uid("I")
    async with AsyncAgentClient(bus.front, "Codex", session_id=uid("S")) as codex:
        created = await codex.create_plan(plan, "Both clients", owner_agent="Mary",
                                          status="ARCHIVED")
        assert (created.status, created.new_version) == ("APPLIED", 1)
        assert (await codex.update_plan(plan, 1, status="ACTIVE")).status == "APPLIED"
        assert (await codex.add_item(plan, first, "One", priority=4)).status == "APPLIED"
        assert (await codex.add_item(plan, second, "Two")).status == "APPLIED"
        assert (await codex.add_link(uid("L"), second, first)).status == "APPLIED"
        assert (await codex.change_state(first, 1, "IN_PROGRESS")).status == "APPLIED"
        assert (await codex.change_state(first, 1, "DONE")).status == "CONFLICT"
        reads: dict[str, Any] = {
            "list_plans": await codex.list_plans(),
            "show_plan": await codex.show_plan(plan),
            "list_items": await codex.list_items(plan),
            "plan_timeline": await codex.timeline("plan", plan),
            "task_timeline": await codex.timeline("task", first),
            "session_timeline": await codex.timeline("session", codex.session_id),
            "item_version": await codex.item_version(first),
        }
        with pytest.raises(CoordinatorError) as missing:
            await codex.show_plan(uid("P-missing"))
        assert missing.value.code == ErrorCode.UNKNOWN_PLAN
        with pytest.raises(CoordinatorError) as no_item:
            await codex.item_version(uid("I-missing"))
        assert no_item.value.code == ErrorCode.UNKNOWN_ITEM
    with AgentClient(bus.front, "Liam") as liam:
        assert reads == {
            "list_plans": liam.list_plans(),
            "show_plan": liam.show_plan(plan),
            "list_items": liam.list_items(plan),
            "plan_timeline": liam.timeline("plan", plan),
            "task_timeline": liam.timeline("task", first),
            "session_timeline": liam.timeline("session", codex.session_id),
            "item_version": liam.item_version(first),
        }
    mine = {p["plan_id"]: p for p in reads["list_plans"]}[plan]
    assert (mine["owner_agent"], mine["status"], mine["version"]) == ("Mary", "ACTIVE", 2)
    shown = reads["show_plan"]
    assert [lk["from_item_id"] for lk in shown["links"]] == [second]
    assert {i["item_id"]: i["priority"] for i in reads["list_items"]} == {first: 4, second: 0}
    assert reads["item_version"] == 2
    assert [e["event_type"] for e in reads["task_timeline"]] == [
        "PLAN_ITEM_ADDED", "PLAN_ITEM_STATE_CHANGED", "PLAN_CONFLICT_DETECTED"]
    assert len(reads["plan_timeline"]) == len(reads["session_timeline"]) == 7


async def test_async_client_matches_concurrent_replies_by_id(bus: Bus) -> None:
    plan = uid("P")
    async with AsyncAgentClient(bus.front, "Liam") as liam:
        assert (await liam.create_plan(plan, "Many at once")).status == "APPLIED"
        ids = [uid("I") for _ in range(25)]
        replies = await asyncio.gather(*(liam.add_item(plan, i, f"Item {i}") for i in ids))
        assert [r.status for r in replies] == ["APPLIED"] * 25
        assert len({r.seq for r in replies}) == 25
        assert len({r.id for r in replies}) == 25  # each reply went to its own request
        listed = await liam.query("list-items", plan_id=plan)
        assert sorted(i["item_id"] for i in listed["items"]) == sorted(ids)
        assert liam.stats["resends"] == 0


def test_retry_on_conflict_rereads_and_retries(bus: Bus) -> None:
    plan, item = uid("P"), uid("I")
    with AgentClient(bus.front, "Liam") as liam, AgentClient(bus.front, "Codex") as codex:
        liam.create_plan(plan, "Conflict loop")
        liam.add_item(plan, item, "Contended")
        seen = codex.item_version(item)  # Codex reads version 1 ...
        assert liam.update_item(item, seen, priority=7).status == "APPLIED"  # ... Liam moves on
        tried: list[int] = []

        def attempt(version: int) -> wire.Reply:
            # the first try uses what Codex read earlier, as an agent acting on old news
            tried.append(version)
            return codex.change_state(item, seen if len(tried) == 1 else version,
                                      "IN_PROGRESS")

        reply, conflicts = codex.retry_on_conflict(item, attempt)
        assert (reply.status, reply.new_version, conflicts) == ("APPLIED", 3, 1)
        conflict_events = [e for e in codex.timeline("task", item)
                           if e["event_type"] == "PLAN_CONFLICT_DETECTED"]
        assert len(conflict_events) == 1 and conflict_events[0]["actor"] == "Codex"


async def test_async_retry_on_conflict(bus: Bus) -> None:
    plan, item = uid("P"), uid("I")
    async with AsyncAgentClient(bus.front, "Liam") as liam, \
            AsyncAgentClient(bus.front, "Codex") as codex:
        await liam.create_plan(plan, "Conflict loop")
        await liam.add_item(plan, item, "Contended")
        await liam.update_item(item, 1, priority=1)
        calls: list[int] = []

        async def attempt(version: int) -> wire.Reply:
            calls.append(version)
            return await codex.update_item(item, 1 if len(calls) == 1 else version, title="x")

        reply, conflicts = await codex.retry_on_conflict(item, attempt)
        assert (reply.status, reply.new_version, conflicts, calls) == ("APPLIED", 3, 1, [2, 2])


# --- idempotency, lost replies, a dead ledger ------------------------------------------


def test_same_command_id_twice_is_applied_once_and_replayed(bus: Bus) -> None:
    plan = uid("P")
    with AgentClient(bus.front, "Liam") as liam:
        first = liam.create_plan(plan, "Once", command_id=f"{plan}:create")
        again = liam.create_plan(plan, "Once", command_id=f"{plan}:create")
        assert (first.status, first.replayed) == ("APPLIED", False)
        assert (again.status, again.replayed) == ("APPLIED", True)
        assert (again.seq, again.hash, again.new_version) == (first.seq, first.hash, 1)
        assert len(events_of(liam, f"{plan}:create")) == 1

        reused = liam.create_plan(plan, "Other content", command_id=f"{plan}:create")
        assert (reused.ok, reused.status, reused.seq) == (False, "REJECTED", None)
        assert reused.error is not None and reused.error["code"] == "COMMAND_ID_REUSED"
        assert len(events_of(liam, f"{plan}:create")) == 1
        assert liam.show_plan(plan)["plan"]["title"] == "Once"


class _Watched(AgentClient):
    """A client that says when an attempt went unanswered (its reply was "lost")."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.silence = threading.Event()

    def _recv_until(self, request_id: str, deadline: float, *,
                    until_delivery: bool = False) -> wire.Reply | None:
        reply = super()._recv_until(request_id, deadline, until_delivery=until_delivery)
        if reply is None and request_id:
            self.silence.set()
        return reply


def test_lost_reply_is_retried_with_the_same_id_and_applied_exactly_once(
        bus_factory: BusFactory) -> None:
    with bus_factory.start("data/client.db", ready=True) as bus:
        liam = _Watched(bus.front, "Liam", timeout=0.3, retries=30)
        with liam:
            liam.wait_ready()
            outcome: dict[str, Any] = {}

            def send() -> None:
                try:
                    outcome["reply"] = liam.create_plan("P-LOST", "lost reply",
                                                        command_id="lost-1")
                except CoordinatorError as exc:  # pragma: no cover - reported below
                    outcome["error"] = exc

            bus.ledger.proc.send_signal(signal.SIGSTOP)  # alive, silent: no reply comes back
            sender = threading.Thread(target=send)
            try:
                sender.start()
                assert liam.silence.wait(10), "the first attempt was never left unanswered"
            finally:
                bus.ledger.proc.send_signal(signal.SIGCONT)
            sender.join(20)
            assert not sender.is_alive()
            assert "error" not in outcome, outcome
            reply = outcome["reply"]
            assert (reply.status, reply.id) == ("APPLIED", "lost-1")
            assert liam.stats["resends"] >= 1
            assert [e["command_id"] for e in liam.replay(1)] == ["lost-1"]
            # and a later re-send of the same id is answered from the record
            again = liam.create_plan("P-LOST", "lost reply", command_id="lost-1")
            assert (again.status, again.replayed, again.seq) == ("APPLIED", True, reply.seq)
            assert liam.query("verify")["chain_status"] == "OK"


def test_ledger_unavailable_is_fast_and_the_bus_recovers_after_a_restart(
        bus_factory: BusFactory) -> None:
    with bus_factory.start("data/client.db", ready=True, ledger_args=["--heartbeat", "0.2"],
                           broker_args=["--liveness", "1.0", "--heartbeat", "0.2"]) as bus, \
            AgentClient(bus.front, "Liam", timeout=5.0, retries=3) as liam:
        budget = liam.timeout * (liam.retries + 1)  # 20 s before the client gives up
        assert liam.create_plan("P-DOWN", "before the crash").status == "APPLIED"
        bus.ledger.kill()

        started = time.monotonic()
        refused = liam.add_item("P-DOWN", "I-1", "while down", command_id="down-1")
        command_took = time.monotonic() - started
        assert refused.status is None and not refused.ok  # not decided: retry later
        assert refused.error is not None and refused.error["code"] == "LEDGER_UNAVAILABLE"
        started = time.monotonic()
        with pytest.raises(CoordinatorError) as query_refused:
            liam.list_plans()
        query_took = time.monotonic() - started
        assert query_refused.value.code == ErrorCode.LEDGER_UNAVAILABLE
        assert command_took < budget / 4 and query_took < budget / 4, (command_took, query_took)
        assert liam.ping()["broker_up"] is True  # the broker itself still answers

        bus.restart_ledger()
        assert liam.wait_ready(timeout=15)["ledger_up"] is True
        retried = liam.add_item("P-DOWN", "I-1", "while down", command_id="down-1")
        assert (retried.status, retried.replayed, retried.seq) == ("APPLIED", False, 2)
        assert [p["plan_id"] for p in liam.list_plans()] == ["P-DOWN"]
        verify = liam.query("verify")
        assert (verify["chain_status"], verify["events"]) == ("OK", 2)


# --- agent-to-agent messages -----------------------------------------------------------


def test_hello_send_deliver_routing(bus: Bus) -> None:
    mary_name, liam_name = "Mary", uid("Liam")
    with AgentClient(bus.front, mary_name) as mary, AgentClient(bus.front, liam_name) as liam, \
            AgentClient(bus.front, uid("Bob")) as bob:
        assert mary.hello() == {"registered": "Mary"}
        assert liam.hello() == {"registered": liam_name}

        assert bob.send(None, "request", {"title": "do X"}) == {"delivered_to": "Mary"}
        started = time.monotonic()
        got = mary.receive(10)
        assert time.monotonic() - started < 5  # it returns on arrival, not at the timeout
        assert got is not None
        assert (got.actor, got.to, got.kind, got.data, got.session_id) == (
            bob.actor, "Mary", "request", {"title": "do X"}, bob.session_id)

        assert mary.send(liam_name, "accepted", {"item_id": "I-9"}) == {
            "delivered_to": liam_name}
        note = liam.receive(10)
        assert note is not None and (note.actor, note.kind, note.data) == (
            "Mary", "accepted", {"item_id": "I-9"})

        with pytest.raises(CoordinatorError) as nobody:
            bob.send(uid("Nobody"), "request")
        assert nobody.value.code == ErrorCode.UNKNOWN_RECIPIENT
        assert mary.receive(0.2) is None and liam.receive(0.2) is None

        # a delivery that arrives while we wait for a reply is kept for receive()
        bob.send(liam_name, "first")
        assert liam.ping()["broker_up"] is True
        kept = liam.receive(10)
        assert kept is not None and kept.kind == "first"


def test_no_recipient_without_mary_is_unknown_recipient(bus_factory: BusFactory) -> None:
    with bus_factory.start("data/client.db", ready=True) as bus, \
            AgentClient(bus.front, "Liam") as liam:
        with pytest.raises(CoordinatorError) as err:
            liam.send(None, "request", {"title": "anyone?"})
        assert err.value.code == ErrorCode.UNKNOWN_RECIPIENT
        assert err.value.field == "to"


async def test_async_hello_send_receive(bus: Bus) -> None:
    name = uid("Codex")
    async with AsyncAgentClient(bus.front, name) as codex, \
            AsyncAgentClient(bus.front, uid("Liam")) as liam:
        assert await codex.hello() == {"registered": name}
        assert await liam.send(name, "work", {"n": 1}) == {"delivered_to": name}
        got = await codex.receive(10)
        assert got is not None and (got.actor, got.kind, got.data) == (liam.actor, "work",
                                                                       {"n": 1})
        assert await codex.receive(0.2) is None
        with pytest.raises(CoordinatorError) as err:
            await liam.send(uid("Nobody"), "work")
        assert err.value.code == ErrorCode.UNKNOWN_RECIPIENT
