"""verify_store sharing the chain checks with a helper process (ledger.verify_parallel).

Whatever chunks the helper ends up with, the report must be the one a single walk
gives: the same mismatches, at the same seqs, in the same order, under the same cap.
The split itself is a race, so most tests here script it: a stand-in helper that takes
a chosen set of chunks and checks them in process, over tampered databases from the
tamper campaign (every kind, tamperings at chunk boundaries, chunks of one row). The
rest run the real helper process: forked, spawned, held back, killed.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from ledger.cli import verify_chain as cli
from ledger.log.chain import MAX_LISTED_MISMATCHES, verify_events
from ledger.log.checkpoints import verify_with_checkpoints
from ledger.log.verify import _same, verify_chain_only, verify_store
from ledger.log.verify_parallel import (
    ChainHelper,
    ChunkReport,
    check_chunk,
    chunk_bounds,
    chunk_count,
)
from ledger.storage.factory import file_locator
from ledger.storage.memory import MemoryStore
from ledger.storage.sqlite import SqliteStore
from tests.support import tamper_campaign as tc
from tests.support.helpers import APPEND_ONLY_TRIGGERS, copy_db

SEED = 20261122


class ScriptedHelper:
    """Stands in for ChainHelper: takes the chunks it is offered that ``owns`` picks and
    checks them in this process when the verifier finishes; ``lose`` chunks it takes but
    never reports, as a helper that died would."""

    def __init__(self, path: Path, chunk: int, owns: Callable[[int], bool],
                 lose: Callable[[int], bool] = lambda k: False) -> None:
        self.path = path
        self.chunk = chunk
        self.owns = owns
        self.lose = lose
        self.assigned: list[int] = []
        self.reports: dict[int, ChunkReport] = {}
        self.error: str | None = None
        self.head = -1

    def begin(self, head: int, token: str | None = None) -> None:
        self.head = head

    def want_work(self) -> bool:
        return True

    def assign(self, k: int) -> bool:
        if not self.owns(k):
            return False  # the verifier keeps it (and offers the next one later)
        assert k not in self.assigned
        self.assigned.append(k)
        return True

    def finish(self) -> None:
        with SqliteStore(self.path, readonly=True) as store, store.read_snapshot() as snap:
            for k in self.assigned:
                if not self.lose(k):
                    self.reports[k] = check_chunk(snap, k, self.chunk, self.head)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tc.Base:
    return tc.build_base(tmp_path_factory.mktemp("parallel"), SEED)


def tampered(base: tc.Base, work: Path, n: int, seed: int) -> Iterator[tuple[str, Path]]:
    """``n`` databases tampered as the campaign does (one at a time, at ``work``)."""
    rng = random.Random(seed)
    case = work / "case.db"
    for i in range(n):
        kind = tc.KINDS[i % len(tc.KINDS)]
        if kind in ("truncate_tail", "rollback_fork"):
            k = rng.randint(1, base.head - 1)
            tc._fresh(case, base.bytes_at[k])
            if kind == "rollback_fork":
                tc._fork(case, rng, rng.randint(1, 2 * tc.CHECKPOINT_EVERY))
        else:
            tc._fresh(case, base.data)
            with closing(sqlite3.connect(case, isolation_level=None)) as conn:
                conn.execute("BEGIN")
                for trigger in APPEND_ONLY_TRIGGERS:
                    conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
                tc.TAMPERS[kind](conn, base, rng)
                conn.execute("COMMIT")
        yield kind, case


def sequential(path: Path, base: tc.Base) -> dict[str, Any]:
    with SqliteStore(path, readonly=True) as store:
        return verify_with_checkpoints(store, base.checkpoints)


def shared(path: Path, base: tc.Base, helper: Any) -> dict[str, Any]:
    with SqliteStore(path, readonly=True) as store:
        return verify_with_checkpoints(store, base.checkpoints, helper=helper)


PATTERNS: dict[str, Callable[[int], bool]] = {
    "none": lambda k: False,
    "all": lambda k: True,
    "odd": lambda k: k % 2 == 1,
    "even": lambda k: k % 2 == 0,
    "first": lambda k: k == 0,
    "all but the first": lambda k: k > 0,
    "every third": lambda k: k % 3 == 2,
}


def test_the_chunks_cover_every_seq_once() -> None:
    for head in (1, 2, 7, 8, 9, 100):
        for chunk in (1, 3, 8, 200):
            seqs: list[int] = []
            for k in range(chunk_count(head, chunk)):
                low, high = chunk_bounds(k, chunk, head)
                seqs += range(low + 1, high + 1)
            assert seqs == list(range(1, head + 1))
    assert chunk_count(0, 5) == 0


def test_every_split_of_a_tampered_database_gives_the_single_walks_report(
        base: tc.Base, tmp_path: Path) -> None:
    """Nine kinds of tampering, six of each; each verified whole and under seven
    splits with chunks of 1, 2, 5 and 8 seqs (so tamperings fall on boundaries)."""
    rng = random.Random(SEED)
    tried = 0
    for kind, case in tampered(base, tmp_path, 6 * len(tc.KINDS), SEED):
        want = sequential(case, base)
        assert want["chain_status"] == "BROKEN", kind
        for chunk in (1, 2, 5, 8):
            for name, owns in PATTERNS.items():
                got = shared(case, base, ScriptedHelper(case, chunk, owns))
                assert got == want, (kind, chunk, name)
        coin = random.Random(rng.random())
        got = shared(case, base, ScriptedHelper(case, 3, lambda k, c=coin: c.random() < 0.5))
        assert got == want, (kind, "random")
        tried += 1
    assert tried == 6 * len(tc.KINDS)


@pytest.mark.parametrize("seq_offset", [-1, 0, 1])
@pytest.mark.parametrize("column", ["hash", "prev_hash", "payload", "bad json", "seq"])
def test_an_edit_at_a_chunk_boundary_is_found_in_every_split(
        base: tc.Base, tmp_path: Path, column: str, seq_offset: int) -> None:
    chunk = 8
    for boundary in (chunk, 2 * chunk, 5 * chunk):
        seq = boundary + seq_offset
        path = tmp_path / "edit.db"
        tc._fresh(path, base.data)
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            for trigger in APPEND_ONLY_TRIGGERS:
                conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
            if column == "seq":
                conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
            else:
                name, value = {"hash": ("hash", "0" * 64), "prev_hash": ("prev_hash", "1" * 64),
                               "payload": ("payload", "[]"),
                               "bad json": ("payload", "{oops")}[column]
                conn.execute(f"UPDATE events SET {name} = ? WHERE seq = ?", (value, seq))
        want = sequential(path, base)
        assert want["chain_status"] == "BROKEN"
        assert want["mismatches"][0]["seq"] == seq, (column, seq, want["mismatches"][:2])
        for name, owns in PATTERNS.items():
            assert shared(path, base, ScriptedHelper(path, chunk, owns)) == want, name


def test_the_mismatch_cap_and_count_survive_the_split(base: tc.Base, tmp_path: Path) -> None:
    """Every hash wrong: far more mismatches than are listed, spread over every chunk."""
    path = tmp_path / "all.db"
    tc._fresh(path, base.data)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for trigger in APPEND_ONLY_TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        conn.execute("UPDATE events SET hash = 'f' || substr(hash, 2), "
                     "payload = CASE WHEN seq % 3 = 0 THEN 'null' ELSE payload END")
    with SqliteStore(path, readonly=True) as store:
        want = verify_store(store)
        assert want["mismatch_count"] > MAX_LISTED_MISMATCHES + 20
        assert len(want["mismatches"]) == MAX_LISTED_MISMATCHES
        for chunk in (1, 4, 45, 1000):  # 45, 1000: a chunk lists only some of its own
            for name, owns in PATTERNS.items():
                helper = ScriptedHelper(path, chunk, owns)
                got = verify_store(store, helper=helper)  # type: ignore[arg-type]
                assert got == want, (chunk, name)
    assert shared(path, base, ScriptedHelper(path, 5, PATTERNS["odd"])) == sequential(path, base)


def test_chunks_a_dead_helper_never_reported_are_checked_by_the_verifier(
        base: tc.Base, tmp_path: Path) -> None:
    for kind, case in tampered(base, tmp_path, 2 * len(tc.KINDS), SEED + 1):
        want = sequential(case, base)
        got = shared(case, base, ScriptedHelper(case, 4, lambda k: k % 2 == 0,
                                                lose=lambda k: k % 4 == 0))
        assert got == want, kind


def test_a_good_database_verifies_ok_under_every_split(base: tc.Base, tmp_path: Path) -> None:
    path = tmp_path / "good.db"
    tc._fresh(path, base.data)
    want = sequential(path, base)
    assert want["chain_status"] == "OK" and want["events"] == base.head
    for chunk in (1, 6, base.head, 10 * base.head):
        for name, owns in PATTERNS.items():
            assert shared(path, base, ScriptedHelper(path, chunk, owns)) == want, (chunk, name)


def test_an_empty_log_does_not_start_the_helper(sqlite_path: Path) -> None:
    helper = ScriptedHelper(sqlite_path, 4, lambda k: True)
    with SqliteStore(sqlite_path, readonly=True) as store:
        assert verify_store(store, helper=helper)["events"] == 0  # type: ignore[arg-type]
    assert helper.head == -1 and helper.assigned == []


# --- the real helper process -----------------------------------------------------------


@pytest.fixture
def cases(base: tc.Base, tmp_path: Path) -> list[tuple[str, Path]]:
    """One tampered copy of each kind, and the untouched base."""
    work = tmp_path / "work"
    work.mkdir()
    out = []
    for i, (kind, case) in enumerate(tampered(base, work, len(tc.KINDS), SEED)):
        out.append((kind, copy_db(case, tmp_path / f"{i}-{kind}.db")))
    good = tmp_path / "good.db"
    tc._fresh(good, base.data)
    return [*out, ("good", good)]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_helper_process_checks_the_chunks_as_the_verifier_would(
        cases: list[tuple[str, Path]], method: str) -> None:
    """The helper process handed every chunk: its chunk reports are check_chunk's."""
    for kind, path in cases[:3] if method == "spawn" else cases:
        with SqliteStore(path, readonly=True) as store, store.read_snapshot() as snap:
            head = snap.head()[0]
            want = {k: check_chunk(snap, k, 4, head) for k in range(chunk_count(head, 4))}
        with ChainHelper(file_locator(path), method=method, chunk=4) as helper:
            helper.begin(head)
            assert all(helper.assign(k) for k in want)
            helper.finish()
            assert helper.error is None
            assert helper.reports == want, kind


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_helper_process_gives_the_single_walks_report(
        base: tc.Base, cases: list[tuple[str, Path]], method: str) -> None:
    for kind, path in cases:
        want = sequential(path, base)
        with ChainHelper(file_locator(path), method=method, chunk=5) as helper:
            assert shared(path, base, helper) == want, kind
            assert helper.error is None
        if method == "spawn":
            break  # one is enough: spawning is slow


