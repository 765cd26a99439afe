"""L0/L1 on SQLite: the database itself refuses history rewrites; WAL; schema; opening."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from ledger.log.chain import GENESIS_HASH, event_hash
from ledger.log.verify import verify_store
from ledger.plans.ledger import Ledger
from ledger.storage.sqlite import SqliteStore, initialise
from schema.errors import ErrorCode, StorageError
from tests.support.helpers import (
    APPEND_ONLY_TRIGGERS,
    EVENT_COLUMNS_IN_TABLE,
    build_db,
    dump_tables,
    event_rows,
    make_event,
    raw_connect,
    small_log,
)

SPEC_COLUMNS = {
    "plans": {"plan_id", "title", "owner_agent", "status", "version", "created_ts",
              "updated_ts"},
    "plan_items": {"item_id", "plan_id", "kind", "title", "state", "priority", "assigned_to",
                   "due_ts", "version", "created_ts", "updated_ts"},
    "plan_links": {"link_id", "from_item_id", "to_item_id", "link_type"},
}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database holding the seven-event small log."""
    path = tmp_path / "data" / "small.db"
    build_db(path, small_log())
    return path


def insert_raw(conn: sqlite3.Connection, row: dict[str, object]) -> None:
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO events ({cols}) VALUES ({marks})", tuple(row.values()))


# --- append-only in the database itself ---------------------------------------------


@pytest.mark.parametrize("column", EVENT_COLUMNS_IN_TABLE)
def test_raw_update_of_any_event_column_aborts(db: Path, column: str) -> None:
    before = dump_tables(db, ("events",))
    value = "seq + 100" if column == "seq" else f"COALESCE({column}, '') || 'x'"
    with closing(raw_connect(db)) as conn, pytest.raises(sqlite3.IntegrityError,
                                                         match="append-only"):
        conn.execute(f"UPDATE events SET {column} = {value} WHERE seq = 3")
    assert dump_tables(db, ("events",)) == before


@pytest.mark.parametrize("sql", ["DELETE FROM events WHERE seq = 7",
                                 "DELETE FROM events WHERE seq = 1",
                                 "DELETE FROM events"])
def test_raw_delete_of_events_aborts(db: Path, sql: str) -> None:
    before = dump_tables(db, ("events",))
    with closing(raw_connect(db)) as conn, pytest.raises(sqlite3.IntegrityError,
                                                         match="append-only"):
        conn.execute(sql)
    assert dump_tables(db, ("events",)) == before


@pytest.mark.parametrize("sql", ["UPDATE commands SET status = 'REJECTED'",
                                 "UPDATE commands SET outcome = '{}' WHERE seq = 1",
                                 "DELETE FROM commands",
                                 "DELETE FROM commands WHERE seq = 7"])
def test_raw_update_or_delete_of_command_records_aborts(db: Path, sql: str) -> None:
    before = dump_tables(db, ("commands",))
    assert len(before["commands"]) == 7
    with closing(raw_connect(db)) as conn, pytest.raises(sqlite3.IntegrityError,
                                                         match="append-only"):
        conn.execute(sql)
    assert dump_tables(db, ("commands",)) == before


def test_append_only_holds_inside_an_explicit_transaction(db: Path) -> None:
    before = dump_tables(db, ("events",))
    with closing(raw_connect(db)) as conn:
        conn.execute("BEGIN")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE events SET actor = 'Eve' WHERE seq = 2")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("DELETE FROM events WHERE seq = 2")
        conn.execute("COMMIT")
    assert dump_tables(db, ("events",)) == before


def next_row(db: Path, **overrides: object) -> dict[str, object]:
    """A row that would be the correct next event, with ``overrides`` applied."""
    rows = event_rows(db)
    head = rows[-1]
    ev = make_event(head["seq"] + 1, head["hash"])
    row: dict[str, object] = dict(ev.to_row())
    row.update(overrides)
    return row


def test_raw_insert_of_the_correct_next_event_is_allowed(db: Path) -> None:
    row = next_row(db)
    with closing(raw_connect(db)) as conn:
        insert_raw(conn, row)
    assert event_rows(db)[-1] == row
    with SqliteStore(db, readonly=True) as store:
        assert verify_store(store)["events"] == 8


@pytest.mark.parametrize("overrides", [
    {"seq": 9},                 # gap: head is 7
    {"seq": 12},
    {"prev_hash": "0" * 64},    # genesis in the middle of the log
    {"prev_hash": "a" * 64},
])
def test_raw_insert_with_a_gap_or_a_wrong_prev_hash_aborts(db: Path,
                                                           overrides: dict[str, object]) -> None:
    before = dump_tables(db, ("events",))
    row = next_row(db, **overrides)
    with closing(raw_connect(db)) as conn, pytest.raises(sqlite3.IntegrityError,
                                                         match="appended at seq"):
        insert_raw(conn, row)
    assert dump_tables(db, ("events",)) == before


