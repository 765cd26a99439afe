"""Event rows for the board's tests: the spec pack's scenario as a ledger writes it."""

from __future__ import annotations

from typing import Any

from ledger.plans.ledger import Ledger
from ledger.plans.scenario import apply_scenario
from ledger.storage.memory import MemoryStore
from schema.scenario import load_scenario
from tests.support.helpers import SCENARIO_DIR, deterministic_ledger

FLOW: Any = SCENARIO_DIR / "L3_PLAN_FLOW_001.json"


def scenario_log() -> tuple[list[dict[str, Any]], MemoryStore]:
    """L3_PLAN_FLOW_001 applied by a real Ledger (deterministic clock: ts
    2026-01-01T00:00:00.00000N): its 7 event rows, and the store holding its state."""
    store = MemoryStore()
    ledger: Ledger = deterministic_ledger(store)
    apply_scenario(ledger, load_scenario(FLOW))
    return [e.to_row() for e in store.iter_events()], store
