"""The ledger process: the only writer of the database, behind a ZeroMQ ROUTER.

Sockets (both bound here):
- ROUTER ``--bind``: requests from the broker, ``[broker id, request key, PROTOCOL,
  header, body]``; answered with ``[broker id, request key, PROTOCOL, header, body]``.
- PUB ``--pub``: ``[b"event", ...]`` for every committed event in seq order, and
  ``[b"heartbeat", ...]`` every ``--heartbeat`` seconds with the head seq.

COMMANDs are applied on the main thread with group commit: every command already
waiting (up to ``--max-batch``) is applied in one transaction, each against the state
the previous ones left, then committed once; only then are the replies sent and the
events published, in seq order. QUERY, REPLAY and PING go to a reader thread with its own read-only
connection, so reads never stall the writer.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import protocol as wire
from broker.security import require_local_bind
from ledger import checkpoints, integrity, queries, sqlite
from ledger.checkpoints import Checkpoint, CheckpointWriter, load_or_create_key
from ledger.errors import CoordinatorError, ErrorCode, StorageError
from ledger.model import Event
from ledger.plans import CommandResult, Ledger, utc_now
from ledger.sandbox import resolve_db, resolve_key, resolve_output_dir, sandbox_root
from ledger.service import (
    LINGER_MS,
    announce,
    install_stop_signals,
    positive_float,
    positive_int,
    settle_heap,
    setup_logging,
)
from ledger.sqlite import SqliteStore
from ledger.verify import verify_store

DEFAULT_BIND = "tcp://127.0.0.1:5580"
DEFAULT_PUB = "tcp://127.0.0.1:5581"
READER_ENDPOINT = "inproc://ledger-reader"
PUB_HWM = 100_000
CHECKPOINT_KEY = checkpoints.DEFAULT_KEY
CHECKPOINT_DIR = checkpoints.DEFAULT_DIR

log = logging.getLogger("ledger")


def reply_for(request_id: str, result: CommandResult) -> wire.Reply:
    return wire.Reply(
        id=request_id, ok=result.status == "APPLIED", status=result.status, error=result.error,
        event_type=result.event_type, seq=result.seq, hash=result.hash,
        new_version=result.new_version, current_version=result.current_version,
        replayed=result.replayed)


def event_message(event: Event) -> list[bytes]:
    return [wire.TOPIC_EVENT, *wire.encode(wire.EventMsg(id=str(event.seq),
                                                         event=event.to_row()))]


def answer_query(store: SqliteStore, msg: Any) -> dict[str, Any]:
    """Run one read request (QUERY, REPLAY or PING) against the read-only store."""
    if isinstance(msg, wire.Ping):
        seq, head = store.head()
        return {"ledger_up": True, "head_seq": seq, "head_hash": head}
    if isinstance(msg, wire.Replay):
        events = [e.to_row() for e in store.iter_events(msg.from_seq, msg.to_seq,
                                                        limit=msg.limit)]
        return {"events": events, "head_seq": store.head()[0]}
    params = msg.params

    def param(name: str) -> str:
        value = params.get(name)
        if not isinstance(value, str) or not value:
            raise CoordinatorError(ErrorCode.MISSING_FIELD, f"params.{name}: required",
                                   field=f"params.{name}")
        return value

    match msg.query:
        case "list-plans":
            return queries.list_plans(store)
        case "show-plan":
            return queries.show_plan(store, param("plan_id"))
        case "list-items":
            return queries.list_items(store, param("plan_id"))
        case "get-plan":
            plan = store.get_plan(param("plan_id"))
            return {"plan": plan.to_dict() if plan else None}
        case "get-item":
            item = store.get_item(param("item_id"))
            return {"item": item.to_dict() if item else None}
        case "session-timeline":
            return queries.timeline(store, "session_id", param("session_id"))
        case "task-timeline":
            return queries.timeline(store, "task_id", param("task_id"))
        case "plan-timeline":
            return queries.timeline(store, "plan_id", param("plan_id"))
        case "list-sessions":
            return queries.list_sessions(store)
        case "summary":
            return queries.summary(store)
        case "verify":
            return verify_store(store)
    raise CoordinatorError(ErrorCode.UNKNOWN_QUERY,
                           f"unknown query {msg.query!r}; expected one of "
                           f"{', '.join(wire.QUERY_NAMES)}", field="query")


def _reader(ctx: zmq.Context[zmq.Socket[bytes]], store: SqliteStore,
            stop: threading.Event) -> None:
    sock = ctx.socket(zmq.PAIR)
    sock.linger = 0
    sock.connect(READER_ENDPOINT)
    try:
        while not stop.is_set():
            if not sock.poll(200):
                continue
            frames = sock.recv_multipart()
            route, body = frames[:2], frames[2:]
            request_id = wire.header_id(body) or "unknown"
            try:
                msg = wire.decode(body)
                request_id = msg.id
                reply = wire.Reply(id=request_id, ok=True, result=answer_query(store, msg))
            except CoordinatorError as exc:
                reply = wire.error_reply(request_id, exc)
            except Exception as exc:  # a bug must not kill the reader
                log.exception("query failed")
                reply = wire.error_reply(request_id, CoordinatorError(
                    ErrorCode.INTERNAL_ERROR, f"query failed: {exc}"))
            sock.send_multipart([*route, *wire.encode(reply)])
    finally:
        sock.close()
        store.close()


class LedgerServer:
    def __init__(self, db_path: Any, bind: str = DEFAULT_BIND, pub: str = DEFAULT_PUB, *,
                 heartbeat: float = 1.0, durability: sqlite.Durability = "full",
                 max_batch: int = 256, batch_window: float = 0.002,
                 checkpoint_key: Ed25519PrivateKey | None = None,
                 checkpoint_dir: Path | None = None, checkpoint_every: float = 10.0,
                 startup_check: str = "full", accept_rollback: bool = False) -> None:
        # its sockets are for the broker alone: loopback or ipc://, never the network
        for name, endpoint in (("bind", bind), ("pub", pub)):
            require_local_bind(endpoint, name, why="the ledger (its sockets are for the "
                               "broker alone)")
        self.db_path = db_path
        self.heartbeat = heartbeat
        self.max_batch = max_batch
        self.batch_window = batch_window
        self.stats = {"batches": 0, "commands": 0}
        # refuse a damaged database before anything writes to it (DB_DAMAGED): chain
        # tail, and with "full" every page (quick_check) and the event count; see
        # ledger/integrity.py and docs/DURABILITY.md
        self.startup_check = integrity.startup_check(db_path,
                                                     pages=startup_check == "full")
        sqlite.initialise(db_path)
        self.store = SqliteStore(db_path, durability=durability)
        self.ledger = Ledger(self.store)
        self.head_seq, self.head_hash = self.store.head()
        #: signed checkpoints (ledger/checkpoints.py): computed on their own thread from
        #: their own read-only connection, so the writer's hot path never waits for them
        self.checkpoints: CheckpointWriter | None = None
        self._snapshot_store: SqliteStore | None = None
        if checkpoint_key is not None and checkpoint_dir is not None:
            if not accept_rollback:
                self._refuse_rollback(checkpoint_key, checkpoint_dir)
            self._snapshot_store = SqliteStore(db_path, readonly=True)
            self.checkpoints = CheckpointWriter(checkpoint_key, checkpoint_dir,
                                                self._snapshot_store.snapshot,
                                                every=checkpoint_every)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = LINGER_MS
        self.router.bind(bind)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.linger = LINGER_MS
        self.pub.sndhwm = PUB_HWM
        self.pub.bind(pub)
        self.reader_pipe = self.ctx.socket(zmq.PAIR)
        self.reader_pipe.linger = 0
        self.reader_pipe.bind(READER_ENDPOINT)
        self.endpoints = {
            "commands": self.router.getsockopt(zmq.LAST_ENDPOINT).decode(),  # type: ignore[union-attr]
            "events": self.pub.getsockopt(zmq.LAST_ENDPOINT).decode(),  # type: ignore[union-attr]
        }

    def _refuse_rollback(self, key: Ed25519PrivateKey, directory: Path) -> None:
        """A database behind (or beside) the newest checkpoints this ledger signed was
        rolled back or rewritten: serving it would fork the history. Refuse."""
        loaded = checkpoints.newest_checkpoints(directory, key.public_key())
        bad = checkpoints.check_heads(self.store, loaded)
        if bad:
            name, result = bad[-1]
            self.store.close()
            raise StorageError(
                ErrorCode.DB_ROLLED_BACK,
                f"{self.db_path.name} does not match signed checkpoint {name} "
                f"({result.verdict}: {result.reason}); serving it would fork the history. "
                "Restore the newer database, or start with --accept-rollback if this "
                "rollback is intended", details={"checkpoint": name, **result.to_dict()})

    def serve(self, stop: threading.Event) -> None:
        reader_stop = threading.Event()
        reader = threading.Thread(
            target=_reader, name="ledger-reader", daemon=True,
            args=(self.ctx, SqliteStore(self.db_path, readonly=True), reader_stop))
        reader.start()
        if self.checkpoints is not None:
            self.checkpoints.start()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.reader_pipe, zmq.POLLIN)
        next_beat = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + self.heartbeat
                if self.checkpoints is not None:
                    for checkpoint in self.checkpoints.poll(self.head_seq, now):
                        self._publish_checkpoint(checkpoint)
                timeout = max(0.0, min(next_beat - now, 0.2))
                for sock, _ in poller.poll(int(timeout * 1000)):
                    if sock is self.router:
                        self._drain()
                    else:
                        self.router.send_multipart(self.reader_pipe.recv_multipart())
        finally:
            reader_stop.set()
            reader.join(timeout=2)
            if self.checkpoints is not None:  # the last one, at shutdown
                for checkpoint in self.checkpoints.close(self.head_seq):
                    self._publish_checkpoint(checkpoint)
            self.close()

    def _drain(self) -> None:
        """Take every request already waiting (bounded), then group-commit the commands."""
        batch: list[tuple[list[bytes], wire.CommandMsg]] = []
        deadline = time.monotonic() + self.batch_window
        while len(batch) < self.max_batch:
            try:
                frames = self.router.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            command = self._triage(frames)
            if command is not None:
                batch.append(command)
            if time.monotonic() >= deadline:
                break
        if batch:
            self._apply_batch(batch)

    def _triage(self, frames: list[bytes]) -> tuple[list[bytes], wire.CommandMsg] | None:
        """Answer or hand off everything but commands; return a command to apply."""
        if len(frames) < 2:
            return None  # not from a broker: nobody to answer
        route, body = frames[:2], frames[2:]
        request_id = wire.header_id(body) or "unknown"
        try:
            msg = wire.decode(body)
        except CoordinatorError as exc:
            self.router.send_multipart([*route, *wire.encode(wire.error_reply(request_id, exc))])
            return None
        if isinstance(msg, wire.Query | wire.Replay | wire.Ping):
            self.reader_pipe.send_multipart(frames)
            return None
        if not isinstance(msg, wire.CommandMsg):
            err = CoordinatorError(ErrorCode.INVALID_MESSAGE,
                                   f"the ledger does not take {msg.type} messages", field="type")
            self.router.send_multipart([*route, *wire.encode(wire.error_reply(msg.id, err))])
            return None
        return route, msg

    def _apply_batch(self, batch: list[tuple[list[bytes], wire.CommandMsg]]) -> None:
        commands = [{**msg.command, "command_id": msg.id, "actor": msg.actor,
                     "session_id": msg.session_id} for _, msg in batch]
        outcomes: list[CommandResult | CoordinatorError]
        try:
            outcomes = list(self.ledger.apply_many(commands))  # returns after COMMIT
        except CoordinatorError as exc:
            log.error("batch of %d failed (%s); applying one by one", len(batch), exc)
            outcomes = []
            for command in commands:
                try:
                    outcomes.append(self.ledger.apply(command))
                except CoordinatorError as one:  # storage failure: nothing committed
                    outcomes.append(one)
        self.stats["batches"] += 1
        self.stats["commands"] += len(batch)
        for (route, msg), outcome in zip(batch, outcomes, strict=True):
            reply = (wire.error_reply(msg.id, outcome) if isinstance(outcome, CoordinatorError)
                     else reply_for(msg.id, outcome))
            self.router.send_multipart([*route, *wire.encode(reply)])
        for outcome in outcomes:
            if isinstance(outcome, CommandResult):
                for event in outcome.events:
                    self.pub.send_multipart(event_message(event))
                    self.head_seq, self.head_hash = event.seq, event.hash

    def _heartbeat(self) -> None:
        beat = wire.Heartbeat(id=str(self.head_seq), source="ledger", head_seq=self.head_seq,
                              head_hash=self.head_hash, ts=utc_now())
        self.pub.send_multipart([wire.TOPIC_HEARTBEAT, *wire.encode(beat)])

    def _publish_checkpoint(self, checkpoint: Checkpoint) -> None:
        msg = wire.CheckpointMsg(id=str(checkpoint.seq), **checkpoint.to_dict())
        self.pub.send_multipart([wire.TOPIC_CHECKPOINT, *wire.encode(msg)])
        log.info("checkpoint at seq %d signed and published", checkpoint.seq)

    def close(self) -> None:
        for sock in (self.router, self.pub, self.reader_pipe):
            sock.close()
        self.ctx.term()
        self.store.close()
        if self._snapshot_store is not None:
            self._snapshot_store.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="ledger",
        description="Run the ledger: the single writer of the database. Applies plan "
        "commands from the broker, replies after each commit, publishes committed events "
        "in seq order, and serves read queries and event replay from a read-only "
        "connection. Stop with Ctrl-C or SIGTERM. At start an existing database is "
        "checked (PRAGMA quick_check and the chain tail); a damaged one is refused: the "
        "ready line is {\"ok\": false, \"error\": {\"code\": \"DB_DAMAGED\", ...}} "
        "and the exit status 3 (bin/verify_chain says where). Durability: "
        "docs/DURABILITY.md.")
    p.add_argument("--db", default=None, metavar="PATH",
                   help="database under data/ (default data/os_sandbox.db; created if missing)")
    p.add_argument("--bind", default=DEFAULT_BIND, metavar="ADDR",
                   help=f"ROUTER endpoint the broker connects to (default {DEFAULT_BIND}; "
                   "port * picks a free one; loopback or ipc:// only: it is for the broker)")
    p.add_argument("--pub", default=DEFAULT_PUB, metavar="ADDR",
                   help=f"PUB endpoint for events and heartbeats (default {DEFAULT_PUB})")
    p.add_argument("--heartbeat", type=positive_float, default=1.0, metavar="SECONDS",
                   help="heartbeat interval (default 1.0)")
    p.add_argument("--durability", choices=("full", "normal"), default="full",
                   help="full: fsync every commit (survives power loss; default); normal: "
                   "survives a process crash, may lose the last commits on power loss")
    p.add_argument("--max-batch", type=positive_int, default=256, metavar="N",
                   help="group commit: most commands applied in one transaction (default 256)")
    p.add_argument("--checkpoint-key", default=None, metavar="PATH",
                   help="sign checkpoints with this Ed25519 key under keys/ (created, mode "
                   f"0600, with its .pub beside it, if missing; default {CHECKPOINT_KEY} "
                   "when --checkpoint-dir is given). Without either option: no checkpoints")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="write one signed checkpoint JSON file per checkpoint here (under "
                   f"data/ or logs/; default {CHECKPOINT_DIR} when --checkpoint-key is given); "
                   "each is also published on the PUB stream, topic 'checkpoint'")
    p.add_argument("--checkpoint-every", type=float, default=10.0, metavar="SECONDS",
                   help="checkpoint interval when the head moved (default 10); one more at "
                   "shutdown")
    p.add_argument("--accept-rollback", action="store_true",
                   help="start even if the database is behind or beside the newest signed "
                   "checkpoints in --checkpoint-dir (a deliberately restored backup); "
                   "without it such a database is refused with DB_ROLLED_BACK")
    p.add_argument("--startup-check", choices=("full", "tail"), default="full",
                   help="before serving, check the database: full (default) reads every "
                   "page (PRAGMA quick_check, ~0.8 s per GB) and counts the events; tail "
                   "checks only the schema and the chain's tail, in constant time. Both "
                   "refuse a damaged database with DB_DAMAGED")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging("ledger", args.verbose)
    stop = install_stop_signals()
    try:
        db = resolve_db(args.db)
        key, key_path, checkpoint_dir = None, None, None
        if args.checkpoint_key or args.checkpoint_dir:
            key_path = resolve_key(args.checkpoint_key or CHECKPOINT_KEY)
            checkpoint_dir = resolve_output_dir(args.checkpoint_dir or CHECKPOINT_DIR)
            key = load_or_create_key(key_path)
        server = LedgerServer(db, args.bind, args.pub, heartbeat=args.heartbeat,
                              durability=args.durability, max_batch=args.max_batch,
                              checkpoint_key=key, checkpoint_dir=checkpoint_dir,
                              checkpoint_every=args.checkpoint_every,
                              startup_check=args.startup_check,
                              accept_rollback=args.accept_rollback)
    except (CoordinatorError, zmq.ZMQError) as exc:
        err = exc.to_dict() if isinstance(exc, CoordinatorError) else {
            "code": str(ErrorCode.BIND_FAILED), "message": str(exc)}
        announce({"ok": False, "error": err})
        sys.exit(3 if isinstance(exc, StorageError) else 2)
    settle_heap()
    announce({"ok": True, "ready": True, "role": "ledger",
              "db": str(db.relative_to(sandbox_root())), "head_seq": server.head_seq,
              "endpoints": server.endpoints,
              **({"checkpoints": {
                  "dir": str(checkpoint_dir.relative_to(sandbox_root())),
                  "key": str(key_path.relative_to(sandbox_root())),
                  "key_id": server.checkpoints.key_id, "every": args.checkpoint_every}}
                 if server.checkpoints and checkpoint_dir and key_path else {})})
    server.serve(stop)
    log.info("stopped at head seq %d after %s", server.head_seq, server.stats)


if __name__ == "__main__":
    main()
