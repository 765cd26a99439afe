"""The L1 hash chain: pure functions (ledger.chain) and tamper detection (ledger.verify).

Tampering is done with plain SQL, no ledger code, the way an attacker with write access
to the database would: on SQLite with the append-only triggers dropped, on PostgreSQL
with them (and the foreign keys) switched off for the session
(tests/support/chain_dbs.py). Every tamper test runs on both backends.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.tools.pgcluster import PgUrl
from ledger.log.chain import (
    GENESIS_HASH,
    HASHED_COLUMNS,
    MAX_LISTED_MISMATCHES,
    canonical_json,
    event_hash,
    preimage,
    verify_events,
)
from ledger.plans.ledger import Ledger
from ledger.storage.rows import Event
from schema.vocabulary import EVENT_COLUMNS
from tests.support.chain_dbs import ChainDb, PgDb, Raw, SqliteDb, verify
from tests.support.helpers import (
    EVENT_COLUMNS_IN_TABLE,
    SMALL_LOG_EVENTS,
    apply_all,
    build_db,
    copy_db,
    event_rows,
    make_chain,
    make_event,
    small_log,
)
from tests.support.pg import PgServer
from tests.support.pgstore import open_pg_store

N = SMALL_LOG_EVENTS


def documented_preimage(row: dict[str, Any]) -> bytes:
    body = {k: v for k, v in row.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


# --- pure functions -------------------------------------------------------------------


def test_genesis_and_hashed_columns() -> None:
    assert GENESIS_HASH == "0" * 64
    assert tuple(c for c in EVENT_COLUMNS if c != "hash") == HASHED_COLUMNS
    assert "hash" not in HASHED_COLUMNS
    assert EVENT_COLUMNS == EVENT_COLUMNS_IN_TABLE


def test_canonical_json_is_sorted_compact_and_unescaped() -> None:
    assert canonical_json({"b": 1, "a": ["é", None, True], "c": {"z": "東京", "y": "\"\\\n"}}) == (
        '{"a":["é",null,true],"b":1,"c":{"y":"\\"\\\\\\n","z":"東京"}}')


def test_preimage_is_the_documented_encoding_without_hash() -> None:
    ev = make_event(3, "a" * 64, payload='{"title":"Café ✓ \\"x\\""}', item_id=None)
    row = ev.to_row()
    assert preimage(row) == documented_preimage(row)
    assert b'"hash"' not in preimage(row)
    assert "Café ✓".encode() in preimage(row)
    assert preimage({**row, "hash": "anything"}) == preimage(row)
    assert preimage({**row, "extra": 1}) == preimage(row)
    with pytest.raises(KeyError):
        preimage({k: v for k, v in row.items() if k != "actor"})


def test_event_hash_is_sha256_hex_of_the_preimage() -> None:
    row = make_event(1, GENESIS_HASH).to_row()
    assert event_hash(row) == hashlib.sha256(documented_preimage(row)).hexdigest()
    assert len(event_hash(row)) == 64


@pytest.mark.parametrize("column", HASHED_COLUMNS)
def test_every_hashed_column_changes_the_hash(column: str) -> None:
    row = make_event(5, "b" * 64).to_row()
    changed = dict(row)
    changed[column] = 6 if column == "seq" else ("x" if row[column] is None else row[column] + "x")
    assert event_hash(changed) != event_hash(row)


def test_null_and_empty_string_hash_differently() -> None:
    row = make_event(1, GENESIS_HASH, item_id=None).to_row()
    assert event_hash(row) != event_hash({**row, "item_id": ""})
    assert event_hash(row) != event_hash({**row, "item_id": "null"})


def test_verify_events_accepts_a_good_chain() -> None:
    events = make_chain(5)
    report = verify_events(events)
    assert report.ok
    assert (report.events, report.head_seq, report.head_hash) == (5, 5, events[-1].hash)
    assert report.mismatches == [] and report.mismatch_count == 0
    empty = verify_events([])
    assert empty.ok and (empty.events, empty.head_seq, empty.head_hash) == (0, 0, GENESIS_HASH)


def relink(events: list[Event]) -> list[Event]:
    """Recompute prev_hash/hash along ``events`` as given (a forger's full rewrite)."""
    out: list[Event] = []
    prev = GENESIS_HASH
    for ev in events:
        fields = {**ev.to_row(), "prev_hash": prev}
        fields.pop("hash")
        new = Event(**fields, hash=event_hash(fields))
        out.append(new)
        prev = new.hash
    return out


def first_seq(report: Any) -> int:
    return min(m.seq for m in report.mismatches)


def test_verify_events_reports_each_kind_of_break() -> None:
    good = make_chain(5)
    # wrong first seq
    assert first_seq(verify_events(relink([make_event(2, GENESIS_HASH)]))) == 1
    # a gap: seq 3 removed, the rest relinked so that only the numbering is wrong
    gap = verify_events(relink([good[0], good[1], good[3], good[4]]))
    assert first_seq(gap) == 3
    assert "sequence broken" in gap.mismatches[0].reason
    # a duplicated seq
    dup = verify_events(relink([good[0], good[1], good[1], good[2]]))
    assert not dup.ok
    # wrong prev_hash, correct own hash
    bad_link = make_event(3, "c" * 64)
    report = verify_events([good[0], good[1], bad_link, *good[3:]])
    assert first_seq(report) == 3
    assert "prev_hash" in report.mismatches[0].reason
    # wrong own hash
    forged = Event(**{**good[2].to_row(), "hash": "d" * 64})
    report = verify_events([*good[:2], forged, *good[3:]])
    assert [m.seq for m in report.mismatches] == [3, 4]
    assert "contents" in report.mismatches[0].reason


@pytest.mark.parametrize(("payload", "reason"), [
    ("[]", "payload is not a JSON object"),
    ('"text"', "payload is not a JSON object"),
    ("{not json", "payload is not valid JSON"),
])
def test_verify_events_checks_the_payload(payload: str, reason: str) -> None:
    events = make_chain(3)
    events[1] = make_event(2, events[0].hash, payload=payload)
    report = verify_events(relink(events))
    assert [(m.seq, m.reason) for m in report.mismatches] == [(2, reason)]


def test_verify_events_reports_rows_that_cannot_be_encoded() -> None:
    events = make_chain(2)
    row = events[1].to_row()
    row["actor"] = b"Liam"
    report = verify_events([events[0], Event(**row)])
    assert first_seq(report) == 2
    assert any("cannot be encoded" in m.reason for m in report.mismatches)


def test_verify_events_reports_reordering_at_the_first_affected_seq() -> None:
    good = make_chain(6)
    report = verify_events([good[0], good[1], good[4], good[3], good[2], good[5]])
    assert first_seq(report) == 3


def test_mismatch_list_is_capped_but_counted() -> None:
    events = [Event(**{**e.to_row(), "hash": "e" * 64})
              for e in make_chain(MAX_LISTED_MISMATCHES + 20)]
    report = verify_events(events)
    assert len(report.mismatches) == MAX_LISTED_MISMATCHES
    assert report.mismatch_count > MAX_LISTED_MISMATCHES
    assert not report.ok


# --- verify_store on a real database ---------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chain") / "data" / "template.db"
    results = build_db(path, small_log())
    assert [r.status for r in results] == ["APPLIED"] * 5 + ["CONFLICT", "APPLIED"]
    assert len(event_rows(path)) == N
    return path


@pytest.fixture(scope="module")
def pg_template(pg_server: PgServer) -> Iterator[str]:
    """A PostgreSQL database holding the small log, copied for each test."""
    url = pg_server.databases.create(prefix="l3chain", template=pg_server.template)
    with open_pg_store(url) as store:
        assert [r.status for r in apply_all(Ledger(store), small_log())][-2:] == [
            "CONFLICT", "APPLIED"]
    yield url.dbname
    pg_server.databases.drop(url.dbname)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChainDb]:
    """A fresh copy of the small log's database."""
    if request.param == "sqlite":
        yield SqliteDb(copy_db(request.getfixturevalue("template"),
                               tmp_path / "data" / "copy.db"))
        return
    server: PgServer = request.getfixturevalue("pg_server")
    url = server.databases.create(template=request.getfixturevalue("pg_template"))
    try:
        yield PgDb(url)
    finally:
        server.databases.drop(url.dbname)


