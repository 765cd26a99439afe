"""The default start-up check, ``--startup-check background``: the constant-time tail
check before serving, the page check (PRAGMA quick_check + event count) on its own thread
while the ledger serves.

On a file whose damage only the page check sees (a page overwritten in the middle of the
events table: the chain tail reads fine), the ledger starts, then stops taking commands
(DB_DAMAGED), writes one JSON line on stderr and exits with status 3. A command sent
meanwhile gets an ack or DB_DAMAGED (through the broker, LEDGER_UNAVAILABLE once the
ledger is gone), never silence. No sleeps: every wait is a receive or a process wait with
a timeout.
"""

from __future__ import annotations

import json
import os
import select
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.client import AgentClient
from agents.tools.launch import LOOPBACK_ANY, stop_process
from ledger.log import integrity
from ledger.plans.ledger import Ledger
from ledger.server.serving import LedgerServer
from ledger.storage.base import ReadSnapshot
from ledger.storage.factory import file_locator
from ledger.storage.sqlite import SqliteStore
from schema import wire
from schema.errors import StorageError
from tests.ledger.test_damaged_db import CASES, DB, EVENTS, Damage, _commands, overwrite_a_page
from tests.support.buses import BusFactory
from tests.support.helpers import Cmds, build_db

TIMEOUT = 10.0  # seconds, for every receive and process wait


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A closed, checkpointed ledger database of EVENTS events (no -wal file left)."""
    path = tmp_path / DB
    build_db(path, _commands())
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def damaged(db: Path) -> Path:
    """A page in the middle of the events table overwritten: the tail check passes, the
    page check does not."""
    overwrite_a_page(db)
    assert integrity.startup_check(file_locator(db), pages=False)["head_seq"] == EVENTS
    with pytest.raises(StorageError, match="PRAGMA quick_check failed"):
        integrity.startup_check(file_locator(db))
    return db


def _popen(root: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ledger.server", "--db", DB, "--bind",
                             LOOPBACK_ANY, "--pub", LOOPBACK_ANY, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL,
                            env={**os.environ, "OS_SANDBOX_ROOT": str(root)})


def _ready(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    assert select.select([proc.stdout], [], [], TIMEOUT * 3)[0], "no ready line, no exit"
    line = proc.stdout.readline()  # the ledger prints it, or exits (EOF)
    assert line, f"no ready line; exit status {proc.wait(TIMEOUT)}"
    return dict(json.loads(line))


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, list[dict[str, Any]]]:
    """Wait for the ledger to exit by itself; its status and the JSON lines on stderr."""
    try:
        _, err = proc.communicate(timeout=TIMEOUT * 3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the ledger did not exit by itself") from None
    lines = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
    return proc.returncode, lines


class Dealer:
    """One DEALER straight on the ledger's ROUTER (as the broker's backend is)."""

    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)
        self._n = 0

    def send(self, msg: Any) -> None:
        self._n += 1
        self.sock.send_multipart([self._n.to_bytes(8, "big"), *wire.encode(msg)])

    def recv(self, timeout: float = TIMEOUT) -> wire.Reply | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        reply = wire.decode(self.sock.recv_multipart()[1:])
        assert isinstance(reply, wire.Reply)
        return reply

    def command(self, n: int) -> None:
        self.send(wire.CommandMsg(id=f"bg-{n}", actor="Liam", session_id="S-BG", command={
            "action": "CREATE_PLAN", "plan_id": f"P-BG-{n}", "title": "after start"}))

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def _reply_or_exit(dealer: Dealer, proc: subprocess.Popen[bytes]) -> wire.Reply | None:
    """The reply, or None once the ledger has exited without one (it was already going)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        reply = dealer.recv(0.05)
        if reply is not None:
            return reply
        if proc.poll() is not None:
            return dealer.recv(0)
    raise AssertionError("neither a reply nor an exit")


def _is_ack_or_damaged(reply: wire.Reply) -> bool:
    return (reply.ok and reply.status == "APPLIED") or (
        not reply.ok and (reply.error or {}).get("code") == "DB_DAMAGED")


# --- a sound database ------------------------------------------------------------------


