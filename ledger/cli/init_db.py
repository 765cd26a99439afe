"""bin/init_db: create the sandbox database (idempotent)."""

from __future__ import annotations

import sys

from ledger.cli.common import add_db_arg, emit, open_store, parser, run
from ledger.storage.factory import initialise_store


def _main(argv: list[str]) -> int:
    p = parser("init_db", "Create the ledger database and its schema. Safe to run again: an "
               "existing database keeps its data. Refused (DB_LOCKED, exit status 3) "
               "while another process writes it.")
    add_db_arg(p)
    args = p.parse_args(argv)
    done = initialise_store(args.db, role="init_db")
    with open_store(args.db, readonly=True) as store:
        seq, head = store.head()
    emit({"ok": True, "db": done.locator.describe(), "created": done.created,
          "schema_version": done.schema_version, "events": seq, "head_hash": head})
    return 0


def main() -> None:
    sys.exit(run(_main))
