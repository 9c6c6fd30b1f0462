"""Back up: check the configuration, take the site lock, write a backup set, prune under the same lock.

A set is one dump per database, one media archive, then the manifest (written last: it makes the set
complete).  ``run`` records the run in the history, mails a failure to the admins (``backup_send_email``)
and returns a :class:`BackupResult`.
"""

from __future__ import annotations

import logging
import platform
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import dbbackup
import django
from django.core.checks import ERROR, WARNING, run_checks
from django.core.files.storage import FileSystemStorage
from django.utils import timezone

from .. import __version__, hints
from ..engines import engine_for, site_lock
from ..errors import BackupError
from ..history import note_manifest, record_run
from ..incremental import (
    IncrementalStats,
    Previous,
    list_store,
    parse_index,
    recall_index,
    remember_index,
    write_media,
)
from ..interrupts import Interrupted
from ..media import ArchiveStats, iter_media, media_size, media_storage, write_tar
from ..models import BackupRun
from ..notify import announce, notify_failure, ping
from ..pipeline import SUFFIX, GpgSpec, store_stream
from ..progress import NO_PROGRESS, Progress, seconds_text, size_text
from ..secrets import redact
from ..sets import (
    INDEX_BASE,
    MANIFEST_FORMAT,
    BackupSet,
    Naming,
    Retention,
    doomed,
    list_files,
    list_sets,
    manifest_size,
    of_this_site,
    site_identity,
    write_json,
)
from ..settings import app_settings
from ..storage import backup_storage, describe
from ..streams import CountingWriter
from ..testing import pause_at
from ..tools import owner
from . import hooks, prune, rollback
from .common import index_copies, media_index_folder, read_checked

logger = logging.getLogger("backup_app")


@dataclass
class BackupOptions:
    """What ``invoke backup`` can ask for; the defaults are a plain ``invoke backup``."""

    compress: bool = True  # False: --no-compress
    encrypt: bool = False  # to backup_gpg_recipient
    path: str | None = None  # a local folder instead of the backup storage
    skip_db: bool = False
    skip_media: bool = False
    clean: bool = False  # prune afterwards, under the same lock
    clean_legacy: bool = False  # with clean, also files of stock django-dbbackup
    retention: Retention | None = None  # of clean; None: backup_keep*
    origin: str = "manual"  # manual, update, scheduled: in the manifest and the history
    media_mode: str | None = None  # archive, incremental; None: backup_media_mode

    @property
    def partial(self) -> bool:
        """Not the site's own full backup: another folder, or without the databases or the media."""
        return bool(self.path or self.skip_db or self.skip_media)


@dataclass
class SetContents:
    """What goes into one set."""

    compression: str  # gzip, zstd, none
    encrypt: bool
    databases: list[str]
    media: bool
    origin: str
    media_mode: str = "archive"  # archive: a tar; incremental: packs and a media index


@dataclass
class BackupResult:
    manifest: dict
    storage: str  # where it went, without passwords
    deleted: list[str] = field(default_factory=list)  # pruned files
    seconds: float = 0.0  # the whole run

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def size(self) -> int:
        """Bytes stored (compressed, encrypted)."""
        return manifest_size(self.manifest)

    @property
    def source_size(self) -> int:
        """Bytes read: the dumps as the tools wrote them, plus the media files."""
        dumps = sum(d.get("source_bytes") or 0 for d in self.manifest.get("databases", []))
        return dumps + ((self.manifest.get("media") or {}).get("bytes") or 0)

    def summary(self) -> str:
        """One line: what, source size, stored size, ratio, duration, where."""
        parts = []
        dbs = self.manifest.get("databases", [])
        if dbs:
            parts.append(f"{len(dbs)} database{'s' if len(dbs) != 1 else ''}")
        media = self.manifest.get("media")
        if media:
            parts.append(f"{media['files']:,} media files")
        ratio = f" ({self.size / self.source_size:.0%})" if self.source_size else ""
        pruned = f"; --clean removed {len(self.deleted)} files" if self.deleted else ""
        return (
            f"Backup {self.name}: {' and '.join(parts)}, {size_text(self.source_size)} -> "
            f"{size_text(self.size)} stored{ratio} in {seconds_text(self.seconds)}, to {self.storage}{pruned}"
        )

    def as_json(self) -> dict:
        return {
            "action": "backup",
            "ok": True,
            "set": self.name,
            "storage": self.storage,
            "source_size": self.source_size,
            "size": self.size,
            "seconds": round(self.seconds, 3),
            "files": self.manifest["files"],
            "deleted": self.deleted,
        }