def test_raw_insert_before_the_head_aborts(db: Path) -> None:
    rows = event_rows(db)
    row = dict(rows[3], event_id="another-id")  # re-insert seq 4 with its own prev_hash
    with closing(raw_connect(db)) as conn, pytest.raises(sqlite3.IntegrityError):
        insert_raw(conn, row)


def test_first_event_must_link_to_genesis(sqlite_path: Path) -> None:
    with closing(raw_connect(sqlite_path)) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="appended at seq"):
            insert_raw(conn, dict(make_event(1, "1" * 64).to_row()))
        with pytest.raises(sqlite3.IntegrityError, match="appended at seq"):
            insert_raw(conn, dict(make_event(2, GENESIS_HASH).to_row()))
        insert_raw(conn, dict(make_event(1, GENESIS_HASH).to_row()))
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone() == (1,)


def test_a_correctly_linked_row_with_a_forged_hash_passes_the_trigger_but_not_verify(
        db: Path) -> None:
    row = next_row(db, hash="b" * 64)
    with closing(raw_connect(db)) as conn:
        insert_raw(conn, row)
    with SqliteStore(db, readonly=True) as store:
        report = verify_store(store)
    assert report["chain_status"] == "BROKEN"
    assert report["mismatches"][0]["seq"] == 8


def test_store_turns_trigger_aborts_into_storage_errors(db: Path) -> None:
    with SqliteStore(db) as store:
        seq, _ = store.head()
        with pytest.raises(StorageError) as info, store.transaction() as tx:
            tx.append_event(make_event(seq + 5, "c" * 64))
        assert info.value.code == ErrorCode.DB_ERROR
        assert "appended at seq" in info.value.message
        assert store.head()[0] == seq


# --- schema, WAL, opening -----------------------------------------------------------


def test_wal_mode_is_on(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_wal_mode_is_on_right_after_init(sqlite_path: Path) -> None:
    with closing(sqlite3.connect(sqlite_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_schema_has_the_spec_pack_columns_and_triggers(sqlite_path: Path) -> None:
    with closing(sqlite3.connect(sqlite_path)) as conn:
        for table, required in SPEC_COLUMNS.items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            assert required <= have, table
        event_cols = [r[1] for r in conn.execute("PRAGMA table_info(events)")]
        assert event_cols == list(EVENT_COLUMNS_IN_TABLE)
        triggers = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert set(APPEND_ONLY_TRIGGERS) | {"commands_no_update", "commands_no_delete"} <= triggers


def test_initialise_is_idempotent_and_keeps_data(db: Path) -> None:
    before = dump_tables(db, ("plans", "plan_items", "plan_links", "events", "commands"))
    assert initialise(db) is False
    assert dump_tables(db, ("plans", "plan_items", "plan_links", "events", "commands")) == before


def test_initialise_reports_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "nested" / "new.db"
    assert initialise(path) is True
    assert path.is_file()


def test_missing_database_is_not_initialised(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        SqliteStore(tmp_path / "nope.db")
    assert info.value.code == ErrorCode.DB_NOT_INITIALISED
    assert not (tmp_path / "nope.db").exists()


def test_sqlite_file_without_the_schema_is_not_initialised(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE other (x)")
    with pytest.raises(StorageError) as info:
        SqliteStore(path)
    assert info.value.code == ErrorCode.DB_NOT_INITIALISED


def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an sqlite database at all" * 100)
    with pytest.raises(StorageError) as info:
        SqliteStore(path)
    assert info.value.code == ErrorCode.DB_ERROR


def test_a_readonly_store_refuses_transactions(db: Path) -> None:
    with SqliteStore(db, readonly=True) as store:
        with pytest.raises(StorageError), store.transaction():
            pass
        with pytest.raises(StorageError):
            Ledger(store).apply({"action": "CREATE_PLAN", "command_id": "c", "actor": "a",
                                 "session_id": "s", "plan_id": "P-9", "title": "t"})
    with SqliteStore(db, readonly=True) as store:
        assert store.get_plan("P-9") is None


def test_hash_column_is_sha256_of_the_row(db: Path) -> None:
    for row in event_rows(db):
        assert row["hash"] == event_hash(row)
        assert len(row["hash"]) == 64
        assert row["hash"] == row["hash"].lower()
