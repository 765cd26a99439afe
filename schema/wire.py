"""The public wire protocol of the bus, L3BUS/1: every message model agents and monitors
exchange with the broker, and encode/decode (the bytes come from :mod:`schema.codec`,
the only msgpack importer). The broker <-> ledger batch messages are in
:mod:`schema.internal`. docs/PROTOCOL.md describes the same thing for someone writing a
client with only pyzmq and msgpack; tests/broker/test_protocol_doc.py keeps the two in
step.

A message is three ZeroMQ frames::

    [PROTOCOL]  b"L3BUS/1"               protocol id and major version
    [HEADER]    msgpack map               type, id, actor, session_id
    [BODY]      msgpack map               the type's fields

On the PUB stream a topic frame comes first (b"event", b"heartbeat" or b"checkpoint").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schema.codec import pack, unpack_limited
from schema.errors import (
    CoordinatorError,
    ErrorCode,
    ProtocolError,
    validation_error_from_pydantic,
)
from schema.ids import ID_PATTERN

PROTOCOL_NAME: Final = b"L3BUS"
PROTOCOL_VERSION: Final = 1
PROTOCOL: Final = PROTOCOL_NAME + b"/" + str(PROTOCOL_VERSION).encode()
TOPIC_EVENT: Final = b"event"
TOPIC_HEARTBEAT: Final = b"heartbeat"
TOPIC_CHECKPOINT: Final = b"checkpoint"
#: Request frames larger than this are refused before they are decoded.
MAX_FRAME_BYTES: Final = 1 << 20
#: What a client accepts in one frame from the broker (its own, trusted, peer): query
#: results such as a long timeline are not bounded by the request limit.
MAX_REPLY_BYTES: Final = 256 << 20
#: Most events one REPLAY reply carries; ask again from the last seq + 1 for more.
MAX_REPLAY_BATCH: Final = 1000
HEADER_KEYS: Final = ("type", "id", "actor", "session_id")

WireId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


class BaseMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    #: request id; for COMMAND it is the command_id (retries reuse it)
    id: WireId
    actor: WireId | None = None
    session_id: WireId | None = None


# --- requests (agent -> broker -> ledger) ----------------------------------------------


class Hello(BaseMessage):
    """Register the sender's routing identity under ``actor`` for agent messages."""

    type: Literal["HELLO"] = "HELLO"


class Ping(BaseMessage):
    type: Literal["PING"] = "PING"


class CommandMsg(BaseMessage):
    """A plan command; ``command`` holds ``action`` and its fields (see ledger.commands),
    without command_id, actor and session_id, which come from the header."""

    type: Literal["COMMAND"] = "COMMAND"
    actor: WireId
    session_id: WireId
    command: dict[str, Any]


QueryName = Literal["list-plans", "show-plan", "list-items", "session-timeline",
                    "task-timeline", "plan-timeline", "list-sessions", "summary", "verify",
                    "get-item", "get-plan"]
QUERY_NAMES: Final = QueryName.__args__  # type: ignore[attr-defined]


class Query(BaseMessage):
    type: Literal["QUERY"] = "QUERY"
    query: str
    params: dict[str, Any] = Field(default_factory=dict)


class Replay(BaseMessage):
    """Events with from_seq <= seq (<= to_seq), at most ``limit``, as stored rows."""

    type: Literal["REPLAY"] = "REPLAY"
    from_seq: Annotated[int, Field(ge=1)] = 1
    to_seq: Annotated[int, Field(ge=1)] | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_REPLAY_BATCH)] = MAX_REPLAY_BATCH


class Send(BaseMessage):
    """An agent-to-agent message; no ``to`` means the coordinator agent, Mary."""

    type: Literal["SEND"] = "SEND"
    actor: WireId
    to: WireId | None = None
    kind: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    data: dict[str, Any] = Field(default_factory=dict)


# --- answers and pushes ----------------------------------------------------------------


class Reply(BaseMessage):
    """The answer to any request; ``id`` echoes the request's id (command_id)."""

    type: Literal["REPLY"] = "REPLY"
    ok: bool
    status: Literal["APPLIED", "CONFLICT", "REJECTED"] | None = None
    error: dict[str, Any] | None = None
    event_type: str | None = None
    seq: int | None = None
    hash: str | None = None
    new_version: int | None = None
    current_version: int | None = None
    replayed: bool = False
    result: dict[str, Any] | None = None


class Deliver(BaseMessage):
    """An agent message delivered to its recipient (``actor`` is the sender)."""

    type: Literal["DELIVER"] = "DELIVER"
    to: WireId
    kind: str
    data: dict[str, Any] = Field(default_factory=dict)


class EventMsg(BaseMessage):
    """One committed event, exactly as stored (``payload`` is the canonical JSON text),
    so a subscriber can check the hash chain itself. ``id`` is str(seq)."""

    type: Literal["EVENT"] = "EVENT"
    event: dict[str, Any]


class Heartbeat(BaseMessage):
    type: Literal["HEARTBEAT"] = "HEARTBEAT"
    source: Literal["ledger", "broker"]
    head_seq: int
    head_hash: str
    ts: str
    ledger_up: bool = True


