"""bin/monitor: follow the ledger's event stream and print it, never silently missing
an event: parse the flags, run an :class:`EventFollower`, print with :class:`Printer`.

Filters apply to what is printed, never to what is tracked: gap detection needs every
seq. Exit status: 0, or 1 if the hash chain (or a signed checkpoint) did not check out,
2 on a usage error (one JSON object with the error).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from agents.tools.monitor.follower import DEFAULT_DEAD_AFTER, DEFAULT_REQUEST_TIMEOUT, Alert
from agents.tools.monitor.output import TABLE_HEADER, Printer
from agents.tools.monitor.pump import DEFAULT_RCVHWM, TICK, EventFollower
from broker.security import add_client_args, client_paths, identity_of
from ledger.log.checkpoints import load_public_key
from ledger.runtime.sandbox import resolve_key
from ledger.runtime.service import add_version_arg, install_stop_signals
from schema.endpoints import DEFAULT_FRONT, DEFAULT_PUB
from schema.errors import CoordinatorError


@dataclass(slots=True)
class Filters:
    plan_ids: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()
    actors: frozenset[str] = frozenset()

    def match(self, row: dict[str, Any]) -> bool:
        return ((not self.plan_ids or row.get("plan_id") in self.plan_ids)
                and (not self.event_types or row.get("event_type") in self.event_types)
                and (not self.actors or row.get("actor") in self.actors))


DESCRIPTION = """Follow the ledger's committed events through the broker and print them, in
seq order, each exactly once, checking the hash chain as they arrive. Subscribes to the
broker's PUB first, then fetches everything after --from-seq with REPLAY, drops duplicates,
fetches gaps, and watches the broker's heartbeat (head seq) for a silent tail loss or a
dead broker.

Output (stdout): JSON lines by default - one {"ready": true, ...} line, then one line per
event (the stored row, payload parsed) and per alert ({"alert": "CHAIN_BROKEN" |
"BROKER_SILENT" | "BROKER_RESUMED" | "LEDGER_DOWN" | "LEDGER_UP", ...}); --format table
prints a readable live view instead. At exit one {"summary": {...}} JSON line. Filters
change what is printed, never what is tracked. Exit status 1 if the chain was broken."""

EPILOG = """examples:
  bin/monitor                                   # everything, from seq 1, then live
  bin/monitor --live --format table             # only what happens from now on
  bin/monitor --from-seq 1200 --plan-id P-1 --event-type PLAN_CONFLICT_DETECTED
  bin/monitor --until-seq 7                     # exit 0 once seq 7 was delivered"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monitor", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", default=DEFAULT_FRONT, metavar="ADDR",
                   help=f"the broker's front end, for REPLAY and PING (default {DEFAULT_FRONT})")
    p.add_argument("--pub", default=DEFAULT_PUB, metavar="ADDR",
                   help=f"the broker's PUB endpoint (default {DEFAULT_PUB})")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=_non_negative_int, default=0, metavar="N",
                       help="the last seq already known: print N+1 onwards (default 0: "
                       "from the beginning)")
    start.add_argument("--live", action="store_true",
                       help="start at the current head: print only new events")
    p.add_argument("--plan-id", action="append", default=[], metavar="ID",
                   help="print only events of this plan (repeatable)")
    p.add_argument("--event-type", action="append", default=[], metavar="TYPE",
                   help="print only events of this type, e.g. PLAN_CONFLICT_DETECTED "
                   "(repeatable)")
    p.add_argument("--actor", action="append", default=[], metavar="NAME",
                   help="print only events by this actor (repeatable)")
    p.add_argument("--format", choices=("json", "table"), default="json",
                   help="json: one JSON object per line (default); table: a live view")
    stop = p.add_argument_group("when to stop (default: on Ctrl-C or SIGTERM)")
    stop.add_argument("--until-seq", type=_non_negative_int, metavar="N",
                      help="exit 0 once seq N was delivered")
    stop.add_argument("--count", type=_positive_int, metavar="N",
                      help="exit after printing N events (after filters)")
    stop.add_argument("--idle-exit", type=_non_negative_float, metavar="S",
                      help="exit after S seconds with nothing new, once caught up")
    p.add_argument("--checkpoint-key", metavar="PATH",
                   help="the ledger's checkpoint public key (e.g. keys/ledger-checkpoint.pub):"
                   " also check the signature of every CHECKPOINT on the stream. Without "
                   "it, checkpoints are still compared with the events (head hash)")
    p.add_argument("--dead-after", type=_positive_float, default=DEFAULT_DEAD_AFTER,
                   metavar="S", help="report the broker silent after S seconds without a "
                   f"heartbeat (default {DEFAULT_DEAD_AFTER})")
    p.add_argument("--rcvhwm", type=_positive_int, default=DEFAULT_RCVHWM, metavar="N",
                   help=f"receive high-water mark of the SUB socket (default {DEFAULT_RCVHWM})")
    p.add_argument("--request-timeout", type=_positive_float, default=DEFAULT_REQUEST_TIMEOUT,
                   metavar="S", help="ask again when a REPLAY gets no answer in S seconds "
                   f"(default {DEFAULT_REQUEST_TIMEOUT})")
    add_client_args(p)
    add_version_arg(p)
    return p


