"""Acknowledged, then gone (issue 10, item 9): the ledger notices that the file it writes
is no longer the file at its path, and answers DB_ERROR instead of acknowledging.

``bin/ledger --db data/gone/g.db``, 11 commands acknowledged, then the file is taken
away under it: the folder removed (``rm -rf``, the issue's reproduction), another file
renamed over it, its folder moved, its ``-wal`` removed, its writer lock file removed.
The next command gets DB_ERROR (``details.reason`` ``store_lost``), none is APPLIED,
and the ledger exits with status 3 and one JSON line on stderr. Where the file still
exists (the folder moved), it holds every acknowledged command, and a retry of the
unacknowledged one with the same id is applied exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from agents.client import AgentClient
from ledger.storage.base import CommandRecord, StoreLost
from ledger.storage.factory import file_locator, open_store
from tests.support.buses import BusFactory
from tests.support.helpers import copy_db

BIN: Final = Path(sys.executable).parent
DB: Final = "data/gone/g.db"
FAST = ["--liveness", "1", "--heartbeat", "0.2"]
TIMEOUT: Final = 20.0
TS: Final = "2026-01-01T00:00:00.000000Z"


def take_away(root: Path, how: str) -> None:
    folder = root / "data" / "gone"
    path = folder / "g.db"
    if how == "folder removed":
        shutil.rmtree(folder)
    elif how == "replaced by a rename":
        copy = copy_db(path, root / "data" / "copy.db")  # a restored backup, say
        os.rename(copy, path)
    elif how == "folder moved":
        os.rename(folder, root / "data" / "moved")
    elif how == "wal removed":
        os.unlink(folder / "g.db-wal")
    elif how == "lock file removed":
        os.unlink(folder / "g.db.lock")
    else:
        raise AssertionError(how)


def verified_events(root: Path, db: str) -> int:
    done = subprocess.run([str(BIN / "os-verify-chain"), "--db", db], capture_output=True,
                          text=True, timeout=TIMEOUT, check=False,
                          env={**os.environ, "OS_SANDBOX_ROOT": str(root)})
    out = json.loads(done.stdout)
    assert done.returncode == 0 and out["chain_status"] == "OK", out
    return int(out["events"])


@pytest.mark.parametrize("how", ["folder removed", "replaced by a rename", "folder moved",
                                 "wal removed", "lock file removed"])
def test_a_lost_file_is_never_acknowledged(sandbox: Path, bus_factory: BusFactory,
                                           how: str) -> None:
    bus = bus_factory.start(DB, broker_args=FAST, ready=True)
    with AgentClient(bus.front, "Liam", session_id="S-gone", timeout=TIMEOUT,
                     retries=0) as liam:
        assert liam.create_plan("P-1", "gone").status == "APPLIED"
        acked = [liam.add_item("P-1", f"I-{n}", f"item {n}") for n in range(10)]
        assert [r.status for r in acked] == ["APPLIED"] * 10
        take_away(sandbox, how)
        first = liam.add_item("P-1", "I-10", "after", command_id="Liam:after-10")
        assert (first.ok, first.status) == (False, None), first
        assert first.error is not None and first.error["code"] == "DB_ERROR", first
        assert first.error["details"]["reason"] == "store_lost", first
        # at once, while the ledger is stopping, and after: never BUSY, never APPLIED
        later = [liam.add_item("P-1", f"I-{n}", "after") for n in range(11, 20)]
        assert bus.ledger.proc.wait(TIMEOUT) == 3  # stops by itself, no signal
    assert all(r.status is None and not r.ok for r in later), later
    assert {r.error["code"] for r in later if r.error} <= {"DB_ERROR", "LEDGER_UNAVAILABLE"}
    log = (sandbox / "ledger.log").read_text().splitlines()
    lines = [json.loads(x) for x in log if x.startswith("{")]
    assert len(lines) == 1 and lines[0]["ok"] is False, lines
    assert lines[0]["error"]["code"] == "DB_ERROR"
    assert lines[0]["error"]["details"]["reason"] == "store_lost"
    if how == "folder moved":  # the file lives on where it went: nothing acknowledged lost
        moved = "data/moved/g.db"
        assert verified_events(sandbox, moved) in (11, 12)  # 12: the unacknowledged one
        bus.db = moved
        bus.restart_ledger()
        bus_factory.wait_ready(bus)
        with AgentClient(bus.front, "Liam", session_id="S-gone", timeout=TIMEOUT,
                         retries=3) as liam:
            again = liam.add_item("P-1", "I-10", "after", command_id="Liam:after-10")
            assert again.status == "APPLIED", again
        assert verified_events(sandbox, moved) == 12  # applied once, whichever way


def test_the_check_before_each_acknowledgement_is_three_stats(
        sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a writer store does after each COMMIT, before anyone is told: ``stat`` the
    file, its -wal and the lock file, nothing more (a commit group of any size pays it
    once; docs/DURABILITY.md gives the time)."""
    with open_store(file_locator(sandbox / "data" / "cost.db"), create=True) as store:
        calls: list[str] = []
        real = os.stat

        def counting(target: str | os.PathLike[str]) -> os.stat_result:
            calls.append(Path(target).name)
            return real(target)

        monkeypatch.setattr(os, "stat", counting)
        with store.transaction() as tx:
            tx.put_command(CommandRecord("c-1", "f" * 64, "REJECTED", None, "{}", TS))
        monkeypatch.undo()
        assert sorted(calls) == ["cost.db", "cost.db-wal", "cost.db.lock"]
        # and a lost file is refused before the transaction even begins, from then on
        os.unlink(sandbox / "data" / "cost.db.lock")
        with pytest.raises(StoreLost), store.transaction() as tx:
            tx.put_command(CommandRecord("c-2", "f" * 64, "REJECTED", None, "{}", TS))
        with pytest.raises(StoreLost), store.transaction():
            raise AssertionError("a transaction began on a lost store")
