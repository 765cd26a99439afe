"""The writer lease of a store kept in a file: ``flock`` on a lock file beside it.

:class:`FileLease` holds ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<db>.lock`` (flock(2):
the lock belongs to the open file description, so the kernel drops it when the holding
process dies, SIGKILL included; it is never stale, unlike a pid file). The file holds
one JSON line naming the holder (:func:`ledger.storage.base.writer_holder`), written
after the lock is taken and emptied when it is released; a refused writer reads it to
say who holds the database.

The lock file is never deleted, not even by its holder: deleting it would let a second
process lock a new file of the same name while the first still holds the old one.
:meth:`FileLease.check` notices exactly that (the file at the path is no longer the one
locked) and the store then stops writing (:class:`ledger.storage.base.StoreLost`).

A holder that is being taken down because its supervisor died (``bin/ledger``'s writer
process, killed by the kernel when its parent dies: ``PR_SET_PDEATHSIG``) may still hold
the lock for a few milliseconds after the supervisor is gone; a new writer waits up to
:data:`DYING_GRACE` seconds for such a holder instead of refusing at once, so a restart
right after a SIGKILL succeeds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Final

from ledger.storage.base import StoreLost, WriterLease, locked
from schema.errors import ErrorCode, StorageError

#: the lock file is the database's path with this appended (``data/x.db.lock``)
LOCK_SUFFIX: Final = ".lock"
#: how long a new writer waits for a holder whose process or supervisor is gone (s)
DYING_GRACE: Final = 2.0
#: how often it looks again meanwhile (s)
RETRY_EVERY: Final = 0.01
#: the most of the lock file read to name its holder
MAX_HOLDER_BYTES: Final = 4096


def lock_path(path: Path) -> Path:
    """Where the lock file of the database at ``path`` is."""
    return path.with_name(path.name + LOCK_SUFFIX)


def read_holder(fd: int) -> dict[str, Any] | None:
    """The holder the lock file names (None: empty, being written, or not ours)."""
    try:
        line = os.pread(fd, MAX_HOLDER_BYTES, 0).split(b"\n", 1)[0]
        holder = json.loads(line)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _gone(pid: Any) -> bool:
    """Whether process ``pid`` of this host has exited (a zombie has: its files, and so
    its locks, are released before it becomes one)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _dying(holder: dict[str, Any] | None) -> bool:
    """A holder on this host whose process, or whose supervisor, is gone: its lock is
    about to be released (see the module docstring)."""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    return _gone(holder.get("pid")) or _gone(holder.get("supervisor"))


class FileLease(WriterLease):
    """The lock on ``path`` (a ``.lock`` file) for ``holder``; ``name`` is what error
    messages call the database. Raises StorageError(DB_LOCKED) naming the current holder
    if another process holds it, and StorageError(DB_ERROR) if the file cannot be made."""

    def __init__(self, path: Path, name: str, holder: dict[str, Any]) -> None:
        self.path = path
        self._name = str(path)  # os.stat is faster on a str: check() runs per commit
        self.name = name
        self.holder = holder
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(ErrorCode.DB_ERROR,
                               f"{name}: cannot open its writer lock file {path.name}: "
                               f"{exc.strerror}") from exc
        try:
            self._lock(fd)
            line = (json.dumps(holder, separators=(",", ":")) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, line, 0)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        self._id = (st.st_dev, st.st_ino)

    def _lock(self, fd: int) -> None:
        deadline = time.monotonic() + DYING_GRACE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                holder = read_holder(fd)
                if not _dying(holder) or time.monotonic() >= deadline:
                    raise locked(self.name, holder) from None
            time.sleep(RETRY_EVERY)

    def check(self) -> None:
        """Raise StoreLost if the lock file at the path is not the one locked (removed,
        replaced, its folder moved): another writer could lock the new one."""
        try:
            st = os.stat(self._name)
        except OSError:
            raise StoreLost(f"{self.name}: its writer lock file {self.path.name} is gone "
                            "(removed, or its folder moved); another writer could start, "
                            "so this one stops", file=self.path.name) from None
        if (st.st_dev, st.st_ino) != self._id:
            raise StoreLost(f"{self.name}: its writer lock file {self.path.name} was "
                            "replaced; another writer could start, so this one stops",
                            file=self.path.name)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # nobody holds it now
        os.close(fd)  # releases the lock
