"""The one way to a store: from what the user typed to an open :class:`Store`.

A *target* is what a user typed after ``--db``: a path in the sandbox (``data/x.db``,
resolved by :func:`ledger.runtime.sandbox.resolve_db`, so PATH_NOT_ALLOWED for anything
outside ``data/``; None is the default database) or a URL. :func:`locate` turns it into
a :class:`Locator`, without touching anything; :func:`open_store` opens the store a
target or locator names. A locator comes from :func:`locate`, from an open store
(``store.locator``: how another process opens the same store) or, for a file a tool or
test made itself outside any sandbox, from :func:`file_locator`.

Backends by scheme: a path is SQLite (:mod:`ledger.storage.sqlite`); a ``postgresql://``
or ``postgres://`` URL is PostgreSQL (:mod:`ledger.storage.postgres`, given to libpq as
typed); ``memory`` locators belong to in-memory stores, which cannot be opened again. A
URL of any other scheme is refused with DB_UNSUPPORTED. Refusals change nothing.

One writer per store: every open for writing (:func:`open_store` without ``readonly``,
:func:`initialise_store`) takes the store's writer lease first, in one place,
:func:`_writer_lease`; a store held by another writer is refused with DB_LOCKED naming
the holder. Read-only opens and inspections never take it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from ledger.runtime.sandbox import resolve_db, sandbox_root
from ledger.storage.base import (
    Backend,
    Durability,
    Inspection,
    Locator,
    Store,
    WriterLease,
    writer_holder,
)
from ledger.storage.memory import MemoryBackend
from ledger.storage.postgres import PostgresBackend, is_postgres_url, pg_locator
from ledger.storage.sqlite import SqliteBackend, file_locator
from schema.errors import CoordinatorError, ErrorCode

__all__ = ["BACKENDS", "Initialised", "backend_for", "file_locator", "initialise_store",
           "inspect_store", "locate", "open_store", "store_exists", "store_size"]

#: The backends, by the scheme of the locators they open.
BACKENDS: Final[dict[str, Backend]] = {
    b.scheme: b for b in (SqliteBackend(), PostgresBackend(), MemoryBackend())}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _unsupported(message: str) -> CoordinatorError:
    return CoordinatorError(ErrorCode.DB_UNSUPPORTED, message, field="db")


def locate(target: str | None) -> Locator:
    """Where ``target`` (what the user typed; None: the default database) lives.

    Raises SandboxError(PATH_NOT_ALLOWED) for a path outside the sandbox's ``data/``, and
    CoordinatorError(DB_UNSUPPORTED) for a URL of a scheme other than ``postgresql://``
    or ``postgres://``. Reads and writes nothing."""
    if target is not None and (url := _URL.match(target)):
        if is_postgres_url(target):
            return pg_locator(target)
        raise _unsupported(f"unknown database scheme {url.group(1).lower()!r}; give a "
                           "SQLite file under data/ (e.g. --db data/os_sandbox.db) or a "
                           "postgresql:// URL")
    path = resolve_db(target)
    return file_locator(path, str(path.relative_to(sandbox_root())))


def _locator(where: str | Locator | None) -> Locator:
    return where if isinstance(where, Locator) else locate(where)


def backend_for(locator: Locator) -> Backend:
    backend = BACKENDS.get(locator.scheme)
    if backend is None:
        raise _unsupported(f"{locator.describe()}: no storage backend for scheme "
                           f"{locator.scheme!r}")
    return backend


def _writer_lease(backend: Backend, locator: Locator, role: str | None,
                  holder: dict[str, Any] | None) -> WriterLease:
    """THE place a writer takes its store's lease (one writer per database)."""
    return backend.acquire_writer(locator, holder or writer_holder(role))


def open_store(where: str | Locator | None, *, readonly: bool = False, create: bool = False,
               durability: Durability = "full", manual_maintenance: bool = False,
               role: str | None = None, holder: dict[str, Any] | None = None) -> Store:
    """Open the store ``where`` names: what the user typed (see :func:`locate`) or a
    locator.

    ``readonly``: reads only (SQLite: ``mode=ro`` connections), no writer lease.
    Otherwise the store's writer lease is taken first (StorageError DB_LOCKED, naming
    the holder, if another process writes it) and released when the store closes;
    ``role`` says who writes (``ledger``, ``apply-scenario``; default the program's
    name), or ``holder`` gives the whole :func:`ledger.storage.base.writer_holder` dict.
    ``create``: create the store and its schema first if missing (otherwise a missing
    one is DB_NOT_INITIALISED). ``durability``: see
    :data:`ledger.storage.base.Durability`. ``manual_maintenance``: the owner calls
    :meth:`Store.maintenance` itself (SQLite: no WAL checkpoint inside a COMMIT).
    Raises what :func:`locate` raises, and StorageError."""
    locator = _locator(where)
    backend = backend_for(locator)
    if readonly or not (create or backend.exists(locator)):
        # reads, or nothing there to write (DB_NOT_INITIALISED): no lease
        return backend.open(locator, readonly=readonly, durability=durability,
                            manual_maintenance=manual_maintenance)
    lease = _writer_lease(backend, locator, role, holder)
    try:
        if create:
            backend.initialise(locator)
        store = backend.open(locator, readonly=False, durability=durability,
                             manual_maintenance=manual_maintenance)
    except BaseException:
        lease.release()
        raise
    store.hold_lease(lease)
    return store


@dataclass(frozen=True, slots=True)
class Initialised:
    """What :func:`initialise_store` did."""

    locator: Locator
    created: bool
    schema_version: str


def initialise_store(where: str | Locator | None, *, role: str | None = None) -> Initialised:
    """Create the store and its schema, or add what is missing (idempotent: data is
    kept), holding the writer lease meanwhile (DB_LOCKED if another process writes)."""
    locator = _locator(where)
    backend = backend_for(locator)
    with _writer_lease(backend, locator, role, None):
        created = backend.initialise(locator)
    return Initialised(locator, created, backend.schema_version)


def inspect_store(where: str | Locator | None) -> Inspection:
    """A read-only :class:`Inspection` of a store that may be damaged (the start-up
    checks and the damage report go through this, not through :func:`open_store`)."""
    locator = _locator(where)
    return backend_for(locator).inspect(locator)


def store_exists(locator: Locator) -> bool:
    return backend_for(locator).exists(locator)


def store_size(locator: Locator) -> int | None:
    """About how many bytes the store holds (None: unknown, or nothing there)."""
    return backend_for(locator).size_bytes(locator)

