"""bin/bench: measure the whole bus against its own limit and a floor, in one run.

In each of --rounds rounds (default 3), side by side, so that what is compared is
measured in one window of the machine's load:
1. in-process limit: the core applying the command mix with group commit (batches of
   agents x window, the most the ledger can see at once), same durability, no sockets;
2. reference (the floor): one process appending one hash-chained event per command,
   same columns and preimage, same group size, PRAGMAs and durability, no other index;
3. the whole bus: ledger + broker processes, K agent connections with W commands in
   flight each, the same mix; a separate monitor process follows the event stream.
The headline figure is CPU time per command: for the bus, per process (ledger, broker,
monitor, driver, total) from /proc/<pid>/stat, every thread and child counted, before
and after the phase; for (1) and (2), getrusage. Medians over the rounds; ratios within
each round. Then latency at a fixed offered load next to the disk's own commit latency
(a typical commit's WAL frames written and fdatasync'ed, as SQLite does), verify_chain
throughput on a database of --verify-events events, and the ledger's start time on it.

The mix: ~20% ADD_ITEM, ~40% UPDATE_ITEM, ~35% STATE_CHANGE, ~5% stale versions (each
answered CONFLICT). Every connection works on its own items, so every outcome is known
in advance and checked: a benchmark that loses or misapplies commands says so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from agents.client import AgentClient
from agents.tools import cpu
from agents.tools.bench_reference import append_reference
from agents.tools.cpu import self_cpu_seconds
from agents.tools.disk_probe import SYNC_CALL, WalCommits, fsync_probe, read_wal_commits
from agents.tools.launch import Bus, spawn, start_bus
from ledger.log.verify import verify_chain_only, verify_store
from ledger.log.verify_parallel import ChainHelper
from ledger.plans.ledger import Ledger
from ledger.runtime.service import add_version_arg, announce
from ledger.runtime.sockets import NOBLOCK, send_frames
from ledger.storage.base import Durability
from ledger.storage.factory import file_locator, open_store
from schema import wire
from schema.errors import CoordinatorError, ErrorCode

PLAN = "P-BENCH"
#: Commands sent one at a time to see what an idle commit writes to the WAL.
IDLE_COMMITS = 40


@dataclass
class Workload:
    """Pre-generated commands per connection, with the status each must get."""

    streams: list[list[dict[str, Any]]] = field(default_factory=list)
    expected: list[list[str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.streams)


def make_workload(agents: int, per_agent: int, seed: int = 7, stale: float = 0.05) -> Workload:
    rng = random.Random(seed)
    work = Workload()
    for k in range(agents):
        actor = f"bench-{k}"
        versions: dict[str, int] = {}
        states: dict[str, str] = {}
        items: list[str] = []  # rng.choice needs a sequence; list(versions) would be O(n)
        cmds: list[dict[str, Any]] = []
        expect: list[str] = []
        n = 0
        while len(cmds) < per_agent:
            n += 1
            cid = f"{actor}:{n}"
            r = rng.random()
            if not versions or r < 0.20:
                item = f"I-{k}-{len(versions)}"
                versions[item], states[item] = 1, "TODO"
                items.append(item)
                cmds.append({"command_id": cid, "actor": actor, "action": "ADD_ITEM",
                             "plan_id": PLAN, "item_id": item, "title": f"task {item}"})
                expect.append("APPLIED")
                continue
            item = rng.choice(items)
            version = versions[item]
            if rng.random() < stale and version > 1:
                cmds.append({"command_id": cid, "actor": actor, "action": "UPDATE_ITEM",
                             "item_id": item, "expected_version": version - 1,
                             "change": {"priority": rng.randint(0, 9)}})
                expect.append("CONFLICT")
            elif r < 0.62:
                cmds.append({"command_id": cid, "actor": actor, "action": "UPDATE_ITEM",
                             "item_id": item, "expected_version": version,
                             "change": {"priority": rng.randint(0, 9)}})
                versions[item] += 1
                expect.append("APPLIED")
            else:
                nxt = "IN_PROGRESS" if states[item] == "TODO" else "TODO"
                cmds.append({"command_id": cid, "actor": actor, "action": "STATE_CHANGE",
                             "item_id": item, "expected_version": version,
                             "change": {"state": nxt}})
                versions[item] += 1
                states[item] = nxt
                expect.append("APPLIED")
        work.streams.append(cmds)
        work.expected.append(expect)
    return work


def _create_plan(session: str) -> dict[str, Any]:
    return {"command_id": "bench:plan", "actor": "bench", "session_id": session,
            "action": "CREATE_PLAN", "plan_id": PLAN, "title": "benchmark"}


def merged(work: Workload, session: str = "bench") -> list[tuple[dict[str, Any], str]]:
    """The streams interleaved as the ledger sees them from K connections: (command with
    ``session_id``, expected status)."""
    out: list[tuple[dict[str, Any], str]] = []
    for i in range(max(len(s) for s in work.streams)):
        for cmds, exp in zip(work.streams, work.expected, strict=True):
            if i < len(cmds):
                out.append(({**cmds[i], "session_id": session}, exp[i]))
    return out


def in_process_limit(work: Workload, db: Path, durability: Durability,
                     batch: int) -> dict[str, Any]:
    with open_store(file_locator(db), create=True, durability=durability) as store:
        ledger = Ledger(store)
        ledger.apply(_create_plan("bench"))
        merged_cmds = merged(work)
        wrong = 0
        cpu0, started = self_cpu_seconds(), time.perf_counter()
        for at in range(0, len(merged_cmds), batch):
            chunk = merged_cmds[at:at + batch]
            results = ledger.apply_many([c for c, _ in chunk])
            wrong += sum(r.status != e for r, (_, e) in zip(results, chunk, strict=True))
        elapsed, cpu_s = time.perf_counter() - started, self_cpu_seconds() - cpu0
    n = len(merged_cmds)
    return {"commands": n, "seconds": elapsed, "commands_per_s": n / elapsed,
            "batch": batch, "wrong_outcomes": wrong, "cpu_seconds": cpu_s,
            "cpu_us_per_command": cpu_s * 1e6 / n}


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999)}


def encode_command(cmd: Mapping[str, Any], session: str) -> list[bytes]:
    """The frames of a COMMAND message for a workload command (id and actor in the
    header, the rest as its body)."""
    return wire.encode(wire.CommandMsg(
        id=cmd["command_id"], actor=cmd["actor"], session_id=session,
        command={k: v for k, v in cmd.items() if k not in ("command_id", "actor")}))


def _renamed(cmds: list[dict[str, Any]], prefix: str, item_prefix: str
             ) -> list[dict[str, Any]]:
    """The commands with ids, actors and items of their own, for a phase on the plan
    another phase already uses."""
    for c in cmds:
        c["command_id"] = f"{prefix}-{c['command_id']}"
        c["actor"] = f"{prefix}-{c['actor']}"
        c["item_id"] = item_prefix + c["item_id"]
    return cmds


def idle_commits(front: str, wal: Path, count: int, session: str,
                 timeout: float = 10.0) -> WalCommits | None:
    """The idle path's commits: ``count`` commands sent one at a time, each after the
    previous reply, so each is a commit group of one; the frames each commit wrote,
    read from the ledger's WAL (``wal``) after its reply. None if the WAL cannot be
    read. Raises CoordinatorError(TIMEOUT) if a reply does not come."""
    cmds = _renamed(make_workload(1, count, seed=13).streams[0], "idle", "Q")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(front)
    frames: list[int] = []
    last = read_wal_commits(wal)
    if last is None:
        return None
    try:
        for c in cmds:
            send_frames(sock, encode_command(c, session))
            while True:
                if not sock.poll(int(timeout * 1000)):
                    raise CoordinatorError(ErrorCode.TIMEOUT,
                                           f"no reply to {c['command_id']} in {timeout}s")
                if wire.unpack(sock.recv_multipart()[1])["id"] == c["command_id"]:
                    break
            now = read_wal_commits(wal)
            if now is None:
                return None
            frames += now.since(last)
            last = now
    finally:
        sock.close()
        ctx.term()
    return WalCommits(last.page_size, frames)


def drive(front: str, work: Workload, window: int, session: str) -> dict[str, Any]:
    """K DEALER connections, ``window`` commands in flight on each, pre-encoded frames."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socks = []
    frames: list[list[list[bytes]]] = []
    for cmds in work.streams:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = 0
        sock.connect(front)
        socks.append(sock)
        frames.append([encode_command(c, session) for c in cmds])
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    index = {sock: i for i, sock in enumerate(socks)}
    next_send = [0] * len(socks)
    sent_at: list[dict[str, float]] = [{} for _ in socks]
    latencies: list[float] = []
    wrong = errors = 0
    done = 0
    total = work.total
    started = time.perf_counter()
    for i, sock in enumerate(socks):
        while next_send[i] < min(window, len(frames[i])):
            sent_at[i][work.streams[i][next_send[i]]["command_id"]] = time.perf_counter()
            send_frames(sock, frames[i][next_send[i]])
            next_send[i] += 1
    deadline = started + 120
    while done < total and time.perf_counter() < deadline:
        for sock, _ in poller.poll(1000):
            i = index[sock]
            while True:
                try:
                    reply = sock.recv_multipart(NOBLOCK)
                except zmq.Again:
                    break
                now = time.perf_counter()
                header = wire.unpack(reply[1])
                body = wire.unpack(reply[2])
                t0 = sent_at[i].pop(header["id"], None)
                if t0 is None:
                    continue
                latencies.append(now - t0)
                done += 1
                n = int(header["id"].rsplit(":", 1)[1]) - 1
                if body.get("status") is None:
                    errors += 1
                elif body["status"] != work.expected[i][n]:
                    wrong += 1
                if next_send[i] < len(frames[i]):
                    cmd_id = work.streams[i][next_send[i]]["command_id"]
                    sent_at[i][cmd_id] = time.perf_counter()
                    send_frames(sock, frames[i][next_send[i]])
                    next_send[i] += 1
    elapsed = time.perf_counter() - started
    for sock in socks:
        sock.close()
    ctx.term()
    return {"commands": total, "answered": done, "seconds": elapsed,
            "commands_per_s": done / elapsed, "wrong_outcomes": wrong, "errors": errors,
            **_percentiles(latencies)}


