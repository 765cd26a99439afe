"""bin/monitor and agents.monitor.EventFollower: every event exactly once, in seq order,
hash chain checked, against a real ledger + broker; and, for the failures a healthy bus
never produces (lost or forged events, a silent broker), against a scripted fake broker
that speaks the same protocol.

No sleeps: every wait is on a received message or a printed line, with a timeout.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import zmq

from agents.client import AgentClient
from agents.tools.launch import LOOPBACK_ANY, Bus
from agents.tools.monitor import (
    BROKER_RESUMED,
    BROKER_SILENT,
    CHAIN_BROKEN,
    LEDGER_DOWN,
    LEDGER_UP,
    Alert,
    EventFollower,
    summarise,
    table_line,
)
from ledger.log.chain import GENESIS_HASH, canonical_json
from ledger.plans.ledger import Ledger
from ledger.storage import sqlite
from ledger.storage.sqlite import SqliteStore
from schema import wire
from schema.errors import CoordinatorError, ErrorCode
from tests.agents.events import chain_rows, tampered_rows
from tests.support.buses import BusFactory

MONITOR = Path(sys.executable).parent / "os-monitor"
DB = "data/monitor.db"
PLAN = "P-MON"


# --- a real bus, and load --------------------------------------------------------------


def seed(root: Path, events: int) -> None:
    """Write ``events`` events straight to the database before the bus starts (a plan,
    then items); the ledger process then serves them like any others."""
    path = root / DB
    sqlite.initialise(path)
    with SqliteStore(path, durability="off") as store:
        ledger = Ledger(store)
        for i in range(events):
            cmd: dict[str, Any] = (
                {"action": "CREATE_PLAN", "plan_id": PLAN, "title": "monitor load"} if i == 0
                else {"action": "ADD_ITEM", "plan_id": PLAN, "item_id": f"I-seed-{i}",
                      "title": f"seeded {i}"})
            result = ledger.apply({**cmd, "command_id": f"seed:{i}", "actor": "Seeder",
                                   "session_id": "S-seed"})
            assert result.status == "APPLIED", result.error


def running_bus(factory: BusFactory, seeded: int = 0) -> Bus:
    """A bus on ``DB`` in the factory's sandbox, after ``seeded`` events were written
    straight to the database; the factory stops it after the test."""
    if seeded:
        seed(factory.root, seeded)
    return factory.start(DB, ledger_args=["--durability", "normal"], ready=True)


def produce(front: str, count: int, *, tag: str, window: int = 500,
            timeout: float = 10.0) -> None:
    """Apply ``count`` ADD_ITEM commands through the broker, ``window`` in flight at a time
    on one DEALER; every reply must be APPLIED."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(front)
    try:
        sent, waiting = 0, set()
        while sent < count or waiting:
            while sent < count and len(waiting) < window:
                cid = f"{tag}:{sent}"
                sock.send_multipart(wire.encode(wire.CommandMsg(
                    id=cid, actor="Loader", session_id="S-load",
                    command={"action": "ADD_ITEM", "plan_id": PLAN,
                             "item_id": f"I-{tag}-{sent}", "title": f"load {sent}"})))
                waiting.add(cid)
                sent += 1
            assert sock.poll(int(timeout * 1000)), f"no reply within {timeout}s"
            reply = wire.decode(sock.recv_multipart())
            assert isinstance(reply, wire.Reply) and reply.status == "APPLIED", reply
            waiting.discard(reply.id)
    finally:
        sock.close(linger=0)
        ctx.term()


def wait_until(follower: EventFollower, condition: Callable[[], bool], timeout: float,
               what: str) -> list[Any]:
    """Read from the follower until ``condition()``; return what was read."""
    items: list[Any] = []
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {items[-5:]}"
        item = follower.next(0.1)
        if item is not None:
            items.append(item)
    return items


