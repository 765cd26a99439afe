"""Who may write: CURVE on the broker's sockets, identities bound to keys, loopback-only
binds without CURVE, and bin/keygen.

Real ledger and broker processes with real sockets. Every wait is a receive with a
timeout or a handshake event from a socket monitor, never a sleep. Refusals are proved
two ways: the client's socket monitor reports the failed handshake, and an allowed
client then sees the ledger's head unchanged (nothing was written).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from agents import sim
from agents.client import AgentClient, AsyncAgentClient
from agents.tools.launch import LOOPBACK_ANY, Bus
from broker import keygen
from broker.gateway import _load_curve
from broker.security import ClientKeys, CurveServer, load_allowlist, load_key_pair
from ledger.cli.common import run
from schema import wire
from schema.endpoints import is_local_endpoint
from schema.errors import CoordinatorError, ErrorCode
from tests.support.buses import BusFactory
from tests.support.helpers import SCENARIO_DIR
from tests.support.sockets import SocketFactory

#: How long a refused party is watched for a reply or an event that must not come.
SILENCE = 1.5
#: Bound on every wait that is expected to succeed.
WAIT = 15.0
ALLOWED = ("Codex", "Liam", "Mary", "run_scenario")
BIN = Path(sys.executable).parent
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Keys:
    root: Path

    def secret(self, name: str) -> Path:
        return self.root / "keys" / f"{name}.key_secret"

    @property
    def server(self) -> Path:
        return self.root / "keys" / "broker.key"

    def client(self, front: str, name: str, actor: str | None = None,
               **kw: Any) -> AgentClient:
        return AgentClient(front, actor or name, curve_secret=self.secret(name),
                           server_key=self.server, **kw)

    def apply(self, sock: zmq.Socket[bytes], name: str) -> None:
        ClientKeys.load(self.secret(name), self.server).apply(sock)


def make_keys(root: Path) -> Keys:
    """broker, Liam, Mary (allowed) and Eve (not allowed), made with bin/keygen's code."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OS_SANDBOX_ROOT", str(root))
        for name in ("broker", *ALLOWED, "Eve"):
            keygen.make_key_pair(name)
    allowed = root / "keys" / "allowed"
    allowed.mkdir()
    for name in ALLOWED:
        shutil.copy(root / "keys" / f"{name}.key", allowed / f"{name}.key")
    return Keys(root)


CURVE_ARGS = ["--curve-secret", "keys/broker.key_secret", "--curve-allow", "keys/allowed/"]


@pytest.fixture(scope="module")
def curve_bus(module_bus_factory: BusFactory) -> tuple[Bus, Keys]:
    keys = make_keys(module_bus_factory.root)
    bus = module_bus_factory.start("data/curve.db", broker_args=CURVE_ARGS)
    with keys.client(bus.front, "Liam", timeout=5) as probe:
        probe.wait_ready(timeout=WAIT)
    return bus, keys


def head_seq(bus: Bus, keys: Keys) -> int:
    """The ledger's committed head, asked by an allowed agent."""
    with keys.client(bus.front, "Mary", timeout=5) as mary:
        return int(mary.query("summary")["events"])


def socket_with_monitor(zmq_socket: SocketFactory, kind: int
                        ) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    sock = zmq_socket(kind)
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    monitor.linger = 0
    return sock, monitor


def first_handshake(monitor: zmq.Socket[bytes]) -> tuple[int, int]:
    """(event, value) of the first handshake outcome the monitor reports."""
    assert monitor.poll(int(WAIT * 1000)), "no handshake outcome reported"
    event = recv_monitor_message(monitor)
    return int(event["event"]), int(event["value"])


def silent(sock: zmq.Socket[bytes], seconds: float = SILENCE) -> bool:
    return not sock.poll(int(seconds * 1000))


# --- the front end --------------------------------------------------------------------


def test_broker_announces_curve_and_its_allowlist(curve_bus: tuple[Bus, Keys]) -> None:
    bus, _keys = curve_bus
    assert bus.broker.ready["curve"] is True
    assert bus.broker.ready["allowed"] == sorted(ALLOWED)


