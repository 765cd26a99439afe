"""The SQLite side of the integrity checks: reading a file that may be damaged.

:class:`SqliteInspection` is the SQLite :class:`ledger.storage.base.Inspection`: a
read-only connection (``mode=ro``: a damaged file is never written to, not even by a
WAL checkpoint) that needs neither the schema nor sound pages to open. What its checks
mean, and when the ledger runs them, is backend-neutral and lives in
:mod:`ledger.log.integrity`; this module only knows how SQLite finds damage:

- ``PRAGMA quick_check`` (:meth:`SqliteInspection.check_pages`): every page of the file
  is read and its b-tree structure and record format checked (a truncated file, a torn
  or overwritten page, a file that is not a database all fail here). It does not check
  that index contents match their tables; ``PRAGMA integrity_check`` does, several times
  slower (docs/DURABILITY.md has figures);
- ``PRAGMA integrity_check`` (:meth:`SqliteInspection.damage`): the full check, and for
  a damaged file where the damage is: the tables the messages concern (through
  ``sqlite_master`` and ``dbstat``, plus every table that cannot be read to its end), a
  truncation the file header reveals, and how far the event log can still be read.

Every sqlite3 error is translated by :func:`ledger.storage.sqlite.storage_error` (with
``damage=True``: an error that says the file is damaged is DB_DAMAGED).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from ledger.storage.base import DamageReport, Inspection, ReadSnapshot, damaged
from ledger.storage.sqlite import SqliteSnapshot, connect, is_damage, storage_error
from schema.errors import StorageError

#: Most check messages reported (SQLite's own default is 100).
MAX_MESSAGES: Final = 20
#: What the checks' errors say they were doing (the messages keep these words).
_READING: Final = "reading it"

_PAGE = re.compile(r"\b(?:Tree|Page|page) (\d+)\b")
_INDEX = re.compile(r"\bindex (\w+)")


class SqliteInspection(Inspection):
    """A read-only connection to a SQLite file, damaged or not."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.conn = connect(path, readonly=True)
        except sqlite3.Error as exc:
            raise self._fail(exc, "opening it") from exc

    def _fail(self, exc: sqlite3.Error, doing: str = _READING) -> StorageError:
        return storage_error(exc, doing, name=self.name, damage=True)

    def tables(self) -> set[str]:
        try:
            return {r[0] for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    @contextmanager
    def snapshot(self) -> Iterator[ReadSnapshot]:
        with SqliteSnapshot(self.conn, doing=_READING, name=self.name, damage=True) as snap:
            yield snap

    def check_pages(self) -> None:
        try:
            problems = [str(r[0]) for r in self.conn.execute(
                f"PRAGMA quick_check({MAX_MESSAGES})")]
        except sqlite3.Error as exc:
            if not is_damage(exc):
                raise self._fail(exc) from exc
            problems = [str(exc)]
        if problems != ["ok"]:
            lines = [line for p in problems for line in p.splitlines()]
            shown = "; ".join(lines[:4]) + (f" (and {len(lines) - 4} more)"
                                            if len(lines) > 4 else "")
            raise damaged(self.name, f"PRAGMA quick_check failed: {shown}",
                          quick_check=lines)

    def damage(self) -> DamageReport | None:
        try:
            rows = self.conn.execute(f"PRAGMA integrity_check({MAX_MESSAGES})").fetchall()
            messages = [line for r in rows for line in str(r[0]).splitlines()]
        except sqlite3.Error as exc:
            if not is_damage(exc):
                raise self._fail(exc, "checking it") from exc
            messages = [f"integrity_check could not run: {exc}"]
        if messages == ["ok"]:
            return None
        tables = _tables_named(self.conn, messages)
        readable, last_seq, stopped = _readable_events(self.conn)
        return DamageReport(
            name=self.name, check="PRAGMA integrity_check", messages=messages,
            tables=tables, truncated=_truncation(self.path), events_readable=readable,
            last_readable_seq=last_seq, read_error=stopped)

    def interrupt(self) -> None:
        # sqlite3's interrupt() may be called from any thread; one sent while no
        # statement runs is a no-op, so callers repeat it until the check has ended
        with self._lock:
            if not self._closed:
                self.conn.interrupt()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.conn.close()


def _truncation(path: Path) -> str | None:
    """A file shorter than its header says (page size x page count), described."""
    with path.open("rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return f"the file header is missing or not SQLite's ({len(header)} bytes read)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    size = path.stat().st_size
    if pages and size < page_size * pages:
        return (f"the file is truncated: {size} bytes, its header says {pages} pages of "
                f"{page_size} = {pages * page_size} bytes (pages {size // page_size + 1}.."
                f"{pages} are missing)")
    return None


def _tables_named(conn: sqlite3.Connection, messages: list[str]) -> list[str]:
    """The tables the damage concerns: pages and indexes the integrity messages name,
    mapped through sqlite_master and dbstat, plus every table that cannot be read to
    its end (empty if even the schema cannot be read)."""
    try:
        schema = conn.execute("SELECT name, tbl_name, type, rootpage FROM sqlite_master"
                              ).fetchall()
    except sqlite3.Error:
        return []
    by_root = {int(root): tbl for _, tbl, _, root in schema if root}
    by_name = {name: tbl for name, tbl, _, _ in schema}
    pages = {int(n) for text in messages for n in _PAGE.findall(text)}
    if pages:
        try:
            for name, page in conn.execute("SELECT name, pageno FROM dbstat"):
                if int(page) in pages and name in by_name:
                    by_root.setdefault(int(page), by_name[name])
        except sqlite3.Error:
            pass  # dbstat walks the same damaged b-trees; take what the roots say
    found: list[str] = []

    def add(name: str | None) -> None:
        if name and name not in found:
            found.append(name)

    for text in messages:
        for page in _PAGE.findall(text):
            add(by_root.get(int(page)))
        for index in _INDEX.findall(text):
            add(by_name.get(index))
    for name, _, kind, _ in schema:
        if kind == "table" and not name.startswith("sqlite_"):
            try:
                for _ in conn.execute(f'SELECT * FROM "{name}"'):
                    pass
            except sqlite3.Error:
                add(name)
    return found


def _readable_events(conn: sqlite3.Connection) -> tuple[int, int, str | None]:
    """(events read, last seq read, the error that stopped the read or None)."""
    count = last = 0
    try:
        for (seq,) in conn.execute("SELECT seq FROM events ORDER BY seq"):
            count += 1
            last = int(seq)
    except sqlite3.Error as exc:
        return count, last, str(exc)
    return count, last, None