def test_the_default_serves_at_once_and_reports_the_page_check(tmp_path: Path,
                                                               db: Path) -> None:
    proc = _popen(tmp_path)
    dealer: Dealer | None = None
    try:
        ready = _ready(proc)
        check = ready["startup_check"]
        assert (check["mode"], check["tail"]) == ("background", "ok"), ready
        assert check["pages"] in ("running", "ok"), ready
        dealer = Dealer(ready["endpoints"]["commands"])
        deadline = time.monotonic() + TIMEOUT
        while True:  # PING until the page check has finished
            dealer.send(wire.Ping(id="ping", actor="t"))
            reply = dealer.recv()
            assert reply is not None and reply.result is not None, "no answer to PING"
            check = reply.result["startup_check"]
            if check["pages"] != "running" or time.monotonic() > deadline:
                break
        assert check["pages"] == "ok" and check["events"] == EVENTS, check
        assert check["pages_seconds"] >= 0
        dealer.command(1)
        reply = dealer.recv()
        assert reply is not None and reply.status == "APPLIED" and reply.seq == EVENTS + 1
    finally:
        if dealer is not None:
            dealer.close()
        assert stop_process(proc, grace=TIMEOUT) == 0


@pytest.mark.parametrize(("mode", "pages"), [("full", "ok"), ("tail", "skipped")])
def test_full_and_tail_say_what_they_checked(tmp_path: Path, db: Path, mode: str,
                                             pages: str) -> None:
    proc = _popen(tmp_path, "--startup-check", mode)
    try:
        check = _ready(proc)["startup_check"]
    finally:
        assert stop_process(proc, grace=TIMEOUT) == 0
    assert (check["mode"], check["tail"], check["pages"]) == (mode, "ok", pages), check


def test_a_new_database_has_nothing_to_check(tmp_path: Path) -> None:
    proc = _popen(tmp_path)
    try:
        check = _ready(proc)["startup_check"]
    finally:
        assert stop_process(proc, grace=TIMEOUT) == 0
    assert check == {"mode": "background", "tail": "new database", "pages": "new database"}


# --- a page damaged in the middle -------------------------------------------------------


def test_damage_found_in_the_background_stops_the_ledger_with_status_3(
        tmp_path: Path, damaged: Path) -> None:
    proc = _popen(tmp_path)  # the default mode
    ready = _ready(proc)
    assert ready["ok"] is True and ready["startup_check"]["mode"] == "background", ready
    dealer = Dealer(ready["endpoints"]["commands"])
    try:
        dealer.command(1)  # before or after the check found the damage
        reply = _reply_or_exit(dealer, proc)
        code, lines = _finish(proc)
    finally:
        dealer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # an answer, or none because the ledger had already gone (it exited: no hang)
    assert reply is None or _is_ack_or_damaged(reply), reply
    assert code == 3
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["ok"] is False and line["error"]["code"] == "DB_DAMAGED", line
    assert "PRAGMA quick_check failed" in line["error"]["message"], line
    assert "bin/verify_chain" in line["error"]["message"]
    assert line["startup_check"]["mode"] == "background"
    assert line["startup_check"]["pages"] == "failed"


def test_through_the_broker_every_command_is_answered(tmp_path: Path, damaged: Path,
                                                      bus_factory: BusFactory) -> None:
    """While the ledger finds the damage and exits, commands through the broker get an
    ack, DB_DAMAGED, or (once it is gone) LEDGER_UNAVAILABLE; never silence."""
    env = {"OS_SANDBOX_ROOT": str(tmp_path)}
    with bus_factory.start(DB, env=env) as bus, AgentClient(bus.front, "Liam", session_id="S-BG",
                                                      timeout=TIMEOUT, retries=0) as client:
        codes: list[str] = []
        for n in range(50):
            reply = client.send_command({"action": "CREATE_PLAN", "plan_id": f"P-{n}",
                                         "title": "x"})
            codes.append("APPLIED" if reply.ok else (reply.error or {})["code"])
            if codes[-1] == "LEDGER_UNAVAILABLE":
                break
        assert bus.ledger.proc.wait(TIMEOUT * 3) == 3
        reply = client.send_command({"action": "CREATE_PLAN", "plan_id": "P-last",
                                     "title": "x"})
        assert not reply.ok and (reply.error or {})["code"] == "LEDGER_UNAVAILABLE", reply
    assert set(codes) <= {"APPLIED", "DB_DAMAGED", "LEDGER_UNAVAILABLE"}, codes


