"""Gateway step 2: normalise a request before it is validated.

Forgiving where intent is unambiguous, strict everywhere else: string ids are trimmed,
enum values and the message type / action are upper-cased (``state-change`` ->
``STATE_CHANGE``), and a COMMAND without a session id gets ``<actor>-default``. Types
are never coerced: ``"3"`` stays a string and is refused as INVALID_TYPE later.
"""

from __future__ import annotations

from typing import Any, Final

ID_FIELDS: Final = frozenset({"plan_id", "item_id", "link_id", "from_item_id", "to_item_id",
                              "assigned_to", "owner_agent", "to"})
ENUM_FIELDS: Final = frozenset({"action", "kind", "state", "status", "link_type"})
TEXT_FIELDS: Final = frozenset({"title"})


def _enum(value: Any) -> Any:
    return value.strip().upper().replace("-", "_") if isinstance(value, str) else value


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def normalise_fields(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in ENUM_FIELDS:
            out[key] = _enum(value)
        elif key in ID_FIELDS or key in TEXT_FIELDS:
            out[key] = _strip(value)
        elif key == "change" and isinstance(value, dict):
            out[key] = normalise_fields(value)
        else:
            out[key] = value
    return out


def normalise(header: dict[str, Any], body: dict[str, Any]) -> tuple[dict[str, Any],
                                                                     dict[str, Any]]:
    header = {k: _strip(v) for k, v in header.items()}
    if isinstance(header.get("type"), str):
        header["type"] = _enum(header["type"])
    if header.get("type") == "COMMAND":
        if not header.get("session_id") and isinstance(header.get("actor"), str):
            header["session_id"] = f"{header['actor']}-default"
        if isinstance(body.get("command"), dict):
            body = {**body, "command": normalise_fields(body["command"])}
    elif header.get("type") == "SEND":
        body = {**body, "to": _strip(body.get("to"))} if "to" in body else body
    elif header.get("type") == "QUERY" and isinstance(body.get("query"), str):
        body = {**body, "query": body["query"].strip().lower().replace("_", "-")}
    return header, body