def test_allowed_agent_creates_a_plan(curve_bus: tuple[Bus, Keys]) -> None:
    bus, keys = curve_bus
    plan = uid("P")
    with keys.client(bus.front, "Liam", timeout=5) as liam:
        before = int(liam.query("summary")["events"])
        created = liam.create_plan(plan, "Made over CURVE")
        assert (created.ok, created.status, created.seq) == (True, "APPLIED", before + 1)
        assert liam.show_plan(plan)["plan"]["owner_agent"] in (None, "Liam")
        assert liam.timeline("plan", plan)[0]["actor"] == "Liam"


async def test_allowed_agent_async_client(curve_bus: tuple[Bus, Keys]) -> None:
    bus, keys = curve_bus
    async with AsyncAgentClient(bus.front, "Mary", curve_secret=keys.secret("Mary"),
                                server_key=keys.server, timeout=5) as mary:
        assert (await mary.ping())["broker_up"] is True
        reply = await mary.create_plan(uid("P"), "Async over CURVE")
        assert reply.status == "APPLIED"


@pytest.mark.parametrize("who", ["unknown key", "no CURVE", "wrong server key"])
def test_refused_parties_get_no_reply_and_write_nothing(
        curve_bus: tuple[Bus, Keys], zmq_socket: SocketFactory, who: str) -> None:
    bus, keys = curve_bus
    before = head_seq(bus, keys)
    sock, monitor = socket_with_monitor(zmq_socket, zmq.DEALER)
    if who == "unknown key":
        keys.apply(sock, "Eve")
    elif who == "wrong server key":  # an allowed agent talking to an impostor's key
        ClientKeys.load(keys.secret("Liam"), keys.root / "keys" / "Eve.key").apply(sock)
    sock.connect(bus.front)
    command = wire.CommandMsg(id=uid("cmd"), actor="Liam", session_id="S-EVE",
                              command={"action": "CREATE_PLAN", "plan_id": uid("P"),
                                       "title": "should never exist"})
    sock.send_multipart(wire.encode(command))
    event, value = first_handshake(monitor)
    if who == "unknown key":  # the broker's ZAP handler said 400 (no access)
        assert (event, value) == (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)
    else:
        assert event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                         zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL), (event, value)
    assert silent(sock), "a refused party got an answer"
    sock.disable_monitor()
    assert head_seq(bus, keys) == before


def test_refused_client_library_times_out(curve_bus: tuple[Bus, Keys]) -> None:
    bus, keys = curve_bus
    before = head_seq(bus, keys)
    with AgentClient(bus.front, "Liam", timeout=SILENCE, retries=0) as plain, \
            pytest.raises(CoordinatorError) as err:
        plain.create_plan(uid("P"), "no CURVE")
    assert err.value.code == ErrorCode.TIMEOUT
    with keys.client(bus.front, "Eve", actor="Liam", timeout=SILENCE, retries=0) as eve, \
            pytest.raises(CoordinatorError) as err:
        eve.create_plan(uid("P"), "unknown key")
    assert err.value.code == ErrorCode.TIMEOUT
    assert head_seq(bus, keys) == before


# --- the key decides the actor ---------------------------------------------------------


def test_actor_mismatch_is_refused_and_written_nowhere(curve_bus: tuple[Bus, Keys]) -> None:
    bus, keys = curve_bus
    plan, command_id = uid("P"), uid("cmd")
    before = head_seq(bus, keys)
    with keys.client(bus.front, "Liam", actor="Mary", timeout=5, retries=0) as liam_as_mary:
        reply = liam_as_mary.create_plan(plan, "Liam pretending", command_id=command_id)
        assert (reply.ok, reply.status, reply.seq) == (False, "REJECTED", None)
        assert reply.error is not None and reply.error["code"] == "ACTOR_MISMATCH"
        assert reply.error["field"] == "actor"
        assert reply.error["details"] == {"identity": "Liam", "actor": "Mary"}
        requests: list[Callable[[], object]] = [
            liam_as_mary.hello, lambda: liam_as_mary.send("Liam", "note", {"x": 1}),
            lambda: liam_as_mary.query("list-plans")]
        for request in requests:
            with pytest.raises(CoordinatorError) as err:
                request()
            assert err.value.code == ErrorCode.ACTOR_MISMATCH
    assert head_seq(bus, keys) == before
    with keys.client(bus.front, "Mary", timeout=5) as mary:
        assert mary.query("get-plan", plan_id=plan)["plan"] is None
        # the refused command_id was recorded nowhere: Mary's own command with it applies
        own = mary.create_plan(plan, "Mary's own", command_id=command_id)
        assert (own.status, own.replayed) == ("APPLIED", False)
        assert mary.timeline("plan", plan)[0]["actor"] == "Mary"


