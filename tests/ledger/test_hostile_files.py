"""Hostile scenario files and command-line arguments, through the real console scripts.

tests/test_scenarios.py, tests/test_cli.py and tests/test_sandbox.py already cover bad
JSON, wrong types, unknown actions and fields (each naming ``steps.N.field``), an
oversized file (with the limit patched down) and paths outside the sandbox for the
ledger-core CLIs. This file adds what they do not: nesting deep enough to crash a JSON
parser, a really huge file, huge strings and too many steps, the same files through
``bin/run_scenario`` (which must refuse them before it starts a ledger and a broker),
paths outside the sandbox for the ledger process, and numeric arguments out of range
for the long-running processes. Each gives a clear error and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agents.tools.launch import LOOPBACK_ANY
from schema.scenario import MAX_SCENARIO_BYTES, MAX_STEPS
from tests.support.helpers import SCENARIO_DIR

BIN = Path(sys.executable).parent
FLOW = SCENARIO_DIR / "L3_PLAN_FLOW_001.json"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A sandbox root with the scenarios and an initialised, populated database."""
    root = tmp_path / "sbx"
    shutil.copytree(SCENARIO_DIR, root / "scenarios")
    run(root, "os-init-db")
    run(root, "os-l3-plan", "apply-scenario", "scenarios/L3_PLAN_FLOW_001.json")
    return root


def run(root: Path, name: str, *args: str, rc: int = 0) -> dict[str, Any]:
    done = subprocess.run([str(BIN / name), *args], capture_output=True, text=True,
                          env={**os.environ, "OS_SANDBOX_ROOT": str(root)}, cwd=root,
                          timeout=120)
    assert done.returncode == rc, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert isinstance(out, dict)
    return out


def refused(root: Path, name: str, *args: str, code: str, rc: int = 2) -> dict[str, Any]:
    out = run(root, name, *args, rc=rc)
    assert out["ok"] is False and out["error"]["code"] == code, out
    return dict(out["error"])


def snapshot(root: Path) -> dict[str, str]:
    """Every file under data/ (databases, WAL) and logs/, by digest: 'changes nothing'."""
    files = {}
    for area in ("data", "logs"):
        for path in sorted((root / area).rglob("*")) if (root / area).exists() else []:
            if path.is_file() and not path.name.endswith("-shm"):
                files[str(path.relative_to(root))] = hashlib.sha256(
                    path.read_bytes()).hexdigest()
    return files


def flow() -> dict[str, Any]:
    return dict(json.loads(FLOW.read_text()))


def write(root: Path, name: str, content: bytes | str | dict[str, Any]) -> str:
    path = root / "scenarios" / name
    if isinstance(content, dict):
        content = json.dumps(content)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return f"scenarios/{name}"


# (file name, content, error code, field or None, words the message contains)
HOSTILE_FILES: list[tuple[str, Any, str, str | None, str]] = [
    ("deep.json", '{"scenario_id": "D", "session_id": "S", "steps": ['
     + "[" * 100_000 + "]" * 100_000 + "]}", "INVALID_JSON", None, "nested too deeply"),
    ("deep-step.json", {**flow(), "steps": [{**flow()["steps"][0],
                                             "title": [[[[[[[[[["deep"]]]]]]]]]]}]},
     "INVALID_TYPE", "steps.0.title", "steps.0.title"),
    ("huge.json", b" " * (MAX_SCENARIO_BYTES + 1) + FLOW.read_bytes(), "FILE_TOO_LARGE", None,
     f"the limit is {MAX_SCENARIO_BYTES}"),
    ("huge-title.json", {**flow(), "steps": [*flow()["steps"][:5], {
        **flow()["steps"][5], "change": {"title": "t" * 3_000_000}}]},
     "INVALID_VALUE", "steps.5.change.title", "steps.5.change.title"),
    ("many-steps.json", {**flow(), "steps": [flow()["steps"][0]] * (MAX_STEPS + 1)},
     "INVALID_VALUE", "steps", "steps"),
    ("bad.json", '{"scenario_id": "B", "session_id": "S",\n "steps": [}', "INVALID_JSON", None,
     "line 2 column"),
    ("wrong-type.json", {**flow(), "steps": [*flow()["steps"][:5], {
        **flow()["steps"][5], "expected_version": [1]}]},
     "INVALID_TYPE", "steps.5.expected_version", "steps.5.expected_version"),
    ("unknown-action.json", {**flow(), "steps": [*flow()["steps"][:2], {
        **flow()["steps"][2], "action": "DROP_TABLE"}]},
     "UNKNOWN_ACTION", "steps.2.action", "steps.2.action"),
    ("not-utf8.json", b'{"scenario_id": "\xff\xfe"}', "INVALID_JSON", None, "not UTF-8"),
    ("nul.json", b"\x00" * 1000, "INVALID_JSON", None, "line 1 column 1"),
]


@pytest.mark.parametrize(("name", "content", "code", "field", "says"), HOSTILE_FILES,
                         ids=[h[0] for h in HOSTILE_FILES])
def test_a_hostile_scenario_file_is_refused_with_its_location_and_changes_nothing(
        root: Path, name: str, content: Any, code: str, field: str | None, says: str) -> None:
    path = write(root, name, content)
    before = snapshot(root)
    for cli in (("os-l3-plan", "apply-scenario", path),      # into the database in place
                ("os-run-scenario", path),                   # over a bus it would start
                ("os-run-scenario", path, "--db", "data/os_sandbox.db")):
        error = refused(root, *cli, code=code)
        assert error.get("field") == field, error
        assert says in error["message"], error
        if field is not None:
            assert error["message"].startswith(field)
        assert snapshot(root) == before  # no database, log or run directory touched
    assert not (root / "data" / "runs").exists()
    assert not (root / "logs").exists()


