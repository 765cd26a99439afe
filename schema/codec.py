"""The codec: msgpack bytes <-> Python values. The only module of the project that
imports msgpack (docs/PROTOCOL.md section 1: pack with ``use_bin_type=True``, unpack
with ``raw=False``, string map keys only)."""

from __future__ import annotations

from typing import Any

import msgpack

from schema.errors import ErrorCode, ProtocolError


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack_limited(data: bytes, limit: int) -> Any:
    """Unpack one frame; MESSAGE_TOO_LARGE over ``limit`` bytes, MALFORMED_FRAME if it is
    not msgpack."""
    if len(data) > limit:
        raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE,
                            f"frame of {len(data)} bytes exceeds {limit}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(ErrorCode.MALFORMED_FRAME,
                            f"frame is not valid msgpack: {exc}") from None