def run(
    options: BackupOptions | None = None, progress: Progress = NO_PROGRESS, *, record: BackupRun | None = None
) -> BackupResult:
    """Write a backup set as ``options`` say; returns a :class:`BackupResult`.

    ``record`` is the history row of a queued run that already holds the claim (the scheduler's); without it
    a new row is made.  Any failure is recorded, mailed, pushed (``backup_notify_urls``, ``backup_ping_url``)
    and raised (a :class:`BackupError` with one line); an interruption (Ctrl-C) too, as "interrupted".
    """
    options = options or BackupOptions()
    t0 = time.monotonic()
    ping("start", f"{options.origin} backup")
    try:
        with record_run(options.origin, run=record) as row:
            row.partial = options.partial
            result = _back_up(options, progress)
            note_manifest(row, result.manifest)
        result.seconds = time.monotonic() - t0
    except Exception as err:
        notify_failure("backup", err, origin=options.origin)
        announce("backup", err, origin=options.origin)
        raise
    except KeyboardInterrupt as err:
        announce("backup", BackupError("backup interrupted (Ctrl-C or SIGINT)"), origin=options.origin)
        raise err
    announce("backup", None, origin=options.origin, detail=result.summary())
    return result


@dataclass
class BackupPlan:
    """What a backup would do (``--dry-run``): nothing is written, locked, recorded or deleted."""

    storage: str
    set_name: str
    compression: str
    encrypted: bool
    gpg_recipient: str | None
    files: list[dict]  # name, kind, database, vendor, connector
    media: dict | None  # files, bytes (None: unknown without reading a remote media storage file by file)
    checks: list[dict]  # id, level, message of every backup_app check found
    deleted: list[str] = field(default_factory=list)  # with --clean: the files retention would delete
    clean: bool = False
    repacked: dict | None = None  # with --clean: the media packs it would repack (packs, needed, bytes)

    @property
    def ok(self) -> bool:
        return not any(c["level"] == "error" for c in self.checks)

    def lines(self) -> list[str]:
        out = [f"Dry run: nothing is written or deleted. A backup would write set {self.set_name} to {self.storage}"]
        for f in self.files:
            if f.get("kind") == "db":
                out.append(f"  {f['name']}: database '{f['database']}' ({f['vendor']}, {f['connector']})")
            else:
                what = self.media or {}
                count = f"{what['files']:,} files, {size_text(what['bytes'])}" if what.get("bytes") is not None else ""
                out.append(f"  {f['name']}: media files" + (f" ({count})" if count else ""))
        secured = f", encrypted to {self.gpg_recipient}" if self.encrypted else ", not encrypted"
        out.append(f"  compression {self.compression}{secured}")
        for c in self.checks:
            out.append(f"  {c['level']} {c['id']}: {c['message']}")
        if self.deleted:
            out.append(f"  --clean would delete {len(self.deleted)} files: " + ", ".join(self.deleted))
        elif self.clean:
            out.append("  --clean would delete nothing")
        if self.repacked and self.repacked["packs"]:
            r = self.repacked
            out.append(
                f"  --clean would repack {len(r['packs'])} media packs ({size_text(r['needed'])} of "
                f"{size_text(r['bytes'])} still needed): " + ", ".join(r["packs"])
            )
        out.append("  checks pass" if self.ok else "  the backup would be refused: fix the errors above")
        return out

    def as_json(self) -> dict:
        return {
            "action": "backup",
            "dry_run": True,
            "ok": self.ok,
            "set": self.set_name,
            "storage": self.storage,
            "compression": self.compression,
            "encrypted": self.encrypted,
            "gpg_recipient": self.gpg_recipient,
            "files": self.files,
            "media": self.media,
            "checks": self.checks,
            "deleted": self.deleted,
            "repacked": self.repacked,
        }


