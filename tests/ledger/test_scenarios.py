"""Scenario files: the spec pack's evidence, replays, every file in scenarios/, validation
errors that name their location, and the published JSON Schema."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

import schema.scenario
from ledger.cli import os_l3_plan
from ledger.log.verify import verify_store
from ledger.plans.ledger import Ledger
from ledger.plans.scenario import apply_scenario
from ledger.queries.reads import list_items, list_plans, timeline
from ledger.storage.base import Store
from ledger.storage.sqlite import SqliteStore
from schema.errors import ErrorCode, SandboxError, ValidationError
from schema.scenario import json_schema, load_scenario, parse_scenario
from tests.support.helpers import ROOT, SCENARIO_DIR, SCENARIO_FILES, capture, init_db

FLOW_001 = SCENARIO_DIR / "L3_PLAN_FLOW_001.json"
EVIDENCE = {"plan_created": True, "items_added": 2, "item_updates": 1, "state_changes": 2,
            "conflicts": 1, "events_written": 7}
SPEC_ITEM_KEYS = {"item_id", "plan_id", "kind", "title", "state", "priority", "assigned_to",
                  "due_ts", "version", "created_ts", "updated_ts"}


def flow_001_data() -> dict[str, Any]:
    return json.loads(FLOW_001.read_text())


@pytest.fixture
def flow_001(store: Store) -> dict[str, Any]:
    return apply_scenario(Ledger(store), load_scenario(FLOW_001))


# --- L3_PLAN_FLOW_001: the spec pack's evidence ------------------------------------------


def test_flow_001_apply_reproduces_the_evidence(flow_001: dict[str, Any]) -> None:
    assert {k: flow_001[k] for k in EVIDENCE} == EVIDENCE
    assert flow_001["ok"] is True
    assert (flow_001["scenario_id"], flow_001["session_id"]) == (
        "L3_PLAN_FLOW_001", "S-L3-DEMO-001")
    assert (flow_001["rejected"], flow_001["links_added"], flow_001["replayed"]) == (0, 0, 0)
    steps = flow_001["steps"]
    assert [s["status"] for s in steps] == ["APPLIED"] * 6 + ["CONFLICT"]
    assert [s["action"] for s in steps] == ["CREATE_PLAN", "ADD_ITEM", "ADD_ITEM",
                                            "STATE_CHANGE", "STATE_CHANGE", "UPDATE_ITEM",
                                            "UPDATE_ITEM"]
    assert all(s["matched"] for s in steps)
    assert [s["command_id"] for s in steps] == [f"L3_PLAN_FLOW_001:{i}" for i in range(7)]
    assert [s["seq"] for s in steps] == list(range(1, 8))


def test_flow_001_verify_lists_and_timelines(store: Store, flow_001: dict[str, Any]) -> None:
    report = verify_store(store)
    assert (report["chain_status"], report["events"], report["mismatches"]) == ("OK", 7, [])
    plans = list_plans(store)["plans"]
    assert [(p["plan_id"], p["status"], p["version"]) for p in plans] == [
        ("P-L3-DEMO-001", "ACTIVE", 1)]
    assert plans[0]["owner_agent"] == "Liam"
    items = list_items(store, "P-L3-DEMO-001")["items"]
    assert [(i["item_id"], i["state"], i["version"]) for i in items] == [
        ("I-001", "DONE", 3), ("I-002", "TODO", 2)]
    assert all(set(i) == SPEC_ITEM_KEYS for i in items)
    assert [(i["assigned_to"], i["priority"]) for i in items] == [("Codex", 1), ("Liam", 1)]
    assert items[1]["due_ts"] == "2025-12-31T17:00:00Z"

    session = timeline(store, "session_id", "S-L3-DEMO-001")["events"]
    assert [e["seq"] for e in session] == list(range(1, 8))
    conflicts = [e for e in session if e["event_type"] == "PLAN_CONFLICT_DETECTED"]
    assert len(conflicts) == 1
    conflict = conflicts[0]
    assert (conflict["seq"], conflict["actor"], conflict["item_id"], conflict["task_id"]) == (
        7, "Mary", "I-002", "I-002")
    payload = conflict["payload"]
    assert (payload["expected_version"], payload["current_version"]) == (1, 2)
    assert payload["change"] == {"assigned_to": "Mary"}
    assert (payload["plan_id"], payload["action"]) == ("P-L3-DEMO-001", "UPDATE_ITEM")

    task = timeline(store, "task_id", "I-002")["events"]
    assert [e["event_type"] for e in task] == ["PLAN_ITEM_ADDED", "PLAN_ITEM_UPDATED",
                                               "PLAN_CONFLICT_DETECTED"]
    assert task[-1] == conflict
    assert [e["event_type"] for e in timeline(store, "task_id", "P-L3-DEMO-001")["events"]] == [
        "PLAN_CREATED"]
    assert len(timeline(store, "plan_id", "P-L3-DEMO-001")["events"]) == 7


def test_applying_flow_001_twice_writes_nothing_the_second_time(
        store: Store, flow_001: dict[str, Any]) -> None:
    before = capture(store)
    again = apply_scenario(Ledger(store), load_scenario(FLOW_001))
    assert again["events_written"] == 0
    assert again["ok"] is True
    assert again["replayed"] == 7
    assert all(s["replayed"] for s in again["steps"])
    assert [s["status"] for s in again["steps"]] == [s["status"] for s in flow_001["steps"]]
    strip = ("replayed",)
    assert [{k: v for k, v in s.items() if k not in strip} for s in again["steps"]] == [
        {k: v for k, v in s.items() if k not in strip} for s in flow_001["steps"]]
    assert capture(store) == before
    assert verify_store(store)["events"] == 7


def test_an_unmet_expect_makes_the_report_not_ok(store: Store) -> None:
    data = flow_001_data()
    data["steps"][6]["expect"] = "APPLIED"
    data["steps"][2]["expect"] = "REJECTED"
    report = apply_scenario(Ledger(store), parse_scenario(data))
    assert report["ok"] is False
    assert [s["matched"] for s in report["steps"]] == [True, True, False, True, True, True,
                                                       False]
    assert report["events_written"] == 7  # the steps still ran; only the verdict differs


def test_explicit_command_ids_are_kept(store: Store) -> None:
    data = flow_001_data()
    data["steps"][0]["command_id"] = "my-own-id"
    apply_scenario(Ledger(store), parse_scenario(data))
    assert next(store.iter_events()).command_id == "my-own-id"
    assert store.get_command("my-own-id") is not None
    assert store.get_command("L3_PLAN_FLOW_001:0") is None


# --- every scenario file -----------------------------------------------------------------


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=[p.stem for p in SCENARIO_FILES])
def test_every_scenario_file_applies_as_expected(store: Store, path: Path) -> None:
    report = apply_scenario(Ledger(store), load_scenario(path))
    mismatched = [s for s in report["steps"] if not s["matched"]]
    assert report["ok"] is True, mismatched
    assert mismatched == []
    written = sum(s["status"] in ("APPLIED", "CONFLICT") for s in report["steps"])
    assert report["events_written"] == written == store.head()[0]
    verify = verify_store(store)
    assert (verify["chain_status"], verify["events"]) == ("OK", written)
    again = apply_scenario(Ledger(store), load_scenario(path))
    assert again["events_written"] == 0 and again["ok"] is True
    assert all(s["replayed"] for s in again["steps"])


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=[p.stem for p in SCENARIO_FILES])
def test_rejected_steps_fail_for_the_reason_their_note_gives(store: Store, path: Path) -> None:
    notes = {i: s.get("note", "") for i, s in enumerate(json.loads(path.read_text())["steps"])}
    report = apply_scenario(Ledger(store), load_scenario(path))
    for step in report["steps"]:
        named = set(re.findall(r"[A-Z_]+", notes[step["index"]])) & set(ErrorCode)
        if step["status"] == "REJECTED" and named:
            assert step["error"]["code"] in named, (step["index"], notes[step["index"]])


def test_the_scenarios_cover_links_plan_updates_rejections_and_conflicts(
        store: Store) -> None:
    totals: dict[str, int] = {}
    most_conflicts = 0
    for path in SCENARIO_FILES:
        report = apply_scenario(Ledger(store), load_scenario(path))
        for key in ("links_added", "plan_updates", "rejected", "conflicts"):
            totals[key] = totals.get(key, 0) + report[key]
        most_conflicts = max(most_conflicts, report["conflicts"])
        codes = {s["error"]["code"] for s in report["steps"] if s["status"] == "REJECTED"}
        totals["codes"] = totals.get("codes", 0) + len(codes)
    assert len(SCENARIO_FILES) >= 3
    assert all(totals[k] > 0 for k in ("links_added", "plan_updates", "rejected"))
    assert most_conflicts >= 2
    assert totals["codes"] >= 5


# --- validation ----------------------------------------------------------------------------


def _set(path: str, value: Any) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return mutate


def _del(path: str) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        del target[last]
    return mutate


INVALID = [
    (_set("steps.3.expected_version", "2"), "INVALID_TYPE", "steps.3.expected_version"),
    (_set("steps.3.expected_version", True), "INVALID_TYPE", "steps.3.expected_version"),
    (_set("steps.1.priority", 1.5), "INVALID_TYPE", "steps.1.priority"),
    (_del("steps.1.title"), "MISSING_FIELD", "steps.1.title"),
    (_del("steps.0.action"), "MISSING_FIELD", "steps.0.action"),
    (_del("steps.4.expected_version"), "MISSING_FIELD", "steps.4.expected_version"),
    (_set("steps.2.action", "ADD_THING"), "UNKNOWN_ACTION", "steps.2.action"),
    (_set("steps.6.expect", "MAYBE"), "INVALID_VALUE", "steps.6.expect"),
    (_set("steps.4.session_id", "S-X"), "UNKNOWN_FIELD", "steps.4.session_id"),
    (_set("steps.5.colour", "red"), "UNKNOWN_FIELD", "steps.5.colour"),
    (_set("steps.5.change.state", "DONE"), "UNKNOWN_FIELD", "steps.5.change.state"),
    (_set("steps.3.change.state", ""), "INVALID_VALUE", "steps.3.change.state"),
    (_set("steps.1.item_id", "I 001"), "INVALID_VALUE", "steps.1.item_id"),
    (_set("steps.2", "ADD_ITEM"), "INVALID_TYPE", "steps.2"),
    (_del("scenario_id"), "MISSING_FIELD", "scenario_id"),
    (_del("steps"), "MISSING_FIELD", "steps"),
    (_set("session_id", 5), "INVALID_TYPE", "session_id"),
    (_set("scenario_id", "bad id"), "INVALID_VALUE", "scenario_id"),
    (_set("author", "me"), "UNKNOWN_FIELD", "author"),
    (_set("steps", []), "INVALID_VALUE", "steps"),
    (_set("steps", {}), "INVALID_TYPE", "steps"),
]


@pytest.mark.parametrize(("mutate", "code", "field"), INVALID,
                         ids=[f"{c}-{f}" for _, c, f in INVALID])
def test_validation_errors_name_their_location(mutate: Any, code: str, field: str) -> None:
    data = copy.deepcopy(flow_001_data())
    mutate(data)
    with pytest.raises(ValidationError) as info:
        parse_scenario(data)
    assert (info.value.code, info.value.field) == (code, field)
    assert info.value.message.startswith(field)


@pytest.mark.parametrize("data", [[], "scenario", 7, None])
def test_a_scenario_must_be_an_object(data: Any) -> None:
    with pytest.raises(ValidationError) as info:
        parse_scenario(data)
    assert info.value.code == "INVALID_TYPE"


@pytest.mark.parametrize("content", [b"{", b'{"scenario_id": }', b"", b"\xff\xfe{}",
                                     b"not json"])
def test_bad_json_is_invalid_json(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValidationError) as info:
        load_scenario(path)
    assert info.value.code == "INVALID_JSON"
    assert "bad.json" in info.value.message


def test_oversized_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.json"
    path.write_text(FLOW_001.read_text())
    monkeypatch.setattr(schema.scenario, "MAX_SCENARIO_BYTES", 100)
    with pytest.raises(SandboxError) as info:
        load_scenario(path)
    assert info.value.code == "FILE_TOO_LARGE"


@pytest.mark.parametrize(("content", "code", "field"), [
    (b'{"scenario_id": "X", "session_id": "S", "steps": [', "INVALID_JSON", None),
    (None, "INVALID_TYPE", "steps.6.expected_version"),
])
def test_an_invalid_scenario_writes_nothing(
        sandbox: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, code: str,
        field: str | None) -> None:
    """apply-scenario validates the whole file before the first step is applied."""
    db = init_db(sandbox / "data" / "os_sandbox.db")
    if content is None:  # six good steps, then a bad one
        data = flow_001_data()
        data["steps"][6]["expected_version"] = "1"
        content = json.dumps(data).encode()
    (sandbox / "scenarios" / "bad.json").write_bytes(content)
    with SqliteStore(db, readonly=True) as store:
        before = capture(store)
    rc = os_l3_plan.run(os_l3_plan._main, ["apply-scenario", "scenarios/bad.json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 2
    assert out["ok"] is False
    assert out["error"]["code"] == code
    assert out["error"].get("field") == field
    with SqliteStore(db, readonly=True) as store:
        assert capture(store) == before
        assert store.head()[0] == 0
        assert store.get_command("L3_PLAN_FLOW_001:0") is None


# --- the published JSON Schema ---------------------------------------------------------------


def test_published_schema_equals_the_generated_one() -> None:
    published = json.loads((ROOT / "schema" / "scenario.schema.json").read_text())
    assert published == json_schema()


def test_schema_shape() -> None:
    schema = json_schema()
    assert set(schema["required"]) == {"scenario_id", "session_id", "steps"}
    assert schema["additionalProperties"] is False
    step_defs = [d for name, d in schema["$defs"].items() if name.endswith("Step")]
    assert len(step_defs) == 6
    for d in step_defs:
        assert "session_id" not in d["properties"]
        assert "session_id" not in d.get("required", [])
        assert {"expect", "note", "command_id", "action", "actor"} <= set(d["properties"])
        assert "command_id" not in d.get("required", [])
