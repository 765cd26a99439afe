"""After a clean stop, the database file alone holds everything committed (issue 10,
item 11), in every mode of the ledger: with and without signed checkpoints, with each
``--startup-check``, stopped with SIGTERM or Ctrl-C (SIGINT), with a reader connected.
The commands go straight to the ledger, as the broker sends them.

The writer's close checkpoints the whole WAL into the file and truncates it (``PRAGMA
wal_checkpoint(TRUNCATE)``, ledger/storage/sqlite.py), so a backup that copies only the
``.db`` file is complete: the copy verifies and holds every acknowledged event, with the
seq and hash each reply gave. Each case first checks that the WAL did hold commits not
yet in the file when the stop came (else the copy would prove nothing).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Final

import pytest
import zmq

from ledger.storage.factory import initialise_store
from tests.support.buses import BusFactory
from tests.support.direct import command
from tests.support.sockets import SocketFactory

BIN: Final = Path(sys.executable).parent
DB: Final = "data/c.db"
BACKUP: Final = "data/backup/c.db"
TIMEOUT: Final = 20.0
#: enough commits that some stay in the WAL after the ledger's own checkpoints (it
#: checkpoints PASSIVE after 16 commit groups: ledger/server/serving.py)
COMMANDS: Final = 40


def verify(root: Path, db: str) -> dict[str, object]:
    done = subprocess.run([str(BIN / "os-verify-chain"), "--db", db], capture_output=True,
                          text=True, timeout=TIMEOUT, check=False,
                          env={**os.environ, "OS_SANDBOX_ROOT": str(root)})
    out: dict[str, object] = json.loads(done.stdout)
    assert done.returncode == 0 and out["chain_status"] == "OK", out
    return out


def frames_not_in_the_file(path: Path, scratch: Path) -> int:
    """Commits in the WAL that the database file does not hold yet: what a copy of the
    file alone would miss (``mode=ro`` reads through the WAL and never checkpoints)."""
    scratch.mkdir(parents=True, exist_ok=True)
    alone = shutil.copyfile(path, scratch / "alone.db")
    counts = []
    for db in (path, alone):
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            counts.append(int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]))
    return counts[0] - counts[1]


MODES = [pytest.param(check, cp, id=f"{check}-{'checkpoints' if cp else 'plain'}")
         for check in ("background", "full", "tail") for cp in (False, True)]


@pytest.mark.parametrize(("startup_check", "checkpoints"), MODES)
def test_a_copy_of_the_file_alone_after_a_clean_stop_is_complete(
        sandbox: Path, bus_factory: BusFactory, zmq_socket: SocketFactory,
        startup_check: str, checkpoints: bool) -> None:
    args = ["--startup-check", startup_check]
    if checkpoints:
        args += ["--checkpoint-dir", "data/checkpoints", "--checkpoint-every", "0.2"]
    replies = run_and_stop(sandbox, bus_factory, zmq_socket, args, signal.SIGTERM)
    check_backup(sandbox, replies)


@pytest.mark.parametrize("how", ["SIGINT", "a reader connected"])
def test_ctrl_c_and_a_connected_reader_change_nothing(
        sandbox: Path, bus_factory: BusFactory, zmq_socket: SocketFactory,
        how: str) -> None:
    reader = None
    if how == "a reader connected":  # an idle reader holds the file open meanwhile
        initialise_store(DB)
        reader = sqlite3.connect(f"file:{sandbox / DB}?mode=ro", uri=True)
        reader.execute("SELECT COUNT(*) FROM events").fetchone()
    try:
        replies = run_and_stop(sandbox, bus_factory, zmq_socket, [],
                               signal.SIGINT if how == "SIGINT" else signal.SIGTERM)
    finally:
        if reader is not None:
            reader.close()
    check_backup(sandbox, replies)


def run_and_stop(root: Path, bus_factory: BusFactory, zmq_socket: SocketFactory,
                 args: list[str], sig: signal.Signals) -> list[tuple[int, str]]:
    """A ledger (talked to directly, as the broker would), COMMANDS commands, then a stop
    with ``sig``: the (seq, hash) each reply gave."""
    ledger = bus_factory.ledger(DB, *args)
    dealer = zmq_socket(zmq.DEALER)
    dealer.connect(ledger.endpoints["commands"])
    bodies = [{"action": "CREATE_PLAN", "plan_id": "P-1", "title": "backed up"}] + [
        {"action": "ADD_ITEM", "plan_id": "P-1", "item_id": f"I-{n}", "title": f"item {n}"}
        for n in range(COMMANDS - 1)]
    replies: list[tuple[int, str]] = []
    for n, body in enumerate(bodies):
        reply = command(dealer, f"Liam:{n}", body)
        assert reply.status == "APPLIED" and reply.seq and reply.hash, reply
        replies.append((reply.seq, reply.hash))
    # the stop has something to do: commits the file alone does not hold yet
    assert frames_not_in_the_file(root / DB, root / "scratch") > 0
    assert ledger.stop(grace=TIMEOUT, sig=sig) == 0
    return replies


def check_backup(root: Path, replies: list[tuple[int, str]]) -> None:
    copy = root / BACKUP
    copy.parent.mkdir(parents=True)
    shutil.copyfile(root / DB, copy)  # the file alone: no -wal, no -shm
    assert sorted(p.name for p in copy.parent.iterdir()) == ["c.db"]
    out = verify(root, BACKUP)
    assert out["events"] == len(replies) == COMMANDS
    assert (out["head_seq"], out["head_hash"]) == replies[-1]
    with closing(sqlite3.connect(f"file:{copy}?mode=ro", uri=True)) as conn:
        stored = conn.execute("SELECT seq, hash FROM events ORDER BY seq").fetchall()
    assert stored == replies
