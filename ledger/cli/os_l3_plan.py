"""bin/os_l3_plan: query plans and apply scenario files (the spec pack's single entry)."""

from __future__ import annotations

import sys

from ledger.cli.common import EXIT_FAILED_CHECK, add_db_arg, emit, open_store, parser, run
from ledger.plans.ledger import Ledger
from ledger.plans.scenario import apply_scenario
from ledger.queries.reads import list_items, list_plans, show_plan
from ledger.runtime.sandbox import resolve_scenario
from schema.scenario import load_scenario

EPILOG = """examples:
  bin/os_l3_plan apply-scenario scenarios/L3_PLAN_FLOW_001.json
  bin/os_l3_plan list-plans
  bin/os_l3_plan show-plan --plan-id P-L3-DEMO-001
  bin/os_l3_plan list-items --plan-id P-L3-DEMO-001

apply-scenario exits 1 when a step's outcome differs from its "expect", and 3 (DB_LOCKED,
naming the holder) while another process writes the database (a running bin/ledger:
send the steps through the bus instead, e.g. bin/run_scenario)."""


def _main(argv: list[str]) -> int:
    p = parser("os_l3_plan", "Read and change L3 plans in the sandbox database.", EPILOG)
    add_db_arg(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list-plans", help="every plan with its status and version")
    for name, text in (("show-plan", "one plan with its items and links"),
                       ("list-items", "the items of one plan")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--plan-id", required=True, metavar="ID")
    sp = sub.add_parser("apply-scenario", help="apply a scenario file step by step")
    sp.add_argument("path", metavar="PATH", help="scenario file under scenarios/")
    args = p.parse_args(argv)

    if args.command == "apply-scenario":
        scenario = load_scenario(resolve_scenario(args.path))  # validate before opening
        with open_store(args.db, role="os_l3_plan apply-scenario") as store:
            report = apply_scenario(Ledger(store), scenario)
        emit(report)
        return 0 if report["ok"] else EXIT_FAILED_CHECK
    with open_store(args.db, readonly=True) as store:
        if args.command == "list-plans":
            emit(list_plans(store))
        elif args.command == "show-plan":
            emit(show_plan(store, args.plan_id))
        else:
            emit(list_items(store, args.plan_id))
    return 0


def main() -> None:
    sys.exit(run(_main))
