"""One writer per database, enforced by an operating-system lock (issue 10, item 2).

Every process that writes a database takes its writer lease first (the factory's
writer-open path; SQLite: ``flock`` on ``<db>.lock``): a second writer of any kind —
another ``bin/ledger``, ``bin/os_l3_plan apply-scenario``, ``bin/init_db`` — is refused
with DB_LOCKED naming the holder (pid, host, since when, role), exit status 3, and
writes nothing; readers keep working; the lock dies with its holder, so a restart right
after SIGKILL succeeds; the ledger's and the broker's PING name the holder.
Real processes throughout; every wait is a ready line, a reply or a process exit.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest

from agents.client import AgentClient
from agents.tools.launch import LOOPBACK_ANY, Bus
from ledger.storage.factory import file_locator, open_store
from schema.errors import StorageError
from tests.support.buses import BusFactory

BIN: Final = Path(sys.executable).parent
DB: Final = "data/one.db"
FLOW: Final = "scenarios/L3_PLAN_FLOW_001.json"
TIMEOUT: Final = 30.0


def run(root: Path, script: str, *args: str) -> tuple[int, dict[str, Any]]:
    """A console script to its end: exit status and its one JSON object."""
    done = subprocess.run([str(BIN / script), *args], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False,
                          env={**os.environ, "OS_SANDBOX_ROOT": str(root)})
    return done.returncode, json.loads(done.stdout)


def start_ledger(root: Path, db: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """``bin/ledger --db db`` on free ports: the process and its first stdout line."""
    proc = subprocess.Popen([str(BIN / "os-ledger"), "--db", db, "--bind", LOOPBACK_ANY,
                             "--pub", LOOPBACK_ANY], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env={**os.environ, "OS_SANDBOX_ROOT": str(root)})
    assert proc.stdout is not None
    assert select.select([proc.stdout], [], [], TIMEOUT)[0], "no ready line"
    return proc, json.loads(proc.stdout.readline())


def assert_locked_by(error: dict[str, Any], holder: dict[str, Any]) -> None:
    assert error["code"] == "DB_LOCKED", error
    assert error["details"]["holder"] == holder, error
    for shown in (str(holder["pid"]), holder["host"], holder["started"], holder["role"]):
        assert shown in error["message"], (shown, error["message"])


def events_of(root: Path, db: str) -> int:
    rc, out = run(root, "os-verify-chain", "--db", db)
    assert rc == 0 and out["chain_status"] == "OK", out
    return int(out["events"])


def test_a_second_ledger_on_a_served_database_is_refused_naming_the_holder(
        sandbox: Path, bus_factory: BusFactory) -> None:
    bus = bus_factory.start(DB, ready=True)
    holder = bus.ledger.ready["writer"]
    assert holder["role"] == "ledger" and holder["pid"] != bus.ledger.proc.pid
    assert holder["supervisor"] == bus.ledger.proc.pid == bus.ledger.ready["supervisor"]["pid"]
    second, line = start_ledger(sandbox, DB)
    try:
        assert second.wait(TIMEOUT) == 3
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert line["ok"] is False, line
    assert_locked_by(line["error"], holder)
    with AgentClient(bus.front, "Liam", timeout=10, retries=0) as liam:  # undisturbed
        assert liam.create_plan("P-1", "still the one writer").status == "APPLIED"


def test_every_kind_of_writer_is_refused_and_readers_keep_working(
        sandbox: Path, bus_factory: BusFactory) -> None:
    bus = bus_factory.start(DB, ready=True)
    holder = bus.ledger.ready["writer"]
    with AgentClient(bus.front, "Liam", timeout=10, retries=0) as liam:
        assert liam.create_plan("P-1", "served").status == "APPLIED"
    rc, out = run(sandbox, "os-l3-plan", "--db", DB, "apply-scenario", FLOW)
    assert rc == 3 and out["ok"] is False, out
    assert_locked_by(out["error"], holder)
    rc, out = run(sandbox, "os-init-db", "--db", DB)
    assert rc == 3, out
    assert_locked_by(out["error"], holder)
    # readers: nothing of the scenario was written, and they all answer
    assert events_of(sandbox, DB) == 1
    rc, out = run(sandbox, "os-l3-plan", "--db", DB, "list-plans")
    assert rc == 0 and [p["plan_id"] for p in out["plans"]] == ["P-1"], out
    rc, out = run(sandbox, "os-l2-query", "--db", DB, "summary")
    assert rc == 0 and out["events"] == 1, out
    with AgentClient(bus.front, "Liam", timeout=10, retries=0) as liam:
        assert liam.add_item("P-1", "I-1", "after the refusals").status == "APPLIED"
    assert events_of(sandbox, DB) == 2


def test_the_lock_dies_with_its_holder_a_restart_succeeds_at_once(
        sandbox: Path, bus_factory: BusFactory) -> None:
    bus: Bus = bus_factory.start(DB, ready=True)
    first = bus.ledger.ready["writer"]
    with AgentClient(bus.front, "Liam", timeout=10, retries=3) as liam:
        assert liam.create_plan("P-1", "before the kill").status == "APPLIED"
        # SIGKILL of bin/ledger (the supervisor): its writer dies with it
        bus.ledger.kill()
        restarted = bus.restart_ledger()
        assert restarted.ready["ok"] is True
        assert restarted.ready["writer"]["pid"] != first["pid"]
        bus_factory.wait_ready(bus)
        assert liam.add_item("P-1", "I-1", "after the restart").status == "APPLIED"
        # SIGKILL of the writer process itself: bin/ledger answers and exits, no signal
        writer = restarted.ready["writer"]["pid"]
        os.kill(writer, signal.SIGKILL)
        assert restarted.proc.wait(TIMEOUT) == 3
        bus.restart_ledger()
        bus_factory.wait_ready(bus)
        assert liam.add_item("P-1", "I-2", "after the writer's death").status == "APPLIED"
    assert events_of(sandbox, DB) == 3


def test_a_cli_writer_killed_with_sigkill_leaves_no_stale_lock(sandbox: Path) -> None:
    """Any holder, not only the ledger: a process holding the lease through the factory
    is SIGKILLed, and bin/init_db right after takes it."""
    rc, out = run(sandbox, "os-init-db", "--db", DB)
    assert rc == 0, out
    path = sandbox / DB
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from ledger.storage.factory import file_locator, open_store\n"
         f"store = open_store(file_locator({str(path)!r}), role='holder')\n"
         "print(store.writer['pid'], flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert int(holder.stdout.readline()) == holder.pid
        rc, out = run(sandbox, "os-init-db", "--db", DB)
        assert rc == 3 and out["error"]["details"]["holder"]["role"] == "holder", out
        holder.kill()
        holder.wait(TIMEOUT)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    rc, out = run(sandbox, "os-init-db", "--db", DB)
    assert rc == 0 and out["ok"] is True, out
    assert (sandbox / "data" / "one.db.lock").exists()  # never deleted: see file_lease.py


def test_pings_name_the_lock_holder(sandbox: Path, bus_factory: BusFactory) -> None:
    bus = bus_factory.start(DB, ready=True)
    holder = bus.ledger.ready["writer"]
    assert set(holder) == {"pid", "host", "started", "role", "supervisor"}
    with AgentClient(bus.front, "probe", timeout=10) as probe:
        result = probe.wait_ready(TIMEOUT)
    assert result["ledger_writer"] == holder, result
    # the lock file names the same holder, for a refused writer to read
    lock = json.loads((sandbox / "data" / "one.db.lock").read_text())
    assert lock == holder


def test_in_one_process_a_second_writer_is_refused_too(sandbox: Path) -> None:
    """flock belongs to the open file description: a second open in the same process
    is a second writer. Read-only opens never take the lock."""
    locator = file_locator(sandbox / DB)
    with open_store(locator, create=True, role="first") as first:
        with pytest.raises(StorageError) as refused:
            open_store(locator, role="second")
        assert refused.value.code == "DB_LOCKED"
        assert refused.value.details["holder"] == first.writer
        with open_store(locator, readonly=True) as reader:
            assert reader.head() == first.head()
    with open_store(locator, role="second") as second:
        assert second.writer is not None and second.writer["role"] == "second"
    assert (sandbox / "data" / "one.db.lock").read_text() == ""  # released: emptied
