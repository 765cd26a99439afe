"""L2 queries, the truth snapshot and the healthcheck, as library calls."""

from __future__ import annotations

import json
import os
from contextlib import closing
from pathlib import Path

import pytest

from ledger.cli.health import EVIDENCE, check_database, check_l3_flow
from ledger.log.verify import verify_store
from ledger.plans.ledger import Ledger
from ledger.plans.scenario import apply_scenario
from ledger.queries.reads import list_items, list_plans, list_sessions, show_plan, summary, timeline
from ledger.queries.truth import render_markdown, snapshot, write_snapshot
from ledger.storage.sqlite import SqliteStore
from schema.errors import RejectedError
from schema.scenario import load_scenario
from tests.support.helpers import SCENARIO_DIR, drop_append_only_triggers, init_db, raw_connect


@pytest.fixture
def two_flows(sqlite_store: SqliteStore) -> SqliteStore:
    for name in ("L3_PLAN_FLOW_001.json", "L3_PLAN_FLOW_002_LINKS.json"):
        assert apply_scenario(Ledger(sqlite_store), load_scenario(SCENARIO_DIR / name))["ok"]
    return sqlite_store


def test_list_sessions(two_flows: SqliteStore) -> None:
    sessions = {s["session_id"]: s for s in list_sessions(two_flows)["sessions"]}
    assert set(sessions) == {"S-L3-DEMO-001", "S-L3-LINKS-002"}
    demo = sessions["S-L3-DEMO-001"]
    assert (demo["events"], demo["first_seq"], demo["last_seq"]) == (7, 1, 7)
    assert demo["actors"] == ["Codex", "Liam", "Mary"]
    links = sessions["S-L3-LINKS-002"]
    assert links["first_seq"] == 8
    assert links["last_seq"] == two_flows.head()[0]
    assert links["events"] == links["last_seq"] - 7


def test_summary_counts_add_up(two_flows: SqliteStore) -> None:
    out = summary(two_flows)
    seq, head = two_flows.head()
    assert (out["events"], out["head_hash"]) == (seq, head)
    for key in ("by_event_type", "by_actor", "by_session"):
        assert sum(out[key].values()) == seq
    assert out["by_session"]["S-L3-DEMO-001"] == 7
    assert out["by_event_type"]["PLAN_LINK_ADDED"] == 2
    assert (out["plans"], out["items"], out["links"]) == (2, 5, 2)


def test_show_plan_is_consistent_with_list_items(two_flows: SqliteStore) -> None:
    for plan in list_plans(two_flows)["plans"]:
        shown = show_plan(two_flows, plan["plan_id"])
        assert shown["plan"] == plan
        assert shown["items"] == list_items(two_flows, plan["plan_id"])["items"]
    links = show_plan(two_flows, "P-LINKS-002")["links"]
    assert [(lk["link_id"], lk["from_item_id"], lk["to_item_id"], lk["link_type"])
            for lk in links] == [("L-201", "I-202", "I-201", "DEPENDS_ON"),
                                 ("L-202", "I-203", "I-202", "RELATED")]


@pytest.mark.parametrize("query", [show_plan, list_items])
def test_unknown_plan_is_an_error_naming_the_field(two_flows: SqliteStore, query: object) -> None:
    with pytest.raises(RejectedError) as info:
        query(two_flows, "P-NOPE")  # type: ignore[operator]
    assert (info.value.code, info.value.field) == ("UNKNOWN_PLAN", "plan_id")


