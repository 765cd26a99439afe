"""Old import path, kept for outside clients: the wire protocol moved to
:mod:`schema.wire` (public messages, encode/decode) and :mod:`schema.internal` (the
broker <-> ledger batch messages). New code imports those."""

from schema.errors import ProtocolError as ProtocolError
from schema.wire import *  # noqa: F403
from schema.wire import BaseMessage as BaseMessage
