"""The broker <-> ledger link: the commands, replies and events of one group commit.

Agents never see these messages; the broker's front end refuses them as unknown types.
The broker takes every request already waiting and sends the commands among them as
ONE message; the ledger applies them in one transaction and answers with ONE message
(and publishes the events as one): per command, no socket operation between the two.
docs/PROTOCOL.md, "Between the broker and the ledger".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

from pydantic import Field

from schema.wire import (
    MAX_FRAME_BYTES,
    PUBLIC_TYPES,
    BaseMessage,
    decode_parts,
    from_parts,
    registry,
)

#: Ledger -> broker only: the events of one commit group in one message (not a prefix of
#: "event", so no subscriber of the public stream's topics ever receives it by mistake)
TOPIC_COMMITTED: Final = b"committed"
#: Most commands in one COMMANDS message (the ledger's default group-commit bound).
MAX_COMMAND_BATCH: Final = 256
#: Largest COMMANDS frame: the broker starts a new batch before reaching half of it, so
#: one command of up to MAX_FRAME_BYTES always fits.
MAX_BATCH_BYTES: Final = 4 * MAX_FRAME_BYTES

#: An already encoded message: its [header, body] frames.
EncodedParts = Annotated[list[bytes], Field(min_length=2, max_length=2)]


class CommandBatch(BaseMessage):
    """Broker -> ledger: commands to apply in this order. Each entry is a whole command
    (command_id, actor and session_id included), validated by the ledger as a COMMAND's
    content is; each gets its own REPLY inside the REPLIES answer."""

    type: Literal["COMMANDS"] = "COMMANDS"
    commands: Annotated[list[dict[str, Any]], Field(min_length=1,
                                                     max_length=MAX_COMMAND_BATCH)]


class ReplyBatch(BaseMessage):
    """Ledger -> broker: the REPLY to each command of a COMMANDS message, in its order,
    already encoded; the broker sends each on as it is."""

    type: Literal["REPLIES"] = "REPLIES"
    replies: list[EncodedParts]


class EventBatch(BaseMessage):
    """Ledger -> broker (topic ``committed``): the EVENT messages of one commit group,
    in seq order, already encoded; the broker republishes each one (topic ``event``).
    ``head_seq``/``head_hash``: the last of them."""

    type: Literal["EVENTS"] = "EVENTS"
    events: Annotated[list[EncodedParts], Field(min_length=1)]
    head_seq: int
    head_hash: str


#: What the ledger's sockets speak: the public messages plus the three above.
INTERNAL_TYPES: Final = {**PUBLIC_TYPES, **registry(CommandBatch, ReplyBatch, EventBatch)}


def decode(frames: Sequence[bytes], limit: int = MAX_BATCH_BYTES) -> Any:
    """Like :func:`schema.wire.decode`, accepting the batch messages too."""
    return from_parts(*decode_parts(frames, limit), INTERNAL_TYPES)
