"""Apply a scenario file (:mod:`schema.scenario`) through the core and report, per step,
the outcome against the ``expect`` it states; the report shape is the spec pack's
section 2.3 apply-scenario result (counts, conflicts, events written)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from ledger.plans.ledger import CommandResult, Ledger
from schema.scenario import Scenario
from schema.vocabulary import EventType

_COUNTED: Final = {
    EventType.PLAN_CREATED: "plans_created",
    EventType.PLAN_UPDATED: "plan_updates",
    EventType.PLAN_ITEM_ADDED: "items_added",
    EventType.PLAN_ITEM_UPDATED: "item_updates",
    EventType.PLAN_ITEM_STATE_CHANGED: "state_changes",
    EventType.PLAN_LINK_ADDED: "links_added",
}


def build_report(scenario: Scenario, results: Iterable[CommandResult]) -> dict[str, Any]:
    """The apply-scenario JSON, from each step's result (in-process or over the bus)."""
    counts = dict.fromkeys(_COUNTED.values(), 0)
    conflicts = rejected = written = replayed = 0
    steps_out = []
    ok = True
    for step, res in zip(scenario.steps, results, strict=True):
        if res.status == "APPLIED" and res.event_type in _COUNTED:
            counts[_COUNTED[res.event_type]] += 1
        conflicts += res.status == "CONFLICT"
        rejected += res.status == "REJECTED"
        written += res.wrote_event
        replayed += res.replayed
        matched = res.status == step.expect
        ok &= matched
        out = {"index": step.index, "action": step.command.action, "actor": step.command.actor,
               "expect": step.expect, "matched": matched, **res.to_dict()}
        steps_out.append(out)
    return {
        "ok": ok, "scenario_id": scenario.scenario_id, "session_id": scenario.session_id,
        "plan_created": counts["plans_created"] > 0, **counts, "conflicts": conflicts,
        "rejected": rejected, "events_written": written, "replayed": replayed,
        "steps": steps_out,
    }


def apply_scenario(ledger: Ledger, scenario: Scenario) -> dict[str, Any]:
    """Apply every step in order through the core, in-process."""
    return build_report(scenario, [ledger.apply(step.command) for step in scenario.steps])
