"""The board's model (agents.tools.board.model.BoardModel) without sockets or a clock.

Fed the event rows a real Ledger wrote for the spec pack's scenario (and through the
monitor's pure Follower, as the board feeds it), the model must show what the ledger's
tables hold, keep a bounded feed, count rates by the events' time, and say what happened
to the chain and the broker.
"""

from __future__ import annotations

from typing import Any

from agents.tools.board.model import (
    FOLLOWER_FAILED,
    RESUMED_BANNER_FOR,
    BoardModel,
    FollowState,
    epoch,
    feed_match,
)
from agents.tools.monitor.follower import CHAIN_BROKEN, CHECKPOINT_MISMATCH, Deliver, Follower
from ledger.plans.ledger import Ledger
from ledger.storage.memory import MemoryStore
from schema import wire
from tests.board.events import scenario_log
from tests.support.helpers import Cmds

T0 = epoch("2026-01-01T00:00:00.000007Z")
assert T0 is not None
NOW = T0 + 2.0


def fed(rows: list[dict[str, Any]], **kw: Any) -> BoardModel:
    model = BoardModel(**kw)
    for row in rows:
        model.apply_event(row, NOW)
    return model


def test_the_scenario_shows_what_the_ledger_holds() -> None:
    rows, store = scenario_log()
    model = fed(rows)
    snap = model.snapshot(NOW)
    items = {i["item_id"]: i for i in snap["items"]}
    assert (items["I-001"]["state"], items["I-001"]["version"]) == ("DONE", 3)
    assert (items["I-002"]["state"], items["I-002"]["version"]) == ("TODO", 2)
    assert items["I-002"]["assigned_to"] == "Liam"  # the stale change was not applied
    assert (items["I-002"]["conflicts"], items["I-002"]["last_conflict_seq"]) == (1, 7)
    assert items["I-001"]["conflicts"] == 0
    # the same rows as the ledger's own tables (the same rule table built both)
    state = store.load_state()
    for item_id, item in state.items.items():
        assert {k: items[item_id][k] for k in item.to_dict()} == item.to_dict()
    assert [p["plan_id"] for p in snap["plans"]] == list(state.plans)
    assert snap["seq"] == 7
    feed = snap["feed"]
    assert [e["seq"] for e in feed] == [1, 2, 3, 4, 5, 6, 7]
    assert [e["conflict"] for e in feed] == [False] * 6 + [True]
    assert feed[6]["event_type"] == "PLAN_CONFLICT_DETECTED"
    assert feed[6]["actor"] == "Mary" and feed[6]["item_id"] == "I-002"
    assert "CONFLICT" in feed[6]["summary"]


def test_each_change_names_the_rows_it_touched() -> None:
    rows, _ = scenario_log()
    model = BoardModel()
    changes = [model.apply_event(row, NOW) for row in rows]
    assert all(c is not None for c in changes)
    first, moved, conflict = changes[0], changes[4], changes[6]
    assert first is not None and first["plan"]["plan_id"] == "P-L3-DEMO-001"
    assert first["item"] is None
    assert moved is not None and moved["item"]["state"] == "DONE"
    assert moved["item"]["version"] == 3 and moved["entry"]["seq"] == 5
    assert conflict is not None and conflict["item"]["conflicts"] == 1
    assert conflict["item"]["version"] == 2  # a conflict changes no state


def test_a_link_is_reported_with_its_event() -> None:
    model = BoardModel()
    store = MemoryStore()
    ledger = Ledger(store)
    cmds = Cmds()
    for cmd in (cmds.create_plan("P-1"), cmds.add_item("P-1", "I-1"), cmds.add_item("P-1", "I-2"),
                cmds.add_link("L-1", "I-2", "I-1")):
        ledger.apply(cmd)
    rows = [e.to_row() for e in store.iter_events()]
    changes = [model.apply_event(row, NOW) for row in rows]
    link = changes[-1]
    assert link is not None and link["link"] is not None
    assert (link["link"]["from_item_id"], link["link"]["to_item_id"]) == ("I-2", "I-1")
    assert model.snapshot(NOW)["links"] == [link["link"]]


def test_an_event_at_or_below_the_last_seq_is_ignored_and_counted() -> None:
    rows, _ = scenario_log()
    model = fed(rows[:5])
    assert model.apply_event(rows[3], NOW) is None
    assert model.apply_event(rows[4], NOW) is None
    assert (model.seq, model.applied, model.duplicates_ignored) == (5, 5, 2)
    assert [e["seq"] for e in model.feed] == [1, 2, 3, 4, 5]


