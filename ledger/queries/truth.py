"""Truth sync: a read-only snapshot of the runtime truth as truth.json and truth.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ledger.log.chain import canonical_json
from ledger.log.verify import verify_store
from ledger.queries.reads import summary
from ledger.storage.base import Store
from schema.clock import utc_now


def snapshot(store: Store) -> dict[str, Any]:
    verify = verify_store(store)
    plans = []
    for plan in store.list_plans():
        plans.append({**plan.to_dict(),
                      "items": [i.to_dict() for i in store.list_items(plan.plan_id)],
                      "links": [lk.to_dict() for lk in store.list_links(plan.plan_id)]})
    counts = summary(store)
    return {
        "generated_ts": utc_now(),
        "chain": {"status": verify["chain_status"], "events": verify["events"],
                  "head_seq": verify["head_seq"], "head_hash": verify["head_hash"],
                  "mismatches": verify["mismatches"]},
        "event_counts": {"by_event_type": counts["by_event_type"],
                         "by_actor": counts["by_actor"],
                         "by_session": counts["by_session"]},
        "plans": plans,
    }


def render_markdown(snap: dict[str, Any]) -> str:
    chain = snap["chain"]
    lines = [
        "# Runtime truth snapshot", "",
        f"- generated: {snap['generated_ts']}",
        f"- chain: **{chain['status']}**, {chain['events']} events, head "
        f"`{chain['head_hash']}`",
        "", "## Event counts", "", "| event type | count |", "| --- | --- |",
    ]
    lines += [f"| {k} | {v} |" for k, v in snap["event_counts"]["by_event_type"].items()]
    for plan in snap["plans"]:
        lines += ["", f"## {plan['plan_id']}: {plan['title']}", "",
                  f"status {plan['status']}, version {plan['version']}, owner "
                  f"{plan['owner_agent']}", "",
                  "| item | title | state | version | assigned to |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {i['item_id']} | {i['title']} | {i['state']} | {i['version']} | "
                  f"{i['assigned_to'] or ''} |" for i in plan["items"]]
    return "\n".join(lines) + "\n"


def write_snapshot(store: Store, out_dir: Path) -> dict[str, Any]:
    snap = snapshot(store)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "truth.json").write_text(json.dumps(json.loads(canonical_json(snap)), indent=2)
                                        + "\n")
    (out_dir / "truth.md").write_text(render_markdown(snap))
    return snap
