"""The board in a real browser (headless chromium, driven by selenium) against a live bus.

Every wait is on the page's DOM (WebDriverWait), never a sleep. Measured, not asserted:
the time from a command's commit reply to its card moving on the page (printed; run
with ``-s`` to see it). Screenshots go to the test's temporary directory (printed too).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import httpx2
import zmq
from selenium.webdriver.support.ui import WebDriverWait

from agents.client import AgentClient
from agents.tools.launch import Bus
from agents.tools.run_scenario import play
from schema import wire
from schema.scenario import load_scenario
from tests.board.conftest import WAIT, start_board
from tests.support.buses import BusFactory
from tests.support.helpers import SCENARIO_DIR
from tests.support.sockets import SocketFactory

FLOW = SCENARIO_DIR / "L3_PLAN_FLOW_001.json"
PLAN = "P-L3-DEMO-001"
#: titles that would run code if the page ever parsed data as HTML: an event handler
#: (runs when inserted as HTML) and a script element (does not run, but must not exist)
IMG_TITLE: Final = '<img src=x onerror="window.__pwned=1;document.title=\'pwned\'">'
SCRIPT_TITLE: Final = "<script>window.__pwned=2</script>"
PLAN_TITLE: Final = '<b onmouseover="window.__pwned=3">bold plan</b>'

CARD_JS: Final = """
const card = [...document.querySelectorAll('.card')].find(c => c.dataset.itemId === arguments[0]);
if (!card) return null;
return {state: card.closest('.column').dataset.state, version: card.dataset.version,
        title: card.querySelector('.title').textContent, text: card.innerText};
"""
FEED_JS: Final = """
return [...document.querySelectorAll('#feed-list .feed-row')].map(r => ({
    seq: Number(r.dataset.seq), conflict: r.classList.contains('conflict'), text: r.innerText}));