def test_hello_binds_only_the_keys_own_name(curve_bus: tuple[Bus, Keys]) -> None:
    """Nobody can take Mary's mailbox: HELLO as Mary from Liam's key is refused, so a
    SEND to Mary still reaches the real Mary, with the sender's true identity."""
    bus, keys = curve_bus
    with keys.client(bus.front, "Mary", timeout=5) as mary, \
            keys.client(bus.front, "Liam", timeout=5) as liam, \
            keys.client(bus.front, "Liam", actor="Mary", timeout=5, retries=0) as impostor:
        assert mary.hello() == {"registered": "Mary"}
        with pytest.raises(CoordinatorError) as err:
            impostor.hello()
        assert err.value.code == ErrorCode.ACTOR_MISMATCH
        assert liam.send("Mary", "request", {"n": 1}) == {"delivered_to": "Mary"}
        delivered = mary.receive(timeout=5)
        assert delivered is not None and (delivered.actor, delivered.data) == ("Liam", {"n": 1})
        assert impostor.receive(timeout=0.2) is None


# --- the PUB --------------------------------------------------------------------------


def _next_event(sub: zmq.Socket[bytes], deadline_s: float = WAIT) -> dict[str, Any]:
    """The next EVENT on ``sub`` (heartbeats skipped), within a bounded wait."""
    for _ in range(1000):
        assert sub.poll(int(deadline_s * 1000)), "no event arrived"
        frames = sub.recv_multipart()
        if frames[0] == wire.TOPIC_EVENT:
            return dict(wire.decode(frames[1:]).event)
    raise AssertionError("only heartbeats")