def test_timelines_are_in_seq_order_with_parsed_payloads(two_flows: SqliteStore) -> None:
    events = timeline(two_flows, "plan_id", "P-LINKS-002")["events"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert all(isinstance(e["payload"], dict) for e in events)
    assert all(e["plan_id"] == "P-LINKS-002" for e in events)
    item = timeline(two_flows, "task_id", "I-202")["events"]
    assert [e["event_type"] for e in item] == [
        "PLAN_ITEM_ADDED", "PLAN_LINK_ADDED", "PLAN_ITEM_STATE_CHANGED",
        "PLAN_ITEM_STATE_CHANGED"]
    assert timeline(two_flows, "session_id", "S-NOPE") == {"events": []}


def test_truth_snapshot(two_flows: SqliteStore, tmp_path: Path) -> None:
    snap = write_snapshot(two_flows, tmp_path / "truth")
    on_disk = json.loads((tmp_path / "truth" / "truth.json").read_text())
    assert on_disk == json.loads(json.dumps(snap))
    verify = verify_store(two_flows)
    assert snap["chain"] == {k: verify[k] for k in ("head_seq", "head_hash", "mismatches")} | {
        "status": "OK", "events": verify["events"]}
    assert snap["event_counts"]["by_session"] == summary(two_flows)["by_session"]
    plans = {p["plan_id"]: p for p in snap["plans"]}
    assert [(i["item_id"], i["state"], i["version"]) for i in plans["P-L3-DEMO-001"]["items"]] == [
        ("I-001", "DONE", 3), ("I-002", "TODO", 2)]
    assert plans["P-LINKS-002"]["status"] == "ARCHIVED"
    assert len(plans["P-LINKS-002"]["links"]) == 2
    md = (tmp_path / "truth" / "truth.md").read_text()
    assert md == render_markdown(snap)
    assert "**OK**" in md and verify["head_hash"] in md
    assert "| I-001 | Create schema + CLI skeleton | DONE | 3 | Codex |" in md


def test_truth_snapshot_of_a_broken_chain_says_so(two_flows: SqliteStore) -> None:
    with closing(raw_connect(two_flows.path)) as conn:
        drop_append_only_triggers(conn)
        conn.execute("UPDATE events SET actor = 'Eve' WHERE seq = 3")
    snap = snapshot(two_flows)
    assert snap["chain"]["status"] == "BROKEN"
    assert snap["chain"]["mismatches"][0]["seq"] == 3
    assert "**BROKEN**" in render_markdown(snap)


def test_healthcheck_database(sandbox: Path) -> None:
    [check] = check_database(None)
    assert (check["name"], check["ok"]) == ("database", False)
    assert check["detail"]["code"] == "DB_NOT_INITIALISED"
    db = init_db(sandbox / "data" / "os_sandbox.db")
    with SqliteStore(db) as store:
        apply_scenario(Ledger(store), load_scenario(SCENARIO_DIR / "L3_PLAN_FLOW_001.json"))
    checks = check_database(None)
    assert [(c["name"], c["ok"]) for c in checks] == [("database", True), ("verify_chain", True)]
    assert checks[0]["detail"] == {"events": 7}
    with closing(raw_connect(db)) as conn:
        drop_append_only_triggers(conn)
        conn.execute("DELETE FROM events WHERE seq = 2")
    checks = check_database(None)
    assert [(c["name"], c["ok"]) for c in checks] == [("database", True), ("verify_chain", False)]
    assert checks[1]["detail"]["mismatches"][0]["seq"] == 2


def test_healthcheck_extended_flow_matches_the_evidence(sandbox: Path) -> None:
    checks = check_l3_flow()
    assert [c["name"] for c in checks] == ["l3.apply_scenario", "l3.verify_chain",
                                           "l3.list_plans", "l3.list_items",
                                           "l3.conflict_in_timeline"]
    assert all(c["ok"] for c in checks), checks
    assert checks[0]["detail"] == EVIDENCE["apply"]
    assert os.environ["OS_SANDBOX_ROOT"] == str(sandbox)  # restored afterwards
    assert not (sandbox / "data").exists()  # it ran in a throwaway sandbox


def test_healthcheck_extended_flow_notices_a_changed_scenario(sandbox: Path) -> None:
    path = sandbox / "scenarios" / "L3_PLAN_FLOW_001.json"
    data = json.loads(path.read_text())
    data["steps"][6]["expected_version"] = 2  # no longer stale: no conflict
    data["steps"][6]["expect"] = "APPLIED"
    path.write_text(json.dumps(data))
    checks = {c["name"]: c for c in check_l3_flow()}
    assert checks["l3.apply_scenario"]["ok"] is False
    assert checks["l3.conflict_in_timeline"]["ok"] is False
    assert checks["l3.list_items"]["ok"] is False
