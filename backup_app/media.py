"""Media files: a streaming tar writer over the media storage, and validated extraction.

The archive is a plain (PAX) tar of regular files named by their storage
names, the layout stock ``mediabackup`` writes and ``mediarestore`` reads.
Restoring first validates every member (:func:`scan_archive`), then stages the
files and moves them into place, so a bad archive changes nothing.

From a plain local media folder the archive also records what a restore must
give back exactly: every folder (empty ones too) with its mode, and each
file's real mode and mtime (to the second, the tar header's precision).  The
walker never follows a link and never opens anything but a regular file:
links, FIFOs, sockets and devices are skipped, logged and listed
(:attr:`ArchiveStats.skipped`, the manifest's ``media.skipped``).  A name whose
path a restore could not make again (over ``PATH_MAX`` in the staging folder)
is a backup error.  On restore, files keep the owner and group of the files
they replace; new files and folders get the media folder's owner when root
restores; nothing is written through a link.
"""

from __future__ import annotations

import errno
import json
import logging
import operator
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
from .ownership import Ownership, chown, folder_owner, umask
from .pipeline import incompressible
from .streams import CHUNK, ChangedWhileRead, EndedEarly, copy_exact, copy_unless_same, file_system_of, room_left
from .testing import pause_at
from .tools import owner_tag, scratch_gone

#: Folder name prefix of restore staging areas inside MEDIA_ROOT; never archived.
STAGING_PREFIX = ".backup-restore-"
MAX_MEMBERS = 10_000_000
#: What a staging folder adds to a name's path on restore: ``<prefix><pid>-<8 random characters>/`` (a pid has
#: at most 7 digits: Linux's ``pid_max`` is at most 4,194,304).
STAGING_EXTRA = len(STAGING_PREFIX) + 7 + 1 + 8 + 1

logger = logging.getLogger("backup_app")

