"""Talking to a ledger process directly, as the broker does: one DEALER on its ROUTER,
``[request key, PROTOCOL, header, body]`` out, the same envelope back. For tests that
must know exactly what reaches the ledger (no broker probes, no batching)."""

from __future__ import annotations

from typing import Any, Final

import zmq

from schema import wire

TIMEOUT: Final = 20.0


def command(dealer: zmq.Socket[bytes], command_id: str, body: dict[str, Any], *,
            session_id: str = "S-direct", actor: str = "Liam",
            timeout: float = TIMEOUT) -> wire.Reply:
    """Send one COMMAND (``body``: ``action`` and its fields) and return its REPLY;
    AssertionError if none comes within ``timeout`` seconds."""
    dealer.send_multipart([b"key", *wire.encode(wire.CommandMsg(
        id=command_id, actor=actor, session_id=session_id, command=body))])
    assert dealer.poll(int(timeout * 1000)), f"no reply to {command_id} in {timeout}s"
    reply = wire.decode(dealer.recv_multipart()[1:])
    assert isinstance(reply, wire.Reply), reply
    return reply
