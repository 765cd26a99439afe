"""The disk's own commit latency, written the way SQLite commits a WAL transaction.

bin/bench reports the latency of commands at a fixed load next to this floor: with
``synchronous=FULL`` each commit group waits for one sync of the WAL, and a command
arriving while one is in flight waits for that one and then its own.

What SQLite does per commit on Linux (``os_unix.c``, ``unixSync`` → ``full_fsync``:
``fdatasync()`` when built with HAVE_FDATASYNC, as Linux builds are, else ``fsync()``;
``F_FULLFSYNC`` only on macOS with ``PRAGMA fullfsync``), seen with ``strace`` on the
bench machine (SQLite 3.40): for each WAL frame one ``pwrite`` of the 24-byte frame
header and one of the page, at the WAL's next offset, then one ``fdatasync`` of the WAL.
:func:`fsync_probe` does the same on a file in the database's directory, preallocated
and overwritten in place, as a WAL is once it has been reset after a checkpoint (so no
size change, no extra metadata to sync). The first commit after a WAL reset also writes
and syncs the 32-byte WAL header; that second sync is not modelled.

How many frames a commit writes is read from the bus's own WAL (:func:`wal_commits`,
the WAL format of https://www.sqlite.org/fileformat2.html#walformat): the frames of
the WAL's current generation (those carrying the header's salts), counted up to each
commit frame (a nonzero "database size after commit"). bin/bench reads it after each
of a few commands sent one at a time (the idle path: a commit group of one command),
so the probe writes what an idle commit writes.
"""

from __future__ import annotations

import os
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

WAL_HEADER_BYTES: Final = 32
FRAME_HEADER_BYTES: Final = 24
WAL_MAGIC: Final = (0x377F0682, 0x377F0683)  # big- or little-endian checksums
#: The sync call SQLite's unix VFS makes on Linux, and its name for the report.
SYNC_CALL: Final = "fdatasync" if hasattr(os, "fdatasync") else "fsync"
_sync = getattr(os, SYNC_CALL)


@dataclass(frozen=True, slots=True)
class WalCommits:
    """The commits of a WAL's current generation (its header's salts): page size and
    frames per commit, oldest first."""

    page_size: int
    frames: list[int] = field(default_factory=list)
    salts: tuple[int, int] = (0, 0)

    @property
    def typical_frames(self) -> int:
        """Frames of a typical commit: the median, rounded, at least 1."""
        return max(1, round(statistics.median(self.frames))) if self.frames else 1

    @property
    def mean_frames(self) -> float:
        return statistics.fmean(self.frames) if self.frames else 0.0

    @property
    def typical_bytes(self) -> int:
        """Bytes a typical commit writes: frames x (24-byte header + page)."""
        return self.typical_frames * (FRAME_HEADER_BYTES + self.page_size)

    def since(self, earlier: WalCommits | None) -> list[int]:
        """Frames per commit of the commits here that ``earlier`` (a previous reading of
        the same WAL) did not have: the ones after its count in the same generation,
        every one after a reset (new salts)."""
        if earlier is not None and earlier.salts == self.salts:
            return self.frames[len(earlier.frames):]
        return list(self.frames)


def _parse(read: Callable[[int, int], bytes]) -> WalCommits:
    """The WAL read through ``read(offset, size)``: the header, then frame headers only
    (pages are skipped)."""
    head = read(0, WAL_HEADER_BYTES)
    if len(head) < WAL_HEADER_BYTES:
        raise ValueError("not a WAL file: shorter than its header")
    magic, _version, page_size, _ckpt, salt1, salt2 = struct.unpack(">6I", head[:24])
    if magic not in WAL_MAGIC:
        raise ValueError(f"not a WAL file: magic {magic:#x}")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise ValueError(f"not a WAL file: page size {page_size}")
    frames: list[int] = []
    step = FRAME_HEADER_BYTES + page_size
    pending = 0
    at = WAL_HEADER_BYTES
    while True:
        frame = read(at, 16)
        # a frame counts once its page is there too (a last byte to read)
        if len(frame) < 16 or len(read(at + step - 1, 1)) < 1:
            break
        page_no, commit_size, s1, s2 = struct.unpack(">4I", frame)
        if page_no == 0 or (s1, s2) != (salt1, salt2):
            break
        pending += 1
        if commit_size:
            frames.append(pending)
            pending = 0
        at += step
    return WalCommits(page_size, frames, (salt1, salt2))


def wal_commits(data: bytes) -> WalCommits:
    """Parse a WAL file's bytes. Frames of an older generation (other salts) and a
    trailing uncommitted or partly written frame are not counted. Raises ValueError
    if ``data`` does not start with a WAL header."""
    return _parse(lambda offset, size: data[offset:offset + size])


def read_wal_commits(wal: Path) -> WalCommits | None:
    """:func:`wal_commits` of the file ``wal`` (a database's ``-wal``), reading only the
    frame headers; None if it is missing or not a WAL."""
    try:
        fd = os.open(wal, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _parse(lambda offset, size: os.pread(fd, size, offset))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def fsync_probe(directory: Path, *, frames: int, page_size: int, samples: int,
                area_commits: int = 256) -> list[float]:
    """Seconds per commit, ``samples`` times: write ``frames`` frames (a 24-byte header
    and a ``page_size`` page each, two ``pwrite`` calls) at the next offset of a file in
    ``directory``, then :data:`SYNC_CALL` it. The file (``area_commits`` commits long)
    is written and synced once before, then overwritten in a cycle; it is removed
    after. Raises OSError if ``directory`` cannot be written."""
    if frames < 1 or samples < 1:
        raise ValueError("frames and samples must be at least 1")
    step = FRAME_HEADER_BYTES + page_size
    commit = frames * step
    area = commit * max(1, area_commits)
    path = directory / f".fsync-probe-{os.getpid()}"
    header = os.urandom(FRAME_HEADER_BYTES)
    page = os.urandom(page_size)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    latencies: list[float] = []
    try:
        chunk = b"\0" * commit
        for off in range(0, area, commit):
            os.pwrite(fd, chunk, off)
        os.fsync(fd)
        offset = 0
        for _ in range(samples):
            started = time.perf_counter()
            for i in range(frames):
                os.pwrite(fd, header, offset + i * step)
                os.pwrite(fd, page, offset + i * step + FRAME_HEADER_BYTES)
            _sync(fd)
            latencies.append(time.perf_counter() - started)
            offset = (offset + commit) % area
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return latencies