def fixed_rate(front: str, rate: float, seconds: float, session: str) -> dict[str, Any]:
    """Open-loop load: send at scheduled times whatever the replies do; latency per reply."""
    count = int(rate * seconds)
    work = make_workload(1, count, seed=11)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(front)
    cmds = work.streams[0]
    _renamed(cmds, "rate", "R")  # its own ids, on the same plan as the main run
    frames = [encode_command(c, session) for c in cmds]
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    start = time.perf_counter()
    i = 0
    while (i < count or sent_at) and time.perf_counter() < start + seconds + 10:
        now = time.perf_counter()
        while i < count and start + i / rate <= now:
            sent_at[cmds[i]["command_id"]] = time.perf_counter()
            send_frames(sock, frames[i])
            i += 1
        # at least 1 ms: a 0 ms poll would spin and steal a core from the bus under test
        wait_ms = max(1, int(((start + i / rate) - time.perf_counter()) * 1000)) if i < count \
            else 200
        if sock.poll(wait_ms):
            while True:
                try:
                    reply = sock.recv_multipart(NOBLOCK)
                except zmq.Again:
                    break
                t0 = sent_at.pop(wire.unpack(reply[1])["id"], None)
                if t0 is not None:
                    latencies.append(time.perf_counter() - t0)
    sock.close()
    ctx.term()
    return {"offered_per_s": rate, "commands": count, "answered": len(latencies),
            **_percentiles(latencies)}


