"""Exceptions whose message is one line a user can act on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class BackupAppError(Exception):
    """Base class: ``str(err)`` names the thing that failed and the fix."""


class BackupError(BackupAppError):
    """Creating a backup set failed; no complete set was left behind."""


class RestoreError(BackupAppError):
    """A restore was refused or failed; the message says what state is left."""


class StorageUnavailable(BackupAppError):
    """The backup storage cannot be reached or used."""


class NothingChanged(RestoreError):
    """A step stopped before it changed anything: its safety entry has nothing to put back."""


class PutBackPending(RestoreError):
    """A step failed and putting back what it had done failed too; the safety record it wrote lets the next
    backup, restore or rollback finish the put-back (the message names what stopped it)."""


@contextmanager
def removed_after(remove: Callable[[], object], what: str) -> Iterator[None]:
    """Run the block, then ``remove()`` (a scratch database, file or folder).

    When the block fails, its error is the one raised: a failure of ``remove`` is added to it as a note (one more
    line, naming ``what`` was left), never in its place.  When only ``remove`` fails, that error is raised."""
    try:
        yield
    except BaseException as err:
        try:
            remove()
        except Exception as left:  # noqa: BLE001 - a note on the error that stopped the block
            err.add_note(f"{what} was not removed: {str(left).strip() or type(left).__name__}")
        raise
    remove()


def notes(err: BaseException) -> list[str]:
    """The lines :func:`removed_after` (or anything else) added to ``err``, one per note, first line only."""
    return [(str(n).strip().splitlines() or [""])[0] for n in getattr(err, "__notes__", ())]
