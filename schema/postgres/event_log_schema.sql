-- L1, PostgreSQL edition of schema/event_log_schema.sql: the immutable, SHA-256
-- hash-chained event log and the command records, append-only in the database itself.
-- The hash preimage is documented in docs/HASH_CHAIN.md. Text compares byte-wise
-- (COLLATE "C"), integers are BIGINT: see plan_schema.sql.
--
-- Where SQLite has row triggers, these are statement triggers: UPDATE, DELETE and
-- TRUNCATE of events or commands are refused whatever rows they touch, and every INSERT
-- into events is checked once, after the statement, over all the rows it added (one
-- check per group commit, not one per event).

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT COLLATE "C" NOT NULL
);

CREATE TABLE IF NOT EXISTS events (
    seq        BIGINT PRIMARY KEY CHECK (seq >= 1),        -- 1, 2, 3, ... no gaps
    event_id   TEXT COLLATE "C" NOT NULL UNIQUE,
    ts         TEXT COLLATE "C" NOT NULL,                  -- ISO 8601 UTC text, as hashed
    event_type TEXT COLLATE "C" NOT NULL,
    session_id TEXT COLLATE "C" NOT NULL,
    task_id    TEXT COLLATE "C",
    actor      TEXT COLLATE "C" NOT NULL,
    plan_id    TEXT COLLATE "C",
    item_id    TEXT COLLATE "C",
    command_id TEXT COLLATE "C",
    payload    TEXT COLLATE "C" NOT NULL,                  -- canonical JSON object, as hashed
    prev_hash  TEXT COLLATE "C" NOT NULL,
    hash       TEXT COLLATE "C" NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session_id, seq);
CREATE INDEX IF NOT EXISTS events_by_task ON events (task_id, seq);
CREATE INDEX IF NOT EXISTS events_by_plan ON events (plan_id, seq);

CREATE TABLE IF NOT EXISTS commands (
    command_id  TEXT COLLATE "C" PRIMARY KEY,
    fingerprint TEXT COLLATE "C" NOT NULL,
    status      TEXT COLLATE "C" NOT NULL CHECK (status IN ('APPLIED', 'CONFLICT', 'REJECTED')),
    seq         BIGINT,                                    -- the event it wrote, if any
    outcome     TEXT COLLATE "C" NOT NULL,                 -- the result first returned (JSON)
    ts          TEXT COLLATE "C" NOT NULL
);
-- the start-up check reads the newest record's seq (SQLite: by rowid)
CREATE INDEX IF NOT EXISTS commands_by_seq ON commands (seq);

CREATE OR REPLACE FUNCTION l3_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% are append-only: % is not allowed', TG_ARGV[0], TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE OR REPLACE FUNCTION l3_events_in_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- every new row links to the row before it (seq 1: to the genesis hash), and no
    -- row comes after the new ones: together with the primary key, the rows were
    -- appended at seq = head + 1, head + 2, ... with prev_hash = the hash before
    IF EXISTS (
        SELECT 1 FROM appended AS n LEFT JOIN events AS e ON e.seq = n.seq - 1
        WHERE n.prev_hash IS DISTINCT FROM CASE WHEN n.seq = 1
            THEN '0000000000000000000000000000000000000000000000000000000000000000'
            ELSE e.hash END
    ) OR EXISTS (
        SELECT 1 FROM events WHERE seq > (SELECT max(seq) FROM appended)
    ) THEN
        RAISE EXCEPTION 'events must be appended at seq = head + 1 with prev_hash = head hash'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION l3_refuse_change('events');
CREATE OR REPLACE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION l3_refuse_change('events');
CREATE OR REPLACE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION l3_refuse_change('events');
CREATE OR REPLACE TRIGGER events_append_in_order AFTER INSERT ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION l3_events_in_order();

CREATE OR REPLACE TRIGGER commands_no_update BEFORE UPDATE ON commands
    FOR EACH STATEMENT EXECUTE FUNCTION l3_refuse_change('command records');
CREATE OR REPLACE TRIGGER commands_no_delete BEFORE DELETE ON commands
    FOR EACH STATEMENT EXECUTE FUNCTION l3_refuse_change('command records');
CREATE OR REPLACE TRIGGER commands_no_truncate BEFORE TRUNCATE ON commands
    FOR EACH STATEMENT EXECUTE FUNCTION l3_refuse_change('command records');
