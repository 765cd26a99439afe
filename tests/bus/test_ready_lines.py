"""docs/OPERATIONS.md "Ready lines" against the processes: each long-running process,
started as its console script, prints a first stdout line with exactly the documented
fields (those marked "always", plus the conditional ones when their condition holds);
a process that cannot start prints the documented failure line; endpoints given with
the free-port syntax come back as the addresses actually bound, and they work.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import pytest

from agents.client import AgentClient
from agents.tools.launch import LOOPBACK_ANY, stop_process
from tests.support.docs import read, section, tables

BIN: Final = Path(sys.executable).parent
READY: Final = section(read("OPERATIONS.md"), "Ready lines")
BOUND: Final = re.compile(r"tcp://127\.0\.0\.1:\d+")
TIMEOUT: Final = 30.0


@dataclass(frozen=True)
class Fields:
    always: frozenset[str]
    conditional: frozenset[str]


def documented(heading: str | None) -> Fields:
    """The field table under ``### heading`` (None: the failure line's table)."""
    rows = tables(READY)[0] if heading is None else tables(section(READY, heading))[0]
    always = frozenset(r["field"] for r in rows if r["present"] == "always")
    return Fields(always, frozenset(r["field"] for r in rows) - always)


def flat(line: dict[str, Any], fields: Fields) -> set[str]:
    """The line's keys, a map's keys written ``a.b`` where the doc names them so."""
    nested = {f.split(".")[0] for f in fields.always | fields.conditional if "." in f}
    out = set()
    for key, value in line.items():
        if key in nested:
            assert isinstance(value, dict), (key, value)
            out |= {f"{key}.{sub}" for sub in value}
        else:
            out.add(key)
    return out