def test_through_the_follower_every_seq_once_in_order() -> None:
    """Live events out of order and repeated go through the monitor's pure Follower, as
    the board's pump feeds them; the model sees each seq once, in order."""
    rows, _ = scenario_log()
    follower = Follower(now=0.0)
    model = BoardModel()
    for seq in (1, 2, 4, 3, 2, 5, 7, 6, 6, 7):
        msg = wire.EventMsg(id=str(seq), event=rows[seq - 1])
        for action in follower.on_published(wire.TOPIC_EVENT, msg, 0.0):
            if isinstance(action, Deliver):
                assert model.apply_event(action.row, NOW) is not None
    assert [e["seq"] for e in model.feed] == [1, 2, 3, 4, 5, 6, 7]
    assert model.duplicates_ignored == 0


def test_the_feed_is_a_ring_of_the_newest_events() -> None:
    rows, _ = scenario_log()
    model = fed(rows, feed_size=3)
    assert [e["seq"] for e in model.feed] == [5, 6, 7]
    assert model.snapshot(NOW)["status"]["counts"]["feed_size"] == 3
    assert len(model.snapshot(NOW)["items"]) == 2  # the state is not trimmed


def test_feed_filters_by_plan_actor_and_type() -> None:
    rows, _ = scenario_log()
    model = fed(rows)
    assert [e["seq"] for e in model.feed_entries(actor="Codex")] == [4, 5]
    assert [e["seq"] for e in model.feed_entries(event_type="PLAN_ITEM_ADDED")] == [2, 3]
    assert [e["seq"] for e in model.feed_entries(plan_id="P-L3-DEMO-001", actor="Mary")] == [7]
    assert model.feed_entries(plan_id="P-NONE") == []
    assert [e["seq"] for e in model.feed_entries(limit=2)] == [6, 7]
    assert feed_match(model.feed[0], plan_id="", actor=None, event_type="")


def test_rates_count_commands_and_conflicts_by_event_time() -> None:
    rows, _ = scenario_log()
    model = BoardModel()
    old = dict(rows[0], ts="2025-12-31T23:58:00.000000Z")  # two minutes before: not charted
    model.apply_event(old, NOW)
    for row in rows[1:]:
        model.apply_event(row, NOW)
    rates = model.rates(NOW)
    assert len(rates["commands"]) == len(rates["conflicts"]) == 60
    assert rates["commands_last_window"] == 6 and rates["conflicts_last_window"] == 1
    # every scenario event is in the second T0 falls in, two seconds before NOW
    assert rates["commands"][-3] == 6 and rates["conflicts"][-3] == 1
    assert rates["totals"] == {"commands": 7, "conflicts": 1}
    later = model.rates(NOW + 61)
    assert later["commands_last_window"] == 0 and later["totals"]["commands"] == 7


def test_the_chain_status_is_what_the_follower_found() -> None:
    rows, _ = scenario_log()
    model = fed(rows)
    model.set_follow(FollowState(last_seq=7, head_hint=7, caught_up=True,
                                 stats={"first_seq": 1}))
    status = model.status(NOW)
    assert status["chain"] == {"status": "OK", "broken_at": None, "breaks": 0,
                               "checked_from": 1, "checked_to": 7}
    assert status["caught_up"] and status["head_seq"] == 7
    assert status["banner"] is None
    model.apply_alert({"alert": CHAIN_BROKEN, "message": "hash chain broken at seq 5: x",
                       "seq": 5}, NOW)
    model.apply_alert({"alert": CHAIN_BROKEN, "message": "hash chain broken at seq 6: y",
                       "seq": 6}, NOW)
    status = model.status(NOW)
    assert status["chain"]["status"] == "BROKEN"
    assert (status["chain"]["broken_at"], status["chain"]["breaks"]) == (5, 2)
    assert status["banner"]["level"] == "error"
    assert "BROKEN at seq 5" in status["banner"]["text"]
    assert status["notices"][-1]["kind"] == CHAIN_BROKEN


def test_a_checkpoint_is_shown_with_its_verdict() -> None:
    model = BoardModel(signature_checked=True)
    assert model.status(NOW)["checkpoint"]["last"] is None
    model.set_follow(FollowState(checkpoint={"verdict": "OK", "seq": 7, "reason": "matches"},
                                 checkpoint_stats={"checked": 1, "ok": 1}))
    cp = model.status(NOW)["checkpoint"]
    assert cp["last"]["verdict"] == "OK" and cp["signature_checked"]
    model.apply_alert({"alert": CHECKPOINT_MISMATCH, "seq": 9,
                       "message": "signed checkpoint at seq 9 does not match"}, NOW)
    banner = model.status(NOW)["banner"]
    assert banner["kind"] == CHECKPOINT_MISMATCH and banner["level"] == "error"


