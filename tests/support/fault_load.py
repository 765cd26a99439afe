"""Steady load for the fault tests, and the audit of what it left in the log.

A :class:`LoadAgent` sends a mix of plan commands - ADD_ITEM on its own plan,
STATE_CHANGE on its own item, UPDATE_ITEM on one item every agent shares (so real
version conflicts happen) - and re-sends each one with the SAME command_id until it
gets a decided answer (APPLIED, CONFLICT or REJECTED), through ledger and broker
crashes: the client's Lazy Pirate retries, plus a loop over LEDGER_UNAVAILABLE / BUSY /
TIMEOUT. Every decided answer is an :class:`Ack`. :func:`audit` then checks the database
against the acks: each acknowledged command is in the log exactly once, with the seq and
hash its reply carried; nothing is in the log that nobody was told about; the chain
verifies and the tables equal a replay of the log.

:class:`Load` runs agents in threads of this process and in separate processes
(``python -m tests.fault_load --front ADDR --name NAME``: one JSON line per ack on
stdout, stops when its stdin is closed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Final

from agents.client import RETRYABLE, AgentClient
from ledger.log.verify import verify_store
from ledger.storage.sqlite import SqliteStore
from schema import wire
from schema.errors import CoordinatorError, ErrorCode

ROOT: Final = Path(__file__).resolve().parents[2]
SHARED_PLAN: Final = "P-SHARED"
SHARED_ITEM: Final = "I-SHARED"
#: Longest an agent keeps re-sending one command before the test fails.
COMMAND_DEADLINE: Final = 120.0


@dataclass(frozen=True, slots=True)
class Ack:
    """The decided answer an agent received for one command."""

    agent: str
    command_id: str
    status: str
    seq: int | None
    hash: str | None
    replayed: bool
    new_version: int | None = None
    current_version: int | None = None

    @classmethod
    def of(cls, agent: str, reply: wire.Reply) -> Ack:
        assert reply.status is not None
        return cls(agent, reply.id, reply.status, reply.seq, reply.hash, reply.replayed,
                   reply.new_version, reply.current_version)

    def line(self) -> str:
        return json.dumps(asdict(self))


class Tally:
    """Thread-safe record of acks; the test waits on it for progress."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.acks: dict[str, Ack] = {}
        self.errors: list[str] = []

    @property
    def count(self) -> int:
        with self._cond:
            return len(self.acks)

    def add(self, ack: Ack) -> None:
        with self._cond:
            if ack.command_id in self.acks:
                self.errors.append(f"{ack.command_id} acknowledged twice")
            self.acks[ack.command_id] = ack
            self._cond.notify_all()

    def fail(self, message: str) -> None:
        with self._cond:
            self.errors.append(message)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        """True once ``count`` acks are in (False on timeout or on an agent's error)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.acks) >= count or bool(self.errors), timeout)
            return len(self.acks) >= count and not self.errors


def decided(client: AgentClient, msg: Any, *, deadline: float,
            abort: threading.Event | None = None) -> wire.Reply:
    """Send ``msg`` and re-send it with the same id until the answer is decided
    (``abort``: give up at once, the test has already failed)."""
    while True:
        if abort is not None and abort.is_set():
            raise AssertionError(f"{msg.id}: aborted")
        try:
            reply = client.request(msg)
        except CoordinatorError as exc:
            if exc.code is not ErrorCode.TIMEOUT:
                raise
        else:
            if reply.status is not None:
                return reply
            code = (reply.error or {}).get("code")
            if code not in RETRYABLE:
                raise AssertionError(f"{msg.id}: unexpected answer {reply.error}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"{msg.id}: not answered within {COMMAND_DEADLINE}s")


def setup_shared(front: str, tally: Tally) -> None:
    """The plan and item every agent shares (created before the load starts)."""
    with AgentClient(front, "setup", session_id="S-setup", timeout=2.0) as client:
        client.wait_ready(timeout=30)
        deadline = time.monotonic() + COMMAND_DEADLINE
        for msg in (client.requests.create_plan(SHARED_PLAN, "shared",
                                                command_id="setup:plan").msg,
                    client.requests.add_item(SHARED_PLAN, SHARED_ITEM, "shared item",
                                             command_id="setup:item").msg):
            tally.add(Ack.of("setup", decided(client, msg, deadline=deadline)))


class LoadAgent:
    """One agent on its own connection; see the module docstring for the mix."""

    def __init__(self, front: str, name: str, *, timeout: float = 1.0,
                 abort: threading.Event | None = None) -> None:
        self.name = name
        self.abort = abort
        self.client = AgentClient(front, name, session_id=f"S-{name}", timeout=timeout,
                                  retries=3)
        self.own_item = f"I-{name}-own"
        self.own_version = 1
        self.own_state = "TODO"
        self.shared_version = 1

    def _send(self, msg: Any) -> Ack:
        reply = decided(self.client, msg, deadline=time.monotonic() + COMMAND_DEADLINE,
                        abort=self.abort)
        return Ack.of(self.name, reply)

    def run(self, stop: threading.Event, on_ack: Callable[[Ack], None]) -> None:
        requests = self.client.requests
        try:
            on_ack(self._send(requests.create_plan(
                f"P-{self.name}", self.name, command_id=f"{self.name}:plan").msg))
            on_ack(self._send(requests.add_item(
                f"P-{self.name}", self.own_item, "own item", command_id=f"{self.name}:own").msg))
            i = 0
            while not stop.is_set():
                i += 1
                on_ack(self._step(i))
        finally:
            self.client.close()

    def _step(self, i: int) -> Ack:
        cid = f"{self.name}:{i}"
        if i % 4 == 0:
            return self._send(self.client.requests.add_item(
                f"P-{self.name}", f"I-{self.name}-{i}", f"item {i} of {self.name}",
                command_id=cid).msg)
        if i % 4 == 1:
            target = "IN_PROGRESS" if self.own_state == "TODO" else "TODO"
            ack = self._send(self.client.requests.change_state(
                self.own_item, self.own_version, target, command_id=cid).msg)
            if ack.status == "APPLIED" and ack.new_version is not None:
                self.own_version, self.own_state = ack.new_version, target
            return ack
        ack = self._send(self.client.requests.update_item(
            SHARED_ITEM, self.shared_version, command_id=cid, title=f"{self.name} {i}").msg)
        known = ack.new_version if ack.status == "APPLIED" else ack.current_version
        if known is not None:
            self.shared_version = max(self.shared_version, known)
        return ack


class Load:
    """Agents in threads and in separate processes, all feeding one :class:`Tally`."""

    def __init__(self, front: str, tally: Tally, *, threads: int, processes: int,
                 log_dir: Path, prefix: str = "A") -> None:
        self.tally = tally
        self.stop_flag = threading.Event()
        self.abort_flag = threading.Event()
        self.threads: list[threading.Thread] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        for n in range(threads):
            agent = LoadAgent(front, f"{prefix}{n}", abort=self.abort_flag)
            t = threading.Thread(target=self._run_thread, args=(agent,), daemon=True,
                                 name=agent.name)
            t.start()
            self.threads.append(t)
        for n in range(processes):
            name = f"{prefix}p{n}"
            with open(log_dir / f"agent-{name}.log", "ab") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tests.support.fault_load", "--front", front,
                     "--name", name], cwd=ROOT, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=err)
            self.procs.append(proc)
            reader = threading.Thread(target=self._read_proc, args=(name, proc),
                                      daemon=True, name=f"read-{name}")
            reader.start()
            self.threads.append(reader)

    def _run_thread(self, agent: LoadAgent) -> None:
        try:
            agent.run(self.stop_flag, self.tally.add)
        except BaseException as exc:
            self.tally.fail(f"agent {agent.name}: {exc!r}")

    def _read_proc(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                self.tally.add(Ack(**json.loads(line)))
            except (TypeError, ValueError) as exc:
                self.tally.fail(f"agent process {name}: bad line {line!r}: {exc}")
        code = proc.wait()
        if code != 0:
            self.tally.fail(f"agent process {name} exited with {code}")

    def stop(self, timeout: float = COMMAND_DEADLINE, *, abort: bool = False) -> None:
        """Let every agent finish the command it is on (answered), then end; ``abort``
        (the test failed already): end them at once."""
        self.stop_flag.set()
        if abort:
            self.abort_flag.set()
            timeout = 10.0
        for proc in self.procs:
            if abort:
                proc.kill()
            if proc.stdin is not None:
                proc.stdin.close()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                self.tally.fail(f"agent process {proc.args} did not stop")
            elif abort:
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            self.tally.fail(f"agents did not stop: {alive}")


def audit(db: Path, acks: Mapping[str, Ack]) -> dict[str, Any]:
    """Check the database against the acks (see the module docstring); the figures."""
    with SqliteStore(db, readonly=True) as store:
        events = list(store.iter_events())
        verify = verify_store(store)
        records = {cid: store.get_command(cid) for cid in acks}
    by_command: dict[str | None, list[Any]] = defaultdict(list)
    for ev in events:
        by_command[ev.command_id].append(ev)
    problems: list[str] = []
    found = 0
    for cid, ack in acks.items():
        logged = by_command.get(cid, [])
        record = records[cid]
        if ack.status == "REJECTED":
            if logged:
                problems.append(f"{cid}: REJECTED but in the log at seq {logged[0].seq}")
            continue
        if len(logged) != 1:
            problems.append(f"{cid}: acknowledged {ack.status} at seq {ack.seq}, "
                            f"{len(logged)} events in the log")
        elif (logged[0].seq, logged[0].hash) != (ack.seq, ack.hash):
            problems.append(f"{cid}: reply said seq {ack.seq} hash {ack.hash}, the log has "
                            f"seq {logged[0].seq} hash {logged[0].hash}")
        else:
            found += 1
        if record is None or (record.status, record.seq) != (ack.status, ack.seq):
            problems.append(f"{cid}: command record {record} disagrees with the reply")
    unknown = [ev.seq for ev in events if ev.command_id not in acks]
    if unknown:
        problems.append(f"events nobody was answered for: seq {unknown[:10]}")
    decided_in_log = [a for a in acks.values() if a.status in ("APPLIED", "CONFLICT")]
    return {
        "acknowledged": len(decided_in_log), "found": found,
        "duplicates": sum(len(v) - 1 for v in by_command.values() if len(v) > 1),
        "events": len(events), "conflicts": sum(a.status == "CONFLICT" for a in acks.values()),
        "rejected": sum(a.status == "REJECTED" for a in acks.values()),
        "answered_from_stored_outcome": sum(a.replayed for a in acks.values()),
        "chain_status": verify["chain_status"], "verify_mismatches": verify["mismatch_count"],
        "problems": problems[:20], "problem_count": len(problems),
    }


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fault_load",
                                description="one load agent; an ack per line on stdout; "
                                "stops when stdin is closed")
    p.add_argument("--front", required=True)
    p.add_argument("--name", required=True)
    args = p.parse_args(argv)
    stop = threading.Event()
    out: IO[str] = sys.stdout

    def watch_stdin() -> None:
        sys.stdin.buffer.read()  # returns at EOF: the test closed our stdin
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()

    def emit(ack: Ack) -> None:
        out.write(ack.line() + "\n")
        out.flush()

    LoadAgent(args.front, args.name).run(stop, emit)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
