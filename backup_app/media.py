"""Media files: a streaming tar writer over the media storage, and validated extraction.

The archive is a plain (PAX) tar of regular files named by their storage
names, the layout stock ``mediabackup`` writes and ``mediarestore`` reads.
Restoring first validates every member (:func:`scan_archive`), then stages the
files and moves them into place, so a bad archive changes nothing.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from django.core.files import File
from django.core.files.storage import FileSystemStorage, storages

from .errors import BackupError, RestoreError
from .pipeline import incompressible
from .streams import CHUNK, ChangedWhileRead, EndedEarly, copy_exact, copy_unless_same

#: Folder name prefix of restore staging areas inside MEDIA_ROOT; never archived.
STAGING_PREFIX = ".backup-restore-"
MAX_MEMBERS = 10_000_000


def media_storage():
    """The storage media files live in (``STORAGES["default"]``)."""
    return storages["default"]


def iter_media(storage, exclude: set[str] | None = None) -> Iterator[str]:
    """Every file name in ``storage``, depth first, sorted, skipping staging folders."""
    exclude = exclude or set()
    stack = [""]
    while stack:
        path = stack.pop()
        try:
            dirs, files = storage.listdir(path)
        except FileNotFoundError:
            continue
        for name in sorted(files):
            full = posixpath.join(path, name) if path else name
            if full not in exclude:
                yield full
        for name in sorted(dirs, reverse=True):
            if not path and name.startswith(STAGING_PREFIX):
                continue
            stack.append(posixpath.join(path, name) if path else name)


@dataclass
class ArchiveStats:
    files: int = 0
    bytes: int = 0


#: Files at least this large are probed once; if their start does not compress, they are stored as they are.
STORE_PROBE_MIN = 64 * 1024


#: The FileSystemStorage methods a subclass must leave alone for its folder to be read and written directly.
_PLAIN_METHODS = ("_open", "_save", "delete", "exists", "path")


def _plain_local_root(storage) -> Path | None:
    """MEDIA_ROOT when ``storage`` is a plain FileSystemStorage (files may be used directly), else None."""
    if isinstance(storage, FileSystemStorage) and all(
        getattr(type(storage), m) is getattr(FileSystemStorage, m) for m in _PLAIN_METHODS
    ):
        return Path(storage.location)
    return None


def _end_of_archive(written: int) -> bytes:
    """Two zero blocks, then zeros up to a whole tar record, as tarfile and GNU tar end an archive."""
    written += 2 * tarfile.BLOCKSIZE
    return tarfile.NUL * (2 * tarfile.BLOCKSIZE + (-written % tarfile.RECORDSIZE))


def _copy_member(src, out: BinaryIO, size: int, buf: memoryview) -> None:
    """Copy exactly ``size`` bytes of ``src`` into ``out`` and pad them to a tar block.

    The start of a larger file is probed: if it does not compress, the whole file goes into stored blocks
    (``out.write_stored``, where the stream has it).
    """
    stored = getattr(out, "write_stored", None)
    choose = None
    if stored is not None and size >= STORE_PROBE_MIN:

        def choose(first):
            return stored if incompressible(first) else out.write

    copy_exact(src, out, size, buf, choose)
    if size % tarfile.BLOCKSIZE:
        out.write(tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))


def media_size(storage) -> int | None:
    """Bytes of all media files of a plain local media folder (one ``stat`` each); None for other storages,
    where it would cost a request per file."""
    root = _plain_local_root(storage)
    if root is None:
        return None
    total = 0
    for name in iter_media(storage):
        with suppress(OSError):
            total += os.stat(root / name).st_size
    return total


def write_tar(
    storage,
    out: BinaryIO,
    stats: ArchiveStats | None = None,
    cancel=None,
    on_file: Callable[[int], None] | None = None,
) -> ArchiveStats:
    """Write every media file of ``storage`` as a tar stream (PAX format, what tarfile writes) into ``out``.

    Headers come from :meth:`tarfile.TarInfo.tobuf`; bodies are copied here, so that a file that does not
    compress can go into stored blocks.  A plain local media folder is read directly (one ``fstat`` per
    file, size and time from the open file); other storages through their API.
    ``cancel`` (a threading.Event) stops the archive between two files with BackupError.  ``on_file`` is told
    the size of each file archived (for progress).
    """
    stats = stats or ArchiveStats()
    root = _plain_local_root(storage)
    buf = memoryview(bytearray(CHUNK))
    written = 0
    for name in iter_media(storage):
        if cancel is not None and cancel.is_set():
            raise BackupError("media archive cancelled: another part of the backup failed")
        info = tarfile.TarInfo(name)
        info.mode = 0o644
        try:
            if root is not None:
                fh = open(root / name, "rb", buffering=0)  # noqa: SIM115 - closed below
                st = os.fstat(fh.fileno())
                info.size, info.mtime = st.st_size, int(st.st_mtime)
            else:
                info.size = storage.size(name)
                with suppress(NotImplementedError, OSError, AttributeError):
                    info.mtime = int(storage.get_modified_time(name).timestamp())
                fh = storage.open(name, "rb")
        except FileNotFoundError:
            continue  # deleted while we were walking
        except OSError as err:
            raise BackupError(f"media file {name!r} could not be read ({err}); check its permissions") from None
        try:
            with fh:
                header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
                out.write(header)
                _copy_member(fh, out, info.size, buf)
        except OSError as err:
            raise BackupError(
                f"media file {name!r} could not be read ({err}); it changed during the backup, run the backup again"
            ) from None
        written += len(header) + info.size + (-info.size % tarfile.BLOCKSIZE)
        stats.files += 1
        stats.bytes += info.size
        if on_file is not None:
            on_file(info.size)
    out.write(_end_of_archive(written))
    return stats


def check_member(member: tarfile.TarInfo) -> str | None:
    """The safe relative name of a member, None for a directory; RestoreError for anything unsafe."""
    name = member.name
    if member.isdir():
        return None
    if not member.isreg():
        kind = "link" if (member.issym() or member.islnk()) else "special file"
        raise RestoreError(f"media archive member {name!r} is a {kind}; refusing the whole archive")
    if "\x00" in name or "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise RestoreError(f"media archive member {name!r} has an absolute or unsafe path; refusing the archive")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise RestoreError(f"media archive member {name!r} points outside the media folder; refusing the archive")
    if member.size < 0:
        raise RestoreError(f"media archive member {name!r} has an impossible size; refusing the archive")
    return "/".join(parts)


@dataclass
class ArchiveContents:
    """What :func:`scan_archive` found: member names and sizes."""

    members: dict[str, int] = field(default_factory=dict)

    @property
    def files(self) -> int:
        return len(self.members)

    @property
    def bytes(self) -> int:
        return sum(self.members.values())


def iter_members(stream: BinaryIO) -> Iterator[tuple[str, tarfile.TarInfo, tarfile.TarFile]]:
    """``(safe name, member, tar)`` for each regular file of a tar stream, each checked before it is given.

    Unsafe members, duplicates and absurd counts raise :class:`RestoreError`; so does a damaged archive.
    """
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK) as tar:
            # next() rather than iteration, so that the members read so far can be dropped (memory stays flat).
            while (member := tar.next()) is not None:
                tar.members.clear()
                name = check_member(member)
                if name is None:
                    continue
                if name in seen:
                    raise RestoreError(f"media archive holds {name!r} twice; refusing the archive")
                if len(seen) >= MAX_MEMBERS:
                    raise RestoreError("media archive holds more members than any media folder should")
                seen.add(name)
                yield name, member, tar
    except tarfile.TarError as err:
        raise RestoreError(f"the media archive is damaged or not a tar file ({err}); media left unchanged") from None


def scan_archive(stream: BinaryIO) -> ArchiveContents:
    """Read a whole tar stream and validate every member (nothing is written)."""
    contents = ArchiveContents()
    for name, member, _tar in iter_members(stream):
        contents.members[name] = member.size
    return contents


def _local_path(storage, name: str) -> Path | None:
    try:
        return Path(storage.path(name))
    except NotImplementedError:
        return None


def _folder(path: Path, made: set[Path]) -> None:
    """Create ``path`` (and parents) once per restore."""
    if path not in made:
        path.mkdir(parents=True, exist_ok=True)
        made.add(path)


def _move(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; copy and delete only across file systems (a safety folder elsewhere)."""
    try:
        os.rename(source, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        shutil.move(source, target)


def _keep_original(storage, name: str, safety_media: Path, made: set[Path]) -> bool:
    """Move (or copy, for remote media storage) the current ``name`` aside; False if there is none."""
    root = _plain_local_root(storage)
    if root is not None:
        # A checked archive name or one the storage listed: one lstat, no storage calls.
        local = root / name
        if not os.path.lexists(local):
            return False
    elif storage.exists(name):
        local = _local_path(storage, name)
    else:
        return False
    kept = safety_media / name
    _folder(kept.parent, made)
    if local is not None:
        _move(local, kept)
    else:
        with storage.open(name, "rb") as src, open(kept, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        storage.delete(name)
    return True


def _put(storage, name: str, source: Path, made: set[Path]) -> None:
    """Put the file ``source`` at ``name`` in ``storage`` (nothing is there now)."""
    root = _plain_local_root(storage)
    local = root / name if root is not None else _local_path(storage, name)
    if local is not None:
        _folder(local.parent, made)
        _move(source, local)
        return
    with open(source, "rb") as fh:
        saved = storage.save(name, File(fh, name=name))
    if saved != name:
        raise RestoreError(f"the media storage saved {name!r} as {saved!r}")


@dataclass
class StagedArchive:
    """Media files extracted into a staging folder, not yet in place.

    ``names`` are staged (new or different from the live file); ``unchanged`` are live files whose bytes
    are already those of the archive, left where they are.
    """

    folder: Path
    names: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes: int = 0

    @property
    def files(self) -> int:
        return len(self.names) + len(self.unchanged)


def _open_live(path: Path, size: int) -> int | None:
    """A read descriptor of the live regular file ``path`` if it has ``size`` bytes (no symlink), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
    except OSError:
        info = None
    if info is None or not stat.S_ISREG(info.st_mode) or info.st_size != size:
        os.close(fd)
        return None
    return fd


def _stage_member(source: BinaryIO, size: int, target: Path, live: Path | None, folders: set[Path]) -> bool:
    """Write an archive member to ``target``, unless the live file has the same bytes; True if it wrote.

    The live file of the same size is compared as the member is read: while they agree nothing is written;
    at the first difference the agreed part is copied from the live file and the rest from the archive.
    """
    fd = _open_live(live, size) if live is not None else None

    def open_target() -> BinaryIO:
        _folder(target.parent, folders)
        return open(target, "wb")

    try:
        return copy_unless_same(source, size, fd, open_target)
    except EndedEarly:
        raise RestoreError("the media archive ends inside a file; media left unchanged") from None
    except ChangedWhileRead:
        raise RestoreError(f"{live} changed while it was compared; media left unchanged") from None
    finally:
        if fd is not None:
            os.close(fd)


def stage_archive(storage, stream: BinaryIO) -> StagedArchive:
    """Extract a tar stream into a staging folder, validating each member before it is written.

    The folder is under MEDIA_ROOT for local media (so that putting files in
    place is a rename), else a temp folder.  On plain local media, a member
    whose live file already holds the same bytes is not written (it is
    ``unchanged``).  Nothing of the live media changes; on any error the
    staging folder is removed.
    """
    root = _local_path(storage, "")
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    live_root = _plain_local_root(storage)
    staged = StagedArchive(Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root)))
    folders: set[Path] = set()
    try:
        for name, member, tar in iter_members(stream):
            live = live_root / name if live_root is not None else None
            if _stage_member(tar.extractfile(member), member.size, staged.folder / name, live, folders):
                staged.names.append(name)
            else:
                staged.unchanged.append(name)
            staged.bytes += member.size
    except BaseException:
        abandon_archive(staged)
        raise
    return staged


def abandon_archive(staged: StagedArchive) -> None:
    shutil.rmtree(staged.folder, ignore_errors=True)


def commit_archive(storage, staged: StagedArchive, safety_media: Path, *, mirror: bool = False) -> dict:
    """Put staged files in place.

    Every file that is replaced (or, with ``mirror``, removed) is moved into
    ``safety_media``; names that did not exist before are returned in
    ``created``, so :func:`undo_media` can put everything back.  On failure
    it is put back at once.
    """
    created: list[str] = []
    removed = 0
    made: set[Path] = set()
    try:
        for name in staged.names:
            if not _keep_original(storage, name, safety_media, made):
                created.append(name)
            _put(storage, name, staged.folder / name, made)
        if mirror:
            keep = set(staged.names) | set(staged.unchanged)
            for name in list(iter_media(storage)):
                if name not in keep:
                    _keep_original(storage, name, safety_media, made)
                    removed += 1
        return {"files": staged.files, "unchanged": len(staged.unchanged), "removed": removed, "created": created}
    except BaseException:
        undo_media(storage, safety_media, created)
        raise
    finally:
        abandon_archive(staged)


def restore_archive(storage, stream: BinaryIO, safety_media: Path, *, mirror: bool = False) -> dict:
    """Stage, then commit, a tar stream (see :func:`stage_archive`, :func:`commit_archive`)."""
    return commit_archive(storage, stage_archive(storage, stream), safety_media, mirror=mirror)


def undo_media(storage, safety_media: Path, created: list[str]) -> None:
    """Delete the ``created`` names and move every kept original back into place."""
    for name in created:
        with suppress(FileNotFoundError):
            storage.delete(name)
    if not safety_media.is_dir():
        return
    made: set[Path] = set()
    for path in sorted(p for p in safety_media.rglob("*") if p.is_file()):
        name = path.relative_to(safety_media).as_posix()
        with suppress(FileNotFoundError):
            storage.delete(name)
        _put(storage, name, path, made)
