"""bin/truth_sync: write a read-only snapshot of the runtime truth (JSON + Markdown)."""

from __future__ import annotations

import sys

from ledger.cli.common import add_db_arg, emit, open_store, parser, run
from ledger.queries.truth import write_snapshot
from ledger.runtime.sandbox import resolve_output_dir, sandbox_root


def _main(argv: list[str]) -> int:
    p = parser("truth_sync", "Snapshot plans, items, versions, chain head, event counts and "
               "verify status into DIR/truth.json and DIR/truth.md. Opens the database "
               "read-only.")
    add_db_arg(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory under logs/ or data/ (e.g. logs/truth)")
    args = p.parse_args(argv)
    out = resolve_output_dir(args.out)
    with open_store(args.db, readonly=True) as store:
        snap = write_snapshot(store, out)
    rel = out.relative_to(sandbox_root())
    emit({"ok": True, "out": [str(rel / "truth.json"), str(rel / "truth.md")],
          "chain_status": snap["chain"]["status"], "events": snap["chain"]["events"],
          "plans": len(snap["plans"])})
    return 0


def main() -> None:
    sys.exit(run(_main))
