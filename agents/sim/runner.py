"""run_agents: Liam, Mary and the workers as child processes (``python -m agents.sim``)
against a running broker, their reports merged; what ``bin/run_scenario --agents`` runs."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.client import AgentClient
from agents.sim.agent import PLANNER, log
from agents.tools.launch import stop_process
from schema.endpoints import COORDINATOR
from schema.errors import CoordinatorError, ErrorCode
from schema.vocabulary import EventType


def _agent_argv(name: str, front: str, pub: str, plan_id: str, items: int,
                workers: list[str], timeout: float) -> list[str]:
    return [sys.executable, "-m", "agents.sim", "--name", name, "--broker", front,
            "--pub", pub, "--plan-id", plan_id, "--items", str(items),
            "--workers", ",".join(workers), "--timeout", str(timeout)]


def _tail(path: Path, lines: int = 20) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def run_agents(front: str, pub: str, *, plan_id: str, items: int, workers: list[str],
               timeout: float, log_dir: Path | None = None) -> dict[str, Any]:
    """Start Liam, Mary and the workers as processes against a running broker, wait for
    all of them (killing them on timeout, error or interrupt), and report.

    The report: {"ok", "plan_id", "items", "items_done", "agents": {label: its JSON},
    "conflicts_met", "conflicts_resolved", "conflict_events", "commands", "applied",
    "rejected", "verify", "duration_s"}. ``conflict_events`` counts the plan's
    PLAN_CONFLICT_DETECTED events in the ledger; it equals the conflicts the agents met.
    """
    if items < 1 or not workers:
        raise CoordinatorError(ErrorCode.USAGE_ERROR, "need at least one item and one worker")
    started = time.monotonic()
    names = [COORDINATOR, *workers, PLANNER]
    labels: list[str] = []
    for name in names:
        label, n = name, 1
        while label in labels:
            n += 1
            label = f"{name}#{n}"
        labels.append(label)
    owned_tmp = None
    if log_dir is None:
        owned_tmp = tempfile.TemporaryDirectory(prefix="agents-")
        log_dir = Path(owned_tmp.name)
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    outputs: dict[str, bytes] = {label: b"" for label in labels}
    try:
        for label, name in zip(labels, names, strict=True):
            logs[label] = log_dir / f"agent-{label.replace('#', '-')}.log"
            with open(logs[label], "wb") as err:
                procs[label] = subprocess.Popen(
                    _agent_argv(name, front, pub, plan_id, items, workers, timeout),
                    stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        failed = _wait_all(procs, outputs, time.monotonic() + timeout + 10.0)
        reports: dict[str, Any] = {}
        for label in labels:
            text = outputs[label].decode(errors="replace").strip()
            try:
                reports[label] = json.loads(text.splitlines()[-1])
            except (IndexError, ValueError):
                reports[label] = {"ok": False, "agent": label, "error": {
                    "code": "INTERNAL_ERROR", "message": f"no JSON on stdout: {text[:200]!r}"}}
            reports[label]["exit_code"] = procs[label].returncode
            if not reports[label].get("ok"):
                reports[label]["stderr_tail"] = _tail(logs[label])
    finally:
        for proc in procs.values():
            stop_process(proc)
        if owned_tmp is not None:
            owned_tmp.cleanup()
    with AgentClient(front, "run_agents", timeout=5.0) as client:
        try:
            final = client.list_items(plan_id)
        except CoordinatorError:
            final = []
        verify = client.query("verify")
        conflict_events = sum(1 for e in client.timeline("plan", plan_id)
                              if e["event_type"] == EventType.PLAN_CONFLICT_DETECTED)
    done = sum(1 for i in final if i["state"] == "DONE")

    def total(key: str) -> int:
        return sum(int(r.get(key, 0)) for r in reports.values())

    ok = (not failed and all(r.get("ok") for r in reports.values()) and done == items
          and len(final) == items and verify.get("chain_status") == "OK")
    return {
        "ok": ok, "plan_id": plan_id, "items": items, "items_done": done,
        "workers": list(workers), "agents": reports,
        "conflicts_met": total("conflicts_met"), "conflicts_resolved": total("conflicts_resolved"),
        "conflict_events": conflict_events, "commands": total("commands"),
        "applied": total("applied"), "rejected": total("rejected"),
        "verify": verify, "duration_s": round(time.monotonic() - started, 3)}


def _wait_all(procs: dict[str, subprocess.Popen[bytes]], outputs: dict[str, bytes],
              deadline: float) -> bool:
    """Read every child's stdout to EOF. As soon as one fails, SIGTERM the others (they
    print their counts and exit); at the deadline SIGTERM everyone, and SIGKILL what is
    left 10 s later. True if any failed or had to be stopped."""
    failed = False
    stage = 0  # 1: SIGTERM sent at the deadline, 2: SIGKILL sent
    sel = selectors.DefaultSelector()
    for label, proc in procs.items():
        assert proc.stdout is not None
        sel.register(proc.stdout.fileno(), selectors.EVENT_READ, label)

    def signal_all(sig: int) -> None:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failed = True
                if stage == 2:
                    break
                log.warning("agents still running at the deadline: %s",
                            "SIGKILL" if stage else "SIGTERM")
                signal_all(signal.SIGKILL if stage else signal.SIGTERM)
                stage += 1
                deadline = time.monotonic() + 10.0
                continue
            for key, _ in sel.select(remaining):
                label = str(key.data)
                chunk = os.read(int(key.fd), 65536)
                if chunk:
                    outputs[label] += chunk
                    continue
                sel.unregister(key.fd)
                code = procs[label].wait(10)
                if code != 0 and not failed:
                    failed = True
                    log.warning("agent %s exited with %s; stopping the others", label, code)
                    signal_all(signal.SIGTERM)
    finally:
        sel.close()
    return failed
