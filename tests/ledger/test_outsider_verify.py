"""An outsider re-verifies a ledger database from docs/HASH_CHAIN.md alone.

``outsider_verify`` below uses nothing but sqlite3, hashlib and json: no ledger code is
involved in computing or checking a hash. The ledger is used only to build databases.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from ledger.log.verify import verify_store
from ledger.plans.ledger import Ledger
from ledger.plans.scenario import apply_scenario
from ledger.storage.sqlite import SqliteStore
from schema.scenario import load_scenario
from tests.support.helpers import (
    SCENARIO_FILES,
    build_db,
    drop_append_only_triggers,
    raw_connect,
    small_log,
)


# --- the outsider's verifier (docs/HASH_CHAIN.md, "Verifying") --------------------------
def outsider_verify(db_path: Path) -> tuple[str, int, str | None]:
    """("OK", events, head hash) or ("BROKEN", first bad seq, None)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:  # the preimage covers every column of the events table except `hash`
        cols = [r[1] for r in conn.execute("PRAGMA table_info(events)") if r[1] != "hash"]
        rows = conn.execute(f"SELECT {', '.join(cols)}, hash FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    prev, expected_seq = "0" * 64, 1
    for *values, stored in rows:
        row = dict(zip(cols, values, strict=True))
        pre = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if row["seq"] != expected_seq or row["prev_hash"] != prev:
            return "BROKEN", expected_seq, None
        if hashlib.sha256(pre.encode("utf-8")).hexdigest() != stored:
            return "BROKEN", row["seq"], None
        prev, expected_seq = stored, row["seq"] + 1
    return "OK", expected_seq - 1, prev
# ----------------------------------------------------------------------------------------


def test_the_outsider_uses_no_ledger_code() -> None:
    assert "ledger" not in inspect.getsource(outsider_verify)
    used = inspect.getclosurevars(outsider_verify)
    assert set(used.globals) == {"sqlite3", "json", "hashlib"}
    assert not used.nonlocals


def ledger_verdict(path: Path) -> dict[str, object]:
    with SqliteStore(path, readonly=True) as store:
        return verify_store(store)


@pytest.fixture
def small_db(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "small.db"
    build_db(path, small_log())  # includes non-ASCII, quotes, backslash, newline
    return path


def test_outsider_agrees_with_the_ledger_on_a_good_database(small_db: Path) -> None:
    status, events, head = outsider_verify(small_db)
    report = ledger_verdict(small_db)
    assert report["chain_status"] == status == "OK"
    assert report["events"] == events == 7
    assert report["head_hash"] == head
    with SqliteStore(small_db, readonly=True) as store:
        assert store.head() == (7, head)


def test_outsider_agrees_on_every_scenario_applied_together(tmp_path: Path) -> None:
    path = tmp_path / "data" / "all.db"
    build_db(path, [])
    with SqliteStore(path) as store:
        for f in SCENARIO_FILES:
            apply_scenario(Ledger(store), load_scenario(f))
    status, events, head = outsider_verify(path)
    report = ledger_verdict(path)
    assert (status, events, head) == ("OK", report["events"], report["head_hash"])
    assert events > 30


def test_the_payload_is_hashed_as_its_stored_text(small_db: Path) -> None:
    """Non-ASCII text sits inside the payload string; the outsider must not re-encode it."""
    with closing(sqlite3.connect(small_db)) as conn:
        payload = conn.execute("SELECT payload FROM events WHERE seq = 2").fetchone()[0]
    assert "Café ✓ — 東京" in payload
    assert outsider_verify(small_db)[0] == "OK"


@pytest.mark.parametrize(("sql", "seq"), [
    ("UPDATE events SET payload = replace(payload, 'Café', 'Cafe') WHERE seq = 2", 2),
    ("UPDATE events SET actor = 'Eve' WHERE seq = 5", 5),
    ("UPDATE events SET item_id = NULL WHERE seq = 3", 3),
    ("UPDATE events SET hash = upper(hash) WHERE seq = 7", 7),
    ("DELETE FROM events WHERE seq = 4", 4),
    ("UPDATE events SET seq = 99 WHERE seq = 1", 1),
])
def test_outsider_and_ledger_both_fail_a_tampered_database(small_db: Path, sql: str,
                                                           seq: int) -> None:
    with closing(raw_connect(small_db)) as conn:
        drop_append_only_triggers(conn)
        conn.execute(sql)
    assert outsider_verify(small_db) == ("BROKEN", seq, None)
    report = ledger_verdict(small_db)
    assert report["chain_status"] == "BROKEN"
    assert report["mismatches"][0]["seq"] == seq  # type: ignore[index]


def documented_verifier() -> object:
    """The verifier script printed in docs/HASH_CHAIN.md, loaded as written."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "HASH_CHAIN.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```python")[1:]]
    script = next(b for b in blocks if "def verify(" in b and "hashlib" in b)
    code = "\n".join(line for line in script.splitlines() if not line.startswith("print("))
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/HASH_CHAIN.md", "exec"), namespace)
    return namespace["verify"]


def test_the_documented_verifier_script_works(small_db: Path) -> None:
    verify = documented_verifier()
    assert verify(str(small_db)) == "OK"  # type: ignore[operator]
    with closing(raw_connect(small_db)) as conn:
        drop_append_only_triggers(conn)
        conn.execute("UPDATE events SET ts = ts || ' ' WHERE seq = 6")
    assert verify(str(small_db)) != "OK"  # type: ignore[operator]
