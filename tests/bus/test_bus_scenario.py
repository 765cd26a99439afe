"""The scenario over the bus: equal to the in-process result, and the process lifecycle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agents.client import AgentClient
from agents.tools.launch import Bus
from agents.tools.run_scenario import play
from ledger.log.verify import verify_store
from ledger.plans.ledger import Ledger
from ledger.plans.scenario import apply_scenario, build_report
from ledger.storage import sqlite
from ledger.storage.sqlite import SqliteStore
from schema import wire
from schema.scenario import load_scenario
from tests.support.buses import BusFactory

PROJECT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((PROJECT / "scenarios").glob("*.json"))


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what legitimately differs between two runs (hashes embed
    event ids and timestamps)."""
    steps = [{k: v for k, v in s.items() if k != "hash"} for s in report["steps"]]
    return {**report, "steps": steps}


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_over_the_bus_equals_in_process(path: Path, sandbox: Path, bus: Bus) -> None:
    scenario = load_scenario(path)
    over_bus = build_report(scenario, play(scenario, bus.front, timeout=5))

    local_db = sandbox / "data" / "local.db"
    sqlite.initialise(local_db)
    with SqliteStore(local_db) as store:
        in_process = apply_scenario(Ledger(store), scenario)
        local_items = {i.item_id: (i.state, i.version, i.priority, i.assigned_to)
                       for i in store.list_items()}
        local_plans = {p.plan_id: (p.status, p.version, p.title) for p in store.list_plans()}

    assert over_bus["ok"] is True
    assert _comparable(over_bus) == _comparable(in_process)
    with AgentClient(bus.front, "auditor", timeout=5) as client:
        verify = client.query("verify")
        plans = client.list_plans()
        items = [i for p in plans for i in client.list_items(p["plan_id"])]
    assert verify["chain_status"] == "OK"
    assert verify["events"] == in_process["events_written"]
    assert {p["plan_id"]: (p["status"], p["version"], p["title"]) for p in plans} == local_plans
    assert {i["item_id"]: (i["state"], i["version"], i["priority"], i["assigned_to"])
            for i in items} == local_items


def test_l3_flow_evidence_over_the_bus(sandbox: Path, bus: Bus) -> None:
    scenario = load_scenario(sandbox / "scenarios" / "L3_PLAN_FLOW_001.json")
    report = build_report(scenario, play(scenario, bus.front))
    assert {k: report[k] for k in ("plan_created", "items_added", "item_updates",
                                   "state_changes", "conflicts", "events_written")} == {
        "plan_created": True, "items_added": 2, "item_updates": 1, "state_changes": 2,
        "conflicts": 1, "events_written": 7}
    with AgentClient(bus.front, "auditor") as client:
        timeline = client.timeline("session", "S-L3-DEMO-001")
        assert [e["seq"] for e in timeline] == list(range(1, 8))
        assert [e["event_type"] for e in timeline].count("PLAN_CONFLICT_DETECTED") == 1
        items = {i["item_id"]: (i["state"], i["version"])
                 for i in client.list_items("P-L3-DEMO-001")}
        assert items == {"I-001": ("DONE", 3), "I-002": ("TODO", 2)}
        # the second time, the same command ids write nothing and report the same outcomes
        again = build_report(scenario, play(scenario, bus.front))
        assert again["events_written"] == 0 and again["replayed"] == 7
        assert [s["status"] for s in again["steps"]] == [s["status"] for s in report["steps"]]
        assert client.ping()["head_seq"] == 7


def test_each_step_comes_from_its_actors_own_connection(sandbox: Path, bus: Bus) -> None:
    scenario = load_scenario(sandbox / "scenarios" / "L3_PLAN_FLOW_001.json")
    play(scenario, bus.front)
    with AgentClient(bus.front, "auditor") as client:
        events = client.replay(1)
    assert [e["actor"] for e in events] == [s.command.actor for s in scenario.steps]
    assert {e["session_id"] for e in events} == {"S-L3-DEMO-001"}


def _cli(name: str, *args: str, env: dict[str, str], timeout: float = 60
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / name), *args],
                          capture_output=True, text=True, env={**os.environ, **env},
                          timeout=timeout)


def test_run_scenario_cli_prints_the_evidence_and_stops_its_children(sandbox: Path) -> None:
    done = _cli("os-run-scenario", "scenarios/L3_PLAN_FLOW_001.json",
                env={"OS_SANDBOX_ROOT": str(sandbox)})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert (report["items_added"], report["item_updates"], report["state_changes"],
            report["conflicts"], report["events_written"]) == (2, 1, 2, 1, 7)
    assert report["verify"]["chain_status"] == "OK" and report["verify"]["events"] == 7
    # the ledger it started has exited: the database is closed and verifies on its own
    db = sandbox / report["bus"]["db"]
    with SqliteStore(db, readonly=True) as store:
        assert verify_store(store)["chain_status"] == "OK"
        assert store.head()[0] == 7
    # and nobody is listening on the broker's front end any more
    with AgentClient(report["bus"]["broker"], "late", timeout=0.3, retries=0) as client, \
            pytest.raises(Exception, match="no reply"):
        client.ping()


def test_run_scenario_against_a_running_broker(sandbox: Path, bus: Bus) -> None:
    done = _cli("os-run-scenario", "scenarios/L3_PLAN_FLOW_003_CONFLICTS.json",
                "--broker", bus.front, env={"OS_SANDBOX_ROOT": str(sandbox)})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["conflicts"] == 4 and report["rejected"] == 2
    assert report["verify"]["events"] == report["events_written"] == 13
    assert bus.ledger.alive() and bus.broker.alive()  # it did not stop what it did not start


