"""Create a backup set: database dumps, media archive, then the manifest."""

from __future__ import annotations

import os
import platform
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

import dbbackup
import django
from django.core.files.storage import FileSystemStorage
from django.utils import timezone

from . import __version__
from .engines import engine_for
from .errors import BackupError
from .media import ArchiveStats, media_storage, write_tar
from .pipeline import SUFFIX, GpgSpec, store_stream
from .secrets import redact
from .sets import MANIFEST_FORMAT, Naming, list_files, list_sets, write_json
from .settings import app_settings

Progress = Callable[[str], None]


@dataclass
class BackupOptions:
    compression: str = "gzip"
    encrypt: bool = False
    databases: list[str] | None = None  # None: DBBACKUP_DATABASES
    media: bool = True
    origin: str = "manual"  # manual, update, scheduled


def gpg_spec(encrypt: bool = True) -> GpgSpec:
    """GPG settings from the configuration; encrypting needs a recipient."""
    recipient = app_settings.gpg_recipient
    if encrypt and not recipient:
        raise BackupError("--encrypt needs a GPG recipient; set INVENTREE_BACKUP_GPG_RECIPIENT (backup_gpg_recipient)")
    return GpgSpec(home=app_settings.gpg_home, recipient=recipient)


def _new_stamp(storage, naming: Naming) -> str:
    """A stamp no file in the storage has yet (waits for the next one if needed)."""
    taken = {p.stamp for p in map(naming.parse, list_files(storage)) if p is not None}
    for _ in range(120):
        stamp = naming.stamp(timezone.now())
        if stamp not in taken:
            return stamp
        time.sleep(0.5)
    raise BackupError("no unused timestamp for a new backup; backup_date_format needs seconds (%S)")


def create_backup(storage, options: BackupOptions, progress: Progress | None = None) -> dict:
    """Write one complete backup set to ``storage`` and return its manifest.

    Order: a pending marker, each database dump, the media archive, the
    manifest (which makes the set complete), then the marker is removed.  If
    any step fails, every file written so far is deleted and
    :class:`BackupError` raised: no complete set is left behind.
    """
    say = progress or (lambda _msg: None)
    naming = Naming()
    aliases = options.databases if options.databases is not None else app_settings.databases
    gpg = gpg_spec() if options.encrypt else None
    suffix = SUFFIX[options.compression] + (".gpg" if options.encrypt else "")
    started = timezone.now()
    stamp = _new_stamp(storage, naming)
    pending = naming.pending_name(stamp)
    written: list[str] = []
    manifest: dict = {
        "format": MANIFEST_FORMAT,
        "name": stamp,
        "created": timezone.localtime(started).isoformat(),
        "host": socket.gethostname(),
        "origin": options.origin,
        "versions": {
            "backup_app": __version__,
            "django": django.get_version(),
            "dbbackup": dbbackup.__version__,
            "python": platform.python_version(),
        },
        "compression": options.compression,
        "encrypted": options.encrypt,
        "gpg_recipient": gpg.recipient if gpg else None,
        "databases": [],
        "media": None,
        "files": [],
    }
    media_job = None
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-media")
    try:
        write_json(storage, pending, {"started": manifest["created"], "pid": os.getpid(), "host": manifest["host"]})
        if options.media:
            media_name = naming.media_name(stamp, "tar" + suffix)
            stats = ArchiveStats()
            say(f"Backing up media files to {media_name}")

            def archive_media():
                t0 = time.monotonic()
                stored = store_stream(
                    storage,
                    media_name,
                    lambda out: write_tar(media_storage(), out, stats, cancel=cancel),
                    compression=options.compression,
                    gpg=gpg,
                )
                return stored, time.monotonic() - t0

            if isinstance(storage, FileSystemStorage):
                # Dumps and the archive are independent streams: on a local folder, write them at once.
                media_job = pool.submit(archive_media)
        for alias in aliases:
            engine = engine_for(alias)
            name = naming.db_name(stamp, alias, engine.extension + suffix)
            say(f"Backing up database '{alias}' ({engine.vendor}) to {name}")
            t0 = time.monotonic()
            migrations = engine.applied_migrations()
            tables = engine.table_count()
            stored = store_stream(
                storage,
                name,
                lambda out, e=engine: e.dump(out, compressed=options.compression != "none"),
                compression=options.compression,
                gpg=gpg,
            )
            written.append(name)
            manifest["databases"].append(
                {
                    "alias": alias,
                    "vendor": engine.vendor,
                    "engine": engine.settings["ENGINE"],
                    "connector": f"{type(engine.connector).__module__}.{type(engine.connector).__name__}",
                    "file": name,
                    "migrations": migrations,
                    "tables": tables,
                    "excluded_table_data": engine.exclude,
                }
            )
            manifest["files"].append(_entry(stored, "db", options, database=alias))
            say(f"  {stored.size:,} bytes in {time.monotonic() - t0:.1f} s")
        if options.media:
            stored, seconds = media_job.result() if media_job is not None else archive_media()
            media_job = None
            written.append(media_name)
            manifest["media"] = {"file": media_name, "files": stats.files, "bytes": stats.bytes}
            manifest["files"].append(_entry(stored, "media", options))
            say(f"  media: {stats.files} files, {stored.size:,} bytes in {seconds:.1f} s")
        manifest["finished"] = timezone.localtime(timezone.now()).isoformat()
        write_json(storage, naming.manifest_name(stamp), manifest)
        written.append(naming.manifest_name(stamp))
    except BaseException as err:
        if media_job is not None:
            cancel.set()
            with suppress(BaseException):
                media_job.result()  # its own failure (or the cancel) removed its file
        for name in [*written, pending]:
            try:
                if storage.exists(name):
                    storage.delete(name)
            except Exception:
                pass
        if isinstance(err, BackupError):
            raise
        if isinstance(err, KeyboardInterrupt):
            raise BackupError("backup interrupted; the partial set was removed") from None
        raise BackupError(f"backup failed: {redact(err)}") from err
    finally:
        pool.shutdown(wait=True)
    try:
        storage.delete(pending)
    except Exception:
        pass
    say(f"Backup set {stamp} complete ({len(manifest['files'])} files)")
    return manifest


def _entry(stored, kind: str, options: BackupOptions, database: str | None = None) -> dict:
    return {
        "name": stored.name,
        "kind": kind,
        "size": stored.size,
        "sha256": stored.sha256,
        "compression": None if options.compression == "none" else options.compression,
        "encrypted": options.encrypt,
        "database": database,
    }


__all__ = ["BackupOptions", "create_backup", "gpg_spec", "list_sets"]
