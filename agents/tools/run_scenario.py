"""bin/run_scenario: play a scenario through the message bus and verify the result.

Unless ``--broker`` names a running broker, it starts a ledger and a broker on free
loopback ports (fresh database under data/runs/ unless ``--db``), sends each step from
its actor's own agent connection, waits for each reply, verifies the chain through the
bus, and stops everything it started, also on Ctrl-C, SIGTERM or error. ``--agents``
runs the simulated agents against a plan instead of a scripted list.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.client import AgentClient
from agents.tools.launch import Bus, start_bus
from agents.tools.monitor import EventFollower
from broker.security import CurvePaths, add_client_args, client_paths, identity_of
from ledger.cli.common import EXIT_FAILED_CHECK, emit, parser, run
from ledger.plans.ledger import CommandResult
from ledger.plans.scenario import build_report
from ledger.runtime.sandbox import resolve_output_dir, resolve_scenario
from ledger.runtime.service import positive_float, positive_int
from ledger.storage.factory import locate
from schema import wire
from schema.errors import CoordinatorError, ErrorCode
from schema.scenario import Scenario, Step, load_scenario

DESCRIPTION = """Play a scenario file through the bus: every step is sent by its actor's own
agent connection to the broker, which routes it to the ledger. Prints the apply-scenario
JSON (counts, per-step outcomes) plus "verify" (the chain check, run by the ledger) and
"monitor" (what a subscriber attached before the first step received: seqs, chain).

Without --broker, a ledger and a broker are started on free loopback ports with a fresh
database, data/runs/<scenario_id>-<UTC time>.db (or --db), and stopped at the end.
Exits 1 if a step's outcome differs from its "expect" or the chain does not verify."""

EPILOG = """examples:
  bin/run_scenario scenarios/L3_PLAN_FLOW_001.json
  bin/run_scenario scenarios/L3_PLAN_FLOW_001.json --broker tcp://127.0.0.1:5570 \\
      --pub tcp://127.0.0.1:5571
  bin/run_scenario --agents --items 6 --workers Codex,Codex-2"""


def result_from_reply(step: Step, reply: wire.Reply) -> CommandResult:
    if reply.status is None:  # refused by the bus itself, not decided by the ledger
        err = reply.error or {}
        raise CoordinatorError(ErrorCode(err.get("code", "INTERNAL_ERROR")),
                               f"step {step.index}: {err.get('message', 'no outcome')}")
    return CommandResult(reply.id, step.command.action, reply.status,
                         event_type=reply.event_type, seq=reply.seq, hash=reply.hash,
                         new_version=reply.new_version, current_version=reply.current_version,
                         error=reply.error, replayed=reply.replayed)


def play(scenario: Scenario, front: str, *, timeout: float = 5.0,
         curve: Callable[[str], CurvePaths] | None = None) -> list[CommandResult]:
    """Send every step from its actor's own connection; return the outcomes in order.
    ``curve``: the CURVE key files of an actor (a broker with CURVE takes from each key
    only its own actor)."""
    clients: dict[str, AgentClient] = {}
    try:
        results = []
        for step in scenario.steps:
            cmd = step.command
            client = clients.get(cmd.actor)
            if client is None:
                client = clients[cmd.actor] = AgentClient(
                    front, cmd.actor, session_id=scenario.session_id, timeout=timeout,
                    **(curve(cmd.actor) if curve else {}))
            body = cmd.model_dump(mode="json", exclude={"command_id", "actor", "session_id"},
                                  exclude_none=True)
            if "change" in body:
                body["change"] = cmd.change.model_dump(  # type: ignore[union-attr]
                    mode="json", exclude_unset=True)
            reply = client.send_command(body, command_id=cmd.command_id)
            results.append(result_from_reply(step, reply))
        return results
    finally:
        for client in clients.values():
            client.close()


