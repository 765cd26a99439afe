"""The tamper test suite: thousands of random single edits of a ledger database (see
tests/tamper_campaign.py for the kinds and where each must be reported); every one is
detected, at the right seq. Run with ``-s`` to see the counts per kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import tamper_campaign
from tests.support.tamper_campaign import KINDS, run_tamper_campaign

CASES = 3000
SEED = 20261121


def test_every_tampering_is_detected_at_the_right_seq(tmp_path: Path) -> None:
    result = run_tamper_campaign(CASES, SEED)
    (tmp_path / "tamper_campaign.json").write_text(json.dumps(result, indent=2))
    print("\ntamper campaign:", json.dumps(
        {k: v for k, v in result.items() if k != "by_kind"}))
    for kind, counts in result["by_kind"].items():
        print(f"  {kind:20} tried {counts['tried']:5}  detected {counts['detected']:5}  "
              f"at the right seq {counts['at_right_seq']:5}")
    assert result["tried"] == CASES
    assert set(result["by_kind"]) == set(KINDS)
    failures = {k: v.get("failures") for k, v in result["by_kind"].items() if "failures" in v}
    assert not failures, json.dumps(failures, indent=2)[:4000]
    for kind, counts in result["by_kind"].items():
        assert counts["tried"] >= CASES // len(KINDS), kind
        assert counts["detected"] == counts["tried"], kind
        assert counts["at_right_seq"] == counts["tried"], kind
    assert result["passed_unnoticed"] == 0


def test_the_campaign_is_not_vacuous(monkeypatch: pytest.MonkeyPatch) -> None:
    """A verifier that sees nothing fails every case: the harness really tampers."""
    def blind(store: Any, checkpoints: Any, **kw: Any) -> dict[str, Any]:
        return {"chain_status": "OK", "mismatches": []}

    monkeypatch.setattr(tamper_campaign, "verify_with_checkpoints", blind)
    result = run_tamper_campaign(len(KINDS) * 2, SEED)
    assert result["detected"] == 0
    assert all(v["at_right_seq"] == 0 for v in result["by_kind"].values())


def test_the_base_database_has_every_event_type_and_several_checkpoints(
        tmp_path: Path) -> None:
    base = tamper_campaign.build_base(tmp_path, SEED)
    types = {r["event_type"] for r in base.rows}
    assert types >= {"PLAN_CREATED", "PLAN_UPDATED", "PLAN_ITEM_ADDED", "PLAN_ITEM_UPDATED",
                     "PLAN_ITEM_STATE_CHANGED", "PLAN_LINK_ADDED", "PLAN_CONFLICT_DETECTED"}
    assert 40 <= base.head <= 150
    assert len(base.checkpoint_seqs) >= 5 and base.checkpoint_seqs[-1] == base.head
    assert set(base.bytes_at) == set(range(base.head + 1))
