"""Ledger crash safety: SIGKILL the ledger under a steady load, restart it, audit the log.

Agents (threads with their own connections, and one in a separate process) keep sending
commands and re-send each with the same command_id until it is answered. After the kills
every acknowledged command (APPLIED or CONFLICT received) is in the log exactly once
with the seq and hash its reply carried, nothing was applied twice, the chain verifies
and the tables equal a replay of the log. ``test_soak_*`` does the same with more kills
and agents (``bin/test --soak``) and prints its figures.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from agents.client import AgentClient
from ledger.log.verify import verify_store
from ledger.storage.sqlite import SqliteStore
from schema import wire
from tests.support.buses import BusFactory
from tests.support.fault_load import Load, Tally, audit, setup_shared
from tests.support.sockets import SocketFactory, ZmqTracker

PROJECT = Path(__file__).resolve().parents[2]
LEDGER_ARGS = ["--heartbeat", "0.2"]
BROKER_ARGS = ["--liveness", "1.0", "--heartbeat", "0.2"]
#: acks to wait for between two kills are drawn from this range (0: kill the ledger as
#: soon as it answers again, while the agents' retries pour in)
KILL_AFTER_ACKS = (0, 40)
PROGRESS_TIMEOUT = 90.0


def crash_run(buses: BusFactory, *, kills: int, threads: int, processes: int,
              seed: int) -> dict[str, Any]:
    """Load + ``kills`` SIGKILLs of the ledger at random points; the audit figures."""
    rng = random.Random(seed)
    db = "data/crash.db"
    bus = buses.start(db, ledger_args=LEDGER_ARGS, broker_args=BROKER_ARGS)
    tally = Tally()
    survived = 0
    started = time.monotonic()
    setup_shared(bus.front, tally)
    load = Load(bus.front, tally, threads=threads, processes=processes, log_dir=buses.root)
    ok = False
    try:
        assert tally.wait_for(tally.count + 10, PROGRESS_TIMEOUT), tally.errors
        for _ in range(kills):
            target = tally.count + rng.randint(*KILL_AFTER_ACKS)
            assert tally.wait_for(target, PROGRESS_TIMEOUT), (survived, tally.errors)
            bus.ledger.kill()
            bus.restart_ledger()
            survived += 1
        # the agents carry on after the last restart
        assert tally.wait_for(tally.count + 20, PROGRESS_TIMEOUT), tally.errors
        ok = True
    finally:
        load.stop(abort=not ok)
    bus.stop()
    assert not tally.errors, tally.errors
    figures = audit(buses.root / db, tally.acks)
    figures.update(kills_survived=survived, seconds=round(time.monotonic() - started, 1),
                   agents=threads + processes, agent_processes=processes, seed=seed)
    return figures


def assert_crash_safe(figures: dict[str, Any]) -> None:
    assert figures["problem_count"] == 0, figures
    assert figures["duplicates"] == 0, figures
    assert figures["found"] == figures["acknowledged"] > 0, figures
    assert figures["rejected"] == 0, figures
    assert (figures["chain_status"], figures["verify_mismatches"]) == ("OK", 0), figures
    assert figures["conflicts"] > 0, figures  # the shared item really was raced on


def test_acknowledged_commands_survive_ledger_kills(bus_factory: BusFactory) -> None:
    seed = int(os.environ.get("CRASH_SEED", str(random.randrange(1 << 30))))
    figures = crash_run(bus_factory, kills=3, threads=3, processes=1, seed=seed)
    assert_crash_safe(figures)
    assert figures["kills_survived"] == 3


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_ledger_kills(bus_factory: BusFactory,
                          capsys: pytest.CaptureFixture[str]) -> None:
    kills = int(os.environ.get("SOAK_KILLS", "30"))
    seed = int(os.environ.get("CRASH_SEED", str(random.randrange(1 << 30))))
    figures = crash_run(bus_factory, kills=kills, threads=4, processes=2, seed=seed)
    with capsys.disabled():
        print("\nsoak figures: " + json.dumps(figures, sort_keys=True))
    assert_crash_safe(figures)
    assert figures["kills_survived"] == kills >= 10


def test_a_command_applied_whose_reply_was_lost_is_answered_from_the_stored_outcome(
        sandbox: Path, bus_factory: BusFactory, zmq_socket: SocketFactory,
        zmq_tracker: ZmqTracker) -> None:
    bus = bus_factory.start("data/lost.db", ledger_args=LEDGER_ARGS, broker_args=BROKER_ARGS)
    sub = zmq_socket(zmq.SUB)
    with AgentClient(bus.front, "Liam", session_id="S-LOST") as liam:
        liam.wait_ready()
        assert liam.create_plan("P-LOST", "lost replies").status == "APPLIED"
        # the stream is live for us once the heartbeat arrives (a handshake)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(bus.pub)
        assert sub.poll(10_000), "no heartbeat from the broker"
        # the agent sends a command and its connection dies before the reply arrives
        msg = wire.CommandMsg(id="lost-1", actor="Liam", session_id="S-LOST", command={
            "action": "ADD_ITEM", "plan_id": "P-LOST", "item_id": "I-1", "title": "x"})
        gone = zmq_tracker.context()
        dealer = gone.socket(zmq.DEALER)
        dealer.connect(bus.front)
        dealer.send_multipart(wire.encode(msg))
        dealer.close(linger=5000)  # flush the request, then drop the connection
        gone.term()
        event = None
        deadline = time.monotonic() + 10
        while event is None and sub.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            frames = sub.recv_multipart()
            if frames[0] == wire.TOPIC_EVENT:
                row = wire.decode(frames[1:]).event
                event = row if row["command_id"] == "lost-1" else None
        assert event is not None, "the command was never committed"
        # the ledger crashes; the agent comes back and retries with the same id
        bus.ledger.kill()
        bus.restart_ledger()
        liam.wait_ready(timeout=15)
        again = liam.request(msg)
    assert (again.status, again.replayed) == ("APPLIED", True)
    assert (again.seq, again.hash) == (event["seq"], event["hash"]) == (2, event["hash"])
    bus.stop()
    with SqliteStore(sandbox / "data" / "lost.db", readonly=True) as store:
        assert [e.command_id for e in store.iter_events()].count("lost-1") == 1
        record = store.get_command("lost-1")
        assert record is not None and (record.status, record.seq) == ("APPLIED", 2)
        assert verify_store(store)["chain_status"] == "OK"
