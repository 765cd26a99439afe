"""Slow or dead subscribers never slow the ledger or the broker; they catch up from the log.

ZeroMQ PUB sockets never block: a subscriber that does not read fills its own queue up
to the high-water mark and further events for it are dropped, not waited for. A
subscriber that missed events fetches them with REPLAY (the Clone pattern of
agents/monitor.py). The test runs the same load twice, the second time with subscribers
that never read (in this process, on the broker's and on the ledger's PUB, with tiny
buffers) and one in a SIGSTOPped process, and compares the times.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import threading
import time
from typing import IO

import zmq

from agents.client import AgentClient
from agents.tools.monitor import EventFollower
from tests.support.buses import BusFactory
from tests.support.fault_load import COMMAND_DEADLINE, decided
from tests.support.sockets import SocketFactory

AGENTS = 4
PER_AGENT = 500
#: the load with stalled subscribers may take this much longer than without (the machine
#: is shared: the ratio is generous; a blocked publisher would never finish at all)
RATIO, SLACK = 3.0, 3.0
LOAD_TIMEOUT = 90.0

SUB_SCRIPT = """
import sys, zmq
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.RCVHWM, 1)
sub.setsockopt(zmq.RCVBUF, 4096)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(sys.argv[1])
sub.recv_multipart()          # subscribed and receiving: say so, then never read again
print("ready", flush=True)
sys.stdin.read()
"""


def _load(front: str, tag: str) -> float:
    """AGENTS agents, each on its own connection, PER_AGENT commands each; seconds."""
    errors: list[BaseException] = []

    def agent(n: int) -> None:
        try:
            with AgentClient(front, f"{tag}{n}", timeout=5.0) as client:
                deadline = time.monotonic() + COMMAND_DEADLINE
                plan = f"P-{tag}{n}"
                decided(client, client.requests.create_plan(plan, tag).msg,
                        deadline=deadline)
                for i in range(PER_AGENT - 1):
                    reply = decided(client, client.requests.add_item(
                        plan, f"I-{tag}{n}-{i}", "x" * 400).msg, deadline=deadline)
                    assert reply.status == "APPLIED", reply
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=agent, args=(n,), daemon=True) for n in range(AGENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOAD_TIMEOUT)
    took = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), f"{tag}: load not done in {LOAD_TIMEOUT}s"
    assert not errors, errors
    return took


def _stalled_sub(zmq_socket: SocketFactory, endpoint: str) -> zmq.Socket[bytes]:
    """A SUB that is connected and subscribed, and will never read."""
    sub = zmq_socket(zmq.SUB)
    sub.rcvhwm = 1
    sub.setsockopt(zmq.RCVBUF, 4096)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    # a heartbeat has arrived (poll does not consume it): the subscription is live
    assert sub.poll(10_000), f"nothing from {endpoint}"
    return sub


def _read_line(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a child's stdout, within ``timeout`` seconds."""
    readable, _, _ = select.select([stream], [], [], timeout)
    assert readable, f"no line within {timeout}s"
    return stream.readline()


def test_subscribers_that_never_read_do_not_slow_the_bus(
        bus_factory: BusFactory, zmq_socket: SocketFactory) -> None:
    bus = bus_factory.start("data/slow.db", ledger_args=["--heartbeat", "0.2"],
                            broker_args=["--heartbeat", "0.2"])
    proc = None
    try:
        with AgentClient(bus.front, "probe") as probe:
            probe.wait_ready()
        baseline = _load(bus.front, "base")

        stalled = [_stalled_sub(zmq_socket, bus.pub),
                   _stalled_sub(zmq_socket, bus.ledger.endpoints["events"])]
        proc = subprocess.Popen([sys.executable, "-c", SUB_SCRIPT, bus.pub],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert _read_line(proc.stdout, 10) == b"ready\n"
        proc.send_signal(signal.SIGSTOP)  # a dead subscriber with its connection open
        with_stalled = _load(bus.front, "slow")
        assert with_stalled <= RATIO * baseline + SLACK, (baseline, with_stalled)

        # the broker still answers at once, and the ledger is up
        with AgentClient(bus.front, "probe", timeout=5.0, retries=0) as probe:
            started = time.monotonic()
            status = probe.ping()
            assert status["ledger_up"] and time.monotonic() - started < 1.0
            head = probe.query("verify")["head_seq"]
        assert head == 2 * AGENTS * PER_AGENT
        assert all(s.poll(0) for s in stalled)  # their backlog is still unread

        # a follower started now catches up from the log: every event exactly once
        with EventFollower(bus.front, bus.pub) as late:
            events = late.collect(until_seq=head, timeout=60)
            assert [e["seq"] for e in events] == list(range(1, head + 1))
            assert late.chain_ok
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            if proc.stdin is not None:
                proc.stdin.close()
    print(f"load of {AGENTS * PER_AGENT} commands: {baseline:.2f}s, with stalled "
          f"subscribers {with_stalled:.2f}s")