def plan(options: BackupOptions | None = None) -> BackupPlan:
    """What :func:`run` with ``options`` would write, where, with which connector and compression, what
    ``--clean`` would delete (and repack: it reads the media index of every incremental set it keeps), and what
    the checks say.  Reads the storage's listing; writes nothing."""
    options = options or BackupOptions()
    if options.skip_db and options.skip_media:
        raise BackupError("--skip-db and --skip-media together leave nothing to back up")
    checks = [
        {
            "id": m.id,
            "level": "error" if m.level >= ERROR else "warning",
            "message": m.msg + (f" ({m.hint})" if m.hint else ""),
        }
        for m in run_checks(tags=["backup_app"])
        if m.level >= WARNING
    ]
    storage = backup_storage(options.path)
    naming = Naming()
    compression = app_settings.compression if options.compress else "none"
    suffix = SUFFIX[compression] + (".gpg" if options.encrypt else "")
    sets = list_sets(storage, naming)
    stamp = naming.stamp(timezone.now())
    files = []
    for alias in [] if options.skip_db else app_settings.databases:
        engine = engine_for(alias)
        connector = type(engine.connector)
        files.append(
            {
                "name": naming.db_name(stamp, alias, engine.extension + suffix),
                "kind": "db",
                "database": alias,
                "vendor": engine.vendor,
                "connector": f"{connector.__module__}.{connector.__name__}",
            }
        )
    media = None
    if not options.skip_media:
        mode = options.media_mode or app_settings.media_mode
        base = INDEX_BASE if mode == "incremental" else "tar"
        files.append({"name": naming.media_name(stamp, base + suffix), "kind": "media", "database": None})
        source = media_storage()
        names = list(iter_media(source))
        media = {"files": len(names), "bytes": media_size(source)}
    deleted: list[str] = []
    repacked = None
    if options.clean:
        new = BackupSet(name=stamp, created=timezone.now(), status="complete")
        deleted = doomed(
            [new, *sets],
            options.retention or Retention.configured(),
            include_legacy=options.clean_legacy,
            protect={stamp},
        )
        # The media packs that no set left would name (incremental media): the prune deletes them too.  The
        # new set is not written yet: an incremental one would reuse packs of the set it builds on, which stay.
        gone = set(deleted)
        after = [s for s in sets if naming.manifest_name(s.name) not in gone]
        base = _base_set(sets, options.encrypt) if media is not None and mode == "incremental" else None
        after += [base] if base is not None else []
        listing = list_store(storage)
        gpg = prune._decryption()
        moves: dict[str, dict] = {}  # each move record read once
        deleted += prune.packs_to_delete(storage, listing, sets, after, gpg=gpg, moves=moves)
        repack = prune.plan_repack(storage, after, gpg, listing, copies=index_copies(storage, fill=False), moves=moves)
        repacked = {"packs": sorted(repack.packs), "needed": repack.needed_bytes, "bytes": repack.total_bytes}
    return BackupPlan(
        storage=describe(storage),
        set_name=stamp,
        compression=compression,
        encrypted=options.encrypt,
        gpg_recipient=app_settings.gpg_recipient if options.encrypt else None,
        files=files,
        media=media,
        checks=checks,
        deleted=deleted,
        clean=options.clean,
        repacked=repacked,
    )


