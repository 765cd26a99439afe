-- L0 state of L3 plans, PostgreSQL edition of schema/plan_schema.sql: the same tables,
-- columns, keys and checks. Every text column compares byte-wise (COLLATE "C", UTF8),
-- as SQLite's BINARY does, so every listing sorts the same on both backends; integers
-- are 64-bit (BIGINT), as SQLite's are. Every row here is derivable from the events
-- table: bin/verify_chain replays the log and compares.

CREATE TABLE IF NOT EXISTS plans (
    plan_id     TEXT COLLATE "C" PRIMARY KEY,
    title       TEXT COLLATE "C" NOT NULL,
    owner_agent TEXT COLLATE "C" NOT NULL,
    status      TEXT COLLATE "C" NOT NULL CHECK (status IN ('ACTIVE', 'ARCHIVED')),
    version     BIGINT NOT NULL CHECK (version >= 1),
    created_ts  TEXT COLLATE "C" NOT NULL,
    updated_ts  TEXT COLLATE "C" NOT NULL
);

CREATE TABLE IF NOT EXISTS plan_items (
    item_id     TEXT COLLATE "C" PRIMARY KEY,
    plan_id     TEXT COLLATE "C" NOT NULL REFERENCES plans (plan_id),
    kind        TEXT COLLATE "C" NOT NULL CHECK (kind IN ('TASK', 'NOTE', 'CHECK')),
    title       TEXT COLLATE "C" NOT NULL,
    state       TEXT COLLATE "C" NOT NULL
                CHECK (state IN ('TODO', 'IN_PROGRESS', 'DONE', 'BLOCKED')),
    priority    BIGINT NOT NULL,
    assigned_to TEXT COLLATE "C",
    due_ts      TEXT COLLATE "C",
    version     BIGINT NOT NULL CHECK (version >= 1),
    created_ts  TEXT COLLATE "C" NOT NULL,
    updated_ts  TEXT COLLATE "C" NOT NULL
);
CREATE INDEX IF NOT EXISTS plan_items_by_plan ON plan_items (plan_id, item_id);

CREATE TABLE IF NOT EXISTS plan_links (
    link_id      TEXT COLLATE "C" PRIMARY KEY,
    plan_id      TEXT COLLATE "C" NOT NULL REFERENCES plans (plan_id),
    from_item_id TEXT COLLATE "C" NOT NULL REFERENCES plan_items (item_id),
    to_item_id   TEXT COLLATE "C" NOT NULL REFERENCES plan_items (item_id),
    link_type    TEXT COLLATE "C" NOT NULL CHECK (link_type IN ('DEPENDS_ON', 'RELATED')),
    created_ts   TEXT COLLATE "C" NOT NULL,
    UNIQUE (from_item_id, to_item_id, link_type)
);
CREATE INDEX IF NOT EXISTS plan_links_by_plan ON plan_links (plan_id, link_id);
