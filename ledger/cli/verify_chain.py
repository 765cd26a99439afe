"""bin/verify_chain: audit the hash chain and the state tables against the log."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ledger.cli.common import EXIT_FAILED_CHECK, add_db_arg, emit, parser, run
from ledger.log.integrity import damage_report
from ledger.log.verify import verify_store
from ledger.log.verify_parallel import ChainHelper
from ledger.runtime.sandbox import resolve_key, resolve_output_dir, sandbox_root
from ledger.storage.base import Locator
from ledger.storage.factory import locate, open_store, store_exists, store_size

#: A database this big gets a helper process for the chain checks (about 60,000 events;
#: below that, starting it costs more than it saves).
HELPER_MIN_BYTES: Final = 64 << 20

DESCRIPTION = """Check every event's seq, prev_hash and hash, then replay the log and compare
the plans, plan_items and plan_links tables with the replay. Prints chain_status OK or
BROKEN with each mismatch at the first seq it affects; exits 1 when BROKEN. Read-only.

The file itself is checked with PRAGMA integrity_check (meanwhile, on another core): a
damaged file (truncated, overwritten pages, an index that disagrees with its table)
gives chain_status DAMAGED, whatever the walk found, with the integrity messages, the
tables concerned, a truncation the header reveals and the last seq that can still be
read; exits 1.

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
    locator = locate(args.db)
    # Three things at once: the store's integrity check on a thread of its own (SQLite
    # releases the GIL while a statement runs), the replay and part of the chain checks
    # on this thread, the rest of the chain checks in a helper process (forked first,
    # while this process has no other thread and no connection). The integrity verdict
    # still comes first: a damaged store gets the damage report, whatever the walk made
    # of it (or raised on it).
    helper = _helper(locator)
    try:
        damage = _DamageCheck(locator, then=helper.release if helper else None) \
            if store_exists(locator) else None
        try:
            report = _verify(args, locator, helper)
        except Exception:
            if damage is not None and (found := damage.result()) is not None:
                emit(found)
                return EXIT_FAILED_CHECK
            raise
    finally:
        if helper is not None:
            helper.close()
    if damage is not None and (found := damage.result()) is not None:
        emit(found)
        return EXIT_FAILED_CHECK
    emit(report)
    return 0 if report["chain_status"] == "OK" else EXIT_FAILED_CHECK


def _helper(locator: Locator) -> ChainHelper | None:
    """A helper process for a big database, held until the integrity check is done
    (splitting the chain checks costs some extra work: worth it only on a free core)."""
    size = store_size(locator)
    if size is None or size < HELPER_MIN_BYTES:
        return None
    try:
        return ChainHelper(locator, held=True)
    except OSError:  # no process to be had: this one does all the checks
        return None


def _verify(args: argparse.Namespace, locator: Locator,
            helper: ChainHelper | None) -> dict[str, Any]:
    with open_store(locator, readonly=True) as store:
        if args.checkpoints is None:
            return verify_store(store, helper=helper)
        # imported here: the signature checks need cryptography, which takes a while
        from ledger.log.checkpoints import (
            DEFAULT_KEY,
            key_id_of,
            load_checkpoints,
            load_public_key,
            public_key_path,
            verify_with_checkpoints,
        )

        directory = resolve_output_dir(args.checkpoints)
        key_file = resolve_key(args.public_key or str(public_key_path(
            Path(DEFAULT_KEY))), must_exist=True)
        public_key = load_public_key(key_file)
        return verify_with_checkpoints(
            store, load_checkpoints(directory, public_key),
            directory=str(directory.relative_to(sandbox_root())),
            public_key_name=str(key_file.relative_to(sandbox_root())),
            key_id=key_id_of(public_key), helper=helper)


class _DamageCheck:
    """:func:`ledger.log.integrity.damage_report` on a daemon thread (an interrupted
    verify_chain does not wait for it)."""

    def __init__(self, locator: Locator, *, then: Callable[[], None] | None = None) -> None:
        self._report: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._then = then
        self._thread = threading.Thread(target=self._run, args=(locator,),
                                        name="verify-chain-integrity", daemon=True)
        self._thread.start()

    def _run(self, locator: Locator) -> None:
        try:
            self._report = damage_report(locator)
        except BaseException as exc:  # re-raised on the main thread by result()
            self._error = exc
        finally:
            if self._then is not None:  # this thread's core is free now
                self._then()

    def result(self) -> dict[str, Any] | None:
        """The damage report (None: the file passes), once the check is done; raises
        what damage_report raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._report


def main() -> None:
    sys.exit(run(_main))


if __name__ == "__main__":
    main()
