"""bin/_bootstrap.py: a checkout that was copied (`cp -a proj proj2`) or moved (`mv`)
rebuilds its .venv instead of running the other tree's code.

The default suite checks the decision on real trees and venvs (a venv with an editable
install of its tree, as the bootstrap makes it, without downloading the dependencies):
fresh in its own tree, foreign in a copy or after a move, and shows what the copy would
run without the rebuild (the original's code). ``test_soak_copied_checkout_rebuilds``
does the whole thing through the bin/ shims, two full venv builds (``bin/test --soak``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.helpers import ROOT

TREE = ("pyproject.toml", "bin", "schema", "ledger", "broker", "agents", "scenarios")
WHICH_CODE = "import json, ledger; print(json.dumps(ledger.__file__))"


def copy_checkout(dst: Path) -> Path:
    """The files a checkout has (no .venv, no data), as a fresh clone would."""
    dst.mkdir(parents=True)
    for name in TREE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / name)
    return dst


def load_bootstrap(tree: Path) -> ModuleType:
    """``tree``'s own bin/_bootstrap.py (its ROOT is that tree)."""
    spec = importlib.util.spec_from_file_location(f"bootstrap_{tree.name}",
                                                  tree / "bin" / "_bootstrap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quick_venv(tree: Path) -> None:
    """What the bootstrap builds (a venv with the tree installed editable, and its
    stamp), minus pip and the dependencies: this venv's pip installs into it."""
    venv.EnvBuilder(with_pip=False).create(tree / ".venv")
    wheels = tree / "wheels"
    build = ("import sys; from setuptools import build_meta; "
             "print(build_meta.build_editable(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", build, str(wheels)], cwd=tree, check=True,
                   capture_output=True, timeout=120)
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet",
                    "--python", str(tree / ".venv" / "bin" / "python"), "install",
                    "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=120)
    boot = load_bootstrap(tree)
    boot.STAMP.write_text(json.dumps(boot._wanted([])))  # as main() does after pip


def code_run_by(tree: Path) -> Path:
    """Where the ``ledger`` package that the tree's venv imports lives."""
    done = subprocess.run([str(tree / ".venv" / "bin" / "python"), "-c", WHICH_CODE],
                          cwd="/", capture_output=True, text=True, timeout=60, check=True)
    return Path(json.loads(done.stdout))


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = copy_checkout(tmp_path_factory.mktemp("boot") / "proj")
    quick_venv(tree)
    return tree


def test_own_tree_is_fresh(original: Path) -> None:
    boot = load_bootstrap(original)
    assert boot.stale(boot._wanted([])) is None  # the fast path: nothing to do
    assert code_run_by(original).is_relative_to(original)


def test_copied_checkout_is_foreign(original: Path, tmp_path: Path) -> None:
    copy = tmp_path / "proj2"
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True, timeout=60)
    # what running the copy's venv as it is would do: the original's code
    assert code_run_by(copy).is_relative_to(original)
    boot = load_bootstrap(copy)
    reason = boot.foreign(boot._stamp())
    assert reason is not None and str(original) in reason, reason
    assert boot.stale(boot._wanted([])) == reason
    # a stamp from before the checkout's path was recorded: the editable install tells
    stamp = json.loads(boot.STAMP.read_text())
    del stamp["root"]
    boot.STAMP.write_text(json.dumps(stamp))
    assert boot.foreign(boot._stamp()) == "the venv's editable install points at another tree"
    # the original itself is untouched by all this
    assert load_bootstrap(original).stale(boot._wanted([])) is None


def test_moved_checkout_is_foreign(tmp_path: Path) -> None:
    here = copy_checkout(tmp_path / "proj")
    quick_venv(here)
    boot = load_bootstrap(here)
    assert boot.stale(boot._wanted([])) is None
    there = tmp_path / "moved" / "proj"
    there.parent.mkdir()
    subprocess.run(["mv", str(here), str(there)], check=True, timeout=60)
    moved = load_bootstrap(there)
    reason = moved.foreign(moved._stamp())
    assert reason is not None and str(here) in reason, reason
    # its venv as it is looks for the code in the old folder, which is gone
    done = subprocess.run([str(there / ".venv" / "bin" / "python"), "-c", WHICH_CODE],
                          cwd="/", capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, done


def test_a_venv_of_a_vanished_interpreter_is_foreign(original: Path, tmp_path: Path) -> None:
    copy = tmp_path / "proj"
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True, timeout=60)
    boot = load_bootstrap(copy)
    boot.STAMP.write_text(json.dumps(boot._wanted([])))
    cfg = copy / ".venv" / "pyvenv.cfg"
    cfg.write_text("".join(f"home = {tmp_path / 'gone'}\n" if line.startswith("home") else
                           line for line in cfg.read_text().splitlines(keepends=True)))
    assert boot.foreign(boot._stamp()) == "the venv's base interpreter is gone"


def _shim(tree: Path, *args: str, cwd: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in ("OS_SANDBOX_ROOT", "VIRTUAL_ENV")}
    done = subprocess.run([str(tree / "bin" / "init_db"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout, done.stderr)
    out = json.loads(done.stdout)
    assert isinstance(out, dict)
    return out


@pytest.mark.soak
@pytest.mark.timeout(1200)
def test_soak_copied_checkout_rebuilds(tmp_path: Path) -> None:
    """The finding, end to end: `cp -a proj proj2` then proj2's bin/init_db. Two full
    bootstraps (a venv with pip and the dependencies each; ~10 s each with a warm pip
    cache), a third after `mv proj2 proj3`."""
    proj = copy_checkout(tmp_path / "proj")
    assert _shim(proj, cwd=tmp_path)["ok"] is True  # bootstraps proj/.venv
    assert code_run_by(proj).is_relative_to(proj)
    before = sorted(p.name for p in (proj / "data").iterdir())
    proj2 = tmp_path / "proj2"
    subprocess.run(["cp", "-a", str(proj), str(proj2)], check=True, timeout=120)
    shutil.rmtree(proj2 / "data")
    assert code_run_by(proj2).is_relative_to(proj)  # the copied venv runs proj's code
    assert _shim(proj2, cwd=tmp_path)["created"] is True  # rebuilt, then init_db
    assert code_run_by(proj2).is_relative_to(proj2)
    assert (proj2 / "data" / "os_sandbox.db").is_file()
    assert sorted(p.name for p in (proj / "data").iterdir()) == before
    shebang = (proj2 / ".venv" / "bin" / "os-init-db").read_text().splitlines()[0]
    assert shebang == f"#!{proj2 / '.venv' / 'bin' / 'python'}"
    proj3 = tmp_path / "proj3"
    subprocess.run(["mv", str(proj2), str(proj3)], check=True, timeout=60)
    assert _shim(proj3, "--version", cwd=tmp_path)["name"] == "init_db"
    assert code_run_by(proj3).is_relative_to(proj3)
