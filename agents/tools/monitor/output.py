"""How the monitor prints: JSON lines (the stored row, ``payload`` parsed; alerts as
objects) or a table for a terminal. Pure functions of an event row or an alert, plus
:class:`Printer`, which writes them to the CLI's streams."""

from __future__ import annotations

import contextlib
import json
from typing import Any, Final, TextIO

from agents.tools.monitor.follower import CHAIN_BROKEN, CHECKPOINT_MISMATCH, Alert


def event_line(row: dict[str, Any]) -> dict[str, Any]:
    """The printed form of an event: the row with ``payload`` parsed."""
    out = dict(row)
    with contextlib.suppress(KeyError, TypeError, ValueError):
        out["payload"] = json.loads(row["payload"])
    return out


def _short(value: Any, width: int) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "~"


def summarise(row: dict[str, Any]) -> str:
    """A few words on what an event did, for the table view."""
    payload = event_line(row).get("payload")
    if not isinstance(payload, dict):
        return ""
    raw_change = payload.get("change")
    change: dict[str, Any] = raw_change if isinstance(raw_change, dict) else {}
    kind = row.get("event_type")
    version = f"v{payload.get('new_version')}" if payload.get("new_version") else ""
    if kind == "PLAN_ITEM_STATE_CHANGED":
        before = (payload.get("previous") or {}).get("state", "?")
        return f"{before} -> {change.get('state')} {version}"
    if kind == "PLAN_CONFLICT_DETECTED":
        return (f"CONFLICT {payload.get('action')}: expected v{payload.get('expected_version')}"
                f", current v{payload.get('current_version')}")
    if kind == "PLAN_LINK_ADDED":
        return f"{change.get('from_item_id')} {change.get('link_type')} {change.get('to_item_id')}"
    if kind in ("PLAN_CREATED", "PLAN_ITEM_ADDED"):
        who = change.get("assigned_to") or change.get("owner_agent")
        return f"{change.get('title')!r}" + (f" @{who}" if who else "") + f" {version}"
    fields = ", ".join(f"{k}={v}" for k, v in change.items())
    return f"{fields} {version}".strip()


TABLE_HEADER: Final = (f"{'SEQ':>6}  {'TIME':12}  {'TYPE':23}  {'ACTOR':10}  {'PLAN':14}  "
                       f"{'ITEM':10}  SUMMARY")


def table_line(row: dict[str, Any]) -> str:
    ts = str(row.get("ts") or "")
    clock = ts[11:23] if len(ts) >= 23 else ts
    return (f"{row.get('seq', '?'):>6}  {clock:12}  {_short(row.get('event_type'), 23):23}  "
            f"{_short(row.get('actor'), 10):10}  {_short(row.get('plan_id'), 14):14}  "
            f"{_short(row.get('item_id'), 10):10}  {summarise(row)}")


def alert_table_line(alert: Alert) -> str:
    return f"{'!!':>6}  {alert.alert}: {alert.message}"


class Printer:
    """Writes events and alerts to ``out`` as ``fmt`` says (json or table); every alert
    also goes to ``err``, loudly for a broken chain or checkpoint."""

    def __init__(self, fmt: str, out: TextIO, err: TextIO) -> None:
        self.fmt, self.out, self.err = fmt, out, err

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def json(self, obj: dict[str, Any]) -> None:
        self.line(json.dumps(obj))

    def event(self, row: dict[str, Any]) -> None:
        if self.fmt == "table":
            self.line(table_line(row))
        else:
            self.json(event_line(row))

    def alert(self, alert: Alert) -> None:
        if self.fmt == "table":
            self.line(alert_table_line(alert))
        else:
            self.json(alert.to_dict())
        loud = "!!! " if alert.alert in (CHAIN_BROKEN, CHECKPOINT_MISMATCH) else ""
        self.err.write(f"monitor: {loud}{alert.alert}: {alert.message}\n")
        self.err.flush()
