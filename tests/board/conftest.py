"""Fixtures of the board's tests: a board process on a free port, an event-stream reader,
and a headless chromium driven by selenium.

The browser tests need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run``
installs them). Where they are missing the ``browser`` fixture does not pass quietly:
under CI (``CI`` set) the test fails, since CI must run it; on a developer's machine it
is skipped with a reason that starts with "not run:", which tests/conftest.py repeats in
a loud section at the end of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx2
import pytest

from agents.tools.launch import Bus, Child
from tests.support.buses import BusFactory

CHROMIUM: Final = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER: Final = shutil.which("chromedriver")
NOT_RUN: Final = ("not run: no chromium/chromedriver on this machine "
                  "(apt-get install chromium chromium-driver; .ci/run does it)")
#: the flags of a quiet headless chromium: without the background-networking ones it
#: keeps trying to reach the (closed) network
CHROMIUM_ARGS: Final = ("--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                        "--window-size=1500,1000")
#: Seconds any single wait on the stream, the page or the bus may take.
WAIT: Final = 15.0


def start_board(factory: BusFactory, bus: Bus | None, *args: str,
                front: str = "tcp://127.0.0.1:9", pub: str = "tcp://127.0.0.1:9") -> Child:
    """``python -m agents.tools.board`` on a free port, following ``bus`` (or nothing);
    started once its ready line is out, stopped by the factory at teardown."""
    if bus is not None:
        front, pub = bus.front, bus.pub
    return factory.spawn("board", "agents.tools.board",
                         ["--broker", front, "--pub", pub, "--port", "0", *args])


class Stream:
    """Reads the board's server-sent events: ``next()`` gives ``(kind, data)``; every
    read has a timeout."""

    def __init__(self, url: str) -> None:
        self._client = httpx2.Client(timeout=httpx2.Timeout(WAIT))
        self._cm = self._client.stream("GET", url + "api/stream")
        self.response = self._cm.__enter__()
        assert self.response.status_code == 200
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self._lines = self.response.iter_lines()

    def next(self) -> tuple[str, dict[str, Any]]:
        kind, data = "", ""
        for line in self._lines:
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and kind:
                return kind, json.loads(data)
        raise AssertionError("the event stream ended")

    def until_seq(self, seq: int, timeout: float = WAIT) -> list[dict[str, Any]]:
        """The ``event`` messages up to and including ``seq``, in the order received."""
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not events or events[-1]["seq"] < seq:
            assert time.monotonic() < deadline, f"seq {seq} not reached: {events[-1:]}"
            kind, data = self.next()
            if kind == "event":
                events.append(data)
        return events

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self._client.close()


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A headless chromium (selenium WebDriver), quit after the test."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        if os.environ.get("CI"):
            pytest.fail(f"{NOT_RUN}; CI must run the browser tests")
        pytest.skip(NOT_RUN)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager must never download
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER,
                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
