"""Restore a backup set: choose -> verify everything -> confirm -> restore -> migrate forward.

Nothing is changed until every chosen file has been read in full: checksum
and size against the manifest, decryption, decompression, the dump's magic
bytes and every media archive member.  A newer schema is refused.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader

from .databases import Engine, engine_for
from .errors import RestoreError
from .media import media_storage, restore_archive, scan_archive
from .pipeline import GpgSpec, ReadResult, open_stream
from .safety import SafetyRecord, expire, safety_root
from .secrets import redact
from .sets import BackupFile, BackupSet, Naming, list_sets, split_extension

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
        if not opts.skip_db and not db_files:
            if named_set is None or not named_set.db_files:
                raise RestoreError(
                    "no database file goes with the named media file; name one with --db-file or pass --skip-db"
                )
            db_files = [(f, named_set) for f in named_set.db_files]
        if not opts.skip_media and media is None:
            if named_set is None or named_set.media_file is None:
                raise RestoreError(
                    "no media archive goes with the named database file; name one with "
                    "--media-file or pass --skip-media"
                )
            media = (named_set.media_file, named_set)
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
        elif media is None and not opts.skip_media and chosen_set is not None and chosen_set.complete:
            pass  # a set made with --skip-media: restore its databases only

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


def gpg_for_restore(plan: Plan, interactive: bool) -> GpgSpec:
    """GnuPG home and passphrase (file, environment, or a terminal prompt; never argv)."""
    app = getattr(settings, "BACKUP_APP", {})
    passphrase = app.get("GPG_PASSPHRASE")
    if app.get("GPG_PASSPHRASE_FILE"):
        try:
            passphrase = Path(app["GPG_PASSPHRASE_FILE"]).read_text().rstrip("\r\n")
        except OSError as err:
            raise RestoreError(
                f"backup_gpg_passphrase_file {app['GPG_PASSPHRASE_FILE']}: cannot read it ({err.strerror})"
            ) from None
    encrypted = any(i.file.encrypted for i in plan.databases) or bool(plan.media and plan.media.encrypted)
    if encrypted and passphrase is None and interactive and sys.stdin.isatty():
        from getpass import getpass

        passphrase = getpass("GPG passphrase of the backup key (empty if none): ") or None
    return GpgSpec(home=app.get("GPG_HOME"), passphrase=passphrase)


def _code_migrations() -> set[tuple[str, str]]:
    return set(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)


def verify_plan(storage, plan: Plan, opts: RestoreOptions, gpg: GpgSpec, say: Progress) -> list[str]:
    """Read every chosen file in full and check it; RestoreError on the first problem."""
    notes = []
    known = _code_migrations()
    for item in plan.databases:
        f = item.file
        if item.migrations is not None:
            unknown = sorted({tuple(m) for m in item.migrations} - known)
            if unknown and not opts.allow_newer:
                shown = ", ".join(f"{a}.{n}" for a, n in unknown[:3])
                raise RestoreError(
                    f"{f.name} was made by a newer version: its database has migrations this code does not "
                    f"know ({shown}); install that version, or pass --restore-allow-newer-version"
                )
            if unknown:
                notes.append(
                    f"restoring a backup with {len(unknown)} unknown migrations (--restore-allow-newer-version)"
                )
        say(f"Checking {f.name}")
        read_and_check(storage, f, opts, gpg, lambda stream, i=item: i.engine.check_magic(stream.read(64), i.file.name))
    if plan.media is not None:
        say(f"Checking {plan.media.name}")
        found = {}

        def scan(stream) -> None:
            found["contents"] = scan_archive(stream)

        read_and_check(storage, plan.media, opts, gpg, scan)
        expected = plan.media_expected
        contents = found["contents"]
        if expected and (contents.files != expected.get("files") or contents.bytes != expected.get("bytes")):
            raise RestoreError(
                f"{plan.media.name} holds {contents.files} files ({contents.bytes} bytes) but its "
                f"manifest says {expected.get('files')} ({expected.get('bytes')}); not restoring"
            )
        notes.append(f"media archive: {contents.files} files, {contents.bytes:,} bytes, all members safe")
    return notes


def read_and_check(storage, f: BackupFile, opts: RestoreOptions, gpg: GpgSpec, consume) -> None:
    """Read all of ``f`` through ``consume``, checking size and SHA-256 against the manifest."""
    if f.size is not None:
        try:
            stored = storage.size(f.name)
        except Exception:
            stored = None
        if stored is not None and stored != f.size:
            raise RestoreError(
                f"{f.name} is {stored} bytes but its manifest says {f.size}; "
                "the file is truncated or damaged, not restoring"
            )
    result = ReadResult()
    compression = f.compression if opts.uncompress else None
    with open_stream(storage, f.name, compression=compression, encrypted=f.encrypted, gpg=gpg, result=result) as stream:
        consume(stream)
    if f.size is not None and result.size != f.size:
        raise RestoreError(
            f"{f.name} is {result.size} bytes but its manifest says {f.size}; "
            "the file is truncated or damaged, not restoring"
        )
    if f.sha256 and result.sha256 != f.sha256:
        raise RestoreError(f"{f.name} does not match its SHA-256 in the manifest; the file is damaged, not restoring")


def restore(
    storage,
    opts: RestoreOptions,
    progress: Progress | None = None,
    confirm: Callable[[str], bool] | None = None,
) -> dict:
    """Restore the chosen backup; returns a report dict.  RestoreError says what state is left."""
    say = progress or (lambda _msg: None)
    plan = choose(storage, opts)
    say(f"Restoring from {plan.label}")
    gpg = gpg_for_restore(plan, opts.interactive)
    notes = verify_plan(storage, plan, opts, gpg, say)
    for note in notes:
        say(f"  {note}")
    what = [f"database '{i.alias}' from {i.file.name}" for i in plan.databases]
    if plan.media is not None:
        what.append(f"media files from {plan.media.name}" + (" (mirror: extra files deleted)" if opts.mirror else ""))
    if confirm is not None and not confirm("This replaces " + "; ".join(what) + ". Continue?"):
        raise RestoreError("restore cancelled; nothing was changed")

    for item in plan.databases:
        for stale in item.engine.cleanup_stale():
            say(f"Removed {stale}, left behind by an interrupted restore")
    report: dict = {
        "set": plan.set.name if plan.set else None,
        "databases": [],
        "media": None,
        "migrated": [],
        "safety": None,
    }
    safety = SafetyRecord.create(safety_root(), report["set"])
    try:
        for item in plan.databases:
            say(f"Restoring database '{item.alias}' from {item.file.name}")
            compression = item.file.compression if opts.uncompress else None
            with open_stream(
                storage, item.file.name, compression=compression, encrypted=item.file.encrypted, gpg=gpg
            ) as stream:
                item.engine.restore(stream, safety)
            report["databases"].append(item.alias)
        if plan.media is not None:
            say(f"Restoring media files from {plan.media.name}")
            compression = plan.media.compression if opts.uncompress else None
            with open_stream(
                storage, plan.media.name, compression=compression, encrypted=plan.media.encrypted, gpg=gpg
            ) as stream:
                media = restore_archive(media_storage(), stream, safety.media_folder, mirror=opts.mirror)
            safety.set_media(media.pop("created"))
            report["media"] = media
            say(f"  {media['files']} files restored, {media['removed']} removed")
    except BaseException as err:
        message = redact(err) if isinstance(err, Exception) else "interrupted"
        try:
            undone = safety.rollback()
        except Exception as undo_err:
            raise RestoreError(
                f"{message}; putting the old state back ALSO failed ({redact(undo_err)}): the safety copy is in "
                f"{safety.folder}, run `invoke rollback --name {safety.name}` once the cause is fixed"
            ) from None
        safety.discard()
        what = " and ".join(undone) + " put back as they were" if undone else "nothing had been changed"
        raise RestoreError(f"{message}; the restore was undone ({what})") from None
    safety.mark("done")
    if opts.safety:
        report["safety"] = safety.name
        say(
            f"The replaced state is kept in {safety.folder}; undo this restore with "
            f"`invoke rollback --name {safety.name}` (kept {settings.BACKUP_APP['SAFETY_DAYS']} days)"
        )
    else:
        safety.discard()
    for name in expire(settings.BACKUP_APP["SAFETY_DAYS"]):
        say(f"Removed expired safety copy {name}")
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
