"""What the long-running processes (ledger, broker, agents, monitor) share:
stop on SIGINT/SIGTERM, one JSON "ready" line on stdout, logs on stderr; and what every
command shares: ``--version``."""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, Final

#: How long a closing socket may still flush queued messages (ms); never forever.
LINGER_MS = 500
#: The distribution the console scripts come from (pyproject.toml, [project] name).
DISTRIBUTION: Final = "l3-coordinator"


def package_version() -> str:
    """The installed version of :data:`DISTRIBUTION` (its metadata), ``"unknown"`` when
    the code runs without being installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: one JSON object ``{"name": PROG, "version": V}`` on stdout, exit 0
    (argparse's own version action prints plain text; our commands print JSON)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        sys.stdout.write(json.dumps({"name": parser.prog, "version": package_version()})
                         + "\n")
        sys.stdout.flush()
        parser.exit()


def add_version_arg(parser: argparse.ArgumentParser) -> None:
    """Give a command ``--version`` (every bin/ command and os-* script has it)."""
    parser.add_argument("--version", action=_VersionAction,
                        help='print {"name": ..., "version": ...} as JSON and exit')


def install_stop_signals() -> threading.Event:
    """A flag set by SIGINT or SIGTERM; loops poll with a timeout and check it."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def announce(obj: dict[str, Any]) -> None:
    """The one JSON object a process prints on stdout, once it is ready."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def setup_logging(name: str, verbose: bool = False) -> logging.Logger:
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO,
                        format=f"%(asctime)s {name} %(levelname)s %(message)s")
    return logging.getLogger(name)


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0 (anything else is a clear usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (seconds, intervals)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def settle_heap() -> None:
    """Call once start-up is done: move everything allocated so far out of the cyclic
    garbage collector's view (gc.freeze), so its full collections stop rescanning the
    imported modules and tables on the request path."""
    gc.collect()
    gc.freeze()
