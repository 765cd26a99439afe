"""The monitor: follow the ledger's committed events through the broker, in seq order,
each exactly once, hash chain and signed checkpoints checked (zguide "Clone" pattern).

- :mod:`.follower`: the follow logic as a pure state machine (:class:`Follower`: order,
  gaps, duplicates, hash chain, checkpoints, silence), fed decoded messages and the
  clock, answering with actions; no sockets.
- :mod:`.pump`: :class:`EventFollower`, the SUB + DEALER socket pump around it, what
  tests and ``bin/run_scenario`` use in-process.
- :mod:`.output`: the printed forms (JSON lines, the table).
- :mod:`.cli`: ``bin/monitor``.
"""

from agents.tools.monitor.cli import Filters, main, run_monitor
from agents.tools.monitor.follower import (
    BROKER_RESUMED,
    BROKER_SILENT,
    CHAIN_BROKEN,
    CHECKPOINT_MISMATCH,
    DEFAULT_DEAD_AFTER,
    DEFAULT_REQUEST_TIMEOUT,
    LEDGER_DOWN,
    LEDGER_UP,
    MAX_PENDING,
    RETRY_DELAY,
    Action,
    Alert,
    Deliver,
    Follower,
    FollowStats,
    Note,
    Send,
)
from agents.tools.monitor.output import (
    TABLE_HEADER,
    Printer,
    alert_table_line,
    event_line,
    summarise,
    table_line,
)
from agents.tools.monitor.pump import DEFAULT_RCVHWM, SUB_BATCH, TICK, EventFollower, Item

__all__ = [
    "BROKER_RESUMED", "BROKER_SILENT", "CHAIN_BROKEN", "CHECKPOINT_MISMATCH",
    "DEFAULT_DEAD_AFTER", "DEFAULT_RCVHWM", "DEFAULT_REQUEST_TIMEOUT", "LEDGER_DOWN",
    "LEDGER_UP", "MAX_PENDING", "RETRY_DELAY", "SUB_BATCH", "TABLE_HEADER", "TICK", "Action",
    "Alert", "Deliver", "EventFollower", "Filters", "FollowStats", "Follower", "Item", "Note",
    "Printer", "Send", "alert_table_line", "event_line", "main", "run_monitor", "summarise",
    "table_line",
]