class CheckpointMsg(BaseMessage):
    """A signed checkpoint of the ledger, the same fields as its file (docs/HASH_CHAIN.md,
    "Signed checkpoints"; check it with ``ledger.checkpoints.check_against``).
    ``id`` is str(seq)."""

    type: Literal["CHECKPOINT"] = "CHECKPOINT"
    format: str
    seq: Annotated[int, Field(ge=0)]
    head_hash: str
    state_hash: str
    ts: str
    key_id: str
    signature: str


Message = Annotated[
    Hello | Ping | CommandMsg | Query | Replay | Send | Reply | Deliver | EventMsg | Heartbeat
    | CheckpointMsg,
    Field(discriminator="type"),
]
REQUEST_TYPES: Final = ("HELLO", "PING", "COMMAND", "QUERY", "REPLAY", "SEND")


def registry(*models: type[BaseMessage]) -> dict[str, type[BaseMessage]]:
    """Message type name -> model, for :func:`from_parts`."""
    return {m.model_fields["type"].default: m for m in models}


#: The public protocol: what agents, monitors and the broker's front end speak.
PUBLIC_TYPES: Final = registry(Hello, Ping, CommandMsg, Query, Replay, Send, Reply, Deliver,
                                EventMsg, Heartbeat, CheckpointMsg)
MESSAGE_TYPES: Final = tuple(PUBLIC_TYPES)


def unpack(data: bytes, limit: int = MAX_FRAME_BYTES) -> Any:
    """One msgpack frame of at most ``limit`` bytes (ProtocolError otherwise)."""
    return unpack_limited(data, limit)


# --- encode and decode ---------------------------------------------------------------


def encode(msg: BaseMessage) -> list[bytes]:
    """[PROTOCOL, header, body] for a message model.

    Every field of every message is a plain value (str, int, bool, None, or a dict or
    list of them), so the model's field dict is its dump; reading it directly skips
    model_dump's per-field machinery on the hot path (tests/test_codec.py checks the
    round trip for every message type).
    """
    data = dict(msg.__dict__)
    header = {k: data.pop(k) for k in HEADER_KEYS}
    return [PROTOCOL, pack(header), pack(data)]


def check_protocol(frame: bytes) -> None:
    if frame == PROTOCOL:
        return
    name, _, version = frame.partition(b"/")
    if name == PROTOCOL_NAME:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                            f"protocol version {version.decode(errors='replace')!r} is not "
                            f"supported; this side speaks {PROTOCOL.decode()}",
                            details={"supported": PROTOCOL.decode()})
    raise ProtocolError(ErrorCode.MALFORMED_FRAME,
                        f"first frame must be the protocol id {PROTOCOL.decode()!r}")


def decode_header(frames: Sequence[bytes], limit: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    """Check the frame count, protocol frame and header; return the header map."""
    if len(frames) != 3:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME,
                            f"expected 3 frames (protocol, header, body), got {len(frames)}")
    check_protocol(frames[0])
    header = unpack(frames[1], limit)
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "header frame must be a msgpack map")
    return header


def decode_parts(frames: Sequence[bytes], limit: int = MAX_FRAME_BYTES
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check frames and unpack them into (header, body) maps, not yet validated."""
    header = decode_header(frames, limit)
    body = unpack(frames[2], limit)
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "body frame must be a msgpack map")
    return header, body


def from_parts(header: dict[str, Any], body: dict[str, Any],
               types: Mapping[str, type[BaseMessage]] = PUBLIC_TYPES) -> Any:
    """Validate an unpacked (header, body) into one of the message models of ``types``
    (the public ones by default; :mod:`schema.internal` passes its own)."""
    kind = header.get("type")
    model = types.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE_TYPE,
                            f"unknown message type {kind!r}; expected one of "
                            f"{', '.join(types)}", field="type")
    unknown = set(header) - set(HEADER_KEYS)
    if unknown:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                            f"unknown header field(s): {', '.join(sorted(map(str, unknown)))}",
                            field="header")
    clash = set(body) & set(HEADER_KEYS)
    if clash:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                            f"header field(s) in the body: {', '.join(sorted(clash))}",
                            field="body")
    try:
        return model.model_validate({**body, **header})
    except pydantic.ValidationError as exc:
        err = validation_error_from_pydantic(exc)
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, err.message, field=err.field,
                            details=err.details) from None


def decode(frames: Sequence[bytes], limit: int = MAX_FRAME_BYTES,
           types: Mapping[str, type[BaseMessage]] = PUBLIC_TYPES) -> Any:
    """Validate three frames into one of the message models (raises ProtocolError).
    ``limit``: the largest frame accepted; clients reading the broker's replies pass
    :data:`MAX_REPLY_BYTES` (a query's result can be far larger than any request)."""
    return from_parts(*decode_parts(frames, limit), types)


def header_id(frames: Sequence[bytes]) -> str | None:
    """Best effort: the request id of a message that failed to decode, to echo it.
    Only a valid id (after trimming, as the broker normalises it) is echoed: anything
    else could not be put in a Reply."""
    try:
        header = unpack(frames[1]) if len(frames) >= 2 else None
    except ProtocolError:
        return None
    value = header.get("id") if isinstance(header, dict) else None
    if not isinstance(value, str) or re.fullmatch(ID_PATTERN, value.strip()) is None:
        return None
    return value.strip()


def error_reply(request_id: str | None, error: CoordinatorError) -> Reply:
    return Reply(id=request_id or "unknown", ok=False, error=error.to_dict())
