"""Signed checkpoints (ledger/log/checkpoints/): the pure parts, the key files, and a real
ledger process that writes and publishes them, checked by bin/verify_chain --checkpoints
against an intact database, a truncated tail, a rewrite with every hash recomputed and a
rolled-back database."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import zmq
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from agents.client import AgentClient
from agents.tools.launch import Bus
from agents.tools.run_scenario import play
from ledger.log.chain import GENESIS_HASH, canonical_json, event_hash
from ledger.log.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointWatch,
    CheckpointWriter,
    LoadedCheckpoint,
    Verdict,
    check_against,
    check_heads,
    key_id_of,
    load_checkpoints,
    load_or_create_key,
    load_public_key,
    make_checkpoint,
    public_key_path,
    signed_bytes,
    state_hash,
    verify_signature,
    verify_with_checkpoints,
    write_checkpoint,
)
from ledger.log.projection import project
from ledger.plans.ledger import Ledger
from ledger.storage import sqlite as ledger_sqlite
from ledger.storage.memory import MemoryState
from ledger.storage.rows import Event
from ledger.storage.sqlite import SqliteStore
from schema import wire
from schema.errors import CoordinatorError, ErrorCode
from schema.scenario import load_scenario
from tests.support.buses import BusFactory
from tests.support.helpers import APPEND_ONLY_TRIGGERS, build_db, copy_db, event_rows, small_log

KEY_ARGS = ["--checkpoint-key", "keys/ledger-checkpoint.pem",
            "--checkpoint-dir", "data/checkpoints", "--checkpoint-every", "0.2"]
TS = "2026-01-01T00:00:00.000000Z"


# --- pure parts -------------------------------------------------------------------------


def test_the_signed_bytes_are_the_documented_json_and_verify_with_only_cryptography(
        tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    cp = make_checkpoint(key, 7, "ab" * 32, "cd" * 32, TS)
    fields = {"format": "L3CHECKPOINT/1", "seq": 7, "head_hash": "ab" * 32,
              "state_hash": "cd" * 32, "ts": TS, "key_id": cp.key_id}
    documented = json.dumps(fields, sort_keys=True, separators=(",", ":"),
                            ensure_ascii=False).encode("utf-8")
    assert signed_bytes(cp) == documented
    # the key id: first 16 hex digits of SHA-256 of the raw public key
    raw = key.public_key().public_bytes_raw()
    assert cp.key_id == hashlib.sha256(raw).hexdigest()[:16]
    # an outsider's check, as docs/HASH_CHAIN.md shows it: the file, the .pub, cryptography
    path = write_checkpoint(tmp_path, cp)
    pub_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    data = json.loads(path.read_text())
    assert set(data) == {*fields, "signature"}
    signature = bytes.fromhex(data.pop("signature"))
    message = json.dumps(data, sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False).encode("utf-8")
    public = load_pem_public_key(pub_pem)
    public.verify(signature, message)  # type: ignore[union-attr]
    with pytest.raises(InvalidSignature):
        public.verify(signature, message.replace(b'"seq":7', b'"seq":8'))  # type: ignore[union-attr]


def test_a_changed_field_or_another_key_fails_the_signature() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    cp = make_checkpoint(key, 5, "ab" * 32, "cd" * 32, TS)
    assert verify_signature(cp, key.public_key()) is None
    for field, value in (("seq", 6), ("head_hash", "ef" * 32), ("state_hash", "00" * 32),
                         ("ts", "2027-01-01T00:00:00.000000Z")):
        forged = Checkpoint(**{**cp.to_dict(), field: value})
        bad = verify_signature(forged, key.public_key())
        assert bad is not None and bad[0] is Verdict.BAD_SIGNATURE, field
    resigned = make_checkpoint(other, 5, "ab" * 32, "cd" * 32, TS)
    unknown = verify_signature(resigned, key.public_key())
    assert unknown is not None and unknown[0] is Verdict.UNKNOWN_KEY
    # claiming the right key id with another key's signature
    spoofed = Checkpoint(**{**resigned.to_dict(), "key_id": cp.key_id})
    bad = verify_signature(spoofed, key.public_key())
    assert bad is not None and bad[0] is Verdict.BAD_SIGNATURE
    garbage = Checkpoint(**{**cp.to_dict(), "signature": "zz"})
    bad = verify_signature(garbage, key.public_key())
    assert bad is not None and bad[0] is Verdict.BAD_SIGNATURE


def test_state_hash_is_the_documented_hash_of_the_sorted_table_rows(tmp_path: Path) -> None:
    db = tmp_path / "data" / "s.db"
    build_db(db, small_log())
    with SqliteStore(db, readonly=True) as store:
        seq, _head, state = store.snapshot()
        ours = state_hash(state)
    assert seq == 7
    # an outsider: sqlite3 + json + hashlib, rows as column -> value, sorted by key
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        doc = {table: [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {pk}")]
               for table, pk in (("plans", "plan_id"), ("plan_items", "item_id"),
                                 ("plan_links", "link_id"))}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert ours == hashlib.sha256(text.encode("utf-8")).hexdigest()
    # and it is the hash of the replayed state too
    replay = MemoryState()
    for row in event_rows(db):
        project(Event(**row), json.loads(row["payload"]), replay)
    assert state_hash(replay.state) == ours


def test_check_against_names_each_verdict() -> None:
    key = Ed25519PrivateKey.generate()
    hashes = {1: "a" * 64, 2: "b" * 64, 3: "c" * 64}
    cp = make_checkpoint(key, 2, "b" * 64, "0" * 64, TS)
    assert check_against(cp, hashes).verdict is Verdict.OK
    assert check_against(cp, hashes.get, public_key=key.public_key()).ok
    assert check_against(cp, {1: "a" * 64}).verdict is Verdict.PENDING
    truncated = check_against(cp, {1: "a" * 64}, head_seq=1)
    assert (truncated.verdict, truncated.seq) == (Verdict.TRUNCATED, 2)
    rewritten = check_against(cp, {**hashes, 2: "f" * 64})
    assert (rewritten.verdict, rewritten.seq) == (Verdict.HISTORY_REWRITTEN, 2)
    forged = Checkpoint(**{**cp.to_dict(), "head_hash": "f" * 64})
    assert check_against(forged, {**hashes, 2: "f" * 64},
                         public_key=key.public_key()).verdict is Verdict.BAD_SIGNATURE


def test_a_monitors_watch_checks_checkpoints_when_their_event_has_been_seen() -> None:
    key = Ed25519PrivateKey.generate()
    watch = CheckpointWatch(key.public_key(), keep=3)
    assert watch.event(1, "a" * 64) == []
    early = make_checkpoint(key, 2, "b" * 64, "0" * 64, TS)
    assert watch.checkpoint(early) == []  # event 2 not seen yet: pending
    results = watch.event(2, "b" * 64)
    assert [r.verdict for r in results] == [Verdict.OK]
    for seq in range(3, 6):
        watch.event(seq, f"{seq:x}" * 64)
    late_bad = make_checkpoint(key, 4, "e" * 64, "0" * 64, TS)
    [result] = watch.checkpoint(late_bad)
    assert (result.verdict, result.seq) == (Verdict.HISTORY_REWRITTEN, 4)
    assert watch.checkpoint(make_checkpoint(key, 1, "a" * 64, "0" * 64, TS)) == []
    assert watch.stats == {"checked": 2, "ok": 1, "mismatches": 1, "unchecked": 1}


# --- key files --------------------------------------------------------------------------


def test_the_key_is_created_0600_with_its_public_key_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ledger-checkpoint.pem"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pub = public_key_path(path)
    assert pub.name == "ledger-checkpoint.pub"
    assert key_id_of(load_public_key(pub)) == key_id_of(key.public_key())
    again = load_or_create_key(path)  # the same key the second time
    assert key_id_of(again.public_key()) == key_id_of(key.public_key())
    path.chmod(0o644)
    with pytest.raises(CheckpointError) as info:
        load_or_create_key(path)
    assert info.value.code is ErrorCode.KEY_INVALID and "chmod 600" in info.value.message
    path.chmod(0o600)
    path.write_text("not a key")
    with pytest.raises(CheckpointError) as info:
        load_or_create_key(path)
    assert info.value.code is ErrorCode.KEY_INVALID


def test_checkpoint_files_are_never_overwritten_and_bad_files_are_reported(
        tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    cp = make_checkpoint(key, 3, "ab" * 32, "cd" * 32, TS)
    first, second = write_checkpoint(tmp_path, cp), write_checkpoint(tmp_path, cp)
    assert first != second and first.read_text() == second.read_text()
    (tmp_path / "000000000009-x.json").write_text("{not json")
    (tmp_path / "000000000010-y.json").write_text(json.dumps({**cp.to_dict(), "extra": 1}))
    loaded = load_checkpoints(tmp_path, key.public_key())
    assert [lc.usable for lc in loaded] == [True, True, False, False]
    assert [lc.problem.verdict for lc in loaded if lc.problem] == [Verdict.MALFORMED] * 2
    assert [lc.problem.seq for lc in loaded if lc.problem] == [9, 10]


def test_the_writer_checkpoints_when_the_head_moved_and_at_close(tmp_path: Path) -> None:
    db = tmp_path / "data" / "w.db"
    build_db(db, small_log()[:3])
    key = Ed25519PrivateKey.generate()
    with SqliteStore(db, readonly=True) as snap, SqliteStore(db, durability="off") as store:
        writer = CheckpointWriter(key, tmp_path / "cps", snap.snapshot, every=0.05)
        writer.start()
        due = time.monotonic() + 1  # a clock past the interval, without waiting for it
        assert writer.poll(3, now=due) == []  # starts one on the worker thread
        got = writer.poll(3, wait=10)  # and receives it
        assert [c.seq for c in got] == [3]
        # the head did not move: even when due again, no new one is started
        assert writer.poll(3, now=due + 1) == [] and not writer._busy
        Ledger(store).apply_many(small_log()[3:5])
        final = writer.close(5)
    assert [c.seq for c in final] == [5]
    assert [p.name[:12] for p in writer.written] == ["000000000003", "000000000005"]
    with SqliteStore(db, readonly=True) as store:
        report = verify_with_checkpoints(store, load_checkpoints(tmp_path / "cps",
                                                                 key.public_key()))
    assert report["chain_status"] == "OK", report
    assert report["checkpoints"]["matching"] == 2


def test_a_signed_state_hash_that_the_replay_does_not_reach_is_rewritten_state(
        tmp_path: Path) -> None:
    db = tmp_path / "data" / "s.db"
    build_db(db, small_log())
    key = Ed25519PrivateKey.generate()
    rows = event_rows(db)
    good = make_checkpoint(key, 4, rows[3]["hash"], "0" * 64, TS)  # not the state at 4
    with SqliteStore(db, readonly=True) as store:
        report = verify_with_checkpoints(store, [LoadedCheckpoint("cp-4.json", good)])
    [m] = report["mismatches"]
    assert (m["seq"], m["kind"], m["checkpoint"]) == (4, "STATE_REWRITTEN", "cp-4.json")
    assert report["chain_status"] == "BROKEN"


# --- a real ledger ----------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bus(buses: BusFactory, db: str, *extra: str) -> Bus:
    return buses.start(db, ledger_args=[*KEY_ARGS, *extra], ready=True, ready_timeout=15)


class Stream:
    """A subscriber on the broker's PUB: events and checkpoints, fed to a watch."""

    def __init__(self, pub: str, watch: CheckpointWatch) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.linger = 0
        for topic in (wire.TOPIC_EVENT, wire.TOPIC_CHECKPOINT, wire.TOPIC_HEARTBEAT):
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.connect(pub)
        self.watch = watch
        self.checkpoints: list[wire.CheckpointMsg] = []
        self.results: list[Any] = []

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Handshake for ZeroMQ's slow joiner: the broker heartbeats every second, so a
        message received proves the subscription has reached it (a checkpoint or event
        that comes first is handled as usual)."""
        assert self.sub.poll(int(timeout * 1000)), "nothing from the broker"
        self._handle(self.sub.recv_multipart())

    def until_checkpoint(self, seq: int, timeout: float = 20.0) -> wire.CheckpointMsg:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sub.poll(100):
                continue
            msg = self._handle(self.sub.recv_multipart())
            if isinstance(msg, wire.CheckpointMsg) and msg.seq == seq:
                return msg
        raise AssertionError(f"no checkpoint at seq {seq} within {timeout}s; "
                             f"got {[c.seq for c in self.checkpoints]}")

    def _handle(self, frames: list[bytes]) -> Any:
        msg = wire.decode(frames[1:])
        if isinstance(msg, wire.EventMsg):
            # as a monitor does: a seq at or below the last delivered is a duplicate
            if msg.event["seq"] > self.watch.last_seq:
                self.results += self.watch.event(msg.event["seq"], msg.event["hash"])
        elif isinstance(msg, wire.CheckpointMsg):
            assert frames[0] == wire.TOPIC_CHECKPOINT
            self.checkpoints.append(msg)
            self.results += self.watch.checkpoint(Checkpoint.from_dict(msg.model_dump()))
        return msg

    def close(self) -> None:
        self.sub.close()
        self.ctx.term()


def _verify(sandbox: Path, db: str, *extra: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([str(Path(sys.executable).parent / "os-verify-chain"), "--db", db,
                           *extra], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OS_SANDBOX_ROOT": str(sandbox)})
    return done.returncode, json.loads(done.stdout)


def _restore(sandbox: Path, db: str, copy: Path) -> None:
    path = sandbox / db
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(copy, path)


def _rewrite_with_recomputed_hashes(path: Path, seq: int) -> None:
    """Edit event ``seq``'s payload, recompute every hash after it, and rewrite the state
    tables to the new replay: the chain and the tables agree again."""
    rows = event_rows(path)
    payload = json.loads(rows[seq - 1]["payload"])
    payload["actor"] = "Eve"
    rows[seq - 1]["payload"] = canonical_json(payload)
    prev = GENESIS_HASH if seq == 1 else rows[seq - 2]["hash"]
    replay = MemoryState()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for trigger in APPEND_ONLY_TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger}")
        for row in rows[seq - 1:]:
            row["prev_hash"] = prev
            row["hash"] = prev = event_hash(row)
            conn.execute("UPDATE events SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                         (row["payload"], row["prev_hash"], row["hash"], row["seq"]))
        for row in rows:
            project(Event(**row), json.loads(row["payload"]), replay)
        for table in ("plan_links", "plan_items", "plans"):
            conn.execute(f"DELETE FROM {table}")
        for table, objs in (("plans", replay.state.plans), ("plan_items", replay.state.items),
                            ("plan_links", replay.state.links)):
            for obj in objs.values():
                d = obj.to_dict()
                conn.execute(f"INSERT INTO {table} ({', '.join(d)}) VALUES "
                             f"({', '.join('?' for _ in d)})", tuple(d.values()))


@pytest.fixture
def stream_watch() -> Iterator[list[Stream]]:
    streams: list[Stream] = []
    yield streams
    for s in streams:
        s.close()


def test_a_real_ledger_signs_publishes_and_verify_chain_detects_tampering(
        sandbox: Path, bus_factory: BusFactory, stream_watch: list[Stream]) -> None:
    db = "data/ck.db"
    pub_key = "keys/ledger-checkpoint.pub"
    bus = _bus(bus_factory, db)
    try:
        assert bus.ledger.ready["checkpoints"]["dir"] == "data/checkpoints"
        assert (sandbox / "keys" / "ledger-checkpoint.pem").stat().st_mode & 0o077 == 0
        public_key = load_public_key(sandbox / pub_key)
        assert bus.ledger.ready["checkpoints"]["key_id"] == key_id_of(public_key)
        watch = CheckpointWatch(public_key)
        stream = Stream(bus.pub, watch)
        stream_watch.append(stream)
        stream.wait_subscribed()
        play(load_scenario(sandbox / "scenarios" / "L3_PLAN_FLOW_001.json"), bus.front)
        msg = stream.until_checkpoint(7)
        received = Checkpoint.from_dict(msg.model_dump())
        assert verify_signature(received, public_key) is None
        older = copy_db(sandbox / db, sandbox / "data" / "at-7.db")
        play(load_scenario(sandbox / "scenarios" / "L3_PLAN_FLOW_002_LINKS.json"), bus.front)
        with AgentClient(bus.front, "auditor") as client:
            head = client.query("verify")["head_seq"]  # the ledger's own head
        assert head > 7
        stream.until_checkpoint(head)
        # the monitor-side check saw every checkpoint (7, head, maybe some between) match
        # the events it received
        verdicts = [r.verdict for r in stream.results]
        assert len(verdicts) >= 2 and set(verdicts) == {Verdict.OK}, stream.results
    finally:
        bus.stop()
    cp_dir = sandbox / "data" / "checkpoints"
    first_run = {int(p.name[:12]): p.name for p in cp_dir.glob("*.json")}
    assert set(first_run) >= {7, head} and max(first_run) == head  # maybe some between
    head_file, file_7 = first_run[head], first_run[7]
    assert set(json.loads((cp_dir / head_file).read_text())) == {
        "format", "seq", "head_hash", "state_hash", "ts", "key_id", "signature"}

    # intact: OK, and every checkpoint matches
    code, report = _verify(sandbox, db, "--checkpoints", "data/checkpoints")
    assert code == 0 and report["chain_status"] == "OK", report
    assert report["checkpoints"] | {"status": "OK", "files": len(first_run),
                                    "matching": len(first_run), "latest_seq": head
                                    } == report["checkpoints"]
    full = copy_db(sandbox / db, sandbox / "data" / "full.db")

    # a truncated tail: the older copy of the file, consistent in itself
    _restore(sandbox, db, older)
    code, plain = _verify(sandbox, db)
    assert code == 0 and plain["chain_status"] == "OK"  # the chain alone cannot tell
    code, report = _verify(sandbox, db, "--checkpoints", "data/checkpoints",
                           "--public-key", pub_key)
    assert code == 1 and report["chain_status"] == "BROKEN"
    with SqliteStore(sandbox / db, readonly=True) as store:  # the cheap check agrees
        heads = check_heads(store, load_checkpoints(cp_dir, public_key))
    assert [(name, r.verdict, r.seq) for name, r in heads] == [
        (name, Verdict.TRUNCATED, 8) for seq, name in sorted(first_run.items()) if seq > 7]
    assert [(m["seq"], m["kind"], m["checkpoint"]) for m in report["mismatches"]] == [
        (8, "TRUNCATED", name) for seq, name in sorted(first_run.items()) if seq > 7]
    assert f"signed head is seq {head}" in report["mismatches"][-1]["reason"]

    # a rewritten history, every hash recomputed and the tables rewritten to match
    _restore(sandbox, db, full)
    _rewrite_with_recomputed_hashes(sandbox / db, 3)
    code, plain = _verify(sandbox, db)
    assert code == 0 and plain["chain_status"] == "OK"
    code, report = _verify(sandbox, db, "--checkpoints", "data/checkpoints")
    assert code == 1
    assert [(m["seq"], m["kind"], m["checkpoint"]) for m in report["mismatches"]] == [
        (seq, "HISTORY_REWRITTEN", name) for seq, name in sorted(first_run.items())
        if seq >= 3]
    with SqliteStore(sandbox / db, readonly=True) as store:
        heads = check_heads(store, load_checkpoints(cp_dir, public_key))
    assert [(r.verdict, r.seq) for _, r in heads] == [
        (Verdict.HISTORY_REWRITTEN, seq) for seq in sorted(first_run) if seq >= 3]
    assert report["mismatches"][0]["after_seq"] == max([0, *(s for s in first_run if s < 3)])

    # a bad signature: a checkpoint file edited by hand
    _restore(sandbox, db, full)
    forged = cp_dir / file_7
    original = forged.read_text()
    forged.write_text(original.replace('"seq": 7', '"seq": 6'))
    code, report = _verify(sandbox, db, "--checkpoints", "data/checkpoints")
    assert code == 1
    [m] = report["mismatches"]
    assert (m["seq"], m["kind"], m["checkpoint"]) == (6, "BAD_SIGNATURE", file_7)
    forged.write_text(original)

    # a rolled-back database: the older copy restored. The ledger refuses to serve it
    # (its newest checkpoints are ahead) unless told the rollback is intended...
    _restore(sandbox, db, older)
    rolled_back = _digest(sandbox / db)
    with pytest.raises(CoordinatorError) as refused:
        _bus(bus_factory, db)
    assert refused.value.code == ErrorCode.DB_ROLLED_BACK
    assert "--accept-rollback" in refused.value.message
    assert _digest(sandbox / db) == rolled_back  # nothing was written
    # ...and run on it anyway, the new history reuses seqs 8.. with other events
    bus = _bus(bus_factory, db, "--accept-rollback")
    try:
        stream = Stream(bus.pub, watch)  # the same monitor, which saw the first history
        stream_watch.append(stream)
        stream.wait_subscribed()
        with AgentClient(bus.front, "Eve", session_id="S-FORK") as eve:
            assert eve.create_plan("P-FORK", "Another history").ok
            assert eve.add_item("P-FORK", "I-F1", "One").ok
            last = eve.add_item("P-FORK", "I-F2", "Two")
            assert last.ok and last.seq is not None
            new_head = last.seq
        stream.until_checkpoint(new_head)
    finally:
        bus.stop()
    assert new_head == 10 < head
    # the monitor dropped events 8-10 as duplicates and still has the first history's
    # hash at 10: the new ledger's checkpoint at 10 contradicts it
    bad = [r for r in stream.results if not r.ok]
    assert [(r.verdict, r.seq) for r in bad][-1:] == [(Verdict.HISTORY_REWRITTEN, 10)]
    code, report = _verify(sandbox, db, "--checkpoints", "data/checkpoints")
    assert code == 1
    for seq, name in first_run.items():
        found = [m for m in report["mismatches"] if m["checkpoint"] == name]
        if seq <= 7:
            assert found == [], found
        elif seq <= new_head:
            assert [(m["seq"], m["kind"]) for m in found] == [(seq, "HISTORY_REWRITTEN")]
        else:
            assert [(m["seq"], m["kind"]) for m in found] == [(new_head + 1, "TRUNCATED")]
    second_run = {p.name for p in cp_dir.glob("*.json")} - set(first_run.values())
    assert second_run and report["checkpoints"]["matching"] >= len(second_run)


def test_without_checkpoint_options_the_ledger_writes_none(sandbox: Path,
                                                          bus_factory: BusFactory) -> None:
    ledger_sqlite.initialise(sandbox / "data" / "plain.db")
    with bus_factory.start("data/plain.db") as bus:
        assert "checkpoints" not in bus.ledger.ready
    assert not (sandbox / "data" / "checkpoints").exists()
    assert not (sandbox / "keys").exists()


def test_verify_chain_checkpoint_usage_errors(sandbox: Path) -> None:
    build_db(sandbox / "data" / "u.db", small_log())
    code, report = _verify(sandbox, "data/u.db", "--checkpoints", "data/none")
    assert code == 2 and report["error"]["code"] == "FILE_NOT_FOUND"
    (sandbox / "data" / "cps").mkdir()
    code, report = _verify(sandbox, "data/u.db", "--checkpoints", "data/cps")
    assert code == 2 and report["error"]["field"] == "path"  # no keys/ledger-checkpoint.pub
    code, report = _verify(sandbox, "data/u.db", "--checkpoints", "/etc")
    assert code == 2 and report["error"]["code"] == "PATH_NOT_ALLOWED"
