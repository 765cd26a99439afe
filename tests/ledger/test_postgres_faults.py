"""Bad input and faults on PostgreSQL (issue 11): each gets a specific error code and
message, nothing acknowledged is lost, nothing half-written stays, and no password ever
appears in a ready line, a log, an error or any other output.

Databases come from the session's throwaway cluster (tests/support/pg.py); the tests
that stop, kill or replicate a server get clusters of their own (``pg_clusters``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from agents.client import AgentClient
from agents.tools.pgcluster import PgUrl, free_port
from ledger.log.verify import verify_store
from ledger.plans.ledger import Ledger
from ledger.storage import postgres_store
from ledger.storage.factory import initialise_store, open_store, store_exists
from ledger.storage.postgres import pg_locator
from ledger.storage.rows import Plan
from schema.errors import CoordinatorError, StorageError
from tests.ledger.test_cli import cli
from tests.support.buses import BusFactory
from tests.support.helpers import Cmds
from tests.support.pg import ClusterFactory, PgServer
from tests.support.pgstore import open_pg_store, store_url

FLOW = "scenarios/L3_PLAN_FLOW_001.json"
#: A password that must never be printed (it is wrong: the server refuses it).
WRONG = "Wr0ng-S3cret-ZZ"
#: Every console script that takes --db, with arguments that read (and, for init_db and
#: apply-scenario, write) the database.
CLIS: list[tuple[str, ...]] = [
    ("os-init-db",), ("os-l3-plan", "list-plans"), ("os-l3-plan", "apply-scenario", FLOW),
    ("os-l2-query", "summary"), ("os-verify-chain",), ("os-healthcheck",),
    ("os-truth-sync", "--out", "logs/truth")]


def with_password(url: PgUrl, password: str, dbname: str | None = None,
                  user: str | None = None) -> str:
    return (f"postgresql://{quote(user or url.user, safe='')}:{quote(password, safe='')}"
            f"@{url.host}:{url.port}/{quote(dbname or url.dbname, safe='')}")


def secret(pg_server: PgServer) -> str:
    if pg_server.admin.password is None:
        pytest.fail("these tests need the superuser's password (the throwaway cluster's, "
                    "or one in L3_TEST_PG_URL)")
    return pg_server.admin.password


def nothing_printed(run: Any, *secrets: str) -> None:
    text = json.dumps(run.out) + run.err
    for value in secrets:
        assert value not in text and quote(value, safe="") not in text


def no_passfile_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq finds no password anywhere else (the tests give it in the URL or not at all)."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent/pgpass")


def writer_pid(admin: PgUrl, dbname: str) -> int:
    with admin.connect() as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND "
                           "application_name = 'l3-ledger writer'", (dbname,)).fetchone()
    assert row is not None, "no ledger writer session"
    return int(row[0])


def terminate(admin: PgUrl, pid: int) -> None:
    with admin.connect() as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (
            True,)


def ledger_refused(sandbox: Path, db: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run a ledger that must refuse to start: (exit status, ready line, stderr)."""
    done = subprocess.run([sys.executable, "-m", "ledger.server", "--db", db, "--bind",
                           "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "OS_SANDBOX_ROOT": str(sandbox)})
    ready = json.loads(done.stdout.splitlines()[0])
    assert ready["ok"] is False
    return done.returncode, ready, done.stderr


# --- what cannot be opened ------------------------------------------------------------


@pytest.fixture
def empty_db(pg_server: PgServer) -> Iterator[PgUrl]:
    """A database without the ledger schema."""
    url = pg_server.databases.create(prefix="l3empty")
    yield url
    pg_server.databases.drop(url.dbname)


#: name -> (the code, the exit status) of every URL that cannot be used
BAD_URLS: dict[str, tuple[str, int]] = {
    "unreachable": ("DB_UNREACHABLE", 3), "wrong password": ("DB_AUTH_FAILED", 3),
    "no password": ("DB_AUTH_FAILED", 3), "unknown role": ("DB_AUTH_FAILED", 3),
    "no such database": ("DB_NOT_INITIALISED", 3), "bad URL": ("INVALID_VALUE", 2)}


def bad_url(name: str, pg_server: PgServer, pg_db: PgUrl) -> str:
    admin, password = pg_server.admin, secret(pg_server)
    return {
        "unreachable": f"postgresql://{admin.user}@127.0.0.1:{free_port()}/x",
        "wrong password": with_password(pg_db, WRONG),
        "no password": f"postgresql://{admin.user}@{admin.host}:{admin.port}/{pg_db.dbname}",
        "unknown role": with_password(pg_db, WRONG, user="l3-nobody"),
        "no such database": with_password(pg_db, password, dbname="l3_missing_db"),
        "bad URL": with_password(pg_db, password) + "?bogus_option=1"}[name]


#: each bad URL through one CLI or another (they share one way to a store), the wrong
#: password through three whose error paths differ (init, verify's integrity thread,
#: the health report)
CLI_CASES = [("wrong password", CLIS[0]), ("wrong password", CLIS[4]),
             ("wrong password", CLIS[5]), ("unreachable", CLIS[3]), ("no password", CLIS[1]),
             ("unknown role", CLIS[2]), ("no such database", CLIS[0]), ("bad URL", CLIS[6])]
#: the same through the ledger process
LEDGER_CASES = ["unreachable", "wrong password", "no such database", "bad URL"]


@pytest.mark.parametrize(("name", "command"), CLI_CASES,
                         ids=[f"{n}-{' '.join(c[:2])}" for n, c in CLI_CASES])
def test_every_cli_names_what_is_wrong_and_prints_no_password(
        pg_server: PgServer, pg_db: PgUrl, sandbox: Path, monkeypatch: pytest.MonkeyPatch,
        name: str, command: tuple[str, ...]) -> None:
    no_passfile_env(monkeypatch)
    code, rc = BAD_URLS[name]
    url = bad_url(name, pg_server, pg_db)
    if command[0] == "os-healthcheck":  # one JSON report, the failure in it
        run = cli(sandbox, command[0], "--db", url, rc=1)
        assert run.out["checks"][0]["detail"]["code"] == code, run.out
    else:
        run = cli(sandbox, *command[:1], "--db", url, *command[1:], rc=rc)
        assert run.out["error"]["code"] == code, run.out
        assert run.out["error"]["message"]
    nothing_printed(run, WRONG, secret(pg_server))
    if name == "no such database":
        with psycopg.connect(with_password(pg_db, secret(pg_server), dbname="postgres")
                             ) as conn:  # init_db creates no database
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = "
                                "'l3_missing_db'").fetchone() is None


def test_a_database_without_the_schema_is_not_initialised_until_init_db(
        empty_db: PgUrl, sandbox: Path) -> None:
    url = store_url(empty_db)
    assert store_exists(pg_locator(url)) is False
    run = cli(sandbox, "os-verify-chain", "--db", url, rc=3)
    assert run.out["error"]["code"] == "DB_NOT_INITIALISED"
    assert "bin/init_db --db postgresql://" in run.out["error"]["message"]
    with pytest.raises(StorageError) as refused:
        open_store(url)
    assert refused.value.code == "DB_NOT_INITIALISED"
    with psycopg.connect(url) as conn:  # nothing was created by trying
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                            ).fetchone() == (0,)
    made = cli(sandbox, "os-init-db", "--db", url).out
    assert (made["created"], made["schema_version"], made["events"]) == (True, "1", 0)
    assert initialise_store(url).created is False
    with open_store(url, readonly=True) as store:
        assert store.list_plans() == []


