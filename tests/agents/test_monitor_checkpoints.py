"""The monitor checks the ledger's signed checkpoints against the events it delivered."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.client import AgentClient
from agents.tools.launch import Bus
from agents.tools.monitor import CHECKPOINT_MISMATCH, Alert, EventFollower
from ledger.log.checkpoints import load_or_create_key, load_public_key, public_key_path
from tests.support.buses import BusFactory


@pytest.fixture
def bus(sandbox: Path, bus_factory: BusFactory) -> Bus:
    load_or_create_key(sandbox / "keys" / "ledger.pem")
    args = ["--checkpoint-key", "keys/ledger.pem", "--checkpoint-dir", "data/checkpoints",
            "--checkpoint-every", "0.2"]
    running = bus_factory.start("data/cp.db", ledger_args=args, ready=True)
    with AgentClient(running.front, "Liam") as client:
        assert client.create_plan("P-CP", "checkpointed").status == "APPLIED"
        for n in range(5):
            assert client.add_item("P-CP", f"I-{n}", "item").status == "APPLIED"
    return running


def _until_checked(follower: EventFollower, timeout: float = 20.0) -> list[Alert]:
    """Read until one checkpoint was decided (OK or not); return the alerts seen."""
    alerts: list[Alert] = []
    deadline = time.monotonic() + timeout
    while follower.checkpoints.stats["checked"] == 0:
        assert time.monotonic() < deadline, "no checkpoint was checked in time"
        item = follower.next(0.5)
        if isinstance(item, Alert):
            alerts.append(item)
    return alerts


def test_checkpoints_on_the_stream_match_the_delivered_events(sandbox: Path, bus: Bus) -> None:
    key = load_public_key(public_key_path(sandbox / "keys" / "ledger.pem"))
    with EventFollower(bus.front, bus.pub, checkpoint_key=key) as follower:
        alerts = _until_checked(follower)
        assert follower.checkpoints.stats["ok"] >= 1
        assert follower.checkpoints.stats["mismatches"] == 0
        assert not alerts and follower.chain_ok


def test_a_checkpoint_signed_by_another_key_is_reported(bus: Bus) -> None:
    stranger = Ed25519PrivateKey.generate().public_key()
    with EventFollower(bus.front, bus.pub, checkpoint_key=stranger) as follower:
        alerts = _until_checked(follower)
        assert follower.checkpoints.stats["mismatches"] >= 1
        assert [a.alert for a in alerts] and {a.alert for a in alerts} == {CHECKPOINT_MISMATCH}
        assert not follower.chain_ok
