"""The monitor's follow logic (agents.tools.monitor.follower.Follower) without sockets.

Each test feeds the state machine decoded messages and a clock it controls, and checks
the actions it answers with: which events it delivers and in what order, which REPLAY or
PING it asks for, which alerts it raises. A small in-memory log answers its requests the
way the broker does.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.tools.monitor.follower import (
    BROKER_RESUMED,
    BROKER_SILENT,
    CHAIN_BROKEN,
    CHECKPOINT_MISMATCH,
    LEDGER_DOWN,
    LEDGER_UP,
    MAX_PENDING,
    RETRY_DELAY,
    Action,
    Alert,
    Deliver,
    Follower,
    Note,
    Send,
)
from ledger.log.checkpoints import make_checkpoint
from schema import wire
from tests.agents.events import chain_rows, tampered_rows

KEY = Ed25519PrivateKey.generate()
TS = "2026-01-01T00:00:00Z"


class Log:
    """The ledger's log as the broker serves it: PING and REPLAY answered from ``rows``."""

    def __init__(self, rows: list[dict[str, Any]], *, ledger_up: bool = True) -> None:
        self.rows = rows
        self.ledger_up = ledger_up

    @property
    def head(self) -> int:
        return self.rows[-1]["seq"] if self.rows else 0

    def answer(self, send: Send) -> wire.Reply:
        msg = send.msg
        if isinstance(msg, wire.Ping):
            return wire.Reply(id=msg.id, ok=True, result={"head_seq": self.head,
                                                          "ledger_up": self.ledger_up})
        rows = [r for r in self.rows if r["seq"] >= msg.from_seq
                and (msg.to_seq is None or r["seq"] <= msg.to_seq)][: msg.limit]
        return wire.Reply(id=msg.id, ok=True, result={"events": rows, "head_seq": self.head})


def follower(**kw: Any) -> Follower:
    return Follower(now=0.0, id_prefix="t", **kw)


def live(f: Follower, row: dict[str, Any], now: float = 0.0) -> list[Action]:
    return f.on_published(wire.TOPIC_EVENT, wire.EventMsg(id=str(row["seq"]), event=row), now)


def beat(f: Follower, head: int, now: float = 0.0, *, ledger_up: bool = True
         ) -> list[Action]:
    return f.on_published(wire.TOPIC_HEARTBEAT, wire.Heartbeat(
        id=str(head), source="broker", head_seq=head, head_hash="0" * 64, ts=TS,
        ledger_up=ledger_up), now)


def checkpoint(f: Follower, seq: int, head_hash: str, *, key: Ed25519PrivateKey = KEY,
               now: float = 0.0) -> list[Action]:
    cp = make_checkpoint(key, seq, head_hash, "1" * 64, TS)
    return f.on_published(wire.TOPIC_CHECKPOINT, wire.CheckpointMsg(
        id=str(seq), **cp.to_dict()), now)


def seqs(actions: list[Action]) -> list[int]:
    return [a.seq for a in actions if isinstance(a, Deliver)]


def alerts(actions: list[Action]) -> list[tuple[str, int | None]]:
    return [(a.alert, a.seq) for a in actions if isinstance(a, Alert)]


