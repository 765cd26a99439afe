"""L2 queries: plans, items, sessions, timelines and summaries, as JSON-ready dicts."""

from __future__ import annotations

from typing import Any

from ledger.storage.base import Store
from schema.errors import ErrorCode, RejectedError


def list_plans(store: Store) -> dict[str, Any]:
    return {"plans": [p.to_dict() for p in store.list_plans()]}


def show_plan(store: Store, plan_id: str) -> dict[str, Any]:
    plan = store.get_plan(plan_id)
    if plan is None:
        raise RejectedError(ErrorCode.UNKNOWN_PLAN, f"no plan {plan_id!r}", field="plan_id")
    return {"plan": plan.to_dict(),
            "items": [i.to_dict() for i in store.list_items(plan_id)],
            "links": [lk.to_dict() for lk in store.list_links(plan_id)]}


def list_items(store: Store, plan_id: str) -> dict[str, Any]:
    if store.get_plan(plan_id) is None:
        raise RejectedError(ErrorCode.UNKNOWN_PLAN, f"no plan {plan_id!r}", field="plan_id")
    return {"plan_id": plan_id, "items": [i.to_dict() for i in store.list_items(plan_id)]}


def timeline(store: Store, column: str, value: str) -> dict[str, Any]:
    """Every event whose ``column`` equals ``value``, in seq order."""
    return {"events": [e.to_dict() for e in store.iter_events(filters={column: value})]}


def list_sessions(store: Store) -> dict[str, Any]:
    sessions: dict[str, dict[str, Any]] = {}
    for ev in store.iter_events():
        s = sessions.get(ev.session_id)
        if s is None:
            s = sessions[ev.session_id] = {
                "session_id": ev.session_id, "events": 0, "first_seq": ev.seq,
                "first_ts": ev.ts, "actors": set()}
        s["events"] += 1
        s["last_seq"], s["last_ts"] = ev.seq, ev.ts
        s["actors"].add(ev.actor)
    out = [dict(s, actors=sorted(s["actors"])) for s in sessions.values()]
    return {"sessions": out}


def summary(store: Store) -> dict[str, Any]:
    seq, head_hash = store.head()
    return {
        "events": seq, "head_hash": head_hash,
        "plans": len(store.list_plans()), "items": len(store.list_items()),
        "links": len(store.list_links()),
        "by_event_type": store.count_by("event_type"),
        "by_actor": store.count_by("actor"),
        "by_session": store.count_by("session_id"),
    }