def test_pub_is_protected(curve_bus: tuple[Bus, Keys], zmq_socket: SocketFactory) -> None:
    bus, keys = curve_bus
    subs = {}
    for who in ("Liam", "Eve", "plain"):
        sub, monitor = socket_with_monitor(zmq_socket, zmq.SUB)
        if who != "plain":
            keys.apply(sub, who)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(bus.pub)
        subs[who] = (sub, monitor)
    assert first_handshake(subs["Liam"][1])[0] == zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert first_handshake(subs["Eve"][1]) == (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)
    assert first_handshake(subs["plain"][1])[0] in (
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    liam_sub = subs["Liam"][0]
    # the subscription is live once a heartbeat arrives (no slow-joiner guesswork)
    assert liam_sub.poll(int(WAIT * 1000)) and liam_sub.recv_multipart()[0] in (
        wire.TOPIC_HEARTBEAT, wire.TOPIC_EVENT)
    plan = uid("P")
    with keys.client(bus.front, "Liam", timeout=5) as liam:
        seq = liam.create_plan(plan, "Watched").seq
    event = _next_event(liam_sub)
    while event["seq"] < (seq or 0):
        event = _next_event(liam_sub)
    assert (event["seq"], event["plan_id"]) == (seq, plan)
    assert silent(subs["Eve"][0]) and silent(subs["plain"][0], 0.2)
    for sub, _monitor in subs.values():
        sub.disable_monitor()


# --- the command-line tools -------------------------------------------------------------


def _tool(name: str, args: list[str], root: Path) -> tuple[int, list[dict[str, Any]]]:
    proc = subprocess.run([str(BIN / name), *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, "OS_SANDBOX_ROOT": str(root)})
    try:  # one (indented) JSON object, or JSON lines
        return proc.returncode, [json.loads(proc.stdout)]
    except ValueError:
        return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def test_run_scenario_and_monitor_over_curve(curve_bus: tuple[Bus, Keys]) -> None:
    """bin/run_scenario with a key directory (each step from its actor's own key), and
    bin/monitor with one agent's key, against the CURVE broker."""
    bus, keys = curve_bus
    shutil.copytree(SCENARIO_DIR, keys.root / "scenarios", dirs_exist_ok=True)
    curve = ["--curve-secret", "keys", "--server-key", "keys/broker.key"]
    head = head_seq(bus, keys)
    code, out = _tool("os-run-scenario", ["scenarios/L3_PLAN_FLOW_001.json", "--broker",
                                           bus.front, "--pub", bus.pub, *curve], keys.root)
    report = out[-1]
    assert code == 0 and report["ok"] is True, report
    assert report["verify"]["chain_status"] == "OK"
    assert report["monitor"]["seqs"] == list(range(head + 1, head + 8))
    with keys.client(bus.front, "Mary", timeout=5) as mary:  # each actor its own key
        actors = {e["actor"] for e in mary.timeline("plan", "P-L3-DEMO-001")}
    assert actors == {"Liam", "Codex", "Mary"}

    code, lines = _tool("os-monitor", ["--broker", bus.front, "--pub", bus.pub, "--from-seq",
                                       str(head), "--until-seq", str(head + 7),
                                       "--curve-secret", "keys/Liam.key_secret",
                                       "--server-key", "keys/broker.key"], keys.root)
    assert code == 0, lines
    events = [line for line in lines if "seq" in line and "hash" in line]
    assert [e["seq"] for e in events] == list(range(head + 1, head + 8))
    assert lines[-1]["summary"]["chain"] == "OK"
    assert lines[-1]["summary"]["last_seq"] == head + 7

    # refused before anything starts: half a key configuration, or keys without --broker
    code, lines = _tool("os-monitor", ["--broker", bus.front, "--pub", bus.pub,
                                       "--curve-secret", "keys/Liam.key_secret"], keys.root)
    assert code == 2 and lines[-1]["error"]["code"] == "USAGE_ERROR"
    code, lines = _tool("os-run-scenario", ["scenarios/L3_PLAN_FLOW_001.json", *curve],
                        keys.root)
    assert code == 2 and lines[-1]["error"]["code"] == "USAGE_ERROR"


def test_agent_cli_curve_flags(curve_bus: tuple[Bus, Keys],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    _bus, keys = curve_bus
    monkeypatch.setenv("OS_SANDBOX_ROOT", str(keys.root))
    config = sim.parse_args(["--name", "Codex", "--curve-secret", "keys/",
                             "--server-key", "keys/broker.key"])
    assert config.curve == {"curve_secret": keys.secret("Codex"), "server_key": keys.server}
    config = sim.parse_args(["--name", "Codex", "--curve-secret", "keys/Liam.key_secret",
                             "--server-key", "keys/broker.key"])
    assert config.curve is not None and config.curve["curve_secret"] == keys.secret("Liam")
    assert sim.parse_args(["--name", "Codex"]).curve == {}
    for bad in (["--curve-secret", "keys/"],  # no --server-key
                ["--curve-secret", "keys/nobody.key_secret", "--server-key", "keys/broker.key"],
                ["--curve-secret", "/etc/Codex.key_secret", "--server-key", "keys/broker.key"]):
        with pytest.raises(SystemExit) as exit_:
            sim.parse_args(["--name", "Nobody", *bad])
        assert exit_.value.code == 2


# --- bind policy ------------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "local"), [
    ("tcp://127.0.0.1:5570", True), ("tcp://127.0.0.1:*", True), ("tcp://127.8.9.1:1", True),
    ("tcp://[::1]:5570", True), ("tcp://localhost:5570", True), ("ipc:///tmp/x.sock", True),
    ("inproc://x", True), ("tcp://0.0.0.0:5570", False), ("tcp://*:5570", False),
    ("tcp://*:*", False), ("tcp://192.168.1.10:5570", False), ("tcp://[::]:5570", False),
    ("tcp://eth0:5570", False), ("tcp://example.org:5570", False), ("pgm://eth0;1.2.3.4:5", False),
    ("udp://127.0.0.1:5", False), ("127.0.0.1:5570", False), ("", False),
])
def test_is_local_endpoint(endpoint: str, local: bool) -> None:
    assert is_local_endpoint(endpoint) is local


