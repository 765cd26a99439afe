"""Multipart sends without pyzmq's per-frame flag arithmetic.

``Socket.send_multipart`` ORs ``zmq.SNDMORE`` (an ``enum.IntFlag``) into the flags for
every frame but the last, and enum arithmetic costs more than the send itself: 4.8 us
against 1.4 us for a four-frame message here. The broker and the ledger send two or
three such messages per command, so their hot paths use :func:`send_frames`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import zmq

SNDMORE: Final = int(zmq.SNDMORE)
NOBLOCK: Final = int(zmq.NOBLOCK)


def send_frames(sock: zmq.Socket[bytes], frames: Sequence[bytes], flags: int = 0) -> None:
    """``sock.send_multipart(frames, flags)`` for a message of bytes frames."""
    send = sock.send
    more = SNDMORE | flags
    for frame in frames[:-1]:
        send(frame, more)
    send(frames[-1], flags)
