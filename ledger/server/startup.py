"""The ledger process's start-up checks: is the store fit to serve, and is it the one
this ledger signed?

:class:`StartupChecks` refuses a damaged store before anything writes to it
(DB_DAMAGED): the schema and the chain tail always, and with ``full`` every page and the
event count too. With ``background`` (the default) those two run on their own thread
while the ledger serves; if they find damage, commands are refused and the ledger exits
with status 3. What is checked: :mod:`ledger.log.integrity`; docs/DURABILITY.md.

:func:`refuse_rollback` refuses a store behind (or beside) the newest checkpoints this
ledger signed (DB_ROLLED_BACK).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.log import checkpoints, integrity
from ledger.storage.base import Locator, Store
from schema.errors import ErrorCode, StorageError


class StartupChecks:
    """The start-up check of one store in one ``--startup-check`` mode (see
    :data:`ledger.log.integrity.STARTUP_MODES`). Construction runs what must pass before
    serving (raises StorageError); :meth:`start` starts the background page check, if
    there is one. ``on_failure`` is called, on the page check's thread, if it fails."""

    def __init__(self, locator: Locator, mode: str,
                 on_failure: Callable[[StorageError], None]) -> None:
        if mode not in integrity.STARTUP_MODES:
            raise ValueError(f"startup_check: {mode!r}")
        self.mode = mode
        self.result = integrity.startup_check(locator, pages=mode == "full")
        self.page_check: integrity.PageCheck | None = None
        if mode == "background" and self.result["checked"]:
            self.page_check = integrity.PageCheck(locator, on_failure=on_failure)

    def start(self) -> None:
        if self.page_check is not None:
            self.page_check.start()

    def stop(self) -> None:
        """Interrupt the page check if it is still running."""
        if self.page_check is not None:
            self.page_check.stop()

    def wait_sound(self) -> None:
        """Return once no page check is running; raise what it found, if anything
        (nobody signs a store the page check is still reading or has found damaged)."""
        if self.page_check is not None:
            self.page_check.done.wait()
            if self.page_check.error is not None:
                raise self.page_check.error

    def status(self) -> dict[str, Any]:
        """For the ready line and PING: ``mode``, ``tail`` (ok: it ran before serving),
        ``pages`` (running, ok, failed, stopped or skipped)."""
        checked = self.result
        out: dict[str, Any] = {"mode": self.mode}
        if not checked.get("checked"):
            return out | {"tail": "new database", "pages": "new database"}
        out["tail"] = "ok"
        if self.page_check is not None:
            return out | self.page_check.status()
        if self.mode == "full":
            return out | {"pages": "ok", "events": checked["events"]}
        return out | {"pages": "skipped"}


def refuse_rollback(store: Store, key: Ed25519PrivateKey, directory: Path) -> None:
    """A store behind (or beside) the newest checkpoints this ledger signed was rolled
    back or rewritten: serving it would fork the history. Raises
    StorageError(DB_ROLLED_BACK)."""
    loaded = checkpoints.newest_checkpoints(directory, key.public_key())
    bad = checkpoints.check_heads(store, loaded)
    if bad:
        name, result = bad[-1]
        raise StorageError(
            ErrorCode.DB_ROLLED_BACK,
            f"{store.locator.name} does not match signed checkpoint {name} "
            f"({result.verdict}: {result.reason}); serving it would fork the history. "
            "Restore the newer database, or start with --accept-rollback if this "
            "rollback is intended", details={"checkpoint": name, **result.to_dict()})
