"""Startup on a damaged database: the ledger refuses to serve it and says why;
bin/verify_chain says where.

The ledger's start-up check (ledger/log/integrity.py) is PRAGMA quick_check plus the chain
tail; these tests run it with ``--startup-check full`` (all of it before serving; the
default, background, is in tests/test_startup_background.py). A refusal is the ready
line ``{"ok": false, "error": {"code": "DB_DAMAGED", ...}}`` and exit status 3, and the
file is left byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from agents.tools.launch import LOOPBACK_ANY
from ledger.log import integrity
from ledger.storage.factory import file_locator
from schema.errors import CoordinatorError, StorageError
from tests.support.fault_load import ROOT
from tests.support.helpers import Cmds, build_db, drop_append_only_triggers, raw_connect

EVENTS = 300
DB = "data/ledger.db"


def _commands() -> list[dict[str, Any]]:
    c = Cmds(session_id="S-DMG")
    return [c.create_plan("P-1")] + [c.add_item("P-1", f"I-{i}", "x" * 300)
                                     for i in range(EVENTS - 1)]


@pytest.fixture
def healthy(tmp_path: Path) -> Path:
    """A closed, checkpointed ledger database of EVENTS events (no -wal file left)."""
    path = tmp_path / DB
    build_db(path, _commands())
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start_ledger(root: Path) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "ledger.server", "--db", DB, "--bind",
                           LOOPBACK_ANY, "--pub", LOOPBACK_ANY, "--startup-check", "full"],
                          capture_output=True,
                          env={**os.environ, "OS_SANDBOX_ROOT": str(root)}, timeout=60,
                          stdin=subprocess.DEVNULL)
    return done.returncode, json.loads(done.stdout.splitlines()[0])


def _verify_chain(root: Path) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([str(Path(sys.executable).parent / "os-verify-chain"), "--db", DB],
                          capture_output=True, env={**os.environ, "OS_SANDBOX_ROOT": str(root)},
                          timeout=60, cwd=ROOT)
    return done.returncode, json.loads(done.stdout)


# --- the damage ------------------------------------------------------------------------


def truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def truncate_header(path: Path) -> None:
    os.truncate(path, 50)


def truncate_empty(path: Path) -> None:
    os.truncate(path, 0)


def _events_leaf_pages(path: Path) -> tuple[list[int], int]:
    with closing(sqlite3.connect(path)) as conn:
        pages = [int(p) for (p,) in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' "
            "ORDER BY pageno")]
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    return pages, int(page_size)


def overwrite_a_page(path: Path) -> None:
    """A torn write: a page in the middle of the events table overwritten."""
    pages, size = _events_leaf_pages(path)
    page = pages[len(pages) // 2]
    with path.open("r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\xff" * 64)


def _tamper(path: Path, *sql: str) -> None:
    with closing(raw_connect(path)) as conn:
        drop_append_only_triggers(conn)
        for statement in sql:
            conn.execute(statement)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def edit_the_last_event(path: Path) -> None:
    _tamper(path, f"UPDATE events SET actor = 'Mallory' WHERE seq = {EVENTS}")


def delete_a_middle_event(path: Path) -> None:
    _tamper(path, "DELETE FROM events WHERE seq = 150")


def cut_off_the_tail(path: Path) -> None:
    """The last event deleted; its command record (and state row) stay behind."""
    _tamper(path, f"DELETE FROM events WHERE seq = {EVENTS}")


Damage = Callable[[Path], None]
# (damage, words the ledger's refusal contains, what verify_chain says)
CASES: list[tuple[Damage, str, Callable[[dict[str, Any]], bool]]] = [
    (truncate_half, "malformed",
     lambda r: r["chain_status"] == "DAMAGED" and "truncated" in r["truncated"]
     and "pages" in r["error"]["message"]),
    (truncate_header, "malformed",
     lambda r: r["chain_status"] == "DAMAGED" and "header" in r["truncated"]),
    (truncate_empty, "not a ledger database (the file is empty)",
     lambda r: r["error"]["code"] == "DB_NOT_INITIALISED"),
    (overwrite_a_page, "PRAGMA quick_check failed",
     lambda r: r["chain_status"] == "DAMAGED" and "events" in r["tables"]
     and 0 < r["last_readable_seq"] < EVENTS),
    (edit_the_last_event, f"hash of event seq {EVENTS} does not match",
     lambda r: r["chain_status"] == "BROKEN" and r["mismatches"][0]["seq"] == EVENTS),
    (delete_a_middle_event, f"{EVENTS - 1} events but the last seq is {EVENTS}",
     lambda r: r["chain_status"] == "BROKEN" and r["mismatches"][0]["seq"] == 150),
    (cut_off_the_tail, f"points to event seq {EVENTS}, after the last event {EVENTS - 1}",
     lambda r: r["chain_status"] == "BROKEN" and r["mismatches"][0]["seq"] == EVENTS - 1),
]


@pytest.mark.parametrize(("damage", "says", "where"), CASES,
                         ids=[c[0].__name__ for c in CASES])
def test_the_ledger_refuses_a_damaged_database_and_verify_chain_says_where(
        tmp_path: Path, healthy: Path, damage: Damage, says: str,
        where: Callable[[dict[str, Any]], bool]) -> None:
    damage(healthy)
    before = _digest(healthy)
    code, ready = _start_ledger(tmp_path)
    assert code == 3, ready
    assert ready["ok"] is False and ready["error"]["code"] == "DB_DAMAGED", ready
    assert says in ready["error"]["message"], ready
    assert "bin/verify_chain" in ready["error"]["message"]
    assert _digest(healthy) == before  # nothing was written to it
    code, report = _verify_chain(tmp_path)
    assert code != 0 and where(report), report
    assert _digest(healthy) == before


def test_an_index_that_disagrees_with_its_table_is_found_by_verify_chain(
        tmp_path: Path, healthy: Path) -> None:
    """PRAGMA integrity_check (verify_chain) cross-checks indexes against their tables;
    the quick start-up check does not (documented in docs/DURABILITY.md)."""
    with closing(sqlite3.connect(healthy)) as conn:
        roots = dict(conn.execute("SELECT name, rootpage FROM sqlite_master "
                                  "WHERE name IN ('events_by_session', 'events_by_task')"))
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_master SET rootpage = ? WHERE name = 'events_by_session'",
                     (roots["events_by_task"],))
        conn.execute("UPDATE sqlite_master SET rootpage = ? WHERE name = 'events_by_task'",
                     (roots["events_by_session"],))
        conn.commit()
    code, report = _verify_chain(tmp_path)
    assert code == 1 and report["chain_status"] == "DAMAGED", report
    assert report["tables"] == ["events"]
    assert any("events_by_" in m for m in report["integrity_check"])


def test_a_healthy_database_passes_and_a_missing_one_is_created(
        tmp_path: Path, healthy: Path) -> None:
    started = time.monotonic()
    checked = integrity.startup_check(file_locator(healthy))
    assert checked == {"checked": True, "quick_check": "ok", "events": EVENTS,
                       "head_seq": EVENTS}
    assert integrity.startup_check(file_locator(healthy), pages=False) == {
        "checked": True, "quick_check": "skipped", "head_seq": EVENTS}
    assert time.monotonic() - started < 5.0
    assert integrity.startup_check(file_locator(tmp_path / "data" / "new.db"))["checked"] is False
    assert integrity.damage_report(file_locator(healthy)) is None


def test_a_database_left_by_a_killed_writer_passes(tmp_path: Path) -> None:
    """A crash leaves a -wal file with committed transactions: not damage."""
    path = tmp_path / DB
    build_db(path, _commands()[:10])
    script = ("import os, signal, sqlite3, sys\n"
              "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "c.execute('PRAGMA wal_autocheckpoint=0')\n"
              "c.execute('BEGIN IMMEDIATE')\n"
              "c.execute(\"INSERT INTO meta VALUES ('k', 'v')\")\n"
              "c.execute('COMMIT')\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", script, str(path)], timeout=60)
    assert Path(f"{path}-wal").stat().st_size > 0
    assert integrity.startup_check(file_locator(path))["head_seq"] == 10


def test_a_path_that_cannot_be_opened_is_a_storage_error_not_damage(tmp_path: Path) -> None:
    """Damage is what is wrong inside the file; a directory where the database should be
    is DB_ERROR (and the ledger refuses to start on it just the same)."""
    (tmp_path / DB).mkdir(parents=True)
    with pytest.raises(CoordinatorError) as err:
        integrity.startup_check(file_locator(tmp_path / DB))
    assert err.value.code == "DB_ERROR", err.value
    code, ready = _start_ledger(tmp_path)
    assert code != 0 and ready["ok"] is False, ready


@pytest.mark.parametrize("damage", [edit_the_last_event, cut_off_the_tail],
                         ids=lambda d: d.__name__)
def test_the_constant_time_check_still_refuses_a_damaged_tail(
        healthy: Path, damage: Damage) -> None:
    damage(healthy)
    with pytest.raises(StorageError) as caught:
        integrity.startup_check(file_locator(healthy), pages=False)
    assert caught.value.code == "DB_DAMAGED"


def test_the_constant_time_check_leaves_a_middle_hole_to_verify_chain(healthy: Path) -> None:
    delete_a_middle_event(healthy)
    assert integrity.startup_check(file_locator(healthy), pages=False)["quick_check"] == "skipped"
    with pytest.raises(StorageError, match="events are missing"):
        integrity.startup_check(file_locator(healthy))
