"""L3 plan commands as pydantic models: what an agent may ask the ledger to do.

These are domain objects, shared by scenario files and by the wire protocol. Models are
strict (no "3" for 3) and closed (unknown fields are errors). Anything wrong with the
shape of a command becomes a :class:`ValidationError` naming the field; what the state
does not allow is decided later, by :mod:`ledger.plans`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from schema.errors import ErrorCode, ValidationError, validation_error_from_pydantic
from schema.ids import Id
from schema.vocabulary import ItemKind, ItemState, LinkType, PlanStatus


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL, SQLite's can: refused here, for both backends alike
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (U+0000)")
    return value


#: Free text (ids cannot hold control characters at all: schema.ids).
NoNul = AfterValidator(_no_nul)
Title = Annotated[str, StringConstraints(min_length=1, max_length=500), NoNul]
Version = Annotated[int, Field(ge=0, le=2**53)]
Priority = Annotated[int, Field(ge=-1_000_000, le=1_000_000)]


def _check_timestamp(value: str | None) -> str | None:
    if value is None:
        return None
    _no_nul(value)
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError("must be an ISO 8601 timestamp, e.g. 2026-01-31T12:00:00Z") from exc
    return value


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class PlanChange(_Model):
    title: Title | None = None
    status: PlanStatus | None = None
    owner_agent: Id | None = None


class ItemChange(_Model):
    title: Title | None = None
    kind: ItemKind | None = None
    priority: Priority | None = None
    assigned_to: Id | None = None
    due_ts: str | None = None

    _ts = field_validator("due_ts")(_check_timestamp)


class StateChangeBody(_Model):
    # Deliberately a plain string: an unknown state is INVALID_TRANSITION, decided after
    # the version check (a stale command is a conflict whatever else is wrong with it).
    state: Annotated[str, StringConstraints(min_length=1, max_length=64), NoNul]


class _Command(_Model):
    command_id: Id
    actor: Id
    session_id: Id

    def fingerprint_dict(self) -> dict[str, Any]:
        """Content that a re-sent command_id must match (defaults filled in; of
        ``change`` only the fields given). Equal to ``model_dump(mode="json")`` minus
        command_id, with change dumped ``exclude_unset`` (every field is a str, an int
        or None, so the field dicts are their JSON form); read directly, as this runs for
        every command (tests/test_group_commit.py checks the equality)."""
        out = {k: v for k, v in self.__dict__.items() if k != "command_id"}
        change = out.get("change")
        if isinstance(change, BaseModel):
            out["change"] = {k: change.__dict__[k] for k in change.model_fields_set}
        return out


class CreatePlan(_Command):
    action: Literal["CREATE_PLAN"] = "CREATE_PLAN"
    plan_id: Id
    title: Title
    owner_agent: Id | None = None  # defaults to the actor
    status: PlanStatus = "ACTIVE"


class UpdatePlan(_Command):
    action: Literal["UPDATE_PLAN"] = "UPDATE_PLAN"
    plan_id: Id
    expected_version: Version
    change: PlanChange


class AddItem(_Command):
    action: Literal["ADD_ITEM"] = "ADD_ITEM"
    plan_id: Id
    item_id: Id
    title: Title
    kind: ItemKind = "TASK"
    state: ItemState = "TODO"
    priority: Priority = 0
    assigned_to: Id | None = None
    due_ts: str | None = None

    _ts = field_validator("due_ts")(_check_timestamp)


class UpdateItem(_Command):
    action: Literal["UPDATE_ITEM"] = "UPDATE_ITEM"
    item_id: Id
    plan_id: Id | None = None
    expected_version: Version
    change: ItemChange


class StateChange(_Command):
    action: Literal["STATE_CHANGE"] = "STATE_CHANGE"
    item_id: Id
    plan_id: Id | None = None
    expected_version: Version
    change: StateChangeBody


class AddLink(_Command):
    action: Literal["ADD_LINK"] = "ADD_LINK"
    link_id: Id
    from_item_id: Id
    to_item_id: Id
    link_type: LinkType = "DEPENDS_ON"
    plan_id: Id | None = None


Command = CreatePlan | UpdatePlan | AddItem | UpdateItem | StateChange | AddLink

COMMAND_TYPES: Final[dict[str, type[_Command]]] = {
    "CREATE_PLAN": CreatePlan,
    "UPDATE_PLAN": UpdatePlan,
    "ADD_ITEM": AddItem,
    "UPDATE_ITEM": UpdateItem,
    "STATE_CHANGE": StateChange,
    "ADD_LINK": AddLink,
}
ACTIONS: Final = tuple(COMMAND_TYPES)

def parse_command(data: Mapping[str, Any] | Command, prefix: str = "") -> Command:
    """Validate one command given as a mapping (e.g. decoded JSON or msgpack)."""
    if isinstance(data, _Command):
        return data
    if not isinstance(data, Mapping):
        raise ValidationError(ErrorCode.INVALID_TYPE, "a command must be an object",
                              field=prefix or None)
    field = f"{prefix}.action" if prefix else "action"
    action = data.get("action")
    if action is None:
        raise ValidationError(ErrorCode.MISSING_FIELD, f"{field}: field required", field=field)
    model = COMMAND_TYPES.get(action) if isinstance(action, str) else None
    if model is None:
        raise ValidationError(
            ErrorCode.UNKNOWN_ACTION,
            f"{field}: unknown action {action!r}; expected one of {', '.join(ACTIONS)}",
            field=field,
        )
    try:
        return model.model_validate(dict(data))  # type: ignore[return-value]
    except pydantic.ValidationError as exc:
        raise validation_error_from_pydantic(exc, prefix) from None
