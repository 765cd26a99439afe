"""The client's request core without sockets: request building, reply matching, the
Lazy Pirate decisions, error mapping; and the two clients offering the same methods."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from agents.client import AgentClient, AsyncAgentClient, LazyPirate, Requests, RetryPolicy
from agents.client.core import (
    MAX_BACKOFF,
    REQUEST_METHODS,
    Done,
    GiveUp,
    Resend,
    ledger_ready,
    result_of,
    retry_conflict,
    route,
)
from schema import wire
from schema.errors import CoordinatorError, ErrorCode


class Who:
    actor = "Liam"
    session_id = "S-core"


def reply(msg_id: str = "r-1", **fields: Any) -> wire.Reply:
    return wire.Reply(id=msg_id, **{"ok": True, **fields})


def refusal(code: str, msg_id: str = "r-1") -> wire.Reply:
    return wire.Reply(id=msg_id, ok=False, error={"code": code, "message": "no"})


def ping(msg_id: str = "r-1") -> wire.Ping:
    return wire.Ping(id=msg_id, actor="Liam")


def new_stats() -> dict[str, int]:
    return {"requests": 0, "resends": 0}


# --- Lazy Pirate -----------------------------------------------------------------------


def test_silence_resends_the_same_frames_then_gives_up_with_timeout() -> None:
    stats = new_stats()
    pirate = LazyPirate(ping(), RetryPolicy(timeout=0.5, retries=2), stats)
    sent = [pirate.frames_to_send()]
    assert pirate.decide(None) == Resend(0.0)
    sent.append(pirate.frames_to_send())
    assert pirate.decide(None) == Resend(0.0)
    sent.append(pirate.frames_to_send())
    decision = pirate.decide(None)
    assert isinstance(decision, GiveUp)
    assert decision.error.code == ErrorCode.TIMEOUT
    assert "after 3 attempts of 0.5s" in decision.error.message
    assert sent[0] == sent[1] == sent[2] == wire.encode(ping())  # same id every time
    assert stats == {"requests": 1, "resends": 2}


@pytest.mark.parametrize("code", ["LEDGER_UNAVAILABLE", "BUSY"])
def test_a_retryable_refusal_backs_off_doubling_and_is_returned_at_the_last_attempt(
        code: str) -> None:
    stats = new_stats()
    pirate = LazyPirate(ping(), RetryPolicy(retries=6, backoff=0.2), stats)
    delays = []
    for _ in range(6):
        pirate.frames_to_send()
        decision = pirate.decide(refusal(code))
        assert isinstance(decision, Resend)
        delays.append(decision.delay)
    assert delays == [0.2, 0.4, 0.8, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    pirate.frames_to_send()
    last = pirate.decide(refusal(code))
    assert isinstance(last, Done) and last.reply.error == {"code": code, "message": "no"}
    assert stats == {"requests": 1, "resends": 6}


@pytest.mark.parametrize("answer", [
    reply(result={"x": 1}),
    refusal("UNKNOWN_QUERY"),  # a "no" is an answer, not a reason to ask again
    wire.Reply(id="r-1", ok=False, status="CONFLICT", current_version=3,
               error={"code": "LEDGER_UNAVAILABLE"}),  # decided: it has a status
])
def test_an_answer_is_returned_at_once(answer: wire.Reply) -> None:
    pirate = LazyPirate(ping(), RetryPolicy(retries=3), new_stats())
    pirate.frames_to_send()
    assert pirate.decide(answer) == Done(answer)


def test_zero_retries_means_one_attempt() -> None:
    pirate = LazyPirate(ping(), RetryPolicy(retries=0), new_stats())
    pirate.frames_to_send()
    assert isinstance(pirate.decide(None), GiveUp)
    pirate = LazyPirate(ping(), RetryPolicy(retries=0), new_stats())
    pirate.frames_to_send()
    assert isinstance(pirate.decide(refusal("BUSY")), Done)


def test_conflict_and_readiness_decisions() -> None:
    conflict = wire.Reply(id="c", ok=False, status="CONFLICT", current_version=2)
    applied = wire.Reply(id="c", ok=True, status="APPLIED", new_version=2)
    assert retry_conflict(conflict, 0, 5) and retry_conflict(conflict, 3, 5)
    assert not retry_conflict(conflict, 4, 5)  # the fifth try was the last
    assert not retry_conflict(applied, 0, 5)
    assert ledger_ready({"ledger_up": True}, now=10, deadline=5, timeout=1)
    assert not ledger_ready({"ledger_up": False}, now=4, deadline=5, timeout=1)
    with pytest.raises(CoordinatorError) as late:
        ledger_ready({"ledger_up": False}, now=5, deadline=5, timeout=1)
    assert late.value.code == ErrorCode.LEDGER_UNAVAILABLE


# --- replies: matching and errors ------------------------------------------------------


def test_route_matches_replies_by_id_and_keeps_deliveries() -> None:
    deliver = wire.Deliver(id="d-1", actor="Mary", to="Liam", kind="note")
    assert route(deliver, ()) is deliver
    answer = reply("r-2")
    assert route(answer, {"r-1", "r-2"}) is answer
    assert route(answer, {"r-1"}) is None  # an answer to an attempt given up on
    assert route(ping("r-2"), {"r-2"}) is None  # not something a broker answers with


def test_result_of_maps_error_replies_to_coordinator_errors() -> None:
    assert result_of(reply(result={"plans": []})) == {"plans": []}
    assert result_of(reply()) == {}
    with pytest.raises(CoordinatorError) as err:
        result_of(wire.Reply(id="r", ok=False, error={
            "code": "UNKNOWN_PLAN", "message": "no plan P", "field": "plan_id",
            "details": {"plan_id": "P"}}))
    assert (err.value.code, err.value.message, err.value.field, err.value.details) == (
        ErrorCode.UNKNOWN_PLAN, "no plan P", "plan_id", {"plan_id": "P"})
    with pytest.raises(CoordinatorError) as odd:
        result_of(wire.Reply(id="r", ok=False, error={"code": "FROM_THE_FUTURE"}))
    assert odd.value.code == ErrorCode.INTERNAL_ERROR


# --- requests --------------------------------------------------------------------------


def test_commands_carry_identity_ids_and_only_the_fields_given() -> None:
    requests = Requests(Who())
    created = requests.create_plan("P-1", "Plan").msg
    assert isinstance(created, wire.CommandMsg)
    assert (created.actor, created.session_id) == ("Liam", "S-core")
    assert created.id.startswith("Liam:") and len(created.id) == len("Liam:") + 32
    assert created.command == {"action": "CREATE_PLAN", "plan_id": "P-1", "title": "Plan"}
    assert requests.create_plan("P-1", "Plan").msg.id != created.id  # fresh id each time
    archived = requests.create_plan("P-1", "Plan", status="ARCHIVED", command_id="c-1").msg
    assert isinstance(archived, wire.CommandMsg) and archived.id == "c-1"
    assert archived.command["status"] == "ARCHIVED"
    moved = requests.change_state("I-1", 2, "DONE", command_id="c-2").msg
    assert isinstance(moved, wire.CommandMsg) and moved.command == {
        "action": "STATE_CHANGE", "item_id": "I-1", "expected_version": 2,
        "change": {"state": "DONE"}}
    updated = requests.update_item("I-1", 3, priority=5, assigned_to=None).msg
    assert isinstance(updated, wire.CommandMsg) and updated.command["change"] == {
        "priority": 5, "assigned_to": None}  # a change may clear a field
    added = requests.add_item("P-1", "I-2", "Two", kind="CHECK").msg
    assert isinstance(added, wire.CommandMsg) and added.command["kind"] == "CHECK"
    raw = requests.send_command({"action": "ADD_LINK", "x": 1}, command_id="c-3")
    assert raw.read(reply("c-3")) == reply("c-3")  # commands return the Reply itself


def test_queries_and_how_their_replies_read() -> None:
    requests = Requests(Who())
    call = requests.timeline("task", "I-1")
    assert isinstance(call.msg, wire.Query)
    assert (call.msg.query, call.msg.params) == ("task-timeline", {"task_id": "I-1"})
    assert call.read(reply(result={"events": [{"seq": 1}]})) == [{"seq": 1}]
    listed = requests.list_items("P-1")
    assert isinstance(listed.msg, wire.Query) and listed.msg.params == {"plan_id": "P-1"}
    assert requests.get_item("I-9").read(reply(result={"item": None})) is None
    assert requests.item_version("I-1").read(reply(result={"item": {"version": 4}})) == 4
    with pytest.raises(CoordinatorError) as missing:
        requests.item_version("I-9").read(reply(result={"item": None}))
    assert (missing.value.code, missing.value.field) == (ErrorCode.UNKNOWN_ITEM, "item_id")
    with pytest.raises(CoordinatorError) as refused:
        requests.list_plans().read(refusal("LEDGER_UNAVAILABLE"))
    assert refused.value.code == ErrorCode.LEDGER_UNAVAILABLE
    replay = requests.replay(5, 9, limit=3).msg
    assert isinstance(replay, wire.Replay) and (replay.from_seq, replay.to_seq,
                                                replay.limit) == (5, 9, 3)
    sent = requests.send(None, "request").msg
    assert isinstance(sent, wire.Send) and (sent.to, sent.data, sent.session_id) == (
        None, {}, "S-core")


# --- the two clients -------------------------------------------------------------------


def _public(obj: object) -> dict[str, Any]:
    return {n: getattr(obj, n) for n in dir(obj) if not n.startswith("_")}


def _shape(fn: Any) -> list[tuple[str, Any, Any]]:
    """Parameters by name, kind and default (annotations differ: T vs Awaitable[T])."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


