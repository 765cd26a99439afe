"""What every CLI shares: JSON output, operator-friendly argparse, error handling.

Every command prints exactly one JSON object on stdout. Failures print
``{"ok": false, "error": {"code", "message", ...}}`` and exit non-zero (2 for usage and
input errors, 1 for a failed check, 3 for storage errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ledger.runtime.sandbox import DEFAULT_DB
from ledger.runtime.service import add_version_arg
from ledger.storage import factory
from ledger.storage.base import Store
from schema.errors import CoordinatorError, ErrorCode, StorageError

EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2
EXIT_STORAGE = 3


class JsonArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as our JSON error instead of bare text."""

    def error(self, message: str) -> NoReturn:
        raise CoordinatorError(ErrorCode.USAGE_ERROR,
                               f"{message} (see {self.prog} --help)")


def parser(prog: str, description: str, epilog: str | None = None) -> JsonArgumentParser:
    p = JsonArgumentParser(prog=prog, description=description, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_arg(p)
    return p


def add_db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, metavar="PATH|URL",
                   help=f"database: a SQLite file relative to the sandbox root (default "
                   f"{DEFAULT_DB}), or a postgresql://user@host:port/dbname URL (libpq's "
                   "environment and password file work; a password is never printed)")


def open_store(db: str | None, *, readonly: bool = False, role: str | None = None) -> Store:
    """The store ``--db`` names (:func:`ledger.storage.factory.open_store`); unless
    ``readonly``, with its writer lease, taken as ``role`` (DB_LOCKED, exit status 3,
    while another process writes it)."""
    return factory.open_store(db, readonly=readonly, role=role)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def run(body: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run a command body, turning every error into one JSON object and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    try:
        return body(args)
    except StorageError as exc:
        emit({"ok": False, "error": exc.to_dict()})
        return EXIT_STORAGE
    except CoordinatorError as exc:
        emit({"ok": False, "error": exc.to_dict()})
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        emit({"ok": False, "error": {"code": str(ErrorCode.INTERRUPTED),
                                     "message": "interrupted"}})
        return 130
    except BrokenPipeError:
        return EXIT_FAILED_CHECK