@pytest.fixture
def tamper(db: ChainDb) -> Iterator[Raw]:
    with db.raw(triggers=False) as conn:
        yield conn


def assert_broken_at(report: dict[str, Any], seq: int) -> None:
    assert report["chain_status"] == "BROKEN"
    assert report["mismatch_count"] >= 1
    assert report["mismatches"][0]["seq"] == seq, report["mismatches"]
    assert [m["seq"] for m in report["mismatches"]] == sorted(
        m["seq"] for m in report["mismatches"])


def test_good_log_verifies(db: ChainDb) -> None:
    report = verify(db)
    with db.open() as store:
        seq, head = store.head()
    assert report == {"chain_status": "OK", "events": N, "head_seq": N, "head_hash": head,
                      "mismatches": [], "mismatch_count": 0}
    assert seq == N


def test_empty_log_verifies(sqlite_path: Path, pg_db: PgUrl) -> None:
    for empty in (SqliteDb(sqlite_path), PgDb(pg_db)):
        assert verify(empty) == {"chain_status": "OK", "events": 0, "head_seq": 0,
                                 "head_hash": GENESIS_HASH, "mismatches": [],
                                 "mismatch_count": 0}


def altered(column: str, value: Any) -> Any:
    if column == "seq":
        return N + 100
    if column in ("hash", "prev_hash"):
        return value[:-1] + ("1" if value[-1] == "0" else "0")
    if column == "payload":  # the same JSON object, written differently
        return json.dumps(json.loads(value), indent=1)
    return "X" if value is None else value + "X"


