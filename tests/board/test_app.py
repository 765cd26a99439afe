"""The board's service and web app without a bus: batches of the follower's output are
handed to :meth:`Board.ingest` directly (no sockets, no thread), and the JSON endpoints,
the token rule and the security headers are checked with Starlette's TestClient. The
app's lifespan (which would start the follower) is not run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.testclient import TestClient

from agents.tools.board.app import CSP, create_app
from agents.tools.board.model import BoardModel, FollowState
from agents.tools.board.pump import Batch
from agents.tools.board.service import Board
from tests.board.events import scenario_log

NOW = 1_767_225_602.0  # 2026-01-01T00:00:02Z
TOKEN = "s3cret-token"


def make_board(queue_size: int = 100) -> Board:
    # nothing listens there; the follower is never started in these tests
    return Board(BoardModel(), front="tcp://127.0.0.1:9", pub="tcp://127.0.0.1:9",
                 queue_size=queue_size, clock=lambda: NOW)


def fed_board() -> Board:
    board = make_board()
    rows, _ = scenario_log()
    board.ingest(Batch(list(rows), [True], FollowState(last_seq=7, head_hint=7,
                                                       caught_up=True), NOW))
    return board


# --- the service: subscribers ---------------------------------------------------------


def drain(queue: asyncio.Queue[Any]) -> list[Any]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_a_subscriber_gets_every_event_after_its_snapshot_once_in_order() -> None:
    async def run() -> None:
        board = make_board()
        rows, _ = scenario_log()
        board.ingest(Batch(rows[:3], [], FollowState(), NOW))
        snapshot, sub = board.subscribe()
        assert snapshot["seq"] == 3
        board.ingest(Batch([rows[2], *rows[3:5]], [], FollowState(), NOW))  # 3 again
        board.ingest(Batch([{"alert": "LEDGER_DOWN", "message": "down", "seq": 5}, *rows[5:]],
                           [], FollowState(), NOW))
        messages = drain(sub.queue)
        events = [m[1]["seq"] for m in messages if m[0] == "event"]
        assert events == [4, 5, 6, 7]
        # a status after each batch that changed something (events or an alert)
        assert [m[0] for m in messages].count("status") == 2
        board.unsubscribe(sub)
        board.ingest(Batch([dict(rows[6], seq=8)], [], FollowState(), NOW))
        assert sub.queue.empty()

    asyncio.run(run())


def test_a_subscriber_that_stops_reading_is_dropped_not_waited_for() -> None:
    async def run() -> None:
        board = make_board(queue_size=3)
        rows, _ = scenario_log()
        _, slow = board.subscribe()
        board.ingest(Batch(rows, [], FollowState(), NOW))  # 7 events, room for 3
        assert slow.dropped and slow not in board.subscribers
        assert drain(slow.queue) == [None]  # its stream ends; the page reconnects
        snapshot, fresh = board.subscribe()
        assert snapshot["seq"] == 7 and not fresh.dropped

    asyncio.run(run())


# --- the app ------------------------------------------------------------------------


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(fed_board()))


def test_the_page_and_its_files_with_a_strict_csp(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/board.js"' in page.text
    assert "<script>" not in page.text and " on" not in page.text.replace(" one", "")
    assert page.headers["content-security-policy"] == CSP
    assert "default-src 'self'" in CSP and "script-src 'self'" in CSP
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    js = client.get("/static/board.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in js.text.replace("never innerHTML", "")
    assert "http://" not in js.text.replace("http://www.w3.org/2000/svg", "")
    assert client.get("/static/board.css").status_code == 200
    missing = client.get("/static/other.js")
    assert missing.status_code == 404 and missing.json()["ok"] is False


def test_state_and_status(client: TestClient) -> None:
    state = client.get("/api/state").json()
    items = {i["item_id"]: i for i in state["items"]}
    assert (items["I-001"]["state"], items["I-001"]["version"]) == ("DONE", 3)
    assert (items["I-002"]["state"], items["I-002"]["version"]) == ("TODO", 2)
    assert [e["seq"] for e in state["feed"]] == list(range(1, 8))
    assert state["columns"] == ["TODO", "IN_PROGRESS", "BLOCKED", "DONE"]
    status = client.get("/api/status").json()
    assert status["seq"] == 7 and status["chain"]["status"] == "OK"
    assert status["broker"]["state"] == "up"


def test_feed_filters(client: TestClient) -> None:
    def seqs(query: str) -> list[int]:
        answer = client.get("/api/feed" + query)
        assert answer.status_code == 200, answer.text
        return [e["seq"] for e in answer.json()["events"]]

    assert seqs("") == list(range(1, 8))
    assert seqs("?actor=Codex") == [4, 5]
    assert seqs("?event_type=PLAN_CONFLICT_DETECTED") == [7]
    assert seqs("?plan_id=P-L3-DEMO-001&actor=Liam") == [1, 2, 3, 6]
    assert seqs("?limit=2") == [6, 7]
    bad = client.get("/api/feed?limit=zero")
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "limit"


def test_one_plan(client: TestClient) -> None:
    plan = client.get("/api/plans/P-L3-DEMO-001").json()
    assert plan["plan"]["title"] == "L3 Plan P0 demo"
    assert sorted(i["item_id"] for i in plan["items"]) == ["I-001", "I-002"]
    missing = client.get("/api/plans/P-NOPE")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "UNKNOWN_PLAN"


def test_a_bad_item_id_is_refused_before_asking_the_bus(client: TestClient) -> None:
    answer = client.get("/api/items/bad%20id/timeline")
    assert answer.status_code == 400 and answer.json()["error"]["field"] == "item_id"


def test_read_only_nothing_but_get(client: TestClient) -> None:
    for path in ("/", "/api/state", "/api/feed", "/api/stream", "/api/items/I-001/timeline"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert client.request(method, path).status_code == 405, (method, path)


def test_with_a_token_every_request_needs_it() -> None:
    client = TestClient(create_app(fed_board(), token=TOKEN))
    for path in ("/", "/static/board.js", "/api/state", "/api/stream"):
        refused = client.get(path)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "UNAUTHORIZED"
        assert refused.headers["content-security-policy"] == CSP
    assert client.get("/api/state?token=wrong").status_code == 401
    assert client.get("/api/state", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/state", headers={"Authorization": f"Bearer {TOKEN}"}
                      ).status_code == 200
    page = client.get(f"/?token={TOKEN}")  # what the ready line's URL does
    assert page.status_code == 200
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("board_token=") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    # the page's own requests carry the cookie (TestClient keeps it, as a browser does)
    assert client.get("/static/board.js").status_code == 200
    assert client.get("/api/state").json()["seq"] == 7


def test_without_a_token_none_is_needed(client: TestClient) -> None:
    answer = client.get("/api/state")
    assert answer.status_code == 200 and "set-cookie" not in answer.headers
