"""broker/protocol.py: every message type round-trips through the codec, and every way a
message can be wrong gets its own error code (and never anything but a ProtocolError)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schema import internal, wire
from schema.errors import CoordinatorError, ErrorCode, ProtocolError

HASH = "ab" * 32

SAMPLES: list[Any] = [
    wire.Hello(id="h-1", actor="Mary"),
    wire.Ping(id="p-1"),
    wire.CommandMsg(id="Liam:0001", actor="Liam", session_id="S-1", command={
        "action": "STATE_CHANGE", "item_id": "I-1", "expected_version": 3,
        "change": {"state": "DONE"}}),
    wire.Query(id="q-1", actor="Codex", query="show-plan", params={"plan_id": "P-1"}),
    wire.Replay(id="r-1", from_seq=10, to_seq=20, limit=5),
    wire.Send(id="s-1", actor="Liam", session_id="S-1", to=None, kind="ask",
              data={"text": "héllo ✓", "n": [1, 2.5, None, True]}),
    wire.Reply(id="Liam:0001", ok=False, status="CONFLICT", event_type="PLAN_CONFLICT_DETECTED",
               seq=7, hash=HASH, current_version=2, error={
                   "code": "VERSION_CONFLICT", "message": "stale", "field": "expected_version"}),
    wire.Reply(id="q-1", ok=True, result={"plans": []}, replayed=True),
    wire.Deliver(id="s-1", actor="Liam", session_id="S-1", to="Mary", kind="ask",
                 data={"x": 1}),
    wire.EventMsg(id="7", event={"seq": 7, "payload": "{\"a\":1}", "item_id": None,
                                 "hash": HASH, "prev_hash": "0" * 64}),
    wire.Heartbeat(id="7", source="broker", head_seq=7, head_hash=HASH,
                   ts="2026-01-01T00:00:00Z", ledger_up=False),
    wire.CheckpointMsg(id="7", format="L3CHECKPOINT/1", seq=7, head_hash=HASH,
                       state_hash=HASH, ts="2026-01-01T00:00:00.000000Z",
                       key_id="0123456789abcdef", signature="cd" * 64),
    internal.CommandBatch(id="batch-2", commands=[
        {"action": "CREATE_PLAN", "command_id": "c-1", "actor": "Liam", "session_id": "S-1",
         "plan_id": "P-1", "title": "t"},
        {"action": "ADD_ITEM", "command_id": "c-2", "actor": "Liam", "session_id": "S-1",
         "plan_id": "P-1", "item_id": "I-1", "title": "i"}]),
    internal.ReplyBatch(id="batch-2", replies=[[b"\x81\xa1a\x01", b"\x80"], [b"h", b"b"]]),
    internal.EventBatch(id="8", events=[[b"h7", b"b7"], [b"h8", b"b8"]], head_seq=8,
                    head_hash=HASH),
]


def frames_of(header: Any, body: Any, protocol: bytes = wire.PROTOCOL) -> list[bytes]:
    return [protocol, msgpack.packb(header, use_bin_type=True),
            msgpack.packb(body, use_bin_type=True)]


def error_of(frames: list[bytes]) -> CoordinatorError:
    with pytest.raises(ProtocolError) as info:
        wire.decode(frames)
    return info.value


# --- round trips -----------------------------------------------------------------------


def test_every_message_type_has_a_sample() -> None:
    assert {m.type for m in SAMPLES} == set(internal.INTERNAL_TYPES)
    assert set(wire.REQUEST_TYPES) < set(wire.MESSAGE_TYPES)
    # the broker <-> ledger batch messages are kept apart from the public protocol
    assert set(internal.INTERNAL_TYPES) - set(wire.MESSAGE_TYPES) == {
        "COMMANDS", "REPLIES", "EVENTS"}


@pytest.mark.parametrize("msg", SAMPLES, ids=[f"{m.type}-{m.id}" for m in SAMPLES])
def test_round_trip(msg: Any) -> None:
    frames = wire.encode(msg)
    assert len(frames) == 3 and frames[0] == b"L3BUS/1"
    header = msgpack.unpackb(frames[1], raw=False)
    body = msgpack.unpackb(frames[2], raw=False)
    assert list(header) == ["type", "id", "actor", "session_id"]
    assert header["type"] == msg.type and header["id"] == msg.id
    assert not set(body) & set(wire.HEADER_KEYS)
    again = internal.decode(frames)
    assert type(again) is type(msg) and again == msg
    if msg.type in wire.MESSAGE_TYPES:
        assert wire.decode(frames) == msg
    else:  # a batch message is no public message: the front end refuses it as unknown
        assert error_of(frames).code == ErrorCode.UNKNOWN_MESSAGE_TYPE


def test_the_wire_is_plain_msgpack_any_client_can_write() -> None:
    """What docs/PROTOCOL.md tells a raw client to send decodes into the model."""
    msg = wire.decode(frames_of({"type": "REPLAY", "id": "r-9", "actor": None,
                                 "session_id": None}, {"from_seq": 3}))
    assert msg == wire.Replay(id="r-9", from_seq=3)
    assert msg.limit == wire.MAX_REPLAY_BATCH == 1000 and msg.to_seq is None
    # actor and session_id may be left out of the header where not required
    assert wire.decode(frames_of({"type": "PING", "id": "p"}, {})) == wire.Ping(id="p")


def test_defaults_fill_in() -> None:
    assert wire.decode(frames_of({"type": "QUERY", "id": "q"}, {"query": "list-plans"})
                       ).params == {}
    assert wire.decode(frames_of({"type": "SEND", "id": "s", "actor": "A"}, {"kind": "k"})
                       ).to is None


@settings(max_examples=150, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=30)
    | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=20))
def test_any_params_round_trip(params: Any) -> None:
    msg = wire.Query(id="q-1", query="summary", params={"p": params})
    assert wire.decode(wire.encode(msg)) == msg


# --- each error ------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [[], [b"x"], [wire.PROTOCOL, b"\x80"],
                                    [wire.PROTOCOL, b"\x80", b"\x80", b"\x80"]],
                         ids=["0 frames", "1 frame", "2 frames", "4 frames"])
def test_wrong_frame_count_is_malformed(frames: list[bytes]) -> None:
    err = error_of(frames)
    assert err.code == ErrorCode.MALFORMED_FRAME and f"got {len(frames)}" in err.message


def test_another_protocol_version_is_unsupported_version() -> None:
    err = error_of(frames_of({"type": "PING", "id": "p"}, {}, protocol=b"L3BUS/2"))
    assert err.code == ErrorCode.UNSUPPORTED_VERSION
    assert err.details == {"supported": "L3BUS/1"} and "'2'" in err.message


@pytest.mark.parametrize("protocol", [b"", b"HTTP/1.1", b"l3bus/1", b"L3BUS-1", b"\xff\xfe"])
def test_another_protocol_is_malformed(protocol: bytes) -> None:
    err = error_of(frames_of({"type": "PING", "id": "p"}, {}, protocol=protocol))
    assert err.code == ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("which", [1, 2])
@pytest.mark.parametrize("junk", [b"", b"\xc1", b"\x92\x01", b"\x81\x01\x02"],
                         ids=["empty", "never-used byte", "truncated array", "int map key"])
def test_frames_that_are_not_msgpack_maps_are_malformed(which: int, junk: bytes) -> None:
    frames = frames_of({"type": "PING", "id": "p"}, {})
    frames[which] = junk
    assert error_of(frames).code == ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("which", [1, 2])
def test_header_and_body_must_be_maps(which: int) -> None:
    frames = frames_of({"type": "PING", "id": "p"}, {})
    frames[which] = msgpack.packb(["type", "PING"])
    err = error_of(frames)
    assert err.code == ErrorCode.MALFORMED_FRAME and "must be a msgpack map" in err.message


def test_a_frame_over_the_limit_is_too_large() -> None:
    frames = frames_of({"type": "PING", "id": "p"}, {})
    frames[2] = msgpack.packb({"data": "x" * wire.MAX_FRAME_BYTES})
    assert error_of(frames).code == ErrorCode.MESSAGE_TOO_LARGE


@pytest.mark.parametrize("kind", ["FROB", None, 3, "", "ping"])
def test_unknown_message_types(kind: Any) -> None:
    """The codec is exact; the broker's normalise step upper-cases before it."""
    err = error_of(frames_of({"type": kind, "id": "p"}, {}))
    assert err.code == ErrorCode.UNKNOWN_MESSAGE_TYPE and err.field == "type"


