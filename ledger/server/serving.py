"""The ledger process's serving loop: the single writer behind a ZeroMQ ROUTER.

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
events published, in seq order. QUERY, REPLAY and PING go to the reader thread
(:mod:`ledger.server.reader`), with its own read-only store, so reads never stall the
writer. The store's maintenance (SQLite: WAL checkpoints) runs here, after the replies
went out (:meth:`LedgerServer._maybe_checkpoint`). The start-up checks:
:mod:`ledger.server.startup`; the command line: :mod:`ledger.server.process`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.log.checkpoints import Checkpoint, CheckpointWriter
from ledger.log.integrity import PageCheck
from ledger.plans.ledger import CommandResult, Ledger
from ledger.runtime.service import LINGER_MS
from ledger.runtime.sockets import NOBLOCK, send_frames
from ledger.server.reader import READER_ENDPOINT, serve_reads
from ledger.server.startup import StartupChecks, refuse_rollback
from ledger.server.supervisor import CONTROL, HELLO, REFUSAL
from ledger.storage.base import Durability, Locator, Store, StoreLost, writer_holder
from ledger.storage.factory import open_store
from ledger.storage.rows import Event
from schema import internal, wire
from schema.clock import utc_now
from schema.endpoints import DEFAULT_LEDGER, DEFAULT_LEDGER_PUB, require_local_bind
from schema.errors import CoordinatorError, ErrorCode, StorageError
from schema.ids import ID_PATTERN

PUB_HWM = 100_000

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


class LedgerServer:
    """The ledger process minus its command line: ``db`` is the store's locator
    (:func:`ledger.storage.factory.locate`); the store is created if missing. Raises
    StorageError (DB_DAMAGED, DB_ROLLED_BACK, ...) if it must not be served, and
    zmq.ZMQError if an endpoint cannot be bound."""

    def __init__(self, db: Locator, bind: str = DEFAULT_LEDGER, pub: str = DEFAULT_LEDGER_PUB,
                 *, heartbeat: float = 1.0, durability: Durability = "full",
                 max_batch: int = 256, batch_window: float = 0.002,
                 checkpoint_key: Ed25519PrivateKey | None = None,
                 checkpoint_dir: Path | None = None, checkpoint_every: float = 10.0,
                 startup_check: str = "background", accept_rollback: bool = False,
                 supervisor: int | None = None) -> None:
        """``supervisor``: the pid of the process that runs this one and whose death
        takes it down (``bin/ledger``'s supervisor, :mod:`ledger.server.supervisor`); it
        goes into the writer lease's holder, and ``bind`` and ``pub`` are then the
        supervisor's internal endpoints, connected to rather than bound."""
        # its sockets are for the broker alone: loopback or ipc://, never the network
        for name, endpoint in (("bind", bind), ("pub", pub)):
            require_local_bind(endpoint, name, why="the ledger (its sockets are for the "
                               "broker alone)")
        self.locator = db
        self.supervisor = supervisor
        self.heartbeat = heartbeat
        self.max_batch = max_batch
        self.batch_window = batch_window
        self.stats = {"batches": 0, "commands": 0}
        self.refusal: StorageError | None = None
        #: what closing the store did (Store.close_report: the final WAL checkpoint)
        self.final_checkpoint: dict[str, Any] | None = None
        # before anything writes to it: see ledger/server/startup.py
        self.startup = StartupChecks(db, startup_check, self._refuse_commands)
        # the writer lease: DB_LOCKED, naming the holder, while another process writes
        self.store: Store = open_store(db, create=True, durability=durability,
                                       manual_maintenance=True,
                                       holder=writer_holder("ledger", **(
                                           {"supervisor": supervisor} if supervisor else {})))
        #: commits since the last WAL checkpoint (see _maybe_checkpoint)
        self.commits_since_checkpoint = 0
        self.ledger = Ledger(self.store)
        self.head_seq, self.head_hash = self.store.head()
        #: signed checkpoints (ledger/log/checkpoints.py): computed on their own thread
        #: from their own read-only store, so the writer's hot path never waits for them
        self.checkpoints: CheckpointWriter | None = None
        self._snapshot_store: Store | None = None
        if checkpoint_key is not None and checkpoint_dir is not None:
            if not accept_rollback:
                try:
                    refuse_rollback(self.store, checkpoint_key, checkpoint_dir)
                except StorageError:
                    self.store.close()
                    raise
            self._snapshot_store = open_store(db, readonly=True)
            self.checkpoints = CheckpointWriter(checkpoint_key, checkpoint_dir,
                                                self._checked_snapshot,
                                                every=checkpoint_every)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # supervised (ledger/server/supervisor.py): PAIRs connected to the supervisor,
        # which holds the ROUTER and the PUB and relays frames as they are
        self.router = self.ctx.socket(zmq.PAIR if supervisor else zmq.ROUTER)
        self.router.linger = LINGER_MS
        self.pub = self.ctx.socket(zmq.PAIR if supervisor else zmq.PUB)
        self.pub.linger = LINGER_MS
        self.pub.sndhwm = PUB_HWM
        if supervisor:
            self.router.connect(bind)
            self.pub.connect(pub)
            for sock in (self.router, self.pub):  # queued until connected
                sock.send_multipart([CONTROL, HELLO])
        else:
            self.router.bind(bind)
            self.pub.bind(pub)
        self.reader_pipe = self.ctx.socket(zmq.PAIR)
        self.reader_pipe.linger = 0
        self.reader_pipe.bind(READER_ENDPOINT)
        self.endpoints = {
            "commands": self.router.getsockopt(zmq.LAST_ENDPOINT).decode(),  # type: ignore[union-attr]
            "events": self.pub.getsockopt(zmq.LAST_ENDPOINT).decode(),  # type: ignore[union-attr]
        }
        self.startup.start()  # nothing after this can fail

    @property
    def page_check(self) -> PageCheck | None:
        """The background page check, if one runs (``--startup-check background``)."""
        return self.startup.page_check

    def startup_status(self) -> dict[str, Any]:
        """The start-up check, for the ready line and PING (StartupChecks.status)."""
        return self.startup.status()

    def ping_status(self) -> dict[str, Any]:
        """What the ledger's PING answer adds to the head: the start-up check and the
        holder of the writer lease (this process: pid, host, since when)."""
        return {"startup_check": self.startup.status(), "writer": self.store.writer}

    def _refuse_commands(self, error: StorageError) -> None:
        """The background page check failed (on its thread): from now on every command
        gets this error, and the main loop stops; main() exits with status 3. (A store
        that lost its database session, DB_CONNECTION_LOST, stops it the same way.)"""
        self.refusal = error

    def _checked_snapshot(self) -> tuple[int, str, Any]:
        """The checkpoint writer's snapshot (on its worker thread): never sign a database
        the background page check is still reading or has found damaged."""
        self.startup.wait_sound()
        assert self._snapshot_store is not None
        return self._snapshot_store.snapshot()

    def serve(self, stop: threading.Event) -> None:
        reader_stop = threading.Event()
        reader = threading.Thread(
            target=serve_reads, name="ledger-reader", daemon=True,
            args=(self.ctx, open_store(self.locator, readonly=True), reader_stop,
                  self.ping_status))
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
            self.startup.stop()  # the page check, interrupted if still running
            if self.refusal is not None:
                self._refuse_waiting()
                if self.supervisor:  # for what is still on its way: see supervisor.py
                    self.router.send_multipart([CONTROL, REFUSAL, *wire.encode(
                        wire.error_reply(None, self.refusal))])
            reader_stop.set()
            reader.join(timeout=2)
            if self.checkpoints is not None:  # the last one, at shutdown (not if damaged)
                for checkpoint in self.checkpoints.close(
                        0 if self.refusal is not None else self.head_seq):
                    self._publish_checkpoint(checkpoint)
            self.close()

    def _maybe_checkpoint(self) -> None:
        """The store's maintenance (SQLite: the WAL checkpoint) happens here, after the
        replies went out, not inside a COMMIT: in small steps while no request is
        waiting (so a command rarely waits behind one, and never for long), and at the
        latest every CHECKPOINT_FORCE commits under a load that never pauses. Same thread
        as the commits, so their fsyncs never compete."""
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
        except StoreLost as exc:  # committed to a file nobody will read: not acknowledged
            outcomes = [exc] * len(commands)
        except CoordinatorError as exc:
            log.error("batch of %d failed (%s); applying one by one", len(commands), exc)
            outcomes = []
            for command in commands:
                try:
                    outcomes.append(self.ledger.apply(command))
                except CoordinatorError as one:  # storage failure: nothing committed
                    outcomes.append(one)
        lost = [o for o in outcomes if isinstance(o, StoreLost) or (
            isinstance(o, StorageError) and o.code == ErrorCode.DB_CONNECTION_LOST)]
        if lost and self.refusal is None:  # the store writes no more: stop, exit 3
            log.error("the store is lost: %s", lost[0].message)
            self.refusal = lost[0]
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
        self.final_checkpoint = self.store.close_report
        if self._snapshot_store is not None:
            self._snapshot_store.close()
