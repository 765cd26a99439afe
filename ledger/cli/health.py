"""Healthcheck: the database and chain, and (extended) the spec pack's whole L3 flow."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Final

from ledger.log.verify import verify_store
from ledger.plans.ledger import Ledger
from ledger.plans.scenario import apply_scenario
from ledger.queries.reads import list_items, list_plans, timeline
from ledger.runtime.sandbox import SCENARIO_DIR, resolve_scenario
from ledger.storage.factory import open_store
from schema.errors import CoordinatorError
from schema.scenario import load_scenario

L3_SCENARIO: Final = "L3_PLAN_FLOW_001.json"
#: The spec pack's evidence (section 4.1) that a correct L3 run reproduces.
EVIDENCE: Final[dict[str, Any]] = {
    "apply": {"plan_created": True, "items_added": 2, "item_updates": 1, "state_changes": 2,
              "conflicts": 1, "events_written": 7},
    "verify": {"chain_status": "OK", "events": 7},
    "plans": [("P-L3-DEMO-001", "ACTIVE", 1)],
    "items": [("I-001", "DONE", 3), ("I-002", "TODO", 2)],
}


def _check(name: str, ok: bool, detail: Any) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def check_database(db: str | None) -> list[dict[str, Any]]:
    try:
        with open_store(db, readonly=True) as store:
            seq, _ = store.head()
            verify = verify_store(store)
    except CoordinatorError as exc:
        return [_check("database", False, exc.to_dict())]
    return [_check("database", True, {"events": seq}),
            _check("verify_chain", verify["chain_status"] == "OK",
                   {k: verify[k] for k in ("chain_status", "events", "mismatches")})]


def check_l3_flow() -> list[dict[str, Any]]:
    """init + scenario + verify + list commands in a throwaway sandbox, vs the evidence.
    The scenario comes from the sandbox's scenarios/ (a failed check if it is not there)."""
    try:
        source = resolve_scenario(f"{SCENARIO_DIR}/{L3_SCENARIO}")
    except CoordinatorError as exc:
        return [_check("l3.scenario_file", False, exc.to_dict())]
    with tempfile.TemporaryDirectory(prefix="l3-health-") as tmp:
        root = Path(tmp)
        (root / SCENARIO_DIR).mkdir()
        shutil.copy(source, root / SCENARIO_DIR / L3_SCENARIO)
        old = os.environ.get("OS_SANDBOX_ROOT")
        os.environ["OS_SANDBOX_ROOT"] = str(root)
        try:
            return _run_flow(root)
        finally:
            if old is None:
                os.environ.pop("OS_SANDBOX_ROOT", None)
            else:
                os.environ["OS_SANDBOX_ROOT"] = old


def _run_flow(root: Path) -> list[dict[str, Any]]:
    scenario = load_scenario(root / SCENARIO_DIR / L3_SCENARIO)
    with open_store(None, create=True) as store:
        report = apply_scenario(Ledger(store), scenario)
        verify = verify_store(store)
        plans = list_plans(store)["plans"]
        items = list_items(store, "P-L3-DEMO-001")["items"]
        conflicts = [e for e in timeline(store, "session_id", scenario.session_id)["events"]
                     if e["event_type"] == "PLAN_CONFLICT_DETECTED"]
    got_apply = {k: report[k] for k in EVIDENCE["apply"]}
    got_verify = {k: verify[k] for k in EVIDENCE["verify"]}
    got_plans = [(p["plan_id"], p["status"], p["version"]) for p in plans]
    got_items = [(i["item_id"], i["state"], i["version"]) for i in items]
    return [
        _check("l3.apply_scenario", report["ok"] and got_apply == EVIDENCE["apply"], got_apply),
        _check("l3.verify_chain", got_verify == EVIDENCE["verify"], got_verify),
        _check("l3.list_plans", got_plans == EVIDENCE["plans"], got_plans),
        _check("l3.list_items", got_items == EVIDENCE["items"], got_items),
        _check("l3.conflict_in_timeline", len(conflicts) == 1,
               [e["seq"] for e in conflicts]),
    ]
