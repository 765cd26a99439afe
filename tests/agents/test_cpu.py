"""CPU accounting from /proc (agents/tools/cpu.py): parsing, trees, deltas; then a real
process tree (a stand-in for a PostgreSQL postmaster and its backends). No sockets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.tools import cpu


def stat_line(pid: int, comm: str, ppid: int, utime: int = 0, stime: int = 0,
              cutime: int = 0, cstime: int = 0, *, state: str = "S", threads: int = 1,
              start: int = 1000) -> str:
    """A /proc/<pid>/stat line in the kernel's field order (proc(5)), 52 fields."""
    fields = [state, ppid, pid, pid, 0, -1, 4194560, 100, 0, 0, 0, utime, stime, cutime,
              cstime, 20, 0, threads, 0, start, 1 << 24, 500]
    fields += [0] * (50 - len(fields))
    return f"{pid} ({comm}) " + " ".join(str(f) for f in fields) + "\n"


def fake_proc(root: Path, lines: list[str]) -> Path:
    for line in lines:
        pid = line.split(" ", 1)[0]
        (root / pid).mkdir(parents=True)
        (root / pid / "stat").write_text(line)
    (root / "self").mkdir()  # not a pid: ignored
    return root


# --- parsing --------------------------------------------------------------------------


def test_parse_stat_reads_the_fields_after_the_last_parenthesis() -> None:
    st = cpu.parse_stat(stat_line(42, "my (odd) ) name", 7, 11, 22, 33, 44, state="R",
                                  threads=5, start=1234))
    assert st == cpu.ProcStat(pid=42, comm="my (odd) ) name", state="R", ppid=7, utime=11,
                              stime=22, cutime=33, cstime=44, num_threads=5, starttime=1234)
    assert st.own_ticks == 33 and st.reaped_ticks == 77


def test_parse_stat_takes_bytes_and_refuses_what_is_not_a_stat_line() -> None:
    assert cpu.parse_stat(stat_line(3, "a b", 1).encode()).comm == "a b"
    for bad in ("", "garbage", "12 (x) S 1 2", "(x) S " + "1 " * 30):
        with pytest.raises(ValueError):
            cpu.parse_stat(bad)


def test_read_stat_of_this_process_and_of_none() -> None:
    st = cpu.read_stat(os.getpid())
    assert st is not None
    assert (st.pid, st.ppid) == (os.getpid(), os.getppid())
    assert st.num_threads >= 1 and st.state in "RS"
    assert cpu.read_stat(2**22 + 12345) is None  # above pid_max's default: never a process


# --- trees and deltas on a fake /proc -------------------------------------------------


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    #  1 init ─┬─ 10 ledger (reaped children: 5 + 5) ── 11 helper ── 12 zombie
    #          ├─ 20 broker
    #          └─ 30 bench (reaped children: 1000 + 1000) ── 31 child
    return fake_proc(tmp_path / "proc", [
        stat_line(1, "init", 0, 1, 1),
        stat_line(10, "ledger", 1, 100, 50, 5, 5, threads=4),
        stat_line(11, "helper (x)", 10, 7, 3),
        stat_line(12, "grand", 11, 2, 0, state="Z"),
        stat_line(20, "broker", 1, 40, 10),
        stat_line(30, "bench", 1, 9, 1, 1000, 1000),
        stat_line(31, "child", 30, 500, 0),
    ])


def test_scan_and_descendants(proc: Path) -> None:
    table = cpu.scan(proc)
    assert sorted(table) == [1, 10, 11, 12, 20, 30, 31]
    assert cpu.descendants(10, table) == [11, 12]  # the zombie is still counted
    assert cpu.descendants(1, table) == [10, 20, 30, 11, 31, 12]  # breadth first
    assert cpu.descendants(12, table) == []
    assert cpu.descendants(999, table) == []
    assert cpu.scan(proc / "missing") == {}


def test_tree_ticks_counts_own_reaped_and_living_descendants(proc: Path) -> None:
    table = cpu.scan(proc)
    assert cpu.tree_ticks(10, table) == (150 + 10) + 10 + 2
    assert cpu.tree_ticks(20, table) == 50
    assert cpu.tree_ticks(404, table) == 0


def test_sample_tree_and_own_roles(proc: Path) -> None:
    roles = {"ledger": cpu.Role(10), "broker": cpu.Role(20),
             "driver": cpu.Role(30, tree=False), "gone": cpu.Role(404)}
    assert cpu.sample(roles, proc) == {"ledger": 172, "broker": 50, "driver": 10, "gone": 0}
    # own roles alone need no scan
    assert cpu.sample({"driver": cpu.Role(30, tree=False)}, proc) == {"driver": 10}


