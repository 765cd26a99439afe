"""Hostile input on the broker's front end: random and mutated frames (hypothesis).

A raw DEALER sends thousands of generated messages - random bytes, wrong frame counts,
valid messages mutated (flipped bytes, truncated or dropped frames, fields of the wrong
type, huge strings, deep nesting, non-UTF-8 text, unknown types and fields) - to a real
broker and ledger. For every one: a reply comes back (each receive has a timeout), both
processes stay up, and a well-formed request sent right after it still gets the right
reply. At the end the log holds exactly the events the fuzzer was told were written
(a mutation can produce a valid command, which is then rightly applied): nothing
malformed reached the database.

Oversized frames are refused before they are decoded: over MAX_FRAME_BYTES (1 MiB) the
broker answers MESSAGE_TOO_LARGE without reading the header; over ZMQ_MAXMSGSIZE
(4 MiB, checked by libzmq per frame) the connection is dropped before the frame is even
received, and the sender's socket reconnects by itself.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
import zmq.utils.monitor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.client import AgentClient
from agents.tools.launch import Bus
from ledger.log.verify import verify_store
from ledger.storage.sqlite import SqliteStore
from schema import wire
from schema.errors import ErrorCode
from tests.support.buses import BusFactory
from tests.support.sockets import SocketFactory

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "4000"))
#: the same, sent straight to the ledger's own ROUTER (it is reachable on loopback too)
LEDGER_EXAMPLES = EXAMPLES // 5
RECV_TIMEOUT_MS = 5000
PLAN, ITEM = "P-FUZZ", "I-FUZZ"
ERROR_CODES = {str(c) for c in ErrorCode}


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


class Fuzzer:
    """A raw DEALER on the broker, and what the fuzzer has been told was written."""

    def __init__(self, bus: Bus, db: Path, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.bus, self.db = bus, db
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(bus.front)
        self.ids = itertools.count(1)
        self.written: set[int] = set()  # seqs of events we were told were written
        self.item_version = 1
        self.cases = 0
        self.codes: dict[str, int] = {}
        #: the first message after which the broker or the ledger was found dead
        self.killer: list[bytes] | None = None

        #: a DEALER straight to the ledger's ROUTER, posing as a broker
        self.direct = ctx.socket(zmq.DEALER)
        self.direct.linger = 0
        self.direct.connect(bus.ledger.endpoints["commands"])
        self.keys = itertools.count(1)

    def exchange_direct(self, frames: list[bytes]) -> wire.Reply:
        """Send ``frames`` to the ledger as the broker would (a request key first)."""
        key = next(self.keys).to_bytes(8, "big")
        self.direct.send_multipart([key, *frames])
        assert self.direct.poll(RECV_TIMEOUT_MS), f"no reply from the ledger to {frames!r:.300}"
        got = self.direct.recv_multipart()
        assert got[0] == key, got
        reply = wire.decode(got[1:])
        assert isinstance(reply, wire.Reply), reply
        return reply

    def check_log(self) -> int:
        """The log holds exactly the events we were told were written; the chain is OK."""
        with SqliteStore(self.db, readonly=True) as store:
            seqs = {e.seq for e in store.iter_events()}
            assert verify_store(store)["chain_status"] == "OK"
        assert seqs == self.written, sorted(seqs ^ self.written)
        return len(seqs)

    def alive(self, frames: list[bytes]) -> bool:
        up = self.bus.broker.alive() and self.bus.ledger.alive()
        if not up and self.killer is None:
            self.killer = frames
        return up

    def exchange(self, frames: list[bytes]) -> wire.Reply:
        """Send ``frames``; the reply (agent DELIVERs that arrive meanwhile are skipped)."""
        self.sock.send_multipart(frames)
        while True:
            if not self.sock.poll(RECV_TIMEOUT_MS):
                assert self.alive(frames), f"a process died on {frames!r:.300}"
                raise AssertionError(f"no reply to {frames!r:.300}")
            got = self.sock.recv_multipart()
            while got and got[0] == b"":  # a REQ-style delimiter the request began with
                got = got[1:]
            msg = wire.decode(got)
            if isinstance(msg, wire.Reply):
                return msg
            assert isinstance(msg, wire.Deliver), msg

    def note(self, reply: wire.Reply) -> None:
        code = (reply.error or {}).get("code", reply.status or "OK")
        self.codes[code] = self.codes.get(code, 0) + 1
        if reply.status in ("APPLIED", "CONFLICT") and not reply.replayed:
            assert reply.seq is not None
            self.written.add(reply.seq)
        if not reply.ok and reply.status != "CONFLICT":
            assert reply.error is not None and reply.error["code"] in ERROR_CODES, reply

    def well_formed(self, with_command: bool) -> None:
        """Requests a good client would send: each gets its own, right, reply."""
        n = next(self.ids)
        ping = self.exchange(wire.encode(wire.Ping(id=f"chk-ping-{n}", actor="checker")))
        assert (ping.id, ping.ok, ping.result and ping.result["ledger_up"]) == (
            f"chk-ping-{n}", True, True), ping
        query = self.exchange(wire.encode(wire.Query(
            id=f"chk-q-{n}", actor="checker", query="get-item", params={"item_id": ITEM})))
        assert query.id == f"chk-q-{n}" and query.ok, query
        assert query.result is not None and query.result["item"]["item_id"] == ITEM
        self.item_version = int(query.result["item"]["version"])
        if with_command:
            cmd = self.exchange(wire.encode(wire.CommandMsg(
                id=f"chk-cmd-{n}", actor="checker", session_id="S-CHECK", command={
                    "action": "UPDATE_ITEM", "item_id": ITEM,
                    "expected_version": self.item_version,
                    "change": {"title": f"checked {n}"}})))
            assert (cmd.id, cmd.status) == (f"chk-cmd-{n}", "APPLIED"), cmd
            self.note(cmd)


@pytest.fixture(scope="module")
def fuzzer(module_bus_factory: BusFactory,
           module_zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> Fuzzer:
    bus = module_bus_factory.start("data/fuzz.db")
    fz = Fuzzer(bus, module_bus_factory.root / "data" / "fuzz.db", module_zmq_ctx)
    with AgentClient(bus.front, "setup", session_id="S-SETUP") as setup:
        setup.wait_ready()
        for reply in (setup.create_plan(PLAN, "fuzzed"),
                      setup.add_item(PLAN, ITEM, "target")):
            assert reply.status == "APPLIED"
            fz.note(reply)
    return fz


# --- what the fuzzer sends ------------------------------------------------------------

IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,12}", fullmatch=True)
HUGE = st.sampled_from(["x" * 70_000, "é" * 200_000, "\U0001f600" * 100_000])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(), st.text(max_size=20), st.binary(max_size=20), HUGE)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def _command(action: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"action": action, **fields}


COMMANDS = st.one_of(
    st.builds(lambda p: _command("CREATE_PLAN", {"plan_id": p, "title": "t"}), IDS),
    st.builds(lambda i: _command("ADD_ITEM", {"plan_id": PLAN, "item_id": i, "title": "t"}),
              IDS),
    st.builds(lambda v, t: _command("UPDATE_ITEM", {"item_id": ITEM, "expected_version": v,
                                                    "change": {"title": t}}),
              st.integers(0, 5), st.text(min_size=1, max_size=20)),
    st.builds(lambda v, s: _command("STATE_CHANGE", {"item_id": ITEM, "expected_version": v,
                                                     "change": {"state": s}}),
              st.integers(0, 5), st.sampled_from(["TODO", "IN_PROGRESS", "DONE", "BLOCKED"])),
    st.builds(lambda v: _command("UPDATE_PLAN", {"plan_id": PLAN, "expected_version": v,
                                                 "change": {"title": "renamed"}}),
              st.integers(0, 3)),
    st.builds(lambda lk, i: _command("ADD_LINK", {"link_id": lk, "from_item_id": ITEM,
                                                  "to_item_id": i}), IDS, IDS),
)


def _msg(kind: str, i: str, body: dict[str, Any], actor: str | None = "fuzz",
         session: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    header: dict[str, Any] = {"type": kind, "id": i}
    if actor is not None:
        header["actor"] = actor
    if session is not None:
        header["session_id"] = session
    return header, body


MESSAGES = st.one_of(
    st.builds(lambda i: _msg("PING", i, {}), IDS),
    st.builds(lambda i, a: _msg("HELLO", i, {}, actor=a), IDS, IDS),
    st.builds(lambda i, q, v: _msg("QUERY", i, {"query": q, "params": {"plan_id": v,
                                                                     "item_id": v}}),
              IDS, st.sampled_from([*wire.QUERY_NAMES, "drop-tables"]), IDS),
    st.builds(lambda i, f, t, n: _msg("REPLAY", i, {"from_seq": f, "to_seq": t, "limit": n}),
              IDS, st.integers(1, 30), st.none() | st.integers(1, 30), st.integers(1, 1000)),
    st.builds(lambda i, to, k, d: _msg("SEND", i, {"to": to, "kind": k, "data": d},
                                       session="S-FUZZ"),
              IDS, st.none() | st.sampled_from(["Mary", "fuzz", "nobody"]),
              st.text(min_size=1, max_size=10), st.dictionaries(st.text(max_size=5), VALUES,
                                                                max_size=3)),
    st.builds(lambda i, c: _msg("COMMAND", i, {"command": c}, session="S-FUZZ"), IDS, COMMANDS),
)
#: text where an id or a name belongs: empty, spaces, control and non-ASCII characters,
#: one past the length limit, look-alikes of the protocol's own words
BAD_TEXT = st.one_of(
    st.sampled_from(["", " ", "bad id", " P-1 ", "\x00", "é", "P\u200b1", "a" * 128,
                     "a" * 129, "-leading", "unknown", "Mary", "COMMAND", "\n", "../x",
                     "%s%n", "'; DROP TABLE events; --"]),
    st.text(max_size=140))
FIELDS = st.sampled_from(["type", "id", "actor", "session_id", "command", "query", "params",
                          "from_seq", "to_seq", "limit", "to", "kind", "data", "bogus"])


@st.composite
def mutated(draw: st.DrawFn) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """A valid message with fields replaced, deleted or added (wrong types, huge, ...)."""
    header, body = draw(MESSAGES)
    header, body = dict(header), dict(body)
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from([header, body]))
        op = draw(st.sampled_from(["set", "delete", "set-in-command", "type", "text",
                                   "text-in-command"]))
        if op == "set":
            target[draw(FIELDS)] = draw(VALUES)
        elif op == "text":
            header[draw(st.sampled_from(["id", "actor", "session_id"]))] = draw(BAD_TEXT)
        elif op == "text-in-command" and isinstance(body.get("command"), dict):
            body["command"] = {**body["command"], draw(st.sampled_from([
                "action", "plan_id", "item_id", "link_id", "title", "to_item_id",
                "assigned_to", "state", "kind"])): draw(BAD_TEXT)}
        elif op == "delete" and target:
            target.pop(draw(st.sampled_from(sorted(target, key=str))))
        elif op == "set-in-command" and isinstance(body.get("command"), dict):
            command = dict(body["command"])
            command[draw(st.sampled_from(["action", "plan_id", "item_id", "title",
                                          "expected_version", "change", "state", "x"]))] = \
                draw(VALUES)
            body["command"] = command
        elif op == "type":
            header["type"] = draw(st.sampled_from(["REPLY", "EVENT", "HEARTBEAT", "DELIVER",
                                                   "CHECKPOINT", "ping", " command ", "NOPE",
                                                   ""]))
    return header, body


def _deep(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]] in raw msgpack


def _fixstr(raw: bytes) -> bytes:
    return bytes([0xA0 | len(raw)]) + raw  # a msgpack str of these (maybe not UTF-8) bytes


CRAFTED = st.sampled_from([
    # deep nesting, in the header, the body and inside a field
    lambda: [wire.PROTOCOL, _deep(100_000), pack({})],
    lambda: [wire.PROTOCOL, pack({"type": "PING", "id": "d"}), _deep(5000)],
    lambda: [wire.PROTOCOL, pack({"type": "QUERY", "id": "d"}),
             b"\x82" + pack("query") + pack("summary") + pack("params") + b"\x81"
             + pack("p") + _deep(900)],
    lambda: [wire.PROTOCOL, pack({"type": "SEND", "id": "d", "actor": "fuzz"}),
             b"\x82" + pack("kind") + pack("k") + pack("data") + b"\x81" + pack("p")
             + _deep(1000)],
    # non-UTF-8 text where strings belong
    lambda: [wire.PROTOCOL, b"\x82" + pack("type") + pack("PING") + pack("id")
             + _fixstr(b"\xc3\x28"), pack({})],
    lambda: [wire.PROTOCOL, b"\x81" + pack("type") + _fixstr(b"\xff\xfe"), pack({})],
    lambda: [wire.PROTOCOL, pack({"type": "COMMAND", "id": "u", "actor": "fuzz"}),
             b"\x81" + pack("command") + b"\x82" + pack("action") + pack("CREATE_PLAN")
             + pack("title") + _fixstr(b"\xed\xa0\x80")],
    # lengths that lie, maps with non-string keys, extension types, trailing bytes
    lambda: [wire.PROTOCOL, b"\xdb\xff\xff\xff\xff" + b"abc", pack({})],
    lambda: [wire.PROTOCOL, b"\xdf\xff\xff\xff\xff", pack({})],
    lambda: [wire.PROTOCOL, pack({1: "PING", 2: "x"}), pack({})],
    lambda: [wire.PROTOCOL, b"\x81\xc0\xc0", pack({})],
    lambda: [wire.PROTOCOL, pack({"type": "PING", "id": "e"}), b"\xd4\x01\x00"],
    lambda: [wire.PROTOCOL, pack({"type": "PING", "id": "e"}), pack({}) + b"\x00trailing"],
    lambda: [wire.PROTOCOL, pack(["PING", "x"]), pack({})],
    # frame counts and the protocol frame
    lambda: [b""],
    lambda: [b"", b""],
    lambda: [b"", wire.PROTOCOL, pack({"type": "PING", "id": "req"}), pack({})],
    lambda: [wire.PROTOCOL],
    lambda: [wire.PROTOCOL, pack({"type": "PING", "id": "x"})],
    lambda: [wire.PROTOCOL, pack({"type": "PING", "id": "x"}), pack({}), pack({})],
    lambda: [b"x"] * 1000,
    lambda: [b"L3BUS/2", pack({"type": "PING", "id": "v2"}), pack({})],
    lambda: [b"L3BUS/999999999999999999999", pack({"type": "PING", "id": "v"}), pack({})],
    lambda: [b"GET / HTTP/1.1\r\n\r\n"],
    # huge but under the frame limit: a field of ~900 KB, and many of 100 KB
    lambda: [wire.PROTOCOL, pack({"type": "COMMAND", "id": "h", "actor": "fuzz",
                                  "session_id": "S"}),
             pack({"command": {"action": "CREATE_PLAN", "plan_id": "P-H",
                               "title": "t" * 900_000}})],
    lambda: [wire.PROTOCOL, pack({"type": "QUERY", "id": "h"}),
             pack({"query": "get-item", "params": {f"k{i}": "v" * 100_000 for i in range(9)}})],
    lambda: [wire.PROTOCOL, pack({"type": "PING", "id": "i" * 1_000_000}), pack({})],
])


@st.composite
def byte_mutated(draw: st.DrawFn) -> list[bytes]:
    """The frames of a valid message with bytes flipped, frames cut, dropped or added."""
    header, body = draw(MESSAGES)
    frames = [wire.PROTOCOL, pack(header), pack(body)]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(frames) - 1)) if frames else 0
        op = draw(st.sampled_from(["flip", "flip", "truncate", "drop", "dup", "insert",
                                   "protocol", "swap"]))
        if op == "flip" and frames and frames[i]:
            data = bytearray(frames[i])
            for _ in range(draw(st.integers(1, 3))):
                data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
            frames[i] = bytes(data)
        elif op == "truncate" and frames:
            frames[i] = frames[i][: draw(st.integers(0, max(0, len(frames[i]) - 1)))]
        elif op == "drop" and len(frames) > 1:
            del frames[i]
        elif op == "dup" and frames:
            frames.insert(i, frames[i])
        elif op == "insert":
            frames.insert(i, draw(st.binary(max_size=40)))
        elif op == "protocol" and frames:
            frames[0] = draw(st.sampled_from([b"L3BUS/0", b"L3BUS/2", b"L3BUS", b"l3bus/1",
                                              b"", b"\xff\xfe\xfd", b"L3BUS/1\x00"]))
        elif op == "swap" and len(frames) > 1:
            frames[i], frames[-1] = frames[-1], frames[i]
    return frames or [b""]


_STRUCT = mutated().map(lambda hb: [wire.PROTOCOL, pack(hb[0]), pack(hb[1])])
_BYTES = byte_mutated()
HOSTILE = st.one_of(
    st.lists(st.binary(max_size=80), min_size=1, max_size=6),      # random bytes
    _STRUCT, _STRUCT, _STRUCT,                                      # wrong fields and types
    _BYTES, _BYTES,                                                 # damaged encodings
    CRAFTED.map(lambda make: make()),                               # hand-made nasties
    MESSAGES.map(lambda hb: [wire.PROTOCOL, pack(hb[0]), pack(hb[1])]),  # and valid ones
)


def test_hostile_frames_get_a_reply_and_never_reach_the_database(fuzzer: Fuzzer) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(frames=HOSTILE)
    def one(frames: list[bytes]) -> None:
        fuzzer.cases += 1
        fuzzer.note(fuzzer.exchange(frames))
        assert fuzzer.alive(frames)
        fuzzer.well_formed(with_command=fuzzer.cases % 100 == 0)

    try:
        one()
    except BaseException:
        # after a crash every later example fails too, and hypothesis reports the
        # simplest of them: name the message that actually killed the process
        assert fuzzer.killer is None, f"a process died on {fuzzer.killer!r:.500}"
        raise
    assert fuzzer.cases >= EXAMPLES
    events = fuzzer.check_log()
    print(f"\nfuzz: {fuzzer.cases} hostile messages to the broker, answers by code: "
          f"{dict(sorted(fuzzer.codes.items()))}, events written {events}")


def test_hostile_frames_straight_to_the_ledger_get_a_reply(fuzzer: Fuzzer) -> None:
    """The broker validates everything, but the ledger's ROUTER is reachable on loopback
    by any local process: it must survive the same input on its own."""
    cases = 0

    @settings(max_examples=LEDGER_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(frames=HOSTILE)
    def one(frames: list[bytes]) -> None:
        nonlocal cases
        cases += 1
        fuzzer.note(fuzzer.exchange_direct(frames))
        assert fuzzer.bus.ledger.alive()
        ping = fuzzer.exchange_direct(wire.encode(wire.Ping(id=f"d-{cases}", actor="x")))
        assert (ping.id, ping.ok) == (f"d-{cases}", True)

    one()
    assert cases >= LEDGER_EXAMPLES
    fuzzer.well_formed(with_command=True)  # and the broker still works with it
    events = fuzzer.check_log()
    print(f"\nfuzz: {cases} hostile messages straight to the ledger; events {events}")


# --- oversized ------------------------------------------------------------------------


def test_a_frame_over_the_limit_is_refused_before_it_is_decoded(fuzzer: Fuzzer) -> None:
    head = len(fuzzer.written)
    command = wire.CommandMsg(id="too-big-1", actor="fuzz", session_id="S-FUZZ", command={
        "action": "CREATE_PLAN", "plan_id": "P-BIG", "title": "t" * (wire.MAX_FRAME_BYTES + 1)})
    frames = wire.encode(command)
    assert wire.MAX_FRAME_BYTES < len(frames[2]) < 4 * wire.MAX_FRAME_BYTES
    reply = fuzzer.exchange(frames)
    assert reply.error is not None and reply.error["code"] == "MESSAGE_TOO_LARGE", reply
    assert reply.id == "unknown"  # not even the header was decoded
    # one byte under the limit is decoded (and refused for its content, not its size)
    frames[2] = frames[2][: wire.MAX_FRAME_BYTES]
    assert fuzzer.exchange(frames).error["code"] == "MALFORMED_FRAME"  # type: ignore[index]
    fuzzer.well_formed(with_command=False)
    assert len(fuzzer.written) == head
    with SqliteStore(fuzzer.db, readonly=True) as store:
        assert store.get_plan("P-BIG") is None


def test_a_frame_over_zmq_maxmsgsize_drops_the_connection_and_the_sender_reconnects(
        fuzzer: Fuzzer, zmq_socket: SocketFactory) -> None:
    sock = zmq_socket(zmq.DEALER)
    # a monitor socket on the same context: closed with it at teardown (linger 0)
    events = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    sock.connect(fuzzer.bus.front)

    def next_event(timeout_ms: int = 10_000) -> int:
        assert events.poll(timeout_ms), "no socket event"
        return int(zmq.utils.monitor.recv_monitor_message(events)["event"])

    assert next_event() == zmq.EVENT_HANDSHAKE_SUCCEEDED
    sock.send_multipart([wire.PROTOCOL, pack({"type": "PING", "id": "huge"}),
                         b"\x00" * (5 * wire.MAX_FRAME_BYTES)])
    assert next_event() == zmq.EVENT_DISCONNECTED  # the broker hung up on us
    assert next_event() == zmq.EVENT_HANDSHAKE_SUCCEEDED  # and we are back
    assert not sock.poll(0)  # no reply came for the oversized message
    sock.send_multipart(wire.encode(wire.Ping(id="after-huge", actor="fuzz")))
    assert sock.poll(RECV_TIMEOUT_MS)
    reply = wire.decode(sock.recv_multipart())
    assert (reply.id, reply.ok) == ("after-huge", True)
    assert fuzzer.bus.broker.alive() and fuzzer.bus.ledger.alive()
    fuzzer.well_formed(with_command=True)
