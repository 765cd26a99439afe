"""The Store contract (ledger.storage.base.Store), run against every backend.

``StoreContract`` only talks to the interface and to the factory
(ledger.storage.factory); each backend is one subclass providing the ``store`` fixture
(an empty, initialised store) and saying whether the factory can open its locator
again (``reopenable``). The PostgreSQL subclass gets a fresh database on the session's
throwaway cluster for each test (tests/support/pg.py).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from agents.tools.pgcluster import PgUrl
from ledger.log.chain import GENESIS_HASH, event_row
from ledger.runtime.sandbox import DEFAULT_DB
from ledger.storage.base import ITEMS, LINKS, PLANS, CommandRecord, Store, Transaction
from ledger.storage.factory import initialise_store, locate, open_store
from ledger.storage.memory import MemoryStore
from ledger.storage.rows import Event, Item, Link, Plan, State
from ledger.storage.sqlite import SqliteStore
from schema.errors import CoordinatorError, StorageError
from tests.support.helpers import init_db, make_chain, make_event
from tests.support.pgstore import open_pg_store

TS = "2026-01-01T00:00:00.000000Z"


def plan(plan_id: str = "P-1", **kw: object) -> Plan:
    fields = {"plan_id": plan_id, "title": "Plan", "owner_agent": "Liam", "status": "ACTIVE",
              "version": 1, "created_ts": TS, "updated_ts": TS}
    fields.update(kw)
    return Plan(**fields)


def item(item_id: str = "I-1", plan_id: str = "P-1", **kw: object) -> Item:
    fields = {"item_id": item_id, "plan_id": plan_id, "kind": "TASK", "title": "Item",
              "state": "TODO", "priority": 0, "assigned_to": None, "due_ts": None,
              "version": 1, "created_ts": TS, "updated_ts": TS}
    fields.update(kw)
    return Item(**fields)


def link(link_id: str, src: str, dst: str, plan_id: str = "P-1",
         link_type: str = "DEPENDS_ON") -> Link:
    return Link(link_id, plan_id, src, dst, link_type, TS)


def record(command_id: str, seq: int | None = 1, status: str = "APPLIED") -> CommandRecord:
    return CommandRecord(command_id, "f" * 64, status, seq, f'{{"status":"{status}"}}', TS)


def varied_events() -> list[Event]:
    """Six linked events with different sessions, tasks, actors and types."""
    spec = [
        ("S-A", "P-1", "Liam", "PLAN_CREATED", None),
        ("S-A", "I-1", "Liam", "PLAN_ITEM_ADDED", "I-1"),
        ("S-B", "I-2", "Mary", "PLAN_ITEM_ADDED", "I-2"),
        ("S-A", "I-1", "Codex", "PLAN_ITEM_STATE_CHANGED", "I-1"),
        ("S-B", "I-2", "Mary", "PLAN_CONFLICT_DETECTED", "I-2"),
        ("S-C", "I-1", "Codex", "PLAN_ITEM_STATE_CHANGED", "I-1"),
    ]
    events: list[Event] = []
    prev = GENESIS_HASH
    for seq, (session, task, actor, kind, item_id) in enumerate(spec, start=1):
        ev = make_event(seq, prev, session_id=session, task_id=task, actor=actor,
                        event_type=kind, item_id=item_id)
        events.append(ev)
        prev = ev.hash
    return events


class StoreContract:
    """Tests every Store backend must pass. Subclasses provide the ``store`` fixture."""

    #: whether open_store(store.locator) opens the same store again (in another
    #: process, too); an in-memory store exists only in the process that made it
    reopenable: ClassVar[bool] = True

    @pytest.fixture
    def store(self) -> Iterator[Store]:  # pragma: no cover - always overridden
        raise NotImplementedError

    @pytest.fixture
    def writer(self, store: Store) -> Iterator[Store]:
        """Another connection to the same store, if the backend has such a thing (else
        the store itself)."""
        if not self.reopenable:
            yield store
            return
        other = open_store(store.locator)
        yield other
        other.close()

    # --- helpers -------------------------------------------------------------------

    def seed(self, store: Store) -> None:
        """Commit a baseline: one plan, two items, a link, one event, one command."""
        with store.transaction() as tx:
            tx.insert_plan(plan())
            tx.insert_item(item("I-1"))
            tx.insert_item(item("I-2"))
            tx.insert_link(link("L-1", "I-1", "I-2"))
            tx.append_event(make_event(1, GENESIS_HASH))
            tx.put_command(record("c-1"))

    def unsorted_rows(self, tx: Transaction) -> None:
        """Two plans, three items and two links, each inserted out of key order."""
        for pid in ("P-2", "P-1"):
            tx.insert_plan(plan(pid))
        for iid, pid in (("I-3", "P-1"), ("I-1", "P-2"), ("I-2", "P-1")):
            tx.insert_item(item(iid, plan_id=pid))
        tx.insert_link(link("L-2", "I-3", "I-2"))
        tx.insert_link(link("L-1", "I-2", "I-3", link_type="RELATED"))

    def append(self, store: Store, events: list[Event]) -> None:
        with store.transaction() as tx:
            for ev in events:
                tx.append_event(ev)

    # --- empty store -----------------------------------------------------------------

    def test_empty_store(self, store: Store) -> None:
        assert store.head() == (0, GENESIS_HASH)
        assert store.list_plans() == []
        assert store.list_items() == []
        assert store.list_links() == []
        assert list(store.iter_events()) == []
        assert store.count_by("event_type") == {}
        assert store.get_plan("P-1") is None
        assert store.get_item("I-1") is None
        assert store.get_link("L-1") is None
        assert store.find_link("I-1", "I-2", "DEPENDS_ON") is None
        assert store.get_command("c-1") is None
        assert store.load_state() == State()

    # --- commit ----------------------------------------------------------------------

    def test_transaction_commits_on_normal_exit(self, store: Store) -> None:
        self.seed(store)
        ev = make_event(1, GENESIS_HASH)
        assert store.get_plan("P-1") == plan()
        assert store.get_item("I-1") == item("I-1")
        assert store.get_link("L-1") == link("L-1", "I-1", "I-2")
        assert store.find_link("I-1", "I-2", "DEPENDS_ON") == link("L-1", "I-1", "I-2")
        assert store.find_link("I-1", "I-2", "RELATED") is None
        assert store.find_link("I-2", "I-1", "DEPENDS_ON") is None
        assert store.head() == (1, ev.hash)
        assert list(store.iter_events()) == [ev]
        assert store.get_command("c-1") == record("c-1")

    def test_writes_are_visible_inside_the_transaction(self, store: Store) -> None:
        ev = make_event(1, GENESIS_HASH)
        with store.transaction() as tx:
            assert tx.head() == (0, GENESIS_HASH)
            tx.insert_plan(plan())
            assert tx.get_plan("P-1") == plan()
            tx.insert_item(item())
            assert tx.get_item("I-1") == item()
            tx.append_event(ev)
            assert tx.head() == (1, ev.hash)
            tx.put_command(record("c-1"))
            assert tx.get_command("c-1") == record("c-1")

    def test_reads_outside_a_transaction_see_the_last_committed_state(
            self, store: Store) -> None:
        self.seed(store)
        committed = store.load_state()
        head = store.head()
        with store.transaction() as tx:
            tx.update_plan(plan(version=2, title="Changed"))
            tx.insert_plan(plan("P-2"))
            tx.append_event(make_event(2, head[1]))
            tx.put_command(record("c-2", seq=2))
            assert store.load_state() == committed
            assert store.head() == head
            assert store.get_plan("P-2") is None
            assert store.get_command("c-2") is None
            assert [e.seq for e in store.iter_events()] == [1]
        assert store.get_plan("P-1") == plan(version=2, title="Changed")
        assert store.head()[0] == 2

    def test_updates_persist(self, store: Store) -> None:
        self.seed(store)
        with store.transaction() as tx:
            tx.update_plan(plan(version=2, status="ARCHIVED", updated_ts="later"))
            tx.update_item(item("I-1", state="DONE", version=3, assigned_to="Mary",
                                due_ts="2026-02-01T00:00:00Z", priority=-4))
        assert store.get_plan("P-1") == plan(version=2, status="ARCHIVED", updated_ts="later")
        assert store.get_item("I-1") == item("I-1", state="DONE", version=3,
                                             assigned_to="Mary",
                                             due_ts="2026-02-01T00:00:00Z", priority=-4)
        assert store.get_item("I-2") == item("I-2")

    # --- rollback --------------------------------------------------------------------

    def test_transaction_rolls_back_everything_on_exception(self, store: Store) -> None:
        self.seed(store)
        before_state = store.load_state()
        before_head = store.head()
        before_events = list(store.iter_events())
        with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
            tx.insert_plan(plan("P-2"))
            tx.update_plan(plan(version=9, title="Changed"))
            tx.insert_item(item("I-3", plan_id="P-2"))
            tx.update_item(item("I-1", state="BLOCKED", version=2))
            tx.insert_link(link("L-2", "I-2", "I-1"))
            tx.append_event(make_event(2, before_head[1]))
            tx.put_command(record("c-2", seq=2))
            raise RuntimeError("boom")
        assert store.load_state() == before_state
        assert store.head() == before_head
        assert list(store.iter_events()) == before_events
        assert store.get_command("c-2") is None
        assert store.get_command("c-1") == record("c-1")
        # the store is still usable, and the rolled-back ids are free again
        with store.transaction() as tx:
            tx.insert_plan(plan("P-2"))
            tx.append_event(make_event(2, before_head[1], event_id="ev-2b"))
            tx.put_command(record("c-2", seq=2))
        assert store.head()[0] == 2
        assert store.get_command("c-2") == record("c-2", seq=2)

    def test_rollback_of_a_transaction_on_an_empty_store(self, store: Store) -> None:
        with pytest.raises(KeyError), store.transaction() as tx:
            tx.insert_plan(plan())
            tx.append_event(make_event(1, GENESIS_HASH))
            raise KeyError("x")
        assert store.head() == (0, GENESIS_HASH)
        assert store.load_state() == State()
        assert list(store.iter_events()) == []

    def test_out_of_order_event_is_refused_and_rolled_back(self, store: Store) -> None:
        self.seed(store)
        seq, head_hash = store.head()
        for bad in (make_event(seq + 2, head_hash),          # gap
                    make_event(seq, head_hash),              # not after the head
                    make_event(seq + 1, "f" * 64)):          # wrong prev_hash
            with pytest.raises(StorageError), store.transaction() as tx:
                tx.insert_plan(plan("P-9"))
                tx.append_event(bad)
            assert store.head() == (seq, head_hash)
            assert store.get_plan("P-9") is None

    def test_first_event_must_link_to_genesis(self, store: Store) -> None:
        with pytest.raises(StorageError), store.transaction() as tx:
            tx.append_event(make_event(1, "1" * 64))
        assert store.head() == (0, GENESIS_HASH)

    def test_duplicate_rows_are_refused(self, store: Store) -> None:
        self.seed(store)
        for write in (lambda tx: tx.insert_plan(plan()),
                      lambda tx: tx.insert_item(item("I-1")),
                      lambda tx: tx.insert_link(link("L-1", "I-2", "I-1")),
                      lambda tx: tx.put_command(record("c-1"))):
            with pytest.raises(StorageError), store.transaction() as tx:
                write(tx)
        assert store.get_command("c-1") == record("c-1")
        assert store.get_link("L-1") == link("L-1", "I-1", "I-2")

    def test_rows_must_refer_to_existing_rows(self, store: Store) -> None:
        self.seed(store)
        with pytest.raises(StorageError), store.transaction() as tx:
            tx.insert_item(item("I-9", plan_id="P-NONE"))
        with pytest.raises(StorageError), store.transaction() as tx:
            tx.insert_link(link("L-9", "I-1", "I-NONE"))
        assert store.get_item("I-9") is None
        assert store.get_link("L-9") is None

    # --- lists -------------------------------------------------------------------------

    def test_lists_are_sorted_and_filtered_by_plan(self, store: Store) -> None:
        with store.transaction() as tx:
            self.unsorted_rows(tx)
        assert [p.plan_id for p in store.list_plans()] == ["P-1", "P-2"]
        assert [(i.plan_id, i.item_id) for i in store.list_items()] == [
            ("P-1", "I-2"), ("P-1", "I-3"), ("P-2", "I-1")]
        assert [i.item_id for i in store.list_items("P-1")] == ["I-2", "I-3"]
        assert [i.item_id for i in store.list_items("P-2")] == ["I-1"]
        assert store.list_items("P-NONE") == []
        assert [lk.link_id for lk in store.list_links()] == ["L-1", "L-2"]
        assert [lk.link_id for lk in store.list_links("P-1")] == ["L-1", "L-2"]
        assert store.list_links("P-2") == []
        state = store.load_state()
        assert set(state.plans) == {"P-1", "P-2"}
        assert set(state.items) == {"I-1", "I-2", "I-3"}
        assert set(state.links) == {"L-1", "L-2"}
        assert state.items["I-1"] == item("I-1", plan_id="P-2")

    # --- events --------------------------------------------------------------------

    def test_events_round_trip_exactly(self, store: Store) -> None:
        events = make_chain(3, task_id=None, plan_id=None, item_id=None, command_id=None,
                            payload='{"title":"Café ✓ \\"q\\" 東京"}')
        self.append(store, events)
        assert list(store.iter_events()) == events
        assert store.head() == (3, events[-1].hash)

    def test_iter_events_range_and_limit(self, store: Store) -> None:
        events = varied_events()
        self.append(store, events)

        def seqs(*args: int | None, **kw: object) -> list[int]:
            return [e.seq for e in store.iter_events(*args, **kw)]

        assert seqs() == [1, 2, 3, 4, 5, 6]
        assert seqs(3) == [3, 4, 5, 6]
        assert seqs(1, 4) == [1, 2, 3, 4]
        assert seqs(2, 5) == [2, 3, 4, 5]
        assert seqs(4, 4) == [4]
        assert seqs(5, 2) == []
        assert seqs(7) == []
        assert seqs(limit=2) == [1, 2]
        assert seqs(2, 5, limit=3) == [2, 3, 4]
        assert seqs(5, limit=10) == [5, 6]
        assert seqs(limit=0) == []
        assert list(store.iter_events(2, 3)) == events[1:3]

    def test_iter_events_filters(self, store: Store) -> None:
        self.append(store, varied_events())

        def seqs(from_seq: int = 1, to_seq: int | None = None, limit: int | None = None,
                 **filters: str) -> list[int]:
            return [e.seq for e in store.iter_events(from_seq, to_seq, limit=limit,
                                                     filters=filters)]

        assert seqs(session_id="S-A") == [1, 2, 4]
        assert seqs(session_id="S-B") == [3, 5]
        assert seqs(task_id="I-1") == [2, 4, 6]
        assert seqs(item_id="I-2") == [3, 5]
        assert seqs(actor="Codex") == [4, 6]
        assert seqs(event_type="PLAN_ITEM_STATE_CHANGED") == [4, 6]
        assert seqs(plan_id="P-1") == [1, 2, 3, 4, 5, 6]
        assert seqs(command_id="c-5") == [5]
        assert seqs(session_id="S-A", actor="Liam") == [1, 2]
        assert seqs(3, task_id="I-1") == [4, 6]
        assert seqs(1, 4, task_id="I-1") == [2, 4]
        assert seqs(task_id="I-1", limit=1) == [2]
        assert seqs(session_id="S-NONE") == []
        assert [e.seq for e in store.iter_events(filters={})] == [1, 2, 3, 4, 5, 6]

    def test_iter_events_refuses_unknown_filter_columns(self, store: Store) -> None:
        self.append(store, varied_events())
        for column in ("payload", "hash", "seq; DROP TABLE events", "nope"):
            with pytest.raises(ValueError, match="cannot filter"):
                list(store.iter_events(filters={column: "x"}))
        assert store.head()[0] == 6

    def test_count_by(self, store: Store) -> None:
        self.append(store, varied_events())
        assert store.count_by("event_type") == {
            "PLAN_CONFLICT_DETECTED": 1, "PLAN_CREATED": 1, "PLAN_ITEM_ADDED": 2,
            "PLAN_ITEM_STATE_CHANGED": 2}
        assert store.count_by("actor") == {"Codex": 2, "Liam": 2, "Mary": 2}
        assert store.count_by("session_id") == {"S-A": 3, "S-B": 2, "S-C": 1}
        assert list(store.count_by("session_id")) == ["S-A", "S-B", "S-C"]
        with pytest.raises(ValueError, match="cannot count"):
            store.count_by("payload")

    def test_command_records(self, store: Store) -> None:
        with store.transaction() as tx:
            tx.put_command(record("c-1", seq=None, status="REJECTED"))
            tx.put_command(record("c-2", seq=None, status="CONFLICT"))
        assert store.get_command("c-1") == record("c-1", seq=None, status="REJECTED")
        assert store.get_command("c-2") == record("c-2", seq=None, status="CONFLICT")
        assert store.get_command("c-3") is None


    # --- read snapshots ---------------------------------------------------------------

    def test_a_read_snapshot_holds_while_another_connection_writes(
            self, store: Store, writer: Store) -> None:
        self.seed(store)
        before_state, before_head = store.load_state(), store.head()
        with store.read_snapshot() as snap:
            with writer.transaction() as tx:  # committed while the snapshot is open
                tx.insert_plan(plan("P-2"))
                tx.update_item(item("I-1", state="DONE", version=2))
                tx.append_event(make_event(2, before_head[1]))
                tx.put_command(record("c-2", seq=2))
            assert snap.head() == before_head
            assert snap.event_count() == 1
            assert [row[0] for rows in snap.event_rows() for row in rows] == [1]
            assert snap.newest_command_seq() == 1
            assert snap.load_state() == before_state
            assert [row[0] for row in snap.table_rows(PLANS)] == ["P-1"]
        assert store.head()[0] == 2  # outside it, the commit is there
        assert store.snapshot()[:2] == store.head()
        assert store.snapshot()[2] == store.load_state() != before_state

    def test_a_read_snapshot_reads_what_the_store_reads(self, store: Store) -> None:
        events = varied_events()
        self.append(store, events)
        with store.transaction() as tx:
            self.unsorted_rows(tx)
            tx.put_command(record("c-9", seq=None, status="REJECTED"))
            tx.put_command(record("c-4", seq=4))
            tx.put_command(record("c-8", seq=None, status="REJECTED"))
        rows = [event_row(e) for e in events]
        with store.read_snapshot() as snap:
            assert snap.head() == store.head() == (6, events[-1].hash)
            assert (snap.first_seq(), snap.event_count()) == (1, 6)
            assert [r for batch in snap.event_rows() for r in batch] == rows
            assert [r for batch in snap.event_rows(2, 4) for r in batch] == rows[2:4]
            assert [r for batch in snap.event_rows(5) for r in batch] == rows[5:]
            assert list(snap.event_rows(6)) == []
            short = [r for batch in snap.event_rows(1, 3, short=True) for r in batch]
            assert short == [(e.seq, e.hash, e.ts, e.event_type, e.payload)
                             for e in events[1:3]]
            assert snap.last_rows(2) == [rows[5], rows[4]]
            assert snap.last_rows(10) == rows[::-1]
            assert snap.row_upto(3) == (3, events[2].hash)
            assert snap.row_upto(99) == (6, events[5].hash)
            assert snap.row_upto(0) is None
            assert snap.newest_command_seq() == 4
            assert [tuple(r) for r in snap.table_rows(PLANS)] == [
                (p.plan_id, p.title, p.owner_agent, p.status, p.version, p.created_ts,
                 p.updated_ts) for p in store.list_plans()]
            assert [r[0] for r in snap.table_rows(ITEMS)] == [
                i.item_id for i in store.list_items()]
            assert [r[0] for r in snap.table_rows(LINKS)] == [
                lk.link_id for lk in store.list_links()]
            assert snap.load_state() == store.load_state()

    def test_a_read_snapshot_of_an_empty_store(self, store: Store) -> None:
        with store.read_snapshot() as snap:
            assert snap.head() == (0, GENESIS_HASH)
            assert (snap.first_seq(), snap.event_count()) == (None, 0)
            assert list(snap.event_rows()) == []
            assert snap.last_rows(2) == []
            assert snap.row_upto(5) is None
            assert snap.newest_command_seq() is None
            assert snap.load_state() == State()

    # --- integrity, maintenance, the factory ------------------------------------------

    def test_a_sound_store_passes_its_integrity_check(self, store: Store) -> None:
        assert store.integrity_check() is None
        self.seed(store)
        assert store.integrity_check() is None

    def test_maintenance_can_run_any_time_and_says_what_it_did(self, store: Store) -> None:
        assert isinstance(json.dumps(store.maintenance()), str)
        self.seed(store)
        state, head = store.load_state(), store.head()
        done = store.maintenance()
        assert isinstance(done, dict) and json.loads(json.dumps(done)) == done
        assert (store.load_state(), store.head()) == (state, head)

    def test_the_factory_opens_the_store_again_from_its_locator(self, store: Store) -> None:
        self.seed(store)
        locator = store.locator
        assert pickle.loads(pickle.dumps(locator)) == locator  # for a helper process
        assert store.describe() == locator.describe() and store.describe()
        if not self.reopenable:
            with pytest.raises(CoordinatorError) as refused:
                open_store(locator, readonly=True)
            assert refused.value.code == "DB_UNSUPPORTED"
            return
        with open_store(locator, readonly=True) as again:
            assert again.locator == locator
            assert again.head() == store.head()
            assert again.load_state() == store.load_state()
            with pytest.raises(StorageError), again.transaction() as tx:  # read-only
                tx.insert_plan(plan("P-9"))
        assert store.get_plan("P-9") is None

    def test_one_writer_lease_per_store(self, store: Store) -> None:
        """Every writer the factory opens holds the store's writer lease until it closes:
        a second writer is refused with DB_LOCKED naming the first, a reader is not; the
        holder is who the first said it was; after the close the lease is free again."""
        locator = store.locator
        if not self.reopenable:
            with pytest.raises(CoordinatorError) as refused:
                open_store(locator)
            assert refused.value.code == "DB_UNSUPPORTED"
            return
        first = open_store(locator, role="first")
        try:
            assert first.writer is not None and first.writer["role"] == "first"
            with pytest.raises(StorageError) as refused:
                open_store(locator, role="second")
            assert refused.value.code == "DB_LOCKED"
            assert refused.value.details["holder"] == first.writer
            assert "first" in refused.value.message
            with open_store(locator, readonly=True) as reader:
                assert reader.writer is None and reader.head() == first.head()
            self.seed(first)  # the holder writes as usual
        finally:
            first.close()
        with open_store(locator, role="third") as again:
            assert again.writer is not None and again.writer["role"] == "third"
            assert again.head() == store.head()


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        s = SqliteStore(init_db(tmp_path / "data" / "ledger.db"))
        yield s
        s.close()

    def test_committed_data_survives_reopening(self, tmp_path: Path) -> None:
        path = init_db(tmp_path / "data" / "reopen.db")
        with SqliteStore(path) as s:
            self.seed(s)
            state, head = s.load_state(), s.head()
        with SqliteStore(path, readonly=True) as s:
            assert s.load_state() == state
            assert s.head() == head
            assert s.get_command("c-1") == record("c-1")


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store(self, pg_db: PgUrl) -> Iterator[Store]:
        s = open_pg_store(pg_db)
        yield s
        s.close()


class TestMemoryStore(StoreContract):
    reopenable = False

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        s = MemoryStore()
        yield s
        s.close()


# --- the factory: what the user typed --------------------------------------------------


@pytest.mark.parametrize(("url", "shown", "name"), [
    ("postgresql://ledger@localhost:5432/ledger", "postgresql://ledger@localhost:5432/ledger",
     "postgresql://ledger@localhost:5432/ledger"),
    ("postgres://u:secret@db.example/led%20ger?sslmode=disable&password=secret2",
     "postgres://u:***@db.example/led%20ger?sslmode=disable&password=***",
     "postgres://u@db.example/led%20ger"),
    ("POSTGRESQL://host/db", "postgresql://host/db", "postgresql://host/db")])
def test_the_factory_locates_a_postgresql_url_without_showing_its_password(
        sandbox: Path, url: str, shown: str, name: str) -> None:
    locator = locate(url)
    assert locator.scheme == "postgresql"
    assert locator.address == url.replace("POSTGRESQL:", "postgresql:")  # libpq's case
    assert (locator.describe(), locator.name) == (shown, name)
    assert "secret" not in repr(locator)
    assert not (sandbox / "data").exists()  # nothing created, nothing touched


@pytest.mark.parametrize("url", ["mysql://host/db", "sqlite:///tmp/x.db", "file://x.db",
                                 "memory://x"])
def test_the_factory_refuses_an_unknown_scheme(sandbox: Path, url: str) -> None:
    with pytest.raises(CoordinatorError) as refused:
        open_store(url, create=True)
    assert refused.value.code == "DB_UNSUPPORTED"
    assert "unknown database scheme" in refused.value.message
    assert not (sandbox / "data").exists()


def test_the_factory_keeps_the_sandbox_rules_for_paths(sandbox: Path) -> None:
    for path in ("/tmp/x.db", "data/../x.db", "scenarios/x.db", "x.db"):
        with pytest.raises(CoordinatorError) as refused:
            open_store(path, create=True)
        assert refused.value.code == "PATH_NOT_ALLOWED", path
    assert not (sandbox / "data").exists()
    assert locate(None).describe() == DEFAULT_DB
    made = initialise_store("data/new.db")
    assert (made.created, made.locator.describe()) == (True, "data/new.db")
    assert made.locator.address == str((sandbox / "data" / "new.db").resolve())
    assert initialise_store("data/new.db").created is False
    with open_store("data/new.db") as store:
        assert store.describe() == "data/new.db"
        assert store.head() == (0, GENESIS_HASH)
    with pytest.raises(StorageError) as missing:
        open_store("data/other.db")
    assert missing.value.code == "DB_NOT_INITIALISED"
