"""bin/os_l2_query: sessions, timelines and summaries from the event log (read-only)."""

from __future__ import annotations

import sys

from ledger.cli.common import add_db_arg, emit, open_store, parser, run
from ledger.queries.reads import list_sessions, summary, timeline

EPILOG = """examples:
  bin/os_l2_query session-timeline --session-id S-L3-DEMO-001
  bin/os_l2_query task-timeline --task-id I-002     # an item's whole history
  bin/os_l2_query summary"""


def _main(argv: list[str]) -> int:
    p = parser("os_l2_query", "Query the L1 event log. Timelines list events in seq order.",
               EPILOG)
    add_db_arg(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list-sessions", help="sessions with their event counts and seq range")
    for name, flag, text in (
            ("session-timeline", "--session-id", "events of one session"),
            ("task-timeline", "--task-id", "events of one task (item id, or plan id)"),
            ("plan-timeline", "--plan-id", "events of one plan, items included")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument(flag, required=True, metavar="ID")
    sub.add_parser("summary", help="event counts by type, actor and session")
    args = p.parse_args(argv)
    with open_store(args.db, readonly=True) as store:
        if args.command == "list-sessions":
            emit(list_sessions(store))
        elif args.command == "session-timeline":
            emit(timeline(store, "session_id", args.session_id))
        elif args.command == "task-timeline":
            emit(timeline(store, "task_id", args.task_id))
        elif args.command == "plan-timeline":
            emit(timeline(store, "plan_id", args.plan_id))
        else:
            emit(summary(store))
    return 0


def main() -> None:
    sys.exit(run(_main))
