"""bin/verify_chain: audit the hash chain and the state tables against the log."""

from __future__ import annotations

import sys

from ledger.cli.common import EXIT_FAILED_CHECK, add_db_arg, emit, open_store, parser, run
from ledger.verify import verify_store

DESCRIPTION = """Check every event's seq, prev_hash and hash, then replay the log and compare
the plans, plan_items and plan_links tables with the replay. Prints chain_status OK or
BROKEN with each mismatch at the first seq it affects; exits 1 when BROKEN. Read-only."""


def _main(argv: list[str]) -> int:
    p = parser("verify_chain", DESCRIPTION)
    add_db_arg(p)
    args = p.parse_args(argv)
    with open_store(args.db, readonly=True) as store:
        report = verify_store(store)
    emit(report)
    return 0 if report["chain_status"] == "OK" else EXIT_FAILED_CHECK


def main() -> None:
    sys.exit(run(_main))