def heard_heartbeat(follower: EventFollower) -> Callable[[], bool]:
    """True once a heartbeat arrived, i.e. the subscription is in place."""
    return lambda: follower.ledger_up is not None


def assert_exactly_once(events: list[dict[str, Any]], first: int, last: int) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(first, last + 1)), (
        f"{len(seqs)} events, first {seqs[:3]}, last {seqs[-3:]}")


def db_hashes(root: Path) -> dict[int, str]:
    with SqliteStore(root / DB, readonly=True) as store:
        return {e.seq: e.hash for e in store.iter_events()}


# --- (a) catch up from seq 0, then follow live -----------------------------------------


def test_follower_started_after_1000_events_catches_up_then_follows_live(
        sandbox: Path, bus_factory: BusFactory) -> None:
    with running_bus(bus_factory, seeded=1000) as bus, EventFollower(bus.front, bus.pub) as f:
        caught_up = f.collect(1000, timeout=15)
        assert_exactly_once(caught_up, 1, 1000)
        wait_until(f, heard_heartbeat(f), 5, "a heartbeat")
        produce(bus.front, 300, tag="live")
        live = f.collect(1300, timeout=15)
        assert_exactly_once(live, 1001, 1300)
        assert f.chain_ok and not f.alerts
        assert f.stats.received == 1300 and f.stats.first_seq == 1
        assert f.stats.fetched_events >= 1000  # the catch-up came from REPLAY ...
        assert f.stats.received > f.stats.fetched_events  # ... the rest from the PUB stream
    hashes = db_hashes(sandbox)
    assert [e["hash"] for e in caught_up + live] == [hashes[s] for s in range(1, 1301)]