"""
BANNER_JS: Final = """
const b = document.getElementById('banner');
return b.hidden ? null : {kind: b.dataset.kind, text: b.textContent};
"""


def wait(driver: Any, check: Any, what: str, timeout: float = WAIT) -> Any:
    """Poll the page every 20 ms until ``check(driver)`` is truthy; its value."""
    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(check, message=what)


def card(driver: Any, item_id: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = driver.execute_script(CARD_JS, item_id)
    return found


def card_in(driver: Any, item_id: str, state: str, version: int) -> Any:
    def check(d: Any) -> Any:
        c = card(d, item_id)
        return c if c and c["state"] == state and c["version"] == str(version) else None
    return wait(driver, check, f"{item_id} in {state} v{version}")


def feed(driver: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = driver.execute_script(FEED_JS)
    return rows


def feed_reaches(driver: Any, seq: int) -> list[dict[str, Any]]:
    return wait(driver, lambda d: (rows := feed(d)) and max(r["seq"] for r in rows) >= seq
                and rows, f"the feed to reach seq {seq}")


def banner(driver: Any, kind: str) -> dict[str, Any]:
    return wait(driver, lambda d: (b := d.execute_script(BANNER_JS)) and b["kind"] == kind
                and b, f"the {kind} banner")


def test_the_board_in_a_browser(browser: Any, bus_factory: BusFactory, bus: Bus,
                                tmp_path: Path) -> None:
    board = start_board(bus_factory, bus, "--verify-every", "1")
    browser.get(board.ready["url"])
    wait(browser, lambda d: d.execute_script("return window.__board.stats.snapshots") == 1,
         "the first snapshot")
    assert "No plans yet" in browser.find_element("id", "no-plans").text

    # the spec pack's scenario, played through the bus
    play(load_scenario(FLOW), bus.front)
    card_in(browser, "I-001", "DONE", 3)
    card_in(browser, "I-002", "TODO", 2)
    rows = feed_reaches(browser, 7)
    assert sorted(r["seq"] for r in rows) == [1, 2, 3, 4, 5, 6, 7]
    conflict = [r for r in rows if r["conflict"]]
    assert [r["seq"] for r in conflict] == [7]
    assert "PLAN_CONFLICT_DETECTED" in conflict[0]["text"] and "Mary" in conflict[0]["text"]
    assert "conflict" in card(browser, "I-002")["text"]  # type: ignore[index]
    header = browser.find_element("id", "header").text
    assert "OK" in header

    # hostile titles: shown as text, never run, never parsed into elements
    with AgentClient(bus.front, "Liam", session_id="S-HOSTILE") as liam:
        assert liam.add_item(PLAN, "I-IMG", IMG_TITLE, assigned_to="Mary").ok
        assert liam.add_item(PLAN, "I-SCRIPT", SCRIPT_TITLE).ok
        assert liam.create_plan("P-HOSTILE", PLAN_TITLE).ok
        assert liam.add_item("P-HOSTILE", "I-H1", SCRIPT_TITLE + IMG_TITLE).ok
    assert card_in(browser, "I-IMG", "TODO", 1)["title"] == IMG_TITLE
    assert card_in(browser, "I-SCRIPT", "TODO", 1)["title"] == SCRIPT_TITLE
    assert card_in(browser, "I-H1", "TODO", 1)["title"] == SCRIPT_TITLE + IMG_TITLE
    feed_reaches(browser, 11)
    page_text = browser.find_element("tag name", "body").text
    assert IMG_TITLE in page_text and SCRIPT_TITLE in page_text and PLAN_TITLE in page_text
    injected = browser.execute_script(
        "return document.querySelectorAll('#boards img, #boards script, #boards b, "
        "#feed img, #feed script, #feed b').length")
    assert injected == 0
    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    assert browser.title == "L3 board"

    # a state change through the bus moves the card, without a reload
    with AgentClient(bus.front, "Codex", session_id="S-MOVE") as codex:
        reply = codex.change_state("I-002", 2, "IN_PROGRESS")
        replied = time.time()
    assert reply.ok and reply.new_version == 3
    card_in(browser, "I-002", "IN_PROGRESS", 3)
    seen = time.time()
    moved_ms = browser.execute_script("return window.__board.stats.moves['I-002']")
    print(f"\ncommit reply -> card moved: {moved_ms - replied * 1000:.1f} ms by the page's "
          f"clock; {(seen - replied) * 1000:.1f} ms until WebDriver saw it (20 ms polls)")
    assert browser.execute_script("return window.__board.stats.snapshots") == 1  # no reload

    # the item timeline (L2) opens on click
    browser.execute_script(
        "[...document.querySelectorAll('.card')].find(c => c.dataset.itemId === 'I-002')"
        ".click()")
    items = wait(browser, lambda d: (li := d.find_elements("css selector", "#timeline-list li"))
                 and len(li) == 4 and li, "the timeline of I-002")
    assert [int(li.get_attribute("data-seq")) for li in items] == [3, 6, 7, 12]
    assert "conflict" in (items[2].get_attribute("class") or "")
    assert "Timeline of I-002" in browser.find_element("id", "timeline").text

    # the ledger's own verification and the page's chain status
    wait(browser, lambda d: "to seq 12" in d.find_element("id", "h-verify").text,
         "the ledger's verification of seq 12")
    assert "OK" in browser.find_element("id", "h-chain").text
    shot = tmp_path / "board.png"
    assert browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


def test_the_board_through_a_broker_restart(browser: Any, bus_factory: BusFactory,
                                            zmq_socket: SocketFactory, tmp_path: Path) -> None:
    bus = bus_factory.start(ledger_args=["--heartbeat", "0.2"],
                            broker_args=["--liveness", "1.0", "--heartbeat", "0.2"],
                            ready=True)
    board = start_board(bus_factory, bus, "--dead-after", "1", "--verify-every", "0")
    browser.get(board.ready["url"])
    play(load_scenario(FLOW), bus.front)
    feed_reaches(browser, 7)

    bus.broker.kill()
    banner(browser, "BROKER_DOWN")
    with httpx2.Client(base_url=board.ready["url"], timeout=WAIT) as http:
        deadline = time.monotonic() + WAIT
        while not http.get("/api/status").json()["broker"]["silent"]:
            assert time.monotonic() < deadline, "the follower never found the broker silent"
            browser.find_element("id", "banner")  # a round trip to the page, not a sleep
    # while the broker is away the ledger still commits (a command sent to it directly):
    # nobody publishes these; the board must fetch them when the broker is back
    direct = zmq_socket(zmq.DEALER)
    direct.connect(bus.ledger.endpoints["commands"])
    for n, command in enumerate(({"action": "STATE_CHANGE", "item_id": "I-002",
                                  "expected_version": 2, "change": {"state": "IN_PROGRESS"}},
                                 {"action": "UPDATE_ITEM", "item_id": "I-002",
                                  "expected_version": 3, "change": {"priority": 5}})):
        msg = wire.CommandMsg(id=f"direct-{n}", actor="Codex", session_id="S-DIRECT",
                              command=command)
        direct.send_multipart([b"envelope", *wire.encode(msg)])  # as the broker frames it
        assert direct.poll(WAIT * 1000), "no reply from the ledger"
        reply = wire.decode(direct.recv_multipart()[1:], wire.MAX_REPLY_BYTES)
        assert reply.ok, reply
    bus.restart_broker()
    BusFactory.wait_ready(bus)
    banner(browser, "BROKER_RESTARTED")
    with AgentClient(bus.front, "Codex", session_id="S-AFTER") as codex:
        assert codex.change_state("I-002", 4, "DONE").ok
    card_in(browser, "I-002", "DONE", 5)
    rows = feed_reaches(browser, 10)
    seqs = [r["seq"] for r in rows]
    assert sorted(seqs) == list(range(1, 11)), seqs  # every seq, each exactly once
    assert browser.execute_script("return window.__board.stats.duplicates") == 0
    assert browser.execute_script("return window.__board.stats.snapshots") == 1
    text = browser.find_element("id", "banner").text
    assert "restarted" in text and "resumed after seq 7" in text
    shot = tmp_path / "board-after-restart.png"
    assert browser.save_screenshot(str(shot))
    print(f"\nscreenshot: {shot}")