@pytest.mark.parametrize("column", EVENT_COLUMNS_IN_TABLE)
@pytest.mark.parametrize("seq", range(1, N + 1))
def test_altering_any_column_of_any_row_is_caught_at_that_seq(
        db: ChainDb, tamper: Raw, seq: int, column: str) -> None:
    old = tamper.execute(f"SELECT {column} FROM events WHERE seq = ?", (seq,)).fetchone()[0]
    new = altered(column, old)
    assert new != old
    tamper.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", (new, seq))
    assert_broken_at(verify(db), seq)


@pytest.mark.parametrize(("seq", "column", "value"), [
    (1, "item_id", "I-1"),                         # NULL -> value
    (2, "item_id", None),                          # value -> NULL
    (4, "task_id", None),
    (1, "command_id", None),
    (3, "ts", None),                               # filled in below: same instant, +00:00
    (5, "hash", None),                             # filled in below: upper case
    (6, "payload", None),                          # filled in below: keys in another order
    (2, "actor", "liam"),
    (7, "event_type", "PLAN_CONFLICT_DETECTED"),   # a real type, so replay succeeds
])
def test_subtle_alterations_are_caught(db: ChainDb, tamper: Raw, seq: int,
                                       column: str, value: Any) -> None:
    old = tamper.execute(f"SELECT {column} FROM events WHERE seq = ?", (seq,)).fetchone()[0]
    if column == "ts":
        value = old.replace("Z", "+00:00")
    elif column == "hash":
        value = old.upper()
    elif column == "payload":
        value = json.dumps(dict(reversed(json.loads(old).items())), separators=(",", ":"),
                           ensure_ascii=False)
    assert value != old
    tamper.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", (value, seq))
    assert_broken_at(verify(db), seq)


@pytest.mark.parametrize("seq", range(1, N))
def test_deleting_a_row_is_caught_at_its_seq(db: ChainDb, tamper: Raw,
                                             seq: int) -> None:
    tamper.execute("DELETE FROM events WHERE seq = ?", (seq,))
    assert_broken_at(verify(db), seq)