def sends(actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def only_send(actions: list[Action]) -> Send:
    requests = sends(actions)
    assert len(requests) == 1, actions
    return requests[0]


def replay_range(send: Send) -> tuple[str, int, int | None, int]:
    msg = send.msg
    assert isinstance(msg, wire.Replay), msg
    return send.kind, msg.from_seq, msg.to_seq, msg.limit


def catch_up(f: Follower, log: Log, now: float = 0.0) -> list[Action]:
    """Tick and answer until the follower asks nothing more; every action seen."""
    seen: list[Action] = []
    for _ in range(100):
        actions = f.tick(now)
        seen += actions
        requests = sends(actions)
        if not requests:
            return seen
        seen += f.on_reply(log.answer(requests[0]), now)
    raise AssertionError(f"the follower kept asking: {seen[-3:]}")


# --- order, gaps, duplicates ------------------------------------------------------------


def test_catches_up_from_the_log_then_delivers_the_live_stream_in_order() -> None:
    rows = chain_rows(6)
    log, f = Log(rows[:3]), follower()
    first = f.tick(0.0)
    assert replay_range(only_send(first)) == ("catchup", 1, None, wire.MAX_REPLAY_BATCH)
    assert f.tick(0.0) == []  # one request at a time
    assert seqs(f.on_reply(log.answer(only_send(first)), 0.0)) == [1, 2, 3]
    assert f.caught_up and f.tick(0.0) == []
    for row in rows[3:]:
        assert seqs(live(f, row)) == [row["seq"]]
    assert f.caught_up and f.chain_ok and not f.alerts
    assert (f.stats.received, f.stats.fetched_events, f.stats.catchup_fetches) == (6, 3, 1)
    assert (f.stats.first_seq, f.stats.last_seq) == (1, 6)


def test_a_gap_is_fetched_with_replay_before_anything_later_is_delivered() -> None:
    rows = chain_rows(10)
    log, f = Log(rows[:3]), follower()
    catch_up(f, log)
    log.rows = rows
    assert seqs(live(f, rows[3])) == [4]
    assert live(f, rows[6]) == []  # 5 and 6 were lost: 7 waits
    assert live(f, rows[7]) == []
    request = only_send(f.tick(0.0))
    assert replay_range(request) == ("gap", 5, 6, 2)  # only what is missing
    assert f.tick(0.0) == []  # nothing more while it is in flight
    assert seqs(f.on_reply(log.answer(request), 0.0)) == [5, 6, 7, 8]
    assert live(f, rows[5]) == []  # the late live copy of 6
    assert seqs(live(f, rows[8]) + live(f, rows[9])) == [9, 10]
    assert f.stats.duplicates_dropped == 1 and f.stats.gaps_fetched == 1
    assert f.stats.fetched_events == 3 + 2 and f.chain_ok and f.caught_up


def test_duplicates_are_dropped_whether_live_or_replayed() -> None:
    rows = chain_rows(5)
    log, f = Log(rows), follower()
    assert live(f, rows[1]) == []  # seq 2 before the catch-up: buffered, it waits for 1
    assert live(f, rows[1]) == []  # the same seq twice while buffered: dropped
    request = only_send(f.tick(0.0))
    assert replay_range(request) == ("catchup", 1, 1, 1)  # not what is already buffered
    assert seqs(f.on_reply(log.answer(request), 0.0)) == [1, 2]
    assert seqs(catch_up(f, log)) == [3, 4, 5]
    assert live(f, rows[2]) == [] and live(f, rows[4]) == []  # already delivered
    assert f.stats.received == 5 and f.stats.duplicates_dropped == 3
    # the live stream fills a gap while its REPLAY is in flight: the reply is a duplicate
    more = chain_rows(2, first=6, prev=rows[-1]["hash"])
    log.rows = rows + more
    assert live(f, more[1]) == []
    request = only_send(f.tick(1.0))
    assert replay_range(request) == ("gap", 6, 6, 1)
    assert seqs(live(f, more[0])) == [6, 7]
    assert seqs(f.on_reply(log.answer(request), 1.0)) == []
    assert f.stats.duplicates_dropped == 4 and f.stats.received == 7 and f.caught_up


def test_a_heartbeat_head_that_no_event_fills_is_fetched() -> None:
    rows = chain_rows(5)
    log, f = Log(rows[:3]), follower()
    catch_up(f, log)
    log.rows = rows  # 4 and 5 published, both lost: only the heartbeat tells
    assert beat(f, 5) == [] and not f.caught_up
    request = only_send(f.tick(0.0))
    assert replay_range(request) == ("gap", 4, None, wire.MAX_REPLAY_BATCH)
    assert seqs(f.on_reply(log.answer(request), 0.0)) == [4, 5]
    assert f.caught_up


def test_a_live_event_far_ahead_is_left_to_replay() -> None:
    f = follower()
    catch_up(f, Log([]))
    far = dict(chain_rows(1)[0], seq=MAX_PENDING + 5)
    assert live(f, far) == []
    assert f.head_hint == MAX_PENDING + 5  # so it is fetched, in order, by REPLAY
    assert f.tick(RETRY_DELAY / 2) == []  # the empty catch-up was fruitless: a pause
    assert replay_range(only_send(f.tick(RETRY_DELAY))) == (
        "gap", 1, None, wire.MAX_REPLAY_BATCH)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_loss_reordering_or_duplication_still_delivers_every_seq_once(
        data: st.DataObject) -> None:
    rows = chain_rows(data.draw(st.integers(1, 40), label="events"))
    log, f = Log([]), follower()
    catch_up(f, log)
    stream = data.draw(st.lists(st.sampled_from(rows), max_size=80), label="live stream")
    delivered: list[int] = []
    now = 0.0
    for row in stream:
        log.rows = rows[: max(log.head, row["seq"])]  # it was committed before published
        delivered += seqs(live(f, row, now))
        if data.draw(st.booleans(), label="tick"):
            now += 1.0
            delivered += seqs(beat(f, log.head, now) + catch_up(f, log, now))
    log.rows = rows
    now += 1.0
    delivered += seqs(beat(f, log.head, now) + catch_up(f, log, now))
    assert delivered == [r["seq"] for r in rows]
    assert f.caught_up and f.chain_ok and not f.alerts


# --- the hash chain ---------------------------------------------------------------------


def test_a_broken_hash_is_flagged_at_the_seq_it_affects_and_delivery_goes_on() -> None:
    f = follower()
    actions = catch_up(f, Log(tampered_rows()[:6]))
    assert seqs(actions) == [1, 2, 3, 4, 5, 6]
    assert alerts(actions) == [(CHAIN_BROKEN, 3), (CHAIN_BROKEN, 6)]
    # the alert comes right before the event it is about
    kinds = [("alert", a.seq) if isinstance(a, Alert) else ("event", a.seq)
             for a in actions if isinstance(a, Alert | Deliver)]
    assert kinds.index(("alert", 3)) + 1 == kinds.index(("event", 3))
    assert "hash does not match" in f.alerts[0].message
    assert "prev_hash" in f.alerts[1].message
    assert not f.chain_ok and f.stats.summary()["chain"] == "BROKEN"
    unlinked = chain_rows(1, first=7, prev="f" * 64)[0]
    assert alerts(live(f, unlinked)) == [(CHAIN_BROKEN, 7)]
    assert f.stats.chain_breaks == 3


def test_a_hole_in_the_ledgers_own_log_is_flagged_once_not_looped_on() -> None:
    rows = chain_rows(8)
    del rows[3:5]  # the ledger "has" no seq 4 and 5
    f = follower()
    actions = catch_up(f, Log(rows))
    assert seqs(actions) == [1, 2, 3, 6, 7, 8]
    assert alerts(actions) == [(CHAIN_BROKEN, 6)]
    assert "no event seq 4..5" in f.alerts[0].message
    assert f.caught_up and f.tick(1.0) == [] and f.in_flight is None


# --- checkpoints ------------------------------------------------------------------------


def test_checkpoints_are_checked_against_the_delivered_events() -> None:
    rows = chain_rows(5)
    f = follower(checkpoint_key=KEY.public_key())
    catch_up(f, Log(rows[:3]))
    assert checkpoint(f, 3, rows[2]["hash"]) == []  # matches what was delivered
    assert checkpoint(f, 5, rows[4]["hash"]) == []  # ahead of us: decided on arrival
    assert f.checkpoints.stats["checked"] == 1
    assert alerts(live(f, rows[3]) + live(f, rows[4])) == []
    assert f.checkpoints.stats == {"checked": 2, "ok": 2, "mismatches": 0, "unchecked": 0}
    assert f.chain_ok


def test_a_checkpoint_that_does_not_match_is_an_alert_at_its_seq() -> None:
    rows = chain_rows(4)
    f = follower(checkpoint_key=KEY.public_key())
    catch_up(f, Log(rows))
    rolled_back = checkpoint(f, 2, rows[1]["hash"].replace(rows[1]["hash"][0], "x", 1))
    assert alerts(rolled_back) == [(CHECKPOINT_MISMATCH, 2)]
    stranger = checkpoint(f, 4, rows[3]["hash"], key=Ed25519PrivateKey.generate())
    assert alerts(stranger) == [(CHECKPOINT_MISMATCH, 4)]
    assert "UNKNOWN_KEY" in str(f.alerts[1].details)
    assert not f.chain_ok and f.stats.checkpoint_mismatches == 2
    assert f.stats.chain_breaks == 0  # the events themselves link


def test_a_malformed_checkpoint_is_counted_not_checked() -> None:
    f = follower()
    catch_up(f, Log(chain_rows(1)))
    msg = wire.CheckpointMsg(id="1", format="OTHER/9", seq=1, head_hash="0" * 64,
                             state_hash="0" * 64, ts=TS, key_id="k", signature="")
    assert f.on_published(wire.TOPIC_CHECKPOINT, msg, 0.0) == []
    assert f.stats.malformed == 1 and f.checkpoints.stats["checked"] == 0


# --- starting points: restart, live -----------------------------------------------------


def test_a_restart_after_seq_n_fetches_n_first_for_the_link() -> None:
    rows = chain_rows(8)
    log, f = Log(rows), follower(from_seq=5)
    first = f.tick(0.0)
    assert replay_range(only_send(first)) == ("catchup", 5, None, wire.MAX_REPLAY_BATCH)
    assert seqs(f.on_reply(log.answer(only_send(first)), 0.0)) == [6, 7, 8]
    assert f.chain_ok and f.stats.first_seq == 6 and f.caught_up


def test_a_restart_after_a_forged_event_is_flagged_at_it() -> None:
    rows = chain_rows(5)
    rows[2] = dict(rows[2], actor="Mallory")  # seq 3 edited, its hash not recomputed
    f = follower(from_seq=3)
    actions = catch_up(f, Log(rows))
    assert seqs(actions) == [4, 5] and alerts(actions) == [(CHAIN_BROKEN, 3)]


def test_a_live_start_asks_the_head_then_follows_from_there() -> None:
    rows = chain_rows(12)
    log, f = Log(rows[:10], ledger_up=False), follower(live=True)
    ping = only_send(f.tick(0.0))
    assert isinstance(ping.msg, wire.Ping) and ping.kind == "ping"
    assert f.on_reply(log.answer(ping), 0.0) == []  # the ledger is down: its head may lag
    assert f.tick(RETRY_DELAY / 2) == []
    log.ledger_up = True
    ping = only_send(f.tick(RETRY_DELAY))
    assert isinstance(ping.msg, wire.Ping)
    f.on_reply(log.answer(ping), RETRY_DELAY)
    assert f.start_seq == 10 and f.last_seq == 10
    anchor = only_send(f.tick(RETRY_DELAY))
    assert replay_range(anchor) == ("catchup", 10, None, wire.MAX_REPLAY_BATCH)
    assert seqs(f.on_reply(log.answer(anchor), RETRY_DELAY)) == []  # only the link
    assert f.caught_up
    log.rows = rows
    assert seqs(live(f, rows[10]) + live(f, rows[11])) == [11, 12]
    assert f.stats.received == 2 and f.chain_ok


def test_a_silent_broker_is_reported_once_and_resumed_with_a_catch_up() -> None:
    rows = chain_rows(8)
    log, f = Log(rows[:4]), follower(dead_after=2.0)
    catch_up(f, log)
    assert beat(f, 4, now=1.0) == []
    assert f.tick(2.9) == []
    silent = f.tick(3.1)
    assert alerts(silent) == [(BROKER_SILENT, 4)] and f.silent
    assert silent[0] == f.alerts[0] and "no heartbeat" in f.alerts[0].message
    assert f.tick(10.0) == []  # once; and no requests to a broker that is not there
    log.rows = rows  # 5..8 were published while nothing was heard
    # back like a restarted broker that does not know the head yet: a heartbeat saying 0
    assert alerts(beat(f, 0, now=11.0)) == [(BROKER_RESUMED, 4)] and not f.silent
    request = only_send(f.tick(11.0))
    assert replay_range(request) == ("catchup", 5, None, wire.MAX_REPLAY_BATCH)
    assert seqs(f.on_reply(log.answer(request), 11.0)) == [5, 6, 7, 8]
    assert f.caught_up and [a.alert for a in f.alerts] == [BROKER_SILENT, BROKER_RESUMED]


def test_no_request_goes_to_a_silent_broker() -> None:
    rows = chain_rows(6)
    log, f = Log(rows), follower(dead_after=2.0, request_timeout=4.0)
    catch_up(f, Log(rows[:4]))
    live(f, rows[5], now=1.0)  # 5 lost
    lost = only_send(f.tick(1.0))  # ... and so is the broker, with this request
    assert alerts(f.tick(3.1)) == [(BROKER_SILENT, 4)]
    gave_up = f.tick(5.0)
    assert [type(a) for a in gave_up] == [Note] and f.in_flight is None
    assert f.tick(30.0) == []  # silent: nobody to ask
    assert alerts(beat(f, 6, now=31.0)) == [(BROKER_RESUMED, 4)]
    again = only_send(f.tick(31.0))
    assert again.msg.id != lost.msg.id and replay_range(again) == ("catchup", 5, 5, 1)
    assert seqs(f.on_reply(log.answer(again), 31.0)) == [5, 6]


def test_ledger_down_and_up_as_the_heartbeats_say() -> None:
    f = follower()
    assert beat(f, 0) == []  # up from the start: nothing to say
    assert alerts(beat(f, 0, ledger_up=False)) == [(LEDGER_DOWN, 0)]
    assert beat(f, 0, ledger_up=False) == []
    assert alerts(beat(f, 0)) == [(LEDGER_UP, 0)]
    g = follower()
    assert alerts(beat(g, 0, ledger_up=False)) == [(LEDGER_DOWN, 0)]  # down at the start


# --- requests: timeouts, refusals, stale replies ----------------------------------------


def test_an_unanswered_request_is_given_up_and_asked_again_with_a_new_id() -> None:
    log, f = Log(chain_rows(3)), follower(request_timeout=1.0)
    first = only_send(f.tick(0.0))
    assert f.tick(0.9) == []
    gave_up = f.tick(1.0)
    assert [a.text for a in gave_up if isinstance(a, Note)] == [
        f"no reply to catchup request {first.msg.id} within 1.0s; will ask again"]
    assert sends(gave_up) == [] and f.in_flight is None
    again = only_send(f.tick(1.0 + RETRY_DELAY))
    assert again.msg.id != first.msg.id and replay_range(again) == replay_range(first)
    assert f.on_reply(log.answer(first), 2.0) == []  # the late answer to the first: stale
    assert f.stats.stale_replies == 1 and f.in_flight == again.msg.id
    assert seqs(f.on_reply(log.answer(again), 2.0)) == [1, 2, 3]


def test_a_refused_request_is_asked_again_later_and_longer_if_not_the_bus_state() -> None:
    f = follower()
    request = only_send(f.tick(0.0))
    busy = wire.Reply(id=request.msg.id, ok=False, error={"code": "LEDGER_UNAVAILABLE",
                                                          "message": "down"})
    assert f.on_reply(busy, 0.0) == []  # the bus's state: no note
    assert f.tick(RETRY_DELAY - 0.01) == []
    request = only_send(f.tick(RETRY_DELAY))
    odd = wire.Reply(id=request.msg.id, ok=False, error={"code": "INVALID_MESSAGE",
                                                         "message": "what?"})
    noted = f.on_reply(odd, 1.0)
    assert [a.text for a in noted if isinstance(a, Note)] == [
        "catchup request refused: INVALID_MESSAGE: what?; will ask again"]
    assert f.tick(1.0 + 4 * RETRY_DELAY - 0.01) == []
    assert sends(f.tick(1.0 + 4 * RETRY_DELAY))


def test_malformed_input_is_counted_and_still_proves_the_broker_is_there() -> None:
    f = follower(dead_after=1.0)
    notes = f.on_undecodable("expected 4 frames on the PUB stream, got 2", 0.5)
    assert [a.text for a in notes if isinstance(a, Note)] == [
        "ignored a malformed message on the PUB stream: expected 4 frames on the PUB "
        "stream, got 2"]
    assert not alerts(f.tick(1.4))  # heard at 0.5
    assert live(f, dict(chain_rows(1)[0], seq="1")) == []  # a seq that is not an int
    assert f.on_published(wire.TOPIC_EVENT, wire.Heartbeat(
        id="0", source="broker", head_seq=0, head_hash="", ts=TS), 1.5) == []  # wrong topic
    assert [type(a) for a in f.on_undecodable_reply("bad msgpack")] == [Note]
    assert f.stats.malformed == 4
