"""`pip install .` (not editable) into a fresh venv: the console scripts work from any
folder, find their SQL as package data, and write only under the sandbox root
(``OS_SANDBOX_ROOT``, else the current directory), never under site-packages.

The wheel is built from a copy of the project's sources with this venv's setuptools
(what ``pip install .`` does, without build isolation, so no download) and installed
with ``--no-deps`` into a venv of its own; the dependencies (pyzmq, pydantic, ...) come
from this venv's site-packages through a path entry appended after the new venv's own
site-packages, so every ``schema``/``ledger``/``broker``/``agents`` module is the
installed copy (checked: ``__file__`` of each package).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import ROOT, SCENARIO_DIR

PACKAGES = ("schema", "ledger", "broker", "agents")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = sorted(PYPROJECT["project"]["scripts"])
#: bin/ shim name -> the console script it runs (`run_entry os-init-db ...`)
SHIMS = {p.name: p.read_text().split("run_entry ", 1)[1].split()[0]
         for p in sorted((ROOT / "bin").iterdir()) if "run_entry " in p.read_text()
         and not p.name.startswith("_")}
VERSION = PYPROJECT["project"]["version"]
FLOW = "scenarios/L3_PLAN_FLOW_001.json"


@dataclass
class Installed:
    venv: Path
    site: Path

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name

    def files(self) -> set[str]:
        """Everything under the venv's site-packages but bytecode caches."""
        return {str(p.relative_to(self.site)) for p in self.site.rglob("*")
                if "__pycache__" not in p.parts}


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet",
                    *args], check=True, capture_output=True, timeout=180)


def build_wheel(into: Path) -> Path:
    """The project's wheel, built from a copy of its sources (the build writes build/
    and *.egg-info next to pyproject.toml: not in the checkout)."""
    src = into / "src"
    src.mkdir(parents=True)
    shutil.copy2(ROOT / "pyproject.toml", src)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(into / "wheels"),
         str(src))
    (wheel,) = (into / "wheels").glob("*.whl")
    return wheel


