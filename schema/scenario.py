"""Scenario files (the format): a scripted list of plan commands with the outcome each
expects. Applying them is :mod:`ledger.plans.scenario`.

File shape (JSON; schema/scenario.schema.json is generated from these models)::

    {"scenario_id": "...", "session_id": "...", "description": "...",
     "steps": [{"action": "CREATE_PLAN", "actor": "Liam", ..., "expect": "APPLIED"}]}

A step is a command (see :mod:`schema.commands`) without ``session_id`` (taken from the
scenario) and with ``command_id`` defaulting to ``<scenario_id>:<step index>``, so
applying a file twice writes nothing the second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, create_model

from schema.commands import COMMAND_TYPES, Command, parse_command
from schema.errors import ErrorCode, SandboxError, ValidationError, validation_error_from_pydantic
from schema.ids import Id

Expect = Literal["APPLIED", "CONFLICT", "REJECTED"]
MAX_SCENARIO_BYTES: Final = 5 * 1024 * 1024
MAX_STEPS: Final = 10_000
STEP_EXTRAS: Final = ("expect", "note")


class ScenarioHeader(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    scenario_id: Id
    session_id: Id
    description: str | None = None
    steps: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_STEPS)]


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    expect: Expect
    command: Command


@dataclass(frozen=True, slots=True)
class Scenario:
    scenario_id: str
    session_id: str
    description: str | None
    steps: tuple[Step, ...]


def parse_scenario(data: Any) -> Scenario:
    """Validate a decoded scenario; every error names its location (``steps.3.title``)."""
    if not isinstance(data, dict):
        raise ValidationError(ErrorCode.INVALID_TYPE, "a scenario must be a JSON object")
    try:
        header = ScenarioHeader.model_validate(data)
    except pydantic.ValidationError as exc:
        raise validation_error_from_pydantic(exc) from None
    steps = []
    for i, raw in enumerate(header.steps):
        where = f"steps.{i}"
        body = dict(raw)
        expect = body.pop("expect", "APPLIED")
        body.pop("note", None)
        if expect not in ("APPLIED", "CONFLICT", "REJECTED"):
            raise ValidationError(ErrorCode.INVALID_VALUE,
                                  f"{where}.expect: must be APPLIED, CONFLICT or REJECTED",
                                  field=f"{where}.expect")
        if "session_id" in body:
            raise ValidationError(ErrorCode.UNKNOWN_FIELD,
                                  f"{where}.session_id: set session_id once, at the top",
                                  field=f"{where}.session_id")
        body.setdefault("command_id", f"{header.scenario_id}:{i}")
        body["session_id"] = header.session_id
        steps.append(Step(i, expect, parse_command(body, prefix=where)))
    return Scenario(header.scenario_id, header.session_id, header.description, tuple(steps))


def load_scenario(path: Path) -> Scenario:
    size = path.stat().st_size
    if size > MAX_SCENARIO_BYTES:
        raise SandboxError(ErrorCode.FILE_TOO_LARGE,
                           f"{path.name}: {size} bytes, the limit is {MAX_SCENARIO_BYTES}")
    try:
        data = json.loads(path.read_bytes())
    except UnicodeDecodeError as exc:
        raise ValidationError(ErrorCode.INVALID_JSON, f"{path.name}: not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValidationError(ErrorCode.INVALID_JSON,
                              f"{path.name}: line {exc.lineno} column {exc.colno}: {exc.msg}",
                              details={"line": exc.lineno, "column": exc.colno}) from None
    except RecursionError:  # e.g. 100 000 nested brackets: refuse, do not crash
        raise ValidationError(ErrorCode.INVALID_JSON,
                              f"{path.name}: nested too deeply to be a scenario") from None
    try:
        return parse_scenario(data)
    except RecursionError:  # deep but parseable nesting inside a step
        raise ValidationError(ErrorCode.INVALID_JSON,
                              f"{path.name}: nested too deeply to be a scenario") from None


def json_schema() -> dict[str, Any]:
    """JSON Schema of a scenario file, derived from the command models."""
    variants: list[Any] = [
        create_model(
            f"{model.__name__}Step",
            __base__=model,
            command_id=(Id | None, Field(None, description="default: <scenario_id>:<index>")),
            expect=(Expect, "APPLIED"),
            note=(str | None, None),
        )
        for model in COMMAND_TYPES.values()
    ]
    step: Any = variants[0]
    for variant in variants[1:]:
        step = step | variant
    steps_type: Any = Annotated[list[Annotated[step, Field(discriminator="action")]],
                                Field(min_length=1, max_length=MAX_STEPS)]
    model = create_model(
        "ScenarioFile",
        __config__=ConfigDict(extra="forbid", title="Scenario file"),
        scenario_id=(Id, ...),
        session_id=(Id, ...),
        description=(str | None, None),
        steps=(steps_type, ...),
    )
    schema = model.model_json_schema()
    for definition in schema.get("$defs", {}).values():  # session_id comes from the top
        definition.get("properties", {}).pop("session_id", None)
        if "session_id" in definition.get("required", []):
            definition["required"].remove("session_id")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


if __name__ == "__main__":  # regenerate: python -m schema.scenario > schema/scenario.schema.json
    print(json.dumps(json_schema(), indent=2))