#: ``stat`` file types the walker skips, by the name the manifest gives them.
_SPECIAL = {
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


def media_storage():
    """The storage media files live in (``STORAGES["default"]``)."""
    return storages["default"]


def walk_local(root: Path, skipped: list[dict] | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """``(name, lstat)`` of every folder and regular file under ``root``, folders before what they hold, files
    of a folder before its subfolders, sorted; staging folders left out.

    No link is followed and nothing but folders is opened: links, FIFOs, sockets and devices are logged and added
    to ``skipped`` (``{"name", "kind"}``).  A name whose path a restore could not make again in its staging
    folder, or that a restore refuses (:func:`_safe_name`: a backslash, ``X:`` at the start), raises BackupError.
    """
    limit = _path_max(root) - len(os.fsencode(str(root))) - 1 - STAGING_EXTRA
    top = os.fspath(root)
    # Per entry (27,000 files: a tenth of a second of the whole walk), so: no Path objects, each name read once.
    # Each folder is opened once and its entries are listed and lstat'ed through that descriptor (fstatat of
    # the bare name), so that the kernel does not look every folder of the path up again for every file: on
    # 27,543 files that was a fifth of the walk's system time (docs/performance.md).
    by_name = operator.attrgetter("name")
    lstat_of = os.DirEntry.stat
    by_fd = os.scandir in os.supports_fd
    stack: list[tuple[str, os.stat_result | None]] = [("", None)]
    while stack:
        folder, folder_stat = stack.pop()
        if folder_stat is not None:
            yield folder, folder_stat
        fd = None
        try:
            path = os.path.join(top, folder) if folder else top
            if by_fd:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            with os.scandir(fd if by_fd else path) as it:
                entries = sorted(it, key=by_name)
        except FileNotFoundError:
            if fd is not None:
                os.close(fd)
            continue  # removed while we were walking
        except OSError as err:
            if fd is not None:
                os.close(fd)
            if err.errno == errno.ENAMETOOLONG:
                raise _too_long(folder, limit) from None
            raise BackupError(f"media folder {folder!r} could not be read ({err}); check its permissions") from None
        try:
            dirs = []
            head = folder + "/" if folder else ""
            for entry in entries:
                base = entry.name
                if not folder and base.startswith(STAGING_PREFIX):
                    continue
                name = head + base
                if len(name) * 4 > limit and len(os.fsencode(name)) > limit:  # (at most 4 bytes a character)
                    raise _too_long(name, limit)
                if "\\" in base or (not folder and base[1:2] == ":"):
                    raise BackupError(
                        f"media entry {name!r} has a name a restore refuses (a backslash, or a drive letter's ':' "
                        "after its first character, as in a Windows path); rename it"
                    )
                try:
                    st = lstat_of(entry, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                kind = stat.S_IFMT(st.st_mode)
                if kind == stat.S_IFREG:
                    yield name, st
                elif kind == stat.S_IFDIR:
                    dirs.append((name, st))
                else:
                    what = _SPECIAL.get(kind, "special file")
                    logger.warning("skipped media entry %r (%s): only files and folders are backed up", name, what)
                    if skipped is not None:
                        skipped.append({"name": name, "kind": what})
        finally:
            if fd is not None:
                os.close(fd)
        stack.extend(reversed(dirs))


def _path_max(root: Path) -> int:
    try:
        return os.pathconf(root, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 4096


def _too_long(name: str, limit: int) -> BackupError:
    shown = name if len(name) <= 120 else f"{name[:60]}...{name[-50:]}"
    return BackupError(
        f"media entry {shown!r} has a path too long to be restored ({len(os.fsencode(name))} bytes under the "
        f"media folder; a restore can make at most {limit}); shorten or move it"
    )


def iter_media(storage, exclude: set[str] | None = None) -> Iterator[str]:
    """Every file name in ``storage``, depth first, sorted, skipping staging folders (and, in a plain local
    folder, links and special files: see :func:`walk_local`)."""
    exclude = exclude or set()
    root = _plain_local_root(storage)
    if root is not None:
        for name, st in walk_local(root):
            if stat.S_ISREG(st.st_mode) and name not in exclude:
                yield name
        return
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
    #: Entries of a local media folder left out: ``{"name", "kind"}`` (links, FIFOs, sockets, devices).
    skipped: list[dict] = field(default_factory=list)


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


def _copy_member(src, out: BinaryIO, size: int, buf: memoryview, on_chunk: Callable[[int], None] | None = None) -> None:
    """Copy exactly ``size`` bytes of ``src`` into ``out`` and pad them to a tar block.

    The start of a larger file is probed: if it does not compress, the whole file goes into stored blocks
    (``out.write_stored``, where the stream has it).
    """
    stored = getattr(out, "write_stored", None)
    choose = None
    if stored is not None and size >= STORE_PROBE_MIN:

        def choose(first):
            return stored if incompressible(first) else out.write

    copy_exact(src, out, size, buf, choose, on_chunk)
    if size % tarfile.BLOCKSIZE:
        out.write(tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))


def media_size(storage) -> int | None:
    """Bytes of all media files of a plain local media folder (one ``stat`` each); None for other storages,
    where it would cost a request per file."""
    root = _plain_local_root(storage)
    if root is None:
        return None
    # The walk's own lstat of each regular file (no link is followed), not a second stat per file.
    return sum(st.st_size for _name, st in walk_local(root) if stat.S_ISREG(st.st_mode))


def write_tar(
    storage,
    out: BinaryIO,
    stats: ArchiveStats | None = None,
    cancel=None,
    on_file: Callable[[int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> ArchiveStats:
    """Write every media file of ``storage`` as a tar stream (PAX format, what tarfile writes) into ``out``.

    Headers come from :meth:`tarfile.TarInfo.tobuf`; bodies are copied here, so that a file that does not
    compress can go into stored blocks.  A plain local media folder is read directly (one ``fstat`` per
    file, size and time from the open file); other storages through their API.
    ``cancel`` (a threading.Event) stops the archive between two files with BackupError.  For progress,
    ``on_bytes`` is told each chunk of a file's contents as it is archived (so that a bar moves inside one
    large file), ``on_file`` the size of each file once it is archived.
    """
    stats = stats or ArchiveStats()
    root = _plain_local_root(storage)
    buf = memoryview(bytearray(CHUNK))
    written = 0
    entries = walk_local(root, stats.skipped) if root is not None else ((n, None) for n in iter_media(storage))
    for name, st in entries:
        if cancel is not None and cancel.is_set():
            raise BackupError("media archive cancelled: another part of the backup failed")
        info = tarfile.TarInfo(name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            # Folders too (empty ones, and their modes); stock mediarestore skips them.
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, stat.S_IMODE(st.st_mode), int(st.st_mtime)
            info.uid, info.gid = st.st_uid, st.st_gid
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            out.write(header)
            written += len(header)
            continue
        info.mode = 0o644
        try:
            if root is not None:
                fh = _open_regular(root / name)
                if fh is None:
                    continue  # replaced by something else than a file while we were walking
                st = os.fstat(fh.fileno())
                info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), stat.S_IMODE(st.st_mode)
                info.uid, info.gid = st.st_uid, st.st_gid
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
                _copy_member(fh, out, info.size, buf, on_bytes)
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


def _open_regular(path: Path):
    """``path`` opened for reading if it is a regular file (never a link, never blocking on a FIFO), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None  # a link now
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return open(fd, "rb", buffering=0)  # noqa: SIM115 - the caller closes it


def _safe_name(name: str) -> str:
    """``name`` made relative and normalised; RestoreError for anything that could leave the media folder."""
    if "\x00" in name or "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise RestoreError(f"media archive member {name!r} has an absolute or unsafe path; refusing the archive")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise RestoreError(f"media archive member {name!r} points outside the media folder; refusing the archive")
    return "/".join(parts)


def check_member(member: tarfile.TarInfo) -> str | None:
    """The safe relative name of a member, None for a directory; RestoreError for anything unsafe."""
    name = member.name
    if member.isdir():
        _safe_name(name)
        return None
    if not member.isreg():
        kind = "link" if (member.issym() or member.islnk()) else "special file"
        raise RestoreError(f"media archive member {name!r} is a {kind}; refusing the whole archive")
    safe = _safe_name(name)
    if not safe:
        raise RestoreError(f"media archive member {name!r} points outside the media folder; refusing the archive")
    if member.size < 0:
        raise RestoreError(f"media archive member {name!r} has an impossible size; refusing the archive")
    return safe


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


def iter_members(stream: BinaryIO, *, folders: bool = False) -> Iterator[tuple[str, tarfile.TarInfo, tarfile.TarFile]]:
    """``(safe name, member, tar)`` for each regular file of a tar stream (and, with ``folders``, each folder
    but the top one), each checked before it is given.

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
                    folder = _safe_name(member.name)
                    if folders and folder:
                        yield folder, member, tar
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


def _folder(
    path: Path, made: set[Path], owner: tuple[int, int] | None = None, journal: Journal | None = None, root=None
) -> None:
    """Create ``path`` (and parents) once per restore; folders it makes get ``owner`` (uid, gid) when given.

    With a ``journal`` (the live media folder ``root``), each folder made is written to it first."""
    if path in made:
        return
    missing = []
    parent = path
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = parent.parent
    if journal is not None and root is not None:
        for folder in reversed(missing):
            journal.write("mkdir", folder.relative_to(root).as_posix())
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        for folder in missing:
            chown(folder, *owner)
    made.add(path)


def _same_owner(source: Path, copy: Path) -> None:
    st = os.lstat(source)
    with suppress(PermissionError):  # not root: the copy is ours, as any copy a user makes
        os.chown(copy, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(copy, stat.S_IMODE(st.st_mode))  # chown clears set-user/group-id bits


def _copy_owned(source, copy) -> None:
    """A copy with the source's bytes, mode, times and (as root) owner and group."""
    shutil.copy2(source, copy, follow_symlinks=False)
    _same_owner(Path(source), Path(copy))


def _move(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; copy and delete only across file systems (a safety folder elsewhere)."""
    try:
        os.rename(source, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        # Whole at ``target`` before ``source`` goes (a kill in between leaves both, never half of one).
        part = target.with_name(target.name + ".part")
        _remove(part)
        try:
            if _is_folder(source):
                shutil.copytree(source, part, symlinks=True, copy_function=_copy_owned)
                for folder, _dirs, _files in os.walk(source):
                    _same_owner(Path(folder), part / Path(folder).relative_to(source))
            else:
                _copy_owned(source, part)
        except BaseException:
            _remove(part)
            raise
        os.replace(part, target)
        _remove(source)


class Journal:
    """The steps of one media swap, each line written before its step is taken (JSON ``[op, name, ...]``).

    ``keep``: the live ``name`` (a file, a link or a whole folder) is moved into the safety folder; ``mkdir``:
    the folder ``name`` is made; ``chmod``: the folder ``name`` had the mode given; ``put``: a restored file is
    put at ``name``.  Read backwards, the lines say how to put the tree back exactly, wherever the swap stopped
    (:func:`undo_media`).  A kill leaves at most a half-written last line, which is ignored.  Without a path
    nothing is written.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if path is not None else None

    def write(self, op: str, name: str, *extra) -> None:
        if self._fd is not None:
            os.write(self._fd, (json.dumps([op, name, *extra]) + "\n").encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def read(path: Path) -> list[list]:
        steps = []
        with suppress(FileNotFoundError):
            for line in path.read_bytes().split(b"\n"):
                with suppress(ValueError, TypeError):
                    step = json.loads(line)
                    if isinstance(step, list) and len(step) >= 2:
                        steps.append(step)
        return steps


NO_JOURNAL = Journal(None)


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def _is_folder(path: Path) -> bool:
    """A real folder (not a link to one)."""
    return path.is_dir() and not path.is_symlink()


def _remove(path: Path) -> None:
    """Remove whatever is at ``path``: a file, a link, or a folder with all in it."""
    if _is_folder(path):
        shutil.rmtree(path)
    else:
        with suppress(FileNotFoundError):
            os.unlink(path)


def _keep_original(storage, name: str, safety_media: Path, made: set[Path], journal: Journal = NO_JOURNAL) -> bool:
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
    journal.write("keep", name)
    if local is not None:
        _move(local, kept)
    else:
        part = kept.with_name(kept.name + ".part")
        with storage.open(name, "rb") as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        os.replace(part, kept)  # whole before the live file goes
        storage.delete(name)
    return True


def _clear_way(storage, root: Path, name: str, safety_media: Path, made: set[Path], journal: Journal) -> None:
    """A file where a folder on the way to ``name`` must be (the site has ``a``, the backup ``a/b``): moved
    aside into the safety folder, so that the folder can be made and the file put back by an undo."""
    parts = name.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        path = root / "/".join(parts[:i])
        if path in made:
            continue
        if _lexists(path) and not _is_folder(path):
            _keep_original(storage, "/".join(parts[:i]), safety_media, made, journal)
            return


def _put(
    storage,
    name: str,
    source: Path,
    made: set[Path],
    owner: tuple[int, int] | None = None,
    journal: Journal = NO_JOURNAL,
    safety_media: Path | None = None,
) -> None:
    """Put the file ``source`` at ``name`` in ``storage`` (nothing is there now); folders made get ``owner``."""
    root = _plain_local_root(storage)
    local = root / name if root is not None else _local_path(storage, name)
    if local is not None:
        if root is not None and safety_media is not None:
            _clear_way(storage, root, name, safety_media, made, journal)
        _folder(local.parent, made, owner, journal, root)
        journal.write("put", name)
        _move(source, local)
        return
    journal.write("put", name)
    with open(source, "rb") as fh:
        saved = storage.save(name, File(fh, name=name))
    if saved != name:
        raise RestoreError(f"the media storage saved {name!r} as {saved!r}")


@dataclass
class StagedArchive:
    """Media files extracted into a staging folder, not yet in place.

    ``names`` are staged (new or different from the live file); ``unchanged`` are live files whose bytes,
    mode and mtime are already those of the archive, left where they are.  ``folders`` are the archive's
    folders with their modes (local media only; archives older than this carry none); ``exact``: the archive's
    modes and mtimes were applied to the staged files (a plain local media folder).
    """

    folder: Path
    names: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    folders: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    exact: bool = False

    @property
    def files(self) -> int:
        return len(self.names) + len(self.unchanged)


def _open_live(path: Path, member: tarfile.TarInfo, exact: bool) -> int | None:
    """A read descriptor of the live regular file ``path`` if it has the member's size (and, ``exact``, its mode
    and mtime), never a link nor a FIFO; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
    except OSError:
        info = None
    same = (
        info is not None
        and stat.S_ISREG(info.st_mode)
        and info.st_size == member.size
        and (not exact or (stat.S_IMODE(info.st_mode) == member.mode and int(info.st_mtime) == int(member.mtime)))
    )
    if not same:
        os.close(fd)
        return None
    return fd


def _stage_member(
    source: BinaryIO, member: tarfile.TarInfo, target: Path, live: Path | None, folders: set[Path], exact: bool
) -> bool:
    """Write an archive member to ``target``, unless the live file has the same bytes; True if it wrote.

    The live file of the same size is compared as the member is read: while they agree nothing is written;
    at the first difference the agreed part is copied from the live file and the rest from the archive.
    ``exact``: a live file whose mode or mtime differ is written too, and the staged file gets the member's.
    """
    fd = _open_live(live, member, exact) if live is not None else None

    def open_target() -> BinaryIO:
        _folder(target.parent, folders)
        return open(target, "wb")

    try:
        wrote = copy_unless_same(source, member.size, fd, open_target)
    except EndedEarly:
        raise RestoreError("the media archive ends inside a file; media left unchanged") from None
    except ChangedWhileRead:
        raise RestoreError(f"{live} changed while it was compared; media left unchanged") from None
    finally:
        if fd is not None:
            os.close(fd)
    if wrote and exact:
        os.chmod(target, member.mode)
        os.utime(target, (member.mtime, member.mtime))
    return wrote


def _check_no_link(root: Path, name: str, checked: set[str]) -> None:
    """RestoreError if a folder on the way to ``name`` under ``root`` is a link or not a folder: a restore never
    writes through a link, in or out of the media folder."""
    parts = name.split("/")
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if prefix in checked:
            continue
        try:
            st = os.lstat(root / prefix)
        except FileNotFoundError:
            return  # made by the restore, a real folder
        if stat.S_ISLNK(st.st_mode):
            raise RestoreError(
                f"media file {name!r} cannot be restored: {prefix!r} is a symbolic link on this site and a "
                "restore never writes through one; remove the link, or restore into another media folder"
            )
        if not stat.S_ISDIR(st.st_mode) and not stat.S_ISREG(st.st_mode):
            raise RestoreError(f"media file {name!r} cannot be restored: {prefix!r} is not a folder on this site")
        if not stat.S_ISDIR(st.st_mode):
            return  # a file where the backup has a folder: moved aside at the swap (and back by an undo)
        checked.add(prefix)


#: Room counted for each staged file besides its bytes (a block and an inode's worth).
FILE_OVERHEAD = 4096


class Room:
    """What an archive may still put into the staging folder before :func:`stage_archive` stops it.

    With ``expected`` (the manifest's ``files`` and ``bytes``) no more than that; always no more than the
    file system of the staging folder has free (:func:`room_left`, a margin kept), looked at again only when
    what was staged passes what it had.
    """

    def __init__(self, archive: str, folder: Path, expected: dict | None):
        self.archive = archive
        self.folder = folder
        self.files = expected.get("files") if expected else None
        self.bytes = expected.get("bytes") if expected else None
        self.used = self.count = self.folders = 0
        self._free, self._inodes = room_left(folder)

    def give_back(self, size: int) -> None:
        """A member of ``size`` bytes was not written after all (the live file already holds its bytes)."""
        self.used -= size

    def take_folder(self, name: str) -> None:
        """Count folder member ``name`` in: an inode, no bytes, not one of the manifest's files."""
        self.folders += 1
        if self.folders > MAX_MEMBERS:
            raise RestoreError(f"{self.archive} holds more folders than any media folder should; refusing it")
        # An inode (counted in ``count``, so in the free-space check), no bytes: ``used`` is compared with the
        # manifest's bytes, which count the files' contents only.
        self.count += 1
        if self.files is not None:
            self.files += 1  # the manifest counts files only

    def take(self, name: str, size: int) -> None:
        """Count member ``name`` of ``size`` bytes in, or raise RestoreError naming the archive."""
        self.count += 1
        self.used += size
        if self.files is not None and self.count > self.files:
            raise RestoreError(
                f"{self.archive} holds more files than the {self.files} its manifest says (at {name!r}); "
                "refusing the archive"
            )
        if self.bytes is not None and self.used > self.bytes:
            raise RestoreError(
                f"{self.archive} holds more than the {self.bytes:,} bytes its manifest says (at {name!r}, "
                f"{size:,} bytes); refusing the archive"
            )
        if self.used + self.count * FILE_OVERHEAD > self._free or self.count > self._inodes:
            free, inodes = room_left(self.folder)
            staged = self.used - size + (self.count - 1) * FILE_OVERHEAD  # already on the disk, so in free
            self._free, self._inodes = staged + free, self.count - 1 + inodes
            if self.used + self.count * FILE_OVERHEAD > self._free or self.count > self._inodes:
                raise RestoreError(
                    f"{self.archive} expands to more than the file system of {self.folder.parent} has free "
                    f"(at {name!r}: {self.used:,} bytes in {self.count:,} files, a margin kept); free some "
                    "space or restore onto a larger disk"
                )


def stage_archive(
    storage, stream: BinaryIO, *, archive: str = "the media archive", expected: dict | None = None
) -> StagedArchive:
    """Extract a tar stream into a staging folder, validating each member before it is written.

    The folder is under MEDIA_ROOT for local media (so that putting files in
    place is a rename), else a temp folder.  On plain local media, a member
    whose live file already holds the same bytes, mode and mtime is not written
    (it is ``unchanged``), the staged files get the archive's modes and mtimes,
    and a name that would go through a link is refused.  Extraction stops before a member that would take more
    files or bytes than ``expected`` (the manifest's ``media``) says or than the file system has free
    (:class:`Room`).  Nothing of the live
    media changes; on any error the staging folder is removed.
    """
    root = _local_path(storage, "")
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    live_root = _plain_local_root(storage)
    staged = StagedArchive(staging_folder(root), exact=live_root is not None)
    folders: set[Path] = set()
    checked: set[str] = set()
    try:
        room = Room(archive, staged.folder, expected)
        for name, member, tar in iter_members(stream, folders=live_root is not None):
            if live_root is not None:
                _check_no_link(live_root, f"{name}/" if member.isdir() else name, checked)
            if member.isdir():
                room.take_folder(name)
                staged.folders[name] = member.mode
                continue
            room.take(name, member.size)
            live = live_root / name if live_root is not None else None
            if _stage_member(tar.extractfile(member), member, staged.folder / name, live, folders, staged.exact):
                staged.names.append(name)
            else:
                staged.unchanged.append(name)
                room.give_back(member.size)
            staged.bytes += member.size
    except BaseException:
        abandon_archive(staged)
        raise
    return staged


def staging_folder(root: Path | None) -> Path:
    """A new staging folder in ``root`` (MEDIA_ROOT; None: the temp folder), named after this process
    (``.backup-restore-<pid>-<host+boot tag>-<random>``) so that :func:`remove_stale_staging` leaves it while it
    runs, and a host beside this one (another container over the same volume) leaves it always."""
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{owner_tag()}-", dir=root))


def remove_stale_staging(storage) -> list[str]:
    """Remove the staging folders (``.backup-restore-<pid>-...``) of restores whose process is gone."""
    root = _local_path(storage, "")
    gone = []
    for folder in root.glob(f"{STAGING_PREFIX}*") if root is not None and root.is_dir() else ():
        if not scratch_gone(folder.name[len(STAGING_PREFIX) :], "-"):
            continue  # still at work, or another host's
        shutil.rmtree(folder, ignore_errors=True)
        gone.append(folder.name)
    return gone


def abandon_archive(staged: StagedArchive, *, strict: bool = False) -> None:
    """Remove the staging folder; ``strict``: an OSError of the removal is raised (a restore reports what is
    left), else what cannot be removed stays for :func:`remove_stale_staging`."""
    if not strict:
        shutil.rmtree(staged.folder, ignore_errors=True)
        return
    with suppress(FileNotFoundError):
        shutil.rmtree(staged.folder)


def _put_folders(
    storage,
    root: Path,
    staged: StagedArchive,
    owner: tuple[int, int] | None,
    safety_media: Path,
    kept: set[Path],
    journal: Journal = NO_JOURNAL,
) -> dict:
    """Make the archive's folders, with its modes; returns ``{"made": [...], "modes": {name: old mode}}``.

    A file or link where the archive has a folder is moved aside first; each step goes to ``journal`` first."""
    made, modes = [], {}
    for name, mode in sorted(staged.folders.items()):
        path = root / name
        if _lexists(path) and not _is_folder(path):
            _keep_original(storage, name, safety_media, kept, journal)
        current = Ownership.of(path)
        if current is None:
            journal.write("mkdir", name)
            path.mkdir(mode=0o700)
            made.append(name)
            if owner is not None:
                chown(path, *owner)
        elif current.mode == mode:
            continue
        else:
            journal.write("chmod", name, current.mode)
            modes[name] = current.mode
        os.chmod(path, mode)
    return {"made": made, "modes": modes}


def kept_size(storage, staged: StagedArchive, safety_media: Path, *, mirror: bool = False) -> tuple[int, int] | None:
    """``(files, bytes)`` that :func:`commit_archive` surely copies into ``safety_media`` to keep what it replaces.

    Nothing when the live media folder is on the safety folder's file system (each file is moved by a rename);
    else the live files at the staged names (a folder there: all its files), the files where the archive has a
    folder, and with ``mirror`` the live files the archive does not hold.  None for media storage that is not a
    plain local folder, where sizing the files would cost a request each.
    """
    root = _plain_local_root(storage)
    if root is None:
        return None
    if file_system_of(root)[0] == file_system_of(safety_media)[0]:
        return 0, 0
    files = total = 0
    moved: list[str] = []  # whole folders moved aside: the mirror pass finds nothing under them
    staged_files = set(staged.names)
    candidates = {*staged.names, *staged.folders}
    for name in staged.names:  # a file where a folder on the way must go (archives without folder entries)
        parts = name.split("/")[:-1]
        candidates.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    for name in sorted(candidates):
        path = root / name
        try:
            st = os.lstat(path)
        except OSError:  # not there, or a file on its way (counted under its own name)
            continue
        if stat.S_ISDIR(st.st_mode):
            if name not in staged_files:
                continue  # a folder that stays a folder
            moved.append(name + "/")
            for base, _dirs, names in os.walk(path):
                for entry in names:
                    with suppress(OSError):
                        total += os.lstat(os.path.join(base, entry)).st_size
                        files += 1
            continue
        files += 1
        total += st.st_size
    if mirror:
        keep = staged_files | set(staged.unchanged)
        for name in iter_media(storage):
            if name in keep or name.startswith(tuple(moved)):
                continue
            with suppress(OSError):
                total += os.lstat(root / name).st_size
                files += 1
    return files, total


def commit_archive(
    storage, staged: StagedArchive, safety_media: Path, *, mirror: bool = False, journal: Path | None = None
) -> dict:
    """Put staged files in place.

    Every file that is replaced (or, with ``mirror``, removed) is moved into
    ``safety_media``, and so is a file where the restore needs a folder, or a
    folder where it puts a file; names that did not exist before are returned
    in ``created``, folders made and folder modes changed in ``folders``.  Each
    step is first written to ``journal``, so that :func:`undo_media` puts the
    exact tree back wherever the swap stopped (a failure here: at once; a kill:
    the next run).

    On a plain local media folder a file takes the owner and group of the file
    it replaces; new files and folders get the media folder's owner when root
    restores.  A file from an archive without modes (stock's, or one made
    before they were recorded) also keeps the mode of the file it replaces.
    """
    created: list[str] = []
    removed = 0
    made: set[Path] = set()
    root = _plain_local_root(storage)
    owner = folder_owner(root) if root is not None else None
    folders: dict = {"made": [], "modes": {}}
    steps = Journal(journal)
    half = len(staged.names) // 2
    try:
        if root is not None:
            folders = _put_folders(storage, root, staged, owner, safety_media, made, steps)
        for index, name in enumerate(staged.names):
            if index == half:
                pause_at("restore:media-half")
            source = staged.folder / name
            replaced = Ownership.of(root / name) if root is not None else None
            if not _keep_original(storage, name, safety_media, made, steps):
                created.append(name)
            if root is not None:
                if replaced is not None:
                    replaced.apply(source, mode=not staged.exact)
                else:
                    if owner is not None:
                        chown(source, *owner)
                    if not staged.exact:
                        os.chmod(source, 0o666 & ~umask())
            _put(storage, name, source, made, owner, steps, safety_media)
        if mirror:
            keep = set(staged.names) | set(staged.unchanged)
            for name in list(iter_media(storage)):
                if name not in keep:
                    _keep_original(storage, name, safety_media, made, steps)
                    removed += 1
        return {
            "files": staged.files,
            "unchanged": len(staged.unchanged),
            "removed": removed,
            "created": created,
            "folders": folders,
        }
    except BaseException:
        steps.close()
        undo_media(storage, safety_media, created, folders, journal=journal)
        raise
    finally:
        steps.close()
        abandon_archive(staged)


def restore_archive(
    storage,
    stream: BinaryIO,
    safety_media: Path,
    *,
    mirror: bool = False,
    archive: str = "the media archive",
    expected: dict | None = None,
) -> dict:
    """Stage, then commit, a tar stream (see :func:`stage_archive`, :func:`commit_archive`)."""
    staged = stage_archive(storage, stream, archive=archive, expected=expected)
    return commit_archive(storage, staged, safety_media, mirror=mirror)


def undo_media(
    storage, safety_media: Path, created: list[str], folders: dict | None = None, *, journal: Path | None = None
) -> None:
    """Put the media tree back as it was before :func:`commit_archive` began.

    With its ``journal``: every step taken is undone, last first (a put file removed, a folder made removed, a
    folder's mode put back, a kept file, link or folder moved back); running it again after a kill is safe.
    Without one (a record of an older version): delete the ``created`` names, move every kept original back,
    put back the modes of the folders the restore changed and remove the (now empty) folders it made.
    """
    if journal is not None and journal.exists():
        _undo_journal(storage, safety_media, Journal.read(journal))
        return
    for name in created:
        with suppress(FileNotFoundError):
            storage.delete(name)
    made: set[Path] = set()
    if safety_media.is_dir():
        for path in sorted(p for p in safety_media.rglob("*") if p.is_file() or p.is_symlink()):
            name = path.relative_to(safety_media).as_posix()
            with suppress(FileNotFoundError):
                storage.delete(name)
            _put(storage, name, path, made)
    root = _plain_local_root(storage)
    if root is None or not folders:
        return
    for name, mode in folders.get("modes", {}).items():
        with suppress(FileNotFoundError):
            os.chmod(root / name, mode)
    for name in sorted(folders.get("made", []), reverse=True):
        with suppress(OSError):
            (root / name).rmdir()


def _undo_journal(storage, safety_media: Path, steps: list[list]) -> None:
    root = _plain_local_root(storage) or _local_path(storage, "")
    half = len(steps) // 2
    kept_names = {step[1] for step in steps if step[0] == "keep"}
    for index, step in enumerate(reversed(steps)):
        if index == half:
            pause_at("rollback:media-half")
        op, name = step[0], step[1]
        kept = safety_media / name
        if op == "put" and name in kept_names and not _lexists(kept):
            continue  # the original is back already (an undo run again after a kill): it stays
        if root is None:  # remote media storage: kept files are whole copies (written as .part, then renamed)
            if op == "put" or (op == "keep" and kept.exists()):
                with suppress(FileNotFoundError):
                    storage.delete(name)
            if op == "keep" and kept.exists():
                with open(kept, "rb") as fh:
                    storage.save(name, File(fh, name=name))
                kept.unlink()
            continue
        live = root / name
        if op == "put":
            if _lexists(live) and not _is_folder(live):
                os.unlink(live)
        elif op == "mkdir":
            with suppress(OSError):  # not empty: something else is in it now; it stays
                live.rmdir()
        elif op == "chmod" and len(step) > 2:
            with suppress(OSError):
                if _is_folder(live):
                    os.chmod(live, step[2])
        elif op == "keep" and _lexists(kept):
            if _lexists(live):
                _remove(live)
            live.parent.mkdir(parents=True, exist_ok=True)
            _move(kept, live)