class LineReader:
    """The stdout lines of a child process, read by a thread into a queue, so that every
    wait for a line has a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, done: Callable[[dict[str, Any]], bool], timeout: float
              ) -> list[dict[str, Any]]:
        """JSON lines up to and including the first for which ``done`` is true."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; last lines: {out[-3:]}"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"the monitor exited; last lines: {out[-3:]}"
            out.append(json.loads(line))
            if done(out[-1]):
                return out

    def rest(self, timeout: float) -> list[dict[str, Any]]:
        """Every remaining line, until the stream ends."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the monitor did not exit; last: {out[-3:]}") from None
            if line is None:
                return out
            out.append(json.loads(line))


@contextmanager
def monitor_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], LineReader]]:
    proc = subprocess.Popen([str(MONITOR), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=os.environ.copy())
    assert proc.stdout is not None
    try:
        yield proc, LineReader(proc.stdout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def test_monitor_process_catches_up_follows_live_and_stops_on_sigterm(
        sandbox: Path, bus_factory: BusFactory) -> None:
    with running_bus(bus_factory, seeded=1000) as bus, \
            monitor_process("--broker", bus.front, "--pub", bus.pub) as (proc, out):
        ready = out.until(lambda line: True, timeout=10)[0]
        assert ready["ready"] is True and ready["from_seq"] == 0
        lines = out.until(lambda line: line.get("seq") == 1000, timeout=15)
        produce(bus.front, 200, tag="live")
        lines += out.until(lambda line: line.get("seq") == 1200, timeout=15)
        proc.send_signal(signal.SIGTERM)
        rest = out.rest(timeout=10)
        assert proc.wait(10) == 0
    events = [line for line in lines + rest if "seq" in line]
    assert not [line for line in lines + rest if "alert" in line]
    assert_exactly_once(events, 1, 1200)
    assert all(isinstance(e["payload"], dict) for e in events)  # payload printed parsed
    summary = rest[-1]["summary"]
    assert summary["received"] == 1200 and summary["first_seq"] == 1
    assert summary["last_seq"] == 1200 and summary["chain"] == "OK"
    hashes = db_hashes(sandbox)
    assert [e["hash"] for e in events] == [hashes[s] for s in range(1, 1201)]


# --- (b) a follower that falls behind --------------------------------------------------


def test_follower_with_tiny_hwm_that_falls_behind_still_gets_every_event_once(
        sandbox: Path, bus_factory: BusFactory) -> None:
    with running_bus(bus_factory, seeded=1) as bus, \
            EventFollower(bus.front, bus.pub, rcvhwm=1) as f:
        assert_exactly_once(f.collect(1, timeout=10), 1, 1)
        wait_until(f, heard_heartbeat(f), 5, "a heartbeat")
        produce(bus.front, 2000, tag="burst")  # while the follower reads nothing
        events = f.collect(2001, timeout=20)
        assert_exactly_once(events, 2, 2001)
        assert f.chain_ok and not f.alerts, f.alerts
        assert f.stats.received == 2001
    hashes = db_hashes(sandbox)
    assert [e["hash"] for e in events] == [hashes[s] for s in range(2, 2002)]


# --- starting points -------------------------------------------------------------------


def test_from_seq_fetches_the_link_first_and_live_starts_at_the_head(
        sandbox: Path, bus_factory: BusFactory) -> None:
    with running_bus(bus_factory, seeded=600) as bus:
        with EventFollower(bus.front, bus.pub, from_seq=500) as f:
            events = f.collect(600, timeout=10)
            assert_exactly_once(events, 501, 600)
            assert f.chain_ok and f.stats.first_seq == 501
        with EventFollower(bus.front, bus.pub, live=True) as f:
            wait_until(f, lambda: f.caught_up and f.ledger_up is not None, 5, "the head")
            assert f.last_seq == 600 and f.stats.received == 0
            produce(bus.front, 5, tag="after")
            assert_exactly_once(f.collect(605, timeout=10), 601, 605)
            assert f.chain_ok


def test_monitor_filters_what_it_prints_not_what_it_tracks(
        sandbox: Path, bus_factory: BusFactory) -> None:
    with running_bus(bus_factory, seeded=20) as bus:
        with AgentClient(bus.front, "Other") as other:
            other.create_plan("P-OTHER", "another plan")
            other.add_item("P-OTHER", "I-O1", "other item")
            other.change_state("I-O1", 1, "IN_PROGRESS")
            assert other.change_state("I-O1", 1, "DONE").status == "CONFLICT"  # seq 24
        base = ["--broker", bus.front, "--pub", bus.pub]
        with monitor_process(*base, "--plan-id", "P-OTHER", "--until-seq", "24") as (p, out):
            lines = out.rest(timeout=15)
            assert p.wait(10) == 0
        assert [line["seq"] for line in lines if "seq" in line] == [21, 22, 23, 24]
        assert lines[-1]["summary"]["received"] == 24  # every seq tracked
        assert lines[-1]["summary"]["printed"] == 4
        with monitor_process(*base, "--event-type", "plan_conflict_detected",
                             "--actor", "Other", "--count", "1") as (p, out):
            lines = out.rest(timeout=15)
            assert p.wait(10) == 0
        printed = [line for line in lines if "seq" in line]
        assert [(e["seq"], e["event_type"]) for e in printed] == [
            (24, "PLAN_CONFLICT_DETECTED")]
        table = subprocess.run([str(MONITOR), *base, "--from-seq", "22", "--format", "table",
                                "--idle-exit", "0.3"], capture_output=True, text=True,
                               timeout=20, stdin=subprocess.DEVNULL)
        assert table.returncode == 0, table.stderr
        header, *rows, summary = table.stdout.splitlines()
        assert header.split()[:3] == ["SEQ", "TIME", "TYPE"]
        assert [r.split()[0] for r in rows] == ["23", "24"]
        assert "TODO -> IN_PROGRESS v2" in rows[0]
        assert "CONFLICT STATE_CHANGE: expected v1, current v2" in rows[1]
        assert json.loads(summary)["summary"]["received"] == 2


def test_table_view_is_readable() -> None:
    row = chain_rows(1)[0]
    line = table_line(row)
    assert line.split()[:2] == ["1", "00:00:00.000"]
    assert "PLAN_ITEM_ADDED" in line and "Faker" in line and "'fake 1'" in line
    state = dict(row, event_type="PLAN_ITEM_STATE_CHANGED", payload=canonical_json({
        "change": {"state": "DONE"}, "previous": {"state": "IN_PROGRESS"}, "new_version": 3}))
    assert summarise(state) == "IN_PROGRESS -> DONE v3"


# --- a fake broker: the failures a healthy bus does not produce ------------------------


class FakeBroker:
    """A ROUTER and a PUB on free ports, served by a thread: answers PING and REPLAY from
    its rows, publishes what the test tells it to, and heartbeats every 0.1 s with the
    head seq unless told to be silent."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = list(rows)
        self.commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.stop_flag = threading.Event()
        ready: queue.Queue[tuple[str, str]] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        self.front, self.pub = ready.get(timeout=5)

    def add(self, rows: list[dict[str, Any]], publish: Callable[[int], bool]) -> None:
        """Append rows to the log and publish those whose seq passes ``publish``, at once
        (no heartbeat in between)."""
        self.commands.put(("add", (rows, publish)))

    def publish(self, rows: list[dict[str, Any]]) -> None:
        """Publish rows again (the log is unchanged)."""
        self.commands.put(("publish", rows))

    def silent(self, flag: bool) -> None:
        self.commands.put(("silent", flag))

    def beat_head(self, seq: int | None) -> None:
        """Heartbeats announce ``seq`` as the head (None: the real head)."""
        self.commands.put(("beat_head", seq))

    def close(self) -> None:
        self.stop_flag.set()
        self.thread.join(5)

    def __enter__(self) -> FakeBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self, ready: queue.Queue[tuple[str, str]]) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        router, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUB)
        for sock in (router, pub):
            sock.linger = 0
            sock.bind(LOOPBACK_ANY)
        ready.put((router.getsockopt(zmq.LAST_ENDPOINT).decode(),  # type: ignore[union-attr]
                   pub.getsockopt(zmq.LAST_ENDPOINT).decode()))  # type: ignore[union-attr]
        silent, next_beat, beat_head = False, 0.0, None
        try:
            while not self.stop_flag.is_set():
                while not self.commands.empty():
                    kind, arg = self.commands.get_nowait()
                    if kind == "silent":
                        silent = arg
                    elif kind == "beat_head":
                        beat_head = arg
                    elif kind == "add":
                        rows, publish = arg
                        self.rows.extend(rows)
                        self._publish(pub, [r for r in rows if publish(r["seq"])])
                    else:
                        self._publish(pub, arg)
                if not silent and time.monotonic() >= next_beat:
                    head = self.rows[-1] if self.rows else {"seq": 0, "hash": GENESIS_HASH}
                    if beat_head is not None:
                        head = {"seq": beat_head, "hash": GENESIS_HASH}
                    pub.send_multipart([wire.TOPIC_HEARTBEAT, *wire.encode(wire.Heartbeat(
                        id=str(head["seq"]), source="broker", head_seq=head["seq"],
                        head_hash=head["hash"], ts="2026-01-01T00:00:00Z"))])
                    next_beat = time.monotonic() + 0.1
                if router.poll(20):
                    ident, *frames = router.recv_multipart()
                    router.send_multipart([ident, *wire.encode(self._answer(frames))])
        finally:
            router.close()
            pub.close()
            ctx.term()

    @staticmethod
    def _publish(pub: zmq.Socket[bytes], rows: list[dict[str, Any]]) -> None:
        for row in rows:
            pub.send_multipart([wire.TOPIC_EVENT, *wire.encode(
                wire.EventMsg(id=str(row["seq"]), event=row))])

    def _answer(self, frames: list[bytes]) -> wire.Reply:
        msg = wire.decode(frames)
        head = self.rows[-1]["seq"] if self.rows else 0
        if isinstance(msg, wire.Ping):
            return wire.Reply(id=msg.id, ok=True, result={"head_seq": head})
        assert isinstance(msg, wire.Replay)
        rows = [r for r in self.rows if r["seq"] >= msg.from_seq
                and (msg.to_seq is None or r["seq"] <= msg.to_seq)][: msg.limit]
        return wire.Reply(id=msg.id, ok=True, result={"events": rows, "head_seq": head})


