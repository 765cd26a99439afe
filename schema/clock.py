"""The timestamp format of every ``ts`` field (events, records, heartbeats, checkpoints):
UTC, ISO 8601 with microseconds and a ``Z``, e.g. ``2026-11-29T19:50:55.123456Z``.
It is part of the hash preimage (docs/HASH_CHAIN.md), so it never changes."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