def test_deleting_the_last_row_is_caught_when_it_changed_state(
        db: ChainDb, tamper: Raw) -> None:
    tamper.execute("DELETE FROM events WHERE seq = ?", (N,))
    report = verify(db)
    assert report["chain_status"] == "BROKEN"
    assert any(m["reason"].startswith("state: plan 'P-1'") for m in report["mismatches"])


def test_deleting_every_row_is_caught(db: ChainDb, tamper: Raw) -> None:
    tamper.execute("DELETE FROM events")
    assert verify(db)["chain_status"] == "BROKEN"


def shift_up(conn: Raw, from_seq: int) -> None:
    conn.execute("UPDATE events SET seq = seq + 100000 WHERE seq >= ?", (from_seq,))
    conn.execute("UPDATE events SET seq = seq - 99999 WHERE seq >= 100000")


@pytest.mark.parametrize("seq", range(1, N + 1))
def test_inserting_a_forged_row_is_caught(db: ChainDb, tamper: Raw,
                                          seq: int) -> None:
    """A forged conflict event, correctly linked to its predecessor and correctly hashed,
    slipped in before row ``seq``: the row after it no longer links."""
    prev = GENESIS_HASH if seq == 1 else db.rows()[seq - 2]["hash"]
    forged = make_event(seq, prev, event_id="forged", session_id="S-SMALL", plan_id="P-1")
    shift_up(tamper, seq)
    row = forged.to_row()
    tamper.execute(f"INSERT INTO events ({', '.join(row)}) VALUES "
                   f"({', '.join('?' for _ in row)})", tuple(row.values()))
    assert_broken_at(verify(db), seq + 1)


def test_appending_a_forged_state_change_is_caught(db: ChainDb) -> None:
    """Even a perfectly linked, perfectly hashed new event is caught when the state tables
    do not match it (the forger did not also edit the tables)."""
    head = db.rows()[-1]
    payload = canonical_json({"plan_id": "P-1", "item_id": "I-1", "actor": "Eve",
                              "action": "STATE_CHANGE", "expected_version": 2,
                              "new_version": 3, "change": {"state": "DONE"}})
    forged = make_event(N + 1, head["hash"], event_type="PLAN_ITEM_STATE_CHANGED",
                        payload=payload, plan_id="P-1", item_id="I-1", task_id="I-1")
    row = forged.to_row()
    with db.raw(triggers=True) as conn:  # the trigger allows a correctly linked append
        conn.execute(f"INSERT INTO events ({', '.join(row)}) VALUES "
                     f"({', '.join('?' for _ in row)})", tuple(row.values()))
    report = verify(db)
    assert_broken_at(report, N + 1)
    assert "state: item 'I-1'" in report["mismatches"][0]["reason"]


@pytest.mark.parametrize(("a", "b"), [(1, 2), (2, 5), (3, N), (1, N), (6, 7)])
def test_swapping_two_rows_contents_is_caught(db: ChainDb, tamper: Raw,
                                              a: int, b: int) -> None:
    rows = {r["seq"]: r for r in db.rows()}
    cols = [c for c in EVENT_COLUMNS_IN_TABLE if c != "seq"]
    tamper.execute("UPDATE events SET event_id = 'tmp-' || event_id WHERE seq IN (?, ?)",
                   (a, b))  # keeps event_id UNIQUE while the two rows trade places
    for target, source in ((a, b), (b, a)):
        tamper.execute(f"UPDATE events SET {', '.join(f'{c} = ?' for c in cols)} WHERE seq = ?",
                       (*(rows[source][c] for c in cols), target))
    assert_broken_at(verify(db), a)


def test_reordering_rows_is_caught(db: ChainDb, tamper: Raw) -> None:
    """Rows 3 and 5 change places (each keeps its content, seq numbers swapped)."""
    tamper.execute("UPDATE events SET seq = 1000 WHERE seq = 3")
    tamper.execute("UPDATE events SET seq = 3 WHERE seq = 5")
    tamper.execute("UPDATE events SET seq = 5 WHERE seq = 1000")
    assert_broken_at(verify(db), 3)


