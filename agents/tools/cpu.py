"""CPU time of processes and their descendants, read from ``/proc`` (Linux), for bin/bench.

The figure the benchmark reports is **CPU time per command**: utime + stime of each
process of the bus, sampled right before and right after a measured phase. It does not
move with the neighbours the way wall-clock throughput does on a shared machine.

What is counted (proc(5), ``/proc/<pid>/stat``):

- fields 14-15, ``utime`` and ``stime``: the whole thread group, every thread, including
  threads that have already exited;
- fields 16-17, ``cutime`` and ``cstime``: children that exited *and were waited for*
  (their own ``cutime``/``cstime`` included, so a reaped grandchild counts too);
- living descendants, found by their parent pid (field 4) in one scan of ``/proc``: this
  kernel has no ``/proc/<pid>/task/<tid>/children`` (CONFIG_PROC_CHILDREN is optional), so
  the scan is the portable way. A zombie still shows its CPU until it is reaped, and then
  its parent's ``cutime`` does, so a child exiting inside the window is counted once.

A *role* (ledger, broker, monitor, the PostgreSQL server...) is either a **tree** (the
process, its living descendants and its reaped children) or **own** (the process alone,
without children: the bench's driver, whose children are the bus it measures).

Resolution: the kernel reports these fields in clock ticks (``SC_CLK_TCK``, 100 per
second on Linux: 10 ms). Each reading truncates, so a delta is exact to one tick per
process; over a phase of N commands that is 10 ms / N per command (0.5 µs at 20,000).
:func:`self_cpu_seconds` (``getrusage``, µs) is finer, for the process calling it.

Pure functions over a ``proc_root`` directory (default ``/proc``), so tests can feed
a fake tree; nothing here opens a socket.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PROC: Final = Path("/proc")
#: Clock ticks per second of the utime/stime/cutime/cstime fields.
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
#: The comm (process name) of a PostgreSQL server's processes: the postmaster and the
#: backends it forks (without exec) all show "postgres".
POSTGRES_COMM: Final = "postgres"


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of one ``/proc/<pid>/stat`` line the accounting needs (ticks)."""

    pid: int
    comm: str
    state: str
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    num_threads: int
    starttime: int

    @property
    def own_ticks(self) -> int:
        """utime + stime: every thread of the process, living or exited."""
        return self.utime + self.stime

    @property
    def reaped_ticks(self) -> int:
        """cutime + cstime: children (and their reaped children) already waited for."""
        return self.cutime + self.cstime


def parse_stat(line: str | bytes) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` line.

    The comm field is in parentheses and may itself hold spaces and parentheses
    (``(my (odd) name)``), so it ends at the *last* ``)``. Raises ValueError on a line
    that is not a stat line."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    open_at, close_at = text.find("("), text.rfind(")")
    if open_at < 1 or close_at < open_at:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    rest = text[close_at + 2:].split()
    if len(rest) < 20:
        raise ValueError(f"/proc/<pid>/stat line too short: {text[:80]!r}")
    # rest[0] is field 3 (state); field n is rest[n - 3]
    return ProcStat(
        pid=int(text[:open_at]), comm=text[open_at + 1:close_at], state=rest[0],
        ppid=int(rest[1]), utime=int(rest[11]), stime=int(rest[12]), cutime=int(rest[13]),
        cstime=int(rest[14]), num_threads=int(rest[17]), starttime=int(rest[19]))


def read_stat(pid: int, proc_root: Path = PROC) -> ProcStat | None:
    """The stat of ``pid``, or None if there is no such process (any more)."""
    try:
        return parse_stat((proc_root / str(pid) / "stat").read_bytes())
    except (OSError, ValueError):
        return None


def scan(proc_root: Path = PROC) -> dict[int, ProcStat]:
    """Every process in ``proc_root``, by pid, in one pass (processes that vanish
    while it reads are left out)."""
    table: dict[int, ProcStat] = {}
    try:
        entries = list(os.scandir(proc_root))
    except OSError:
        return table
    for entry in entries:
        if entry.name.isdigit() and (st := read_stat(int(entry.name), proc_root)):
            table[st.pid] = st
    return table


def descendants(root: int, table: Mapping[int, ProcStat]) -> list[int]:
    """The pids below ``root`` in ``table`` (children, grandchildren...), breadth first;
    ``root`` itself not included."""
    children: dict[int, list[int]] = {}
    for st in table.values():
        if st.pid != st.ppid:
            children.setdefault(st.ppid, []).append(st.pid)
    found: list[int] = []
    todo = [root]
    while todo:
        kids = sorted(children.get(todo.pop(0), ()))
        found += kids
        todo += kids
    return found


def tree_ticks(root: int, table: Mapping[int, ProcStat]) -> int:
    """CPU ticks of ``root``'s tree: its own, its reaped children's and every living
    descendant's (own + reaped). 0 if ``root`` is not in ``table``."""
    if root not in table:
        return 0
    return sum(table[p].own_ticks + table[p].reaped_ticks
               for p in (root, *descendants(root, table)))


def postmaster_root(pid: int, table: Mapping[int, ProcStat],
                    comm: str = POSTGRES_COMM) -> int | None:
    """The PostgreSQL postmaster above ``pid`` (a backend: ``SELECT pg_backend_pid()``):
    the highest ancestor, ``pid`` included, whose comm is still ``comm``. None if
    ``pid`` is not such a process."""
    st = table.get(pid)
    if st is None or st.comm != comm:
        return None
    while (parent := table.get(st.ppid)) is not None and parent.comm == comm \
            and parent.pid != st.pid:
        st = parent
    return st.pid


@dataclass(frozen=True, slots=True)
class Role:
    """A process measured under one name. ``tree``: with its descendants and reaped
    children (a server and what it spawns); otherwise the process alone."""

    pid: int
    tree: bool = True


def sample(roles: Mapping[str, Role], proc_root: Path = PROC) -> dict[str, int]:
    """Ticks of every role now; the trees from one scan of ``proc_root``. A role whose
    process is gone reads 0: sample before it exits."""
    table = scan(proc_root) if any(r.tree for r in roles.values()) else {}
    out: dict[str, int] = {}
    for name, role in roles.items():
        if role.tree:
            out[name] = tree_ticks(role.pid, table)
        else:
            st = read_stat(role.pid, proc_root)
            out[name] = st.own_ticks if st else 0
    return out


def us_per_command(before: Mapping[str, int], after: Mapping[str, int], commands: int,
                   clk_tck: int = CLK_TCK) -> dict[str, float]:
    """µs of CPU per command for each role sampled in both, and ``total`` (their sum).
    Raises ValueError if ``commands`` is not positive."""
    if commands <= 0:
        raise ValueError("commands must be positive")
    per = {name: (after[name] - before[name]) * 1e6 / clk_tck / commands
           for name in before if name in after}
    per["total"] = sum(per.values())
    return per


def resolution_us_per_command(commands: int, clk_tck: int = CLK_TCK) -> float:
    """One clock tick spread over ``commands``: the step of a per-process figure."""
    return 1e6 / clk_tck / max(1, commands)


def self_cpu_seconds() -> float:
    """CPU seconds (user + system, every thread) of the calling process so far, from
    ``getrusage(RUSAGE_SELF)``: µs resolution, children excluded."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime

