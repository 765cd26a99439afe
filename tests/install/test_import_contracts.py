"""The architecture contracts in pyproject.toml ([tool.importlinter], run by bin/test as
`lint-imports`) hold on the code, and each one fails on a planted violation.

Each plant goes into a copy of the four packages in a temp folder, analysed with the
project's own pyproject.toml (so the real contracts); the planted module's name in the
report proves the copy was analysed, and every other contract stays kept.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.helpers import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("schema", "ledger", "broker", "agents")
CONTRACTS = {c["id"]: c["name"] for c in
             tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
                 "contracts"]}

#: (contract id, module to add, its source): one violation each
PLANTS = [
    ("schema-leaf", "schema/planted.py", "from ledger.storage import base\n"),
    ("schema-leaf", "schema/planted.py", "import agents.client\n"),
    ("ledger-core", "ledger/queries/planted.py", "from broker import normalise\n"),
    ("ledger-core", "ledger/planted.py", "import agents.tools.launch\n"),
    ("ledger-layers", "ledger/storage/planted.py", "from ledger.log import chain\n"),
    ("ledger-layers", "ledger/log/planted.py", "from ledger.plans import rules\n"),
    ("ledger-layers", "ledger/plans/planted.py", "from ledger.server import serving\n"),
    ("broker-no-agents", "broker/planted.py", "from agents.client import AgentClient\n"),
    ("agents-state-apart-from-io", "agents/tools/monitor/follower.py",
     "import zmq\n"),
    ("agents-state-apart-from-io", "agents/client/core.py",
     "from agents.client import sync\n"),
    ("agents-state-apart-from-io", "agents/tools/board/model.py", "import zmq\n"),
    ("board-web-stack", "agents/tools/monitor/planted.py", "import starlette\n"),
    ("board-web-stack", "broker/planted.py", "import uvicorn\n"),
    ("storage-driver", "ledger/queries/planted.py", "import sqlite3\n"),
    ("storage-driver", "broker/planted.py", "import psycopg\n"),
    ("codec-msgpack", "broker/planted.py", "import msgpack\n"),
]


def lint(cwd: Path, src: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(src) if src else ""}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def verdicts(output: str) -> dict[str, str]:
    """Contract name -> KEPT / BROKEN, from the report's contract list."""
    found = {}
    for name in CONTRACTS.values():
        match = re.search(rf"^{re.escape(name)} (KEPT|BROKEN)", output, re.MULTILINE)
        assert match, f"{name!r} missing from the report:\n{output}"
        found[name] = match.group(1)
    return found


def project_copy(base: Path) -> tuple[Path, Path]:
    """(folder holding pyproject.toml, folder holding the packages)."""
    src = base / "src"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", base / "pyproject.toml")
    return base, src


def test_the_contracts_hold_on_the_code() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(verdicts(done.stdout).values()) == {"KEPT"}


def test_the_unchanged_copy_passes(tmp_path: Path) -> None:
    cwd, src = project_copy(tmp_path)
    done = lint(cwd, src)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_contract_has_a_plant() -> None:
    assert {contract for contract, _, _ in PLANTS} == set(CONTRACTS)


@pytest.mark.parametrize(("contract", "module", "source"), PLANTS,
                         ids=[f"{c}:{m}:{s.split()[1]}" for c, m, s in PLANTS])
def test_a_planted_violation_fails_its_contract(tmp_path: Path, contract: str, module: str,
                                                source: str) -> None:
    cwd, src = project_copy(tmp_path)
    (src / module).write_text(f'"""A planted violation."""\n\n{source}')
    done = lint(cwd, src)
    assert done.returncode != 0, done.stdout
    found = verdicts(done.stdout)
    assert found.pop(CONTRACTS[contract]) == "BROKEN", done.stdout
    assert set(found.values()) == {"KEPT"}, done.stdout
    planted = module.removesuffix(".py").replace("/", ".")
    assert re.search(rf"^-\s+{re.escape(planted)} -> ", done.stdout, re.MULTILINE), done.stdout
