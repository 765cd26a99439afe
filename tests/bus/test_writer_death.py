"""SIGBUS (issue 10, item 10): a storage failure reaches clients as a specific error and
``bin/ledger`` ends with an exit status and a message, never by a signal.

Making the database, its ``-wal`` and ``-shm`` immutable (``chattr +i``) under a running
ledger makes SQLite's next write to the memory-mapped ``-shm`` fault: the kernel sends
SIGBUS, which no Python code can catch. ``bin/ledger`` therefore runs the writer in a
child process and supervises it (ledger/server/supervisor.py): the request in flight
gets DB_ERROR (``details``: ``reason`` ``writer_died``, ``signal`` ``SIGBUS``), one JSON
line goes to stderr, and ``bin/ledger`` exits with status 3. ``--unsupervised`` shows
what the supervision prevents: the process dies of the signal.

``chattr +i`` needs root (CAP_LINUX_IMMUTABLE) and a file system with the attribute
(ext2/3/4, xfs, btrfs; tmpfs only from Linux 6.0): without them these tests cannot
reproduce the failure and say so (skip with the reason), rather than pass.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import pytest
import zmq

from agents.client import AgentClient
from tests.support.buses import BusFactory
from tests.support.direct import command
from tests.support.sockets import SocketFactory

BIN: Final = Path(sys.executable).parent
DB: Final = "data/imm.db"
FAST: Final = ["--liveness", "1", "--heartbeat", "0.2"]
TIMEOUT: Final = 20.0
SESSION: Final = "S-imm"


def chattr_or_skip(folder: Path) -> None:
    """Skip, saying why, where immutable files cannot be made."""
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("cannot reproduce SIGBUS here: no chattr (e2fsprogs) on PATH")
    probe = folder / "chattr-probe"
    probe.write_bytes(b"x")
    done = subprocess.run([chattr, "+i", str(probe)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        probe.unlink()
        pytest.skip(f"cannot reproduce SIGBUS here: chattr +i failed on {folder} "
                    f"({done.stderr.strip()}; needs root and ext4/xfs/btrfs)")
    subprocess.run([chattr, "-i", str(probe)], check=True)
    probe.unlink()


@contextmanager
def immutable(files: list[Path]) -> Iterator[None]:
    """``chattr +i`` on ``files`` for the block, ``-i`` again after (else the test's
    folder could not even be removed)."""
    try:
        subprocess.run(["chattr", "+i", *map(str, files)], check=True)
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], check=False)


def the_files(root: Path) -> list[Path]:
    path = root / DB
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    assert all(f.exists() for f in files), files
    return files


def verified_events(root: Path) -> int:
    done = subprocess.run([str(BIN / "os-verify-chain"), "--db", DB], capture_output=True,
                          text=True, timeout=TIMEOUT, check=False,
                          env={**os.environ, "OS_SANDBOX_ROOT": str(root)})
    out = json.loads(done.stdout)
    assert done.returncode == 0 and out["chain_status"] == "OK", out
    return int(out["events"])


def stderr_lines(root: Path) -> list[dict[str, Any]]:
    text = (root / "ledger.log").read_text()
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


def test_sigbus_under_the_writer_becomes_db_error_and_status_3(
        sandbox: Path, bus_factory: BusFactory, zmq_socket: SocketFactory) -> None:
    """A lone ledger and one DEALER (as the broker's): nothing but the command touches
    the database after the chattr (no broker probes), so it is that command the
    writer dies in, and its answer that the supervisor gives."""
    chattr_or_skip(sandbox / "scenarios")
    ledger = bus_factory.ledger(DB)
    dealer = zmq_socket(zmq.DEALER)
    dealer.connect(ledger.endpoints["commands"])
    plan = {"action": "CREATE_PLAN", "plan_id": "P-1", "title": "immutable"}
    assert command(dealer, "Liam:plan", plan, session_id=SESSION).status == "APPLIED"
    for n in range(4):
        item = {"action": "ADD_ITEM", "plan_id": "P-1", "item_id": f"I-{n}", "title": "x"}
        assert command(dealer, f"Liam:item-{n}", item, session_id=SESSION).status \
            == "APPLIED"
    under = {"action": "ADD_ITEM", "plan_id": "P-1", "item_id": "I-4", "title": "under"}
    with immutable(the_files(sandbox)):
        reply = command(dealer, "Liam:under", under, session_id=SESSION)
        assert ledger.proc.wait(TIMEOUT) == 3  # an exit status, not a signal
    assert (reply.ok, reply.status) == (False, None), reply
    assert reply.error is not None and reply.error["code"] == "DB_ERROR", reply
    assert reply.error["details"] == {"reason": "writer_died", "signal": "SIGBUS"}
    lines = stderr_lines(sandbox)
    assert len(lines) == 1 and lines[0]["ok"] is False, lines
    assert lines[0]["error"] == reply.error
    # nothing acknowledged is lost, and the unacknowledged one is applied exactly once
    bus = bus_factory.start(DB, ready=True)
    assert verified_events(sandbox) in (5, 6)
    with AgentClient(bus.front, "Liam", session_id=SESSION, timeout=TIMEOUT,
                     retries=3) as liam:
        again = liam.send_command(under, command_id="Liam:under")
        assert again.status == "APPLIED", again
    assert verified_events(sandbox) == 6


def test_unsupervised_the_same_failure_kills_the_process(
        sandbox: Path, bus_factory: BusFactory) -> None:
    """What the supervision is for: in one process, SIGBUS ends bin/ledger itself and
    the request gets no answer from it (the broker's LEDGER_UNAVAILABLE, later)."""
    chattr_or_skip(sandbox / "scenarios")
    bus = bus_factory.start(DB, ledger_args=["--unsupervised"], broker_args=FAST,
                            ready=True)
    assert bus.ledger.ready["supervisor"] is None
    assert bus.ledger.ready["writer"]["pid"] == bus.ledger.proc.pid
    with AgentClient(bus.front, "Liam", session_id=SESSION, timeout=TIMEOUT,
                     retries=0) as liam:
        assert liam.create_plan("P-1", "immutable").status == "APPLIED"
        with immutable(the_files(sandbox)):
            reply = liam.add_item("P-1", "I-1", "under")
            assert bus.ledger.proc.wait(TIMEOUT) == -signal.SIGBUS
    assert reply.error is not None and reply.error["code"] == "LEDGER_UNAVAILABLE", reply


def test_a_writer_killed_otherwise_ends_bin_ledger_with_status_3(
        sandbox: Path, bus_factory: BusFactory) -> None:
    """Any death of the writer (here SIGKILL, as the OOM killer sends): bin/ledger says
    so on stderr and exits 3; the broker then answers LEDGER_UNAVAILABLE."""
    bus = bus_factory.start(DB, broker_args=FAST, ready=True)
    with AgentClient(bus.front, "Liam", session_id=SESSION, timeout=TIMEOUT,
                     retries=0) as liam:
        assert liam.create_plan("P-1", "killed").status == "APPLIED"
        os.kill(bus.ledger.ready["writer"]["pid"], signal.SIGKILL)
        assert bus.ledger.proc.wait(TIMEOUT) == 3
        reply = liam.add_item("P-1", "I-1", "after")
    assert reply.error is not None and reply.error["code"] == "LEDGER_UNAVAILABLE", reply
    lines = stderr_lines(sandbox)
    assert len(lines) == 1, lines
    assert lines[0]["error"]["details"] == {
        "reason": "writer_died", "signal": "SIGKILL"}
