"""bin/healthcheck: is the database sound, and (--extended) does the L3 flow reproduce?"""

from __future__ import annotations

import sys

from ledger.cli.common import EXIT_FAILED_CHECK, add_db_arg, emit, parser, run
from ledger.cli.health import check_database, check_l3_flow

DESCRIPTION = """Default: open the database and verify its chain and state.
--extended: also run init_db + the L3_PLAN_FLOW_001 scenario + verify_chain + list-plans +
list-items in a throwaway sandbox and compare with the spec pack's evidence numbers.
Exits 1 if any check fails."""


def _main(argv: list[str]) -> int:
    p = parser("healthcheck", DESCRIPTION)
    add_db_arg(p)
    p.add_argument("--extended", action="store_true", help="also run the L3 flow end to end")
    args = p.parse_args(argv)
    checks = check_database(args.db)
    if args.extended:
        checks += check_l3_flow()
    ok = all(c["ok"] for c in checks)
    emit({"ok": ok, "extended": args.extended, "checks": checks})
    return 0 if ok else EXIT_FAILED_CHECK


def main() -> None:
    sys.exit(run(_main))
