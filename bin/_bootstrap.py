#!/usr/bin/env python3
"""Create or refresh the project's .venv; every bin/ shim runs this first.

Usage: python3 bin/_bootstrap.py [EXTRA ...]   e.g. `test`

The venv is (re)installed when it is missing, when pyproject.toml changed since the
last install, or when an extra is asked for that was not installed. A lock file keeps
two shims started at once from installing over each other. All chatter goes to stderr
so a command's stdout stays one JSON object.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".bootstrap-stamp.json"


def _wanted(extras: list[str]) -> dict[str, object]:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return {"pyproject": digest, "extras": sorted(set(extras))}


def _fresh(wanted: dict[str, object]) -> bool:
    try:
        have = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return False
    if have.get("pyproject") != wanted["pyproject"]:
        return False
    return set(wanted["extras"]).issubset(have.get("extras", []))  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    extras = [a for a in argv if a]
    wanted = _wanted(extras)
    if _fresh(wanted):
        return 0
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(ROOT / ".venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _fresh(wanted):  # another shim finished the job while we waited
            return 0
        try:
            have = json.loads(STAMP.read_text())
            extras = sorted(set(extras) | set(have.get("extras", [])))
        except (OSError, ValueError):
            pass
        wanted = _wanted(extras)
        python = VENV / "bin" / "python"
        if not python.exists():
            print(f"bootstrap: creating {VENV.name}/", file=sys.stderr)
            venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        spec = "." + (f"[{','.join(extras)}]" if extras else "")
        print(f"bootstrap: installing {spec} into {VENV.name}/", file=sys.stderr)
        cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--editable", spec]
        done = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr)
        if done.returncode != 0:
            print("bootstrap: pip install failed", file=sys.stderr)
            return done.returncode
        STAMP.write_text(json.dumps(wanted))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
