"""SQL text both SQL backends share: column lists and the orders of the listings.

The ledger's tables have the same columns on SQLite and PostgreSQL, and the listings
the same order (PostgreSQL's text columns are ``COLLATE "C"``, so ``ORDER BY`` sorts
byte-wise there as SQLite's BINARY does): the backends differ in placeholders and
types, not in these.
"""

from __future__ import annotations

from typing import Final

from schema.vocabulary import EVENT_COLUMNS, ITEM_COLUMNS, LINK_COLUMNS, PLAN_COLUMNS

PLAN_COLS: Final = ", ".join(PLAN_COLUMNS)
ITEM_COLS: Final = ", ".join(ITEM_COLUMNS)
LINK_COLS: Final = ", ".join(LINK_COLUMNS)
EVENT_COLS: Final = ", ".join(EVENT_COLUMNS)
COMMAND_COLS: Final = "command_id, fingerprint, status, seq, outcome, ts"
#: what the replay alone needs: ledger.log.replay.SHORT_COLUMNS, then the payload
SHORT_COLS: Final = "seq, hash, ts, event_type, payload"
#: the orders of list_plans / list_items / list_links (Store.load_state)
TABLE_SQL: Final = (f"SELECT {PLAN_COLS} FROM plans ORDER BY plan_id",
                    f"SELECT {ITEM_COLS} FROM plan_items ORDER BY plan_id, item_id",
                    f"SELECT {LINK_COLS} FROM plan_links ORDER BY link_id")
#: (seq, hash) of the last event
HEAD_SQL: Final = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