def test_a_schema_of_another_version_is_refused_and_left_alone(
        pg_db: PgUrl, sandbox: Path) -> None:
    url = store_url(pg_db)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    error = cli(sandbox, "os-init-db", "--db", url, rc=3).out["error"]
    assert error["code"] == "DB_SCHEMA_VERSION"
    assert error["details"] == {"found": "2", "expected": "1"}
    with pytest.raises(StorageError) as refused:
        open_store(url, readonly=True)
    assert refused.value.code == "DB_SCHEMA_VERSION"
    rc, ready, _ = ledger_refused(sandbox, url)
    assert (rc, ready["error"]["code"]) == (3, "DB_SCHEMA_VERSION")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT value FROM meta").fetchall() == [("2",)]
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)


@pytest.mark.parametrize("name", LEDGER_CASES)
def test_the_ledger_refuses_what_it_cannot_use_with_the_code_in_its_ready_line(
        pg_server: PgServer, pg_db: PgUrl, sandbox: Path, monkeypatch: pytest.MonkeyPatch,
        name: str) -> None:
    no_passfile_env(monkeypatch)
    status, ready, stderr = ledger_refused(sandbox, bad_url(name, pg_server, pg_db))
    assert (ready["error"]["code"], status) == BAD_URLS[name]
    assert ready["error"]["message"]
    for value in (WRONG, secret(pg_server)):
        assert value not in json.dumps(ready) + stderr