def test_after_the_damage_is_found_commands_get_db_damaged_and_nothing_is_signed(
        tmp_path: Path, damaged: Path) -> None:
    """In process, step by step: the check fails, a command taken from the socket is
    refused, a command still waiting when the loop stops is refused, no checkpoint is
    written, the head does not move."""
    checkpoint_dir = tmp_path / "checkpoints"
    checkpoint_dir.mkdir()
    server = LedgerServer(file_locator(damaged), LOOPBACK_ANY, LOOPBACK_ANY,
                          startup_check="background",
                          checkpoint_key=Ed25519PrivateKey.generate(),
                          checkpoint_dir=checkpoint_dir, checkpoint_every=0.01)
    dealer = Dealer(server.endpoints["commands"])
    try:
        assert server.page_check is not None
        assert server.page_check.done.wait(TIMEOUT)
        assert server.page_check.state == "failed"
        assert server.refusal is not None and server.refusal.code == "DB_DAMAGED"
        status = server.startup_status()
        assert status["pages"] == "failed" and status["error"]["code"] == "DB_DAMAGED"
        # a command the loop takes from the socket
        dealer.command(1)
        assert server.router.poll(int(TIMEOUT * 1000))
        assert server._triage(server.router.recv_multipart()) is None
        reply = dealer.recv()
        assert reply is not None and not reply.ok, reply
        assert (reply.error or {})["code"] == "DB_DAMAGED"
        # a command still waiting when the loop stops
        dealer.command(2)
        assert server.router.poll(int(TIMEOUT * 1000))
        stop = threading.Event()
        server.serve(stop)  # returns at once: the check has failed
        reply = dealer.recv()
        assert reply is not None and (reply.error or {})["code"] == "DB_DAMAGED", reply
    finally:
        dealer.close()
    assert server.head_seq == EVENTS
    assert list(checkpoint_dir.iterdir()) == []


def test_the_page_check_reads_one_snapshot_while_the_ledger_writes(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands committed between its MAX(seq) and its COUNT(*) do not make them disagree
    (without one read transaction they would: a false DB_DAMAGED)."""
    count_check = integrity._count_check

    def write_then_count(name: str, snap: ReadSnapshot, last_seq: int) -> dict[str, Any]:
        c = Cmds(session_id="S-W")
        with SqliteStore(db) as store:
            Ledger(store).apply_many([c.add_item("P-1", f"I-W{i}", command_id=f"w-{i}")
                                      for i in range(5)])
        return count_check(name, snap, last_seq)

    monkeypatch.setattr(integrity, "_count_check", write_then_count)
    check = integrity.PageCheck(file_locator(db))
    check.start()
    assert check.done.wait(TIMEOUT)
    assert (check.state, check.error, check.result["events"]) == ("ok", None, EVENTS)
    with SqliteStore(db, readonly=True) as store:
        assert store.head()[0] == EVENTS + 5


def test_a_page_check_stopped_before_it_runs_reads_nothing(db: Path) -> None:
    check = integrity.PageCheck(file_locator(db))
    check.stop()  # before it started: it never reads
    check.start()
    assert check.done.wait(TIMEOUT)
    assert check.state == "stopped" and check.error is None


# --- every kind of damage, with the default mode ----------------------------------------


@pytest.mark.parametrize(("damage", "says"), [(c[0], c[1]) for c in CASES],
                         ids=[c[0].__name__ for c in CASES])
def test_every_damage_case_ends_in_status_3_with_the_default_mode(
        tmp_path: Path, db: Path, damage: Damage, says: str) -> None:
    """Refused before serving (tail damage), or found by the page check and the ledger
    exits: status 3 and DB_DAMAGED either way."""
    damage(db)
    proc = _popen(tmp_path)
    ready = _ready(proc)
    code, lines = _finish(proc)
    assert code == 3, (ready, lines)
    error = ready["error"] if not ready["ok"] else lines[-1]["error"]
    assert error["code"] == "DB_DAMAGED" and says in error["message"], (ready, lines)


def test_the_broker_s_ping_passes_the_page_check_on(tmp_path: Path, db: Path,
                                                    bus_factory: BusFactory) -> None:
    """An agent sees the ledger's start-up check through the broker: ``running`` or
    ``ok`` at first, ``ok`` once the background page check is done."""
    env = {"OS_SANDBOX_ROOT": str(tmp_path)}
    with bus_factory.start(DB, env=env) as bus, AgentClient(bus.front, "Liam", timeout=TIMEOUT,
                                                      retries=0) as client:
        seen: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        while not seen or seen[-1] != "ok":
            assert time.monotonic() < deadline, seen
            check = client.ping()["ledger_startup_check"]
            if check is not None:  # None: the broker's first probe is not answered yet
                assert check["mode"] == "background"
                seen.append(check["pages"])
            client.sock.poll(50)  # pace the pings (nothing arrives on this socket)
        assert set(seen) <= {"running", "ok"}, seen
