"""Old import path, kept for outside code: the error codes and the exception root moved
to :mod:`schema.errors`. New code imports that."""

from schema.errors import *  # noqa: F403
