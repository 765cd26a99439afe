"""Starting ``bin/ledger``'s writer process, early: this module imports only the standard
library, so that :func:`ledger.server.process.main` can start the writer before it
imports anything heavy itself; the two interpreters then load the ledger's modules at
the same time, and supervision costs the start-up almost nothing.

The writer (``python -m ledger.server ... --supervised-by PID``) loads its modules and
parses its arguments, then waits on its stdin for the supervisor's go
(:func:`await_go`) before it touches the database: the supervisor first checks what it
can refuse itself (a bad path, an insecure bind, a port in use), and a refusal then
changes nothing. The protocol between the two: ledger/server/supervisor.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

#: flags after which bin/ledger does not supervise (it prints, or it is the writer)
NOT_SUPERVISED: Final = frozenset({"--unsupervised", "--supervised-by", "-h", "--help",
                                   "--version"})
#: the byte the supervisor sends when the writer may open the database
GO: Final = b"g"
#: exit status of a writer whose supervisor is gone or sent no go
EXIT_NO_GO: Final = 3
_PR_SET_PDEATHSIG: Final = 1


@dataclass
class WriterProcess:
    """The writer child of a supervising ``bin/ledger``: ``commands`` and ``events`` are
    the ``ipc://`` endpoints in a private ``folder`` that the supervisor binds."""

    proc: subprocess.Popen[bytes]
    folder: str
    commands: str
    events: str

    def go(self) -> None:
        """Let the writer open the database and serve."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(GO)
            self.proc.stdin.close()

    def abort(self) -> None:
        """No go: the writer exits without touching anything; wait for it."""
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.cleanup()

    def cleanup(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_writer(argv: Sequence[str]) -> WriterProcess | None:
    """If ``argv`` (bin/ledger's arguments) asks for a supervised ledger, the default,
    start its writer now, waiting for its go; else None. The writer gets the same
    arguments, then internal endpoints and ``--supervised-by`` (argparse keeps the last
    ``--bind``/``--pub``)."""
    if any(arg.split("=", 1)[0] in NOT_SUPERVISED for arg in argv):
        return None
    folder = tempfile.mkdtemp(prefix="ledger-")
    commands, events = f"ipc://{folder}/commands", f"ipc://{folder}/events"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger.server", *argv, "--bind", commands, "--pub", events,
         "--supervised-by", str(os.getpid())],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return WriterProcess(proc, folder, commands, events)


def die_with_parent(parent: int) -> None:
    """In the writer: be killed (SIGKILL) when the supervisor ``parent`` dies, and exit at
    once if it already has (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere a writer
    outlives a killed supervisor until it next finds its sockets gone)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(EXIT_NO_GO)


def await_go() -> None:
    """In the writer: wait for the supervisor's go; exit quietly without it (the
    supervisor refused to start, or died)."""
    if sys.stdin.buffer.read(1) != GO:
        sys.exit(EXIT_NO_GO)
