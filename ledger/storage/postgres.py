"""The PostgreSQL backend's entry: ``postgresql://`` URLs as locators, and the
:class:`PostgresBackend` the factory registers.

This module does not import the driver (psycopg takes ~0.1 s to import, and most runs
use SQLite): the store (:mod:`ledger.storage.postgres_store`) and the integrity checks
(:mod:`ledger.storage.postgres_integrity`) are imported when a PostgreSQL store is
first opened. Those two modules are the only importers of ``psycopg``.

A URL is passed to libpq as the user typed it (``postgresql://`` or ``postgres://``,
RFC 3986, with libpq's query parameters: ``passfile``, ``sslmode``, ``options``...);
what it leaves out, libpq takes from its environment (``PGHOST``, ``PGPASSWORD``...)
and its password file (``~/.pgpass`` or ``PGPASSFILE``). A password in the URL stays in
:attr:`Locator.address` only (not in its repr): every name a report, log, ready line
or error prints (:attr:`Locator.shown`, :attr:`Locator.name`) comes from
:func:`redact`, and every driver message is scrubbed of it (:func:`scrubber`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from ledger.storage.base import Backend, Durability, Inspection, Locator, WriterLease

if TYPE_CHECKING:
    from ledger.storage.postgres_store import PgStore

__all__ = ["SCHEMA_VERSION", "SCHEME", "URL_SCHEMES", "PostgresBackend", "is_postgres_url",
           "pg_locator", "redact", "scrubber"]

#: The Locator scheme of PostgreSQL stores.
SCHEME: Final = "postgresql"
#: URL schemes libpq accepts (and so do we).
URL_SCHEMES: Final = ("postgresql", "postgres")
#: The ledger schema version (the same number as SQLite's: the same tables and rules).
SCHEMA_VERSION: Final = "1"
#: What replaces a password wherever one would be shown.
MASK: Final = "***"
#: libpq query parameters whose value is a secret.
_SECRET_PARAMS: Final = frozenset({"password", "sslpassword", "oauth_client_secret"})


def is_postgres_url(target: str) -> bool:
    scheme, sep, _ = target.partition("://")
    return bool(sep) and scheme.lower() in URL_SCHEMES


def _split(url: str) -> tuple[str, str, str, str, str, str]:
    """(scheme, user, password or "", hosts, path, query) of a URL, none unquoted."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", parts.netloc
    user, _, password = userinfo.partition(":")
    return parts.scheme, user, password, hosts, parts.path, parts.query


def redact(url: str, *, query: bool = True) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) shown
    as ``***``; ``query=False`` also drops the query string. Anything that does not
    split as a URL comes back as ``<unparsable database URL>``, since it may hold a
    password."""
    try:
        scheme, user, password, hosts, path, params = _split(url)
        pairs = parse_qsl(params, keep_blank_values=True) if query else []
    except ValueError:
        return "<unparsable database URL>"
    userinfo = user + (f":{MASK}" if password else "")
    netloc = f"{userinfo}@{hosts}" if userinfo else hosts
    shown = urlencode([(k, MASK if k in _SECRET_PARAMS else v) for k, v in pairs],
                      safe="/*")
    return urlunsplit((scheme, netloc, path, shown, ""))


def scrubber(url: str) -> Callable[[str], str]:
    """A function that masks every secret of ``url`` in a text (a driver message may
    quote the part of a URL it could not parse)."""
    secrets: set[str] = set()
    try:
        _, _, password, _, _, params = _split(url)
    except ValueError:
        password, params = "", ""
    if password:
        secrets |= {password, unquote(password)}
    for key_value in params.split("&"):
        key, _, value = key_value.partition("=")
        if unquote(key) in _SECRET_PARAMS and value:
            secrets |= {value, unquote(value)}
    ordered = sorted((s for s in secrets if s), key=len, reverse=True)

    def scrub(text: str) -> str:
        for secret in ordered:
            text = text.replace(secret, MASK)
        return text
    return scrub


def pg_locator(url: str) -> Locator:
    """The locator of the database ``url`` names (its scheme in lower case, as libpq
    wants it). Touches nothing: a bad URL or an unreachable server shows when the store
    is opened."""
    scheme, sep, rest = url.partition("://")
    url = scheme.lower() + sep + rest
    scheme, user, _, hosts, path, _ = _split(url)
    dbname = unquote(path.lstrip("/"))
    short = f"{scheme}://{quote(unquote(user), safe='') + '@' if user else ''}{hosts}/" \
            f"{quote(dbname, safe='')}"
    return Locator(SCHEME, url, redact(url), short)


class PostgresBackend(Backend):
    """PostgreSQL databases: the locator's address is the URL, given to libpq as is."""

    scheme = SCHEME
    schema_version = SCHEMA_VERSION

    def open(self, locator: Locator, *, readonly: bool = False,
             durability: Durability = "full", manual_maintenance: bool = False) -> PgStore:
        from ledger.storage.postgres_store import PgStore

        return PgStore(locator, readonly=readonly, durability=durability)

    def initialise(self, locator: Locator) -> bool:
        from ledger.storage.postgres_store import initialise

        return initialise(locator)

    def exists(self, locator: Locator) -> bool:
        from ledger.storage.postgres_store import ledger_tables

        return bool(ledger_tables(locator))

    def acquire_writer(self, locator: Locator, holder: dict[str, Any]) -> WriterLease:
        from ledger.storage.postgres_store import PgLease

        return PgLease(locator, holder)

    def size_bytes(self, locator: Locator) -> int | None:
        from ledger.storage.postgres_store import size_bytes

        return size_bytes(locator)

    def inspect(self, locator: Locator) -> Inspection:
        from ledger.storage.postgres_integrity import PgInspection

        return PgInspection(locator)

