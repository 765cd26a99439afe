"""``bin/ledger``'s supervisor: the writer runs in a child process, and its death becomes
error answers and an exit status, never a death of ``bin/ledger`` by a signal.

Why: SQLite writes the WAL index (``-shm``) through a shared memory map, and a write to
a mapped page the kernel refuses (the file made immutable, its file system gone) is
delivered as SIGBUS, which kills the process (Python cannot catch it: the fault is in C,
in the middle of SQLite). Avoiding the map (``locking_mode=EXCLUSIVE`` keeps the index in
the heap) would lock every other process out of the database, readers included
(``bin/verify_chain``, queries, the monitor's catch-up); so the writer runs where its
death can be watched. docs/DURABILITY.md, "Storage failures".

The supervisor (this module, the process ``bin/ledger`` starts as) binds the public
endpoints (``--bind`` ROUTER, ``--pub`` PUB) and relays them over two PAIR sockets on
``ipc://`` endpoints in a private temporary folder to the writer process (``python -m
ledger.server ... --supervised-by PID``: :class:`ledger.server.serving.LedgerServer`,
connected instead of bound). It relays frames without decoding them; it only remembers
which requests the writer has not answered yet, by their route (broker identity,
request key), to answer them itself if the writer dies:

- the writer dies of SIGBUS: each waiting request gets DB_ERROR (``details``:
  ``{"reason": "writer_died", "signal": "SIGBUS"}``); of another signal (SIGKILL by the
  OOM killer, ...): LEDGER_UNAVAILABLE; then one JSON line ``{"ok": false, "role":
  "ledger", "error": ...}`` goes to stderr and ``bin/ledger`` exits with status 3.
  Neither answer is an acknowledgement: the command may or may not have been committed
  (retry it with the same id once a ledger serves the database again).
- the writer exits (a clean stop, or a refusal with its own JSON line and status): the
  requests it left unanswered get LEDGER_UNAVAILABLE, and ``bin/ledger`` exits with its
  status.

SIGTERM and SIGINT are passed on to the writer, which stops cleanly (final checkpoint of
the WAL, the last signed checkpoint); the supervisor exits after it. The writer dies with
the supervisor (``PR_SET_PDEATHSIG``: SIGKILL of ``bin/ledger`` takes both down, as
before), and its writer lease records the supervisor's pid, so a restart right after
does not wait for the writer to be reaped (:mod:`ledger.storage.file_lease`).

Cost: one more hop for each request, reply and commit group's events; measured by
``bin/bench`` (CPU per command of both processes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
from typing import Any, Final

import zmq

from ledger.runtime.service import LINGER_MS, announce
from ledger.runtime.sockets import NOBLOCK, send_frames
from ledger.server.writer_process import WriterProcess
from schema.errors import CoordinatorError, ErrorCode

log = logging.getLogger("ledger")

#: exit status of bin/ledger when its writer process died of a signal
EXIT_WRITER_DIED: Final = 3
#: the queue to the writer: beyond it a request is answered BUSY (the broker bounds
#: what it has in flight far below this)
TO_WRITER_HWM: Final = 100_000
PUB_HWM: Final = 100_000
#: most messages relayed from one socket before the loop looks at the others
BURST: Final = 1000
#: how often the loop looks at the stop flag while nothing arrives (ms)
TICK_MS: Final = 200
#: the first frame of a message from the writer to the supervisor itself (a ROUTER never
#: gives a peer an empty identity, and every PUB topic is non-empty); the second says
#: what it is: HELLO (sent on both sockets once connected, before the ready line: the
#: supervisor relays nothing before it has both) or REFUSAL (then the encoded error
#: reply it answers everything with from now on)
CONTROL: Final = b""
HELLO: Final = b"hello"
REFUSAL: Final = b"refusal"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def death_error(returncode: int) -> CoordinatorError:
    """What the requests the writer left unanswered get, by how it ended
    (``returncode`` as subprocess reports it: negative for a signal)."""
    if returncode >= 0:
        return CoordinatorError(
            ErrorCode.LEDGER_UNAVAILABLE,
            f"the ledger stopped (status {returncode}) before answering; the command may "
            "or may not have been applied: retry with the same id",
            details={"reason": "writer_stopped", "status": returncode})
    name = _signal_name(-returncode)
    if -returncode == signal.SIGBUS:
        return CoordinatorError(
            ErrorCode.DB_ERROR,
            "the ledger's storage failed under its writer process (SIGBUS: a write to "
            "the database's memory-mapped -shm file was refused, e.g. the files were "
            "made immutable or their file system went away); not acknowledged: the "
            "command may or may not have been committed, retry with the same id once a "
            "ledger serves the database again",
            details={"reason": "writer_died", "signal": name})
    return CoordinatorError(
        ErrorCode.LEDGER_UNAVAILABLE,
        f"the ledger's writer process died of {name}; the command may or may not have "
        "been applied: retry with the same id",
        details={"reason": "writer_died", "signal": name})


class Supervisor:
    """The public sockets of ``bin/ledger`` and the writer process behind them.

    ``bind``/``pub``: the public endpoints (as given to ``--bind``/``--pub``);
    ``writer``: the writer process, started and waiting for its go
    (:mod:`ledger.server.writer_process`), whose internal endpoints are bound here.
    Raises zmq.ZMQError if an endpoint cannot be bound (the writer then gets no go)."""

    def __init__(self, bind: str, pub: str, writer: WriterProcess) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.writer = writer
        self.proc = writer.proc
        self._pidfd: int | None = None
        #: requests the writer has not answered: route -> [PROTOCOL, header]
        self.waiting: dict[tuple[bytes, bytes], list[bytes]] = {}
        #: the error the writer said it refuses everything with (damage, a lost file)
        self.refusal: CoordinatorError | None = None
        self.stats = {"requests": 0, "answered_for_writer": 0}
        try:
            self.front = self._socket(zmq.ROUTER)
            self.front.bind(bind)
            self.pub = self._socket(zmq.PUB)
            self.pub.sndhwm = PUB_HWM
            self.pub.bind(pub)
            self.to_writer = self._socket(zmq.PAIR)
            self.to_writer.sndhwm = TO_WRITER_HWM
            self.to_writer.bind(writer.commands)
            self.from_writer = self._socket(zmq.PAIR)
            self.from_writer.rcvhwm = PUB_HWM
            self.from_writer.bind(writer.events)
        except BaseException:
            self.ctx.destroy(linger=0)
            raise
        self.endpoints = {
            "commands": self.front.getsockopt(zmq.LAST_ENDPOINT).decode(),  # type: ignore[union-attr]
            "events": self.pub.getsockopt(zmq.LAST_ENDPOINT).decode(),  # type: ignore[union-attr]
        }

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(kind)
        sock.linger = LINGER_MS
        return sock

    # --- start --------------------------------------------------------------------

    def start(self, stop: threading.Event) -> tuple[dict[str, Any] | None, int | None]:
        """Give the writer its go and wait for its ready line (as long as its start-up
        check takes; a stop request is passed on meanwhile). Returns the ready line to
        print (endpoints: the public ones) and None, or the writer's failure line (None
        if it printed none: a usage error, said on stderr) and the status to exit
        with."""
        self.writer.go()
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(self.proc.pid)
        assert self.proc.stdout is not None
        line = b""
        passed_on = False
        while not line.endswith(b"\n"):
            if stop.is_set() and not passed_on:
                self.proc.send_signal(signal.SIGTERM)
                passed_on = True
            ready, _, _ = select.select([self.proc.stdout], [], [], TICK_MS / 1000)
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                break
            line += chunk
        try:
            first = json.loads(line) if line.strip() else None
        except ValueError:
            first = None
        if isinstance(first, dict) and first.get("ok"):
            self._await_hellos()
            return {**first, "endpoints": self.endpoints,
                    "supervisor": {"pid": os.getpid()}}, None
        code = self.proc.wait()
        if isinstance(first, dict):  # the writer's refusal
            return first, code
        if code > 0:  # it said why on stderr (a usage error)
            return None, code
        err = death_error(code) if code < 0 else CoordinatorError(
            ErrorCode.INTERNAL_ERROR, "the ledger's writer process ended before it was ready")
        return {"ok": False, "error": err.to_dict()}, EXIT_WRITER_DIED

    # --- relay --------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> int:
        """Relay until the writer exits; pass a stop request on to it. Returns the exit
        status of bin/ledger."""
        assert self.proc is not None and self.proc.stdout is not None
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.to_writer, zmq.POLLIN)
        poller.register(self.from_writer, zmq.POLLIN)
        watch = self._pidfd if self._pidfd is not None else self.proc.stdout.fileno()
        poller.register(watch, zmq.POLLIN)
        passed_on = False
        while True:
            if stop.is_set() and not passed_on:
                self.proc.send_signal(signal.SIGTERM)
                passed_on = True
            events = dict(poller.poll(TICK_MS))
            if self.to_writer in events:
                self._replies()
            if self.from_writer in events:
                self._publish()
            if watch in events and self._writer_gone():
                break
            if self.front in events:
                self._requests()
        while self.to_writer.poll(0):  # what it sent before it ended
            self._replies()
        while self.from_writer.poll(0):
            self._publish()
        return self._ended(self.proc.wait())

    def _writer_gone(self) -> bool:
        """The watched descriptor is readable: with a pidfd, the writer has exited;
        without one, its stdout pipe has data (not an end) or is at EOF (the end)."""
        assert self.proc is not None and self.proc.stdout is not None
        if self._pidfd is not None:
            return True
        try:
            return not os.read(self.proc.stdout.fileno(), 65536)
        except OSError:
            return True

    def _requests(self) -> None:
        """Requests from the broker, to the writer."""
        for _ in range(BURST):
            try:
                frames = self.front.recv_multipart(NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue  # not from a broker: nobody to answer
            self.stats["requests"] += 1
            if self.refusal is not None:  # the writer refuses everything and is ending
                self._answer(frames[:2], frames[2:4], self.refusal)
                continue
            try:
                send_frames(self.to_writer, frames, NOBLOCK)
            except zmq.Again:  # its queue is full, or it is gone (then _ended answers)
                if self.proc.poll() is None:
                    self._answer(frames[:2], frames[2:4], CoordinatorError(
                        ErrorCode.BUSY, "the ledger's queue is full; retry shortly"))
                    continue
            self.waiting[(frames[0], frames[1])] = frames[2:4]

    def _replies(self) -> None:
        for _ in range(BURST):
            try:
                frames = self.to_writer.recv_multipart(NOBLOCK)
            except zmq.Again:
                return
            if frames[0] == CONTROL:
                if frames[1:2] == [REFUSAL]:  # the writer refuses everything from now on
                    self._refusal(frames[2:])
                continue
            self.waiting.pop((frames[0], frames[1]), None)
            send_frames(self.front, frames)

    def _refusal(self, frames: list[bytes]) -> None:
        from schema import wire  # not on the relay path: the supervisor starts light

        with contextlib.suppress(CoordinatorError):
            error = wire.decode(frames).error or {}
            self.refusal = CoordinatorError(
                ErrorCode(error.get("code", "DB_ERROR")), str(error.get("message", "")),
                field=error.get("field"), details=error.get("details"))

    def _publish(self) -> None:
        for _ in range(BURST):
            try:
                frames = self.from_writer.recv_multipart(NOBLOCK)
            except zmq.Again:
                return
            if frames[0] != CONTROL:
                send_frames(self.pub, frames)

    def _await_hellos(self) -> None:
        """Wait for the writer's HELLO on both sockets (it sent them before its ready
        line: they come at once once the ipc connections are up): until then a send to
        it would find no peer. A writer that ended meanwhile is for serve() to see."""
        waiting = {self.to_writer, self.from_writer}
        poller = zmq.Poller()
        for sock in waiting:
            poller.register(sock, zmq.POLLIN)
        while waiting:
            for sock, _ in poller.poll(TICK_MS):
                if sock.recv_multipart()[:2] == [CONTROL, HELLO]:
                    waiting.discard(sock)
                    poller.unregister(sock)
            if waiting and self.proc.poll() is not None:
                return

    def _answer(self, route: list[bytes], head: list[bytes], error: CoordinatorError) -> None:
        from schema import wire  # not on the relay path: the supervisor starts light

        request_id = wire.header_id(head)
        send_frames(self.front, [*route, *wire.encode(wire.error_reply(request_id, error))])

    def _ended(self, returncode: int) -> int:
        """The writer has ended: answer what it left (with the error it refused everything
        with, if it said one), say how it ended, pick the status."""
        error = self.refusal if returncode >= 0 and self.refusal else death_error(returncode)
        for (identity, key), head in self.waiting.items():
            self._answer([identity, key], head, error)
            self.stats["answered_for_writer"] += 1
        self.waiting.clear()
        for _ in range(10_000):  # and what already waits at the door
            try:
                frames = self.front.recv_multipart(NOBLOCK)
            except zmq.Again:
                break
            if len(frames) >= 2:
                self._answer(frames[:2], frames[2:4], error)
                self.stats["answered_for_writer"] += 1
        if returncode >= 0:
            log.debug("writer process exited with status %d (%s)", returncode, self.stats)
            return returncode
        sys.stderr.write(json.dumps({"ok": False, "role": "ledger",
                                     "error": error.to_dict()}) + "\n")
        sys.stderr.flush()
        return EXIT_WRITER_DIED

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.ctx.destroy(linger=LINGER_MS)
        self.writer.cleanup()


def supervise(bind: str, pub: str, writer: WriterProcess, stop: threading.Event) -> int:
    """Run ``bin/ledger`` as the supervisor of its ``writer`` process: print the ready
    line (or the writer's refusal), relay until the writer ends, return the exit
    status."""
    try:
        supervisor = Supervisor(bind, pub, writer)
    except zmq.ZMQError as exc:
        writer.abort()
        announce({"ok": False, "error": {"code": str(ErrorCode.BIND_FAILED),
                                         "message": str(exc)}})
        return 2
    try:
        ready, status = supervisor.start(stop)
        if ready is not None:
            announce(ready)
        if status is not None:
            return status
        return supervisor.serve(stop)
    finally:
        supervisor.close()
