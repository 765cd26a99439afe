"""Ledger down: agents get LEDGER_UNAVAILABLE within a bounded time, never a hang.

Broker <-> ledger liveness is application-level (zguide Paranoid Pirate): the broker
PINGs the ledger over the request path and counts it up while anything comes back
(reply, event, heartbeat) within ``--liveness`` seconds. A SIGSTOPped ledger keeps its
TCP connections open but answers nothing, so only those heartbeats can tell; a killed
one also closes its sockets. Both are tested, with the client's own timeout far longer
than the bound, so a reply within the bound can only come from the broker's liveness.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import zmq

from agents.client import AgentClient
from ledger.storage.sqlite import SqliteStore
from schema import wire
from tests.support.buses import BusFactory
from tests.support.sockets import SocketFactory

LIVENESS = 1.0
HEARTBEAT = 0.2
BROKER_ARGS = ["--liveness", str(LIVENESS), "--heartbeat", str(HEARTBEAT)]
LEDGER_ARGS = ["--heartbeat", str(HEARTBEAT)]
#: A request in flight when the ledger falls silent is failed within this (liveness plus
#: the broker's loop tick and a generous margin for a loaded machine); requests made
#: after it was declared down are refused within NOW.
BOUND = LIVENESS + 3.0
NOW = 2.0
CLIENT_TIMEOUT = 30.0  # far beyond BOUND: the client's own timeout never fires here


def _unavailable(reply: wire.Reply) -> bool:
    return (not reply.ok and reply.status is None and reply.error is not None
            and reply.error["code"] == "LEDGER_UNAVAILABLE")


def _heartbeats(zmq_socket: SocketFactory, pub: str) -> zmq.Socket[bytes]:
    sub = zmq_socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_HEARTBEAT)
    sub.connect(pub)
    return sub


def _beat(sub: zmq.Socket[bytes]) -> wire.Heartbeat:
    """The next heartbeat of the broker (they come every HEARTBEAT seconds)."""
    assert sub.poll(int(10 * HEARTBEAT * 1000)), "no broker heartbeat"
    beat = wire.decode(sub.recv_multipart()[1:])
    assert isinstance(beat, wire.Heartbeat) and beat.source == "broker"
    return beat


def _wait_declared(sub: zmq.Socket[bytes], up: bool, since: float) -> float:
    """Seconds from ``since`` until a broker heartbeat reports the ledger ``up`` (or
    down); beats queued from before are skipped on the way."""
    while _beat(sub).ledger_up is not up:
        assert time.monotonic() - since < BOUND, f"the ledger was never declared up={up}"
    return time.monotonic() - since


def _timed(client: AgentClient, msg: wire.CommandMsg | wire.Query) -> tuple[wire.Reply, float]:
    started = time.monotonic()
    reply = client.request(msg)
    return reply, time.monotonic() - started


@pytest.mark.parametrize("how", ["SIGSTOP", "SIGKILL"])
def test_agents_get_ledger_unavailable_within_the_bound(
        sandbox: Path, bus_factory: BusFactory, zmq_socket: SocketFactory, how: str) -> None:
    bus = bus_factory.start("data/down.db", ledger_args=LEDGER_ARGS, broker_args=BROKER_ARGS)
    sub = _heartbeats(zmq_socket, bus.pub)
    with AgentClient(bus.front, "Liam", timeout=CLIENT_TIMEOUT, retries=0) as liam:
        liam.wait_ready()
        assert liam.create_plan("P-D", "down").status == "APPLIED"
        _wait_declared(sub, True, time.monotonic())
        held = liam.requests.add_item("P-D", "I-1", "sent as it went down",
                                      command_id="held-1").msg
        went_down = time.monotonic()
        if how == "SIGSTOP":
            # alive, connected, silent (the factory sends SIGCONT if the test fails)
            bus.ledger.proc.send_signal(signal.SIGSTOP)
        else:
            bus.ledger.kill()
        # in flight (or refused at once if the broker already saw the sockets close)
        reply, took = _timed(liam, held)
        assert _unavailable(reply), reply
        assert took < BOUND, f"{how}: LEDGER_UNAVAILABLE after {took:.2f}s"
        # declared down: every request for the ledger is refused at once
        for msg in (liam.requests.add_item("P-D", "I-2", "while down",
                                           command_id="refused-1").msg,
                    wire.Query(id="q-1", actor="Liam", query="list-plans")):
            reply, took = _timed(liam, msg)
            assert _unavailable(reply) and took < NOW, (reply, took)
        # the broker's heartbeats (and PING) report it down within the bound
        assert _wait_declared(sub, False, went_down) < BOUND
        status = liam.ping()
        assert (status["broker_up"], status["ledger_up"]) == (True, False)

        if how == "SIGSTOP":
            bus.ledger.proc.send_signal(signal.SIGCONT)
        else:
            bus.restart_ledger()
        assert liam.wait_ready(timeout=15)["ledger_up"] is True
        # the held command may have been applied after SIGCONT: the same id is
        # answered APPLIED either way, and applied once
        again = liam.request(held)
        assert (again.status, again.seq) == ("APPLIED", 2), again
        assert liam.request(held).replayed is True
    bus.stop()
    with SqliteStore(sandbox / "data" / "down.db", readonly=True) as store:
        assert [e.command_id for e in store.iter_events()][1:] == ["held-1"]


def test_liveness_comes_from_probes_on_the_request_path(
        tmp_path: Path, bus_factory: BusFactory, zmq_socket: SocketFactory) -> None:
    """The broker hears nothing on the ledger's event stream (its --ledger-pub leads
    nowhere), yet counts the ledger up for many liveness periods: the PINGs it sends
    over the request path are answered. Stop the ledger and it is down again."""
    ledger = bus_factory.ledger("data/probe.db", *LEDGER_ARGS)
    nowhere = f"ipc://{tmp_path}/nobody-publishes-here"  # a SUB may connect to nothing
    broker = bus_factory.broker(ledger.endpoints["commands"], nowhere, *BROKER_ARGS)
    sub = _heartbeats(zmq_socket, broker.endpoints["pub"])
    with AgentClient(broker.endpoints["front"], "Liam", timeout=CLIENT_TIMEOUT,
                     retries=0) as liam:
        liam.wait_ready()
        _wait_declared(sub, True, time.monotonic())  # skip beats from before
        # from then on the broker's own heartbeats say "ledger up", for 3 liveness
        # periods, though nothing comes from the ledger but the probes' answers
        beats = []
        started = time.monotonic()
        while time.monotonic() - started < 3 * LIVENESS:
            beats.append(_beat(sub).ledger_up)
        assert len(beats) >= 3 and all(beats), beats
        assert liam.create_plan("P-PROBE", "probed").status == "APPLIED"

        ledger.proc.send_signal(signal.SIGSTOP)
        try:
            assert _wait_declared(sub, False, time.monotonic()) < BOUND
            reply = liam.create_plan("P-2", "refused", command_id="p2")
            assert _unavailable(reply), reply
        finally:
            ledger.proc.send_signal(signal.SIGCONT)
        assert liam.wait_ready(timeout=15)["ledger_up"] is True
