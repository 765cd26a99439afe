"""The ledger checkpoints its WAL after the replies went out, never inside a COMMIT.

SQLite's automatic checkpoint (every 1000 WAL pages) runs inside the COMMIT of whichever
group crosses the mark, delaying those replies by the copy and its fsync. The ledger
turns it off and checkpoints from its loop: when idle after CHECKPOINT_IDLE commits, or
after CHECKPOINT_FORCE commits whatever the load. A checkpoint is what changes the main
database file (until then every committed page is in the -wal file), so the file's
bytes tell whether one ran.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.tools.launch import LOOPBACK_ANY
from ledger.server import serving as ledger_server
from ledger.server.serving import LedgerServer
from ledger.storage.factory import file_locator
from ledger.storage.sqlite import SqliteStore
from tests.ledger.test_startup_background import TIMEOUT, Dealer
from tests.support.helpers import init_db


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[LedgerServer, Dealer]]:
    db = init_db(tmp_path / "data" / "wal.db")
    srv = LedgerServer(file_locator(db), LOOPBACK_ANY, LOOPBACK_ANY)
    dealer = Dealer(srv.endpoints["commands"])
    try:
        yield srv, dealer
    finally:
        dealer.close()
        srv.close()


def commit_one(srv: LedgerServer, dealer: Dealer, n: int) -> None:
    """One command through the ledger's own loop steps: drain (apply, COMMIT, reply),
    then the checkpoint decision."""
    dealer.command(n)
    assert srv.router.poll(int(TIMEOUT * 1000))
    srv._drain()
    reply = dealer.recv()
    assert reply is not None and reply.status == "APPLIED", reply
    srv._maybe_checkpoint()


def test_commits_leave_the_database_file_alone_until_an_idle_checkpoint(
        server: tuple[LedgerServer, Dealer]) -> None:
    srv, dealer = server
    db = Path(srv.locator.address)
    before = digest(db)
    for n in range(ledger_server.CHECKPOINT_IDLE - 1):
        commit_one(srv, dealer, n)
    assert digest(db) == before  # no checkpoint inside any of those COMMITs
    commit_one(srv, dealer, 99)  # the CHECKPOINT_IDLE-th commit, then idle
    assert digest(db) != before
    assert srv.commits_since_checkpoint == 0
    # what the checkpoint copied is the committed state: a fresh reader agrees
    with SqliteStore(db, readonly=True) as store:
        assert store.head()[0] == ledger_server.CHECKPOINT_IDLE


def test_a_waiting_request_defers_the_checkpoint_until_the_forced_one(
        server: tuple[LedgerServer, Dealer]) -> None:
    srv, dealer = server
    db = Path(srv.locator.address)
    commit_one(srv, dealer, 0)
    srv.commits_since_checkpoint = ledger_server.CHECKPOINT_IDLE
    before = digest(db)
    dealer.command(1)  # waiting, not yet taken
    assert srv.router.poll(int(TIMEOUT * 1000))
    srv._maybe_checkpoint()
    assert digest(db) == before  # busy: not now
    srv.commits_since_checkpoint = ledger_server.CHECKPOINT_FORCE
    srv._maybe_checkpoint()
    assert digest(db) != before  # busy, but the WAL has grown long enough
    srv._drain()
    reply = dealer.recv()
    assert reply is not None and reply.status == "APPLIED"
