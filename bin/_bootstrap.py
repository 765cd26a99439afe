#!/usr/bin/env python3
"""Create or refresh the project's .venv; every bin/ shim runs this first.

Usage: python3 bin/_bootstrap.py [EXTRA ...]   e.g. `test`

The venv is (re)installed when it is missing, when pyproject.toml changed since the
last install, or when an extra is asked for that was not installed. It is built anew
when it belongs to another tree: a checkout copied (`cp -a proj proj2`) or moved
(`mv`) carries a .venv whose scripts, interpreter paths and editable install all point
at the original folder, so running it would run the other tree's code on the other
tree's data. The stamp records the checkout's real path; that, the venv's base
interpreter and the editable install's target are checked on every run (a few small
file reads). A lock file keeps two shims started at once from installing over each
other. All chatter goes to stderr so a command's stdout stays one JSON object.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".bootstrap-stamp.json"


def _wanted(extras: list[str]) -> dict[str, Any]:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return {"root": str(ROOT), "pyproject": digest, "extras": sorted(set(extras))}


def _stamp() -> dict[str, Any]:
    try:
        have = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return {}
    return have if isinstance(have, dict) else {}


def _base_home() -> str | None:
    """The ``home`` of pyvenv.cfg: the folder of the interpreter the venv was made from."""
    try:
        lines = (VENV / "pyvenv.cfg").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() == "home":
            return value.strip()
    return None


def _editable_here() -> bool:
    """Does the venv's editable install of the project point at this checkout?"""
    finder_entry = repr(str(ROOT / "schema"))  # setuptools' finder maps package -> folder
    for site in VENV.glob("lib/python*/site-packages"):
        for path in site.glob("__editable__*"):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if finder_entry in text or str(ROOT) in text.splitlines():  # or a .pth path
                return True
    return False


def foreign(have: dict[str, Any]) -> str | None:
    """Why the venv must be built anew (it is not this checkout's), or None."""
    if not PYTHON.exists():
        return "no venv yet"
    recorded = have.get("root")  # stamps written before it was recorded lack it
    if recorded is not None and recorded != str(ROOT):
        return f"the venv was built for {recorded}, not this checkout (copied or moved?)"
    home = _base_home()
    if home is None or not Path(home).is_dir():
        return "the venv's base interpreter is gone"
    if not _editable_here():
        return "the venv's editable install points at another tree"
    return None


def stale(wanted: dict[str, Any]) -> str | None:
    """Why the venv needs work before a command may run from it, or None: up to date."""
    have = _stamp()
    reason = foreign(have)
    if reason is not None:
        return reason
    if have.get("pyproject") != wanted["pyproject"]:
        return "pyproject.toml changed"
    if not set(wanted["extras"]).issubset(have.get("extras", [])):
        return f"extras {', '.join(wanted['extras'])} not installed"
    return None


def main(argv: list[str]) -> int:
    extras = [a for a in argv if a]
    wanted = _wanted(extras)
    if stale(wanted) is None:
        return 0
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(ROOT / ".venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reason = stale(wanted)
        if reason is None:  # another shim finished the job while we waited
            return 0
        have = _stamp()
        extras = sorted(set(extras) | set(have.get("extras", [])))
        wanted = _wanted(extras)
        if foreign(have) is not None:
            print(f"bootstrap: creating {VENV.name}/ ({reason})", file=sys.stderr)
            STAMP.unlink(missing_ok=True)
            venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        spec = "." + (f"[{','.join(extras)}]" if extras else "")
        print(f"bootstrap: installing {spec} into {VENV.name}/", file=sys.stderr)
        cmd = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--editable", spec]
        done = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr)
        if done.returncode != 0:
            print("bootstrap: pip install failed", file=sys.stderr)
            return done.returncode
        STAMP.write_text(json.dumps(wanted))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
