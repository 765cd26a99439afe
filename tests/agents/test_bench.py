"""bin/bench reports what issue 12 asks for: CPU per command per process, the in-process
core and the reference floor from the same run, latency at a fixed load next to the
disk's fsync. Speed is never asserted here: only that the figures exist, are positive,
and that the JSON has its keys (a short real run), and how rounds are summarised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.tools import bench, cpu
from tests.support.helpers import ROOT

ROLES = ("ledger", "broker", "monitor", "driver", "total")


def _round(ip_cpu: float, ref_cpu: float, ip_rate: float, bus_rate: float,
           per: dict[str, float], *, wrong: int = 0, missing: int = 0) -> dict[str, Any]:
    return {
        "in_process": {"commands": 100, "batch": 64, "commands_per_s": ip_rate,
                       "cpu_us_per_command": ip_cpu, "wrong_outcomes": wrong},
        "reference": {"commands": 100, "batch": 64, "commands_per_s": 9.0,
                      "cpu_us_per_command": ref_cpu},
        "bus": {"commands": 100, "answered": 100, "commands_per_s": bus_rate, "p50_ms": 1.0,
                "p99_ms": 2.0, "p999_ms": 3.0, "wrong_outcomes": wrong, "errors": 0},
        "monitor": {"events_per_s": 5.0, "received": 100 - missing, "missing": missing,
                    "duplicates": 0, "saw_every_event": not missing},
        "cpu_us_per_command": per,
    }


def test_rounds_are_summarised_by_medians_and_ratios_within_a_round() -> None:
    rounds = [
        _round(60, 20, 100, 50, {"ledger": 80, "broker": 40, "total": 120}),
        _round(90, 20, 200, 200, {"ledger": 70, "broker": 50, "total": 120}, wrong=1),
        _round(50, 25, 100, 80, {"ledger": 90, "broker": 30, "total": 120}, missing=2),
    ]
    s = bench.summarise(rounds)
    assert s["cpu_us_per_command"] == {"ledger": 80, "broker": 40, "total": 120}
    assert s["in_process_cpu_us_per_command"] == 60
    assert s["reference_cpu_us_per_command"] == 20
    assert s["in_process_over_reference"] == 3.0  # of 3.0, 4.5, 2.0
    assert s["ratio"] == 0.8  # of 0.5, 1.0, 0.8: each bus against its own round
    assert s["bus"]["wrong_outcomes"] == 1 and s["in_process"]["wrong_outcomes"] == 1
    assert s["monitor"] == {"events_per_s": 5.0, "received": 98, "missing": 2,
                            "duplicates": 0, "saw_every_event": False}
    two = bench.summarise(rounds[:2])  # an even count: the mean of the middle two
    assert two["in_process_cpu_us_per_command"] == 75


def test_the_in_process_phase_adds_a_database_servers_cpu(tmp_path: Path) -> None:
    work = bench.make_workload(2, 100)
    plain = bench.in_process_round(work, tmp_path / "a.db", "normal", 8)
    assert "server_cpu_us_per_command" not in plain and plain["cpu_us_per_command"] > 0
    # this process stands in for the server: its CPU over the phase is the core's own
    served = bench.in_process_round(work, tmp_path / "b.db", "normal", 8,
                                    {"db_server": cpu.Role(os.getpid(), tree=False)})
    assert served["cpu_us_per_command"] == pytest.approx(
        served["core_cpu_us_per_command"] + served["server_cpu_us_per_command"])
    assert served["server_cpu_us_per_command"] >= 0


@pytest.fixture
def fake_postmaster() -> Iterator[tuple[int, int]]:
    """A process named "postgres" with a child of the same name: (postmaster, backend)."""
    code = ("import subprocess, sys\n"
            "open('/proc/self/comm', 'w').write('postgres')\n"
            "child = subprocess.Popen([sys.executable, '-c', \"open('/proc/self/comm', 'w')"
            ".write('postgres'); print('ready', flush=True); input()\"], "
            "stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)\n"
            "child.stdout.readline()\n"
            "print(child.pid, flush=True)\n"
            "input()\n"
            "child.stdin.close(); child.wait()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield proc.pid, int(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_the_db_server_role_is_the_postmasters_tree(fake_postmaster: tuple[int, int]) -> None:
    postmaster, backend = fake_postmaster
    assert bench.server_roles(None) == {}
    assert bench.server_roles(backend) == {"db_server": cpu.Role(postmaster)}
    assert bench.server_roles(postmaster) == {"db_server": cpu.Role(postmaster)}
    assert bench.server_roles(os.getpid()) == {"db_server": cpu.Role(os.getpid())}


def test_a_short_bench_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # enough commands that every process of the bus uses at least a few clock ticks
    done = subprocess.run(
        [sys.executable, "-m", "agents.tools.bench", "--commands", "4000", "--rounds", "2",
         "--rate", "200", "--rate-seconds", "0.5", "--verify-events", "0",
         "--fsync-samples", "20", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())

    assert set(results["cpu_us_per_command"]) == set(ROLES)
    for role in ROLES:
        assert results["cpu_us_per_command"][role] > 0, role
    for key in ("in_process_cpu_us_per_command", "reference_cpu_us_per_command",
                "in_process_over_reference", "ratio", "cpu_resolution_us_per_command"):
        assert results[key] > 0, key
    assert len(results["rounds"]) == 2
    for r in results["rounds"]:  # every round measured every role from /proc
        assert all(r["cpu_ticks"][role] > 0 for role in ROLES if role != "total")
        assert r["in_process"]["cpu_us_per_command"] > 0
        assert r["reference"]["cpu_us_per_command"] > 0
    # the throughput figures as before, and nothing lost or misapplied
    assert results["in_process"]["commands_per_s"] > 0
    assert results["bus"]["commands_per_s"] > 0
    assert results["bus"]["wrong_outcomes"] == results["bus"]["errors"] == 0
    assert results["in_process"]["wrong_outcomes"] == 0
    assert results["monitor"]["saw_every_event"] is True
    rate = results["fixed_rate"]
    assert rate["answered"] == rate["commands"] == 100
    assert 0 < rate["p50_ms"] <= rate["p99_ms"] <= rate["p999_ms"]
    assert rate["wal_frames_per_commit"] >= 1
    fsync = results["fsync"]
    assert rate["p99_bound_ms"] == 2 * fsync["p99_ms"] + 1
    assert fsync["sync_call"] == "fdatasync" and fsync["samples"] == 20
    assert fsync["frames_per_commit"] >= 1 and fsync["commits_seen"] == bench.IDLE_COMMITS
    assert fsync["write_bytes"] == fsync["frames_per_commit"] * (24 + fsync["page_size"])
    assert 0 < fsync["p50_ms"] <= fsync["p99_ms"]
    assert "verify" not in results  # --verify-events 0 skips it

    table = done.stdout
    for label in ("CPU per command, whole bus", "in-process core", "reference (floor)",
                  "in-process / reference", "fixed load 200/s", "disk commit (fsync floor)"):
        assert label in table, label
    assert f"written: {out}" in table