def _number(kind: type[int] | type[float], check: Callable[[float], bool], what: str
            ) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


_non_negative_int = _number(int, lambda v: v >= 0, ">= 0")
_positive_int = _number(int, lambda v: v > 0, "> 0")
_non_negative_float = _number(float, lambda v: v >= 0, ">= 0")
_positive_float = _number(float, lambda v: v > 0, "> 0")


def run_monitor(argv: list[str] | None = None, *, out: TextIO | None = None,
                err: TextIO | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        curve = client_paths(args, "monitor")
        checkpoint_key = (load_public_key(resolve_key(args.checkpoint_key, must_exist=True))
                          if args.checkpoint_key else None)
    except CoordinatorError as exc:
        (out or sys.stdout).write(json.dumps({"ok": False, "error": exc.to_dict()}) + "\n")
        return 2
    stop = install_stop_signals()
    printer = Printer(args.format, out or sys.stdout, err or sys.stderr)
    filters = Filters(frozenset(args.plan_id),
                      frozenset(t.strip().upper().replace("-", "_") for t in args.event_type),
                      frozenset(args.actor))
    follower = EventFollower(args.broker, args.pub, from_seq=args.from_seq, live=args.live,
                             rcvhwm=args.rcvhwm, dead_after=args.dead_after,
                             request_timeout=args.request_timeout,
                             actor=identity_of(curve, "monitor"),
                             checkpoint_key=checkpoint_key, **curve)
    printed = 0
    try:
        if args.format == "table":
            printer.line(TABLE_HEADER)
        else:
            printer.json({"ok": True, "ready": True, "role": "monitor", "broker": args.broker,
                          "pub": args.pub, "from_seq": args.from_seq, "live": args.live})
        quiet_since = time.monotonic()
        done = args.until_seq is not None and args.until_seq <= args.from_seq
        while not done and not stop.is_set():
            item = follower.next(TICK * 2)
            now = time.monotonic()
            if item is None:
                done = (args.idle_exit is not None and follower.caught_up
                        and now - quiet_since >= args.idle_exit)
                continue
            if isinstance(item, Alert):
                printer.alert(item)
                continue
            quiet_since = now
            if filters.match(item):
                printer.event(item)
                printed += 1
            done = ((args.count is not None and printed >= args.count)
                    or (args.until_seq is not None and item["seq"] >= args.until_seq))
        printer.json({"summary": {**follower.stats.summary(), "printed": printed}})
    except BrokenPipeError:  # e.g. piped into head: the reader has gone
        return 0 if follower.chain_ok else 1
    finally:
        follower.close()
    return 0 if follower.chain_ok else 1


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_monitor(argv))


if __name__ == "__main__":
    main()
