-- L0 state of L3 plans. The spec pack's columns, plus plan_links.plan_id and
-- plan_links.created_ts. Every row here is derivable from the events table:
-- bin/verify_chain replays the log and compares.

CREATE TABLE IF NOT EXISTS plans (
    plan_id     TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    owner_agent TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('ACTIVE', 'ARCHIVED')),
    version     INTEGER NOT NULL CHECK (version >= 1),   -- increments on plan-level mutation
    created_ts  TEXT NOT NULL,                           -- ISO 8601 UTC
    updated_ts  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS plan_items (
    item_id     TEXT PRIMARY KEY,
    plan_id     TEXT NOT NULL REFERENCES plans (plan_id),
    kind        TEXT NOT NULL CHECK (kind IN ('TASK', 'NOTE', 'CHECK')),
    title       TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('TODO', 'IN_PROGRESS', 'DONE', 'BLOCKED')),
    priority    INTEGER NOT NULL,
    assigned_to TEXT,                                    -- agent id
    due_ts      TEXT,                                    -- ISO 8601, optional
    version     INTEGER NOT NULL CHECK (version >= 1),   -- increments on item mutation
    created_ts  TEXT NOT NULL,
    updated_ts  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS plan_items_by_plan ON plan_items (plan_id, item_id);

CREATE TABLE IF NOT EXISTS plan_links (
    link_id      TEXT PRIMARY KEY,
    plan_id      TEXT NOT NULL REFERENCES plans (plan_id),
    from_item_id TEXT NOT NULL REFERENCES plan_items (item_id),
    to_item_id   TEXT NOT NULL REFERENCES plan_items (item_id),
    link_type    TEXT NOT NULL CHECK (link_type IN ('DEPENDS_ON', 'RELATED')),
    created_ts   TEXT NOT NULL,
    UNIQUE (from_item_id, to_item_id, link_type)
);
CREATE INDEX IF NOT EXISTS plan_links_by_plan ON plan_links (plan_id, link_id);