def first_line(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> dict[str, Any]:
    """The process's first stdout line as JSON, waiting at most ``timeout``."""
    stream: IO[str] | None = proc.stdout
    assert stream is not None
    readable, _, _ = select.select([stream], [], [], timeout)
    assert readable, f"no ready line within {timeout}s"
    line = stream.readline()
    assert line.endswith("\n"), f"not one whole line: {line!r}"
    value = json.loads(line)
    assert isinstance(value, dict), line
    return value


@pytest.fixture
def sandbox_env(sandbox: Path) -> dict[str, str]:
    return {**os.environ, "OS_SANDBOX_ROOT": str(sandbox)}


class Procs:
    """Console scripts started for one test; all stopped at its end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.started: list[subprocess.Popen[str]] = []

    def start(self, script: str, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        proc = subprocess.Popen([str(BIN / script), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                text=True, env=self.env)
        self.started.append(proc)
        return proc, first_line(proc)

    def stop(self) -> None:
        for proc in reversed(self.started):
            stop_process(proc)  # type: ignore[arg-type]


@pytest.fixture
def procs(sandbox_env: dict[str, str]) -> Iterator[Procs]:
    running = Procs(sandbox_env)
    yield running
    running.stop()


def start_ledger(procs: Procs, *args: str) -> dict[str, Any]:
    _, line = procs.start("os-ledger", "--bind", LOOPBACK_ANY, "--pub", LOOPBACK_ANY, *args)
    assert line["ok"] is True, line
    return line


def start_broker(procs: Procs, ledger: dict[str, Any]) -> dict[str, Any]:
    _, line = procs.start("os-broker", "--front", LOOPBACK_ANY, "--pub", LOOPBACK_ANY,
                          "--ledger", ledger["endpoints"]["commands"],
                          "--ledger-pub", ledger["endpoints"]["events"])
    assert line["ok"] is True, line
    return line


def wait_ledger_up(front: str) -> None:
    """PING the broker until it reports the ledger up (it reached the bound ports)."""
    with AgentClient(front, "probe", timeout=2) as probe:
        assert probe.wait_ready(timeout=TIMEOUT)["ledger_up"] is True


# --- the ready lines ---------------------------------------------------------------------


def test_ledger_ready_line(procs: Procs) -> None:
    line = start_ledger(procs)
    fields = documented("ledger")
    assert flat(line, fields) == fields.always
    assert (line["ready"], line["role"], line["db"]) == (True, "ledger", "data/os_sandbox.db")
    assert line["head_seq"] == 0
    assert {"mode", "tail", "pages"} <= set(line["startup_check"])
    for endpoint in line["endpoints"].values():
        assert BOUND.fullmatch(endpoint), endpoint  # the free port, as bound


def test_ledger_ready_line_with_checkpoints(procs: Procs) -> None:
    line = start_ledger(procs, "--db", "data/cp.db", "--checkpoint-dir", "data/checkpoints")
    fields = documented("ledger")
    assert flat(line, fields) == fields.always | fields.conditional
    assert line["checkpoints"]["dir"] == "data/checkpoints"


def test_broker_ready_line_and_the_free_ports_work(procs: Procs) -> None:
    ledger = start_ledger(procs)
    line = start_broker(procs, ledger)
    fields = documented("broker")
    assert flat(line, fields) == fields.always
    assert (line["ready"], line["role"], line["curve"], line["allowed"]) == (
        True, "broker", False, None)
    assert line["endpoints"]["ledger"] == ledger["endpoints"]["commands"]
    assert line["endpoints"]["ledger_pub"] == ledger["endpoints"]["events"]
    for name in ("front", "pub"):
        assert BOUND.fullmatch(line["endpoints"][name]), line
    wait_ledger_up(line["endpoints"]["front"])


def test_monitor_ready_line(procs: Procs) -> None:
    broker = start_broker(procs, start_ledger(procs))
    eps = broker["endpoints"]
    _, line = procs.start("os-monitor", "--broker", eps["front"], "--pub", eps["pub"])
    fields = documented("monitor")
    assert flat(line, fields) == fields.always
    assert (line["ok"], line["ready"], line["role"], line["from_seq"], line["live"]) == (
        True, True, "monitor", 0, False)
    assert (line["broker"], line["pub"]) == (eps["front"], eps["pub"])


@pytest.mark.parametrize(("script", "args", "code"), [
    ("os-ledger", ["--bind", "tcp://0.0.0.0:*"], "INSECURE_BIND"),
    ("os-broker", ["--front", "tcp://0.0.0.0:*"], "INSECURE_BIND"),
    ("os-broker", ["--curve-secret", "/etc/passwd", "--curve-allow", "keys/allowed"],
     "PATH_NOT_ALLOWED"),
])
def test_failure_line(procs: Procs, script: str, args: list[str], code: str) -> None:
    proc, line = procs.start(script, *args)
    fields = documented(None)
    assert flat(line, fields) == fields.always
    assert line["ok"] is False and line["error"]["code"] == code, line
    assert proc.wait(TIMEOUT) == 2


def test_a_port_in_use_is_bind_failed(procs: Procs) -> None:
    taken = start_ledger(procs)["endpoints"]["commands"]
    proc, line = procs.start("os-ledger", "--db", "data/other.db", "--bind", taken,
                             "--pub", LOOPBACK_ANY)
    assert set(line) == documented(None).always
    assert line["error"]["code"] == "BIND_FAILED", line
    assert proc.wait(TIMEOUT) == 2
    broker = start_broker(procs, start_ledger(procs, "--db", "data/third.db"))
    proc, line = procs.start("os-broker", "--front", broker["endpoints"]["front"])
    assert line["error"]["code"] == "BIND_FAILED", line
    assert proc.wait(TIMEOUT) == 2


def test_run_scenario_reports_its_own_bus_as_bound(sandbox_env: dict[str, str]) -> None:
    done = subprocess.run([str(BIN / "os-run-scenario"), "scenarios/L3_PLAN_FLOW_001.json"],
                          env=sandbox_env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    bus = json.loads(done.stdout)["bus"]
    assert set(bus) == {"db", "broker", "pub"}
    assert BOUND.fullmatch(bus["broker"]) and BOUND.fullmatch(bus["pub"]), bus
    assert bus["db"].startswith("data/runs/L3_PLAN_FLOW_001-")


def test_agent_prints_no_ready_line_but_one_report(procs: Procs) -> None:
    broker = start_broker(procs, start_ledger(procs))
    eps = broker["endpoints"]
    done = subprocess.run([str(BIN / "os-agent"), "--name", "Mary", "--broker", eps["front"],
                           "--pub", eps["pub"], "--timeout", "1"], env=procs.env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.count("\n") == 1, done.stdout  # one object, when it stops
    report = json.loads(done.stdout)
    assert {"ok", "agent", "role", "plan_id"} <= set(report)
    assert "ready" not in report
    assert (report["agent"], report["role"]) == ("Mary", "coordinator")
    assert report["ok"] is False and report["error"]["code"] == "TIMEOUT"  # no plan done
    assert done.returncode == 1
