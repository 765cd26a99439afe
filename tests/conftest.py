"""Shared fixtures: stores of every backend, a ledger over them, a sandbox root."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.plans.ledger import Ledger
from ledger.storage.base import Store
from ledger.storage.memory import MemoryStore
from ledger.storage.sqlite import SqliteStore
from tests.support.helpers import SCENARIO_DIR, Cmds, init_db


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """An initialised, empty ledger database file."""
    return init_db(tmp_path / "data" / "ledger.db")


@pytest.fixture
def sqlite_store(sqlite_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(sqlite_path)
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same test against every Store backend."""
    s: Store
    if request.param == "sqlite":
        s = SqliteStore(init_db(tmp_path / "data" / "ledger.db"))
    else:
        s = MemoryStore()
    yield s
    s.close()


@pytest.fixture
def ledger(store: Store) -> Ledger:
    return Ledger(store)


@pytest.fixture
def cmds() -> Cmds:
    return Cmds()


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """OS_SANDBOX_ROOT pointing at a fresh directory holding a copy of scenarios/."""
    root = tmp_path / "sbx"
    root.mkdir()
    shutil.copytree(SCENARIO_DIR, root / "scenarios")
    monkeypatch.setenv("OS_SANDBOX_ROOT", str(root))
    return root
