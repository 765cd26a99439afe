"""Agents racing on one item with the same expected_version, over real sockets.

Exactly one of them applies; every other gets CONFLICT with the current version and
leaves exactly one PLAN_CONFLICT_DETECTED event; the final state and the chain agree.
The racers are separate connections, one of them in a separate process; they are
started together by a handshake (the child waits for a "go" line), never by a sleep.
"""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import IO, Any

import pytest

from agents.client import AgentClient, AsyncAgentClient
from agents.tools.launch import Bus

ROUNDS = 20

#: The other racer, in its own process: it connects, says "ready", then for every line
#: {"command": ..., "command_id": ...} on stdin sends that command at once and prints
#: the reply as one JSON line.
RACER = r"""
import json, sys
from agents.client import AgentClient
with AgentClient(sys.argv[1], sys.argv[2], session_id=sys.argv[3], timeout=5) as client:
    client.wait_ready(timeout=10)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        order = json.loads(line)
        reply = client.send_command(order["command"], command_id=order["command_id"])
        print(json.dumps(reply.model_dump(mode="json")), flush=True)
"""


def read_line(stream: IO[str], timeout: float) -> dict[str, Any]:
    readable, _, _ = select.select([stream], [], [], timeout)
    assert readable, f"no line within {timeout}s"
    line = stream.readline()
    assert line, "the racer process exited"
    return dict(json.loads(line))


@pytest.fixture
def racer(bus: Bus) -> Iterator[tuple[subprocess.Popen[str], str]]:
    session = f"S-RACER-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen([sys.executable, "-c", RACER, bus.front, "Codex-2", session],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert read_line(proc.stdout, 30) == {"ready": True}
        yield proc, session
    finally:
        if proc.stdin:
            proc.stdin.close()  # EOF: the racer leaves its loop and exits
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout:
            proc.stdout.close()


def conflicts_in(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in timeline if e["event_type"] == "PLAN_CONFLICT_DETECTED"]


def check_race(client: AgentClient, item_id: str, replies: dict[str, dict[str, Any]],
               targets: dict[str, str], version: int) -> str:
    """The invariants of one round; returns the winner's command id."""
    statuses = sorted(r["status"] for r in replies.values())
    assert statuses == ["APPLIED"] + ["CONFLICT"] * (len(replies) - 1), replies
    winner = next(cid for cid, r in replies.items() if r["status"] == "APPLIED")
    assert replies[winner]["new_version"] == version + 1
    for cid, r in replies.items():
        if cid != winner:
            assert (r["ok"], r["current_version"], r["event_type"]) == (
                False, version + 1, "PLAN_CONFLICT_DETECTED")
            assert r["error"]["code"] == "VERSION_CONFLICT"
    timeline = client.timeline("task", item_id)
    conflicts = conflicts_in(timeline)
    # exactly one conflict event per losing attempt, each naming its command and versions
    assert sorted(e["command_id"] for e in conflicts) == sorted(
        cid for cid in replies if cid != winner)
    for event in conflicts:
        assert (event["payload"]["expected_version"], event["payload"]["current_version"]) == (
            version, version + 1)
    applied = [e for e in timeline if e["command_id"] == winner]
    assert len(applied) == 1 and applied[0]["event_type"] == "PLAN_ITEM_STATE_CHANGED"
    item = client.get_item(item_id)
    assert item is not None
    assert (item["state"], item["version"]) == (targets[winner], version + 1)
    return winner


def test_two_agents_in_two_processes_race_on_one_item(
        bus: Bus, racer: tuple[subprocess.Popen[str], str]) -> None:
    proc, _session = racer
    assert proc.stdin is not None and proc.stdout is not None
    wins = {"Codex": 0, "Codex-2": 0}
    with AgentClient(bus.front, "Codex", timeout=5) as codex:
        assert codex.create_plan("P-RACE", "Race").status == "APPLIED"
        for n in range(ROUNDS):
            item_id = f"I-RACE-{n:02d}"
            assert codex.add_item("P-RACE", item_id, f"Contended {n}").new_version == 1
            mine, theirs = f"codex:{n}", f"codex-2:{n}"
            # both act on version 1; the other process takes IN_PROGRESS, we take BLOCKED
            proc.stdin.write(json.dumps({"command_id": theirs, "command": {
                "action": "STATE_CHANGE", "item_id": item_id, "expected_version": 1,
                "change": {"state": "IN_PROGRESS"}}}) + "\n")
            proc.stdin.flush()  # go! (the racer is blocked reading this line)
            ours = codex.change_state(item_id, 1, "BLOCKED", command_id=mine)
            other = read_line(proc.stdout, 10)
            winner = check_race(codex, item_id,
                                {mine: ours.model_dump(mode="json"), theirs: other},
                                {mine: "BLOCKED", theirs: "IN_PROGRESS"}, version=1)
            wins["Codex" if winner == mine else "Codex-2"] += 1
        print(f"wins over {ROUNDS} rounds: {wins}")
        assert sum(wins.values()) == ROUNDS
        plan_events = codex.timeline("plan", "P-RACE")
        assert len(conflicts_in(plan_events)) == ROUNDS
        assert len(plan_events) == 1 + 3 * ROUNDS  # created; per round: added, applied, conflict
        verify = codex.query("verify")
        assert (verify["chain_status"], verify["events"], verify["mismatch_count"]) == (
            "OK", 1 + 3 * ROUNDS, 0)


