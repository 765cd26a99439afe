"""What the long-running processes (ledger, broker, agents, monitor) share:
stop on SIGINT/SIGTERM, one JSON "ready" line on stdout, logs on stderr."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import signal
import sys
import threading
from typing import Any

#: How long a closing socket may still flush queued messages (ms); never forever.
LINGER_MS = 500


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
