"""Shared fixtures: stores of every backend (PostgreSQL on a throwaway cluster), a ledger
over them, a sandbox root, ledger and
broker processes (tests/support/buses.py), ZeroMQ contexts and sockets
(tests/support/sockets.py) that are always stopped and closed at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.tools.launch import Bus
from ledger.plans.ledger import Ledger
from ledger.storage.base import Store
from ledger.storage.memory import MemoryStore
from ledger.storage.sqlite import SqliteStore
from tests.support import pg as pg_fixtures
from tests.support.buses import BusFactory
from tests.support.helpers import Cmds, init_db, make_sandbox
from tests.support.pg import TemplateSetup
from tests.support.pgstore import load_schema, open_pg_store
from tests.support.sockets import Context, SocketFactory, ZmqTracker

# PostgreSQL (tests/support/pg.py): a throwaway cluster per session (per xdist worker),
# a template database holding the ledger schema, one copy of it per test
pg_server = pg_fixtures.pg_server
pg_db = pg_fixtures.pg_db
pg_clusters = pg_fixtures.pg_clusters


@pytest.fixture(scope="session")
def pg_template_setup() -> TemplateSetup:
    return load_schema


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """An initialised, empty ledger database file."""
    return init_db(tmp_path / "data" / "ledger.db")


@pytest.fixture
def sqlite_store(sqlite_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(sqlite_path)
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same test against every Store backend (postgres: a fresh database)."""
    s: Store
    if request.param == "sqlite":
        s = SqliteStore(init_db(tmp_path / "data" / "ledger.db"))
    elif request.param == "postgres":
        s = open_pg_store(request.getfixturevalue("pg_db"))
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
    root = make_sandbox(tmp_path)
    monkeypatch.setenv("OS_SANDBOX_ROOT", str(root))
    return root


# --- processes ------------------------------------------------------------------------


@pytest.fixture
def bus_factory(sandbox: Path) -> Iterator[BusFactory]:
    """Starts ledgers, brokers and buses in ``sandbox``; stops them all after the test."""
    factory = BusFactory(sandbox)
    yield factory
    factory.close()


@pytest.fixture
def bus(bus_factory: BusFactory) -> Bus:
    """A ledger and a broker on ``data/bus.db``, the ledger reported up by the broker."""
    return bus_factory.start(ready=True)


@pytest.fixture(scope="module")
def module_bus_factory(request: pytest.FixtureRequest,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[BusFactory]:
    """One factory (and sandbox root) for a whole test module, for files whose tests
    share one bus; its processes are stopped after the module's last test."""
    name = request.module.__name__.rpartition(".")[2]
    factory = BusFactory(make_sandbox(tmp_path_factory.mktemp(name)))
    yield factory
    factory.close()


# --- ZeroMQ ---------------------------------------------------------------------------


@pytest.fixture
def zmq_tracker() -> Iterator[ZmqTracker]:
    tracker = ZmqTracker()
    yield tracker
    tracker.close()


@pytest.fixture
def zmq_ctx(zmq_tracker: ZmqTracker) -> Context:
    """A ZeroMQ context destroyed (every socket on it closed, linger 0) after the test."""
    return zmq_tracker.context()


@pytest.fixture
def zmq_socket(zmq_tracker: ZmqTracker, zmq_ctx: Context) -> SocketFactory:
    """``zmq_socket(zmq.DEALER)``: a socket on ``zmq_ctx`` with linger 0, closed after
    the test."""
    return lambda kind: zmq_tracker.socket(kind, zmq_ctx)


@pytest.fixture(scope="module")
def module_zmq_ctx() -> Iterator[Context]:
    """A ZeroMQ context for module-scoped fixtures, destroyed after the module."""
    tracker = ZmqTracker()
    yield tracker.context()
    tracker.close()


# --- tests this machine could not run -----------------------------------------------


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Tests skipped because something they need is missing here (their reason starts
    with "not run:", e.g. the board's browser tests without chromium) are listed in a
    loud section of their own: a run that could not test something says so."""
    not_run = [r for r in terminalreporter.stats.get("skipped", [])
               if "not run:" in str(getattr(r, "longrepr", ""))]
    if not not_run:
        return
    terminalreporter.section(f"{len(not_run)} TEST(S) NOT RUN ON THIS MACHINE", sep="!",
                             red=True, bold=True)
    for report in not_run:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        terminalreporter.line(f"NOT RUN {report.nodeid}: {reason}", red=True, bold=True)
