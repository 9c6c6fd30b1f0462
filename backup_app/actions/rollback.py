"""Roll back: put back what a restore replaced, from the safety copy it kept, and drop safety copies.

:func:`undo` is also how a restore that fails half way puts back what it had already swapped in.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from django.conf import settings

from .. import hints
from ..engines import Locked, engine_for, site_lock
from ..errors import BackupAppError
from ..interrupts import shielded
from ..media import media_storage, remove_stale_staging, undo_media
from ..notify import notify_failure
from ..progress import NO_PROGRESS, Progress
from ..safety import SafetyRecord, expired, list_records
from ..secrets import redact
from ..settings import app_settings


@dataclass
class RollbackOptions:
    name: str | None = None  # the safety copy to roll back to; None: the newest


@dataclass
class RollbackResult:
    record: str
    undone: list[str] = field(default_factory=list)  # "media files", "database 'default'"


def candidates() -> list[SafetyRecord]:
    """Safety copies a rollback can use, newest first ("restoring": a restore killed half way)."""
    return [r for r in list_records() if r.state in ("done", "restoring")]


def run(options: RollbackOptions | None = None, progress: Progress = NO_PROGRESS) -> RollbackResult:
    """Under the site lock, put back the state before the restore of one safety copy, then drop the copy.

    A restore that was killed half way is undone first (:func:`recover`); that is the rollback then.
    A failure is mailed to the admins (as a restore failure) and raised.
    """
    options = options or RollbackOptions()
    try:
        with site_lock("rollback"):
            recovered = recover(progress)
            if recovered and (options.name is None or options.name in recovered):
                return RollbackResult(record=recovered[0], undone=[])
            records = candidates()
            if not records:
                raise BackupAppError(
                    "there is no safety copy to roll back to (restores keep one for backup_safety_days)"
                )
            record = next((r for r in records if r.name == options.name), None) if options.name else records[0]
            if record is None:
                raise BackupAppError(
                    f"no safety copy named {options.name!r}; see {hints.command('rollback', '--list')}"
                )
            with shielded():
                undone = undo(record)
                discard(record)
    except Exception as err:
        notify_failure("restore", err)
        raise
    progress.step(f"Rolled back to the state before restore {record.name}: {', '.join(undone) or 'nothing'}")
    return RollbackResult(record=record.name, undone=undone)


def recover(progress: Progress = NO_PROGRESS) -> list[str]:
    """Undo every restore that was killed half way (its record still ``restoring``, its process gone).

    The caller holds the site lock, so no restore of this site is running.  Each one is put back to the state
    before it began (databases and media, exactly), its record dropped, and one line says so.  Staging left
    by killed runs goes too.  Returns the names of the records resolved.
    """
    done = []
    for record in list_records():
        if not record.abandoned():
            continue
        owner = record.owner or {}
        with shielded():
            undone = undo(record)
            discard(record)
        what = " and ".join(undone) + " put back as they were" if undone else "nothing had been changed yet"
        progress.step(
            f"Found restore {record.name} interrupted (pid {owner.get('pid', '?')} is gone): undid it, "
            f"{what}; the site is as it was before that restore"
        )
        done.append(record.name)
    if done:
        # A restore killed after it staged (a database swap not begun, or not every database swapped) left its
        # staging file or database: the engines remove those of runs that are gone, as a restore does first.
        for alias in settings.DATABASES:
            try:
                stale = engine_for(alias).cleanup()
            except BackupAppError:
                continue  # an alias this app does not back up
            except Exception as err:  # a database server that does not answer: the next restore looks again
                progress.step(f"  could not look for staging left of database '{alias}': {redact(err)}")
                continue
            for name in stale:
                progress.step(f"Removed {name}, left behind by an interrupted restore")
    for name in remove_stale_staging(media_storage()):
        progress.step(f"Removed {name}, left in the media folder by an interrupted restore")
    return done


def undo(record: SafetyRecord) -> list[str]:
    """Put back everything ``record`` kept (media files, then each database); returns what was rolled back.

    Safe to run again when a kill stopped it half way.
    """
    done = []
    if record.media is not None or record.media_folder.exists():
        media = record.media or {}
        undo_media(
            media_storage(),
            record.media_folder,
            media.get("created", []),
            media.get("folders"),
            journal=record.media_journal,
        )
        done.append("media files")
    for alias, entry in record.databases.items():
        engine_for(alias).undo(entry, record.folder)
        done.append(f"database '{alias}'")
    try:
        record.clear()
        record.mark("rolled back")
    except OSError:
        pass  # a full safety folder: the old state is back all the same, and the record goes with its folder
    return done


def discard(record: SafetyRecord) -> None:
    """Delete the kept state (old databases, moved-aside files) and the record."""
    for alias, entry in record.databases.items():
        try:
            engine_for(alias).discard(entry)
        except Exception:
            continue  # a database that is gone already; the folder goes anyway
    shutil.rmtree(record.folder, ignore_errors=True)
    for folder in record.made:  # the safety folder this record's restore made, unless something else is in it now
        try:
            folder.rmdir()
        except OSError:
            break


def expire(days: int) -> list[str]:
    """Discard the safety copies older than ``days``; returns their names."""
    gone = []
    for record in expired(list_records(), days):
        discard(record)
        gone.append(record.name)
    return gone


def expire_now(progress: Progress = NO_PROGRESS) -> list[str]:
    """Discard the safety copies older than ``backup_safety_days`` under the site lock (every backup and
    hourly check calls it); nothing when a backup or restore holds the lock (the next run expires them)."""
    try:
        with site_lock("expire safety copies"):
            gone = expire(app_settings.safety_days)
    except Locked:
        return []
    for name in gone:
        progress.step(f"Removed expired safety copy {name} (older than {app_settings.safety_days} days)")
    return gone
