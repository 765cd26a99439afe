"""``bin/ledger`` (``os-ledger``, ``python -m ledger.server``): the ledger process's
command line. Parses the flags, opens the store through the factory, prints the ready
line, serves until stopped; exit status 2 for bad input (a bad path or flag, an
unsupported database, a port in use), 3 for a store that must not be served (and for a
writer process that died: see below).

By default ``bin/ledger`` supervises: it starts the writer as a child process first
(:mod:`ledger.server.writer_process`, before this process imports anything heavy, so
both load at once), then binds the public endpoints and relays them to it
(:mod:`ledger.server.supervisor`); ``--unsupervised`` writes in this process. The
writer itself: :mod:`ledger.server.serving` (the single writer, group commit),
:mod:`ledger.server.reader` (queries), :mod:`ledger.server.startup` (start-up checks).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ledger.server.writer_process import WriterProcess, await_go, die_with_parent, start_writer

log = logging.getLogger("ledger")


def main(argv: list[str] | None = None) -> None:
    args_given = sys.argv[1:] if argv is None else argv
    writer = start_writer(args_given)  # first: see the module docstring
    if writer is not None:
        sys.exit(_supervise(args_given, writer))
    _serve(_parser().parse_args(args_given))


def _parser() -> argparse.ArgumentParser:
    from ledger.log import checkpoints, integrity
    from ledger.runtime.service import add_version_arg, positive_float, positive_int
    from schema.endpoints import DEFAULT_LEDGER, DEFAULT_LEDGER_PUB

    key, folder = checkpoints.DEFAULT_KEY, checkpoints.DEFAULT_DIR
    p = argparse.ArgumentParser(
        prog="ledger", allow_abbrev=False,
        description="Run the ledger: the single writer of the database. Applies plan "
        "commands from the broker, replies after each commit, publishes committed events "
        "in seq order, and serves read queries and event replay from a read-only "
        "connection. Stop with Ctrl-C or SIGTERM. At start an existing database is "
        "checked (the schema and the chain tail before serving; every page with PRAGMA "
        "quick_check and the event count while serving, see --startup-check); a damaged "
        "one is refused: the ready line is {\"ok\": false, \"error\": {\"code\": "
        "\"DB_DAMAGED\", ...}} and the exit status 3 (bin/verify_chain says where). "
        "Durability: docs/DURABILITY.md.")
    p.add_argument("--db", default=None, metavar="PATH|URL",
                   help="database under data/ (default data/os_sandbox.db; created if "
                   "missing), or a postgresql:// URL of an existing database (its ledger "
                   "schema is created if it has none; a password is never printed)")
    p.add_argument("--bind", default=DEFAULT_LEDGER, metavar="ADDR",
                   help=f"ROUTER endpoint the broker connects to (default {DEFAULT_LEDGER}; "
                   "port * picks a free one; loopback or ipc:// only: it is for the broker)")
    p.add_argument("--pub", default=DEFAULT_LEDGER_PUB, metavar="ADDR",
                   help=f"PUB endpoint for events and heartbeats (default {DEFAULT_LEDGER_PUB})")
    p.add_argument("--heartbeat", type=positive_float, default=1.0, metavar="SECONDS",
                   help="heartbeat interval (default 1.0)")
    p.add_argument("--durability", choices=("full", "normal"), default="full",
                   help="full: fsync every commit (survives power loss; default); normal: "
                   "survives a process crash, may lose the last commits on power loss")
    p.add_argument("--max-batch", type=positive_int, default=256, metavar="N",
                   help="group commit: most commands applied in one transaction (default 256)")
    p.add_argument("--checkpoint-key", default=None, metavar="PATH",
                   help="sign checkpoints with this Ed25519 key under keys/ (created, mode "
                   f"0600, with its .pub beside it, if missing; default {key} "
                   "when --checkpoint-dir is given). Without either option: no checkpoints")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="write one signed checkpoint JSON file per checkpoint here (under "
                   f"data/ or logs/; default {folder} when --checkpoint-key is given); "
                   "each is also published on the PUB stream, topic 'checkpoint'")
    p.add_argument("--checkpoint-every", type=float, default=10.0, metavar="SECONDS",
                   help="checkpoint interval when the head moved (default 10); one more at "
                   "shutdown")
    p.add_argument("--accept-rollback", action="store_true",
                   help="start even if the database is behind or beside the newest signed "
                   "checkpoints in --checkpoint-dir (a deliberately restored backup); "
                   "without it such a database is refused with DB_ROLLED_BACK")
    p.add_argument("--startup-check", choices=integrity.STARTUP_MODES,
                   default=integrity.STARTUP_MODES[0],
                   help="how an existing database is checked. Always, before serving: the "
                   "schema and the chain's tail, in constant time (damage there: the "
                   "ledger does not start, ready line ok false, DB_DAMAGED, exit status 3). "
                   "background (default): then, while serving, read every page (PRAGMA "
                   "quick_check, ~0.8 s per GB, on its own thread) and count the events; "
                   "if that finds damage, every command gets DB_DAMAGED, one JSON line "
                   "{\"ok\": false, \"error\": ...} goes to stderr and the ledger exits "
                   "with status 3. full: the same page check before serving (start-up "
                   "time grows with the file). tail: no page check")
    p.add_argument("--unsupervised", action="store_true",
                   help="write in this process instead of a supervised child process "
                   "(saves one hop per request; but a storage failure that SQLite meets "
                   "as SIGBUS then kills bin/ledger without an answer: docs/DURABILITY.md)")
    p.add_argument("--supervised-by", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--verbose", action="store_true")
    add_version_arg(p)
    return p


def _serve(args: argparse.Namespace) -> None:
    """The writer: this process (``--unsupervised``) or the supervised child."""
    import zmq

    from ledger.log.checkpoints import DEFAULT_DIR, DEFAULT_KEY, load_or_create_key
    from ledger.runtime.sandbox import resolve_key, resolve_output_dir, sandbox_root
    from ledger.runtime.service import (
        announce,
        install_stop_signals,
        settle_heap,
        setup_logging,
    )
    from ledger.server.serving import LedgerServer
    from ledger.storage.factory import locate
    from schema.errors import CoordinatorError, ErrorCode, StorageError

    setup_logging("ledger", args.verbose)
    stop = install_stop_signals()
    if args.supervised_by is not None:
        die_with_parent(args.supervised_by)
        await_go()
    try:
        db = locate(args.db)
        key, key_path, checkpoint_dir = None, None, None
        if args.checkpoint_key or args.checkpoint_dir:
            key_path = resolve_key(args.checkpoint_key or DEFAULT_KEY)
            checkpoint_dir = resolve_output_dir(args.checkpoint_dir or DEFAULT_DIR)
            key = load_or_create_key(key_path)
        server = LedgerServer(db, args.bind, args.pub, heartbeat=args.heartbeat,
                              durability=args.durability, max_batch=args.max_batch,
                              checkpoint_key=key, checkpoint_dir=checkpoint_dir,
                              checkpoint_every=args.checkpoint_every,
                              startup_check=args.startup_check,
                              accept_rollback=args.accept_rollback,
                              supervisor=args.supervised_by)
    except (CoordinatorError, zmq.ZMQError) as exc:
        err = exc.to_dict() if isinstance(exc, CoordinatorError) else {
            "code": str(ErrorCode.BIND_FAILED), "message": str(exc)}
        announce({"ok": False, "error": err})
        sys.exit(3 if isinstance(exc, StorageError) else 2)
    settle_heap()
    announce({"ok": True, "ready": True, "role": "ledger",
              "db": db.describe(), "head_seq": server.head_seq,
              "endpoints": server.endpoints, "startup_check": server.startup_status(),
              "writer": server.store.writer, "supervisor": None,
              **({"checkpoints": {
                  "dir": str(checkpoint_dir.relative_to(sandbox_root())),
                  "key": str(key_path.relative_to(sandbox_root())),
                  "key_id": server.checkpoints.key_id, "every": args.checkpoint_every}}
                 if server.checkpoints and checkpoint_dir and key_path else {})})
    server.serve(stop)
    log.info("stopped at head seq %d after %s; closing the store: %s", server.head_seq,
             server.stats, server.final_checkpoint)
    if server.refusal is not None:  # damage found, or the database file was lost
        sys.stderr.write(json.dumps({"ok": False, "role": "ledger",
                                     "error": server.refusal.to_dict(),
                                     "startup_check": server.startup_status()}) + "\n")
        sys.stderr.flush()
        sys.exit(3)


def _supervise(argv: list[str], writer: WriterProcess) -> int:
    """bin/ledger as the supervisor of its ``writer`` (ledger/server/supervisor.py). It
    reads only the options it needs itself, and refuses a public endpoint reachable from
    the network or a port in use before the writer touches anything; the writer parses
    and checks everything else (usage errors, paths) and says so itself. Imports as
    little as it can: the writer starts meanwhile."""
    from ledger.runtime.service import announce, install_stop_signals, setup_logging
    from ledger.server.supervisor import supervise
    from schema.endpoints import DEFAULT_LEDGER, DEFAULT_LEDGER_PUB, require_local_bind
    from schema.errors import CoordinatorError

    p = argparse.ArgumentParser(prog="ledger", add_help=False, allow_abbrev=False)
    p.add_argument("--bind", default=DEFAULT_LEDGER)
    p.add_argument("--pub", default=DEFAULT_LEDGER_PUB)
    p.add_argument("--verbose", action="store_true")
    try:
        args, _ = p.parse_known_args(argv)
    except BaseException:  # e.g. --bind without a value; the writer says so too
        writer.abort()
        raise
    setup_logging("ledger", args.verbose)
    stop = install_stop_signals()
    try:
        for name, endpoint in (("bind", args.bind), ("pub", args.pub)):
            require_local_bind(endpoint, name, why="the ledger (its sockets are for the "
                               "broker alone)")
    except CoordinatorError as exc:
        writer.abort()
        announce({"ok": False, "error": exc.to_dict()})
        return 2
    return supervise(args.bind, args.pub, writer, stop)


if __name__ == "__main__":
    main()