def _start_error(buses: BusFactory, module: str, args: list[str]) -> CoordinatorError:
    with pytest.raises(CoordinatorError) as err:
        buses.spawn(module, module, args, timeout=WAIT)
    return err.value


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:*", "tcp://*:*", "tcp://192.0.2.7:*"])
def test_non_loopback_bind_refused_without_curve(bus_factory: BusFactory, address: str) -> None:
    err = _start_error(bus_factory, "broker.gateway", ["--front", address, "--pub", LOOPBACK_ANY])
    assert err.code == ErrorCode.INSECURE_BIND and address in err.message
    err = _start_error(bus_factory, "broker.gateway", ["--front", LOOPBACK_ANY, "--pub", address])
    assert err.code == ErrorCode.INSECURE_BIND


def test_ledger_binds_loopback_only_always(bus_factory: BusFactory) -> None:
    for args in (["--bind", "tcp://0.0.0.0:*", "--pub", LOOPBACK_ANY],
                 ["--bind", LOOPBACK_ANY, "--pub", "tcp://*:*"]):
        err = _start_error(bus_factory, "ledger.server", ["--db", "data/l.db", *args])
        assert err.code == ErrorCode.INSECURE_BIND
    assert not (bus_factory.root / "data" / "l.db").exists()  # refused before the database


def test_curve_broker_may_bind_all_interfaces(bus_factory: BusFactory) -> None:
    keys = make_keys(bus_factory.root)
    child = bus_factory.spawn("broker", "broker.gateway", [
        "--front", "tcp://0.0.0.0:*", "--pub", "tcp://0.0.0.0:*", *CURVE_ARGS], timeout=WAIT)
    assert child.ready["curve"] is True
    port = child.endpoints["front"].rpartition(":")[2]
    with keys.client(f"tcp://127.0.0.1:{port}", "Liam", timeout=5, retries=0) as liam:
        assert liam.ping()["broker_up"] is True  # answered by the broker, no ledger
    assert child.stop() == 0


def test_broker_curve_configuration_errors(bus_factory: BusFactory) -> None:
    make_keys(bus_factory.root)  # the sandbox fixture set OS_SANDBOX_ROOT to it
    cases: list[tuple[str | None, str | None, ErrorCode]] = [
        ("keys/broker.key_secret", None, ErrorCode.USAGE_ERROR),
        (None, "keys/allowed", ErrorCode.USAGE_ERROR),
        ("keys/nobody.key_secret", "keys/allowed", ErrorCode.FILE_NOT_FOUND),
        ("keys/broker.key_secret", "keys/none", ErrorCode.FILE_NOT_FOUND),
        ("/etc/broker.key_secret", "keys/allowed", ErrorCode.PATH_NOT_ALLOWED),
        ("keys/broker.key_secret", "../allowed", ErrorCode.PATH_NOT_ALLOWED),
        ("keys/broker.key", "keys/allowed", ErrorCode.KEY_INVALID),  # no secret key in it
    ]
    for secret, allow, code in cases:
        with pytest.raises(CoordinatorError) as err:
            _load_curve(secret, allow)
        assert err.value.code == code, (secret, allow, err.value)
        if secret == "keys/broker.key":
            assert "no valid CURVE secret key" in err.value.message
    assert _load_curve(None, None) is None
    loaded = _load_curve("keys/broker.key_secret", "keys/allowed")
    assert isinstance(loaded, CurveServer) and sorted(loaded.allowed.values()) == sorted(ALLOWED)
    # over the process boundary too: one JSON error line, exit 2
    refused = _start_error(bus_factory, "broker.gateway",
                           ["--curve-secret", "keys/broker.key_secret"])
    assert refused.code == ErrorCode.USAGE_ERROR