@pytest.mark.parametrize(("name", "args", "says"), [
    ("os-run-scenario", ("scenarios/L3_PLAN_FLOW_001.json", "--timeout", "-5"), "--timeout"),
    ("os-run-scenario", ("scenarios/L3_PLAN_FLOW_001.json", "--timeout", "nan"), "--timeout"),
    ("os-run-scenario", ("scenarios/L3_PLAN_FLOW_001.json", "--timeout", "soon"), "--timeout"),
    ("os-run-scenario", ("--agents", "--items", "0"), "--items"),
    ("os-run-scenario", ("--agents", "--run-timeout", "0"), "--run-timeout"),
    ("os-run-scenario", ("scenarios/L3_PLAN_FLOW_001.json", "--db", "/tmp/x.db"), "/tmp/x.db"),
    ("os-run-scenario", ("scenarios/L3_PLAN_FLOW_001.json", "--db", "data/../../x.db"), ".."),
])
def test_bad_run_scenario_arguments_are_refused_before_anything_starts(
        root: Path, name: str, args: tuple[str, ...], says: str) -> None:
    before = snapshot(root)
    out = run(root, name, *args, rc=2)
    assert out["ok"] is False and out["error"]["code"] in ("USAGE_ERROR", "PATH_NOT_ALLOWED")
    assert says in out["error"]["message"], out
    assert snapshot(root) == before
    assert not (root / "data" / "runs").exists() and not (root / "logs").exists()


def _service(root: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, env={**os.environ, "OS_SANDBOX_ROOT": str(root)},
                          timeout=60, stdin=subprocess.DEVNULL)


LOOPBACK = ("--bind", LOOPBACK_ANY, "--pub", LOOPBACK_ANY)


@pytest.mark.parametrize(("module", "args", "says"), [
    ("ledger.server", ("--max-batch", "0", *LOOPBACK), "--max-batch: must be > 0"),
    ("ledger.server", ("--max-batch", "many", *LOOPBACK), "--max-batch: 'many'"),
    ("ledger.server", ("--heartbeat", "-1", *LOOPBACK), "--heartbeat: must be a number > 0"),
    ("ledger.server", ("--heartbeat", "inf", *LOOPBACK), "--heartbeat: must be a number > 0"),
    ("ledger.server", ("--durability", "none", *LOOPBACK), "--durability: invalid choice"),
    ("broker.gateway", ("--liveness", "0"), "--liveness: must be a number > 0"),
    ("broker.gateway", ("--max-inflight", "-3"), "--max-inflight: must be > 0"),
    ("broker.gateway", ("--request-timeout", "x"), "--request-timeout: 'x'"),
    ("broker.gateway", ("--heartbeat", "0"), "--heartbeat: must be a number > 0"),
])
def test_out_of_range_numbers_stop_a_process_before_it_starts(
        root: Path, module: str, args: tuple[str, ...], says: str) -> None:
    """A zero batch size would never apply a command, a zero liveness would never count
    the ledger up: refused with a usage error naming the argument, before anything opens."""
    before = snapshot(root)
    done = _service(root, module, *args)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    assert says in done.stderr, done.stderr
    assert snapshot(root) == before


@pytest.mark.parametrize("db", ["/tmp/evil.db", "../evil.db", "data/../../evil.db",
                                "scenarios/x.db", "data"])
def test_the_ledger_refuses_a_database_path_outside_the_sandbox(root: Path, db: str) -> None:
    before = snapshot(root)
    done = _service(root, "ledger.server", "--db", db, *LOOPBACK)
    assert done.returncode == 2, done.stderr
    ready = json.loads(done.stdout)
    assert ready["ok"] is False and ready["error"]["code"] == "PATH_NOT_ALLOWED", ready
    assert ready["error"]["field"] == "path"
    assert snapshot(root) == before
    assert not (root.parent / "evil.db").exists() and not Path("/tmp/evil.db").exists()


@pytest.mark.parametrize("db", ["mysql://h/db", "sqlite:///tmp/x.db"])
def test_a_database_url_of_an_unknown_scheme_is_refused_by_every_command(
        root: Path, db: str) -> None:
    """A URL of a scheme without a backend (postgresql:// has one:
    tests/ledger/test_postgres_faults.py): DB_UNSUPPORTED, exit status 2, nothing
    touched; the ledger says so in its ready line."""
    before = snapshot(root)
    for cli in (("os-init-db",), ("os-verify-chain",), ("os-l3-plan", "list-plans"),
                ("os-l2-query", "summary"), ("os-truth-sync", "--out", "logs/truth")):
        error = refused(root, cli[0], "--db", db, *cli[1:], code="DB_UNSUPPORTED")
        assert error["field"] == "db", (cli, error)
    health = run(root, "os-healthcheck", "--db", db, rc=1)
    assert health["checks"][0]["detail"]["code"] == "DB_UNSUPPORTED"
    done = _service(root, "ledger.server", "--db", db, *LOOPBACK)
    assert done.returncode == 2, done.stderr
    ready = json.loads(done.stdout)
    assert ready["ok"] is False and ready["error"]["code"] == "DB_UNSUPPORTED", ready
    assert snapshot(root) == before
