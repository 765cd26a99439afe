"""docs/PROTOCOL.md section 8 against the code: the error-code table lists exactly the
codes of schema.errors.ErrorCode, and every case of "Refusals, case by case" is sent to
a real broker and ledger and gets the documented code, field and status, from the
documented side (a broker whose ledger is down answers the broker's cases the same way
and the ledger's with LEDGER_UNAVAILABLE).

The requests are built from the table's own notation (see the doc); nothing here
restates a case, so a row added to the doc is checked without touching this file.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import pytest
import zmq

from agents.tools.launch import Bus, Child
from schema.errors import ErrorCode
from tests.support.buses import BusFactory
from tests.support.docs import read, section, tables
from tests.support.helpers import ROOT
from tests.support.sockets import Context

PROTOCOL: Final = b"L3BUS/1"
TIMEOUT: Final = 10.0
NO_FIELD: Final = "\N{EN DASH}"  # what the doc's table writes for "no field"
DOC: Final = read("PROTOCOL.md")
CODES_SECTION: Final = section(DOC, "8. Error codes")
CODE_TABLE: Final = {row["code"]: row for row in tables(CODES_SECTION)[0]}
CASES_SECTION: Final = section(DOC, "Refusals, case by case")
(CASE_ROWS,) = tables(CASES_SECTION)
#: Sent on the wire but not in the case table (they depend on the bus's state), and
#: where each is provoked instead; checked to mention the code.
ELSEWHERE: Final = {
    "LEDGER_UNAVAILABLE": "tests/broker/test_protocol_doc.py",  # the walk with no ledger
    "BUSY": "tests/bus/test_bus_scenario.py",
    "DB_ERROR": "tests/ledger/test_damaged_db.py",
    "DB_DAMAGED": "tests/broker/test_broker_batches.py",
    "ACTOR_MISMATCH": "tests/broker/test_curve.py",
    "DB_CONNECTION_LOST": "tests/ledger/test_postgres_faults.py",
    "DB_READ_ONLY": "tests/ledger/test_postgres_faults.py",
}
#: ... and those no test provokes on the wire, with the reason.
NOT_PROVOKED: Final = {
    "DB_BUSY": "needs another process holding the database's write lock past the "
               "ledger's busy timeout",
    "INTERNAL_ERROR": "a bug by definition: no input is meant to produce it",
}


@dataclass(frozen=True)
class Case:
    number: int
    name: str
    frames: list[bytes]
    request_id: str | None  # the id the reply must echo (shorthand rows)
    code: str
    field: str | None
    status: str | None
    by: str


def _frame(spec: Any) -> bytes:
    if isinstance(spec, str):
        match = re.fullmatch(r"0x([0-9a-f]+)(?:\*(\d+))?", spec)
        if match:
            return bytes.fromhex(match.group(1)) * int(match.group(2) or 1)
        return spec.encode()
    return msgpack.packb(spec, use_bin_type=True)  # type: ignore[no-any-return]


def parse_request(number: int, text: str) -> tuple[list[bytes], str | None]:
    """The doc's notation: a JSON list of frames, or ``TYPE [key=value ...] BODY``."""
    if text.startswith("["):
        return [_frame(f) for f in json.loads(text)], None
    match = re.fullmatch(r"([A-Z_]+)((?:\s+[a-z_]+=\S+)*)\s+(\{.*\})", text)
    assert match, f"row {number}: cannot read the request {text!r}"
    header: dict[str, Any] = {"type": match.group(1), "id": f"doc-{number}", "actor": "Liam",
                              "session_id": "S-DOC"}
    for pair in match.group(2).split():
        key, _, value = pair.partition("=")
        header[key] = None if value == "nil" else value
    body = json.loads(match.group(3))
    return [PROTOCOL, _frame(header), _frame(body)], header["id"]


def _cases() -> list[Case]:
    out = []
    for row in CASE_ROWS:
        number = int(row["#"])
        frames, request_id = parse_request(number, row["request"])
        out.append(Case(number, row["case"], frames, request_id, row["code"],
                        None if row["field"] == NO_FIELD else row["field"],
                        None if row["status"] == "nil" else row["status"],
                        row["answered by"]))
    return out


CASES: Final = _cases()


# --- the tables themselves ---------------------------------------------------------------


def test_the_code_table_lists_exactly_the_error_codes() -> None:
    assert set(CODE_TABLE) == {str(c) for c in ErrorCode}


def test_the_case_table_is_numbered_and_well_formed() -> None:
    assert [c.number for c in CASES] == list(range(1, len(CASES) + 1))
    for case in CASES:
        assert case.code in CODE_TABLE, case
        assert case.status in (None, "REJECTED", "CONFLICT"), case
        assert case.by in ("broker", "ledger"), case


def _on_the_wire(code: str) -> bool:
    cell = CODE_TABLE[code]["on the wire"]
    return not cell.startswith("not sent") and ("broker" in cell or "ledger" in cell)


def test_each_case_agrees_with_the_code_table() -> None:
    for case in CASES:
        cell = CODE_TABLE[case.code]["on the wire"]
        assert case.by in cell, (case.number, case.code, cell)
        assert (case.status or "status nil") in cell, (case.number, case.code, cell)


