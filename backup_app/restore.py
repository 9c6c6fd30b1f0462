"""Restore a backup set: choose -> check versions -> confirm -> stage and check -> swap in -> migrate forward.

Nothing is changed until every chosen file has been read in full: checksum
and size against the manifest, decryption, decompression, the dump's magic
bytes and every media archive member.  A newer schema is refused.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.core.management import call_command
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader

from .engines import Engine, Staged, engine_for
from .errors import RestoreError
from .media import StagedArchive, abandon_archive, commit_archive, media_storage, stage_archive, undo_media
from .pipeline import GpgSpec, ReadResult, open_stream
from .safety import SafetyRecord, expired, list_records, safety_root
from .secrets import redact
from .sets import BackupFile, BackupSet, Naming, list_sets, split_extension
from .settings import app_settings
from .streams import PrefixedReader

Progress = Callable[[str], None]


@dataclass
class RestoreOptions:
    db_file: str | None = None
    media_file: str | None = None
    skip_db: bool = False
    skip_media: bool = False
    mirror: bool = False
    allow_newer: bool = False
    uncompress: bool = True
    decrypt: bool = False
    interactive: bool = False
    safety: bool = True


@dataclass
class DbItem:
    alias: str
    file: BackupFile
    engine: Engine
    migrations: list[list[str]] | None = None


@dataclass
class Plan:
    """What will be restored, from which set."""

    set: BackupSet | None
    databases: list[DbItem] = field(default_factory=list)
    media: BackupFile | None = None
    media_expected: dict | None = None

    @property
    def label(self) -> str:
        if self.set is None:
            return "named files"
        return f"{self.set.status} set {self.set.name}"


def _adhoc(name: str) -> BackupFile:
    """A file whose name does not follow the templates: flags from its suffixes."""
    base, compression, encrypted = split_extension(name)
    kind = "media" if base.endswith(".tar") else "db"
    return BackupFile(name, kind, "", compression=compression, encrypted=encrypted, base_extension=base)


def _find(sets: list[BackupSet], name: str, storage) -> tuple[BackupFile, BackupSet | None]:
    for s in sets:
        for f in s.files:
            if f.name == name:
                return f, s
    if not storage.exists(name):
        raise RestoreError(f"{name} is not in the backup storage; run `invoke listbackups` to see the sets")
    return _adhoc(name), None


def _alias_for(f: BackupFile, bset: BackupSet | None) -> str:
    aliases = list(settings.DATABASES)
    if bset is not None and bset.manifest:
        for entry in bset.manifest.get("databases", []):
            if entry.get("file") == f.name:
                return entry["alias"]
    if f.database and f.database in aliases:
        return f.database
    return "default"


def _migrations_for(f: BackupFile, bset: BackupSet | None) -> list[list[str]] | None:
    if bset is None or not bset.manifest:
        return None
    for entry in bset.manifest.get("databases", []):
        if entry.get("file") == f.name:
            return entry.get("migrations")
    return None


def choose(storage, opts: RestoreOptions) -> Plan:
    """Pick the files to restore: named ones, else the newest complete set, else legacy files."""
    sets = list_sets(storage, Naming())
    chosen_set: BackupSet | None = None
    db_files: list[tuple[BackupFile, BackupSet | None]] = []
    media: tuple[BackupFile, BackupSet | None] | None = None

    if opts.db_file or opts.media_file:
        if opts.db_file and not opts.skip_db:
            db_files.append(_find(sets, opts.db_file, storage))
        if opts.media_file and not opts.skip_media:
            media = _find(sets, opts.media_file, storage)
        named_set = (db_files[0][1] if db_files else None) or (media[1] if media else None)
        # A complete set's parts belong together.  Stock dbbackup writes the dump and the
        # archive in separate seconds, so a legacy file goes with the newest legacy other part.
        legacy = [s for s in sets if s.status == "legacy"]
        partners = [named_set] if named_set is not None and named_set.complete else [named_set, *legacy]
        partners = [s for s in partners if s is not None]
        if not opts.skip_db and not db_files:
            source = next((s for s in partners if s.db_files), None)
            if source is None:
                raise RestoreError(
                    "no database file goes with the named media file; name one with --db-file or pass --skip-db"
                )
            db_files = [(f, source) for f in source.db_files]
        if not opts.skip_media and media is None:
            source = next((s for s in partners if s.media_file is not None), None)
            if source is None:
                raise RestoreError(
                    "no media archive goes with the named database file; name one with "
                    "--media-file or pass --skip-media"
                )
            media = (source.media_file, source)
        chosen_set = named_set
    else:
        complete = [s for s in sets if s.complete]
        if complete:
            chosen_set = complete[0]
            db_files = [(f, chosen_set) for f in chosen_set.db_files]
            media = (chosen_set.media_file, chosen_set) if chosen_set.media_file else None
        else:
            legacy = [s for s in sets if s.status == "legacy"]
            if not legacy:
                raise RestoreError("no backup found in the backup storage; run `invoke backup` first")
            newest_db: dict[str, tuple[BackupFile, BackupSet]] = {}
            for s in legacy:  # newest first
                for f in s.db_files:
                    newest_db.setdefault(_alias_for(f, s), (f, s))
                if media is None and s.media_file is not None:
                    media = (s.media_file, s)
            db_files = list(newest_db.values())
            chosen_set = legacy[0]
        if opts.skip_db:
            db_files = []
        if opts.skip_media:
            media = None

    if not db_files and media is None:
        raise RestoreError("nothing to restore: the chosen backup has no database or media file")
    plan = Plan(set=chosen_set)
    for f, s in db_files:
        alias = _alias_for(f, s)
        if alias not in settings.DATABASES:
            raise RestoreError(f"{f.name} holds database {alias!r}, which is not in DATABASES")
        plan.databases.append(DbItem(alias, f, engine_for(alias), _migrations_for(f, s)))
    if media is not None:
        plan.media = media[0]
        if media[1] is not None and media[1].manifest:
            plan.media_expected = media[1].manifest.get("media")
    return plan


def configured_gpg() -> GpgSpec:
    """GnuPG home and the passphrase from ``backup_gpg_passphrase_file`` or ``backup_gpg_passphrase`` (never argv)."""
    passphrase = app_settings.gpg_passphrase
    passphrase_file = app_settings.gpg_passphrase_file
    if passphrase_file:
        try:
            passphrase = Path(passphrase_file).read_text().rstrip("\r\n")
        except OSError as err:
            raise RestoreError(
                f"backup_gpg_passphrase_file {passphrase_file}: cannot read it ({err.strerror})"
            ) from None
    return GpgSpec(home=app_settings.gpg_home, passphrase=passphrase)


def gpg_for_restore(plan: Plan, interactive: bool) -> GpgSpec:
    """:func:`configured_gpg`, or on a terminal a prompt when the plan has encrypted files and no passphrase."""
    gpg = configured_gpg()
    encrypted = any(i.file.encrypted for i in plan.databases) or bool(plan.media and plan.media.encrypted)
    if encrypted and gpg.passphrase is None and interactive and sys.stdin.isatty():
        from getpass import getpass

        passphrase = getpass("GPG passphrase of the backup key (empty if none): ") or None
        gpg = GpgSpec(home=gpg.home, passphrase=passphrase)
    return gpg


def _code_migrations() -> set[tuple[str, str]]:
    return set(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)


def check_versions(plan: Plan, opts: RestoreOptions) -> list[str]:
    """Refuse a backup whose database has migrations this code does not know (a newer version made it)."""
    notes = []
    known = _code_migrations()
    for item in plan.databases:
        if item.migrations is None:
            continue
        unknown = sorted({tuple(m) for m in item.migrations} - known)
        if unknown and not opts.allow_newer:
            shown = ", ".join(f"{a}.{n}" for a, n in unknown[:3])
            raise RestoreError(
                f"{item.file.name} was made by a newer version: its database has migrations this code does not "
                f"know ({shown}); install that version, or pass --restore-allow-newer-version"
            )
        if unknown:
            notes.append(f"restoring a backup with {len(unknown)} unknown migrations (--restore-allow-newer-version)")
    return notes


@contextmanager
def read_checked(storage, f: BackupFile, opts: RestoreOptions, gpg: GpgSpec) -> Iterator:
    """Yield the decrypted, decompressed content of ``f``; afterwards check size and SHA-256 against the manifest."""
    if f.size is not None:
        try:
            stored = storage.size(f.name)
        except Exception:
            stored = None
        if stored is not None and stored != f.size:
            raise RestoreError(
                f"{f.name} is {stored} bytes but its manifest says {f.size}; the file is truncated or damaged"
            )
    result = ReadResult()
    compression = f.compression if opts.uncompress else None
    with open_stream(storage, f.name, compression=compression, encrypted=f.encrypted, gpg=gpg, result=result) as stream:
        yield stream
    if f.size is not None and result.size != f.size:
        raise RestoreError(
            f"{f.name} is {result.size} bytes but its manifest says {f.size}; the file is truncated or damaged"
        )
    if f.sha256 and result.sha256 != f.sha256:
        raise RestoreError(f"{f.name} does not match its SHA-256 in the manifest; the file is damaged")


def read_and_check(storage, f: BackupFile, opts: RestoreOptions, gpg: GpgSpec, consume) -> None:
    """Read all of ``f`` through ``consume``, checking size and SHA-256 against the manifest."""
    with read_checked(storage, f, opts, gpg) as stream:
        consume(stream)


def _abandon(staged_dbs: list[tuple[DbItem, Staged]], staged_media: StagedArchive | None) -> None:
    """Throw away everything staged and not swapped in."""
    for item, staged in staged_dbs:
        with suppress(Exception):
            item.engine.abandon(staged)
    if staged_media is not None:
        abandon_archive(staged_media)


def _stage(storage, plan: Plan, opts: RestoreOptions, gpg: GpgSpec, say: Progress):
    """Load every chosen file into a staging place, checking it on the way; the live site is untouched.

    On a local backup folder the media archive is extracted while the databases load (independent streams).
    """
    staged_dbs: list[tuple[DbItem, Staged]] = []
    staged_media: StagedArchive | None = None

    def stage_media() -> StagedArchive:
        with read_checked(storage, plan.media, opts, gpg) as stream:
            return stage_archive(media_storage(), stream)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore-media")
    media_job = None
    try:
        if plan.media is not None:
            say(f"Extracting {plan.media.name} into a staging folder")
            if isinstance(storage, FileSystemStorage):
                media_job = pool.submit(stage_media)
        for item in plan.databases:
            say(f"Loading {item.file.name} into a staging database")
            with read_checked(storage, item.file, opts, gpg) as stream:
                head = stream.read(64)
                item.engine.check_dump(head, item.file.name)
                staged = item.engine.stage(PrefixedReader(head, stream))
                staged_dbs.append((item, staged))
        if plan.media is not None:
            job, media_job = media_job, None
            staged_media = job.result() if job is not None else stage_media()
            expected = plan.media_expected
            found = (staged_media.files, staged_media.bytes)
            if expected and found != (expected.get("files"), expected.get("bytes")):
                raise RestoreError(
                    f"{plan.media.name} holds {found[0]} files but its manifest says {expected.get('files')}"
                )
    except BaseException as err:
        if media_job is not None:
            with suppress(BaseException):
                abandon_archive(media_job.result())
        _abandon(staged_dbs, staged_media)
        if isinstance(err, RestoreError):
            raise RestoreError(f"{err}; nothing was changed") from None
        if isinstance(err, Exception):
            raise RestoreError(f"{redact(err)}; nothing was changed") from None
        raise
    finally:
        pool.shutdown(wait=True)
    return staged_dbs, staged_media


def restore(
    storage,
    opts: RestoreOptions,
    progress: Progress | None = None,
    confirm: Callable[[str], bool] | None = None,
) -> dict:
    """Restore the chosen backup; returns a report dict.  RestoreError says what state is left.

    Stage everything (databases into new databases or temp files, media into a
    staging folder) while checking checksums, types and archive members; only
    then swap it all in, keeping the replaced state in a safety record.  A
    failure while staging changes nothing; a failure while swapping puts back
    what was already swapped.
    """
    say = progress or (lambda _msg: None)
    plan = choose(storage, opts)
    say(f"Restoring from {plan.label}")
    gpg = gpg_for_restore(plan, opts.interactive)
    for note in check_versions(plan, opts):
        say(f"  {note}")
    what = [f"database '{i.alias}' from {i.file.name}" for i in plan.databases]
    if plan.media is not None:
        what.append(f"media files from {plan.media.name}" + (" (mirror: extra files deleted)" if opts.mirror else ""))
    if confirm is not None and not confirm("This replaces " + "; ".join(what) + ". Continue?"):
        raise RestoreError("restore cancelled; nothing was changed")
    for item in plan.databases:
        for stale in item.engine.cleanup():
            say(f"Removed {stale}, left behind by an interrupted restore")

    staged_dbs, staged_media = _stage(storage, plan, opts, gpg, say)
    report: dict = {
        "set": plan.set.name if plan.set else None,
        "databases": [],
        "media": None,
        "migrated": [],
        "safety": None,
    }
    safety = SafetyRecord.create(safety_root(), report["set"])
    try:
        while staged_dbs:
            item, staged = staged_dbs[0]
            say(f"Swapping in database '{item.alias}'")
            item.engine.commit(staged, safety)
            staged_dbs.pop(0)
            report["databases"].append(item.alias)
        if staged_media is not None:
            say("Putting media files in place")
            media = commit_archive(media_storage(), staged_media, safety.media_folder, mirror=opts.mirror)
            staged_media = None
            safety.set_media(media.pop("created"))
            report["media"] = media
            say(
                f"  {media['files']} files restored ({media['unchanged']} already as in the backup), "
                f"{media['removed']} removed"
            )
    except BaseException as err:
        _abandon(staged_dbs, staged_media)
        message = redact(err) if isinstance(err, Exception) else "interrupted"
        try:
            undone = undo_record(safety)
        except Exception as undo_err:
            raise RestoreError(
                f"{message}; putting the old state back ALSO failed ({redact(undo_err)}): the safety copy is in "
                f"{safety.folder}, run `invoke rollback --name {safety.name}` once the cause is fixed"
            ) from None
        discard_record(safety)
        what = " and ".join(undone) + " put back as they were" if undone else "nothing had been changed"
        raise RestoreError(f"{message}; the restore was undone ({what})") from None
    safety.mark("done")
    if opts.safety:
        report["safety"] = safety.name
        say(
            f"The replaced state is kept in {safety.folder}; undo this restore with "
            f"`invoke rollback --name {safety.name}` (kept {app_settings.safety_days} days)"
        )
    else:
        discard_record(safety)
    for record in expired(list_records(), app_settings.safety_days):
        discard_record(record)
        say(f"Removed expired safety copy {record.name}")
    for item in plan.databases:
        applied = migrate_forward(item.alias)
        if applied:
            report["migrated"].append(item.alias)
            say(f"The backup of '{item.alias}' was older than this code: applied {applied} migrations")
    say("Restore complete")
    return report


def migrate_forward(alias: str) -> int:
    """Apply migrations the restored database lacks; returns how many were pending."""
    connection = connections[alias]
    connection.close()
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        call_command("migrate", database=alias, interactive=False, verbosity=0)
    return len(plan)


def undo_record(record: SafetyRecord) -> list[str]:
    """Put back everything ``record`` kept; returns what was rolled back."""
    done = []
    if record.media is not None or record.media_folder.exists():
        undo_media(media_storage(), record.media_folder, (record.media or {}).get("created", []))
        done.append("media files")
    for alias, entry in record.databases.items():
        engine_for(alias).undo(entry, record.folder)
        done.append(f"database '{alias}'")
    record.clear()
    record.mark("rolled back")
    return done


def discard_record(record: SafetyRecord) -> None:
    """Delete the kept state (old databases, moved-aside files) and the record."""
    for alias, entry in record.databases.items():
        try:
            engine_for(alias).discard(entry)
        except Exception:
            continue
    shutil.rmtree(record.folder, ignore_errors=True)
