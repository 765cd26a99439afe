"""The ledger process: the only writer of the database, behind a ZeroMQ ROUTER.

Sockets (both bound here):
- ROUTER ``--bind``: requests from the broker, ``[broker id, request key, PROTOCOL,
  header, body]``; answered with ``[broker id, request key, PROTOCOL, header, body]``.
  The broker sends the commands it has waiting as one COMMANDS message, answered with
  one REPLIES (docs/PROTOCOL.md, "Between the broker and the ledger"); a single COMMAND
  gets a single REPLY.
- PUB ``--pub``: ``[b"committed", ...]``, one EVENTS message per commit group holding
  its events in seq order (the broker republishes each as ``[b"event", ...]``), and
  ``[b"heartbeat", ...]`` every ``--heartbeat`` seconds with the head seq.

COMMANDs are applied on the main thread with group commit: every command already
waiting (up to ``--max-batch``) is applied in one transaction, each against the state
the previous ones left, then committed once; only then are the replies sent and the
events published, in seq order. QUERY, REPLAY and PING go to a reader thread with its own read-only
connection, so reads never stall the writer.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.log import checkpoints, integrity
from ledger.log.checkpoints import Checkpoint, CheckpointWriter, load_or_create_key
from ledger.log.verify import verify_store
from ledger.plans.ledger import CommandResult, Ledger
from ledger.queries import reads as queries
from ledger.runtime.sandbox import resolve_key, resolve_output_dir, sandbox_root
from ledger.runtime.service import (
    LINGER_MS,
    add_version_arg,
    announce,
    install_stop_signals,
    positive_float,
    positive_int,
    settle_heap,
    setup_logging,
)
from ledger.runtime.sockets import NOBLOCK, send_frames
from ledger.storage.base import Durability, Locator, Store
from ledger.storage.factory import locate, open_store
from ledger.storage.rows import Event
from schema import internal, wire
from schema.clock import utc_now
from schema.endpoints import DEFAULT_LEDGER, DEFAULT_LEDGER_PUB, require_local_bind
from schema.errors import CoordinatorError, ErrorCode, StorageError
from schema.ids import ID_PATTERN

READER_ENDPOINT = "inproc://ledger-reader"
PUB_HWM = 100_000
CHECKPOINT_KEY = checkpoints.DEFAULT_KEY
CHECKPOINT_DIR = checkpoints.DEFAULT_DIR

ID_RE = re.compile(ID_PATTERN)
#: WAL checkpoints (_maybe_checkpoint): when idle after this many commits; at the latest
#: after that many (a commit group writes a few to a few hundred WAL pages)
CHECKPOINT_IDLE = 16
CHECKPOINT_FORCE = 64

log = logging.getLogger("ledger")


def reply_for(request_id: str, result: CommandResult) -> wire.Reply:
    return wire.Reply(
        id=request_id, ok=result.status == "APPLIED", status=result.status, error=result.error,
        event_type=result.event_type, seq=result.seq, hash=result.hash,
        new_version=result.new_version, current_version=result.current_version,
        replayed=result.replayed)


def event_parts(event: Event) -> list[bytes]:
    """[header, body] of the EVENT message the broker republishes for ``event``."""
    return wire.encode(wire.EventMsg(id=str(event.seq), event=event.to_row()))[1:]


def _reply(request_id: str, outcome: CommandResult | CoordinatorError) -> wire.Reply:
    if isinstance(outcome, CoordinatorError):
        return wire.error_reply(request_id, outcome)
    return reply_for(request_id, outcome)


def _reply_id(value: Any) -> str:
    """A batched command's id for its REPLY ("unknown" if it is not a valid id: the
    broker answers by position, not by id)."""
    return value if isinstance(value, str) and ID_RE.fullmatch(value) else "unknown"


@dataclass(slots=True)
class _Group:
    """Commands from one request, and where their answer goes: a COMMAND gets one
    REPLY, a COMMANDS message one REPLIES with a REPLY per command."""

    route: list[bytes]
    request_id: str
    commands: list[dict[str, Any]]
    batched: bool = False


def answer_query(store: Store, msg: Any,
                 status: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run one read request (QUERY, REPLAY or PING) against the read-only store.
    ``status``: what PING reports besides the head (the start-up check)."""
    if isinstance(msg, wire.Ping):
        seq, head = store.head()
        return {"ledger_up": True, "head_seq": seq, "head_hash": head,
                **({"startup_check": status()} if status is not None else {})}
    if isinstance(msg, wire.Replay):
        events = [e.to_row() for e in store.iter_events(msg.from_seq, msg.to_seq,
                                                        limit=msg.limit)]
        return {"events": events, "head_seq": store.head()[0]}
    params = msg.params

    def param(name: str) -> str:
        value = params.get(name)
        if value is not None and not isinstance(value, str):
            raise CoordinatorError(ErrorCode.INVALID_TYPE, f"params.{name}: must be a string",
                                   field=f"params.{name}")
        if not value:
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


