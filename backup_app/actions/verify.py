"""Verify: re-read every file of the backup sets, check it against its manifest, optionally restore it into
scratch places (a throwaway database, a temporary folder).  Nothing live is touched, no lock is taken."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage

from .. import hints
from ..engines import engine_for
from ..errors import BackupAppError
from ..media import restore_archive, scan_archive
from ..pipeline import GpgSpec, open_stream
from ..progress import NO_PROGRESS, Progress
from ..secrets import redact
from ..sets import BackupFile, BackupSet, list_sets
from ..storage import backup_storage
from .common import read_and_check


@dataclass
class VerifyOptions:
    name: str | None = None  # one set; None: every set
    restore_test: bool = False  # also restore each file into a scratch database / folder
    path: str | None = None  # a local folder instead of the backup storage


@dataclass
class VerifyResult:
    reports: list[SetReport]

    @property
    def bad(self) -> list[SetReport]:
        return [r for r in self.reports if not r.ok]


@dataclass
class SetReport:
    name: str
    status: str
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _db_entry(bset: BackupSet, f: BackupFile) -> dict:
    for entry in (bset.manifest or {}).get("databases", []):
        if entry.get("file") == f.name:
            return entry
    return {"alias": f.database if f.database in settings.DATABASES else "default"}


def verify_set(
    storage, bset: BackupSet, gpg: GpgSpec, *, restore_test: bool = False, say: Callable[[str], None] = lambda _m: None
) -> SetReport:
    """Check every file of ``bset``; with ``restore_test`` also restore it into scratch places."""
    report = SetReport(bset.name, bset.status, problems=list(bset.problems))
    for f in bset.files:
        if f.kind == "manifest":
            continue
        say(f"  {f.name}")
        try:
            if f.kind == "db":
                entry = _db_entry(bset, f)
                engine = engine_for(entry["alias"])
                read_and_check(storage, f, gpg, lambda s, e=engine, n=f.name: e.check_dump(s.read(64), n))
                if restore_test:
                    with open_stream(
                        storage, f.name, compression=f.compression, encrypted=f.encrypted, gpg=gpg
                    ) as stream:
                        tables = engine.scratch_restore(stream)
                    expected = entry.get("tables")
                    if expected is not None and tables != expected:
                        raise BackupAppError(f"{f.name} restored {tables} tables, the manifest says {expected}")
                    report.checked.append(f"{f.name}: restored to a scratch database, {tables} tables")
                else:
                    report.checked.append(f"{f.name}: checksum and content ok")
            else:
                found = {}
                read_and_check(storage, f, gpg, lambda s, found=found: found.setdefault("c", scan_archive(s)))
                contents = found["c"]
                expected = (bset.manifest or {}).get("media") or {}
                if expected and (contents.files, contents.bytes) != (expected.get("files"), expected.get("bytes")):
                    raise BackupAppError(
                        f"{f.name} holds {contents.files} files, the manifest says {expected.get('files')}"
                    )
                if restore_test:
                    with (
                        tempfile.TemporaryDirectory(prefix="backup-verify-media-") as tmp,
                        open_stream(
                            storage, f.name, compression=f.compression, encrypted=f.encrypted, gpg=gpg
                        ) as stream,
                    ):
                        restore_archive(FileSystemStorage(location=tmp), stream, Path(tmp) / ".safety")
                        extracted = sum(1 for p in Path(tmp).rglob("*") if p.is_file() and ".safety" not in p.parts)
                    if extracted != contents.files:
                        raise BackupAppError(f"{f.name} extracted {extracted} files of {contents.files}")
                    report.checked.append(f"{f.name}: extracted to a scratch folder, {extracted} files")
                else:
                    report.checked.append(f"{f.name}: checksum ok, {contents.files} files, all members safe")
        except BackupAppError as err:
            report.problems.append(redact(err))
        except Exception as err:
            report.problems.append(f"{f.name}: {type(err).__name__}: {redact(err)}")
    return report


def run(options: VerifyOptions | None = None, progress: Progress = NO_PROGRESS) -> VerifyResult:
    """Verify one set (``options.name``) or all, newest first; returns a report per set.

    BackupAppError when the named set does not exist.  Problems found are in the reports, not raised.
    """
    options = options or VerifyOptions()
    storage = backup_storage(options.path)
    gpg = GpgSpec.for_decryption()
    sets = list_sets(storage)
    if options.name is not None:
        sets = [s for s in sets if s.name == options.name]
        if not sets:
            raise BackupAppError(f"no backup set named {options.name!r}; run {hints.command('listbackups')}")
    reports = []
    for bset in sets:
        progress.step(f"Verifying {bset.status} set {bset.name}")
        reports.append(verify_set(storage, bset, gpg, restore_test=options.restore_test, say=progress.step))
    return VerifyResult(reports)
