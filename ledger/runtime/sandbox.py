"""The sandbox allowlist: which files the CLIs may open.

The sandbox root is ``OS_SANDBOX_ROOT`` when set, else the current directory; never the
folder the code is installed in (the bin/ shims set ``OS_SANDBOX_ROOT`` to their
checkout, so there it is the project folder). Databases live
under ``<root>/data/``, scenario files under ``<root>/scenarios/``, key files under
``<root>/keys/``. Paths are given relative to the root; absolute paths, ``..`` escapes,
repo-prefixed forms (``g/sandbox/...`` or ``<root folder name>/...``) and symlinks
leading out are refused with PATH_NOT_ALLOWED before anything is opened.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Final

from schema.errors import ErrorCode, SandboxError

DATA_DIR: Final = "data"
SCENARIO_DIR: Final = "scenarios"
#: key files (git-ignored): the ledger's checkpoint signing key, CURVE keys
KEYS_DIR: Final = "keys"
DEFAULT_DB: Final = "data/os_sandbox.db"
REPO_PREFIXES: Final = ("g/sandbox/", "g/sandbox")


def sandbox_root() -> Path:
    """``$OS_SANDBOX_ROOT``, else the current directory (resolved)."""
    env = os.environ.get("OS_SANDBOX_ROOT")
    return Path(env).resolve() if env else Path.cwd().resolve()


def resolve(path: str, area: str, *, must_exist: bool) -> Path:
    """Resolve ``path`` (relative to the sandbox root) inside ``<root>/<area>/``."""
    root = sandbox_root()
    if not path or "\x00" in path:
        raise SandboxError(ErrorCode.PATH_NOT_ALLOWED, "empty or invalid path", field="path")
    pure = PurePosixPath(path)
    if pure.is_absolute() or path.startswith("~"):
        raise SandboxError(ErrorCode.PATH_NOT_ALLOWED,
                           f"{path}: absolute paths are not allowed; give a path relative to "
                           f"the sandbox root, e.g. {area}/NAME", field="path")
    if ".." in pure.parts:
        raise SandboxError(ErrorCode.PATH_NOT_ALLOWED, f"{path}: '..' is not allowed",
                           field="path")
    areas = (DATA_DIR, SCENARIO_DIR, KEYS_DIR)
    if path.startswith(REPO_PREFIXES) or (pure.parts and pure.parts[0] == root.name
                                          and pure.parts[0] not in areas):
        raise SandboxError(ErrorCode.PATH_NOT_ALLOWED,
                           f"{path}: repo-prefixed paths are not allowed; give it relative "
                           f"to the sandbox root, e.g. {area}/NAME", field="path")
    if not pure.parts or pure.parts[0] != area or len(pure.parts) < 2:
        raise SandboxError(ErrorCode.PATH_NOT_ALLOWED,
                           f"{path}: only files under {area}/ are allowed here", field="path")
    base = root / area  # not resolved: a symlinked area leading out is refused too
    target = (root / pure).resolve()
    if not target.is_relative_to(base):
        raise SandboxError(ErrorCode.PATH_NOT_ALLOWED,
                           f"{path}: resolves outside {area}/ (symlink?)", field="path")
    if must_exist and not target.is_file():
        raise SandboxError(ErrorCode.FILE_NOT_FOUND, f"{path}: no such file", field="path")
    return target


def resolve_db(path: str | None) -> Path:
    return resolve(path or DEFAULT_DB, DATA_DIR, must_exist=False)


def resolve_scenario(path: str) -> Path:
    return resolve(path, SCENARIO_DIR, must_exist=True)


def resolve_key(path: str, *, must_exist: bool = False) -> Path:
    """A key file under ``<root>/keys/``."""
    return resolve(path, KEYS_DIR, must_exist=must_exist)


OUTPUT_DIRS: Final = ("logs", DATA_DIR)


def resolve_output_dir(path: str) -> Path:
    """A directory for reports, under ``<root>/logs/`` or ``<root>/data/``."""
    first = PurePosixPath(path).parts[0] if path and not path.startswith("/") else ""
    area = first if first in OUTPUT_DIRS else OUTPUT_DIRS[0]
    return resolve(path, area, must_exist=False)