def _back_up(options: BackupOptions, progress: Progress) -> BackupResult:
    if options.skip_db and options.skip_media:
        raise BackupError("--skip-db and --skip-media together leave nothing to back up")
    found = run_checks(tags=["backup_app"])
    problems = [m for m in found if m.level >= ERROR]
    if problems:
        raise BackupError(
            "backup refused: " + "; ".join(f"{m.id}: {m.msg}" + (f" ({m.hint})" if m.hint else "") for m in problems)
        )
    for m in found:
        if m.level >= WARNING:  # a misspelt key, the default folder: said on every run, not only by `check`
            logger.warning("%s: %s%s", m.id, m.msg, f" ({m.hint})" if m.hint else "")
    storage = backup_storage(options.path)
    where = describe(storage)
    progress.step(f"Backing up to {where}")
    contents = SetContents(
        compression=app_settings.compression if options.compress else "none",
        encrypt=options.encrypt,
        databases=[] if options.skip_db else app_settings.databases,
        media=not options.skip_media,
        origin=options.origin,
        media_mode=options.media_mode or app_settings.media_mode,
    )
    with site_lock("backup") as lock:
        rollback.recover(progress)  # a restore killed half way is undone before anything is read
        check_room(storage, contents)
        manifest = write_set(storage, contents, progress)
        if not options.clean:  # pruning reads it back itself
            prune.confirm_stored(storage, manifest)
        deleted = []
        if options.clean:
            deleted = prune.prune(
                storage,
                options.retention or Retention.configured(),
                lock=lock,
                include_legacy=options.clean_legacy,
                new_set=manifest["name"],
                progress=progress,
            ).deleted
        # Safety copies of earlier restores expire on every backup, not only at the next restore.
        for name in rollback.expire(app_settings.safety_days):
            progress.step(f"Removed expired safety copy {name} (older than {app_settings.safety_days} days)")
    return BackupResult(manifest=manifest, storage=where, deleted=deleted)


def room_needed(storage, what: SetContents) -> tuple[int, str] | None:
    """``(bytes, how they were reckoned)`` a new set like ``what`` is about to take in ``storage``: the files of
    the same kinds (dumps, media) of the newest complete set there, else (a first backup) the media folder's
    bytes when nothing is compressed; None when it cannot be told beforehand (a first compressed backup)."""
    earlier = next((s for s in list_sets(storage) if s.complete and of_this_site(s)), None)
    if earlier is not None:
        size = sum(
            f.size or 0
            for f in earlier.files
            if (f.kind == "db" and f.database in what.databases) or (f.kind == "media" and what.media)
        )
        return size, f"as much as the same files of set {earlier.name}"
    if what.compression == "none" and not what.databases and what.media and what.media_mode == "archive":
        size = media_size(media_storage())
        return (size, "the media files' size") if size is not None else None
    return None


def free_bytes(folder: Path) -> tuple[Path, int]:
    """``(the folder looked at, bytes this user may still write there)``: ``folder``, or its nearest existing
    parent when it is not made yet."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder, shutil.disk_usage(folder).free


def check_room(storage, what: SetContents) -> None:
    """Refuse a backup to a local folder without room for it (:func:`room_needed`), before anything is written:
    a backup that fills the disk fails half way, and the site's other writers fail with it."""
    if not isinstance(storage, FileSystemStorage):
        return  # a remote storage cannot say; a full one fails the upload, and the partial set is removed
    needed = room_needed(storage, what)
    if needed is None:
        return
    size, basis = needed
    folder = Path(storage.location)
    _, free = free_bytes(folder)
    if size > free:
        raise BackupError(
            f"the backup folder {folder} has {free:,} bytes free and this backup needs about {size:,} ({basis}); "
            f"free some room there or point {app_settings.env_name('backup_dir')} at a larger disk; nothing was "
            "written"
        )


def _new_stamp(storage, naming: Naming) -> str:
    """A stamp no file in the storage has yet: with a date format to the second, the next second's; with a
    coarser one (``%Y-%m-%d``), the timestamp with the first free suffix (``_2``, ``_3``...)."""
    taken = {p.stamp for p in map(naming.parse, list_files(storage)) if p is not None}
    if not naming.to_the_second:
        stamp = naming.stamp(timezone.now())
        n = 2
        candidate = stamp
        while candidate in taken:
            candidate, n = naming.nth(stamp, n), n + 1
        return candidate
    for _ in range(120):
        stamp = naming.stamp(timezone.now())
        if stamp not in taken:
            return stamp
        time.sleep(0.5)
    raise BackupError("no unused timestamp for a new backup in the last minute; is the clock moving?")


