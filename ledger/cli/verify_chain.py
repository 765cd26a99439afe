"""bin/verify_chain: audit the hash chain and the state tables against the log."""

from __future__ import annotations

import sys
from pathlib import Path

from ledger.checkpoints import (
    DEFAULT_KEY,
    key_id_of,
    load_checkpoints,
    load_public_key,
    public_key_path,
    verify_with_checkpoints,
)
from ledger.cli.common import EXIT_FAILED_CHECK, add_db_arg, emit, open_store, parser, run
from ledger.integrity import damage_report
from ledger.sandbox import resolve_db, resolve_key, resolve_output_dir, sandbox_root
from ledger.verify import verify_store

DESCRIPTION = """Check every event's seq, prev_hash and hash, then replay the log and compare
the plans, plan_items and plan_links tables with the replay. Prints chain_status OK or
BROKEN with each mismatch at the first seq it affects; exits 1 when BROKEN. Read-only.

First the file itself is checked with PRAGMA integrity_check: a damaged file (truncated,
overwritten pages, an index that disagrees with its table) gives chain_status DAMAGED
with the integrity messages, the tables concerned, a truncation the header reveals and
the last seq that can still be read; exits 1.

With --checkpoints DIR it also checks the ledger's signed checkpoints (bin/ledger
--checkpoint-dir): each file's Ed25519 signature against the trusted public key, then
the database against each one. A checkpoint beyond the head means a cut-off tail or a
rolled-back database (TRUNCATED, at head + 1); a head hash that differs from the event at
its seq means a rewritten history, even one whose hashes were all recomputed
(HISTORY_REWRITTEN); a state hash that differs from the replayed state at its seq
(STATE_REWRITTEN); a bad signature or another key (BAD_SIGNATURE, UNKNOWN_KEY). Each is a
mismatch naming the checkpoint file; the "checkpoints" object sums them up."""


def _main(argv: list[str]) -> int:
    p = parser("verify_chain", DESCRIPTION)
    add_db_arg(p)
    p.add_argument("--checkpoints", default=None, metavar="DIR",
                   help="also verify the signed checkpoints in DIR (under data/ or logs/)")
    p.add_argument("--public-key", default=None, metavar="PATH",
                   help="the trusted Ed25519 public key (PEM, under keys/; default "
                   "keys/ledger-checkpoint.pub, which the ledger writes beside its key)")
    args = p.parse_args(argv)
    path = resolve_db(args.db)
    damage = damage_report(path) if path.is_file() else None
    if damage is not None:
        emit(damage)
        return EXIT_FAILED_CHECK
    with open_store(args.db, readonly=True) as store:
        if args.checkpoints is None:
            report = verify_store(store)
        else:
            directory = resolve_output_dir(args.checkpoints)
            key_file = resolve_key(args.public_key or str(public_key_path(
                Path(DEFAULT_KEY))), must_exist=True)
            public_key = load_public_key(key_file)
            report = verify_with_checkpoints(
                store, load_checkpoints(directory, public_key),
                directory=str(directory.relative_to(sandbox_root())),
                public_key_name=str(key_file.relative_to(sandbox_root())),
                key_id=key_id_of(public_key))
    emit(report)
    return 0 if report["chain_status"] == "OK" else EXIT_FAILED_CHECK


def main() -> None:
    sys.exit(run(_main))