# Where verify reports a state-row edit: the last event touching that row
# (P-1: every event; I-1: 2 and 5; I-2: 3, the link 4 and the conflict 6; L-1: 4);
# a row that no event explains is reported at the head.
STATE_EDITS = [
    ("UPDATE plans SET title = 'Hacked'", N, "state: plan 'P-1' differs"),
    ("UPDATE plans SET version = 5", N, "state: plan 'P-1' differs"),
    ("UPDATE plans SET status = 'ARCHIVED'", N, "state: plan 'P-1' differs"),
    ("UPDATE plan_items SET state = 'DONE' WHERE item_id = 'I-1'", 5, "state: item 'I-1'"),
    ("UPDATE plan_items SET version = 1 WHERE item_id = 'I-1'", 5, "state: item 'I-1'"),
    ("UPDATE plan_items SET assigned_to = NULL WHERE item_id = 'I-1'", 5, "state: item 'I-1'"),
    ("UPDATE plan_items SET priority = 99 WHERE item_id = 'I-2'", 6, "state: item 'I-2'"),
    ("UPDATE plan_items SET updated_ts = 'x' WHERE item_id = 'I-2'", 6, "state: item 'I-2'"),
    ("UPDATE plan_links SET link_type = 'DEPENDS_ON'", 4, "state: link 'L-1'"),
    ("DELETE FROM plan_links", 4, "state: link 'L-1' is in the log but missing"),
    ("DELETE FROM plan_items WHERE item_id = 'I-2'", 6, "state: item 'I-2' is in the log"),
    ("INSERT INTO plans VALUES ('P-X', 't', 'Eve', 'ACTIVE', 1, 'x', 'x')", N,
     "state: plan 'P-X' is in the table but not in the log"),
    ("INSERT INTO plan_items VALUES ('I-X', 'P-1', 'TASK', 't', 'TODO', 0, NULL, NULL, 1, "
     "'x', 'x')", N, "state: item 'I-X' is in the table"),
    ("INSERT INTO plan_links VALUES ('L-X', 'P-1', 'I-1', 'I-2', 'RELATED', 'x')", N,
     "state: link 'L-X' is in the table"),
]


@pytest.mark.parametrize(("sql", "seq", "reason"), STATE_EDITS,
                         ids=[e[0][:40] for e in STATE_EDITS])
def test_editing_a_state_row_is_caught(db: ChainDb, sql: str, seq: int,
                                       reason: str) -> None:
    with db.raw(triggers=False) as conn:  # no foreign keys either (sqlite3's default)
        conn.execute(sql)
    report = verify(db)
    assert_broken_at(report, seq)
    assert report["mismatches"][0]["reason"].startswith(reason), report["mismatches"]
    assert all(m["reason"].startswith("state:") for m in report["mismatches"])


def test_a_full_rewrite_with_recomputed_hashes_still_needs_the_state_to_match(
        db: ChainDb, tamper: Raw) -> None:
    """A forger who edits a payload and recomputes every hash after it passes the chain
    check, but the replayed state then differs from the tables."""
    rows = db.rows()
    payload = json.loads(rows[4]["payload"])  # seq 5: I-1 TODO -> IN_PROGRESS
    payload["change"] = {"state": "BLOCKED"}
    rows[4]["payload"] = canonical_json(payload)
    prev = GENESIS_HASH
    for row in rows:
        row["prev_hash"] = prev
        row["hash"] = event_hash(row)
        prev = row["hash"]
        tamper.execute("UPDATE events SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                       (row["payload"], row["prev_hash"], row["hash"], row["seq"]))
    report = verify(db)
    assert report["chain_status"] == "BROKEN"
    assert len(report["mismatches"]) == 1
    assert report["mismatches"][0]["reason"].startswith("state: item 'I-1' differs")
    assert report["mismatches"][0]["seq"] == 5