def write_set(storage, what: SetContents, progress: Progress = NO_PROGRESS) -> dict:
    """Write one complete backup set to ``storage`` and return its manifest.

    Order: a pending marker, each database dump, the media archive, the
    manifest (which makes the set complete), then the marker is removed.  If
    any step fails, every file written so far is deleted and
    :class:`BackupError` raised: no complete set is left behind.
    """
    say = progress.step
    naming = Naming()
    aliases = what.databases
    gpg = GpgSpec.for_encryption() if what.encrypt else None
    suffix = SUFFIX[what.compression] + (".gpg" if what.encrypt else "")
    started = timezone.now()
    stamp = _new_stamp(storage, naming)
    pending = naming.pending_name(stamp)
    written: list[str] = []
    manifest: dict = {
        "format": MANIFEST_FORMAT,
        "name": stamp,
        "created": timezone.localtime(started).isoformat(),
        "host": socket.gethostname(),
        "site": site_identity(),
        "origin": what.origin,
        "versions": {
            "backup_app": __version__,
            "django": django.get_version(),
            "dbbackup": dbbackup.__version__,
            "python": platform.python_version(),
        },
        "compression": what.compression,
        "encrypted": what.encrypt,
        "gpg_recipient": gpg.recipient if gpg else None,
        "databases": [],
        "media": None,
        "files": [],
    }
    media_job = None
    media_name = None
    posts = []  # dbbackup's post_* signals, sent once the set is complete
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-media")
    try:
        # Who writes the set: a later --clean removes it only once that process is gone.
        write_json(storage, pending, {"started": manifest["created"], "site": manifest["site"], **owner()})
        if what.media and what.media_mode == "incremental":
            media_name = naming.media_name(stamp, INDEX_BASE + suffix)
            previous = previous_media(storage, what, say)
            incremental: list[IncrementalStats] = []
            say(f"Backing up media files incrementally, index {media_name}")
            hooks.send_pre_media_backup(storage)

            def archive_media():
                t0 = time.monotonic()
                live = progress.live
                progress.start(media_name, label="media files", total=media_size(media_storage()) if live else None)
                copies = index_copies(storage)  # a remote storage: the next prunes read this copy, not the storage
                copy = copies.start() if copies is not None else None
                try:
                    stored, done = write_media(
                        storage,
                        media_storage(),
                        media_name,
                        previous=previous,
                        compression=what.compression,
                        gpg=gpg,
                        cancel=cancel,
                        # On a terminal the bar moves with the bytes read (an unchanged file's all at once).
                        on_bytes=(lambda n: progress.advance(media_name, n)) if live else None,
                        on_file=(lambda size: progress.advance(media_name, 0, files=1)) if live else None,
                        index_copy=copy,
                    )
                except BaseException:
                    if copies is not None:
                        copies.drop(copy)
                    raise
                finally:
                    progress.finish(media_name)
                if copies is not None:
                    copies.keep(copy, stored.sha256, stored.size)
                incremental.append(done)
                return stored, time.monotonic() - t0

            if isinstance(storage, FileSystemStorage):
                media_job = pool.submit(archive_media)
        elif what.media:
            media_name = naming.media_name(stamp, "tar" + suffix)
            stats = ArchiveStats()
            say(f"Backing up media files to {media_name}")
            hooks.send_pre_media_backup(storage)

            def archive_media():
                t0 = time.monotonic()
                total = media_size(media_storage()) if progress.live else None
                progress.start(media_name, label="media files", total=total)
                try:
                    stored = store_stream(
                        storage,
                        media_name,
                        lambda out: write_tar(
                            media_storage(),
                            out,
                            stats,
                            cancel=cancel,
                            # The bar moves with the bytes read (inside a large file too) and counts files.
                            on_bytes=lambda n: progress.advance(media_name, n),
                            on_file=lambda size: progress.advance(media_name, 0, files=1),
                        ),
                        compression=what.compression,
                        gpg=gpg,
                    )
                finally:
                    progress.finish(media_name)
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
            sidecar = hooks.sidecar_for(engine.connector)
            hooks.send_pre_backup(engine.connector)
            dumped = [0]

            def count(n: int, name=name, dumped=dumped) -> None:
                dumped[0] += n
                progress.advance(name, n)

            progress.start(name, label=f"database '{alias}'")
            try:
                stored = store_stream(
                    storage,
                    name,
                    lambda out, e=engine, count=count: e.dump(
                        CountingWriter(out, count), compressed=what.compression != "none"
                    ),
                    compression=what.compression,
                    gpg=gpg,
                )
            finally:
                progress.finish(name)
            written.append(name)
            sidecar_fields = hooks.write_sidecar(storage, name, sidecar)
            written.append(sidecar_fields["metadata"])
            manifest["databases"].append(
                {
                    "alias": alias,
                    "vendor": engine.vendor,
                    "engine": engine.settings["ENGINE"],
                    "connector": hooks.connector_path(engine.connector),
                    "file": name,
                    **sidecar_fields,
                    "migrations": migrations,
                    "tables": tables,
                    "excluded_table_data": engine.exclude,
                    "source_bytes": dumped[0],
                }
            )
            manifest["files"].append(_entry(stored, "db", what, database=alias))
            say(
                f"  {size_text(dumped[0])} dumped, {size_text(stored.size)} stored "
                f"in {seconds_text(time.monotonic() - t0)}"
            )
            posts.append(lambda e=engine, n=name: hooks.send_post_backup(e.connector, n, storage))
            pause_at(f"backup:db-dumped:{alias}")
        if what.media:
            stored, seconds = media_job.result() if media_job is not None else archive_media()
            media_job = None
            written.append(media_name)
            manifest["files"].append(_entry(stored, "media", what))
            if what.media_mode == "incremental":
                done = incremental[0]
                manifest["media"] = {
                    "file": media_name,
                    "mode": "incremental",
                    "files": done.files,
                    "bytes": done.bytes,
                    "packs": done.packs,
                    "reused_files": done.reused_files,
                    "read_bytes": done.read_bytes,
                    "new_packs": done.new_packs,
                    "new_bytes": done.new_bytes,
                }
                if done.skipped:
                    manifest["media"]["skipped"] = done.skipped
                say(
                    f"  media: {done.files:,} files ({done.reused_files:,} unchanged, not read), "
                    f"{size_text(done.read_bytes)} read, {done.new_packs} new packs of {size_text(done.new_bytes)}, "
                    f"index {size_text(stored.size)}, in {seconds_text(seconds)}"
                )
            else:
                manifest["media"] = {"file": media_name, "files": stats.files, "bytes": stats.bytes}
                if stats.skipped:
                    manifest["media"]["skipped"] = stats.skipped
                say(
                    f"  media: {stats.files:,} files, {size_text(stats.bytes)} read, {size_text(stored.size)} stored "
                    f"in {seconds_text(seconds)}"
                )
            posts.append(lambda: hooks.send_post_media_backup(media_name, storage))
            pause_at("backup:media-written")
        manifest["finished"] = timezone.localtime(timezone.now()).isoformat()
        write_json(storage, naming.manifest_name(stamp), manifest)
        written.append(naming.manifest_name(stamp))
        if what.media and what.media_mode == "incremental":
            entry = manifest["files"][-1]
            remember_index(_index_cache(), describe(storage), stamp, entry["sha256"], incremental[0])
    except BaseException as err:
        if media_job is not None:
            cancel.set()
            with suppress(BaseException):
                media_job.result()  # its own failure (or the cancel) removed its file
        # Every file the run wrote goes (the media archive too, finished or not); the pending marker last, and
        # only when all the others are gone: a set left half-deleted still reads as unfinished.
        left = []
        for name in dict.fromkeys([*written, *([media_name] if media_name else []), naming.manifest_name(stamp)]):
            if left and getattr(storage, "unresponsive", False):
                left.append(name)  # it did not answer the last request either: not one more wait per file
                continue
            try:
                if storage.exists(name):
                    storage.delete(name)
            except Exception:
                left.append(name)
        if not left:
            with suppress(Exception):
                storage.delete(pending)
        unfinished = f"the set stays marked unfinished and the next {hints.command('backup', '--clean')} removes it"
        if not left:
            tail = "the partial set was removed"
        elif getattr(storage, "unresponsive", False):
            tail = f"the storage did not answer, so what set {stamp} wrote is left: {unfinished}"
        else:
            tail = f"could not remove {', '.join(left)}: {unfinished}"
        if isinstance(err, Interrupted):
            error = BackupError(f"backup {err}; {tail}")
            error.exit_status = err.exit_status
            raise error from None
        if isinstance(err, BackupError):
            raise BackupError(f"{err}; {tail}") from None
        if isinstance(err, KeyboardInterrupt):
            raise BackupError(f"backup interrupted; {tail}") from None
        raise BackupError(f"backup failed: {redact(err)}; {tail}") from err
    finally:
        pool.shutdown(wait=True)
    try:
        storage.delete(pending)
    except Exception:
        pass
    for post in posts:
        post()
    say(f"Backup set {stamp} complete: {_contents_text(manifest, written)}")
    return manifest