async def test_many_async_agents_race_on_one_item(bus: Bus) -> None:
    names = ["Codex", "Codex-2", "Liam", "Mary"]
    clients = [AsyncAgentClient(bus.front, name, timeout=5) for name in names]
    try:
        await clients[0].create_plan("P-RACE-4", "Four racers")
        for n in range(ROUNDS):
            item_id = f"I-R4-{n:02d}"
            await clients[0].add_item("P-RACE-4", item_id, f"Contended {n}")
            states = ["IN_PROGRESS", "BLOCKED", "IN_PROGRESS", "BLOCKED"]
            ids = [f"{name}:{n}" for name in names]
            replies = await asyncio.gather(*(
                c.change_state(item_id, 1, state, command_id=cid)
                for c, state, cid in zip(clients, states, ids, strict=True)))
            with AgentClient(bus.front, "auditor", timeout=5) as auditor:
                check_race(auditor, item_id,
                           {r.id: r.model_dump(mode="json") for r in replies},
                           dict(zip(ids, states, strict=True)), version=1)
        with AgentClient(bus.front, "auditor", timeout=5) as auditor:
            assert len(conflicts_in(auditor.timeline("plan", "P-RACE-4"))) == 3 * ROUNDS
            assert auditor.query("verify")["chain_status"] == "OK"
    finally:
        for c in clients:
            await c.close()


def test_both_racers_get_their_change_in_with_the_conflict_loop(
        bus: Bus, racer: tuple[subprocess.Popen[str], str]) -> None:
    """Liam races with the conflict loop (re-read, retry with the fresh version), the
    other process without: Liam's change always lands, the racer's only if it was
    first, and each round records exactly one conflict."""
    proc, _session = racer
    assert proc.stdin is not None and proc.stdout is not None
    with AgentClient(bus.front, "Liam", timeout=5) as liam:
        liam.create_plan("P-LOOP", "Conflict loop")
        for n in range(ROUNDS):
            item_id = f"I-LOOP-{n:02d}"
            liam.add_item("P-LOOP", item_id, "Contended")
            theirs = f"codex-2:loop:{n}"
            proc.stdin.write(json.dumps({"command_id": theirs, "command": {
                "action": "UPDATE_ITEM", "item_id": item_id, "expected_version": 1,
                "change": {"assigned_to": "Codex-2"}}}) + "\n")
            proc.stdin.flush()
            attempts: list[int] = []

            def attempt(version: int, item_id: str = item_id,
                        attempts: list[int] = attempts) -> Any:
                attempts.append(version)
                # the first attempt acts on version 1, as the racer does
                return liam.update_item(item_id, 1 if len(attempts) == 1 else version,
                                        priority=9)

            reply, conflicts = liam.retry_on_conflict(item_id, attempt)
            other = read_line(proc.stdout, 10)
            assert reply.status == "APPLIED"
            if other["status"] == "CONFLICT":  # we were first: the racer lost, and stops
                assert conflicts == 0 and other["current_version"] == 2
                final_version, assignee = 2, None
            else:  # the racer was first: we met one conflict and retried with version 2
                assert (other["status"], conflicts, reply.new_version) == ("APPLIED", 1, 3)
                final_version, assignee = 3, "Codex-2"
            item = liam.get_item(item_id)
            assert item is not None
            assert (item["priority"], item["assigned_to"], item["version"]) == (
                9, assignee, final_version)
            assert len(conflicts_in(liam.timeline("task", item_id))) == 1
        assert liam.query("verify")["chain_status"] == "OK"
