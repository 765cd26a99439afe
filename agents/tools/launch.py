"""Start a ledger and a broker as child processes and wait for their ready handshake.

Used by bin/run_scenario (when no --broker is given), bin/bench and the tests.
Each child prints one JSON line when its sockets are bound; we wait for that line (with
a timeout), never for a fixed time. ``stop()`` sends SIGTERM, then SIGKILL after a grace
period, so nothing outlives its owner.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from schema.errors import CoordinatorError, ErrorCode

LOOPBACK_ANY = "tcp://127.0.0.1:*"


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    ready: dict[str, Any]
    stderr_path: Path | None = None

    @property
    def endpoints(self) -> dict[str, str]:
        return dict(self.ready.get("endpoints", {}))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0, sig: int = signal.SIGTERM) -> int:
        return stop_process(self.proc, grace, sig)

    def kill(self) -> None:
        """SIGKILL: the crash case, no cleanup at all."""
        self.stop(grace=5.0, sig=signal.SIGKILL)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0,
                 sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` (SIGTERM: a clean stop), SIGKILL after ``grace`` seconds; reap it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)
    if proc.stdout:
        proc.stdout.close()
    return int(proc.returncode)


def _read_ready(name: str, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    stream: IO[bytes] = proc.stdout
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            raise CoordinatorError(ErrorCode.TIMEOUT, f"{name} did not become ready in {timeout}s")
        readable, _, _ = select.select([stream], [], [], remaining)
        if not readable:
            continue
        line = stream.readline()
        if not line:
            code = proc.wait(5)
            raise CoordinatorError(ErrorCode.INTERNAL_ERROR,
                                   f"{name} exited with {code} before it was ready")
        ready = json.loads(line)
        if not ready.get("ok"):
            proc.wait(5)
            err = ready.get("error", {})
            raise CoordinatorError(ErrorCode(err.get("code", "INTERNAL_ERROR")),
                                   f"{name}: {err.get('message', 'failed to start')}")
        return dict(ready)


def spawn(name: str, module: str, args: list[str], *, env: dict[str, str] | None = None,
          timeout: float = 30.0, stderr_path: Path | None = None) -> Child:
    """Run ``python -m module args`` and wait for its ready line."""
    err: IO[bytes] | int
    err = open(stderr_path, "ab") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                                stderr=err, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})
    finally:
        if not isinstance(err, int):
            err.close()
    try:
        return Child(name, proc, _read_ready(name, proc, timeout), stderr_path)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


@dataclass
class Bus:
    """A ledger and a broker started together on loopback."""

    db: str
    ledger: Child
    broker: Child
    env: dict[str, str] = field(default_factory=dict)
    ledger_args: list[str] = field(default_factory=list)
    log_dir: Path | None = None
    broker_args: list[str] = field(default_factory=list)

    @property
    def front(self) -> str:
        return self.broker.endpoints["front"]

    @property
    def pub(self) -> str:
        return self.broker.endpoints["pub"]

    def restart_ledger(self) -> Child:
        """Start the ledger again on the same endpoints (after a kill)."""
        eps = self.ledger.endpoints
        self.ledger = spawn("ledger", "ledger.server",
                            ["--db", self.db, "--bind", eps["commands"], "--pub", eps["events"],
                             *self.ledger_args], env=self.env, stderr_path=self._log("ledger"))
        return self.ledger

    def restart_broker(self) -> Child:
        """Start the broker again on the same endpoints (after a kill or a stop; a broker
        still running is stopped first). Agents and monitors reconnect by themselves."""
        if self.broker.alive():
            self.broker.stop()
        front, pub = self.front, self.pub
        eps = self.ledger.endpoints
        self.broker = spawn("broker", "broker.gateway",
                            ["--front", front, "--pub", pub, "--ledger", eps["commands"],
                             "--ledger-pub", eps["events"], *self.broker_args],
                            env=self.env, stderr_path=self._log("broker"))
        return self.broker

    def _log(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir else None

    def stop(self) -> None:
        self.broker.stop()
        self.ledger.stop()

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_bus(db: str, *, env: dict[str, str] | None = None,
              ledger_args: list[str] | None = None, broker_args: list[str] | None = None,
              log_dir: Path | None = None) -> Bus:
    """Start ``ledger --db db`` and a broker wired to it, on free loopback ports.

    ``db`` is relative to the sandbox root (``OS_SANDBOX_ROOT`` in ``env`` or ours).
    """
    env = dict(env or {})
    ledger_args = list(ledger_args or [])
    log = (lambda n: log_dir / f"{n}.log") if log_dir else (lambda n: None)
    ledger = spawn("ledger", "ledger.server",
                   ["--db", db, "--bind", LOOPBACK_ANY, "--pub", LOOPBACK_ANY, *ledger_args],
                   env=env, stderr_path=log("ledger"))
    try:
        eps = ledger.endpoints
        broker = spawn("broker", "broker.gateway",
                       ["--front", LOOPBACK_ANY, "--pub", LOOPBACK_ANY,
                        "--ledger", eps["commands"], "--ledger-pub", eps["events"],
                        *(broker_args or [])], env=env, stderr_path=log("broker"))
    except BaseException:
        ledger.stop()
        raise
    return Bus(db, ledger, broker, env, ledger_args, log_dir, list(broker_args or []))