def _reader(ctx: zmq.Context[zmq.Socket[bytes]], store: Store,
            stop: threading.Event, status: Callable[[], dict[str, Any]] | None = None) -> None:
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
                reply = wire.Reply(id=request_id, ok=True,
                                   result=answer_query(store, msg, status))
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
    def __init__(self, db: Locator, bind: str = DEFAULT_LEDGER, pub: str = DEFAULT_LEDGER_PUB,
                 *, heartbeat: float = 1.0, durability: Durability = "full",
                 max_batch: int = 256, batch_window: float = 0.002,
                 checkpoint_key: Ed25519PrivateKey | None = None,
                 checkpoint_dir: Path | None = None, checkpoint_every: float = 10.0,
                 startup_check: str = "background", accept_rollback: bool = False) -> None:
        # its sockets are for the broker alone: loopback or ipc://, never the network
        for name, endpoint in (("bind", bind), ("pub", pub)):
            require_local_bind(endpoint, name, why="the ledger (its sockets are for the "
                               "broker alone)")
        self.locator = db
        self.heartbeat = heartbeat
        self.max_batch = max_batch
        self.batch_window = batch_window
        self.stats = {"batches": 0, "commands": 0}
        # refuse a damaged database before anything writes to it (DB_DAMAGED): schema and
        # chain tail, and with "full" every page (quick_check) and the event count. With
        # "background" (the default) those two run on their own thread while the ledger
        # serves; if they find damage, commands are refused (self.refusal) and the ledger
        # exits with status 3. See ledger/integrity.py and docs/DURABILITY.md
        if startup_check not in integrity.STARTUP_MODES:
            raise ValueError(f"startup_check: {startup_check!r}")
        self.startup_mode = startup_check
        self.startup_check = integrity.startup_check(db, pages=startup_check == "full")
        self.refusal: StorageError | None = None
        self.page_check: integrity.PageCheck | None = None
        if startup_check == "background" and self.startup_check["checked"]:
            self.page_check = integrity.PageCheck(db, on_failure=self._refuse_commands)
        self.store = open_store(db, create=True, durability=durability,
                                manual_maintenance=True)
        #: commits since the last WAL checkpoint (see _maybe_checkpoint)
        self.commits_since_checkpoint = 0
        self.ledger = Ledger(self.store)
        self.head_seq, self.head_hash = self.store.head()
        #: signed checkpoints (ledger/checkpoints.py): computed on their own thread from
        #: their own read-only connection, so the writer's hot path never waits for them
        self.checkpoints: CheckpointWriter | None = None
        self._snapshot_store: Store | None = None
        if checkpoint_key is not None and checkpoint_dir is not None:
            if not accept_rollback:
                self._refuse_rollback(checkpoint_key, checkpoint_dir)
            self._snapshot_store = open_store(db, readonly=True)
            self.checkpoints = CheckpointWriter(checkpoint_key, checkpoint_dir,
                                                self._checked_snapshot,
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
        if self.page_check is not None:  # nothing after this can fail
            self.page_check.start()

    def startup_status(self) -> dict[str, Any]:
        """The start-up check, for the ready line and PING: ``mode``, ``tail`` (ok: it
        ran before serving), ``pages`` (running, ok, failed, stopped or skipped)."""
        checked = self.startup_check
        out: dict[str, Any] = {"mode": self.startup_mode}
        if not checked.get("checked"):
            return out | {"tail": "new database", "pages": "new database"}
        out["tail"] = "ok"
        if self.page_check is not None:
            return out | self.page_check.status()
        if self.startup_mode == "full":
            return out | {"pages": "ok", "events": checked["events"]}
        return out | {"pages": "skipped"}

    def _refuse_commands(self, error: StorageError) -> None:
        """The background page check failed (on its thread): from now on every command
        gets this error, and the main loop stops; main() exits with status 3."""
        self.refusal = error

    def _checked_snapshot(self) -> tuple[int, str, Any]:
        """The checkpoint writer's snapshot (on its worker thread): never sign a database
        the background page check is still reading or has found damaged."""
        if self.page_check is not None:
            self.page_check.done.wait()
            if self.page_check.error is not None:
                raise self.page_check.error
        assert self._snapshot_store is not None
        return self._snapshot_store.snapshot()

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
                f"{self.locator.name} does not match signed checkpoint {name} "
                f"({result.verdict}: {result.reason}); serving it would fork the history. "
                "Restore the newer database, or start with --accept-rollback if this "
                "rollback is intended", details={"checkpoint": name, **result.to_dict()})

    def serve(self, stop: threading.Event) -> None:
        reader_stop = threading.Event()
        reader = threading.Thread(
            target=_reader, name="ledger-reader", daemon=True,
            args=(self.ctx, open_store(self.locator, readonly=True), reader_stop,
                  self.startup_status))
        reader.start()
        if self.checkpoints is not None:
            self.checkpoints.start()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.reader_pipe, zmq.POLLIN)
        next_beat = 0.0
        try:
            while not stop.is_set() and self.refusal is None:
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
                self._maybe_checkpoint()
        finally:
            if self.page_check is not None:  # interrupted if still running
                self.page_check.stop()
            if self.refusal is not None:
                self._refuse_waiting()
            reader_stop.set()
            reader.join(timeout=2)
            if self.checkpoints is not None:  # the last one, at shutdown (not if damaged)
                for checkpoint in self.checkpoints.close(
                        0 if self.refusal is not None else self.head_seq):
                    self._publish_checkpoint(checkpoint)
            self.close()

    def _maybe_checkpoint(self) -> None:
        """The store's maintenance (SQLite: the WAL checkpoint) happens here, after the
        replies went out, not inside a COMMIT:
        in small steps while no request is waiting (so a command rarely waits behind one,
        and never for long), and at the latest every CHECKPOINT_FORCE commits under a
        load that never pauses. Same thread as the commits, so their fsyncs never
        compete."""
        n = self.commits_since_checkpoint
        if n < CHECKPOINT_IDLE or (n < CHECKPOINT_FORCE and self.router.poll(0)):
            return
        try:
            done = self.store.maintenance()
        except StorageError as exc:  # the next attempt may succeed; nothing is lost
            log.warning("store maintenance failed: %s", exc)
        else:
            log.debug("store maintenance after %d commits: %s", n, done)
        self.commits_since_checkpoint = 0

    def _refuse_waiting(self, most: int = 10_000) -> None:
        """Damage found: answer every request already waiting with the error."""
        assert self.refusal is not None
        for _ in range(most):
            try:
                frames = self.router.recv_multipart(NOBLOCK)
            except zmq.Again:
                return
            if len(frames) >= 2:
                request_id = wire.header_id(frames[2:]) or "unknown"
                self.router.send_multipart([*frames[:2], *wire.encode(
                    wire.error_reply(request_id, self.refusal))])

    def _drain(self) -> None:
        """Take every request already waiting (bounded), then group-commit the commands."""
        groups: list[_Group] = []
        count = 0
        deadline = time.monotonic() + self.batch_window
        while count < self.max_batch:
            try:
                frames = self.router.recv_multipart(NOBLOCK)
            except zmq.Again:
                break
            group = self._triage(frames)
            if group is not None:
                groups.append(group)
                count += len(group.commands)
            if time.monotonic() >= deadline:
                break
        if groups:
            self._apply_groups(groups)

    def _triage(self, frames: list[bytes]) -> _Group | None:
        """Answer or hand off everything but commands; return the commands to apply."""
        if len(frames) < 2:
            return None  # not from a broker: nobody to answer
        route, body = frames[:2], frames[2:]
        request_id = wire.header_id(body) or "unknown"
        try:
            msg = internal.decode(body)
        except CoordinatorError as exc:
            self.router.send_multipart([*route, *wire.encode(wire.error_reply(request_id, exc))])
            return None
        if isinstance(msg, wire.Query | wire.Replay | wire.Ping):
            self.reader_pipe.send_multipart(frames)
            return None
        if not isinstance(msg, wire.CommandMsg | internal.CommandBatch):
            err = CoordinatorError(ErrorCode.INVALID_MESSAGE,
                                   f"the ledger does not take {msg.type} messages", field="type")
            self.router.send_multipart([*route, *wire.encode(wire.error_reply(msg.id, err))])
            return None
        if self.refusal is not None:  # the background page check found damage
            self.router.send_multipart([*route, *wire.encode(wire.error_reply(msg.id,
                                                                              self.refusal))])
            return None
        if isinstance(msg, internal.CommandBatch):
            return _Group(route, msg.id, msg.commands, batched=True)
        return _Group(route, msg.id, [{**msg.command, "command_id": msg.id,
                                       "actor": msg.actor, "session_id": msg.session_id}])

    def _apply_groups(self, groups: list[_Group]) -> None:
        commands = [c for g in groups for c in g.commands]
        outcomes: list[CommandResult | CoordinatorError]
        try:
            outcomes = list(self.ledger.apply_many(commands))  # returns after COMMIT
        except CoordinatorError as exc:
            log.error("batch of %d failed (%s); applying one by one", len(commands), exc)
            outcomes = []
            for command in commands:
                try:
                    outcomes.append(self.ledger.apply(command))
                except CoordinatorError as one:  # storage failure: nothing committed
                    outcomes.append(one)
        self.stats["batches"] += 1
        self.stats["commands"] += len(commands)
        self.commits_since_checkpoint += 1
        at = 0
        for group in groups:
            mine = outcomes[at:at + len(group.commands)]
            at += len(group.commands)
            if not group.batched:
                reply = _reply(group.request_id, mine[0])
                send_frames(self.router, [*group.route, *wire.encode(reply)])
                continue
            replies = [wire.encode(_reply(_reply_id(c.get("command_id")), o))[1:]
                       for c, o in zip(group.commands, mine, strict=True)]
            send_frames(self.router, [*group.route, *wire.encode(
                internal.ReplyBatch(id=group.request_id, replies=replies))])
        events = [e for o in outcomes if isinstance(o, CommandResult) for e in o.events]
        if events:
            self.head_seq, self.head_hash = events[-1].seq, events[-1].hash
            send_frames(self.pub, [internal.TOPIC_COMMITTED, *wire.encode(internal.EventBatch(
                id=str(self.head_seq), events=[event_parts(e) for e in events],
                head_seq=self.head_seq, head_hash=self.head_hash))])

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
        "checked (the schema and the chain tail before serving; every page with PRAGMA "
        "quick_check and the event count while serving, see --startup-check); a damaged "
        "one is refused: the ready line is {\"ok\": false, \"error\": {\"code\": "
        "\"DB_DAMAGED\", ...}} and the exit status 3 (bin/verify_chain says where). "
        "Durability: docs/DURABILITY.md.")
    p.add_argument("--db", default=None, metavar="PATH",
                   help="database under data/ (default data/os_sandbox.db; created if missing)")
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
    p.add_argument("--verbose", action="store_true")
    add_version_arg(p)
    args = p.parse_args(argv)
    setup_logging("ledger", args.verbose)
    stop = install_stop_signals()
    try:
        db = locate(args.db)
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
              "db": db.describe(), "head_seq": server.head_seq,
              "endpoints": server.endpoints, "startup_check": server.startup_status(),
              **({"checkpoints": {
                  "dir": str(checkpoint_dir.relative_to(sandbox_root())),
                  "key": str(key_path.relative_to(sandbox_root())),
                  "key_id": server.checkpoints.key_id, "every": args.checkpoint_every}}
                 if server.checkpoints and checkpoint_dir and key_path else {})})
    server.serve(stop)
    log.info("stopped at head seq %d after %s", server.head_seq, server.stats)
    if server.refusal is not None:  # the background page check found damage
        sys.stderr.write(json.dumps({"ok": False, "role": "ledger",
                                     "error": server.refusal.to_dict(),
                                     "startup_check": server.startup_status()}) + "\n")
        sys.stderr.flush()
        sys.exit(3)


if __name__ == "__main__":
    main()
