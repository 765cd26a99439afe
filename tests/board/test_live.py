"""bin/board as a process against a live bus: the event stream, the JSON endpoints, the
item timeline from the ledger, read-only, and the bind and token rules of its CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from agents.client import AgentClient
from agents.tools.board.cli import bind_policy
from agents.tools.launch import Bus
from agents.tools.run_scenario import play
from broker import keygen
from ledger.log.checkpoints import load_or_create_key
from schema.errors import CoordinatorError, ErrorCode
from schema.scenario import load_scenario
from tests.board.conftest import WAIT, Stream, start_board
from tests.support.buses import BusFactory
from tests.support.docs import read, section, tables
from tests.support.helpers import SCENARIO_DIR

FLOW = SCENARIO_DIR / "L3_PLAN_FLOW_001.json"


def test_the_stream_delivers_every_event_once_in_order(bus_factory: BusFactory,
                                                       bus: Bus) -> None:
    board = start_board(bus_factory, bus, "--verify-every", "0.5")
    assert board.ready["role"] == "board" and board.ready["token"] is None
    url = board.ready["url"]
    stream = Stream(url)
    try:
        kind, snapshot = stream.next()
        assert kind == "snapshot" and snapshot["seq"] == 0
        results = play(load_scenario(FLOW), bus.front)
        assert [r.status for r in results][-1] == "CONFLICT"
        events = stream.until_seq(7)
    finally:
        stream.close()
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6, 7]
    assert [e["entry"]["conflict"] for e in events] == [False] * 6 + [True]
    assert events[4]["item"]["state"] == "DONE" and events[4]["item"]["version"] == 3

    with httpx2.Client(base_url=url, timeout=WAIT) as http:
        state = http.get("/api/state").json()
        items = {i["item_id"]: i for i in state["items"]}
        assert (items["I-001"]["state"], items["I-001"]["version"]) == ("DONE", 3)
        assert (items["I-002"]["state"], items["I-002"]["version"]) == ("TODO", 2)
        conflicts = http.get("/api/feed?event_type=PLAN_CONFLICT_DETECTED").json()["events"]
        assert [(e["seq"], e["actor"]) for e in conflicts] == [(7, "Mary")]
        timeline = http.get("/api/items/I-002/timeline").json()
        assert [e["seq"] for e in timeline["events"]] == [3, 6, 7]
        assert timeline["events"][-1]["event_type"] == "PLAN_CONFLICT_DETECTED"
        # the ledger's own verification (QUERY verify) reaches the header
        status = http.get("/api/status").json()
        assert status["chain"]["status"] == "OK" and status["chain"]["checked_to"] == 7
        assert status["broker"]["state"] == "up" and status["ledger"]["up"] is True
    # read-only: the board sent no command; the log is the scenario's seven events
    with AgentClient(bus.front, "probe") as probe:
        assert probe.ping()["head_seq"] == 7
        assert {e["actor"] for e in probe.replay(1)} == {"Liam", "Codex", "Mary"}


def test_signed_checkpoints_are_checked_and_shown(sandbox: Path,
                                                  bus_factory: BusFactory) -> None:
    load_or_create_key(sandbox / "keys" / "ledger.pem")  # writes keys/ledger.pub beside it
    bus = bus_factory.start(ready=True, ledger_args=[
        "--checkpoint-key", "keys/ledger.pem", "--checkpoint-dir", "data/checkpoints",
        "--checkpoint-every", "0.2"])
    board = start_board(bus_factory, bus, "--checkpoint-key", "keys/ledger.pub")
    stream = Stream(board.ready["url"])
    try:
        play(load_scenario(FLOW), bus.front)
        deadline = time.monotonic() + WAIT
        while True:  # status messages until the board has decided the checkpoint of seq 7
            kind, data = stream.next()
            checkpoint = data["checkpoint"] if kind == "status" else {"last": None}
            last = checkpoint["last"]
            if last is not None and last["seq"] == 7:
                break
            assert time.monotonic() < deadline, checkpoint
    finally:
        stream.close()
    assert last["verdict"] == "OK" and checkpoint["signature_checked"]
    assert checkpoint["stats"]["mismatches"] == 0 and checkpoint["stats"]["ok"] >= 1


def test_the_ready_line_is_as_documented(bus_factory: BusFactory) -> None:
    """docs/OPERATIONS.md "Ready lines", section board: exactly the documented fields."""
    rows = tables(section(section(read("OPERATIONS.md"), "Ready lines"), "board"))[0]
    documented = {r["field"] for r in rows}
    assert {r["present"] for r in rows} == {"always"}
    ready = start_board(bus_factory, None).ready
    assert set(ready) == documented
    assert ready["url"] == f"http://127.0.0.1:{ready['port']}/" and ready["port"] > 0
    assert (ready["ok"], ready["ready"], ready["role"]) == (True, True, "board")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agents.tools.board", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_bind_policy() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert bind_policy(host, 8470, curve=False, token=None) == (None, False)
        assert bind_policy(host, 8470, curve=False, token="t") == ("t", False)
    for host in ("0.0.0.0", "::", "192.0.2.10", "example.org", ""):
        with pytest.raises(CoordinatorError) as refused:
            bind_policy(host, 8470, curve=False, token="t")
        assert refused.value.code == ErrorCode.INSECURE_BIND
        token, generated = bind_policy(host, 8470, curve=True, token=None)
        assert generated and token is not None and len(token) >= 24
        assert bind_policy(host, 8470, curve=True, token="given") == ("given", False)


def test_beyond_loopback_without_curve_is_refused(sandbox: Path) -> None:
    done = run_cli("--host", "0.0.0.0", "--port", "0", cwd=sandbox)
    assert done.returncode == 2, done.stderr
    line = json.loads(done.stdout)
    assert line["ok"] is False and line["error"]["code"] == "INSECURE_BIND"
    assert line["error"]["field"] == "host"


def test_beyond_loopback_with_curve_needs_the_token(sandbox: Path,
                                                    bus_factory: BusFactory) -> None:
    for name in ("board", "broker"):
        keygen.make_key_pair(name)
    board = start_board(bus_factory, None, "--host", "0.0.0.0",
                        "--curve-secret", "keys/board.key_secret",
                        "--server-key", "keys/broker.key")
    ready = board.ready
    token = ready["token"]
    assert ready["token_required"] and ready["curve"] and isinstance(token, str)
    assert len(token) >= 24
    local = f"http://127.0.0.1:{ready['port']}"
    with httpx2.Client(base_url=local, timeout=WAIT) as http:
        refused = http.get("/api/status")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "UNAUTHORIZED"
        assert http.get("/").status_code == 401
        assert http.get(f"/api/status?token={token}x").status_code == 401
        page = http.get(f"/?token={token}")
        assert page.status_code == 200 and "board_token=" in page.headers["set-cookie"]
        assert http.get("/api/status").status_code == 200  # the cookie
    with httpx2.Client(base_url=local, timeout=WAIT) as http:
        headers = {"Authorization": f"Bearer {token}"}
        assert http.get("/api/status", headers=headers).status_code == 200


def test_a_bad_curve_key_is_a_failure_line(sandbox: Path) -> None:
    keygen.make_key_pair("broker")
    bad = sandbox / "keys" / "board.key_secret"
    bad.write_text("not a certificate\n")
    bad.chmod(0o600)
    done = run_cli("--curve-secret", "keys/board.key_secret", "--server-key",
                   "keys/broker.key", "--port", "0", cwd=sandbox)
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "KEY_INVALID"


def test_a_given_token_is_required_on_loopback_too(bus_factory: BusFactory) -> None:
    board = start_board(bus_factory, None, "--token", "let-me-in")
    assert board.ready["token_required"] and board.ready["token"] is None  # not echoed
    with httpx2.Client(base_url=board.ready["url"], timeout=WAIT) as http:
        assert http.get("/api/state").status_code == 401
        assert http.get("/api/state?token=let-me-in").status_code == 200


def test_a_taken_port_is_a_failure_line(bus_factory: BusFactory, sandbox: Path) -> None:
    board = start_board(bus_factory, None)
    done = run_cli("--port", str(board.ready["port"]), cwd=sandbox)
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["code"] == "BIND_FAILED"