def test_a_missing_type_is_an_unknown_message_type() -> None:
    assert error_of(frames_of({"id": "p"}, {})).code == ErrorCode.UNKNOWN_MESSAGE_TYPE


@pytest.mark.parametrize(("header", "body", "field"), [
    ({"type": "PING", "id": "p", "extra": 1}, {}, "header"),
    ({"type": "PING", "id": "p"}, {"id": "q"}, "body"),
    ({"type": "PING"}, {}, "id"),
    ({"type": "PING", "id": "has space"}, {}, "id"),
    ({"type": "PING", "id": "x" * 129}, {}, "id"),
    ({"type": "PING", "id": 5}, {}, "id"),
    ({"type": "COMMAND", "id": "c", "session_id": "S"}, {"command": {}}, "actor"),
    ({"type": "COMMAND", "id": "c", "actor": "A", "session_id": "S"}, {}, "command"),
    ({"type": "COMMAND", "id": "c", "actor": "A", "session_id": "S"}, {"command": []},
     "command"),
    ({"type": "REPLAY", "id": "r"}, {"from_seq": "1"}, "from_seq"),
    ({"type": "REPLAY", "id": "r"}, {"from_seq": 0}, "from_seq"),
    ({"type": "REPLAY", "id": "r"}, {"limit": 1001}, "limit"),
    ({"type": "REPLAY", "id": "r"}, {"colour": "red"}, "colour"),
    ({"type": "SEND", "id": "s", "actor": "A"}, {"kind": ""}, "kind"),
    ({"type": "HEARTBEAT", "id": "1"}, {"source": "moon", "head_seq": 1, "head_hash": "h",
                                       "ts": "t"}, "source"),
])
def test_invalid_messages_name_the_field(header: dict[str, Any], body: dict[str, Any],
                                         field: str) -> None:
    err = error_of(frames_of(header, body))
    assert err.code == ErrorCode.INVALID_MESSAGE
    assert err.field == field, err.to_dict()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=5))
