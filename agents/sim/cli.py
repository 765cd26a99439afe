"""bin/agent: run one simulated agent (``python -m agents.sim`` is the same)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import zmq

from agents.sim.agent import DEFAULT_TIMEOUT, DEFAULT_WORKER, ROLES, Config, role_of
from agents.sim.roles import AGENTS
from broker.security import add_client_args, client_paths
from ledger.runtime.service import add_version_arg, install_stop_signals, setup_logging
from schema.endpoints import DEFAULT_FRONT, DEFAULT_PUB
from schema.errors import CoordinatorError, ErrorCode


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="agent",
        description="Run one simulated agent against a running broker until every item of "
        "the plan is DONE, then print one JSON object with its counts. Liam plans (creates "
        "the plan, adds items, asks Mary for some, re-prioritises items in progress), Mary "
        "turns requests into items for the workers, and any other name (Codex, Codex-2, "
        "...) is a worker that claims and completes items. Start Liam, Mary and the "
        "workers with the same --plan-id and --items; Liam waits for the others.",
        epilog="example: bin/agent --name Mary & bin/agent --name Codex & "
        "bin/agent --name Codex-2 & bin/agent --name Liam --workers Codex,Codex-2")
    p.add_argument("--name", required=True, help="Liam, Mary, Codex, Codex-2, ...")
    p.add_argument("--role", choices=ROLES,
                   help="default: planner for Liam, coordinator for Mary, else worker")
    p.add_argument("--broker", default=DEFAULT_FRONT, metavar="ADDR",
                   help=f"the broker's front end (default {DEFAULT_FRONT})")
    p.add_argument("--pub", default=DEFAULT_PUB, metavar="ADDR",
                   help=f"the broker's event stream (default {DEFAULT_PUB})")
    p.add_argument("--plan-id", default="P-AGENTS-001", metavar="ID",
                   help="the plan (default P-AGENTS-001)")
    p.add_argument("--items", type=int, default=6, metavar="N",
                   help="items in the plan; every agent must be given the same (default 6)")
    p.add_argument("--workers", default=DEFAULT_WORKER, metavar="NAMES",
                   help="comma-separated worker names, one per worker process, repeated "
                   "if several share a name: Mary assigns round-robin over them, Liam "
                   "waits for that many (default Codex)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"give up after S seconds (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--request-timeout", type=float, default=2.0, metavar="S",
                   help="per-request timeout before the client re-sends (default 2)")
    p.add_argument("--reprioritise", type=int, default=-1, metavar="N",
                   help="Liam re-prioritises the first N items that go IN_PROGRESS "
                   "(default -1: all; 0: none)")
    add_client_args(p)
    p.add_argument("--verbose", action="store_true")
    add_version_arg(p)
    args = p.parse_args(argv)
    try:
        curve = client_paths(args, args.name)
    except CoordinatorError as exc:
        p.error(f"{exc.code}: {exc.message}")
    workers = tuple(w.strip() for w in args.workers.split(",") if w.strip())
    if args.items < 1:
        p.error("--items must be at least 1")
    if not workers:
        p.error("--workers needs at least one name")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    setup_logging(f"agent {args.name}", args.verbose)
    return Config(args.name, args.role or role_of(args.name), args.broker, args.pub,
                  args.plan_id, args.items, workers, args.timeout, args.request_timeout,
                  args.reprioritise, curve)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    stop = install_stop_signals()
    try:
        agent = AGENTS[config.role](config, stop)
    except zmq.ZMQError as exc:
        report: dict[str, Any] = {"ok": False, "agent": config.name, "error": {
            "code": str(ErrorCode.USAGE_ERROR), "message": f"bad address: {exc}"}}
    else:
        report = agent.run()
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    sys.exit(0 if report["ok"] else 1)
