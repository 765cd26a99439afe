-- L1: the immutable, SHA-256 hash-chained event log, and the command records that make
-- re-sent commands idempotent. Both are append-only in the database itself.
-- The hash preimage is documented in docs/HASH_CHAIN.md.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY CHECK (seq >= 1),  -- 1, 2, 3, ... no gaps
    event_id   TEXT NOT NULL UNIQUE,
    ts         TEXT NOT NULL,                          -- ISO 8601 UTC, e.g. 2026-11-21T04:45:10.123456Z
    event_type TEXT NOT NULL,
    session_id TEXT NOT NULL,
    task_id    TEXT,                                   -- the item id for item events, else the plan id
    actor      TEXT NOT NULL,
    plan_id    TEXT,
    item_id    TEXT,
    command_id TEXT,
    payload    TEXT NOT NULL,                          -- canonical JSON object
    prev_hash  TEXT NOT NULL,                          -- hash of seq-1, or 64 zeros for seq 1
    hash       TEXT NOT NULL                           -- sha256 hex of the preimage
);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session_id, seq);
CREATE INDEX IF NOT EXISTS events_by_task ON events (task_id, seq);
CREATE INDEX IF NOT EXISTS events_by_plan ON events (plan_id, seq);

CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE is not allowed');
END;

CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE is not allowed');
END;

CREATE TRIGGER IF NOT EXISTS events_append_in_order BEFORE INSERT ON events
WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq), 0) + 1 FROM events)
  OR NEW.prev_hash IS NOT COALESCE(
        (SELECT hash FROM events ORDER BY seq DESC LIMIT 1),
        '0000000000000000000000000000000000000000000000000000000000000000')
BEGIN
    SELECT RAISE(ABORT, 'events must be appended at seq = head + 1 with prev_hash = head hash');
END;

CREATE TABLE IF NOT EXISTS commands (
    command_id  TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,                         -- sha256 of the command's canonical content
    status      TEXT NOT NULL CHECK (status IN ('APPLIED', 'CONFLICT', 'REJECTED')),
    seq         INTEGER,                               -- the event it wrote, if any
    outcome     TEXT NOT NULL,                         -- the result first returned (JSON)
    ts          TEXT NOT NULL
);

CREATE TRIGGER IF NOT EXISTS commands_no_update BEFORE UPDATE ON commands
BEGIN
    SELECT RAISE(ABORT, 'command records are append-only: UPDATE is not allowed');
END;

CREATE TRIGGER IF NOT EXISTS commands_no_delete BEFORE DELETE ON commands
BEGIN
    SELECT RAISE(ABORT, 'command records are append-only: DELETE is not allowed');
END;