def test_garbage_only_ever_raises_protocol_errors(frames: list[bytes]) -> None:
    try:
        wire.decode(frames)
    except ProtocolError as exc:
        assert exc.code in {ErrorCode.MALFORMED_FRAME, ErrorCode.UNSUPPORTED_VERSION,
                            ErrorCode.UNKNOWN_MESSAGE_TYPE, ErrorCode.INVALID_MESSAGE}


INT64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "id", "actor", "session_id", "x"]),
                       st.none() | INT64 | st.text(max_size=140) | st.binary(max_size=5)
                       | st.sampled_from(list(wire.MESSAGE_TYPES))),
       st.dictionaries(st.text(max_size=10), st.none() | INT64 | st.text(max_size=10)))
def test_any_header_is_decoded_or_refused_with_an_echoable_id(header: dict[str, Any],
                                                               body: dict[str, Any]) -> None:
    frames = frames_of(header, body)
    request_id = wire.header_id(frames)
    try:
        wire.decode(frames)
    except ProtocolError as exc:
        # whatever was wrong, the error can be answered (this once crashed the broker)
        reply = wire.error_reply(request_id, exc)
        assert wire.decode(wire.encode(reply)) == reply


# --- helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    ({"id": "Liam:1"}, "Liam:1"),
    ({"id": "  Liam:1 "}, "Liam:1"),  # trimmed like the broker's normalise step
    ({"id": "bad id!"}, None),
    ({"id": "x" * 129}, None),
    ({"id": "ok\n"}, "ok"),
    ({"id": 7}, None),
    ({}, None),
])
def test_header_id_echoes_only_valid_ids(header: dict[str, Any], expected: str | None) -> None:
    assert wire.header_id(frames_of(header, {})) == expected


def test_header_id_of_broken_frames_is_none() -> None:
    assert wire.header_id([wire.PROTOCOL]) is None
    assert wire.header_id([wire.PROTOCOL, b"\xc1", b""]) is None
    assert wire.header_id([wire.PROTOCOL, msgpack.packb([1])]) is None


def test_error_reply_carries_the_error_dict() -> None:
    err = CoordinatorError(ErrorCode.MISSING_FIELD, "title: required", field="title",
                           details={"problems": 1})
    reply = wire.error_reply("c-1", err)
    assert reply.ok is False and reply.status is None and reply.id == "c-1"
    assert reply.error == {"code": "MISSING_FIELD", "message": "title: required",
                           "field": "title", "details": {"problems": 1}}
    assert wire.error_reply(None, err).id == "unknown"


def test_query_names_are_the_documented_ones() -> None:
    assert set(wire.QUERY_NAMES) == {
        "list-plans", "show-plan", "list-items", "session-timeline", "task-timeline",
        "plan-timeline", "list-sessions", "summary", "verify", "get-item", "get-plan"}