def test_a_child_reaped_inside_the_window_is_counted_once(tmp_path: Path) -> None:
    # before: the helper (11) lives with 30 ticks; after: it has exited after 10 more
    # and was waited for, so its 40 ticks are in the parent's cutime
    before = cpu.sample({"ledger": cpu.Role(10)}, fake_proc(tmp_path / "a", [
        stat_line(10, "ledger", 1, 100, 0), stat_line(11, "helper", 10, 30, 0)]))
    after = cpu.sample({"ledger": cpu.Role(10)}, fake_proc(tmp_path / "b", [
        stat_line(10, "ledger", 1, 120, 0, 40, 0)]))
    assert cpu.us_per_command(before, after, 10, clk_tck=100) == {
        "ledger": (20 + 10) * 10_000 / 10, "total": 30_000.0}


def test_us_per_command() -> None:
    per = cpu.us_per_command({"a": 100, "b": 5, "only_before": 1}, {"a": 300, "b": 5, "c": 9},
                             1000, clk_tck=100)
    assert per == {"a": 2000.0, "b": 0.0, "total": 2000.0}
    assert cpu.resolution_us_per_command(20_000, clk_tck=100) == 0.5
    with pytest.raises(ValueError):
        cpu.us_per_command({}, {}, 0)


def test_postmaster_root_climbs_while_the_comm_is_postgres(tmp_path: Path) -> None:
    table = cpu.scan(fake_proc(tmp_path / "proc", [
        stat_line(1, "init", 0), stat_line(5, "bash", 1),
        stat_line(100, "postgres", 5), stat_line(101, "postgres", 100),
        stat_line(102, "postgres", 100), stat_line(103, "psql", 5)]))
    assert cpu.postmaster_root(102, table) == 100
    assert cpu.postmaster_root(100, table) == 100
    assert cpu.postmaster_root(103, table) is None
    assert cpu.postmaster_root(999, table) is None


def test_self_cpu_seconds_grows_with_work() -> None:
    start = cpu.self_cpu_seconds()
    n = 0
    while cpu.self_cpu_seconds() - start < 0.02:
        n += 1
    assert n > 0 and cpu.self_cpu_seconds() > start


# --- a real process tree: a stand-in for a postmaster and its backends ----------------

# Each process names itself (comm) and prints one JSON line when it is ready; a backend
# burns CPU on a line "burn" and answers "done"; everything exits on stdin EOF.
_BACKEND = r"""
import sys, time
open("/proc/self/comm", "w").write("dummy-pg")
print("ready", flush=True)
for line in sys.stdin:
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    print("done", flush=True)
"""
_POSTMASTER = r"""
import json, subprocess, sys, time
open("/proc/self/comm", "w").write("dummy-pg")
backend = sys.argv[1]
# a short-lived child that burns CPU and is waited for: it ends up in our cutime
t = time.process_time()
subprocess.run([sys.executable, "-c",
                "import time\nt = time.process_time()\n"
                "while time.process_time() - t < 0.3: pass"], check=True)
kids = [subprocess.Popen([sys.executable, "-c", backend], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True) for _ in range(2)]
for k in kids:
    assert k.stdout.readline() == "ready\n"
print(json.dumps([k.pid for k in kids]), flush=True)
for line in sys.stdin:  # "burn": the first backend burns, we pass its answer on
    kids[0].stdin.write(line)
    kids[0].stdin.flush()
    print(kids[0].stdout.readline(), end="", flush=True)
for k in kids:
    k.stdin.close()
    k.wait()
"""


@pytest.fixture
def dummy_server() -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    proc = subprocess.Popen([sys.executable, "-c", _POSTMASTER, _BACKEND],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        backends = json.loads(proc.stdout.readline())
        yield proc, backends
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_a_server_tree_counts_its_backends_and_its_reaped_children(
        dummy_server: tuple[subprocess.Popen[str], list[int]]) -> None:
    server, backends = dummy_server
    assert server.stdin is not None and server.stdout is not None
    table = cpu.scan()
    assert cpu.descendants(server.pid, table) == sorted(backends)
    assert table[server.pid].reaped_ticks > 0  # the burner, waited for
    assert cpu.postmaster_root(backends[1], table, comm="dummy-pg") == server.pid

    role = {"db_server": cpu.Role(server.pid)}
    before = cpu.sample(role)
    backend_before = cpu.sample({"b": cpu.Role(backends[0], tree=False)})["b"]
    server.stdin.write("burn\n")
    server.stdin.flush()
    assert server.stdout.readline() == "done\n"
    backend_after = cpu.sample({"b": cpu.Role(backends[0], tree=False)})["b"]
    after = cpu.sample(role)
    assert backend_after > backend_before
    assert after["db_server"] - before["db_server"] >= backend_after - backend_before
    per = cpu.us_per_command(before, after, 1)
    assert per["db_server"] > 0 and per["total"] == per["db_server"]
