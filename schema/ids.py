"""The id rule: every id on the wire, in a file or in the database (plan, item, link,
command, actor, session, request) matches :data:`ID_PATTERN`: 1-128 characters, a
letter or digit first, then letters, digits and ``._:@/+-``; no spaces, no control
characters. docs/PROTOCOL.md section 1 states the same rule for client authors.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import StringConstraints

ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