def test_run_scenario_reports_unmet_expectations(sandbox: Path) -> None:
    bad = json.loads((sandbox / "scenarios" / "L3_PLAN_FLOW_001.json").read_text())
    bad["scenario_id"] = "BAD_EXPECT"
    bad["steps"][-1]["expect"] = "APPLIED"  # it is a conflict
    (sandbox / "scenarios" / "bad.json").write_text(json.dumps(bad))
    done = _cli("os-run-scenario", "scenarios/bad.json", env={"OS_SANDBOX_ROOT": str(sandbox)})
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert [s["matched"] for s in report["steps"]] == [True] * 6 + [False]


def test_run_scenario_refuses_a_path_outside_the_sandbox(sandbox: Path) -> None:
    done = _cli("os-run-scenario", "/etc/passwd", env={"OS_SANDBOX_ROOT": str(sandbox)})
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["code"] == "PATH_NOT_ALLOWED"
    assert not (sandbox / "data").exists()  # nothing was started or created


def test_broker_normalises_ids_and_enum_case(bus: Bus) -> None:
    with AgentClient(bus.front, "Liam") as client:
        created = client.send_command({"action": "create-plan", "plan_id": "  P-N  ",
                                       "title": " Normalised ", "status": "active"})
        assert created.status == "APPLIED", created.error
        added = client.send_command({"action": "add_item", "plan_id": "P-N",
                                     "item_id": " I-N ", "title": "x", "kind": "task"})
        assert added.status == "APPLIED", added.error
        moved = client.send_command({"action": "STATE_CHANGE", "item_id": "I-N",
                                     "expected_version": 1, "change": {"state": "in-progress"}})
        assert moved.status == "APPLIED", moved.error
        typed = client.send_command({"action": "STATE_CHANGE", "item_id": "I-N",
                                     "expected_version": "2", "change": {"state": "DONE"}})
        assert typed.status == "REJECTED"
        assert typed.error is not None and typed.error["code"] == "INVALID_TYPE"
        item = client.get_item("I-N")
        plan = client.show_plan("P-N")["plan"]
    assert item is not None and (item["state"], item["kind"], item["version"]) == (
        "IN_PROGRESS", "TASK", 2)
    assert (plan["title"], plan["status"]) == ("Normalised", "ACTIVE")


def test_processes_stop_cleanly_on_sigterm(sandbox: Path, bus_factory: BusFactory) -> None:
    bus = bus_factory.start("data/stop.db")
    with AgentClient(bus.front, "probe", timeout=2) as client:
        client.wait_ready()
        assert client.create_plan("P-S", "stop me").status == "APPLIED"
    broker_code = bus.broker.stop(sig=signal.SIGTERM)
    ledger_code = bus.ledger.stop(sig=signal.SIGINT)
    assert (broker_code, ledger_code) == (0, 0)
    with SqliteStore(sandbox / "data" / "stop.db", readonly=True) as store:
        assert store.head()[0] == 1


def test_broker_caps_in_flight_work_and_fails_fast_when_the_ledger_is_silent(
        bus_factory: BusFactory) -> None:
    bus = bus_factory.start("data/cap.db", broker_args=["--max-inflight", "1",
                                                        "--liveness", "2.0", "--heartbeat", "0.2"])
    with AgentClient(bus.front, "a", timeout=5, retries=0) as first, \
            AgentClient(bus.front, "b", timeout=5, retries=0) as second:
        first.wait_ready()
        bus.ledger.proc.send_signal(signal.SIGSTOP)  # alive but silent
        try:
            first.sock.send_multipart(wire.encode(first.requests.create_plan(
                "P-1", "held", command_id="held-1").msg))
            # same connection, so in order: once PING answers, held-1 holds the slot
            assert first.ping()["inflight"] == 1
            started = time.monotonic()
            busy = second.create_plan("P-2", "refused", command_id="busy-1")
            assert busy.error is not None and busy.error["code"] == "BUSY"
            held = first._recv_until("held-1", time.monotonic() + 5)
            waited = time.monotonic() - started
        finally:
            bus.ledger.proc.send_signal(signal.SIGCONT)
        assert held is not None and held.error is not None
        assert held.error["code"] == "LEDGER_UNAVAILABLE"
        assert waited < 4.5  # liveness 2 s, not the 10 s request timeout
        # the ledger is back: the same command id is applied exactly once
        first.wait_ready()
        again = first.create_plan("P-1", "held", command_id="held-1")
        assert again.status == "APPLIED"
        assert [e["command_id"] for e in first.replay(1)] == ["held-1"]


def test_a_query_result_larger_than_the_request_limit_reaches_the_client(
        sandbox: Path, bus_factory: BusFactory) -> None:
    db = sandbox / "data" / "big.db"
    sqlite.initialise(db)
    with SqliteStore(db) as store:
        ledger = Ledger(store)
        base = {"actor": "Liam", "session_id": "S-BIG"}
        commands = [{**base, "command_id": "big:plan", "action": "CREATE_PLAN",
                     "plan_id": "P-BIG", "title": "big"}]
        commands += [{**base, "command_id": f"big:{n}", "action": "ADD_ITEM",
                      "plan_id": "P-BIG", "item_id": f"I-{n}", "title": "x" * 500}
                     for n in range(2500)]
        assert all(r.status == "APPLIED" for r in ledger.apply_many(commands))
    with bus_factory.start("data/big.db") as bus, AgentClient(bus.front, "auditor") as client:
        client.wait_ready()
        items = client.list_items("P-BIG")
    assert len(items) == 2500
    assert len(wire.pack({"items": items})) > wire.MAX_FRAME_BYTES