def test_lost_live_events_and_a_silent_tail_loss_are_fetched_from_the_log() -> None:
    rows = chain_rows(40)
    with FakeBroker(rows[:10]) as fake, EventFollower(fake.front, fake.pub) as f:
        assert_exactly_once(f.collect(10, timeout=5), 1, 10)
        wait_until(f, heard_heartbeat(f), 5, "a heartbeat")
        # 13, 14 and 22 are lost on the way: a later seq shows the gap
        fake.add(rows[10:30], publish=lambda seq: seq not in (13, 14, 22))
        assert_exactly_once(f.collect(30, timeout=5), 11, 30)
        gaps = f.stats.gaps_fetched
        assert gaps >= 1 and f.stats.fetched_events == 10 + 3
        # the last ones are lost with nothing after them: only the heartbeat's head tells
        fake.add(rows[30:35], publish=lambda seq: False)
        assert_exactly_once(f.collect(35, timeout=5), 31, 35)
        assert f.stats.gaps_fetched > gaps
        # late live copies of what was fetched are dropped as duplicates
        dupes = f.stats.duplicates_dropped
        fake.publish(rows[30:35])
        fake.add(rows[35:40], publish=lambda seq: True)
        assert_exactly_once(f.collect(40, timeout=5), 36, 40)
        assert f.stats.duplicates_dropped >= dupes + 5
        assert f.chain_ok and not f.alerts