def monitor_child(pub: str, first: int, last: int, timeout: float) -> None:
    """Run in a separate process: count events first..last seen on the live stream."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = 0
    sub.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_EVENT)
    sub.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_HEARTBEAT)
    sub.connect(pub)
    # handshake: the first heartbeat proves the subscription has reached the publisher
    if not sub.poll(int(timeout * 1000)):
        announce({"ok": False, "error": {"code": "TIMEOUT", "message": "no heartbeat"}})
        return
    sub.recv_multipart()
    sub.setsockopt(zmq.UNSUBSCRIBE, wire.TOPIC_HEARTBEAT)
    announce({"ok": True, "ready": True, "role": "bench-monitor"})
    seen: set[int] = set()
    dupes = 0
    t_first = t_last = 0.0
    expected = last - first + 1
    deadline = time.monotonic() + timeout
    while len(seen) < expected and time.monotonic() < deadline:
        if not sub.poll(200):
            continue
        for _ in range(1000):  # everything already here, without a poll per event
            try:
                frames = sub.recv_multipart(NOBLOCK)
            except zmq.Again:
                break
            if frames[0] != wire.TOPIC_EVENT:
                continue
            seq = int(wire.unpack(frames[2])["id"])
            t_first = t_first or time.perf_counter()
            if seq in seen:
                dupes += 1
            seen.add(seq)
        t_last = time.perf_counter()
    sub.close()
    ctx.term()
    missing = [s for s in range(first, last + 1) if s not in seen]
    rate = (len(seen) - 1) / (t_last - t_first) if t_last > t_first else 0.0
    print(json.dumps({"received": len(seen), "duplicates": dupes, "missing": len(missing),
                      "events_per_s": rate,
                      "saw_every_event": not missing}), flush=True)
    # stay until the bench closes our stdin: it reads our CPU time from /proc first
    sys.stdin.buffer.read()


def bus_phase(bus: Bus, work: Workload, window: int,
              extra_roles: Mapping[str, cpu.Role] | None = None) -> dict[str, Any]:
    """The whole bus on ``work``: a monitor process follows the events while the driver
    (this process) sends the mix; CPU per command of each process, read from /proc
    right before the first command and right after the last event reached the monitor.

    Roles: ``ledger`` and ``broker`` as process trees (every thread, every child, living
    or reaped), ``monitor`` (the bench's monitor process), ``driver`` (this process
    alone: its children are the bus), and ``extra_roles`` (``db_server``: a PostgreSQL
    postmaster's tree). Returns ``{"bus": drive's figures, "monitor": the monitor's,
    "cpu_us_per_command": {role: µs, "total": their sum}, "cpu_ticks": {role: ticks}}``."""
    with AgentClient(bus.front, "bench") as client:
        client.wait_ready()
        client.send_command({k: v for k, v in _create_plan("bench").items()
                             if k not in ("command_id", "actor", "session_id")},
                            command_id="bench:plan")
    # seq 1 is the plan; then one event per command (conflicts included)
    mon = subprocess.Popen([sys.executable, "-m", "agents.tools.bench", "monitor-child",
                            bus.pub, "2", str(1 + work.total), "120"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert mon.stdout is not None and mon.stdin is not None
    try:
        mon.stdout.readline()  # ready: its subscription has reached the broker
        roles = {"ledger": cpu.Role(bus.ledger.proc.pid),
                 "broker": cpu.Role(bus.broker.proc.pid), "monitor": cpu.Role(mon.pid),
                 **(extra_roles or {})}
        driver = {"driver": cpu.Role(os.getpid(), tree=False)}
        # the driver last before and first after: the /proc scans are not its work
        before = cpu.sample(roles) | cpu.sample(driver)
        result = drive(bus.front, work, window, "bench")
        line = mon.stdout.readline()  # the monitor has seen the last event (or gave up)
        after = cpu.sample(driver) | cpu.sample(roles)
    finally:
        mon.stdin.close()
        try:
            mon.wait(30)
        except subprocess.TimeoutExpired:  # still waiting for events: the run failed
            mon.kill()
            mon.wait()
    monitor = json.loads(line)
    ticks = {k: after[k] - before[k] for k in before}
    return {"bus": result, "monitor": monitor,
            "cpu_us_per_command": cpu.us_per_command(before, after,
                                                     max(1, result["answered"])),
            "cpu_ticks": ticks}


def verify_run(db: Path, events: int, sandbox: Path,
               ledger_args: Sequence[str] = ()) -> dict[str, Any]:
    """Fill a database with ``events`` events, then time verify_chain and ledger start
    (``ledger_args``: added to each start, e.g. ``--unsupervised``)."""
    locator = file_locator(db)
    with open_store(locator, create=True, durability="off") as store:
        ledger = Ledger(store)
        have = store.head()[0]
        if have < events:
            work = make_workload(1, events - have - 1, seed=3)
            ledger.apply(_create_plan("fill"))
            cmds = [{**c, "session_id": "fill"} for c in work.streams[0]]
            for at in range(0, len(cmds), 2000):
                ledger.apply_many(cmds[at:at + 2000])
        n = store.head()[0]
    # what the operator runs: bin/verify_chain, start to exit (integrity check, chain,
    # replay and tables); then the chain checks alone, in process
    started = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "os-verify-chain"), "--db",
                           str(db.relative_to(sandbox))], capture_output=True, check=False,
                          env={**os.environ, "OS_SANDBOX_ROOT": str(sandbox)})
    elapsed = time.perf_counter() - started
    report = json.loads(done.stdout)
    # the verification proper (chain + replay + tables, with the helper process as the
    # CLI uses it), without the file check; then the chain checks alone
    with open_store(locator, readonly=True) as store:
        helper = ChainHelper(locator)
        try:
            started = time.perf_counter()
            verify_store(store, helper=helper)
            store_s = time.perf_counter() - started
        finally:
            helper.close()
    with open_store(locator, readonly=True) as store:
        started = time.perf_counter()
        chain = verify_chain_only(store)
        chain_s = time.perf_counter() - started
    rel = str(db.relative_to(sandbox))
    # start to ready line, median of 3 per mode: the default (background: tail check,
    # then the page check while serving), then full and tail explicitly
    starts: dict[str, float] = {}
    for mode, extra in (("default", []), ("full", ["--startup-check", "full"]),
                        ("tail", ["--startup-check", "tail"])):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            child = spawn("ledger", "ledger.server",
                          ["--db", rel, "--bind", "tcp://127.0.0.1:*",
                           "--pub", "tcp://127.0.0.1:*", *extra, *ledger_args],
                          env={"OS_SANDBOX_ROOT": str(sandbox)})
            times.append(time.perf_counter() - started)
            child.stop()
        starts[mode] = sorted(times)[1]
    return {"events": n, "verify_seconds": elapsed, "verify_events_per_s": n / elapsed,
            "verify_store_events_per_s": n / store_s,
            "chain_only_events_per_s": n / chain_s, "chain_ok": chain.ok,
            "chain_status": report["chain_status"], "ledger_start_seconds": starts["default"],
            "ledger_start_full_seconds": starts["full"],
            "ledger_start_tail_seconds": starts["tail"]}


def in_process_round(work: Workload, db: Path, durability: Durability, batch: int,
                     extra_roles: Mapping[str, cpu.Role] | None = None) -> dict[str, Any]:
    """:func:`in_process_limit`, plus the CPU of ``extra_roles`` over the same phase
    (a database server's processes: then ``cpu_us_per_command`` is the core's own
    ``core_cpu_us_per_command`` plus the server's ``server_cpu_us_per_command``)."""
    before = cpu.sample(extra_roles) if extra_roles else {}
    result = in_process_limit(work, db, durability, batch)
    if extra_roles:
        server = cpu.us_per_command(before, cpu.sample(extra_roles), result["commands"])
        result["core_cpu_us_per_command"] = result["cpu_us_per_command"]
        result["server_cpu_us_per_command"] = server["total"]
        result["cpu_us_per_command"] += server["total"]
    return result


def server_roles(pid: int | None) -> dict[str, cpu.Role]:
    """The ``db_server`` role for a database server's process ``pid`` (a PostgreSQL
    postmaster, or one of its backends: the postmaster above it is taken); none for
    None (SQLite: the database is inside the ledger process)."""
    if pid is None:
        return {}
    return {"db_server": cpu.Role(cpu.postmaster_root(pid, cpu.scan()) or pid)}


def disk_floor(directory: Path, wal: WalCommits | None, samples: int) -> dict[str, Any]:
    """The disk's own commit latency in ``directory`` (the database's), for the frames
    of a typical commit of ``wal`` (:func:`idle_commits`; None: one page)."""
    frames = wal.typical_frames if wal else 1
    page = wal.page_size if wal else 4096
    latencies = fsync_probe(directory, frames=frames, page_size=page, samples=samples)
    return {"sync_call": SYNC_CALL, "frames_per_commit": frames,
            "frames_per_commit_mean": wal.mean_frames if wal else None,
            "commits_seen": len(wal.frames) if wal else 0, "page_size": page,
            "write_bytes": frames * (24 + page), "samples": samples,
            "filesystem": filesystem_of(directory), **_percentiles(latencies)}


def filesystem_of(path: Path) -> str | None:
    """``"<type> on <device>"`` of the mount holding ``path`` (/proc/self/mounts)."""
    best: tuple[int, str] | None = None
    target = str(path.resolve())
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        dev, mount, fstype = (f.replace("\\040", " ") for f in line.split()[:3])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and (best is None or len(mount) > best[0]):
            best = (len(mount), f"{fstype} on {dev}")
    return best[1] if best else None


def _median_of(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows)


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's figures from the rounds (each: ``in_process``, ``reference``,
    ``bus``, ``monitor``, ``cpu_us_per_command``): medians over the rounds; ratios are
    taken within each round (its phases ran next to each other), then their median;
    counts of wrong outcomes, errors and missing events are summed."""
    ips = [r["in_process"] for r in rounds]
    refs = [r["reference"] for r in rounds]
    buses = [r["bus"] for r in rounds]
    mons = [r["monitor"] for r in rounds]
    roles = list(rounds[0]["cpu_us_per_command"])
    return {
        "cpu_us_per_command": {k: statistics.median(r["cpu_us_per_command"][k]
                                                    for r in rounds) for k in roles},
        "in_process_cpu_us_per_command": _median_of(ips, "cpu_us_per_command"),
        "reference_cpu_us_per_command": _median_of(refs, "cpu_us_per_command"),
        "in_process_over_reference": statistics.median(
            i["cpu_us_per_command"] / f["cpu_us_per_command"] for i, f in zip(ips, refs,
                                                                               strict=True)),
        "ratio": statistics.median(b["commands_per_s"] / i["commands_per_s"]
                                   for b, i in zip(buses, ips, strict=True)),
        "in_process": {"commands": ips[0]["commands"], "batch": ips[0]["batch"],
                       "commands_per_s": _median_of(ips, "commands_per_s"),
                       "cpu_us_per_command": _median_of(ips, "cpu_us_per_command"),
                       "wrong_outcomes": sum(i["wrong_outcomes"] for i in ips)},
        "reference": {"commands": refs[0]["commands"], "batch": refs[0]["batch"],
                      "commands_per_s": _median_of(refs, "commands_per_s"),
                      "cpu_us_per_command": _median_of(refs, "cpu_us_per_command")},
        "bus": {"commands": buses[0]["commands"],
                "answered": min(b["answered"] for b in buses),
                **{k: _median_of(buses, k) for k in ("commands_per_s", "p50_ms", "p99_ms",
                                                      "p999_ms")},
                "wrong_outcomes": sum(b["wrong_outcomes"] for b in buses),
                "errors": sum(b["errors"] for b in buses)},
        "monitor": {"events_per_s": _median_of(mons, "events_per_s"),
                    "received": min(m["received"] for m in mons),
                    "missing": sum(m["missing"] for m in mons),
                    "duplicates": sum(m["duplicates"] for m in mons),
                    "saw_every_event": all(m["saw_every_event"] for m in mons)},
    }


def _table(results: dict[str, Any]) -> str:
    ip, bus, rate, ver = (results.get(k, {}) for k in ("in_process", "bus", "fixed_rate",
                                                        "verify"))
    mon, ref, fs = (results.get(k, {}) for k in ("monitor", "reference", "fsync"))
    cfg = results["config"]
    per = results.get("cpu_us_per_command", {})
    n = cfg["rounds"]
    rows = [
        (f"CPU per command, whole bus (median of {n})", f"{per.get('total', 0):,.1f} µs",
         ", ".join(f"{k} {v:.1f}" for k, v in per.items() if k != "total")
         + f" (µs; ±{results.get('cpu_resolution_us_per_command', 0):.1f} per process)"),
        ("CPU per command, in-process core",
         f"{results.get('in_process_cpu_us_per_command', 0):,.1f} µs",
         f"the ledger core on the same mix, no sockets; {ip.get('commands_per_s', 0):,.0f} "
         f"cmd/s, batch {ip.get('batch')}, wrong outcomes {ip.get('wrong_outcomes')}"),
        ("CPU per command, reference (floor)",
         f"{results.get('reference_cpu_us_per_command', 0):,.1f} µs",
         f"hash-chained append, events + primary key only, same group size, PRAGMAs and "
         f"durability; {ref.get('commands_per_s', 0):,.0f} cmd/s"),
        ("in-process / reference", f"{results.get('in_process_over_reference', 0):.2f}x",
         "median of the rounds' ratios (target: 1.6x or less)"),
        ("whole bus", f"{bus.get('commands_per_s', 0):,.0f} cmd/s",
         f"p50 {bus.get('p50_ms', 0):.2f} ms, p99 {bus.get('p99_ms', 0):.2f} ms, "
         f"p99.9 {bus.get('p999_ms', 0):.2f} ms; wrong {bus.get('wrong_outcomes')}, "
         f"errors {bus.get('errors')}"),
        ("bus / in-process", f"{results.get('ratio', 0):.1%}",
         "throughput, median of the rounds' ratios"),
        ("monitor", f"{mon.get('events_per_s', 0):,.0f} events/s",
         f"received {mon.get('received')}, missing {mon.get('missing')}, duplicates "
         f"{mon.get('duplicates')}, saw every event: {mon.get('saw_every_event')}"),
        (f"fixed load {rate.get('offered_per_s', 0):,.0f}/s",
         f"p50 {rate.get('p50_ms', 0):.2f} ms", f"p99 {rate.get('p99_ms', 0):.2f} ms, "
         f"p99.9 {rate.get('p999_ms', 0):.2f} ms, answered {rate.get('answered')}; "
         f"bound 2 x fsync p99 + 1 ms = {rate.get('p99_bound_ms', 0):.2f} ms"),
        ("disk commit (fsync floor)", f"p50 {fs.get('p50_ms', 0):.2f} ms",
         f"p99 {fs.get('p99_ms', 0):.2f} ms, p99.9 {fs.get('p999_ms', 0):.2f} ms; "
         f"{fs.get('frames_per_commit')} WAL frames ({fs.get('write_bytes', 0):,} bytes) + "
         f"{fs.get('sync_call')}, {fs.get('samples')} commits, {fs.get('filesystem')}"),
    ]
    if ver:
        rows += [
            (f"verify_chain on {ver.get('events', 0):,} events",
             f"{ver.get('verify_events_per_s', 0):,.0f} events/s",
             f"bin/verify_chain end to end: {ver.get('verify_seconds', 0):.2f} s, "
             f"{ver.get('chain_status')} (integrity_check + links + hashes + replay); "
             f"without integrity_check {ver.get('verify_store_events_per_s', 0):,.0f} "
             f"events/s; links + hashes alone {ver.get('chain_only_events_per_s', 0):,.0f} "
             "events/s"),
            ("ledger start on that database", f"{ver.get('ledger_start_seconds', 0):.3f} s",
             f"default (background page check); full (pages before serving): "
             f"{ver.get('ledger_start_full_seconds', 0):.3f} s, tail: "
             f"{ver.get('ledger_start_tail_seconds', 0):.3f} s; medians of 3"),
        ]
    width = max(len(r[0]) for r in rows)
    head = (f"bench: agents={cfg['agents']} window={cfg['window']} commands={cfg['commands']} "
            f"durability={cfg['durability']} rounds={n} "
            f"({results.get('run_seconds', 0):.0f} s)")
    return "\n".join([head, "-" * len(head)] + [f"{a:<{width}}  {b:>18}  {c}" for a, b, c in rows])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["monitor-child"]:
        monitor_child(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))
        return
    p = argparse.ArgumentParser(prog="bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=4, help="agent connections K (default 4)")
    p.add_argument("--window", type=int, default=16,
                   help="commands in flight per connection W (default 16)")
    p.add_argument("--commands", type=int, default=20_000, help="total commands (default 20000)")
    p.add_argument("--durability", choices=("full", "normal"), default="full",
                   help="full: fsync per commit group (default); normal: no fsync")
    p.add_argument("--unsupervised", action="store_true",
                   help="run the ledger with --unsupervised: its writer in bin/ledger's own "
                   "process (one hop less; the ledger role is then one process, not two)")
    p.add_argument("--rate", type=float, default=1000, help="fixed offered load (default 1000/s)")
    p.add_argument("--rate-seconds", type=float, default=5, help="for how long (default 5)")
    p.add_argument("--verify-events", type=int, default=100_000,
                   help="events in the verify/start database (default 100000; 0 skips "
                        "that part)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of in-process, reference and whole bus, interleaved "
                        "(default 3); the report gives their medians")
    p.add_argument("--fsync-samples", type=int, default=1000,
                   help="commits the disk probe times (default 1000)")
    p.add_argument("--db-server-pid", type=int, default=None,
                   help="a database server's process (a PostgreSQL postmaster or backend): "
                        "its process tree's CPU is counted as db_server")
    p.add_argument("--out", default=None, help="JSON output (default logs/bench/<time>.json)")
    add_version_arg(p)
    args = p.parse_args(argv)
    unsupervised = ["--unsupervised"] if args.unsupervised else []
    if args.rounds < 1 or args.commands < args.agents or args.fsync_samples < 1:
        p.error("--rounds and --fsync-samples must be at least 1, --commands at least "
                "--agents")

    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    data = tmp / "data"
    data.mkdir()
    env = {"OS_SANDBOX_ROOT": str(tmp)}
    results: dict[str, Any] = {"config": vars(args) | {
        "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "clock_ticks_per_s": cpu.CLK_TCK}}
    per_agent = max(1, args.commands // args.agents)
    work = make_workload(args.agents, per_agent)
    batch = args.agents * args.window
    extra = server_roles(args.db_server_pid)
    rounds: list[dict[str, Any]] = []
    wal: WalCommits | None = None
    started = time.perf_counter()
    try:
        # A, B, C, A, B, C...: the phases compared with each other run side by side in
        # every round, so each ratio is measured in one window of the machine's load
        for r in range(args.rounds):
            tag = f"round {r + 1}/{args.rounds}:"
            print(f"{tag} in-process limit ...", file=sys.stderr, flush=True)
            ip = in_process_round(work, data / f"inproc-{r}.db", args.durability, batch,
                                  extra)
            print(f"{tag} reference appender ...", file=sys.stderr, flush=True)
            ref = append_reference(data / f"reference-{r}.db", merged(work), batch=batch,
                                   durability=args.durability, plan_id=PLAN)
            print(f"{tag} whole bus ...", file=sys.stderr, flush=True)
            with start_bus(f"data/bus-{r}.db", env=env,
                           ledger_args=["--durability", args.durability, *unsupervised],
                           log_dir=tmp) as bus:
                phase = bus_phase(bus, work, args.window, extra)
                if r == args.rounds - 1:  # latency at a fixed load, on the last bus
                    print("fixed rate ...", file=sys.stderr, flush=True)
                    results["fixed_rate"] = fixed_rate(bus.front, args.rate,
                                                       args.rate_seconds, "rate")
                    # what the last commits under that load wrote, then what an idle
                    # commit of one command writes: the size the disk probe writes
                    wal_path = data / f"bus-{r}.db-wal"
                    tail = read_wal_commits(wal_path)
                    results["fixed_rate"]["wal_frames_per_commit"] = (
                        tail.typical_frames if tail else None)
                    wal = idle_commits(bus.front, wal_path, IDLE_COMMITS, "idle")
            rounds.append({"in_process": ip, "reference": ref, **phase})
        print(f"fsync probe ({args.fsync_samples} commits) ...", file=sys.stderr, flush=True)
        results["fsync"] = disk_floor(data, wal, args.fsync_samples)
        results.update(summarise(rounds))
        results["cpu_resolution_us_per_command"] = cpu.resolution_us_per_command(
            work.total)
        results["fixed_rate"]["p99_bound_ms"] = 2 * results["fsync"]["p99_ms"] + 1
        results["rounds"] = rounds
        results["measure_seconds"] = time.perf_counter() - started
        if args.verify_events > 0:
            print(f"verify_chain on {args.verify_events:,} events ...", file=sys.stderr,
                  flush=True)
            results["verify"] = verify_run(data / "big.db", args.verify_events, tmp,
                                           unsupervised)
        results["run_seconds"] = time.perf_counter() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(_table(results))
    path = Path(args.out) if args.out else Path("logs/bench") / (
        time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
