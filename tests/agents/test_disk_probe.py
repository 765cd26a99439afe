"""The disk probe of bin/bench (agents/tools/disk_probe.py): WAL frames per commit, read
from a synthetic WAL and from a ledger's real one; the fsync probe's samples exist."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from agents.tools import bench
from agents.tools.disk_probe import (
    FRAME_HEADER_BYTES,
    SYNC_CALL,
    fsync_probe,
    read_wal_commits,
    wal_commits,
)
from ledger.plans.ledger import Ledger
from ledger.storage.factory import file_locator, open_store

PAGE = 512


def wal(frames: list[tuple[int, int, tuple[int, int]]], salts: tuple[int, int] = (7, 9),
        *, partial: bool = False) -> bytes:
    """A WAL: header, then (page number, commit size, salts) frames of PAGE bytes."""
    out = struct.pack(">8I", 0x377F0682, 3007000, PAGE, 0, *salts, 0, 0)
    for page_no, commit_size, frame_salts in frames:
        out += struct.pack(">6I", page_no, commit_size, *frame_salts, 0, 0) + b"x" * PAGE
    if partial:
        out += struct.pack(">6I", 3, 9, *salts, 0, 0) + b"x" * (PAGE // 2)
    return out


def test_frames_are_counted_per_commit_in_the_current_generation() -> None:
    cur, old = (7, 9), (6, 1)
    data = wal([(2, 0, cur), (3, 5, cur),                     # a commit of 2 frames
                (2, 0, cur), (4, 0, cur), (5, 6, cur),        # one of 3
                (6, 0, cur),                                  # not committed yet
                (2, 4, old), (3, 4, old)], partial=True)      # the previous generation
    parsed = wal_commits(data)
    assert parsed.page_size == PAGE
    assert parsed.frames == [2, 3]
    assert parsed.typical_frames == 2  # median 2.5 rounds to even
    assert parsed.mean_frames == 2.5
    assert parsed.typical_bytes == 2 * (FRAME_HEADER_BYTES + PAGE)
    # a partly written commit frame at the end is not counted
    assert wal_commits(wal([(2, 5, cur)], partial=True)).frames == [1]
    assert wal_commits(wal([])).frames == []
    assert wal_commits(wal([])).typical_frames == 1


def test_since_gives_the_commits_a_later_reading_added() -> None:
    cur, new = (7, 9), (8, 3)
    first = wal_commits(wal([(2, 5, cur)]))
    later = wal_commits(wal([(2, 5, cur), (2, 0, cur), (3, 6, cur)]))
    assert later.since(first) == [2]
    assert later.since(later) == []
    assert later.since(None) == [1, 2]
    # the WAL was reset (after a checkpoint): every commit of the new generation is new
    reset = wal_commits(wal([(4, 6, new)], salts=new))
    assert reset.salts == new and reset.since(later) == [1]


def test_what_is_not_a_wal_is_refused(tmp_path: Path) -> None:
    for bad in (b"", b"SQLite format 3\0" + b"\0" * 100,
                struct.pack(">8I", 0x377F0682, 3007000, 1000, 0, 0, 0, 0, 0)):
        with pytest.raises(ValueError):
            wal_commits(bad)
    assert read_wal_commits(tmp_path / "missing-wal") is None
    # page size 65536 is stored as 1
    assert wal_commits(struct.pack(">8I", 0x377F0683, 3007000, 1, 0, 0, 0, 0, 0)
                       ).page_size == 65536


def test_a_ledgers_wal_shows_its_commits(tmp_path: Path) -> None:
    commands = [c for c, _ in bench.merged(bench.make_workload(1, 40))]
    with open_store(file_locator(tmp_path / "x.db"), create=True, durability="normal",
                    manual_maintenance=True) as store:
        ledger = Ledger(store)
        ledger.apply(bench._create_plan("bench"))
        for command in commands:
            ledger.apply(command)
        parsed = read_wal_commits(tmp_path / "x.db-wal")
    assert parsed is not None and parsed.page_size == 4096
    assert len(parsed.frames) >= 41  # one commit per command, no checkpoint in between
    # each writes the event's row and its index entries, the command record, the item
    assert min(parsed.frames[-40:]) >= 3


def test_the_fsync_probe_times_each_commit(tmp_path: Path) -> None:
    samples = fsync_probe(tmp_path, frames=3, page_size=4096, samples=5, area_commits=2)
    assert len(samples) == 5 and all(s > 0 for s in samples)
    assert list(tmp_path.iterdir()) == []  # its file is gone
    assert SYNC_CALL == "fdatasync"  # Linux, as SQLite's unix VFS there
    with pytest.raises(ValueError):
        fsync_probe(tmp_path, frames=0, page_size=4096, samples=1)
