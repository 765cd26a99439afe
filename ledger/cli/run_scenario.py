"""bin/run_scenario: apply a scenario file and verify the result.

Until the message bus exists this runs the core in-process; it prints the apply-scenario
JSON plus ``db`` and ``verify``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from ledger import sqlite
from ledger.cli.common import EXIT_FAILED_CHECK, emit, parser, run
from ledger.plans import Ledger
from ledger.sandbox import resolve_db, resolve_scenario, sandbox_root
from ledger.scenario import apply_scenario, load_scenario
from ledger.sqlite import SqliteStore
from ledger.verify import verify_store

DESCRIPTION = """Apply a scenario file step by step, then verify the chain.
By default each run gets a fresh database, data/runs/<scenario_id>-<UTC time>.db, so
the output reproduces the scenario's numbers every time; --db applies it to a given
database instead (created if missing; a scenario already applied there is replayed and
writes nothing). Exits 1 if a step's outcome differs from its "expect" or the chain
does not verify."""


def _main(argv: list[str]) -> int:
    p = parser("run_scenario", DESCRIPTION,
               "example:\n  bin/run_scenario scenarios/L3_PLAN_FLOW_001.json")
    p.add_argument("path", metavar="PATH", help="scenario file under scenarios/")
    p.add_argument("--db", metavar="PATH", help="database under data/ (default: a fresh one)")
    args = p.parse_args(argv)
    scenario = load_scenario(resolve_scenario(args.path))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    db = resolve_db(args.db or f"data/runs/{scenario.scenario_id}-{stamp}.db")
    sqlite.initialise(db)
    with SqliteStore(db) as store:
        report = apply_scenario(Ledger(store), scenario)
        verify = verify_store(store)
    report["db"] = str(db.relative_to(sandbox_root()))
    report["verify"] = verify
    report["ok"] = report["ok"] and verify["chain_status"] == "OK"
    emit(report)
    return 0 if report["ok"] else EXIT_FAILED_CHECK


def main() -> None:
    sys.exit(run(_main))
