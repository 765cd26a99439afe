"""bin/init_db: create the sandbox database (idempotent)."""

from __future__ import annotations

import sys

from ledger.cli.common import add_db_arg, emit, open_store, parser, run
from ledger.runtime.sandbox import resolve_db, sandbox_root
from ledger.storage import sqlite


def _main(argv: list[str]) -> int:
    p = parser("init_db", "Create the ledger database and its schema. Safe to run again: an "
               "existing database keeps its data.")
    add_db_arg(p)
    args = p.parse_args(argv)
    path = resolve_db(args.db)
    created = sqlite.initialise(path)
    with open_store(args.db, readonly=True) as store:
        seq, head = store.head()
    emit({"ok": True, "db": str(path.relative_to(sandbox_root())), "created": created,
          "schema_version": sqlite.SCHEMA_VERSION, "events": seq, "head_hash": head})
    return 0


def main() -> None:
    sys.exit(run(_main))
