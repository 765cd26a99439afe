"""Broker <-> ledger batches: the commands waiting at the broker go to the ledger as ONE
COMMANDS message, its REPLIES are split back to each client, and a commit group's
events (one ``committed`` message) are republished one EVENT each.

A real broker process talks to a scripted ledger: a ROUTER and a PUB bound by the test,
so every way the ledger can answer (in order, one refusal for the whole batch, too few
replies, garbage) is exercised.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq

from agents.tools.launch import LOOPBACK_ANY, Child
from broker.gateway import PROBE_KEY, Broker, BrokerConfig
from schema import internal, wire
from schema.errors import CoordinatorError, ErrorCode
from tests.support.buses import BusFactory
from tests.support.sockets import SocketFactory

TIMEOUT_MS = 5000
Answer = Callable[[internal.CommandBatch], list[bytes]]


@dataclass
class FakeLedger:
    """The ledger's two sockets, answering the broker's probes like the real one."""

    router: zmq.Socket[bytes]
    pub: zmq.Socket[bytes]
    batches: list[internal.CommandBatch] = field(default_factory=list)

    @property
    def endpoints(self) -> tuple[str, str]:
        return tuple(s.getsockopt(zmq.LAST_ENDPOINT).decode()  # type: ignore[return-value,union-attr]
                     for s in (self.router, self.pub))

    def serve(self, answer: Answer, until: Callable[[], bool], timeout: float = 10) -> None:
        """Answer probes, and each COMMANDS with ``answer(batch)``, until ``until()``."""
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "timed out serving the broker"
            if not self.router.poll(50):
                continue
            route_and_key, body = (frames := self.router.recv_multipart())[:2], frames[2:]
            msg = internal.decode(body)
            if route_and_key[1] == PROBE_KEY:
                reply = wire.Reply(id=msg.id, ok=True, result={"ledger_up": True,
                                                               "head_seq": 0,
                                                               "head_hash": "0" * 64})
                self.router.send_multipart([*route_and_key, *wire.encode(reply)])
                continue
            assert isinstance(msg, internal.CommandBatch), msg
            self.batches.append(msg)
            self.router.send_multipart([*route_and_key, *answer(msg)])


@pytest.fixture
def fake(zmq_socket: SocketFactory) -> FakeLedger:
    """A scripted ledger: its ROUTER and PUB bound on loopback (closed after the test)."""
    router, pub = zmq_socket(zmq.ROUTER), zmq_socket(zmq.PUB)
    for sock in (router, pub):
        sock.bind(LOOPBACK_ANY)
    return FakeLedger(router, pub)


def broker_for(buses: BusFactory, fake: FakeLedger) -> Child:
    """A real broker process whose ledger is ``fake`` (stopped after the test)."""
    ledger, ledger_pub = fake.endpoints
    return buses.broker(ledger, ledger_pub, "--heartbeat", "0.1", "--liveness", "5")


def command(n: int, actor: str = "Liam") -> wire.CommandMsg:
    return wire.CommandMsg(id=f"{actor}:{n}", actor=actor, session_id="S-1", command={
        "action": "CREATE_PLAN", "plan_id": f"P-{actor}-{n}", "title": "t"})


def reply_parts(request_id: str, **fields: Any) -> list[bytes]:
    return wire.encode(wire.Reply(id=request_id, **fields))[1:]


def in_order(batch: internal.CommandBatch) -> list[bytes]:
    """What the real ledger does: one REPLY per command, in order (seq = position)."""
    replies = [reply_parts(c["command_id"], ok=True, status="APPLIED", seq=i)
               for i, c in enumerate(batch.commands, 1)]
    return wire.encode(internal.ReplyBatch(id=batch.id, replies=replies))


def clients(zmq_socket: SocketFactory, front: str, n: int) -> list[zmq.Socket[bytes]]:
    out = []
    for _ in range(n):
        sock = zmq_socket(zmq.DEALER)
        sock.connect(front)
        out.append(sock)
    return out


def run(buses: BusFactory, zmq_socket: SocketFactory, fake: FakeLedger, answer: Answer,
        per_client: int = 3, n_clients: int = 3) -> dict[str, wire.Reply]:
    """Each client sends ``per_client`` commands; returns every reply by request id."""
    broker = broker_for(buses, fake)
    socks = clients(zmq_socket, broker.endpoints["front"], n_clients)
    replies: dict[str, wire.Reply] = {}
    wait_until_up(fake, socks[0])
    for k, sock in enumerate(socks):
        for n in range(per_client):
            sock.send_multipart(wire.encode(command(n, actor=f"A{k}")))
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)

    def got_all() -> bool:
        for sock, _ in poller.poll(0):
            reply = wire.decode(sock.recv_multipart())
            assert reply.id not in replies, f"two replies for {reply.id}"
            replies[reply.id] = reply
        return len(replies) == per_client * n_clients

    fake.serve(answer, got_all)
    return replies


def wait_until_up(fake: FakeLedger, sock: zmq.Socket[bytes]) -> None:
    """PING the broker (serving its probes meanwhile) until it counts the ledger up."""
    pings = itertools.count()
    up = False

    def answered_up() -> bool:
        nonlocal up
        if not up and sock.poll(0):
            up = wire.decode(sock.recv_multipart()).result["ledger_up"]
            if not up:
                sock.send_multipart(wire.encode(wire.Ping(id=f"ping-{next(pings)}")))
        return up

    sock.send_multipart(wire.encode(wire.Ping(id=f"ping-{next(pings)}")))
    fake.serve(in_order, answered_up)


def sent_ids(per_client: int = 3, n_clients: int = 3) -> set[str]:
    return {f"A{k}:{n}" for k in range(n_clients) for n in range(per_client)}


def test_each_client_gets_its_own_reply_from_the_ledger_s_batch(
        bus_factory: BusFactory, zmq_socket: SocketFactory, fake: FakeLedger) -> None:
    replies = run(bus_factory, zmq_socket, fake, in_order)
    assert set(replies) == sent_ids()
    assert all(r.ok and r.status == "APPLIED" for r in replies.values())
    # each command reached the ledger exactly once, whole, inside a COMMANDS message
    commands = [c for b in fake.batches for c in b.commands]
    assert sorted(c["command_id"] for c in commands) == sorted(sent_ids())
    for c in commands:
        assert (c["actor"], c["session_id"], c["action"]) == (
            c["command_id"].split(":")[0], "S-1", "CREATE_PLAN")
    # a reply is matched by position in its batch: the seq the fake gave it says so
    for batch in fake.batches:
        for i, c in enumerate(batch.commands, 1):
            assert replies[c["command_id"]].seq == i


def test_a_refusal_of_the_whole_batch_reaches_every_command_under_its_own_id(
        bus_factory: BusFactory, zmq_socket: SocketFactory, fake: FakeLedger) -> None:
    def refuse(batch: internal.CommandBatch) -> list[bytes]:
        return wire.encode(wire.error_reply(batch.id, CoordinatorError(
            ErrorCode.DB_DAMAGED, "damaged")))

    replies = run(bus_factory, zmq_socket, fake, refuse)
    assert set(replies) == sent_ids()
    assert {r.error["code"] for r in replies.values() if r.error} == {"DB_DAMAGED"}
    assert all(not r.ok for r in replies.values())


def test_an_answer_the_broker_cannot_match_fails_each_command_as_retryable(
        bus_factory: BusFactory, zmq_socket: SocketFactory, fake: FakeLedger) -> None:
    short_or_garbage = itertools.cycle(["short", "garbage"])

    def broken(batch: internal.CommandBatch) -> list[bytes]:
        if next(short_or_garbage) == "garbage":
            return [wire.PROTOCOL, b"\xc1", b"\xc1"]
        replies = [reply_parts(c["command_id"], ok=True, status="APPLIED")
                   for c in batch.commands][1:]  # one missing
        return wire.encode(internal.ReplyBatch(id=batch.id, replies=replies))

    replies = run(bus_factory, zmq_socket, fake, broken)
    assert set(replies) == sent_ids()
    for reply in replies.values():
        assert (reply.ok, reply.status) == (False, None)
        assert reply.error is not None and reply.error["code"] == "LEDGER_UNAVAILABLE"


def event_row(seq: int) -> dict[str, Any]:
    return {"seq": seq, "hash": f"{seq:064x}", "prev_hash": f"{seq - 1:064x}",
            "payload": "{}"}


def test_a_commit_group_s_events_are_republished_one_by_one_in_order(
        bus_factory: BusFactory, zmq_socket: SocketFactory, fake: FakeLedger) -> None:
    broker = broker_for(bus_factory, fake)
    sub = zmq_socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(broker.endpoints["pub"])
    batch = internal.EventBatch(
        id="3", head_seq=3, head_hash=event_row(3)["hash"],
        events=[wire.encode(wire.EventMsg(id=str(s), event=event_row(s)))[1:]
                for s in (1, 2, 3)])
    frames = [internal.TOPIC_COMMITTED, *wire.encode(batch)]
    # until the broker's SUB has joined, what the fake publishes is dropped:
    # publish again until the first event comes out the other side
    events: list[int] = []
    deadline = time.monotonic() + 10
    while not events:
        assert time.monotonic() < deadline, "no event republished"
        fake.pub.send_multipart(frames)
        while sub.poll(100):
            topic, *rest = sub.recv_multipart()
            if topic == wire.TOPIC_EVENT:
                events.append(wire.decode(rest).event["seq"])
                break
    while len(events) < 3:
        assert sub.poll(TIMEOUT_MS), "the rest of the batch did not follow"
        topic, *rest = sub.recv_multipart()
        assert topic != internal.TOPIC_COMMITTED  # the batch itself never goes out
        if topic == wire.TOPIC_EVENT:
            events.append(wire.decode(rest).event["seq"])
    assert events == [1, 2, 3]


@contextmanager
def inproc_broker(fake: FakeLedger) -> Iterator[Broker]:
    """A Broker object in this process (its loop driven by the test), connected to
    ``fake`` and counting it up."""
    ledger, ledger_pub = fake.endpoints
    broker = Broker(BrokerConfig(front=LOOPBACK_ANY, pub=LOOPBACK_ANY, ledger=ledger,
                                 ledger_pub=ledger_pub))
    try:
        # the backend queues only for a connected ledger: probe until one arrives
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "the broker never connected"
            broker._probe_ledger()
            if fake.router.poll(50):
                assert fake.router.recv_multipart()[1] == PROBE_KEY
                break
        while fake.router.poll(50):  # further probes sent before the connection
            fake.router.recv_multipart()
        # counts as up, as if the probe had been answered
        broker.ledger_seen, broker.backend_ok = time.monotonic(), True
        yield broker
    finally:
        broker.close()


def test_requests_waiting_together_become_one_commands_message(fake: FakeLedger) -> None:
    """In-process Broker, real sockets: five requests taken in one round go to the
    ledger as one COMMANDS of five, in arrival order; a sixth after the flush starts a
    new one; with those two at the ledger, three more wait in the broker until the
    first is answered, then go as one."""
    with inproc_broker(fake) as broker:
        for n in range(5):
            broker._on_front([b"client-a", *wire.encode(command(n))])
        broker._flush_commands()
        broker._on_front([b"client-b", *wire.encode(command(9))])
        broker._flush_commands()
        got = []
        for _ in range(2):
            assert fake.router.poll(TIMEOUT_MS)
            got.append(fake.router.recv_multipart())
        batches = [internal.decode(f[2:]) for f in got]
        assert [[c["command_id"] for c in b.commands] for b in batches] == [
            [f"Liam:{n}" for n in range(5)], ["Liam:9"]]
        assert (broker.inflight_requests, broker.batches_at_ledger) == (6, 2)
        # two batches at the ledger: the next commands wait in the broker ...
        for n in (10, 11, 12):
            broker._on_front([b"client-c", *wire.encode(command(n))])
        broker._flush_commands()
        assert [c["command_id"] for _, c in broker._outbox] == [
            "Liam:10", "Liam:11", "Liam:12"]
        # ... and go together, as one COMMANDS, once the ledger answers the first
        key, first = got[0][1], batches[0]
        broker._on_backend([key, *in_order(first)])
        assert fake.router.poll(TIMEOUT_MS)
        third = internal.decode(fake.router.recv_multipart()[2:])
        assert [c["command_id"] for c in third.commands] == [
            "Liam:10", "Liam:11", "Liam:12"]
        assert (broker.inflight_requests, broker.batches_at_ledger) == (4, 2)
        assert broker._outbox == []


def test_commands_held_for_a_ledger_that_goes_down_are_refused(
        zmq_socket: SocketFactory, fake: FakeLedger) -> None:
    with inproc_broker(fake) as broker:
        client = zmq_socket(zmq.DEALER)
        client.setsockopt(zmq.IDENTITY, b"client-c")
        client.connect(broker.endpoints["front"])
        # handshake: the broker routes to client-c once it has heard from it
        client.send_multipart(wire.encode(wire.Ping(id="hello")))
        assert broker.front.poll(TIMEOUT_MS)
        broker._drain_front()
        assert client.poll(TIMEOUT_MS) and wire.decode(client.recv_multipart()).ok
        for n in range(3):  # two batches at the ledger, then one held
            broker._on_front([b"client-c", *wire.encode(command(n))])
            broker._flush_commands()
        assert len(broker._outbox) == 1 and broker.batches_at_ledger == 2
        broker._expire(time.monotonic(), up=False)
        replies = []
        while len(replies) < 3:
            assert client.poll(TIMEOUT_MS), replies
            replies.append(wire.decode(client.recv_multipart()))
        assert sorted(r.id for r in replies) == ["Liam:0", "Liam:1", "Liam:2"]
        assert all(r.error and r.error["code"] == "LEDGER_UNAVAILABLE" for r in replies)
        held = next(r for r in replies if r.id == "Liam:2")
        assert "before this command was sent" in held.error["message"]
        assert (broker._outbox, broker.inflight_requests, broker.batches_at_ledger) == (
            [], 0, 0)


def test_heard_on_the_event_stream_but_not_connected_for_requests_is_down(
        tmp_path: Path) -> None:
    """After a ledger restart the broker's SUB may reconnect before its DEALER: a
    heartbeat alone must not make it report the ledger up while requests cannot go."""
    nobody = f"ipc://{tmp_path}/nobody"
    broker = Broker(BrokerConfig(front=LOOPBACK_ANY, pub=LOOPBACK_ANY, ledger=nobody,
                                 ledger_pub=nobody))
    try:
        broker.ledger_seen = time.monotonic()  # as if a heartbeat had just come
        assert broker.ledger_up
        broker._probe_ledger()  # the backend refuses: no ledger connected
        assert not broker.ledger_up
        broker._on_backend([b"\x00" * 8, *wire.encode(wire.Reply(
            id="broker-probe", ok=True, result={"head_seq": 0, "head_hash": "0" * 64}))])
        assert broker.ledger_up  # an answer on the request path: connected again
    finally:
        broker.close()
