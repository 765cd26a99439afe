"""Broker crash and restart under load: agents and a monitor reconnect by themselves.

The broker holds no state worth keeping: a SIGKILL loses only the requests and events
in flight through it. Agents (AgentClient: Lazy Pirate re-sends with the same
command_id) and a monitor (EventFollower: notices the silence, then fetches everything
after its last seq) carry on once it is back on the same endpoints: every acknowledged
command is in the log exactly once, and the monitor delivers every seq exactly once, in
order, with no gap.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

from agents.client import AgentClient
from agents.tools.monitor import BROKER_RESUMED, BROKER_SILENT, Alert, EventFollower
from ledger.storage.sqlite import SqliteStore
from tests.support.buses import BusFactory
from tests.support.fault_load import Load, Tally, audit, setup_shared

LEDGER_ARGS = ["--heartbeat", "0.2"]
BROKER_ARGS = ["--liveness", "1.0", "--heartbeat", "0.2"]
PROGRESS_TIMEOUT = 60.0


class FollowerThread(threading.Thread):
    """An EventFollower used (as it must be) from one thread of its own."""

    def __init__(self, front: str, pub: str) -> None:
        super().__init__(name="follower", daemon=True)
        self.front, self.pub = front, pub
        self.events: list[dict[str, Any]] = []
        self.alerts: list[Alert] = []
        self.stats: dict[str, Any] = {}
        self.chain_ok = False
        self.silent = threading.Event()
        self.resumed = threading.Event()
        self.follower: EventFollower | None = None
        self.timeline: list[tuple[float, str, int | None]] = []
        self._progress = threading.Condition()
        self.ready = threading.Event()
        self.until_seq: int | None = None
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with EventFollower(self.front, self.pub, dead_after=1.0) as f:
                self.follower = f
                self.ready.set()
                while not self.done.is_set():
                    item = f.next(0.1)
                    if isinstance(item, dict):
                        with self._progress:
                            self.events.append(item)
                            self._progress.notify_all()
                    elif isinstance(item, Alert):
                        self.alerts.append(item)
                        self.timeline.append((time.monotonic(), item.alert, item.seq))
                        if item.alert == BROKER_SILENT:
                            self.silent.set()
                        elif item.alert == BROKER_RESUMED:
                            self.resumed.set()
                    target = self.until_seq
                    if target is not None and f.handed_seq >= target:
                        break
                self.stats = f.stats.summary()
                self.chain_ok = f.chain_ok
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()
            self.done.set()
            with self._progress:
                self._progress.notify_all()

    def explain(self) -> str:
        f = self.follower
        state = (f"silent={f.silent} last_seq={f.last_seq} head_hint={f.head_hint} "
                 f"stats={f.stats.summary()}" if f else "not started")
        return f"follower: {state}; alerts: {self.timeline}"

    @property
    def last_seq(self) -> int:
        with self._progress:
            return int(self.events[-1]["seq"]) if self.events else 0

    def wait_past(self, seq: int, timeout: float) -> bool:
        """True once an event after ``seq`` was delivered."""
        with self._progress:
            return self._progress.wait_for(
                lambda: self.done.is_set() or (bool(self.events) and self.events[-1]["seq"] > seq),
                timeout) and not self.done.is_set()


def test_agents_and_a_monitor_survive_broker_kills(sandbox: Path,
                                                   bus_factory: BusFactory) -> None:
    rng = random.Random()
    db = "data/broker-restart.db"
    bus = bus_factory.start(db, ledger_args=LEDGER_ARGS, broker_args=BROKER_ARGS)
    tally = Tally()
    follower = FollowerThread(bus.front, bus.pub)
    restarts = 2
    try:
        setup_shared(bus.front, tally)
        follower.start()
        assert follower.ready.wait(10)
        load = Load(bus.front, tally, threads=3, processes=1, log_dir=sandbox)
        ok = False
        try:
            for n in range(restarts):
                assert tally.wait_for(tally.count + rng.randint(5, 40), PROGRESS_TIMEOUT), \
                    tally.errors
                bus.broker.kill()
                killed = time.monotonic()
                assert follower.silent.wait(15), \
                    f"kill {n}: the dead broker went unnoticed; {follower.explain()}"
                before = follower.last_seq
                follower.silent.clear()
                follower.resumed.clear()
                bus.restart_broker()
                restarted = time.monotonic()
                # everyone is back: the monitor hears the broker again and moves on
                assert follower.resumed.wait(15), (
                    f"kill {n}: the monitor did not hear the new broker (killed at {killed}, "
                    f"restarted at {restarted}); {follower.explain()}")
                assert tally.wait_for(tally.count + 20, PROGRESS_TIMEOUT), tally.errors
                assert follower.wait_past(before, PROGRESS_TIMEOUT), \
                    f"kill {n}: the monitor did not resume; {follower.explain()}"
            ok = True
        finally:
            load.stop(abort=not ok)
        with AgentClient(bus.front, "auditor") as auditor:
            head = auditor.query("verify")["head_seq"]
        follower.until_seq = head
        follower.join(PROGRESS_TIMEOUT)
        assert not follower.is_alive(), f"the monitor did not reach seq {head}"
    finally:
        follower.done.set()
        follower.join(10)
    bus.stop()
    assert follower.error is None, follower.error
    assert not tally.errors, tally.errors

    figures = audit(sandbox / db, tally.acks)
    assert figures["problem_count"] == 0, figures
    assert figures["found"] == figures["acknowledged"] > 0 and figures["duplicates"] == 0
    assert figures["chain_status"] == "OK", figures
    # the monitor: every seq exactly once, in order, no gap, chain intact
    assert [e["seq"] for e in follower.events] == list(range(1, head + 1)), follower.stats
    assert follower.chain_ok
    kinds = [a.alert for a in follower.alerts]
    assert kinds.count(BROKER_SILENT) == restarts and kinds.count(BROKER_RESUMED) == restarts
    with SqliteStore(sandbox / db, readonly=True) as store:
        assert [e.hash for e in store.iter_events()] == [e["hash"] for e in follower.events]
