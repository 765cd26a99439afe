"""canonical_json (orjson) must stay byte-identical to the documented json.dumps form."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.log.chain import canonical_json, preimage

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def documented(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@settings(max_examples=3000, deadline=None)
@given(VALUES)
def test_canonical_json_equals_the_documented_encoding(value: Any) -> None:
    assert canonical_json(value) == documented(value)


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({
    "seq": st.integers(1, 2**53), "event_id": st.text(), "ts": st.text(),
    "event_type": st.text(), "session_id": st.text(), "task_id": st.none() | st.text(),
    "actor": st.text(), "plan_id": st.none() | st.text(), "item_id": st.none() | st.text(),
    "command_id": st.none() | st.text(), "payload": st.text(), "prev_hash": st.text(),
    "hash": st.text()}))
def test_preimage_is_the_documented_bytes_without_hash(row: dict[str, Any]) -> None:
    expected = documented({k: v for k, v in row.items() if k != "hash"}).encode("utf-8")
    assert preimage(row) == expected