def test_a_silent_broker_is_reported_and_the_follower_resumes_after_it() -> None:
    rows = chain_rows(20)
    with FakeBroker(rows[:10]) as fake, \
            EventFollower(fake.front, fake.pub, dead_after=0.5) as f:
        assert_exactly_once(f.collect(10, timeout=5), 1, 10)
        fake.silent(True)
        fake.add(rows[10:15], publish=lambda seq: False)  # published while unheard
        items = wait_until(f, lambda: f.silent, 5, "BROKER_SILENT")
        assert [i.alert for i in items if isinstance(i, Alert)] == [BROKER_SILENT]
        # back like a restarted broker that does not know the head yet: its heartbeats say
        # 0 and nothing new is published, so only the follower's own resync finds 11..15
        fake.beat_head(0)
        fake.silent(False)
        assert_exactly_once(f.collect(15, timeout=5), 11, 15)
        fake.beat_head(None)
        fake.add(rows[15:20], publish=lambda seq: True)
        assert_exactly_once(f.collect(20, timeout=5), 16, 20)
        assert [a.alert for a in f.alerts] == [BROKER_SILENT, BROKER_RESUMED]
        assert f.chain_ok


def test_a_real_broker_restart_is_survived(
        sandbox: Path, bus_factory: BusFactory) -> None:
    with running_bus(bus_factory, seeded=10) as bus, \
            EventFollower(bus.front, bus.pub, dead_after=1.5) as f:
        assert_exactly_once(f.collect(10, timeout=10), 1, 10)
        wait_until(f, heard_heartbeat(f), 5, "a heartbeat")
        assert bus.broker.stop() == 0
        wait_until(f, lambda: f.silent, 6, "BROKER_SILENT")
        bus.restart_broker()
        with AgentClient(bus.front, "probe", timeout=2) as probe:
            probe.wait_ready(timeout=10)
        produce(bus.front, 10, tag="after-restart")
        assert_exactly_once(f.collect(20, timeout=10), 11, 20)
        kinds = [a.alert for a in f.alerts]
        assert kinds[:2] == [BROKER_SILENT, BROKER_RESUMED], kinds
        # a new broker heartbeats before its first probe of the ledger has been answered
        # (ledger_up false); if our SUB reconnects in time to hear that beat, the monitor
        # rightly says LEDGER_DOWN, then LEDGER_UP with the next beat
        assert kinds[2:] in ([], [LEDGER_DOWN], [LEDGER_DOWN, LEDGER_UP]), kinds
        assert f.chain_ok