def test_a_broker_restart_is_announced_then_fades() -> None:
    rows, _ = scenario_log()
    model = fed(rows[:4])
    model.set_connection(True, NOW)
    assert model.status(NOW)["broker"]["state"] == "up"
    assert model.status(NOW)["notices"] == []  # the first connection is no news
    model.set_connection(False, NOW + 1)
    status = model.status(NOW + 1)
    assert status["broker"]["state"] == "disconnected"
    assert status["banner"]["kind"] == "BROKER_DOWN" and "seq 4" in status["banner"]["text"]
    model.set_follow(FollowState(silent=True))
    for row in rows[4:]:
        model.apply_event(row, NOW + 2)  # fetched after the restart
    model.set_follow(FollowState())
    model.set_connection(True, NOW + 3)
    status = model.status(NOW + 3)
    assert status["broker"]["state"] == "up" and status["broker"]["restarts_seen"] == 1
    assert status["banner"]["kind"] == "BROKER_RESTARTED"
    assert "resumed after seq 4" in status["banner"]["text"]
    assert [n["kind"] for n in status["notices"]] == ["BROKER_CONNECTION_LOST",
                                                      "BROKER_RECONNECTED"]
    assert model.status(NOW + 3 + RESUMED_BANNER_FOR)["banner"] is None


def test_a_dead_follower_is_the_first_thing_said() -> None:
    model = BoardModel()
    model.apply_alert({"alert": CHAIN_BROKEN, "message": "broken", "seq": 3}, NOW)
    model.apply_alert({"alert": FOLLOWER_FAILED, "message": "KeyError('x')"}, NOW)
    status = model.status(NOW)
    assert status["banner"]["kind"] == FOLLOWER_FAILED and "KeyError" in status["banner"]["text"]
    assert status["notices"][-1]["level"] == "error"


def test_a_silent_broker_and_a_ledger_down_show() -> None:
    model = BoardModel()
    model.set_connection(True, NOW)
    model.set_follow(FollowState(silent=True))
    assert model.status(NOW)["broker"]["state"] == "silent"
    assert model.status(NOW)["banner"]["kind"] == "BROKER_DOWN"
    model.set_follow(FollowState(ledger_up=False))
    status = model.status(NOW)
    assert status["ledger"]["up"] is False and status["banner"]["kind"] == "LEDGER_DOWN"


def test_the_ledgers_own_verification_and_ping() -> None:
    model = BoardModel()
    model.set_ping({"head_seq": 9, "ledger_up": True,
                    "ledger_startup_check": {"mode": "background", "tail": "ok"}}, None, NOW)
    model.set_verify({"chain_status": "OK", "events": 9, "head_seq": 9, "mismatch_count": 0,
                      "mismatches": [], "head_hash": "x"}, None, NOW)
    status = model.status(NOW)
    assert status["head_seq"] == 9 and status["ledger"]["up"] is True
    verify = status["ledger_verify"]
    assert verify["result"]["chain_status"] == "OK" and verify["result"]["head_seq"] == 9
    assert verify["startup_check"]["tail"] == "ok" and verify["at"] is not None
    model.set_verify(None, {"code": "TIMEOUT", "message": "no reply"}, NOW + 5)
    verify = model.status(NOW + 5)["ledger_verify"]
    assert verify["error"]["code"] == "TIMEOUT"
    assert verify["result"]["chain_status"] == "OK"  # the last answer is still shown


def test_an_event_the_state_cannot_follow_is_still_in_the_feed() -> None:
    rows, _ = scenario_log()
    model = BoardModel()
    model.apply_event(rows[0], NOW)
    model.apply_event(dict(rows[4], seq=2), NOW)  # a state change of an item never added
    assert [e["seq"] for e in model.feed] == [1, 2]
    assert model.status(NOW)["counts"]["state_errors"] == 1
    assert model.snapshot(NOW)["items"] == []


def test_hostile_text_is_data_not_markup() -> None:
    """The model passes text through untouched (the page escapes it): a title with HTML
    comes out exactly as it went in."""
    rows, _ = scenario_log()
    title = '<img src=x onerror="window.__pwned=1">'
    hostile = dict(rows[1], payload=rows[1]["payload"].replace(
        "Create schema + CLI skeleton", title.replace('"', '\\"')))
    model = BoardModel()
    model.apply_event(rows[0], NOW)
    change = model.apply_event(hostile, NOW)
    assert change is not None and change["item"]["title"] == title
