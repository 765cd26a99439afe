"""Reading the tables of the docs/ pages, so tests can check the code against them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from tests.support.helpers import ROOT

DOCS: Final = ROOT / "docs"


def section(text: str, heading: str) -> str:
    """The text under the markdown heading ``heading`` (exact heading text, any level),
    up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert match, f"no heading {heading!r}"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every pipe table in ``text``: rows as {column: cell}, cells stripped. A cell that
    is one code span loses its backticks; '|' inside code spans is not supported."""
    found: list[list[dict[str, str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if (lines[i].startswith("|") and i + 1 < len(lines)
                and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip())):
            columns = _cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = _cells(lines[i])
                assert len(cells) == len(columns), f"row has {len(cells)} cells: {lines[i]}"
                rows.append(dict(zip(columns, cells, strict=True)))
                i += 1
            found.append(rows)
        else:
            i += 1
    return found


def _cells(line: str) -> list[str]:
    out = []
    for cell in line.strip().strip("|").split("|"):
        cell = cell.strip()
        if re.fullmatch(r"`[^`]*`", cell):
            cell = cell[1:-1]
        out.append(cell)
    return out


def read(name: str) -> str:
    return (DOCS / name).read_text()


def doc_path(name: str) -> Path:
    return DOCS / name
