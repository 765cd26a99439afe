"""The simulated agents (agents/sim/) as separate processes on a real bus.

Liam, Mary and the workers coordinate a plan to the end. The conflicts are by design,
not by luck: Liam re-prioritises every item with the version its IN_PROGRESS event
announced while the worker moves it to DONE with that same version, so exactly one of
the two writes meets a conflict per item; and workers that saw a pool item added all
claim it with version 1.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from agents.client import AgentClient
from agents.sim import item_ids, run_agents
from agents.tools.launch import Bus
from schema import wire


def check_consistent(bus: Bus, report: dict[str, Any]) -> None:
    """What must hold after any successful run, whoever won which race."""
    plan_id, items = report["plan_id"], report["items"]
    agents = report["agents"]
    assert report["ok"] is True, json.dumps(report, indent=1)
    assert report["items_done"] == items
    assert all(a["ok"] and a["exit_code"] == 0 for a in agents.values())
    for label, a in agents.items():
        assert a["conflicts_met"] == a["conflicts_resolved"], label
        assert a["rejected"] == 0, label
    assert report["conflicts_met"] == report["conflicts_resolved"]
    # every conflict an agent met is one PLAN_CONFLICT_DETECTED event, and vice versa
    assert report["conflict_events"] == report["conflicts_met"]
    workers = [a for a in agents.values() if a["role"] == "worker"]
    assert sum(w["items_done"] for w in workers) == items
    assert sum(w["claims_won"] for w in workers) == items
    with AgentClient(bus.front, "auditor") as auditor:
        final = auditor.list_items(plan_id)
        timeline = auditor.timeline("plan", plan_id)
        verify = auditor.query("verify")
    assert sorted(i["item_id"] for i in final) == item_ids(plan_id, items)
    assert {i["state"] for i in final} == {"DONE"}
    assert all(i["assigned_to"] in report["workers"] for i in final)
    # each item went TODO -> IN_PROGRESS -> DONE exactly once
    moves = [(e["item_id"], e["payload"]["change"]["state"]) for e in timeline
             if e["event_type"] == "PLAN_ITEM_STATE_CHANGED"]
    assert sorted(moves) == sorted((i, s) for i in item_ids(plan_id, items)
                                   for s in ("IN_PROGRESS", "DONE"))
    # one event per applied command and per conflict: nothing else wrote
    assert len(timeline) == report["applied"] + report["conflicts_met"]
    assert verify["chain_status"] == "OK" and verify["mismatch_count"] == 0
    assert verify == report["verify"]


def test_liam_mary_and_two_workers_finish_the_plan(bus: Bus, tmp_path: Path) -> None:
    started = time.monotonic()
    report = run_agents(bus.front, bus.pub, plan_id="P-AGENTS-T1", items=9,
                        workers=["Codex", "Codex-2"], timeout=20, log_dir=tmp_path / "agents")
    took = time.monotonic() - started
    print(json.dumps({k: v for k, v in report.items() if k != "agents"}), f"{took:.2f}s")
    check_consistent(bus, report)
    agents = report["agents"]
    assert set(agents) == {"Liam", "Mary", "Codex", "Codex-2"}
    assert agents["Mary"]["requests_handled"] == agents["Liam"]["requests_sent"] == 3
    assert agents["Mary"]["items_added"] == 3
    assert agents["Liam"]["items_added"] == 6 and agents["Liam"]["requests_accepted"] == 3
    # Liam's re-prioritisation against every item's DONE: one conflict each, at least
    assert report["conflicts_met"] >= 9
    # the three pool items were claimed by one worker each; the other lost the race
    assert agents["Codex"]["claims_lost"] + agents["Codex-2"]["claims_lost"] >= 1
    assert took < 30


def test_two_workers_of_the_same_name_share_the_work(bus: Bus, tmp_path: Path) -> None:
    report = run_agents(bus.front, bus.pub, plan_id="P-AGENTS-T2", items=6,
                        workers=["Codex", "Codex"], timeout=20, log_dir=tmp_path / "agents")
    check_consistent(bus, report)
    assert set(report["agents"]) == {"Liam", "Mary", "Codex", "Codex#2"}
    assert report["conflicts_met"] >= 6
    codexes = [report["agents"]["Codex"], report["agents"]["Codex#2"]]
    assert sum(c["claims_lost"] for c in codexes) >= 1  # both went for shared items


def test_run_agents_stops_everyone_when_one_fails(bus: Bus, tmp_path: Path) -> None:
    with AgentClient(bus.front, "someone") as client:
        assert client.create_plan("P-TAKEN", "already there").status == "APPLIED"
    started = time.monotonic()
    report = run_agents(bus.front, bus.pub, plan_id="P-TAKEN", items=3, workers=["Codex"],
                        timeout=20, log_dir=tmp_path / "agents")
    assert time.monotonic() - started < 15  # not the agents' 20 s timeout
    assert report["ok"] is False
    liam = report["agents"]["Liam"]
    assert (liam["ok"], liam["exit_code"], liam["error"]["code"]) == (
        False, 1, "EXPECTATION_FAILED")
    for label in ("Mary", "Codex"):
        agent = report["agents"][label]
        assert agent["ok"] is False and agent["error"]["code"] == "INTERRUPTED"
    assert report["verify"]["chain_status"] == "OK"


def _agent(bus: Bus, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agents.sim", "--broker", bus.front,
                             "--pub", bus.pub, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def test_a_lone_worker_gives_up_at_its_timeout(bus: Bus) -> None:
    started = time.monotonic()
    proc = _agent(bus, "--name", "Codex", "--plan-id", "P-NOBODY", "--timeout", "1.5")
    out, _ = proc.communicate(timeout=30)
    took = time.monotonic() - started
    report = json.loads(out)
    assert proc.returncode == 1
    assert (report["ok"], report["agent"], report["role"], report["error"]["code"]) == (
        False, "Codex", "worker", "TIMEOUT")
    assert report["commands"] == 0
    assert took < 10


def test_an_agent_stops_on_sigterm_and_still_reports(bus: Bus) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(bus.pub)
        assert sub.poll(10_000), "no heartbeat from the broker"  # subscription is live
        proc = _agent(bus, "--name", "Liam", "--plan-id", "P-SIGTERM", "--workers", "Codex",
                      "--timeout", "30")
        try:
            # Liam creates the plan, then waits for workers that never come
            deadline = time.monotonic() + 20
            created = False
            while not created:
                remaining = deadline - time.monotonic()
                assert remaining > 0 and sub.poll(int(remaining * 1000)), "no PLAN_CREATED"
                frames = sub.recv_multipart()
                if frames[0] == wire.TOPIC_EVENT:
                    event = wire.decode(frames[1:]).event
                    created = (event["event_type"], event["plan_id"]) == (
                        "PLAN_CREATED", "P-SIGTERM")
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=5)
    finally:
        sub.close(linger=0)
        ctx.term()
    report = json.loads(out)
    assert proc.returncode == 1
    assert (report["ok"], report["agent"], report["error"]["code"]) == (
        False, "Liam", "INTERRUPTED")
    assert (report["commands"], report["applied"]) == (1, 1)


def test_bin_agent_help() -> None:
    shim = Path(__file__).resolve().parents[2] / "bin" / "agent"
    done = subprocess.run([str(shim), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "--name" in done.stdout and "--workers" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "agents.sim", "--name", "Codex", "--items", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--items" in bad.stderr