def make_venv(path: Path) -> Path:
    """A fresh venv (no pip of its own: this venv's pip installs into it with --python)
    that takes the dependencies from this venv; returns its site-packages."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    (site,) = path.glob("lib/python*/site-packages")
    # a bare path line: appended to sys.path after the venv's own site-packages, and
    # this venv's .pth files (its editable install of the checkout) are NOT processed
    (site / "_deps_of_the_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return site


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    wheel = build_wheel(base)
    site = make_venv(base / "venv")
    _pip("--python", str(base / "venv" / "bin" / "python"), "install", "--no-deps",
         "--no-index", str(wheel))
    return Installed(base / "venv", site)


def run(inst: Installed, name: str, *args: str, cwd: Path,
        env: dict[str, str] | None = None, rc: int = 0) -> dict[str, Any]:
    """Run an installed script the way a user would: from ``cwd``, with no
    OS_SANDBOX_ROOT unless ``env`` gives one; stdout must be one JSON object."""
    base = {k: v for k, v in os.environ.items() if k != "OS_SANDBOX_ROOT"}
    done = subprocess.run([str(inst.bin(name)), *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == rc, (name, args, done.returncode, done.stdout, done.stderr)
    out = json.loads(done.stdout)
    assert isinstance(out, dict), done.stdout
    return out


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def empty_folder_with_the_scenario(base: Path) -> Path:
    folder = base / "somewhere" / "else"
    (folder / "scenarios").mkdir(parents=True)
    shutil.copy2(SCENARIO_DIR / "L3_PLAN_FLOW_001.json", folder / "scenarios")
    return folder


def test_the_installed_packages_are_the_wheel_not_the_checkout(installed: Installed) -> None:
    code = "import json, " + ", ".join(PACKAGES) + "; print(json.dumps({m.__name__: " \
           "m.__file__ for m in (" + ", ".join(PACKAGES) + ")}))"
    done = subprocess.run([str(installed.bin("python")), "-c", code], cwd=installed.venv,
                          capture_output=True, text=True, timeout=60, check=True)
    for name, path in json.loads(done.stdout).items():
        assert Path(path).is_relative_to(installed.site), (name, path)


def test_package_data_and_py_typed_ship(installed: Installed) -> None:
    files = installed.files()
    for name in ("plan_schema.sql", "event_log_schema.sql", "scenario.schema.json"):
        assert f"schema/{name}" in files
    for package in PACKAGES:
        assert f"{package}/py.typed" in files
    for name in ("index.html", "board.js", "board.css"):  # the board's page
        assert f"agents/tools/board/static/{name}" in files
    published = json.loads((installed.site / "schema" / "scenario.schema.json").read_text())
    assert published == json.loads((ROOT / "schema" / "scenario.schema.json").read_text())


def test_scripts_work_from_any_folder_and_write_only_there(installed: Installed,
                                                         tmp_path: Path) -> None:
    here = empty_folder_with_the_scenario(tmp_path)
    before = installed.files()
    created = run(installed, "os-init-db", cwd=here)
    assert created["ok"] is True and created["db"] == "data/os_sandbox.db"
    applied = run(installed, "os-l3-plan", "apply-scenario", FLOW, cwd=here)
    assert (applied["ok"], applied["events_written"], applied["conflicts"]) == (True, 7, 1)
    assert run(installed, "os-verify-chain", cwd=here)["chain_status"] == "OK"
    plans = run(installed, "os-l3-plan", "list-plans", cwd=here)["plans"]
    assert [(p["plan_id"], p["version"]) for p in plans] == [("P-L3-DEMO-001", 1)]
    truth = run(installed, "os-truth-sync", "--out", "logs/truth", cwd=here)
    assert truth["ok"] is True
    # everything the commands wrote is under the current folder ...
    assert files_under(here) - {"scenarios/L3_PLAN_FLOW_001.json"} <= {
        "data/os_sandbox.db", "data/os_sandbox.db-wal", "data/os_sandbox.db-shm",
        "data/os_sandbox.db.lock", "logs/truth/truth.json", "logs/truth/truth.md"}
    assert (here / "data" / "os_sandbox.db").is_file()
    # ... and nothing under the install location (the finding: site-packages/data/)
    assert installed.files() == before
    assert not (installed.site / "data").exists()
    assert not (installed.venv / "data").exists()


def test_os_sandbox_root_wins_over_the_current_folder(installed: Installed,
                                                      tmp_path: Path) -> None:
    root = empty_folder_with_the_scenario(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {"OS_SANDBOX_ROOT": str(root)}
    run(installed, "os-init-db", cwd=cwd, env=env)
    run(installed, "os-l3-plan", "apply-scenario", FLOW, cwd=cwd, env=env)
    assert (root / "data" / "os_sandbox.db").is_file()
    assert files_under(cwd) == set()
    refused = run(installed, "os-l3-plan", "apply-scenario", FLOW, cwd=cwd, rc=2)
    assert refused["error"]["code"] == "FILE_NOT_FOUND"  # cwd has no scenarios/


def test_run_scenario_starts_its_own_installed_bus_from_any_folder(installed: Installed,
                                                                  tmp_path: Path) -> None:
    here = empty_folder_with_the_scenario(tmp_path)
    before = installed.files()
    report = run(installed, "os-run-scenario", FLOW, "--db", "data/bus.db", cwd=here)
    assert report["ok"] is True and report["verify"]["chain_status"] == "OK"
    assert report["monitor"]["seqs"] == list(range(1, 8))
    assert (here / "data" / "bus.db").is_file()
    assert {p.split("/")[0] for p in files_under(here)} <= {"scenarios", "data", "logs"}
    assert installed.files() == before


def test_every_console_script_has_a_bin_shim() -> None:
    assert sorted(SHIMS.values()) == SCRIPTS


@pytest.mark.parametrize("shim", sorted(SHIMS))
def test_every_installed_script_has_version(installed: Installed, tmp_path: Path,
                                            shim: str) -> None:
    out = run(installed, SHIMS[shim], "--version", cwd=tmp_path)
    assert out == {"name": shim, "version": VERSION}
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize("shim", sorted(SHIMS))
def test_every_bin_shim_has_version(tmp_path: Path, shim: str) -> None:
    done = subprocess.run([str(ROOT / "bin" / shim), "--version"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=90, check=True)
    assert json.loads(done.stdout) == {"name": shim, "version": VERSION}