def test_every_code_sent_on_the_wire_has_a_case_or_is_named_with_where_it_is_tested() -> None:
    with_case = {c.code for c in CASES}
    not_sent = {code for code in CODE_TABLE if not _on_the_wire(code)}
    assert not with_case & not_sent, with_case & not_sent
    without = {code for code in CODE_TABLE if _on_the_wire(code)} - with_case
    listed = re.search(r"Not in this table.*?\n\n", CASES_SECTION, re.DOTALL)
    assert listed, "the paragraph naming the codes without a case is missing"
    assert set(re.findall(r"`([A-Z_]+)`", listed.group(0))) == without
    assert without == set(ELSEWHERE) | set(NOT_PROVOKED)
    for code, test_file in ELSEWHERE.items():
        assert code in (ROOT / test_file).read_text(), (code, test_file)


# --- walking the cases ---------------------------------------------------------------------


def _free_endpoint() -> str:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class Buses:
    live: Bus
    down: Child  # a broker whose ledger is not there


def exchange(ctx: Context, front: str, frames: list[bytes]
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(front)
        sock.send_multipart(frames)
        assert sock.poll(int(TIMEOUT * 1000)), f"no reply within {TIMEOUT}s"
        reply = sock.recv_multipart()
        assert len(reply) == 3 and reply[0] == PROTOCOL, reply
        return msgpack.unpackb(reply[1]), msgpack.unpackb(reply[2])
    finally:
        sock.close()


def command(ctx: Context, front: str, body: dict[str, Any],
            command_id: str | None = None) -> dict[str, Any]:
    header = {"type": "COMMAND", "id": command_id or f"doc-setup-{uuid.uuid4().hex[:8]}",
              "actor": "Liam", "session_id": "S-DOC"}
    return exchange(ctx, front, [PROTOCOL, _frame(header), _frame({"command": body})])[1]


def head_seq(ctx: Context, front: str) -> int:
    _, reply = exchange(ctx, front, [PROTOCOL, _frame({"type": "PING", "id": "doc-head"}),
                                     _frame({})])
    return int(reply["result"]["head_seq"])


SETUP: Final = [  # the state the doc's case table is written against
    ({"action": "CREATE_PLAN", "plan_id": "P-DOC", "title": "Doc"}, "doc-setup-1"),
    ({"action": "ADD_ITEM", "plan_id": "P-DOC", "item_id": "I-DOC-1", "title": "one"}, None),
    ({"action": "ADD_ITEM", "plan_id": "P-DOC", "item_id": "I-DOC-2", "title": "two"}, None),
    ({"action": "ADD_LINK", "link_id": "L-DOC-1", "from_item_id": "I-DOC-2",
      "to_item_id": "I-DOC-1"}, None),
    ({"action": "CREATE_PLAN", "plan_id": "P-OTHER", "title": "Other"}, None),
    ({"action": "ADD_ITEM", "plan_id": "P-OTHER", "item_id": "I-OTHER-1", "title": "o"}, None),
    ({"action": "CREATE_PLAN", "plan_id": "P-OLD", "title": "Old"}, None),
    ({"action": "ADD_ITEM", "plan_id": "P-OLD", "item_id": "I-OLD-1", "title": "o"}, None),
    ({"action": "UPDATE_PLAN", "plan_id": "P-OLD", "expected_version": 1,
      "change": {"status": "ARCHIVED"}}, None),
]


@pytest.fixture(scope="module")
def buses(module_bus_factory: BusFactory, module_zmq_ctx: Context) -> Buses:
    live = module_bus_factory.start("data/doc.db", ready=True)
    down = module_bus_factory.broker(_free_endpoint(), _free_endpoint())
    for body, command_id in SETUP:
        reply = command(module_zmq_ctx, live.front, body, command_id)
        assert reply["status"] == "APPLIED", reply
    return Buses(live, down)


def _answer(reply_header: dict[str, Any], reply: dict[str, Any]
            ) -> tuple[str | None, str | None, str | None]:
    assert reply_header["type"] == "REPLY" and reply["ok"] is False, reply
    error = reply["error"] or {}
    assert error.get("message"), reply
    return error.get("code"), error.get("field"), reply["status"]


def test_every_documented_refusal_case(buses: Buses, module_zmq_ctx: Context) -> None:
    """Each row: code, field and status from a live bus, the echoed id, and the same
    (broker) or LEDGER_UNAVAILABLE (ledger) from the broker without a ledger. Only the
    CONFLICT rows write (one event each)."""
    ctx = module_zmq_ctx
    front, down = buses.live.front, buses.down.endpoints["front"]
    start = head_seq(ctx, front)
    wrong = []
    for case in CASES:
        header, reply = exchange(ctx, front, case.frames)
        got = _answer(header, reply)
        if got != (case.code, case.field, case.status):
            wrong.append(f"#{case.number} {case.name}: doc says {case.code}/{case.field}/"
                         f"{case.status}, the bus answered {got[0]}/{got[1]}/{got[2]}")
        if case.request_id is not None and header["id"] != case.request_id:
            wrong.append(f"#{case.number} {case.name}: reply id {header['id']!r}")
        without = _answer(*exchange(ctx, down, case.frames))
        expected = ((case.code, case.field, case.status) if case.by == "broker"
                    else ("LEDGER_UNAVAILABLE", None, None))
        if without != expected:
            wrong.append(f"#{case.number} {case.name}: answered by {case.by} per the doc, "
                         f"but with no ledger the broker answered {without}")
    assert not wrong, "\n".join(wrong)
    conflicts = sum(case.status == "CONFLICT" for case in CASES)
    assert head_seq(ctx, front) == start + conflicts
