"""The console scripts, run as real subprocesses against a throwaway sandbox root.

Every call goes through ``cli()``, which asserts that stdout is exactly one JSON object.
The spec pack's verification sequence runs once per module (``demo``); tests that change
the database get their own sandbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import drop_append_only_triggers, make_sandbox, raw_connect

BIN = Path(sys.executable).parent
DB = Path("data") / "os_sandbox.db"
FLOW = "scenarios/L3_PLAN_FLOW_001.json"


@dataclass
class Run:
    rc: int
    out: dict[str, Any]
    err: str


def cli(root: Path, name: str, *args: str, rc: int | None = 0) -> Run:
    env = {**os.environ, "OS_SANDBOX_ROOT": str(root)}
    done = subprocess.run([str(BIN / name), *args], env=env, cwd=root.parent,
                          capture_output=True, text=True, timeout=60, check=False)
    out = json.loads(done.stdout)  # exactly one JSON document, nothing else
    assert isinstance(out, dict), done.stdout
    assert done.stdout.endswith("}\n")
    if rc is not None:
        assert done.returncode == rc, (done.returncode, out, done.stderr)
    return Run(done.returncode, out, done.stderr)


def fails(root: Path, name: str, *args: str, code: str, rc: int = 2) -> dict[str, Any]:
    run = cli(root, name, *args, rc=rc)
    assert run.out["ok"] is False
    assert set(run.out["error"]) >= {"code", "message"}
    assert run.out["error"]["code"] == code, run.out
    assert run.out["error"]["message"]
    return run.out["error"]


def db_bytes(root: Path) -> dict[str, str]:
    """Digests of the database file and its WAL (the shared-memory index may change)."""
    out = {}
    for suffix in ("", "-wal"):
        path = root / f"{DB}{suffix}"
        if path.exists():
            out[suffix] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# --- the spec pack's verification sequence -------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = make_sandbox(tmp_path_factory.mktemp("cli-demo"))
    init = cli(root, "os-init-db")
    apply = cli(root, "os-l3-plan", "apply-scenario", FLOW)
    return {"root": root, "init": init.out, "apply": apply.out}


def test_init_db(demo: dict[str, Any]) -> None:
    assert demo["init"] == {"ok": True, "db": str(DB), "created": True, "schema_version": "1",
                            "events": 0, "head_hash": "0" * 64}
    assert (demo["root"] / DB).is_file()


def test_init_db_again_keeps_the_data(demo: dict[str, Any]) -> None:
    again = cli(demo["root"], "os-init-db").out
    assert (again["created"], again["events"]) == (False, 7)


def test_apply_scenario_prints_the_evidence(demo: dict[str, Any]) -> None:
    out = demo["apply"]
    assert {k: out[k] for k in ("plan_created", "items_added", "item_updates", "state_changes",
                                "conflicts", "events_written")} == {
        "plan_created": True, "items_added": 2, "item_updates": 1, "state_changes": 2,
        "conflicts": 1, "events_written": 7}
    assert set(out) >= {"ok", "scenario_id", "session_id", "plan_created", "items_added",
                        "item_updates", "state_changes", "links_added", "conflicts",
                        "rejected", "events_written", "steps"}
    assert (out["ok"], out["links_added"], out["rejected"]) == (True, 0, 0)
    assert [s["status"] for s in out["steps"]] == ["APPLIED"] * 6 + ["CONFLICT"]


def test_verify_chain(demo: dict[str, Any]) -> None:
    out = cli(demo["root"], "os-verify-chain").out
    assert (out["chain_status"], out["events"], out["mismatches"]) == ("OK", 7, [])
    summary = cli(demo["root"], "os-l2-query", "summary").out
    assert out["head_hash"] == summary["head_hash"] == demo["apply"]["steps"][-1]["hash"]
    explicit = cli(demo["root"], "os-verify-chain", "--db", str(DB)).out
    assert explicit == out


def test_list_plans(demo: dict[str, Any]) -> None:
    plans = cli(demo["root"], "os-l3-plan", "list-plans").out["plans"]
    assert [(p["plan_id"], p["status"], p["version"]) for p in plans] == [
        ("P-L3-DEMO-001", "ACTIVE", 1)]


def test_list_items_and_show_plan_agree(demo: dict[str, Any]) -> None:
    listed = cli(demo["root"], "os-l3-plan", "list-items", "--plan-id", "P-L3-DEMO-001").out
    assert listed["plan_id"] == "P-L3-DEMO-001"
    assert [(i["item_id"], i["state"], i["version"]) for i in listed["items"]] == [
        ("I-001", "DONE", 3), ("I-002", "TODO", 2)]
    assert set(listed["items"][0]) >= {"item_id", "plan_id", "kind", "title", "state",
                                       "priority", "assigned_to", "due_ts", "version",
                                       "created_ts", "updated_ts"}
    shown = cli(demo["root"], "os-l3-plan", "show-plan", "--plan-id", "P-L3-DEMO-001").out
    assert set(shown) == {"plan", "items", "links"}
    assert shown["items"] == listed["items"]
    assert (shown["plan"]["plan_id"], shown["plan"]["version"]) == ("P-L3-DEMO-001", 1)
    assert shown["links"] == []


def test_session_timeline_shows_the_conflict(demo: dict[str, Any]) -> None:
    events = cli(demo["root"], "os-l2-query", "session-timeline", "--session-id",
                 "S-L3-DEMO-001").out["events"]
    assert [e["seq"] for e in events] == list(range(1, 8))
    conflicts = [e for e in events if e["event_type"] == "PLAN_CONFLICT_DETECTED"]
    assert len(conflicts) == 1
    assert conflicts[0]["payload"]["expected_version"] == 1
    assert conflicts[0]["payload"]["current_version"] == 2


def test_task_timeline_is_the_item_s_history(demo: dict[str, Any]) -> None:
    events = cli(demo["root"], "os-l2-query", "task-timeline", "--task-id", "I-002").out["events"]
    assert [e["event_type"] for e in events] == ["PLAN_ITEM_ADDED", "PLAN_ITEM_UPDATED",
                                                 "PLAN_CONFLICT_DETECTED"]
    assert all(e["task_id"] == "I-002" for e in events)


def test_plan_timeline_summary_and_sessions(demo: dict[str, Any]) -> None:
    root = demo["root"]
    plan = cli(root, "os-l2-query", "plan-timeline", "--plan-id", "P-L3-DEMO-001").out
    assert len(plan["events"]) == 7
    summary = cli(root, "os-l2-query", "summary").out
    assert summary["events"] == 7
    assert summary["by_event_type"] == {
        "PLAN_CONFLICT_DETECTED": 1, "PLAN_CREATED": 1, "PLAN_ITEM_ADDED": 2,
        "PLAN_ITEM_STATE_CHANGED": 2, "PLAN_ITEM_UPDATED": 1}
    assert summary["by_actor"] == {"Codex": 2, "Liam": 4, "Mary": 1}
    assert summary["by_session"] == {"S-L3-DEMO-001": 7}
    sessions = cli(root, "os-l2-query", "list-sessions").out["sessions"]
    assert [(s["session_id"], s["events"], s["first_seq"], s["last_seq"], s["actors"])
            for s in sessions] == [("S-L3-DEMO-001", 7, 1, 7, ["Codex", "Liam", "Mary"])]


def test_healthcheck(demo: dict[str, Any]) -> None:
    out = cli(demo["root"], "os-healthcheck").out
    assert (out["ok"], out["extended"]) == (True, False)
    assert [c["name"] for c in out["checks"]] == ["database", "verify_chain"]
    assert all(c["ok"] for c in out["checks"])


def test_healthcheck_extended(demo: dict[str, Any]) -> None:
    before = db_bytes(demo["root"])
    out = cli(demo["root"], "os-healthcheck", "--extended").out
    assert (out["ok"], out["extended"]) == (True, True)
    names = [c["name"] for c in out["checks"]]
    assert names[:2] == ["database", "verify_chain"]
    assert {"l3.apply_scenario", "l3.verify_chain", "l3.list_plans", "l3.list_items",
            "l3.conflict_in_timeline"} <= set(names)
    assert all(c["ok"] for c in out["checks"]), out["checks"]
    assert db_bytes(demo["root"]) == before  # the flow ran in a throwaway sandbox


def test_truth_sync_writes_a_snapshot_without_touching_the_db(demo: dict[str, Any]) -> None:
    root = demo["root"]
    before = db_bytes(root)
    assert before
    out = cli(root, "os-truth-sync", "--out", "logs/truth").out
    assert out == {"ok": True, "out": ["logs/truth/truth.json", "logs/truth/truth.md"],
                   "chain_status": "OK", "events": 7, "plans": 1}
    assert db_bytes(root) == before
    truth = json.loads((root / "logs" / "truth" / "truth.json").read_text())
    verify = cli(root, "os-verify-chain").out
    assert truth["chain"]["status"] == "OK"
    assert truth["chain"]["head_hash"] == verify["head_hash"]
    assert truth["chain"]["events"] == 7
    [plan] = truth["plans"]
    assert (plan["plan_id"], plan["status"], plan["version"]) == ("P-L3-DEMO-001", "ACTIVE", 1)
    assert [(i["item_id"], i["state"], i["version"]) for i in plan["items"]] == [
        ("I-001", "DONE", 3), ("I-002", "TODO", 2)]
    assert truth["event_counts"]["by_event_type"]["PLAN_CONFLICT_DETECTED"] == 1
    md = (root / "logs" / "truth" / "truth.md").read_text()
    assert "P-L3-DEMO-001" in md and "OK" in md and verify["head_hash"] in md


# --- apply-scenario, run_scenario ------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_sandbox(tmp_path)


def test_apply_scenario_twice_writes_nothing_the_second_time(root: Path) -> None:
    cli(root, "os-init-db")
    first = cli(root, "os-l3-plan", "apply-scenario", FLOW).out
    before = db_bytes(root)
    again = cli(root, "os-l3-plan", "apply-scenario", FLOW).out
    assert (again["ok"], again["events_written"]) == (True, 0)
    assert all(s["replayed"] for s in again["steps"])
    assert [s["status"] for s in again["steps"]] == [s["status"] for s in first["steps"]]
    assert cli(root, "os-verify-chain").out["events"] == 7
    assert db_bytes(root).get("") == before.get("")


def test_apply_scenario_exits_1_when_an_expect_is_not_met(root: Path) -> None:
    data = json.loads((root / FLOW).read_text())
    data["steps"][6]["expect"] = "APPLIED"
    (root / "scenarios" / "wrong.json").write_text(json.dumps(data))
    cli(root, "os-init-db")
    out = cli(root, "os-l3-plan", "apply-scenario", "scenarios/wrong.json", rc=1).out
    assert out["ok"] is False
    assert [s["matched"] for s in out["steps"]] == [True] * 6 + [False]
    assert out["events_written"] == 7


def test_every_scenario_file_applies_through_the_cli(root: Path) -> None:
    cli(root, "os-init-db")
    total = 0
    for path in sorted((root / "scenarios").glob("*.json")):
        out = cli(root, "os-l3-plan", "apply-scenario", f"scenarios/{path.name}").out
        assert out["ok"] is True
        total += out["events_written"]
    verify = cli(root, "os-verify-chain").out
    assert (verify["chain_status"], verify["events"]) == ("OK", total)


def test_invalid_scenario_is_refused_before_anything_is_written(root: Path) -> None:
    cli(root, "os-init-db")
    before = db_bytes(root)
    data = json.loads((root / FLOW).read_text())
    data["steps"][3]["expected_version"] = "2"
    (root / "scenarios" / "bad.json").write_text(json.dumps(data))
    (root / "scenarios" / "broken.json").write_text('{"scenario_id": ')
    err = fails(root, "os-l3-plan", "apply-scenario", "scenarios/bad.json", code="INVALID_TYPE")
    assert err["field"] == "steps.3.expected_version"
    fails(root, "os-l3-plan", "apply-scenario", "scenarios/broken.json", code="INVALID_JSON")
    assert db_bytes(root) == before
    assert cli(root, "os-verify-chain").out["events"] == 0


def run_scenario_db(out: dict[str, Any]) -> str:
    """Where run_scenario says it wrote (top level in-process, under "bus" over the bus)."""
    return str(out["bus"]["db"] if "bus" in out else out["db"])


def test_run_scenario(root: Path) -> None:
    out = cli(root, "os-run-scenario", FLOW).out
    assert {k: out[k] for k in ("ok", "plan_created", "items_added", "item_updates",
                                "state_changes", "conflicts", "events_written")} == {
        "ok": True, "plan_created": True, "items_added": 2, "item_updates": 1,
        "state_changes": 2, "conflicts": 1, "events_written": 7}
    assert [s["status"] for s in out["steps"]] == ["APPLIED"] * 6 + ["CONFLICT"]
    assert (out["verify"]["chain_status"], out["verify"]["events"]) == ("OK", 7)
    db = run_scenario_db(out)
    assert db.startswith("data/runs/L3_PLAN_FLOW_001-")
    verify = cli(root, "os-verify-chain", "--db", db).out
    assert (verify["events"], verify["head_hash"]) == (7, out["verify"]["head_hash"])
    second = cli(root, "os-run-scenario", FLOW).out  # a fresh database each run
    assert run_scenario_db(second) != db and second["events_written"] == 7


def test_run_scenario_on_a_given_database_replays(root: Path) -> None:
    first = cli(root, "os-run-scenario", FLOW, "--db", "data/mine.db").out
    assert (run_scenario_db(first), first["events_written"]) == ("data/mine.db", 7)
    again = cli(root, "os-run-scenario", FLOW, "--db", "data/mine.db").out
    assert (again["ok"], again["events_written"], again["replayed"]) == (True, 0, 7)
    assert again["verify"]["head_hash"] == first["verify"]["head_hash"]


def test_run_scenario_exits_1_when_an_expect_is_not_met(root: Path) -> None:
    data = json.loads((root / FLOW).read_text())
    data["steps"][6]["expect"] = "REJECTED"
    (root / "scenarios" / "wrong.json").write_text(json.dumps(data))
    out = cli(root, "os-run-scenario", "scenarios/wrong.json", rc=1).out
    assert out["ok"] is False
    assert [s["matched"] for s in out["steps"]] == [True] * 6 + [False]


# --- errors: one JSON object, non-zero exit ------------------------------------------------


def test_unknown_plan(demo: dict[str, Any]) -> None:
    for command in ("show-plan", "list-items"):
        err = fails(demo["root"], "os-l3-plan", command, "--plan-id", "P-NOPE",
                    code="UNKNOWN_PLAN")
        assert err["field"] == "plan_id"


@pytest.mark.parametrize("args", [
    ("os-l3-plan", "--db", "/tmp/x.db", "list-plans"),
    ("os-l3-plan", "--db", "../x.db", "list-plans"),
    ("os-l3-plan", "--db", "scenarios/x.db", "list-plans"),
    ("os-l3-plan", "apply-scenario", "/etc/passwd"),
    ("os-l3-plan", "apply-scenario", "../scenarios/L3_PLAN_FLOW_001.json"),
    ("os-l3-plan", "apply-scenario", "g/sandbox/os_l0_l1/scenarios/L3_PLAN_FLOW_001.json"),
    ("os-l3-plan", "apply-scenario", "sbx/scenarios/L3_PLAN_FLOW_001.json"),
    ("os-init-db", "--db", "../outside.db"),
    ("os-verify-chain", "--db", "/tmp/x.db"),
    ("os-l2-query", "--db", "logs/x.db", "summary"),
    ("os-truth-sync", "--out", "/tmp/truth"),
    ("os-truth-sync", "--out", "../truth"),
    ("os-run-scenario", "../scenarios/L3_PLAN_FLOW_001.json"),
])
def test_bad_paths(root: Path, args: tuple[str, ...]) -> None:
    err = fails(root, *args, code="PATH_NOT_ALLOWED")
    assert err["field"] == "path"
    assert not (root.parent / "outside.db").exists()
    assert not (root.parent / "truth").exists()


def test_missing_scenario_file(root: Path) -> None:
    cli(root, "os-init-db")
    fails(root, "os-l3-plan", "apply-scenario", "scenarios/nope.json", code="FILE_NOT_FOUND")


@pytest.mark.parametrize("args", [
    ("os-l3-plan",),
    ("os-l3-plan", "frobnicate"),
    ("os-l3-plan", "show-plan"),
    ("os-l3-plan", "list-plans", "--bogus"),
    ("os-l2-query",),
    ("os-l2-query", "task-timeline"),
    ("os-verify-chain", "--bogus"),
    ("os-init-db", "extra"),
    ("os-truth-sync",),
    ("os-healthcheck", "--bogus"),
    ("os-run-scenario",),
])
def test_usage_errors(root: Path, args: tuple[str, ...]) -> None:
    fails(root, *args, code="USAGE_ERROR")


@pytest.mark.parametrize("args", [
    ("os-l3-plan", "list-plans"),
    ("os-l3-plan", "show-plan", "--plan-id", "P-1"),
    ("os-l3-plan", "apply-scenario", FLOW),
    ("os-verify-chain",),
    ("os-l2-query", "summary"),
    ("os-l2-query", "session-timeline", "--session-id", "S"),
    ("os-truth-sync", "--out", "logs/truth"),
])
def test_uninitialised_database(root: Path, args: tuple[str, ...]) -> None:
    fails(root, *args, code="DB_NOT_INITIALISED", rc=3)
    assert not (root / DB).exists()
    assert not (root / "logs").exists()


def test_healthcheck_on_an_uninitialised_database(root: Path) -> None:
    out = cli(root, "os-healthcheck", rc=1).out
    assert out["ok"] is False
    assert out["checks"][0]["name"] == "database"
    assert out["checks"][0]["detail"]["code"] == "DB_NOT_INITIALISED"


def test_verify_chain_exits_1_on_a_tampered_database(root: Path) -> None:
    cli(root, "os-init-db")
    cli(root, "os-l3-plan", "apply-scenario", FLOW)
    with closing(raw_connect(root / DB)) as conn:
        drop_append_only_triggers(conn)
        conn.execute("UPDATE events SET payload = replace(payload, 'Mary', 'Eve') WHERE seq = 7")
    out = cli(root, "os-verify-chain", rc=1).out
    assert out["chain_status"] == "BROKEN"
    assert out["mismatches"][0]["seq"] == 7
    health = cli(root, "os-healthcheck", rc=1).out
    assert health["ok"] is False
    truth = cli(root, "os-truth-sync", "--out", "logs/truth").out
    assert truth["chain_status"] == "BROKEN"


def test_verify_chain_exits_1_when_a_state_row_was_edited(root: Path) -> None:
    cli(root, "os-init-db")
    cli(root, "os-l3-plan", "apply-scenario", FLOW)
    with closing(raw_connect(root / DB)) as conn:
        conn.execute("UPDATE plan_items SET state = 'DONE' WHERE item_id = 'I-002'")
    out = cli(root, "os-verify-chain", rc=1).out
    assert out["chain_status"] == "BROKEN"
    assert out["mismatches"][0]["reason"].startswith("state: item 'I-002'")


def test_a_file_that_is_not_a_database(root: Path) -> None:
    (root / "data").mkdir()
    (root / DB).write_bytes(b"garbage" * 1000)
    fails(root, "os-l3-plan", "list-plans", code="DB_ERROR", rc=3)