# --- passwords ------------------------------------------------------------------------


@pytest.mark.parametrize("command", [CLIS[0], CLIS[2], CLIS[5], CLIS[6]],
                         ids=["init_db", "apply-scenario", "healthcheck", "truth_sync"])
def test_a_password_in_the_url_is_never_printed_by_a_cli(
        pg_server: PgServer, pg_db: PgUrl, sandbox: Path, monkeypatch: pytest.MonkeyPatch,
        command: tuple[str, ...]) -> None:
    """The right password in the URL: the CLI works and shows the URL with *** (and
    truth_sync's files do not hold it either)."""
    no_passfile_env(monkeypatch)
    password = secret(pg_server)
    url = with_password(pg_db, password)
    run = cli(sandbox, *command[:1], "--db", url, *command[1:])
    nothing_printed(run, password)
    if command[0] == "os-init-db":
        assert run.out["db"].startswith(f"postgresql://{pg_db.user}:***@")
    for written in (sandbox / "logs").rglob("*"):
        assert written.is_dir() or password not in written.read_text()


def test_a_password_in_the_url_is_never_printed_by_the_processes(
        pg_server: PgServer, pg_db: PgUrl, sandbox: Path, bus_factory: BusFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """run_scenario's report, the ledger's ready line, its (verbose) log and PING show
    the URL with *** instead."""
    no_passfile_env(monkeypatch)
    password = secret(pg_server)
    url = with_password(pg_db, password)
    scenario = cli(sandbox, "os-run-scenario", "scenarios/L3_PLAN_FLOW_002_LINKS.json",
                   "--db", url)
    assert scenario.out["bus"]["db"].startswith(f"postgresql://{pg_db.user}:***@")
    nothing_printed(scenario, password)
    bus = bus_factory.start(url, ledger_args=["--verbose"], ready=True)
    assert bus.ledger.ready["db"].startswith(f"postgresql://{pg_db.user}:***@")
    with AgentClient(bus.front, "probe") as probe:
        status = json.dumps(probe.ping()) + json.dumps(probe.query("summary"))
        assert probe.send_command(_body(Cmds().create_plan("P-PW"))).ok
    bus.stop()
    logs = "".join(p.read_text() for p in sandbox.rglob("*.log"))
    assert "ledger" in logs
    for text in (json.dumps(bus.ledger.ready), status, logs):
        assert password not in text and quote(password, safe="") not in text


# --- the session going away -----------------------------------------------------------


def test_a_session_lost_mid_transaction_commits_nothing_and_stops_the_store(
        pg_server: PgServer, pg_db: PgUrl) -> None:
    cmds = Cmds()
    with open_pg_store(pg_db) as store:
        ledger = Ledger(store)
        ledger.apply(cmds.create_plan("P-1"))
        before = (store.head(), store.load_state())
        with pytest.raises(StorageError) as lost, store.transaction() as tx:
            tx.insert_plan(Plan("P-2", "t", "Liam", "ACTIVE", 1, "x", "x"))
            terminate(pg_server.admin, writer_pid(pg_server.admin, pg_db.dbname))
            tx.get_plan("P-1")  # the next round trip finds the session gone
        assert lost.value.code == "DB_CONNECTION_LOST"
        assert "nothing of the transaction was committed" in lost.value.message
        assert (store.head(), store.load_state()) == before  # reads go on, on their own
        with pytest.raises(StorageError) as refused:  # this store writes no more
            ledger.apply(cmds.add_item("P-1", "I-1"))
        assert refused.value.code == "DB_CONNECTION_LOST"
        assert "writes no more" in refused.value.message
    with open_pg_store(pg_db) as again:
        assert again.head() == before[0]
        assert Ledger(again).apply(cmds.add_item("P-1", "I-1")).status == "APPLIED"


@pytest.mark.parametrize("committed", [False, True])
def test_a_session_lost_during_commit_leaves_the_outcome_to_the_command_id(
        pg_server: PgServer, pg_db: PgUrl, monkeypatch: pytest.MonkeyPatch,
        committed: bool) -> None:
    """The session dies with COMMIT on its way (``committed``: after the server committed,
    before the answer came back): DB_CONNECTION_LOST, outcome unknown; resending the
    command id applies it exactly once either way."""
    real = postgres_store._PgTx.send

    def send(tx: Any, *then: str) -> Any:
        if "COMMIT" not in then:
            return real(tx, *then)
        if committed:
            real(tx, *then)
        terminate(pg_server.admin, writer_pid(pg_server.admin, pg_db.dbname))
        if committed:
            tx._conn.execute("SELECT 1")  # raises: the answer is lost with the session
        return real(tx, *then)

    command = Cmds().create_plan("P-1")
    with open_pg_store(pg_db) as store:
        monkeypatch.setattr(postgres_store._PgTx, "send", send)
        with pytest.raises(StorageError) as lost:
            Ledger(store).apply(command)
        monkeypatch.undo()
    assert lost.value.code == "DB_CONNECTION_LOST"
    assert "may or may not have been committed" in lost.value.message
    with open_pg_store(pg_db) as store:
        again = Ledger(store).apply(command)
        assert (again.status, again.replayed) == ("APPLIED", committed)
        assert [e.command_id for e in store.iter_events()] == [command["command_id"]]


def test_a_ledger_whose_session_is_lost_answers_db_connection_lost_and_exits(
        pg_server: PgServer, pg_db: PgUrl, bus_factory: BusFactory, sandbox: Path) -> None:
    bus = bus_factory.start(store_url(pg_db), ready=True)
    cmds = Cmds()
    lost = cmds.add_item("P-1", "I-1")
    with AgentClient(bus.front, "Liam", session_id="S-TEST", retries=0) as agent:
        assert agent.send_command(_body(cmds.create_plan("P-1"))).ok
        terminate(pg_server.admin, writer_pid(pg_server.admin, pg_db.dbname))
        reply = agent.send_command(_body(lost), command_id=lost["command_id"])
        assert (reply.ok, reply.status) == (False, None)
        assert reply.error is not None and reply.error["code"] == "DB_CONNECTION_LOST"
        assert bus.ledger.proc.wait(30) == 3  # it stopped writing, and said why
        last = (sandbox / "ledger.log").read_text().strip().splitlines()[-1]
        assert json.loads(last)["error"]["code"] == "DB_CONNECTION_LOST"
    bus.restart_ledger()
    bus_factory.wait_ready(bus)
    with AgentClient(bus.front, "Liam", session_id="S-TEST") as agent:  # retries
        again = agent.send_command(_body(lost), command_id=lost["command_id"])
        assert (again.ok, again.replayed, again.seq) == (True, False, 2), again.error
        assert agent.query("verify")["chain_status"] == "OK"


def _body(command: dict[str, Any]) -> dict[str, Any]:
    """A command as an agent sends it (the header carries id, actor and session)."""
    return {k: v for k, v in command.items() if k not in ("command_id", "actor",
                                                         "session_id")}


def test_the_server_killed_mid_load_loses_nothing_acknowledged(
        pg_clusters: ClusterFactory, bus_factory: BusFactory) -> None:
    """SIGKILL of every server process while agents write: the ledger answers
    DB_CONNECTION_LOST (or the broker LEDGER_UNAVAILABLE) and exits; once the server and
    a new ledger are back, every acknowledged command is there, each once, and resending
    every command id applies each exactly once."""
    primary = pg_clusters.primary("p1")
    with primary.connect() as conn:
        conn.execute("CREATE DATABASE ledger")
    url = primary.url("ledger").url()
    bus = bus_factory.start(url, ready=True)
    acked: dict[str, int] = {}
    sent: list[str] = []
    enough, stop = threading.Event(), threading.Event()

    def load() -> None:
        with AgentClient(bus.front, "Liam", session_id="S-LOAD", timeout=2,
                         retries=0) as agent:
            assert agent.send_command(_body(Cmds().create_plan("P-L")), "plan-L").ok
            i = 0
            while not stop.is_set():
                cid = f"load-{i}"
                sent.append(cid)
                try:
                    reply = agent.send_command({"action": "ADD_ITEM", "plan_id": "P-L",
                                                "item_id": f"I-{i}", "title": "t"}, cid)
                except CoordinatorError:  # no reply in time: unknown
                    reply = None
                if reply is not None and reply.ok and reply.seq is not None:
                    acked[cid] = reply.seq
                if len(acked) >= 25:
                    enough.set()
                i += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        assert enough.wait(60)
        primary.kill()
        assert bus.ledger.proc.wait(30) == 3
    finally:
        stop.set()
        thread.join()
    primary.start()
    bus.restart_ledger()
    bus_factory.wait_ready(bus)
    with AgentClient(bus.front, "Liam", session_id="S-LOAD") as agent:  # with retries
        for i, cid in enumerate(sent):
            reply = agent.send_command({"action": "ADD_ITEM", "plan_id": "P-L",
                                        "item_id": f"I-{i}", "title": "t"}, cid)
            assert reply.ok, (cid, reply.error)
            if cid in acked:  # acknowledged before the kill: there, and not applied again
                assert (reply.replayed, reply.seq) == (True, acked[cid])
    with open_store(url, readonly=True) as store:
        ids = [e.command_id for e in store.iter_events()]
        assert sorted(ids) == sorted(["plan-L", *sent])  # each once
        assert verify_store(store)["chain_status"] == "OK"


# --- read-only databases ----------------------------------------------------------------


def test_a_database_that_takes_no_writes_answers_db_read_only(
        pg_server: PgServer, pg_db: PgUrl, bus_factory: BusFactory) -> None:
    bus = bus_factory.start(store_url(pg_db), ready=True)  # the writer session comes later
    with pg_server.admin.connect() as conn:
        conn.execute(f'ALTER DATABASE "{pg_db.dbname}" SET default_transaction_read_only = on')
    with AgentClient(bus.front, "Liam", retries=0) as agent:
        reply = agent.send_command(_body(Cmds().create_plan("P-1")))
        assert (reply.ok, reply.status) == (False, None)
        assert reply.error is not None and reply.error["code"] == "DB_READ_ONLY"
        assert agent.ping()["head_seq"] == 0
    assert bus.ledger.alive()  # not a lost session: it goes on answering


def test_a_standby_is_read_but_never_written(pg_clusters: ClusterFactory,
                                             sandbox: Path) -> None:
    primary = pg_clusters.primary("p1")
    with primary.connect() as conn:
        conn.execute("CREATE DATABASE ledger")
    initialise_store(primary.url("ledger").url())
    with open_store(primary.url("ledger").url()) as store:
        Ledger(store).apply(Cmds().create_plan("P-1"))
    standby = pg_clusters.standby(primary, "s1", synchronous=False)
    standby.wait_for_replay(primary.current_lsn())
    url = standby.url("ledger").url()
    rc, ready, _ = ledger_refused(sandbox, url)
    assert (rc, ready["error"]["code"]) == (3, "DB_READ_ONLY")
    run = cli(sandbox, "os-l3-plan", "--db", url, "apply-scenario", FLOW, rc=3)
    assert run.out["error"]["code"] == "DB_READ_ONLY"
    verified = cli(sandbox, "os-verify-chain", "--db", url).out
    assert (verified["chain_status"], verified["events"]) == ("OK", 1)


# --- damage ---------------------------------------------------------------------------------


def test_a_corrupt_page_is_damage_verify_chain_reports_and_the_ledger_refuses(
        pg_clusters: ClusterFactory, sandbox: Path) -> None:
    primary = pg_clusters.primary("p1")
    with primary.connect() as conn:
        conn.execute("CREATE DATABASE ledger")
    url = primary.url("ledger").url()
    initialise_store(url)
    cmds = Cmds()
    with open_store(url) as store:
        Ledger(store).apply_many([cmds.create_plan("P-1")] + [
            cmds.add_item("P-1", f"I-{i}", "x" * 200) for i in range(60)])
    assert cli(sandbox, "os-verify-chain", "--db", url).out["chain_status"] == "OK"
    with primary.connect("ledger") as conn:
        (relpath,) = conn.execute("SELECT pg_relation_filepath('events')").fetchone() or ("",)
    primary.stop()
    with open(primary.data_dir / relpath, "r+b") as f:  # the middle of block 0
        f.seek(4096)
        f.write(b"\xa5" * 256)
    primary.start()
    run = cli(sandbox, "os-verify-chain", "--db", url, rc=1)
    assert run.out["chain_status"] == "DAMAGED"
    assert run.out["error"]["code"] == "DB_DAMAGED"
    assert run.out["tables"] == ["events"]
    assert "amcheck" in run.out["error"]["message"]
    assert any("invalid page" in m for m in run.out["integrity_check"])
    rc, ready, _ = ledger_refused(sandbox, url, "--startup-check", "full")
    assert (rc, ready["error"]["code"]) == (3, "DB_DAMAGED")
