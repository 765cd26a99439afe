"""Ledger and broker processes for the multi-process tests, always stopped at teardown.

A :class:`BusFactory` owns one sandbox root (``OS_SANDBOX_ROOT`` of every process it
starts) and remembers every process it started: ledger + broker pairs (:meth:`start`, a
:class:`~agents.tools.launch.Bus`) and single processes (:meth:`spawn`, :meth:`ledger`,
:meth:`broker`). :meth:`close` stops them all, also those a test killed, stopped with
SIGSTOP or restarted, so a failing test never leaves a process behind. The fixtures
``bus_factory``, ``bus`` and ``module_bus_factory`` in ``tests/conftest.py`` hand them out.

Every wait is a handshake: a child counts as started once it printed its ready line
(``agents.tools.launch.spawn``); :meth:`wait_ready` pings the broker until it reports
the ledger up.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from agents.client import AgentClient
from agents.tools.launch import LOOPBACK_ANY, Bus, Child, spawn, start_bus

#: The database a bus uses when the test does not name one (relative to the root).
DEFAULT_DB: Final = "data/bus.db"
#: How long :meth:`BusFactory.wait_ready` waits for the ledger to be reported up.
READY_TIMEOUT: Final = 10.0


class BusFactory:
    """Starts ledgers and brokers under ``root`` and stops every one of them at the end.

    ``env`` is added to every child's environment (``OS_SANDBOX_ROOT`` is ``root``);
    each child's stderr goes to ``<root>/<name>.log``.
    """

    def __init__(self, root: Path, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.env: dict[str, str] = {"OS_SANDBOX_ROOT": str(root), **(env or {})}
        self.buses: list[Bus] = []
        self.children: list[Child] = []

    # --- starting ---------------------------------------------------------------------

    def start(self, db: str = DEFAULT_DB, *, ledger_args: Sequence[str] = (),
              broker_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
              ready: bool = False, ready_timeout: float = READY_TIMEOUT) -> Bus:
        """A ledger on ``db`` (relative to the sandbox root) and a broker wired to it, on
        free loopback ports. ``ready``: also wait until the broker reports the ledger up
        (:meth:`wait_ready`). ``env`` overrides the factory's for this bus only (e.g.
        another ``OS_SANDBOX_ROOT``). Raises what ``start_bus`` raises (CoordinatorError
        TIMEOUT, or the child's own error code) when a process does not start."""
        bus = start_bus(db, env={**self.env, **(env or {})}, ledger_args=list(ledger_args),
                        broker_args=list(broker_args), log_dir=self.root)
        self.buses.append(bus)
        if ready:
            self.wait_ready(bus, ready_timeout)
        return bus

    @staticmethod
    def wait_ready(bus: Bus, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """PING the broker until it reports the ledger up; its last PING result. Raises
        CoordinatorError (LEDGER_UNAVAILABLE) after ``timeout`` seconds."""
        with AgentClient(bus.front, "probe", timeout=2) as probe:
            return probe.wait_ready(timeout=timeout)

    def spawn(self, name: str, module: str, args: Sequence[str], *,
              env: Mapping[str, str] | None = None, timeout: float = 30.0) -> Child:
        """``python -m module args``, started once it printed its ready line, tracked."""
        child = spawn(name, module, list(args), env={**self.env, **(env or {})},
                      timeout=timeout, stderr_path=self.root / f"{name}.log")
        self.children.append(child)
        return child

    def ledger(self, db: str, *args: str, bind: str = LOOPBACK_ANY,
               pub: str = LOOPBACK_ANY) -> Child:
        """A lone ledger process on ``db`` (its endpoints: ``child.endpoints``)."""
        return self.spawn("ledger", "ledger.server",
                          ["--db", db, "--bind", bind, "--pub", pub, *args])

    def broker(self, ledger: str, ledger_pub: str, *args: str, front: str = LOOPBACK_ANY,
               pub: str = LOOPBACK_ANY) -> Child:
        """A lone broker process whose backend is ``ledger`` / ``ledger_pub``."""
        return self.spawn("broker", "broker.gateway",
                          ["--front", front, "--pub", pub, "--ledger", ledger,
                           "--ledger-pub", ledger_pub, *args])

    # --- stopping ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process started here, newest first: SIGCONT (in case a test left
        it SIGSTOPped), SIGTERM, SIGKILL after the grace period. Processes already gone
        are only reaped. Every process is tried; the first error is raised at the end."""
        children = [c for bus in reversed(self.buses) for c in (bus.broker, bus.ledger)]
        children += reversed(self.children)
        error: BaseException | None = None
        for child in children:
            try:
                if child.alive():
                    child.proc.send_signal(signal.SIGCONT)
                child.stop()
            except Exception as exc:  # keep stopping the others
                error = error or exc
        self.buses.clear()
        self.children.clear()
        if error is not None:
            raise error