def _scenario_run(args: Any) -> dict[str, Any]:
    scenario = load_scenario(resolve_scenario(args.path))
    bus: Bus | None = None
    try:
        if args.broker:
            front, pub = args.broker, args.pub
            info: dict[str, Any] = {"broker": front, "pub": pub}
        else:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            db = args.db or f"data/runs/{scenario.scenario_id}-{stamp}.db"
            shown = locate(db).describe()  # refuse a bad path or URL before starting
            bus = start_bus(db, log_dir=_log_dir())
            front, pub = bus.front, bus.pub
            info = {"db": shown, "broker": front, "pub": pub}
        keys = functools.partial(client_paths, args)  # CURVE: keys of each actor, or {}
        with AgentClient(front, identity_of(keys("run_scenario"), "run_scenario"),
                         timeout=args.timeout, **keys("run_scenario")) as probe:
            head = probe.wait_ready(timeout=args.timeout * 2)["head_seq"]
            follower = (EventFollower(front, pub, from_seq=head, **keys("run_scenario"),
                                      actor=identity_of(keys("run_scenario"),
                                                        "run_scenario-monitor"))
                        if pub else None)
            try:
                results = play(scenario, front, timeout=args.timeout, curve=keys)
                verify = probe.query("verify")
                monitor = _watch(follower, verify["head_seq"], args.timeout)
            finally:
                if follower is not None:
                    follower.close()
        report = build_report(scenario, results)
        report["ok"] = (report["ok"] and verify["chain_status"] == "OK"
                        and monitor.get("chain", "OK") == "OK")
        report["verify"] = verify
        report["monitor"] = monitor
        report["bus"] = info
        return report

    finally:
        if bus is not None:
            bus.stop()


def _watch(follower: EventFollower | None, head: int, timeout: float) -> dict[str, Any]:
    """What the monitor attached before the first step received, up to the head."""
    if follower is None:
        return {"attached": False, "reason": "no --pub given"}
    events = follower.collect(until_seq=head, timeout=timeout * 2) if head > follower.last_seq \
        else []
    return {"attached": True, "seqs": [e["seq"] for e in events],
            "event_types": [e["event_type"] for e in events],
            "live_events": len(events) - follower.stats.fetched_events,
            **follower.stats.summary()}


def _log_dir() -> Path:
    """Where the processes run_scenario starts write their stderr."""
    logs = resolve_output_dir("logs/run_scenario")
    logs.mkdir(parents=True, exist_ok=True)
    return logs


def _agents_run(args: Any) -> dict[str, Any]:
    from agents.sim import run_agents

    bus: Bus | None = None
    try:
        if args.broker:
            front, pub = args.broker, args.pub
        else:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            db = args.db or f"data/runs/agents-{stamp}.db"
            bus = start_bus(db, log_dir=_log_dir())
            front, pub = bus.front, bus.pub
        with AgentClient(front, "run_scenario", timeout=args.timeout) as probe:
            probe.wait_ready(timeout=args.timeout * 2)
        stamp = datetime.now(UTC).strftime("%H%M%S")
        return run_agents(front, pub, plan_id=args.plan_id or f"P-AGENTS-{stamp}",
                          items=args.items, workers=args.workers.split(","),
                          timeout=args.run_timeout, log_dir=_log_dir())
    finally:
        if bus is not None:
            bus.stop()


def _main(argv: list[str]) -> int:
    p = parser("run_scenario", DESCRIPTION, EPILOG)
    p.add_argument("path", nargs="?", metavar="PATH", help="scenario file under scenarios/")
    p.add_argument("--broker", metavar="ADDR", help="use a running broker's front end")
    p.add_argument("--pub", metavar="ADDR", help="its PUB endpoint (for the monitor)")
    p.add_argument("--db", metavar="PATH|URL", help="database under data/ (default: a fresh "
                   "one), or a postgresql:// URL")
    p.add_argument("--timeout", type=positive_float, default=5.0, metavar="S",
                   help="per-request timeout before a retry (default 5)")
    g = p.add_argument_group("--agents mode")
    g.add_argument("--agents", action="store_true",
                   help="run the simulated agents Liam, Mary and workers on a plan")
    g.add_argument("--plan-id", metavar="ID", help="plan to create (default P-AGENTS-<time>)")
    g.add_argument("--items", type=positive_int, default=6, metavar="N",
                   help="items (default 6)")
    g.add_argument("--workers", default="Codex,Codex-2", metavar="NAMES",
                   help="comma-separated worker agents (default Codex,Codex-2)")
    g.add_argument("--run-timeout", type=positive_float, default=60.0, metavar="S",
                   help="give up on the agents after S seconds (default 60)")
    add_client_args(p)
    args = p.parse_args(argv)
    if (args.curve_secret or args.server_key) and (args.agents or not args.broker):
        p.error("--curve-secret/--server-key are for a running CURVE broker (--broker), in "
                "scenario mode; the bus run_scenario starts itself is loopback-only")
    if args.broker and not args.pub and args.agents:
        p.error("--broker needs --pub in --agents mode")
    if not args.agents and not args.path:
        p.error("give a scenario PATH, or --agents")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    report = _agents_run(args) if args.agents else _scenario_run(args)
    emit(report)
    return 0 if report["ok"] else EXIT_FAILED_CHECK


def main() -> None:
    sys.exit(run(_main))