# --- (c) a tampered stream is flagged --------------------------------------------------


def test_a_tampered_stream_is_flagged_at_the_first_seq_it_affects() -> None:
    with FakeBroker(tampered_rows()[:6]) as fake, EventFollower(fake.front, fake.pub) as f:
        assert_exactly_once(f.collect(6, timeout=5), 1, 6)
        assert [(a.alert, a.seq) for a in f.alerts] == [(CHAIN_BROKEN, 3), (CHAIN_BROKEN, 6)]
        assert "hash does not match" in f.alerts[0].message
        assert "prev_hash" in f.alerts[1].message
        assert not f.chain_ok and f.stats.summary()["chain"] == "BROKEN"
        # a live event that does not link to what came before is flagged too
        live = chain_rows(1, first=7, prev="f" * 64)
        fake.add(live, publish=lambda seq: True)
        assert_exactly_once(f.collect(7, timeout=5), 7, 7)
        assert [a.seq for a in f.alerts] == [3, 6, 7]


def test_starting_after_a_forged_event_is_flagged() -> None:
    rows = chain_rows(5)
    rows[2] = dict(rows[2], actor="Mallory")  # seq 3 edited, its hash not recomputed
    with FakeBroker(rows) as fake, EventFollower(fake.front, fake.pub, from_seq=3) as f:
        assert_exactly_once(f.collect(5, timeout=5), 4, 5)
        assert [(a.alert, a.seq) for a in f.alerts] == [(CHAIN_BROKEN, 3)]


def test_a_hole_in_the_ledgers_own_log_is_flagged_not_looped_on() -> None:
    rows = chain_rows(8)
    del rows[3:5]  # the ledger "has" no seq 4 and 5
    with FakeBroker(rows) as fake, EventFollower(fake.front, fake.pub) as f:
        events = f.collect(8, timeout=5)
        assert [e["seq"] for e in events] == [1, 2, 3, 6, 7, 8]
        assert [(a.alert, a.seq) for a in f.alerts] == [(CHAIN_BROKEN, 6)]
        assert "no event seq 4..5" in f.alerts[0].message


def test_monitor_process_reports_a_broken_chain_loudly_and_exits_1() -> None:
    with FakeBroker(tampered_rows()[:6]) as fake, monitor_process(
            "--broker", fake.front, "--pub", fake.pub, "--until-seq", "6") as (proc, out):
        lines = out.rest(timeout=15)
        assert proc.wait(10) == 1
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    alerts = [line for line in lines if "alert" in line]
    assert [(a["alert"], a["seq"]) for a in alerts] == [(CHAIN_BROKEN, 3), (CHAIN_BROKEN, 6)]
    assert "CHAIN_BROKEN" in stderr and "seq 3" in stderr
    assert [line["seq"] for line in lines if "seq" in line and "alert" not in line] == [
        1, 2, 3, 4, 5, 6]
    assert lines[-1]["summary"]["chain"] == "BROKEN"


def test_collect_times_out_with_the_stats() -> None:
    with FakeBroker(chain_rows(2)) as fake, EventFollower(fake.front, fake.pub) as f:
        started = time.monotonic()
        with pytest.raises(CoordinatorError) as info:
            f.collect(5, timeout=0.5)
        assert info.value.code == ErrorCode.TIMEOUT
        assert time.monotonic() - started < 3
        assert info.value.details["last_seq"] == 2
