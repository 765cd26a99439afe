"""PostgreSQL fixtures: a throwaway cluster per test session, a template, a database per test.

Use them from a test module (or a conftest) by binding the fixtures to module names::

    from tests.support import pg as pg_fixtures
    pg_server = pg_fixtures.pg_server
    pg_db = pg_fixtures.pg_db

- ``pg_server`` (session): a cluster initdb'd with ``--no-sync`` and run with
  ``fsync=off`` in a temp dir (on tmpfs when /dev/shm exists: ``CREATE DATABASE`` is 20x
  faster there than on this machine's disk), a template database filled once by the
  ``pg_template_setup`` fixture (override it to load a schema), and the timings of each
  step. With ``L3_TEST_PG_URL`` set (a superuser URL of the user's own server; the
  password may come from libpq's environment or password file) no cluster is started:
  the template and every test database are throwaway databases created there, and only
  those are dropped.
- ``pg_db`` (function): the URL of a fresh database copied from the template
  (``CREATE DATABASE ... TEMPLATE``), dropped after the test.
- ``pg_clusters`` (function): a :class:`ClusterFactory` for tests that need their own
  primaries and standbys; all are destroyed after the test.

When the server programs are missing or the cluster cannot start, every test that uses
these fixtures FAILS with the reason (``pytest.fail``); none is skipped.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest

from agents.tools.pgcluster import (
    Credentials,
    PgCluster,
    PgClusterError,
    PgUrl,
    ThrowawayDatabases,
    cluster_root,
    memory_tmp_dir,
    redact,
)

TemplateSetup = Callable[[PgUrl], None]
#: Errors that mean "no usable PostgreSQL here": they fail the test with the reason.
SETUP_ERRORS = (PgClusterError, OSError, psycopg.Error)


@dataclass
class PgServer:
    """The session's server: ``admin`` is a superuser URL of its maintenance database."""

    admin: PgUrl
    databases: ThrowawayDatabases
    template: str
    cluster: PgCluster | None = None
    root: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _fail(what: str, error: BaseException) -> NoReturn:
    # from None: the reason is the whole story; no "during handling..." traceback
    raise pytest.fail.Exception(f"PostgreSQL for the tests: {what}: {error}",
                                pytrace=False) from None


def _external_admin(dsn: str) -> PgUrl:
    """L3_TEST_PG_URL as a PgUrl; libpq fills what it leaves out (PGHOST, PGPASSFILE...)."""
    return PgUrl.from_dsn(dsn)


@pytest.fixture(scope="session")
def pg_template_setup() -> TemplateSetup | None:
    """What to load into the template database once per session (override it)."""
    return None


@pytest.fixture(scope="session")
def pg_server(pg_template_setup: TemplateSetup | None) -> Iterator[PgServer]:
    timings: dict[str, float] = {}
    cluster: PgCluster | None = None
    root: Path | None = None
    external = os.environ.get("L3_TEST_PG_URL")
    try:
        if external:
            admin = _external_admin(external)
        else:
            root = cluster_root(memory_tmp_dir())
            cluster = PgCluster.create(root / "session", name="tests", fast=True,
                                       no_sync=True)
            cluster.start()
            timings.update(cluster.timings)
            admin = cluster.url()
        databases = ThrowawayDatabases(admin)
        started = time.perf_counter()
        template = databases.create(prefix="l3tmpl")
        if pg_template_setup is not None:
            pg_template_setup(template)
        timings["template"] = time.perf_counter() - started
    except SETUP_ERRORS as e:
        where = redact(external) if external else "a throwaway cluster"
        if cluster is not None:
            cluster.destroy()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        _fail(f"could not set up {where}", e)
    server = PgServer(admin, databases, template.dbname, cluster, root, timings)
    try:
        yield server
    finally:
        if cluster is None:
            databases.drop(template.dbname)
        databases.close()
        if cluster is not None:
            cluster.destroy()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_db(pg_server: PgServer) -> Iterator[PgUrl]:
    """A fresh database, a copy of the session's template; dropped afterwards."""
    try:
        url = pg_server.databases.create(template=pg_server.template)
    except SETUP_ERRORS as e:
        _fail("could not create a test database", e)
    try:
        yield url
    finally:
        pg_server.databases.drop(url.dbname)


class ClusterFactory:
    """Clusters of one replication group under one temp root, for one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.credentials = Credentials()
        self.clusters: list[PgCluster] = []

    def primary(self, name: str = "p1") -> PgCluster:
        try:
            cluster = PgCluster.create(self.root / name, name=name,
                                       credentials=self.credentials, fast=True, no_sync=True)
            self.clusters.append(cluster)
            cluster.start()
        except SETUP_ERRORS as e:
            _fail(f"could not start primary {name}", e)
        return cluster

    def standby(self, primary: PgCluster, name: str, *, synchronous: bool) -> PgCluster:
        cluster = PgCluster.create_standby(primary, self.root / name, name=name,
                                           synchronous=synchronous, start=False)
        self.clusters.append(cluster)
        cluster.start()
        primary.wait_for_standby(name, sync_state="sync" if synchronous else "async")
        return cluster

    def close(self) -> None:
        for cluster in self.clusters:
            cluster.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def pg_clusters() -> Iterator[ClusterFactory]:
    try:
        factory = ClusterFactory(cluster_root(memory_tmp_dir()))
    except SETUP_ERRORS as e:
        _fail("could not make a directory for clusters", e)
    try:
        yield factory
    finally:
        factory.close()