def _contents_text(manifest: dict, written: list[str]) -> str:
    """What a finished set holds, counted as it is: ``2 data files, 4 files in all (with the manifest and
    1 .metadata sidecar)``; an incremental backup adds the media packs it wrote (shared with later sets)."""
    data = len(manifest["files"])
    total = len(dict.fromkeys(written))
    sidecars = total - data - 1  # written: the data files, their sidecars and the manifest
    extra = "the manifest" + (f" and {sidecars} .metadata sidecar{'s' if sidecars != 1 else ''}" if sidecars else "")
    text = f"{data} data file{'s' if data != 1 else ''}, {total} files in all (with {extra})"
    media = manifest.get("media") or {}
    if media.get("mode") == "incremental":
        packs = media.get("new_packs", 0)
        text += f", and {packs} new media pack{'s' if packs != 1 else ''}"
    return text


def previous_media(storage, what: SetContents, say=lambda _m: None) -> Previous | None:
    """The newest complete incremental set's index and packs, for a backup to reuse; None if there is none.

    Only a set encrypted as this one will be (an encrypted set never shares packs with a plain one).  An
    index that cannot be read (an encrypted one without the secret key here) is said, and nothing reused.
    """
    bset = _base_set(list_sets(storage), what.encrypt)
    if bset is not None:
        kept = recall_index(_index_cache(), describe(storage), bset.name, bset.media_file.sha256, bset.packs)
        if kept is not None:
            return kept
        try:
            with read_checked(storage, bset.media_file, GpgSpec.for_decryption()) as stream:
                index = parse_index(stream, bset.packs)
        except Exception as err:
            say(f"  the media index of set {bset.name} cannot be read ({redact(err)}); every media file is read again")
            return None
        return Previous.from_index(index, bset.packs)
    return None


def _base_set(sets: list[BackupSet], encrypt: bool) -> BackupSet | None:
    """The set an incremental backup builds on: the newest complete incremental set encrypted as it will be."""
    for bset in sets:
        media = (bset.manifest or {}).get("media") or {}
        if not bset.complete or media.get("mode") != "incremental" or bset.media_file is None:
            continue
        if bool(bset.manifest.get("encrypted")) == encrypt:
            return bset
    return None


def _index_cache():
    """Where the plain copy of the last media index is kept: a private folder of ``backup_safety_dir``."""
    return media_index_folder()


def _entry(stored, kind: str, what: SetContents, database: str | None = None) -> dict:
    return {
        "name": stored.name,
        "kind": kind,
        "size": stored.size,
        "sha256": stored.sha256,
        "compression": None if what.compression == "none" else what.compression,
        "encrypted": what.encrypt,
        "database": database,
    }
