"""A client written from docs/PROTOCOL.md alone: only pyzmq, msgpack, hashlib and json.

Nothing from broker/, ledger/ or agents/ is imported except agents.launch (through the
tests' BusFactory), which starts a real ledger and broker as child processes. If this
file needs anything the document does not say, the document is incomplete.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from agents.tools.launch import Bus
from tests.support.buses import BusFactory

PROTOCOL = b"L3BUS/1"
GENESIS = "0" * 64
HASHED = ["seq", "event_id", "ts", "event_type", "session_id", "task_id", "actor",
          "plan_id", "item_id", "command_id", "payload", "prev_hash"]
DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
TIMEOUT = 5.0


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def event_hash(row: dict[str, Any]) -> str:
    text = json.dumps({k: row[k] for k in HASHED}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_id(actor: str) -> str:
    return f"{actor}:{uuid.uuid4().hex}"


class Raw:
    """One DEALER on the broker's front end, speaking raw frames."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], front: str,
                 kind: int = zmq.DEALER) -> None:
        self.sock = ctx.socket(kind)
        self.sock.linger = 0
        self.sock.connect(front)

    def recv(self, timeout: float = TIMEOUT) -> tuple[dict[str, Any], dict[str, Any]]:
        assert self.sock.poll(int(timeout * 1000)), f"no message within {timeout}s"
        frames = self.sock.recv_multipart()
        assert len(frames) == 3 and frames[0] == PROTOCOL, frames
        return unpack(frames[1]), unpack(frames[2])

    def exchange(self, frames: list[bytes]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Send raw frames; return the one reply (header, body)."""
        self.sock.send_multipart(frames)
        return self.recv()

    def request(self, kind: str, body: dict[str, Any], *, request_id: str | None = None,
                actor: str | None = "tester", session_id: str | None = None
                ) -> dict[str, Any]:
        request_id = request_id or new_id(actor or "anon")
        header, reply = self.exchange([PROTOCOL, pack({
            "type": kind, "id": request_id, "actor": actor, "session_id": session_id}),
            pack(body)])
        assert header["type"] == "REPLY" and header["id"] == request_id, header
        return reply

    def command(self, action: str, command_id: str | None = None, actor: str = "Liam",
                **fields: Any) -> dict[str, Any]:
        return self.request("COMMAND", {"command": {"action": action, **fields}},
                            request_id=command_id, actor=actor, session_id="S-RAW")

    def query(self, name: str, **params: Any) -> dict[str, Any]:
        reply = self.request("QUERY", {"query": name, "params": params})
        assert reply["ok"], reply["error"]
        return reply["result"]  # type: ignore[no-any-return]

    def replay_all(self, from_seq: int = 1) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            reply = self.request("REPLAY", {"from_seq": from_seq, "limit": 1000})
            assert reply["ok"], reply
            page = reply["result"]["events"]
            rows += page
            if not page or page[-1]["seq"] >= reply["result"]["head_seq"]:
                return rows
            from_seq = page[-1]["seq"] + 1

    def close(self) -> None:
        self.sock.close(linger=0)


class Sub:
    """A SUB on the broker's PUB endpoint, subscribed to events and heartbeats."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], pub: str) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.SUBSCRIBE, b"event")
        self.sock.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
        self.sock.connect(pub)

    def recv(self, timeout: float = TIMEOUT) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
        assert self.sock.poll(int(timeout * 1000)), f"nothing published within {timeout}s"
        topic, protocol, header, body = self.sock.recv_multipart()
        assert protocol == PROTOCOL
        return topic, unpack(header), unpack(body)

    def events_until(self, seq: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        rows = []
        deadline = time.monotonic() + timeout
        while not rows or rows[-1]["seq"] < seq:
            topic, header, body = self.recv(max(0.01, deadline - time.monotonic()))
            if topic == b"event":
                assert header["type"] == "EVENT" and header["id"] == str(body["event"]["seq"])
                rows.append(body["event"])
        return rows

    def close(self) -> None:
        self.sock.close(linger=0)


def verify_chain(rows: list[dict[str, Any]], prev: str = GENESIS) -> str:
    """docs/HASH_CHAIN.md: seq + 1, prev_hash = previous hash, hash of the row."""
    for before, row in zip([None, *rows], rows, strict=False):
        if before is not None:
            assert row["seq"] == before["seq"] + 1
        assert row["prev_hash"] == prev, f"broken link at seq {row['seq']}"
        assert event_hash(row) == row["hash"], f"bad hash at seq {row['seq']}"
        prev = row["hash"]
    return prev


# --- fixtures: one real bus for the module ---------------------------------------------


@pytest.fixture(scope="module")
def bus(module_bus_factory: BusFactory, module_zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> Bus:
    running = module_bus_factory.start("data/raw.db")
    client, sub = Raw(module_zmq_ctx, running.front), Sub(module_zmq_ctx, running.pub)
    try:
        deadline = time.monotonic() + 10
        while not client.request("PING", {})["result"]["ledger_up"]:
            assert time.monotonic() < deadline, "the ledger did not come up"
            sub.recv()  # pace on the next heartbeat (about one a second)
    finally:
        client.close()
        sub.close()
    return running


@pytest.fixture
def raw(bus: Bus, zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Raw]:
    client = Raw(zmq_ctx, bus.front)
    yield client
    client.close()


@pytest.fixture
def sub(bus: Bus, zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Sub]:
    """A subscriber whose subscription is in place (it has received a heartbeat)."""
    subscriber = Sub(zmq_ctx, bus.pub)
    while subscriber.recv()[0] != b"heartbeat":
        pass
    yield subscriber
    subscriber.close()


def head(raw: Raw) -> int:
    return int(raw.request("PING", {})["result"]["head_seq"])


# --- an agent and a monitor from the document ------------------------------------------


def test_plan_items_conflict_and_the_event_stream(raw: Raw, sub: Sub) -> None:
    start = head(raw)
    plan, i1, i2 = (f"P-RAW-{uuid.uuid4().hex[:6]}", "I-RAW-1", "I-RAW-2")
    created = raw.command("CREATE_PLAN", plan_id=plan, title="Raw plan")
    assert created["ok"] and created["status"] == "APPLIED", created
    assert created["event_type"] == "PLAN_CREATED" and created["seq"] == start + 1
    assert created["new_version"] == 1 and re.fullmatch("[0-9a-f]{64}", created["hash"])
    for item in (i1, i2):
        added = raw.command("ADD_ITEM", plan_id=plan, item_id=item, title=f"do {item}",
                            assigned_to="Codex")
        assert added["status"] == "APPLIED" and added["new_version"] == 1
    moved = raw.command("STATE_CHANGE", item_id=i1, expected_version=1,
                        change={"state": "IN_PROGRESS"})
    assert moved["status"] == "APPLIED" and moved["new_version"] == 2

    stale_id = new_id("Codex")
    stale = raw.command("STATE_CHANGE", stale_id, actor="Codex", item_id=i1,
                        expected_version=1, change={"state": "DONE"})
    assert stale["ok"] is False and stale["status"] == "CONFLICT"
    assert stale["error"]["code"] == "VERSION_CONFLICT"
    assert stale["error"]["field"] == "expected_version"
    assert stale["current_version"] == 2 and stale["event_type"] == "PLAN_CONFLICT_DETECTED"
    assert stale["seq"] == start + 5

    # a retry with the same id: the same outcome, replayed, nothing new written
    again = raw.command("STATE_CHANGE", stale_id, actor="Codex", item_id=i1,
                        expected_version=1, change={"state": "DONE"})
    assert again["replayed"] is True
    assert (again["status"], again["seq"], again["hash"]) == ("CONFLICT", stale["seq"],
                                                              stale["hash"])
    reused = raw.command("STATE_CHANGE", stale_id, actor="Codex", item_id=i2,
                         expected_version=1, change={"state": "IN_PROGRESS"})
    assert reused["status"] == "REJECTED" and reused["error"]["code"] == "COMMAND_ID_REUSED"
    assert head(raw) == start + 5

    items = {i["item_id"]: (i["state"], i["version"])
             for i in raw.query("list-items", plan_id=plan)["items"]}
    assert items == {i1: ("IN_PROGRESS", 2), i2: ("TODO", 1)}
    timeline = raw.query("task-timeline", task_id=i1)["events"]
    assert [e["event_type"] for e in timeline] == [
        "PLAN_ITEM_ADDED", "PLAN_ITEM_STATE_CHANGED", "PLAN_CONFLICT_DETECTED"]
    assert isinstance(timeline[-1]["payload"], dict)  # timelines parse the payload

    # the PUB stream: every event, in order, hashes checked here with hashlib + json
    live = sub.events_until(start + 5)
    assert [e["seq"] for e in live] == list(range(start + 1, start + 6))
    assert isinstance(live[0]["payload"], str)  # as stored, so it can be hashed
    link = GENESIS  # the hash live[0] links to: event `start`'s, when there is one
    if start:
        link = raw.request("REPLAY", {"from_seq": start, "to_seq": start}
                           )["result"]["events"][0]["hash"]
    verify_chain(live, link)
    assert live[0]["hash"] == created["hash"] and live[-1]["hash"] == stale["hash"]
    assert json.loads(live[-1]["payload"])["current_version"] == 2
    assert raw.replay_all(start + 1) == live  # REPLAY gives the same rows
    verify_chain(raw.replay_all())  # and the whole log verifies from genesis


def test_heartbeats_carry_the_head(raw: Raw, sub: Sub) -> None:
    expected = head(raw)
    deadline = time.monotonic() + TIMEOUT
    while True:
        topic, header, body = sub.recv(max(0.01, deadline - time.monotonic()))
        if topic == b"heartbeat":
            break
    assert header["type"] == "HEARTBEAT" and body["source"] == "broker"
    assert body["head_seq"] == expected and header["id"] == str(expected)
    assert body["ledger_up"] is True
    if expected:
        last = raw.request("REPLAY", {"from_seq": expected, "to_seq": expected})
        assert body["head_hash"] == last["result"]["events"][0]["hash"]
    else:
        assert body["head_hash"] == GENESIS


def test_replay_pages_through_more_than_one_batch(raw: Raw) -> None:
    plan = f"P-PAGE-{uuid.uuid4().hex[:6]}"
    assert raw.command("CREATE_PLAN", plan_id=plan, title="paging")["ok"]
    waiting: set[str] = set()
    sent = 0
    while sent < 1050 or waiting:
        # pipelined on one DEALER, at most 500 in flight (the broker answers BUSY beyond
        # its --max-inflight of 1024)
        while sent < 1050 and len(waiting) < 500:
            cid = new_id("Loader")
            raw.sock.send_multipart([
                PROTOCOL, pack({"type": "COMMAND", "id": cid, "actor": "Loader",
                                "session_id": "S-PAGE"}),
                pack({"command": {"action": "ADD_ITEM", "plan_id": plan,
                                  "item_id": f"{plan}-{sent}", "title": "x"}})])
            waiting.add(cid)
            sent += 1
        header, body = raw.recv()
        assert body["status"] == "APPLIED", body
        waiting.remove(header["id"])
    first = raw.request("REPLAY", {})
    assert len(first["result"]["events"]) == 1000  # default limit: one batch
    assert first["result"]["head_seq"] >= 1051
    rows = raw.replay_all()
    assert [r["seq"] for r in rows] == list(range(1, first["result"]["head_seq"] + 1))
    verify_chain(rows)
    window = raw.request("REPLAY", {"from_seq": 5, "to_seq": 9, "limit": 3})["result"]
    assert [r["seq"] for r in window["events"]] == [5, 6, 7]


def test_a_req_socket_works_too(bus: Bus, zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    req = Raw(zmq_ctx, bus.front, zmq.REQ)
    try:
        reply = req.request("PING", {})
        assert reply["ok"] and reply["result"]["broker_up"] is True
        _header, body = req.exchange([b"not the protocol"])
        assert body["error"]["code"] == "MALFORMED_FRAME"
    finally:
        req.close()


def test_hello_send_and_deliver(bus: Bus, zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    mary, liam = Raw(zmq_ctx, bus.front), Raw(zmq_ctx, bus.front)
    try:
        assert mary.request("HELLO", {}, actor="Mary")["result"] == {"registered": "Mary"}
        send_id = new_id("Liam")
        sent = liam.request("SEND", {"kind": "request", "data": {"title": "please"}},
                            request_id=send_id, actor="Liam", session_id="S-RAW")
        assert sent["ok"] and sent["result"] == {"delivered_to": "Mary"}  # no "to": Mary
        header, body = mary.recv()
        assert header == {"type": "DELIVER", "id": send_id, "actor": "Liam",
                          "session_id": "S-RAW"}
        assert body == {"to": "Mary", "kind": "request", "data": {"title": "please"}}
        nobody = liam.request("SEND", {"to": "Nobody", "kind": "x"}, actor="Liam")
        assert nobody["error"]["code"] == "UNKNOWN_RECIPIENT"
        assert nobody["error"]["field"] == "to"
    finally:
        mary.close()
        liam.close()


# --- bad input: its own error code, and nothing changes --------------------------------


def header(kind: Any, request_id: Any = "bad-1", actor: Any = "Liam",
           session_id: Any = "S-RAW") -> bytes:
    return pack({"type": kind, "id": request_id, "actor": actor, "session_id": session_id})


BAD: dict[str, tuple[list[bytes], str, str, str | None]] = {
    # name: (frames, code, echoed id, field)
    "not msgpack": ([PROTOCOL, b"\xc1\xc1\xc1", pack({})], "MALFORMED_FRAME", "unknown",
                    None),
    "body not msgpack": ([PROTOCOL, header("PING"), b"\xc1"], "MALFORMED_FRAME", "bad-1",
                         None),
    "one frame": ([b"hello"], "MALFORMED_FRAME", "unknown", None),
    "two frames": ([PROTOCOL, header("PING")], "MALFORMED_FRAME", "bad-1", None),
    "header not a map": ([PROTOCOL, pack(["PING"]), pack({})], "MALFORMED_FRAME", "unknown",
                         None),
    "other protocol": ([b"HTTP/1.1", header("PING"), pack({})], "MALFORMED_FRAME", "bad-1",
                       None),
    "wrong version": ([b"L3BUS/2", header("PING"), pack({})], "UNSUPPORTED_VERSION",
                      "bad-1", None),
    "unknown type": ([PROTOCOL, header("FROBNICATE"), pack({})], "UNKNOWN_MESSAGE_TYPE",
                     "bad-1", "type"),
    "not a request": ([PROTOCOL, header("EVENT"), pack({"event": {}})], "INVALID_MESSAGE",
                      "bad-1", "type"),
    "invalid id": ([PROTOCOL, header("PING", request_id="no spaces allowed"), pack({})],
                   "INVALID_MESSAGE", "unknown", "id"),
    "extra header key": ([PROTOCOL, pack({"type": "PING", "id": "bad-1", "x": 1}), pack({})],
                         "INVALID_MESSAGE", "bad-1", "header"),
    "command without actor": (
        [PROTOCOL, header("COMMAND", actor=None),
         pack({"command": {"action": "CREATE_PLAN", "plan_id": "P-BAD", "title": "t"}})],
        "INVALID_MESSAGE", "bad-1", "actor"),
    "command missing title": (
        [PROTOCOL, header("COMMAND"),
         pack({"command": {"action": "CREATE_PLAN", "plan_id": "P-BAD"}})],
        "MISSING_FIELD", "bad-1", "title"),
    "command wrong type": (
        [PROTOCOL, header("COMMAND"),
         pack({"command": {"action": "STATE_CHANGE", "item_id": "I-RAW-1",
                           "expected_version": "2", "change": {"state": "DONE"}}})],
        "INVALID_TYPE", "bad-1", "expected_version"),
    "command unknown field": (
        [PROTOCOL, header("COMMAND"),
         pack({"command": {"action": "CREATE_PLAN", "plan_id": "P-BAD", "title": "t",
                           "colour": "red"}})],
        "UNKNOWN_FIELD", "bad-1", "colour"),
    "unknown action": (
        [PROTOCOL, header("COMMAND"), pack({"command": {"action": "DELETE_PLAN",
                                                        "plan_id": "P-BAD"}})],
        "UNKNOWN_ACTION", "bad-1", "action"),
    "state not via UPDATE_ITEM": (
        [PROTOCOL, header("COMMAND"),
         pack({"command": {"action": "UPDATE_ITEM", "item_id": "I-RAW-1",
                           "expected_version": 2, "change": {"state": "DONE"}}})],
        "UNKNOWN_FIELD", "bad-1", "change.state"),
    "unknown query": ([PROTOCOL, header("QUERY"), pack({"query": "drop-tables"})],
                      "UNKNOWN_QUERY", "bad-1", "query"),
    "query param missing": ([PROTOCOL, header("QUERY"), pack({"query": "show-plan"})],
                            "MISSING_FIELD", "bad-1", "params.plan_id"),
    "replay limit": ([PROTOCOL, header("REPLAY"), pack({"limit": 5000})], "INVALID_MESSAGE",
                     "bad-1", "limit"),
    "frame too large": ([PROTOCOL, header("PING"), pack({"pad": "x" * (1 << 20)})],
                        "MESSAGE_TOO_LARGE", "unknown", None),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_its_error_code_and_leaves_the_database_unchanged(
        name: str, raw: Raw) -> None:
    frames, code, echoed, field = BAD[name]
    before = (head(raw), raw.query("summary"), raw.replay_all())
    reply_header, reply = raw.exchange(frames)
    assert reply_header["type"] == "REPLY" and reply_header["id"] == echoed
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert reply["error"].get("field") == field, reply["error"]
    assert reply["error"]["message"]
    is_command = b"COMMAND" in frames[1] if len(frames) > 1 else False
    if code in ("MISSING_FIELD", "INVALID_TYPE", "UNKNOWN_FIELD", "UNKNOWN_ACTION") \
            and is_command:
        assert reply["status"] == "REJECTED"  # final: the command itself is wrong
    else:
        assert reply["status"] is None
    if code == "UNSUPPORTED_VERSION":
        assert reply["error"]["details"] == {"supported": "L3BUS/1"}
    after = (head(raw), raw.query("summary"), raw.replay_all())
    assert after == before
    assert raw.query("verify")["chain_status"] == "OK"


def test_a_broken_request_does_not_break_the_broker(raw: Raw) -> None:
    """Every bad input in a row, then a normal command on the same socket."""
    start = head(raw)
    for frames, code, _, _ in BAD.values():
        assert raw.exchange(frames)[1]["error"]["code"] == code
    created = raw.command("CREATE_PLAN", plan_id=f"P-AFTER-{uuid.uuid4().hex[:6]}",
                          title="still fine")
    assert created["status"] == "APPLIED" and created["seq"] == start + 1


# --- the document's own example --------------------------------------------------------


def test_the_documented_example_runs_against_a_real_bus(bus: Bus, tmp_path: Path) -> None:
    text = DOC.read_text()
    block = text.split("<!-- example:begin -->", 1)[1].split("<!-- example:end -->", 1)[0]
    code = block.strip().removeprefix("```python").removesuffix("```")
    assert "import zmq" in code and "from broker" not in code and "from ledger" not in code
    script = tmp_path / "client.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script), bus.front, bus.pub],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == ["APPLIED", "APPLIED", "APPLIED version 2",
                         "CONFLICT VERSION_CONFLICT current 2"]
    assert lines[-1].startswith("chain OK up to seq ")
    assert any("PLAN_CONFLICT_DETECTED" in line for line in lines)
