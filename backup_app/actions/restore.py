"""Restore: choose -> check versions -> confirm -> stage and check -> swap in -> migrate forward.

Nothing is changed until every chosen file has been read in full: checksum
and size against the manifest, decryption, decompression, the dump's magic
bytes and every media archive member.  A newer schema is refused.  ``run``
holds the site lock, records the run in the history (which survives the
restore) and mails a failure to the admins.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.core.management import call_command
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader

from .. import hints
from ..engines import Engine, Staged, engine_for, site_lock
from ..errors import PutBackPending, RestoreError
from ..history import record_run
from ..interrupts import Interrupted, shielded, take_pending
from ..media import (
    StagedArchive,
    abandon_archive,
    commit_archive,
    kept_size,
    media_size,
    media_storage,
    stage_archive,
)
from ..models import BackupRun
from ..notify import announce, notify_failure, ping
from ..pipeline import GpgSpec
from ..progress import NO_PROGRESS, Progress, seconds_text
from ..safety import SafetyRecord, safety_root
from ..secrets import redact
from ..sets import BackupFile, BackupSet, Naming, list_sets, of_this_site, set_site, site_identity, split_extension
from ..settings import app_settings
from ..storage import backup_storage, describe
from ..streams import PrefixedReader, file_system_of, room_left, room_margin
from ..testing import pause_at
from . import hooks, rollback
from .common import TAIL_MAX, read_checked

#: Asked before anything changes (on a terminal); False cancels the restore.
Confirm = Callable[[str], bool]


@dataclass
class RestoreOptions:
    """What ``invoke restore`` can ask for; the defaults restore the newest complete set."""

    path: str | None = None  # a local folder instead of the backup storage
    db_file: str | None = None  # a name in the storage, or a path on disk
    media_file: str | None = None
    skip_db: bool = False
    skip_media: bool = False
    mirror: bool = False  # also remove media files that are not in the backup
    allow_newer: bool = False  # restore a backup with migrations this code does not know
    uncompress: bool = True  # False: read the files as they are, whatever their names say
    decrypt: bool = False  # accepted: files ending in .gpg are decrypted anyway
    interactive: bool = False  # may ask for a GPG passphrase on a terminal
    safety: bool | None = None  # keep the replaced state; None: backup_safety
    allow_other_site: bool = False  # may restore a set another site wrote (its manifest names another site)


@dataclass
class RestoreResult:
    set_name: str | None  # None: named files outside any set
    databases: list[str] = field(default_factory=list)  # aliases restored
    media: dict | None = None  # files, unchanged, removed
    migrated: list[str] = field(default_factory=list)  # aliases migrated forward
    safety: str | None = None  # the safety copy kept, for invoke rollback
    safety_folder: str | None = None  # where it is
    storage: str = ""  # where the backup was read from, without passwords
    seconds: float = 0.0

    def summary(self) -> str:
        """One line: what was restored, from where, how long, how to undo it."""
        parts = [f"database '{alias}'" for alias in self.databases]
        if self.media is not None:
            parts.append(
                f"{self.media['files']:,} media files ({self.media['unchanged']:,} already as in the backup, "
                f"{self.media['removed']:,} removed)"
            )
        what = f"set {self.set_name}" if self.set_name else "named files"
        undo = f"; undo with {hints.command('rollback', '--name', self.safety)}" if self.safety else ""
        return (
            f"Restored {what}: {', '.join(parts) or 'nothing'} in {seconds_text(self.seconds)}, "
            f"from {self.storage}{undo}"
        )

    def as_json(self) -> dict:
        return {
            "action": "restore",
            "ok": True,
            "set": self.set_name,
            "storage": self.storage,
            "databases": self.databases,
            "media": self.media,
            "migrated": self.migrated,
            "safety": {"name": self.safety, "folder": self.safety_folder} if self.safety else None,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class DbItem:
    alias: str
    file: BackupFile
    migrations: list[list[str]] | None = None
    vendor: str | None = None  # what the manifest says made the dump
    source_bytes: int | None = None  # the dump's bytes before compression (manifests since 6535c58)


@dataclass
class Plan:
    """What will be restored, from which set."""

    set: BackupSet | None
    databases: list[DbItem] = field(default_factory=list)
    media: BackupFile | None = None
    media_expected: dict | None = None
    notes: list[str] = field(default_factory=list)  # which files went with the named one, and why

    @property
    def label(self) -> str:
        if self.set is None:
            return "named files"
        return f"{self.set.status} set {self.set.name}"


def run(
    options: RestoreOptions | None = None, progress: Progress = NO_PROGRESS, confirm: Confirm | None = None
) -> RestoreResult:
    """Restore as ``options`` say, under the site lock; returns a :class:`RestoreResult`.

    ``confirm`` is asked once, before anything changes.  Any failure is recorded, mailed, and raised as a
    RestoreError whose one line says what state is left.
    """
    options = options or RestoreOptions()
    t0 = time.monotonic()
    ping("start", "restore")
    try:
        with record_run(BackupRun.RESTORE) as row:
            path, db_file, media_file = locate(options.path, options.db_file, options.media_file)
            storage = backup_storage(path)
            progress.step(f"Reading backups from {describe(storage)}")
            opts = replace(options, path=path, db_file=db_file, media_file=media_file)
            with site_lock("restore"):
                rollback.recover(progress)
                result = restore(storage, opts, progress, confirm)
            row.set_name = result.set_name or ""
        result.storage = describe(storage)
        result.seconds = time.monotonic() - t0
    except Exception as err:
        notify_failure("restore", err)
        announce("restore", err)
        raise
    except KeyboardInterrupt as err:
        announce("restore", RestoreError("restore interrupted (Ctrl-C or SIGINT)"))
        raise err
    announce("restore", None, detail=result.summary())
    return result


@dataclass
class RestorePlan:
    """What a restore would do (``--dry-run``): which set and files, what they replace, whether they pass the
    checks a restore makes before changing anything.  Nothing is staged, locked, recorded or changed."""

    storage: str
    set_name: str | None
    status: str | None  # of the set: complete, incomplete, legacy
    databases: list[dict]  # alias, vendor, file, replaces (the live database's name)
    media: dict | None  # file, files (in the backup), replaces (the media folder), mirror
    notes: list[str]  # versions: migrations applied afterwards
    problems: list[str]  # what the checks found; empty: the restore would go ahead
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        what = f"{self.status} set {self.set_name}" if self.set_name else "named files"
        out = [f"Dry run: nothing is changed. A restore would take {what} from {self.storage}"]
        for d in self.databases:
            out.append(f"  database '{d['alias']}' ({d['vendor']}, {d['replaces']}) would be replaced by {d['file']}")
        if self.media:
            m = self.media
            count = f"{m['files']:,} files" if m.get("files") is not None else "its files"
            extra = "; files not in the backup would be deleted (--mirror)" if m["mirror"] else ""
            out.append(f"  media files in {m['replaces']} would be replaced by {count} of {m['file']}{extra}")
        out += [f"  {note}" for note in self.notes]
        out += [f"  checked: {line}" for line in self.checked]
        out += [f"  ! {line}" for line in self.problems]
        out.append("  checks pass" if self.ok else "  the restore would be refused")
        return out

    def as_json(self) -> dict:
        return {
            "action": "restore",
            "dry_run": True,
            "ok": self.ok,
            "set": self.set_name,
            "status": self.status,
            "storage": self.storage,
            "databases": self.databases,
            "media": self.media,
            "notes": self.notes,
            "checked": self.checked,
            "problems": self.problems,
        }


def plan(options: RestoreOptions | None = None, progress: Progress = NO_PROGRESS) -> RestorePlan:
    """What :func:`run` with ``options`` would restore and replace, with every chosen file read and checked
    (size, SHA-256, decryption, decompression, dump type, archive members).  Changes nothing, takes no lock;
    RestoreError when there is nothing to restore."""
    from .verify import verify_set

    options = options or RestoreOptions()
    path, db_file, media_file = locate(options.path, options.db_file, options.media_file)
    storage = backup_storage(path)
    opts = replace(options, path=path, db_file=db_file, media_file=media_file)
    sets = list_sets(storage, Naming())
    chosen = choose(sets, opts, exists=storage.exists, aliases=list(settings.DATABASES), site=site_identity()["id"])
    problems: list[str] = []
    allow_newer = opts.allow_newer or app_settings.restore_allow_newer_version
    try:
        notes = check_versions(chosen, allow_newer) + check_metadata(storage, chosen, allow_newer)
    except RestoreError as err:
        notes, problems = [], [str(err)]
    engines = {item.alias: engine_for(item.alias) for item in chosen.databases}
    try:
        check_room(staging_needs(chosen, engines))
    except RestoreError as err:
        problems.append(str(err))
    databases = []
    for item in chosen.databases:
        engine = engines[item.alias]
        databases.append(
            {
                "alias": item.alias,
                "vendor": engine.vendor,
                "file": item.file.name,
                "replaces": str(engine.settings["NAME"]),
            }
        )
    media = None
    if chosen.media is not None:
        media = {
            "file": chosen.media.name,
            "files": (chosen.media_expected or {}).get("files"),
            "replaces": str(getattr(media_storage(), "location", "") or "the media storage"),
            "mirror": opts.mirror,
        }
    files = [item.file for item in chosen.databases] + ([chosen.media] if chosen.media else [])
    source = chosen.set
    checked_set = BackupSet(
        name=source.name if source else "named files",
        created=source.created if source else None,
        status=source.status if source else "named",
        files=files,
        manifest=source.manifest if source else None,
    )
    progress.step(f"Checking {len(files)} files of {chosen.label}")
    gpg = gpg_for_restore(chosen, opts.interactive)
    # read_data: an incremental set's packs are read and every blob hashed, as the restore would.
    report = verify_set(storage, checked_set, gpg, read_data=True, progress=progress)
    return RestorePlan(
        storage=describe(storage),
        set_name=source.name if source else None,
        status=source.status if source else None,
        databases=databases,
        media=media,
        notes=notes,
        problems=problems + report.problems,
        checked=report.checked,
    )


def locate(path: str | None, db_file: str | None, media_file: str | None) -> tuple[str | None, str | None, str | None]:
    """A file given as an absolute path on disk is read from its own folder: ``(folder, name, name)``."""
    for value in (db_file, media_file):
        if value and not path and os.path.isabs(value) and os.path.exists(value):
            path = os.path.dirname(value)
    if db_file and path and os.path.dirname(db_file) == path:
        db_file = os.path.basename(db_file)
    if media_file and path and os.path.dirname(media_file) == path:
        media_file = os.path.basename(media_file)
    return path, db_file, media_file


def _adhoc(name: str) -> BackupFile:
    """A file whose name does not follow the templates: flags from its suffixes."""
    base, compression, encrypted = split_extension(name)
    kind = "media" if base.endswith(".tar") else "db"
    return BackupFile(name, kind, "", compression=compression, encrypted=encrypted, base_extension=base)


def _find(sets: list[BackupSet], name: str, exists: Callable[[str], bool]) -> tuple[BackupFile, BackupSet | None]:
    for s in sets:
        for f in s.files:
            if f.name == name and f.kind == "metadata":
                raise RestoreError(f"{name} is the .metadata sidecar of {f.of}, not a backup; name {f.of}")
            if f.name == name:
                if s.status == "unreadable":
                    raise RestoreError(
                        f"{name} belongs to set {s.name}, whose manifest is unreadable ({'; '.join(s.problems)}); "
                        "nothing can check the file against it: restore another set, or copy the file to a folder "
                        "of its own and name it there"
                    )
                return f, s
    if not exists(name):
        raise RestoreError(f"{name} is not in the backup storage; run {hints.command('listbackups')} to see the sets")
    return _adhoc(name), None


def _alias_for(f: BackupFile, bset: BackupSet | None, aliases: list[str]) -> str:
    if bset is not None and bset.manifest:
        for entry in bset.manifest.get("databases", []):
            if entry.get("file") == f.name:
                return entry["alias"]
    if f.database and f.database in aliases:
        return f.database
    return "default"


def _db_entry(f: BackupFile, bset: BackupSet | None) -> dict:
    if bset is None or not bset.manifest:
        return {}
    for entry in bset.manifest.get("databases", []):
        if entry.get("file") == f.name:
            return entry
    return {}


def _other_sites(sets: list[BackupSet], opts: RestoreOptions, site: str) -> tuple[list[BackupSet], list[str]]:
    """``sets`` without those another site wrote (unless ``--allow-other-site``), and notes saying what was left
    out.  RestoreError when a named file is another site's, or when only other sites' sets are there."""
    foreign = [s for s in sets if not of_this_site(s, site)]
    if not foreign or opts.allow_other_site:
        return sets, []
    for name in (opts.db_file, opts.media_file):
        owner = next((s for s in foreign if name and s.file(name)), None)
        if owner is not None:
            raise RestoreError(
                f"{name} belongs to set {owner.name}, written by another site ({set_site(owner)}; this site is "
                f"{site}); pass --allow-other-site to restore it here, or set backup_site_id if it is this site's"
            )
    own = [s for s in sets if s not in foreign]
    if not (opts.db_file or opts.media_file) and not any(s.complete or s.status == "legacy" for s in own):
        newest = next((s for s in foreign if s.complete), foreign[0])
        raise RestoreError(
            f"no backup set of this site ({site}) in the backup storage; it holds {len(foreign)} of other sites "
            f"(newest: {newest.name}, {newest.status}, of {set_site(newest)}): pass --allow-other-site to restore "
            f"one here, or take one with {hints.command('backup')}"
        )
    newest_own = next((o.created for o in own if o.complete), None)
    newer = [s for s in foreign if s.complete and (newest_own is None or s.created > newest_own)]
    notes = []
    if newer and not (opts.db_file or opts.media_file):
        names = ", ".join(s.name for s in newer)
        notes.append(f"Skipping newer sets of other sites ({names}): --allow-other-site takes them")
    return own, notes


def choose(
    sets: list[BackupSet],
    opts: RestoreOptions,
    *,
    exists: Callable[[str], bool],
    aliases: list[str],
    site: str | None = None,
) -> Plan:
    """Pick the files to restore from ``sets`` (newest first): named ones, else the newest complete set, else
    the newest legacy files (one dump per database, one archive).

    ``exists(name)`` says whether a named file that is in no set is in the storage; ``aliases`` are the
    ``DATABASES`` aliases; with ``site`` (this site's identity) the sets other sites wrote are left out unless
    ``opts.allow_other_site``.  Touches nothing; RestoreError when there is nothing (or nothing valid) to restore.
    """
    chosen_set: BackupSet | None = None
    notes: list[str] = []
    if site is not None:
        sets, notes = _other_sites(sets, opts, site)
    db_files: list[tuple[BackupFile, BackupSet | None]] = []
    media: tuple[BackupFile, BackupSet | None] | None = None

    if opts.db_file or opts.media_file:
        if opts.db_file and not opts.skip_db:
            db_files.append(_find(sets, opts.db_file, exists))
        if opts.media_file and not opts.skip_media:
            media = _find(sets, opts.media_file, exists)
        named_set = (db_files[0][1] if db_files else None) or (media[1] if media else None)
        # A complete set's parts belong together.  Stock dbbackup writes the dump and the
        # archive in separate seconds, so a legacy file goes with the newest legacy other part.
        legacy = [s for s in sets if s.status == "legacy"]
        partners = [named_set] if named_set is not None and named_set.complete else [named_set, *legacy]
        partners = [s for s in partners if s is not None]
        # Else, as InvenTree's restore does, the newest of the other part (a complete set's first).
        fallback = [s for s in sets if s.complete] + [s for s in sets if not s.complete]
        if not opts.skip_db and not db_files:
            source = next((s for s in partners if s.db_files), None)
            if source is None:
                source = next((s for s in fallback if s.db_files), None)
            if source is None:
                raise RestoreError(
                    "no database file goes with the named media file and there is no other; name one with "
                    "--db-file or pass --skip-db"
                )
            db_files = [(f, source) for f in source.db_files]
            notes.append(_partner_note(source, named_set, ", ".join(f.name for f in source.db_files)))
        if not opts.skip_media and media is None:
            source = next((s for s in partners if s.media_file is not None), None)
            if source is None:
                source = next((s for s in fallback if s.media_file is not None), None)
            if source is None:
                raise RestoreError(
                    "no media archive goes with the named database file and there is no other; name one with "
                    "--media-file or pass --skip-media"
                )
            media = (source.media_file, source)
            notes.append(_partner_note(source, named_set, source.media_file.name))
        chosen_set = named_set
    else:
        complete = [s for s in sets if s.complete]
        if complete:
            chosen_set = complete[0]
            skipped = [s for s in sets if s.status == "unreadable" and s.created > chosen_set.created]
            notes += [f"Skipping the newer set {s.name}: unreadable ({'; '.join(s.problems)})" for s in skipped]
            db_files = [(f, chosen_set) for f in chosen_set.db_files]
            media = (chosen_set.media_file, chosen_set) if chosen_set.media_file else None
            notes += _partial_notes(chosen_set, complete[1:], opts)
        else:
            legacy = [s for s in sets if s.status == "legacy"]
            if not legacy:
                unreadable = [s for s in sets if s.status == "unreadable"]
                if unreadable:
                    raise RestoreError(
                        f"no readable backup set: set {unreadable[0].name} is unreadable "
                        f"({'; '.join(unreadable[0].problems)}); fix or remove that manifest, or name the files "
                        "with --db-file/--media-file from a folder of their own"
                    )
                raise RestoreError(f"no backup found in the backup storage; run {hints.command('backup')} first")
            newest_db: dict[str, tuple[BackupFile, BackupSet]] = {}
            for s in legacy:  # newest first
                for f in s.db_files:
                    newest_db.setdefault(_alias_for(f, s, aliases), (f, s))
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
    plan = Plan(set=chosen_set, notes=notes)
    for f, s in db_files:
        alias = _alias_for(f, s, aliases)
        if alias not in aliases:
            raise RestoreError(f"{f.name} holds database {alias!r}, which is not in DATABASES")
        entry = _db_entry(f, s)
        raw = entry.get("source_bytes")
        raw = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None
        plan.databases.append(DbItem(alias, f, entry.get("migrations"), entry.get("vendor"), raw))
    if media is not None:
        plan.media = media[0]
        if media[1] is not None and media[1].manifest:
            plan.media_expected = media[1].manifest.get("media")
    return plan


def _partial_notes(chosen: BackupSet, older: list[BackupSet], opts: RestoreOptions) -> list[str]:
    """Say so when the newest complete set was backed up without media (or without databases) and an older
    complete set has them: the restore leaves that part as it is, and the line says how to take it from there."""
    notes = []
    if chosen.media_file is None and not opts.skip_media:
        fuller = next((s for s in older if s.media_file is not None), None)
        if fuller is not None:
            take = hints.command("restore", "--skip-db", "--media-file", fuller.media_file.name)
            notes.append(
                f"The newest set {chosen.name} holds no media archive (backed up without media): media files are "
                f"left as they are; set {fuller.name} has one ({take} restores it)"
            )
    if not chosen.db_files and not opts.skip_db:
        fuller = next((s for s in older if s.db_files), None)
        if fuller is not None:
            take = hints.command("restore", "--skip-media", "--db-file", fuller.db_files[0].name)
            notes.append(
                f"The newest set {chosen.name} holds no database (backed up without databases): the databases are "
                f"left as they are; set {fuller.name} has them ({take} restores one)"
            )
    return notes


def _partner_note(source: BackupSet, named_set: BackupSet | None, what: str) -> str:
    if named_set is not None and source is named_set:
        return f"with {what}, from the same set"
    if named_set is not None and named_set.complete:
        return f"with {what}, from set {source.name} (the named file's set has none)"
    return f"with {what}, the newest that goes with it (set {source.name})"


def gpg_for_restore(plan: Plan, interactive: bool) -> GpgSpec:
    """The configured GnuPG settings, or on a terminal a prompt when the plan has encrypted files and no passphrase."""
    gpg = GpgSpec.for_decryption()
    encrypted = any(i.file.encrypted for i in plan.databases) or bool(plan.media and plan.media.encrypted)
    if encrypted and gpg.passphrase is None and interactive and sys.stdin.isatty():
        from getpass import getpass

        passphrase = getpass("GPG passphrase of the backup key (empty if none): ") or None
        gpg = GpgSpec(home=gpg.home, passphrase=passphrase)
    return gpg


def _code_migrations() -> set[tuple[str, str]]:
    return set(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)


def _newer(name: str, found, known: set[tuple[str, str]], allow_newer: bool) -> str | None:
    """RestoreError when ``found`` (``(app, name)`` pairs) has migrations not in ``known`` and that is not
    allowed; else a note when it has some, else None."""
    unknown = sorted({tuple(m) for m in found} - known)
    if not unknown:
        return None
    if not allow_newer:
        shown = ", ".join(f"{a}.{n}" for a, n in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise RestoreError(
            f"{name} was made by a newer version: its database has {len(unknown)} migrations this code does not "
            f"know ({shown}); install that version, or pass --restore-allow-newer-version"
        )
    return f"restoring {name} with {len(unknown)} unknown migrations (--restore-allow-newer-version)"


def check_versions(plan: Plan, allow_newer: bool = False, known: set[tuple[str, str]] | None = None) -> list[str]:
    """Refuse a backup whose manifest lists migrations this code does not know (a newer version made it).

    The manifest's copy is only the early check, before anything is read; :func:`check_staged_versions`
    reads the staged databases themselves.  ``known``: the code's migrations, when already read.
    """
    known = _code_migrations() if known is None else known
    notes = [_newer(i.file.name, i.migrations, known, allow_newer) for i in plan.databases if i.migrations]
    return [n for n in notes if n]


def check_staged_versions(
    plan: Plan, staged_dbs: list[tuple[Engine, Staged]], allow_newer: bool, known: set[tuple[str, str]] | None = None
) -> list[str]:
    """The migration guard's authority: the ``django_migrations`` rows of each staged database, whatever
    the manifest says or whether there is one.  A restore in place (no side database to look into) is
    checked by the manifest alone.  ``known``: the code's migrations, when already read."""
    known = _code_migrations() if known is None else known
    notes = []
    for item, (engine, staged) in zip(plan.databases, staged_dbs, strict=True):
        try:
            found = engine.staged_migrations(staged)
        except RestoreError as err:
            raise RestoreError(f"{item.file.name}: {err}") from None
        if found is not None:
            note = _newer(item.file.name, found, known, allow_newer)
            if note and not item.migrations:
                notes.append(note)
    return notes


def check_metadata(storage, plan: Plan, allow_newer: bool) -> list[str]:
    """Each database file's ``.metadata`` sidecar through stock's engine check and the site's validator
    (DBBACKUP_RESTORE_METADATA_VALIDATOR), and the age of every file (a database file's from its sidecar's
    ``ivt_1_backup_time`` when it has one, else from its name or its set); returns the notes to show."""
    notes = []
    made: dict[str, object] = {}  # file name -> when its sidecar says it was made
    for item in plan.databases:
        metadata = hooks.read_sidecar(storage, item.file.name)
        if metadata is not None:
            engine = connections.settings[item.alias]["ENGINE"]
            notes += hooks.check_sidecar(item.file.name, metadata, engine, allow_newer=allow_newer)
            made[item.file.name] = hooks.backup_time(metadata)
    naming = Naming()
    for f in [item.file for item in plan.databases] + ([plan.media] if plan.media else []):
        created = naming.stamp_to_datetime(f.stamp) if f.stamp else None
        if plan.set is not None and plan.set.name == f.stamp:
            created = plan.set.created
        created = made.get(f.name) or created  # InvenTree's ivt_1_backup_time, not the name, when there is one
        note = hooks.age_note(f.name, created)
        if note:
            notes.append(note)
    return notes


def _abandon(staged_dbs: list[tuple[Engine, Staged]], staged_media: StagedArchive | None) -> str:
    """Throw away everything staged and not swapped in.  What cannot be removed never hides the error that
    stopped the restore: it is returned as the end of that error's line (``''`` when everything went), naming
    each thing left and what removes it (the next restore's cleanup, as for a killed run's)."""
    left = []
    for engine, staged in staged_dbs:
        try:
            engine.abandon(staged)
        except Exception as err:  # noqa: BLE001 - reported on the error that stopped the restore
            left.append(f"the staging {staged.describe()} was not removed ({redact(err)})")
    if staged_media is not None:
        try:
            abandon_archive(staged_media, strict=True)
        except OSError as err:
            left.append(f"the staging folder {staged_media.folder} was not removed ({err.strerror or err})")
    if not left:
        return ""
    it = "it" if len(left) == 1 else "them"
    return f"; {'; '.join(left)}: the next {hints.command('restore')} removes {it} once the cause is gone"


def _stage(storage, plan: Plan, engines: dict[str, Engine], opts: RestoreOptions, gpg: GpgSpec, progress: Progress):
    """Load every chosen file into a staging place, checking it on the way; the live site is untouched.

    On a local backup folder the media archive is extracted while the databases load (independent streams).
    """
    say = progress.step
    staged_dbs: list[tuple[Engine, Staged]] = []
    staged_media: StagedArchive | None = None

    def stage_media() -> StagedArchive:
        if plan.media.is_media_index:
            return stage_incremental(storage, plan, gpg, uncompress=opts.uncompress)
        name = plan.media.name
        progress.start(name, label="media files", total=plan.media.size)
        staged = None
        try:
            with read_checked(
                storage,
                plan.media,
                gpg,
                uncompress=opts.uncompress,
                on_read=lambda n: progress.advance(name, n),
                tail_max=TAIL_MAX,
            ) as stream:
                staged = stage_archive(media_storage(), stream, archive=name, expected=plan.media_expected)
        except BaseException:
            # Refused after the members were staged (a checksum, what follows the archive): remove them too.
            if staged is not None:
                abandon_archive(staged)
            raise
        finally:
            progress.finish(name)
        return staged

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore-media")
    media_job = None
    try:
        if plan.media is not None:
            say(f"Extracting {plan.media.name} into a staging folder")
            if isinstance(storage, FileSystemStorage):
                media_job = pool.submit(stage_media)
        for item in plan.databases:
            say(f"Loading {item.file.name} into a staging database")
            engine = engines[item.alias]
            name = item.file.name
            progress.start(name, label=f"database '{item.alias}'", total=item.file.size)
            try:
                with read_checked(
                    storage,
                    item.file,
                    gpg,
                    uncompress=opts.uncompress,
                    on_read=lambda n, name=name: progress.advance(name, n),
                ) as stream:
                    head = stream.read(64)
                    engine.check_dump(head, name)
                    staged = engine.stage(PrefixedReader(head, stream))
                    staged_dbs.append((engine, staged))
            except Exception as err:
                # Every refusal names the file it is about.
                text = redact(err)
                if name not in text:
                    raise RestoreError(f"{name}: {text}") from None
                raise
            finally:
                progress.finish(name)
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
                staged_media = media_job.result()
        left = _abandon(staged_dbs, staged_media)
        if isinstance(err, RestoreError):
            raise RestoreError(f"{err}; nothing was changed{left}") from None
        if isinstance(err, Exception):
            raise RestoreError(f"{redact(err)}; nothing was changed{left}") from None
        if isinstance(err, Interrupted):
            raise interrupted_error(err, f"nothing was changed{left}") from None
        raise
    finally:
        pool.shutdown(wait=True)
    return staged_dbs, staged_media


def stage_incremental(storage, plan: Plan, gpg: GpgSpec, *, uncompress: bool = True) -> StagedArchive:
    """Stage the media of an incremental set: its index (checked against the manifest), then its packs."""
    from ..incremental import parse_index, stage_index  # (here: an archive set's restore does not import it)

    packs = (plan.media_expected or {}).get("packs")
    if packs is None:
        raise RestoreError(f"{plan.media.name} is an incremental media index; restore it with its set's manifest")
    with read_checked(storage, plan.media, gpg, uncompress=uncompress) as stream:
        index = parse_index(stream, packs)
    return stage_index(media_storage(), storage, index, packs, gpg)


@dataclass
class Need:
    """Bytes a restore writes into ``folder`` (what and why, for the refusal), and what makes room for them."""

    folder: Path
    bytes: int
    what: str
    fix: str


def _staging_fix() -> str:
    return "free some room there"


def _safety_fix() -> str:
    return (
        f"free some room there, or set {hints.setting('backup_safety_dir')} to a folder with room (on the file "
        "system of the database file and media folder, keeping them costs none: they are linked or moved)"
    )


def staging_needs(plan: Plan, engines: dict[str, Engine]) -> list[Need]:
    """What the restore of ``plan`` surely writes before its swap, known from the manifest: each SQLite dump's
    decompressed bytes beside its live file (``source_bytes``; sets without it are bounded while they stage), the
    same bytes spooled into the safety folder for a database surely restored in place,
    the media files (the manifest's bytes less those of the live files, which may be left as they are: at least
    that much), and the safety copy of each live database that cannot be kept by a link."""
    needs = []
    safety = safety_root()
    for item in plan.databases:
        engine = engines[item.alias]
        if engine.spools_in_place():
            if item.source_bytes:
                needs.append(
                    Need(
                        safety,
                        item.source_bytes,
                        f"the spooled dump of database '{item.alias}' ({item.source_bytes:,} bytes: it is restored "
                        "in place)",
                        _safety_fix(),
                    )
                )
            estimate = engine.in_place_safety_estimate(item.source_bytes or 0)
            if estimate:
                needs.append(
                    Need(
                        safety,
                        estimate,
                        f"the safety dump of the live database '{item.alias}' (about {estimate:,} bytes, estimated: "
                        "the larger of the incoming dump and what its tables take on the server)",
                        _safety_fix(),
                    )
                )
        folder = engine.staging_folder()
        if folder is not None and item.source_bytes:
            needs.append(
                Need(
                    folder,
                    item.source_bytes,
                    f"the staging file of database '{item.alias}' ({item.source_bytes:,} "
                    f"bytes, beside {engine.settings['NAME']})",
                    _staging_fix(),
                )
            )
    needs += database_safety_needs(engines.values(), safety)
    total = (plan.media_expected or {}).get("bytes") if plan.media is not None else None
    if isinstance(total, int) and not isinstance(total, bool):
        storage = media_storage()
        try:
            folder = Path(storage.path(""))
        except NotImplementedError:
            folder = Path(tempfile.gettempdir())
        live = media_size(storage) or 0
        if total > live:
            needs.append(
                Need(
                    folder,
                    total - live,
                    f"the media staging folder {folder} ({total - live:,} bytes: the backup's {total:,} bytes of "
                    f"media files less the {live:,} of the live ones)",
                    _staging_fix(),
                )
            )
    return needs


def database_safety_needs(engines, safety: Path) -> list[Need]:
    """The safety copy of each live database that is copied into ``safety``, not linked (another file system)."""
    needs = []
    for engine in engines:
        kept = engine.safety_bytes(safety)
        if kept:
            needs.append(
                Need(
                    safety,
                    kept,
                    f"the safety copy of database '{engine.alias}' ({kept:,} bytes, copied from another file system)",
                    _safety_fix(),
                )
            )
    return needs


def swap_needs(staged_dbs: list[tuple[Engine, Staged]], staged_media: StagedArchive | None, mirror: bool) -> list[Need]:
    """What the swap surely writes into the safety folder, now that staging says which live media files it
    replaces: the copies of live databases and media files on other file systems (a media storage that is not a
    plain local folder is bounded while it swaps: a full safety folder undoes the swap)."""
    safety = safety_root()
    needs = database_safety_needs([engine for engine, _staged in staged_dbs], safety)
    if staged_media is not None:
        kept = kept_size(media_storage(), staged_media, safety, mirror=mirror)
        if kept is not None and kept[1]:
            files, size = kept
            needs.append(
                Need(
                    safety,
                    size,
                    f"the safety copy of {files:,} media file{'s' if files != 1 else ''} ({size:,} bytes, copied "
                    "from another file system)",
                    _safety_fix(),
                )
            )
    return needs


def check_room(needs: list[Need]) -> None:
    """RestoreError, before the step that writes them, when ``needs`` do not fit on a file system they share:
    one line naming the file system, the bytes it has free (a margin kept: :func:`~..streams.room_left`), the
    bytes needed there and what for, and the fix.  What is written is bounded again while it runs."""
    by_device: dict[int, tuple[Path, list[Need]]] = {}
    for need in needs:
        device, mount = file_system_of(need.folder)
        by_device.setdefault(device, (mount, []))[1].append(need)
    for mount, shared in by_device.values():
        needed = sum(need.bytes for need in shared)
        room = room_left(mount)[0]
        if needed <= room:
            continue
        st = os.statvfs(mount)
        margin = room_margin(st.f_blocks * st.f_frsize)
        fixes = "; ".join(dict.fromkeys(need.fix for need in shared))
        raise RestoreError(
            f"not enough room on the file system at {mount} for this restore: it has {st.f_bavail * st.f_frsize:,} "
            f"bytes free (a margin of {margin:,} kept) and needs at least {needed:,} there for "
            f"{' and '.join(need.what for need in shared)}; {fixes}; nothing was changed"
        )


def restore(storage, opts: RestoreOptions, progress: Progress, confirm: Confirm | None) -> RestoreResult:
    """Restore from ``storage`` (the caller holds the site lock); RestoreError says what state is left.

    Stage everything (databases into side databases or temp files, media into a
    staging folder) while checking checksums, types and archive members; only
    then swap it all in, keeping the replaced state in a safety record.  A
    failure while staging changes nothing; a failure while swapping puts back
    what was already swapped.
    """
    say = progress.step
    plan = choose(
        list_sets(storage, Naming()),
        opts,
        exists=storage.exists,
        aliases=list(settings.DATABASES),
        site=site_identity()["id"],
    )
    engines = {item.alias: engine_for(item.alias) for item in plan.databases}
    say(f"Restoring from {plan.label}")
    for note in plan.notes:
        say(f"  {note}")
    for item in plan.databases:
        engine = engines[item.alias]
        if item.vendor and item.vendor != engine.vendor:
            raise RestoreError(
                f"{item.file.name} holds a {item.vendor} database by its manifest, but database {item.alias!r} is "
                f"{engine.vendor}; nothing was changed"
            )
    gpg = gpg_for_restore(plan, opts.interactive)
    allow_newer = opts.allow_newer or app_settings.restore_allow_newer_version
    known = _code_migrations()  # read once: both migration checks compare with it
    for note in check_versions(plan, allow_newer, known):
        say(f"  {note}")
    for note in check_metadata(storage, plan, allow_newer):
        say(f"  {note}")
    what = [f"database '{i.alias}' ({engines[i.alias].settings['NAME']}) from {i.file.name}" for i in plan.databases]
    if plan.media is not None:
        folder = getattr(media_storage(), "location", "") or "the media storage"
        mirror = " (mirror: extra files deleted)" if opts.mirror else ""
        what.append(f"media files in {folder} from {plan.media.name}{mirror}")
    if app_settings.safety if opts.safety is None else opts.safety:
        what.append(f"the replaced state is kept {app_settings.safety_days} days for {hints.command('rollback')}")
    else:
        what.append("the replaced state is NOT kept (--no-safety-backup)")
    if confirm is not None and not confirm("This replaces " + "; ".join(what) + ". Continue?"):
        raise RestoreError("restore cancelled; nothing was changed")
    for engine in engines.values():
        for stale in engine.cleanup():
            say(f"Removed {stale}, left behind by an interrupted restore")
    check_room(staging_needs(plan, engines))

    for item in plan.databases:
        hooks.send_pre_restore(item.alias, item.file.name, storage)
    if plan.media is not None:
        hooks.send_pre_media_restore(plan.media.name, storage)
    # The safety record first: a safety folder that cannot be written fails before anything is staged.
    result = RestoreResult(set_name=plan.set.name if plan.set else None)
    try:
        safety = SafetyRecord.create(safety_root(), result.set_name)
    except OSError as err:
        raise RestoreError(
            f"the safety folder {safety_root()} cannot be written ({err.strerror or err}); make it a writable "
            "folder (backup_safety_dir) with room for what the restore replaces; nothing was changed"
        ) from None
    try:
        staged_dbs, staged_media = _stage(storage, plan, engines, opts, gpg, progress)
    except BaseException:
        rollback.discard(safety)
        raise
    try:
        for note in check_staged_versions(plan, staged_dbs, allow_newer, known):
            say(f"  {note}")
        check_room(swap_needs(staged_dbs, staged_media, opts.mirror))
    except BaseException as err:
        left = _abandon(staged_dbs, staged_media)
        rollback.discard(safety)
        if isinstance(err, Exception):
            raise RestoreError(f"{redact(err)}; nothing was changed{left}") from None
        if isinstance(err, Interrupted):
            raise interrupted_error(err, f"nothing was changed{left}") from None
        raise
    try:
        pause_at("restore:staged")
        while staged_dbs:
            engine, staged = staged_dbs[0]
            say(f"Swapping in database '{engine.alias}'")
            try:
                engine.commit(staged, safety)
            except RestoreError as err:  # a load in place happens here: its refusal names the file too
                name = next((i.file.name for i in plan.databases if i.alias == engine.alias), "")
                if name and name not in str(err):
                    raise RestoreError(f"{name}: {err}") from None
                raise
            staged_dbs.pop(0)
            result.databases.append(engine.alias)
            pause_at(f"restore:db-swapped:{engine.alias}")
        if staged_media is not None:
            say("Putting media files in place")
            safety.set_media([])  # before the first file moves: an undo then reads the journal
            media = commit_archive(
                media_storage(), staged_media, safety.media_folder, mirror=opts.mirror, journal=safety.media_journal
            )
            staged_media = None
            safety.set_media(media.pop("created"), media.pop("folders"))
            result.media = media
            pause_at("restore:media-swapped")
            say(
                f"  {media['files']} files restored ({media['unchanged']} already as in the backup), "
                f"{media['removed']} removed"
            )
    except BaseException as err:
        # A second SIGTERM or SIGINT waits until the old state is back.
        with shielded():
            left = _abandon(staged_dbs, staged_media)
            message = redact(err) if isinstance(err, Exception | Interrupted) else "interrupted"
            # Its own put-back already waited for what holds it: the next command finishes it from the record.
            if isinstance(err, PutBackPending):
                raise RestoreError(f"{message}: {finish_later(safety)}{left}") from None
            try:
                undone = rollback.undo(safety)
            except Exception as undo_err:
                raise RestoreError(
                    f"{message}; putting the old state back ALSO failed ({redact(undo_err)}): {finish_later(safety)}"
                    f"{left}"
                ) from None
            rollback.discard(safety)
            # A signal noted during the undo is not raised at the block's end: it would replace the line below
            # (what stopped the restore, and that it was undone) with a bare "interrupted".
            take_pending()
        what = " and ".join(undone) + " put back as they were" if undone else "nothing had been changed"
        if isinstance(err, Interrupted):
            raise interrupted_error(err, f"the restore was undone ({what}){left}") from None
        raise RestoreError(f"{message}; the restore was undone ({what}){left}") from None
    safety.mark("done")
    for item in plan.databases:
        hooks.send_post_restore(item.alias, item.file.name, engines[item.alias].connector, storage)
    if plan.media is not None:
        hooks.send_post_media_restore(plan.media.name, storage)
    keep = app_settings.safety if opts.safety is None else opts.safety
    if keep:
        result.safety = safety.name
        result.safety_folder = str(safety.folder)
        say(
            f"The replaced state is kept in {safety.folder}; undo this restore with "
            f"{hints.command('rollback', '--name', safety.name)} (kept {app_settings.safety_days} days)"
        )
    else:
        rollback.discard(safety)
    for name in rollback.expire(app_settings.safety_days):
        say(f"Removed expired safety copy {name}")
    for item in plan.databases:
        applied = migrate_forward(item.alias)
        if applied:
            result.migrated.append(item.alias)
            say(f"The backup of '{item.alias}' was older than this code: applied {applied} migrations")
    say("Restore complete")
    return result


def finish_later(safety: SafetyRecord) -> str:
    """What a restore whose put-back did not finish says: the record stays, the next command finishes it."""
    return (
        f"the next backup, restore or rollback puts it back once the cause is gone (the safety copy is in "
        f"{safety.folder}; {hints.command('rollback', '--name', safety.name)} does only that)"
    )


def interrupted_error(err: Interrupted, what: str) -> RestoreError:
    """The one line of a restore cut short by SIGTERM/SIGINT; the command exits 128 + the signal."""
    error = RestoreError(f"{err}; {what}")
    error.exit_status = err.exit_status
    return error


def migrate_forward(alias: str) -> int:
    """Apply migrations the restored database lacks; returns how many were pending."""
    connection = connections[alias]
    connection.close()
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        call_command("migrate", database=alias, interactive=False, verbosity=0)
    return len(plan)