def test_allowlist_and_key_file_checks(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    allowed = tmp_path / "keys" / "allowed"
    assert load_allowlist(allowed) == {
        load_key_pair(keys.secret(n)).public: n for n in ALLOWED}
    secret = keys.secret("Liam")
    secret.chmod(0o644)
    with pytest.raises(CoordinatorError) as err:
        load_key_pair(secret)
    assert err.value.code == ErrorCode.KEY_INVALID and "chmod 600" in err.value.message
    secret.chmod(0o600)
    shutil.copy(allowed / "Liam.key", allowed / "Liam2.key")  # one key, two names
    with pytest.raises(CoordinatorError) as err:
        load_allowlist(allowed)
    assert err.value.code == ErrorCode.KEY_INVALID
    (allowed / "Liam2.key").unlink()
    shutil.copy(allowed / "Mary.key", allowed / "-bad name.key")
    with pytest.raises(CoordinatorError) as err:
        load_allowlist(allowed)
    assert err.value.code == ErrorCode.KEY_INVALID
    (allowed / "-bad name.key").unlink()
    (allowed / "junk.key").write_text("curve\n    public-key = \"short\"\n")
    with pytest.raises(CoordinatorError) as err:
        load_allowlist(allowed)
    assert err.value.code == ErrorCode.KEY_INVALID
    empty = tmp_path / "keys" / "empty"
    empty.mkdir()
    with pytest.raises(CoordinatorError) as err:
        load_allowlist(empty)
    assert err.value.code == ErrorCode.KEY_INVALID
    with pytest.raises(CoordinatorError) as err:
        ClientKeys.maybe(keys.secret("Liam"), None)
    assert err.value.code == ErrorCode.USAGE_ERROR
    assert ClientKeys.maybe(None, None) is None


# --- bin/keygen -----------------------------------------------------------------------


def _keygen(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = run(keygen._main, argv)
    return code, json.loads(capsys.readouterr().out)


def test_keygen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OS_SANDBOX_ROOT", str(tmp_path))
    code, out = _keygen(["Codex"], capsys)
    assert code == 0 and out["ok"] is True
    assert (out["public_key"], out["secret_key"]) == ("keys/Codex.key", "keys/Codex.key_secret")
    public, secret = tmp_path / out["public_key"], tmp_path / out["secret_key"]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pair = load_key_pair(secret)
    assert out["public_key_z85"] == pair.public.decode()
    # no temporary directory left behind
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["Codex.key",
                                                                      "Codex.key_secret"]
    before = (public.read_bytes(), secret.read_bytes())

    code, out = _keygen(["Codex"], capsys)  # never overwrites by accident
    assert code == 2 and out["error"]["code"] == "FILE_EXISTS"
    assert (public.read_bytes(), secret.read_bytes()) == before

    code, out = _keygen(["Codex", "--force"], capsys)
    assert code == 0 and load_key_pair(secret).public != pair.public
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600

    code, out = _keygen(["Codex", "--dir", "keys/agents"], capsys)
    assert code == 0 and out["public_key"] == "keys/agents/Codex.key"

    for argv, error in ((["../Eve"], "INVALID_VALUE"), (["Eve/x"], "INVALID_VALUE"),
                        (["Eve", "--dir", "/etc"], "PATH_NOT_ALLOWED"),
                        (["Eve", "--dir", "data"], "PATH_NOT_ALLOWED"),
                        (["Eve", "--dir", "keys/../.."], "PATH_NOT_ALLOWED"), ([], "USAGE_ERROR")):
        code, out = _keygen(argv, capsys)
        assert (code, out["error"]["code"]) == (2, error), argv
    assert not any(p.name.startswith("Eve") for p in tmp_path.rglob("*"))
    assert not list((tmp_path / "keys").glob(".keygen-*"))
