"""Verify: re-read every file of the backup sets, check it against its manifest, optionally restore it into
scratch places (a throwaway database, a temporary folder).  Nothing live is touched, no lock is taken."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage

from .. import hints
from ..engines import engine_for
from ..errors import BackupAppError, RestoreError, notes, removed_after
from ..incremental import check_packs, parse_index, stage_index
from ..media import restore_archive, scan_archive
from ..pipeline import GpgSpec, open_stream
from ..progress import NO_PROGRESS, Progress, seconds_text, size_text
from ..secrets import redact
from ..sets import BackupFile, BackupSet, list_sets, read_bytes
from ..settings import app_settings
from ..storage import backup_storage, describe
from . import hooks
from .common import TAIL_MAX, read_and_check


@dataclass
class VerifyOptions:
    name: str | None = None  # one set; None: every set
    restore_test: bool = False  # also restore each file into a scratch database / folder
    read_data: bool = False  # incremental media: read every pack (else: present, with its size)
    path: str | None = None  # a local folder instead of the backup storage


@dataclass
class VerifyResult:
    reports: list[SetReport]
    storage: str = ""  # where the sets were read, without passwords
    seconds: float = 0.0
    bytes_read: int = 0  # stored bytes read back

    @property
    def bad(self) -> list[SetReport]:
        return [r for r in self.reports if not r.ok]

    def summary(self) -> str:
        ok = len(self.reports) - len(self.bad)
        return (
            f"Verified {len(self.reports)} backup set{'s' if len(self.reports) != 1 else ''}: {ok} OK, "
            f"{len(self.bad)} with problems; {size_text(self.bytes_read)} read in {seconds_text(self.seconds)} "
            f"from {self.storage}"
        )

    def as_json(self) -> dict:
        return {
            "action": "verify",
            "ok": not self.bad and bool(self.reports),
            "storage": self.storage,
            "seconds": round(self.seconds, 3),
            "bytes_read": self.bytes_read,
            "sets": [
                {"name": r.name, "status": r.status, "ok": r.ok, "checked": r.checked, "problems": r.problems}
                for r in self.reports
            ],
        }


@dataclass
class SetReport:
    name: str
    status: str
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@contextmanager
def scratch_folder() -> Iterator[str]:
    """A private temporary folder for a restore test, removed after; a failure to remove it never hides the
    error that stopped the test (it is a note on that error, see :func:`removed_after`)."""
    tmp = tempfile.mkdtemp(prefix="backup-verify-media-")
    with removed_after(lambda: shutil.rmtree(tmp), f"the scratch folder {tmp}"):
        yield tmp


def _db_entry(bset: BackupSet, f: BackupFile) -> dict:
    for entry in (bset.manifest or {}).get("databases", []):
        if entry.get("file") == f.name:
            return entry
    return {"alias": f.database if f.database in settings.DATABASES else "default"}


def _verify_incremental(storage, bset: BackupSet, f: BackupFile, gpg: GpgSpec, *, read_data: bool, restore_test: bool):
    """The index checked against the manifest, then its packs (present and sized, or read with ``read_data``)."""
    found = {}
    read_and_check(storage, f, gpg, lambda s: found.setdefault("index", parse_index(s, bset.packs)))
    index = found["index"]
    expected = (bset.manifest or {}).get("media") or {}
    if (len(index.files), index.bytes) != (expected.get("files"), expected.get("bytes")):
        raise BackupAppError(f"{f.name} holds {len(index.files)} files, the manifest says {expected.get('files')}")
    checked = check_packs(storage, bset.packs, index, gpg, read_data=read_data or restore_test)
    if restore_test:
        with scratch_folder() as tmp:
            staged = stage_index(FileSystemStorage(location=tmp), storage, index, bset.packs, gpg)
            if staged.files != len(index.files):
                raise BackupAppError(f"{f.name} rebuilt {staged.files} files of {len(index.files)}")
        return f"{f.name}: {staged.files} files rebuilt in a scratch folder, {checked}"
    return f"{f.name}: checksum ok, {len(index.files)} files, {checked}"


def _check_sidecar(storage, f: BackupFile, alias: str, report: SetReport) -> None:
    """What a restore would say of ``f``'s ``.metadata`` sidecar (stock's engine check, the site's
    DBBACKUP_RESTORE_METADATA_VALIDATOR under the configured allowance): a refusal is a problem of the set, a
    refusal let through by ``backup_restore_allow_newer_version`` a note."""
    from django.db import connections

    try:
        metadata = hooks.read_sidecar(storage, f.name)
        if metadata is None:
            return
        engine = connections.settings[alias]["ENGINE"]
        allow_newer = app_settings.restore_allow_newer_version
        notes = hooks.check_sidecar(f.name, metadata, engine, allow_newer=allow_newer)
    except RestoreError as err:
        report.problems.append(f"{redact(err)} (invoke restore would refuse this file)")
        return
    report.checked += notes


def verify_set(
    storage,
    bset: BackupSet,
    gpg: GpgSpec,
    *,
    restore_test: bool = False,
    read_data: bool = False,
    progress: Progress = NO_PROGRESS,
) -> SetReport:
    """Check every file of ``bset``; with ``restore_test`` also restore it into scratch places.

    An incremental set's packs are checked for presence and size, or with ``read_data`` read in full.
    """
    report = SetReport(bset.name, bset.status, problems=list(bset.problems))
    for f in bset.files:
        if f.kind == "manifest":
            continue
        progress.step(f"  {f.name}")
        label = {"db": f"database '{f.database}'", "metadata": f"metadata of {f.of}"}.get(f.kind, "media files")
        progress.start(f.name, label=label, total=f.size)

        def on_read(n: int, name=f.name) -> None:
            progress.advance(name, n)

        try:
            if f.kind == "metadata":
                report.checked.append(_verify_sidecar(storage, f))
            elif f.kind == "db":
                entry = _db_entry(bset, f)
                engine = engine_for(entry["alias"])
                _check_sidecar(storage, f, entry["alias"], report)
                read_and_check(
                    storage, f, gpg, lambda s, e=engine, n=f.name: e.check_dump(s.read(64), n), on_read=on_read
                )
                if restore_test:
                    expected = entry.get("tables")

                    def same_count(tables: int, expected=expected, name=f.name) -> None:
                        if expected is not None and tables != expected:
                            raise BackupAppError(f"{name} restored {tables} tables, the manifest says {expected}")

                    with open_stream(
                        storage, f.name, compression=f.compression, encrypted=f.encrypted, gpg=gpg
                    ) as stream:
                        tables = engine.scratch_restore(stream, check=same_count)
                    report.checked.append(f"{f.name}: restored to a scratch database, {tables} tables")
                else:
                    report.checked.append(f"{f.name}: checksum and content ok")
            elif f.is_media_index:
                report.checked.append(
                    _verify_incremental(storage, bset, f, gpg, read_data=read_data, restore_test=restore_test)
                )
            else:
                found = {}
                read_and_check(
                    storage,
                    f,
                    gpg,
                    lambda s, found=found: found.setdefault("c", scan_archive(s)),
                    on_read=on_read,
                    tail_max=TAIL_MAX,
                )
                contents = found["c"]
                expected = (bset.manifest or {}).get("media") or {}
                if expected and (contents.files, contents.bytes) != (expected.get("files"), expected.get("bytes")):
                    raise BackupAppError(
                        f"{f.name} holds {contents.files} files, the manifest says {expected.get('files')}"
                    )
                if restore_test:
                    with (
                        scratch_folder() as tmp,
                        open_stream(
                            storage,
                            f.name,
                            compression=f.compression,
                            encrypted=f.encrypted,
                            gpg=gpg,
                            tail_max=TAIL_MAX,
                        ) as stream,
                    ):
                        restore_archive(
                            FileSystemStorage(location=tmp),
                            stream,
                            Path(tmp) / ".safety",
                            archive=f.name,
                            expected=expected or None,
                        )
                        extracted = sum(1 for p in Path(tmp).rglob("*") if p.is_file() and ".safety" not in p.parts)
                        if extracted != contents.files:
                            raise BackupAppError(f"{f.name} extracted {extracted} files of {contents.files}")
                    report.checked.append(f"{f.name}: extracted to a scratch folder, {extracted} files")
                else:
                    report.checked.append(f"{f.name}: checksum ok, {contents.files} files, all members safe")
        except BackupAppError as err:
            text = redact(err)
            report.problems.append(text if f.name in text else f"{f.name}: {text}")  # each problem names its file
            report.problems += [f"{f.name}: {redact(note)}" for note in notes(err)]
        except Exception as err:
            report.problems.append(f"{f.name}: {type(err).__name__}: {redact(err)}")
            report.problems += [f"{f.name}: {redact(note)}" for note in notes(err)]
        finally:
            progress.finish(f.name)
    return report


def _verify_sidecar(storage, f: BackupFile) -> str:
    """A ``.metadata`` sidecar: django-dbbackup metadata (a JSON object), with the size and SHA-256 its manifest
    says where it says them (a restore passes it to the site's validator)."""
    raw = read_bytes(storage, f.name)
    if f.size is not None and len(raw) != f.size:
        raise BackupAppError(f"{f.name} is {len(raw)} bytes, the manifest says {f.size}")
    if f.sha256 and hashlib.sha256(raw).hexdigest() != f.sha256:
        raise BackupAppError(f"{f.name} does not match its SHA-256 in the manifest (changed since the backup)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict):
        raise BackupAppError(f"{f.name} is not django-dbbackup metadata (a JSON object)")
    return f"{f.name}: " + ("checksum ok, " if f.sha256 else "") + "metadata of " + str(f.of)


def run(options: VerifyOptions | None = None, progress: Progress = NO_PROGRESS) -> VerifyResult:
    """Verify one set (``options.name``) or all, newest first; returns a report per set.

    BackupAppError when the named set does not exist.  Problems found are in the reports, not raised.
    """
    options = options or VerifyOptions()
    t0 = time.monotonic()
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
        reports.append(
            verify_set(
                storage, bset, gpg, restore_test=options.restore_test, read_data=options.read_data, progress=progress
            )
        )
    read = sum(f.size or 0 for s in sets for f in s.files if f.kind != "manifest")
    return VerifyResult(reports, storage=describe(storage), seconds=time.monotonic() - t0, bytes_read=read)