def test_a_held_helper_gets_work_only_once_released(
        base: tc.Base, cases: list[tuple[str, Path]]) -> None:
    kind, path = cases[0]
    want = sequential(path, base)
    with ChainHelper(file_locator(path), method="fork", chunk=3, held=True) as helper:
        assert shared(path, base, helper) == want, kind
        assert helper.assigned == [] and helper.reports == {}
    with ChainHelper(file_locator(path), method="fork", chunk=3, held=True) as helper:
        helper.release()
        assert shared(path, base, helper) == want, kind
        assert helper.assigned[:2] == [0, 1]  # handed over before the verifier begins
        assert set(helper.reports) == set(helper.assigned) and helper.error is None


def test_a_helper_that_dies_costs_time_not_findings(
        base: tc.Base, cases: list[tuple[str, Path]]) -> None:
    for kind, path in cases:
        want = sequential(path, base)
        with ChainHelper(file_locator(path), method="fork", chunk=2) as helper:
            helper._process.kill()
            helper._process.join()
            assert shared(path, base, helper) == want, kind
            assert helper.error is not None


def test_verify_chain_with_a_helper_prints_what_it_prints_without(
        sandbox: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], base: tc.Base) -> None:
    """bin/verify_chain (in process) on a good, a tampered and a damaged database, with
    the helper forced on and off: the same output and exit status."""
    data = sandbox / "data"
    data.mkdir()
    tc._fresh(data / "good.db", base.data)
    tc._fresh(data / "bad.db", base.data)
    with closing(sqlite3.connect(data / "bad.db", isolation_level=None)) as conn:
        for trigger in APPEND_ONLY_TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        conn.execute("UPDATE events SET actor = 'Eve' WHERE seq IN (3, 30)")
        conn.execute("UPDATE plan_items SET title = 'x'")
    tc._fresh(data / "damaged.db", base.data)
    with (data / "damaged.db").open("r+b") as f:
        f.truncate((data / "damaged.db").stat().st_size // 2)

    def run(db: str, min_bytes: int) -> tuple[int, dict[str, Any]]:
        monkeypatch.setattr(cli, "HELPER_MIN_BYTES", min_bytes)
        code = cli._main(["--db", f"data/{db}"])
        return code, json.loads(capsys.readouterr().out)

    for db, status in (("good.db", "OK"), ("bad.db", "BROKEN"), ("damaged.db", "DAMAGED")):
        code, without = run(db, 1 << 62)
        assert without["chain_status"] == status
        assert run(db, 0) == (code, without), db


# --- the other fast paths of verify ------------------------------------------------------


def test_the_chain_only_walk_is_verify_events(base: tc.Base, tmp_path: Path) -> None:
    for kind, case in tampered(base, tmp_path, 2 * len(tc.KINDS), SEED + 2):
        with SqliteStore(case, readonly=True) as store:
            assert verify_chain_only(store) == verify_events(store.iter_events()), kind


def test_the_quick_table_pass_needs_every_key_once() -> None:
    want = {"a": ["a", 1, 2], "b": ["b", 3, 4]}  # key -> the row, key first
    assert _same([("a", 1, 2), ("b", 3, 4)], want)
    assert not _same([("a", 1, 2)], want)  # b missing
    assert not _same([("a", 1, 2), ("a", 1, 2)], want)  # a twice, b missing
    assert not _same([("a", 1, 2), ("b", 3, 5)], want)
    assert not _same([("a", 1, 2), ("b", 3, 4), ("c", 5, 6)], want)
    assert _same([], {})


def test_a_memory_store_and_its_sqlite_copy_verify_alike(base: tc.Base, tmp_path: Path) -> None:
    """verify_store through the Store interface (an Event per row) and through its own
    SQLite connection give the same report, tampered or not."""
    for kind, case in [("good", tmp_path / "good.db"),
                       *tampered(base, tmp_path, len(tc.KINDS), SEED + 3)]:
        if kind == "good":
            tc._fresh(case, base.data)
        with SqliteStore(case, readonly=True) as store:
            want = verify_store(store)
            memory = MemoryStore()
            memory._data.events = list(store.iter_events())
            memory._data.state = store.load_state()
        assert verify_store(memory) == want, kind