async def test_both_clients_have_the_same_methods_with_the_same_parameters() -> None:
    sync, aio = AgentClient("tcp://127.0.0.1:9", "Liam"), AsyncAgentClient(
        "tcp://127.0.0.1:9", "Liam")
    try:
        sync_api, async_api = _public(sync), _public(aio)
        assert sync_api.keys() == async_api.keys()
        methods = sorted(n for n, v in sync_api.items() if inspect.ismethod(v))
        assert set(REQUEST_METHODS) < set(methods)
        assert {"request", "close", "retry_on_conflict", "wait_ready", "receive",
                "list_plans", "list_items", "show_plan", "timeline"} <= set(methods)
        for name in methods:
            assert inspect.ismethod(async_api[name]), name
            assert inspect.iscoroutinefunction(async_api[name]), name
            assert not inspect.iscoroutinefunction(sync_api[name]), name
            assert _shape(sync_api[name]) == _shape(async_api[name]), name
        for name in REQUEST_METHODS:  # mounted from the one builder, with its parameters
            assert _shape(sync_api[name]) == _shape(getattr(sync.requests, name)), name
            assert sync_api[name].__doc__ == getattr(Requests, name).__doc__
            built = inspect.signature(getattr(Requests, name)).return_annotation
            assert built == f"Call[{inspect.signature(sync_api[name]).return_annotation}]"
            assert (inspect.signature(async_api[name]).return_annotation
                    == inspect.signature(sync_api[name]).return_annotation), name
        assert _shape(AgentClient) == _shape(AsyncAgentClient)
    finally:
        sync.close()
        await aio.close()
