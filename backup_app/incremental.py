"""Incremental media: file contents stored once, in packs the sets share, and one media index per set.

In the backup storage (``backup_media_mode: incremental``):

- ``media-packs/<random>.pack[.gz|.zst][.gpg]`` — a *pack*: the bytes of many *blobs* back to back,
  compressed and encrypted as one stream like every other backup file.  A pack is written once, never
  changed, and deleted only by pruning, when no set's manifest names it.
- ``<set's media name>.mediaindex[.gz|.zst][.gpg]`` — the set's *media index*, a file of the set like a
  dump: JSON lines, a header and then one line per media file: path, size, mode, mtime (ns) and its chunks
  ``[blob SHA-256, pack, offset, length]``.  Its size and SHA-256 are in the manifest.
- The manifest's ``media`` entry names every pack the set needs with the pack's stored size and SHA-256,
  in plain text, so that listing, pruning and a quick verify need no decryption.

A blob is a chunk of a file, at most :data:`CHUNK_SIZE` bytes, known by the SHA-256 of its bytes.  Chunks
have fixed boundaries (restic and borg cut them where the content says, which survives an insertion in the
middle of a file): media attachments are replaced whole, not edited in place, so fixed chunks lose little
and cost nothing.  Blobs are packed together up to :data:`PACK_TARGET`, so a million thumbnails are a few
hundred objects, not a million.  Unlike restic, a pack is compressed and encrypted as one stream (through
the same pipeline as a dump), so reading one blob reads its pack from the start: restores read packs whole,
in order.

A backup looks up each file in the previous set's index: same size and mtime, and its chunks are reused
without reading the file; otherwise it is read and hashed, and only blobs no pack holds yet are stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from .errors import BackupError, RestoreError
from .media import (
    STORE_PROBE_MIN,
    StagedArchive,
    _check_no_link,
    _local_path,
    _open_regular,
    _plain_local_root,
    _safe_name,
    abandon_archive,
    check_member,
    iter_media,
    staging_folder,
    walk_local,
)
from .pipeline import SUFFIX, GpgSpec, ReadResult, StoredFile, incompressible, open_stream, store_stream
from .secrets import redact
from .sets import INDEX_BASE, read_bytes, split_extension, write_json
from .storage import RemoteStorage
from .testing import pause_at
from .tools import owner, owner_gone, owner_tag, scratch_gone

#: Folder of the backup storage holding the packs (not listed with the sets: listing stays one request).
PACK_FOLDER = "media-packs"
INDEX_FORMAT = "backup_app/media-index/1"
#: Largest blob: files above it are cut into chunks of this size.
CHUNK_SIZE = 4 * 1024 * 1024
#: A pack is stored once it holds this many bytes (and at the end of a backup).
PACK_TARGET = 16 * 1024 * 1024
#: A pack a backup wrote holding less than this many bytes of blobs is *small* (a nightly backup's last pack,
#: typically): a prune merges such packs (``actions.prune.plan_repack``), and the last new pack of a kind a repack
#: writes takes up to this much more than :data:`PACK_TARGET` rather than being left small.
SMALL_PACK = PACK_TARGET // 4
#: Most files an index may hold (a crafted index must not make a restore allocate without end).
MAX_FILES = 10_000_000
#: Most staged files a restore keeps open at once (a file's chunks can be spread over many packs).
OPEN_FILES = 256


@dataclass
class FileEntry:
    """One media file of an index."""

    path: str
    size: int
    mode: int
    mtime_ns: int
    chunks: list[tuple[str, str, int, int]]  # (blob sha256, pack, offset, length)
    owner: tuple[int, int] | None = None  # (uid, gid) on local media

    def as_json(self) -> str:
        return self.as_line().decode("utf-8", "surrogateescape")

    def as_line(self) -> bytes:
        """The entry's line of an index (no newline): :func:`line_prefix`, then the chunks."""
        prefix = line_prefix(_path_key(self.path), self.size, self.mode, self.mtime_ns, self.owner)
        return prefix + json.dumps(self.chunks, separators=(",", ":")).encode("ascii") + b"}"


def _path_key(path: str) -> bytes:
    """A path as an index line spells it (a JSON string, not ASCII-escaped; undecodable bytes kept)."""
    # Once per media file on every backup.  json.dumps(ensure_ascii=False) escapes only '"', '\\' and the
    # characters below U+0020 (which are not printable); an undecodable byte (a surrogate escape, not printable
    # either) needs "surrogateescape", which makes encode() several times slower: most names need neither.
    if '"' not in path and "\\" not in path and path.isprintable():
        try:
            return b'"' + path.encode() + b'"'
        except UnicodeEncodeError:
            pass
    return json.dumps(path, ensure_ascii=False).encode("utf-8", "surrogateescape")


def line_prefix(key: bytes, size: int, mode: int, mtime_ns: int, owner: tuple[int, int] | None) -> bytes:
    """An index line up to its chunks: ``{"path":…,"size":…,"mode":…,"mtime_ns":…[,"uid":…,"gid":…],"chunks":``.

    The one way lines are written, so that a backup finds an unchanged file by comparing this prefix with the
    previous index's line, without parsing it.
    """
    owned = b"" if owner is None else b',"uid":%d,"gid":%d' % owner
    return b'{"path":%s,"size":%d,"mode":%d,"mtime_ns":%d%s,"chunks":' % (key, size, mode, mtime_ns, owned)


@dataclass
class MediaIndex:
    files: list[FileEntry] = field(default_factory=list)
    folders: dict[str, int] = field(default_factory=dict)  # every folder of a local media folder: its mode

    def packs(self) -> set[str]:
        return {chunk[1] for entry in self.files for chunk in entry.chunks}

    @property
    def bytes(self) -> int:
        return sum(entry.size for entry in self.files)


#: A chunk as an index line spells it: ``["<sha256>","<pack>",offset,length]``.
_CHUNK = re.compile(rb'\["([0-9a-f]{64})","([^"\\]+)",([0-9]+),([0-9]+)\]')
#: ... and its blob's SHA-256 alone.
_SHA = re.compile(rb'\["([0-9a-f]{64})","')
#: A pack name in an index line: a chunk's, after its blob's SHA-256 (a path such as "media-packs/x" is not one).
#: ``","media-packs/`` is only ever there: inside a JSON string every ``"`` is escaped, so the only ``","`` a path
#: can hold ends the path, and ``,"size"`` follows it.  Starting from that literal, one scan of a 27,000-line
#: index takes a fifth of the time that trying ``[0-9a-f]{64}`` at every byte took.
_PACK = re.compile(rb'","(' + re.escape(PACK_FOLDER.encode()) + rb'/[^"\\]+)"')


class Previous:
    """What a backup may reuse: the newest incremental set's index lines and its pack table (manifest ``packs``).

    The lines are kept as they are, by path: an unchanged file's line is copied into the new index as it is,
    never parsed; the blobs of the index are read out of the lines only when a changed file needs them.
    """

    def __init__(self, lines: list[bytes], packs: dict[str, dict]):
        self.packs = packs
        self.lines: dict[bytes, bytes] = {}
        for line in lines:
            end = line.find(b',"size":')  # never inside the path: a '"' there is always escaped
            if line.startswith(b'{"path":') and end > 8:
                self.lines[line[8:end]] = line

    @classmethod
    def from_index(cls, index: MediaIndex, packs: dict[str, dict]) -> Previous:
        return cls([entry.as_line() for entry in index.files], packs)

    def keep_only(self, present: set[str]) -> None:
        """Forget the lines of files that need a pack which is not in ``present`` (the storage's listing)."""
        self.packs = {name: info for name, info in self.packs.items() if name in present}
        self.lines = {
            key: line for key, line in self.lines.items() if all(p.decode() in present for p in _PACK.findall(line))
        }

    def follow(self, storage, listing: Listing, gpg: GpgSpec | None) -> None:
        """Point the lines that name a repacked pack at where its blobs are now (:func:`find_moves`).  A move
        record that cannot be read here (encrypted, without the secret key) leaves those lines as they are:
        :meth:`keep_only` then drops them and their files are read again."""
        gone = set(self.packs) - set(listing.packs)
        if not gone or not listing.moves:
            return
        try:
            moves = find_moves(storage, gone, GpgSpec.for_decryption() if gpg is not None else None, listing)
        except Exception:
            return
        names = {old.encode(): move for old, move in moves.items()}
        for key, line in list(self.lines.items()):
            if not any(p in names for p in _PACK.findall(line)):
                continue
            chunks = []
            for sha, pack, offset, length in _CHUNK.findall(line[line.rfind(b',"chunks":') :]):
                offset, length = int(offset), int(length)
                move = names.get(pack)
                if move is not None:
                    at = move.offsets.get(offset)
                    if at is None or at[1] != length:
                        break  # the move lost this blob: the file is read again
                    pack, offset = move.target.encode(), at[0]
                chunks.append([sha.decode(), pack.decode(), offset, length])
            else:
                start = line.rfind(b',"chunks":') + len(b',"chunks":')
                self.lines[key] = line[:start] + json.dumps(chunks, separators=(",", ":")).encode("ascii") + b"}"
        for move in moves.values():
            self.packs[move.target] = move.info

    def blobs(self) -> KnownBlobs:
        """Every blob the lines name: SHA-256 -> (pack, offset, length)."""
        return KnownBlobs(self.lines.values())


def _in_blocks(lines: Iterable[bytes], size: int = 4096) -> Iterator[bytes]:
    """The lines joined by newlines in blocks of ``size``: one regex scan each, no copy of the whole index."""
    it = iter(lines)
    while block := list(islice(it, size)):
        yield b"\n".join(block)


class KnownBlobs:
    """SHA-256 (hex) -> ``(pack, offset, length)`` of the blobs a backup may reuse, and those it stores.

    Read out of the previous index's lines as late as it can be: a backup of 1 % changed files looks up a few
    hundred blobs of 27,000 and, new contents, finds none of them.  The first look-up collects the SHA-256s
    the lines name (bytes, a set: a fifth of the memory and half the time of every chunk); only a blob found
    there makes the lines be read for every chunk's place.  The first line naming a blob gives it.
    """

    def __init__(self, lines: Iterable[bytes] = ()):
        self._lines = lines
        self._shas: set[bytes] | None = None
        self._found: dict[bytes, tuple[bytes, bytes, bytes, bytes]] | None = None
        self._added: dict[str, tuple[str, int, int]] = {}

    def get(self, sha: str) -> tuple[str, int, int] | None:
        ref = self._added.get(sha)
        if ref is not None:
            return ref
        key = sha.encode("ascii")
        if self._shas is None:
            self._shas = set()
            for block in _in_blocks(self._lines):
                self._shas.update(_SHA.findall(block))
        if key not in self._shas:
            return None
        if self._found is None:
            self._found = {}
            for block in _in_blocks(self._lines):
                for chunk in _CHUNK.findall(block):
                    self._found.setdefault(chunk[0], chunk)
        chunk = self._found.get(key)
        return None if chunk is None else (chunk[1].decode(), int(chunk[2]), int(chunk[3]))

    def __setitem__(self, sha: str, ref: tuple[str, int, int]) -> None:
        self._added[sha] = ref


@dataclass
class IncrementalStats:
    """What one incremental backup did (quoted in the manifest and the progress output)."""

    files: int = 0
    bytes: int = 0
    reused_files: int = 0  # taken from the previous index by size and mtime, not read
    read_bytes: int = 0  # media bytes read and hashed
    new_blobs: int = 0
    new_packs: int = 0
    new_bytes: int = 0  # stored bytes of the packs this run wrote
    skipped: list[dict] = field(default_factory=list)  # links, FIFOs, sockets, devices: {"name", "kind"}
    packs: dict[str, dict] = field(default_factory=dict)  # every pack the set needs: name -> size, sha256
    head: dict = field(default_factory=dict)  # the set's media index: its header line
    lines: list[bytes] = field(default_factory=list)  # ... and one line per file (as written, no newline)


def is_pack(name: str) -> bool:
    return name.startswith(PACK_FOLDER + "/") and ".pack" in name.rsplit("/", 1)[-1]


def index_name_for(media_name: Callable[[str], str], suffix: str) -> str:
    """The index's stored name from the media template (``media_name(extension)``) and the suffix."""
    return media_name(INDEX_BASE + suffix)


# --- writing -------------------------------------------------------------------------------------------


class PackWriter:
    """Collects new blobs into packs and stores each full pack while the next one fills (one in flight)."""

    def __init__(self, storage, compression: str, gpg: GpgSpec | None, stats: IncrementalStats):
        self.storage = storage
        self.compression = compression
        self.gpg = gpg
        self.suffix = SUFFIX[compression] + (".gpg" if gpg is not None else "")
        self.stats = stats
        self.written: list[str] = []  # packs stored (or being stored) by this run
        self._buffer = bytearray()
        self._extents: list[tuple[int, int]] = []
        self._name: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-packs")
        self._pending: Future | None = None
        #: The one read buffer of the files being read (a fresh 4 MiB buffer per file cost more than the read).
        self.chunk = memoryview(bytearray(CHUNK_SIZE))

    def add(self, data: memoryview) -> tuple[str, int]:
        """Put a new blob in the current pack; returns (pack name, offset)."""
        if self._name is None:
            self._name = f"{PACK_FOLDER}/{uuid.uuid4().hex}.pack{self.suffix}"
        offset = len(self._buffer)
        self._buffer += data
        self._extents.append((offset, len(data)))
        if len(self._buffer) >= PACK_TARGET:
            name = self._name
            self.flush()
            return name, offset
        return self._name, offset

    def flush(self) -> None:
        """Hand the current pack to the uploader (waiting for the one before)."""
        if self._name is None:
            return
        self._wait()
        name, data, extents = self._name, self._buffer, self._extents
        self._name, self._buffer, self._extents = None, bytearray(), []
        self.written.append(name)
        self._pending = self._pool.submit(self._store, name, data, extents)

    def _store(self, name: str, data: bytearray, extents: list[tuple[int, int]]) -> None:
        view = memoryview(data)

        def produce(out) -> None:
            stored = getattr(out, "write_stored", None)
            for offset, length in extents:
                blob = view[offset : offset + length]
                if stored is not None and length >= STORE_PROBE_MIN and incompressible(blob):
                    stored(blob)
                else:
                    out.write(blob)

        result: StoredFile = store_stream(self.storage, name, produce, compression=self.compression, gpg=self.gpg)
        self.stats.packs[name] = {"size": result.size, "sha256": result.sha256, "bytes": len(data)}
        self.stats.new_packs += 1
        self.stats.new_bytes += result.size

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def finish(self) -> None:
        """Store the last pack and wait for every upload."""
        self.flush()
        self._wait()
        self._pool.shutdown(wait=True)

    def discard(self) -> None:
        """Delete every pack this run stored (a failed backup: no set references them)."""
        with suppress(BaseException):
            self._wait()
        self._pool.shutdown(wait=True)
        for name in self.written:
            with suppress(Exception):
                if self.storage.exists(name):
                    self.storage.delete(name)


def _stat_media(storage, root: Path | None, name: str) -> tuple[int, int, int, tuple[int, int] | None] | None:
    """(size, mode, mtime_ns, owner) of a media file without opening it; None if it is not a regular file."""
    if root is not None:
        info = os.lstat(root / name)
        if not stat.S_ISREG(info.st_mode):
            return None
        return _from_stat(info)
    size = storage.size(name)
    mtime_ns = 0
    with suppress(NotImplementedError, OSError, AttributeError):
        mtime_ns = int(storage.get_modified_time(name).timestamp() * 1_000_000_000)
    return size, 0o644, mtime_ns, None


def _from_stat(info: os.stat_result) -> tuple[int, int, int, tuple[int, int]]:
    return info.st_size, stat.S_IMODE(info.st_mode), info.st_mtime_ns, (info.st_uid, info.st_gid)


def _read_chunks(fh, size: int, view: memoryview | None = None) -> Iterator[memoryview]:
    """The file's bytes in chunks of :data:`CHUNK_SIZE` (read into ``view``, reused by the caller across files);
    OSError if it is not ``size`` bytes long."""
    view = view if view is not None else memoryview(bytearray(CHUNK_SIZE))
    total = 0
    while True:
        filled = 0
        while filled < CHUNK_SIZE:
            n = fh.readinto(view[filled:])
            if not n:
                break
            filled += n
        if not filled:
            break
        total += filled
        yield view[:filled]
        if filled < CHUNK_SIZE:
            break
    if total != size:
        raise OSError(f"read {total} bytes of {size}")


def write_media(
    storage,
    media,
    index_name: str,
    *,
    previous: Previous | None,
    compression: str,
    gpg: GpgSpec | None,
    cancel: threading.Event | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_file: Callable[[int], None] | None = None,
    index_copy=None,
) -> tuple[StoredFile, IncrementalStats]:
    """Store the new blobs of ``media`` in packs and the set's media index as ``index_name``.

    For progress, ``on_bytes`` is told the bytes of each file as they are read (all of an unchanged file's at
    once), ``on_file`` each file's size once it is done; ``index_copy`` is written the index's stored bytes
    (:meth:`StoredIndexes.start`).

    ``previous`` is reused: a file with the size and mtime it had there is not read (with its mode and owner
    too, its line is copied as it is); a blob it already has is not stored again.  Only packs that are still
    in the storage are reused (one listing).  Returns the stored index and what was done; on any failure the
    packs this call wrote are deleted and BackupError raised (a killed run's packs are left to the next
    prune, which deletes packs no manifest names).
    """
    stats = IncrementalStats()
    writer = PackWriter(storage, compression, gpg, stats)
    root = _plain_local_root(media)
    old_lines: dict[bytes, bytes] = {}
    reusable_packs: dict[str, dict] = {}
    if previous is not None:
        listing = list_store(storage, repacked=False)  # one listing while no pack the previous set names moved
        if not set(previous.packs) <= set(listing.packs):
            listing.add_repacked(storage)
        present = set(listing.packs)
        if not set(previous.packs) <= present:
            previous.follow(storage, listing, gpg)  # a repacked pack: its lines point at where its blobs are now
            previous.keep_only(present)  # a pack is gone: the files that need it are read again
        reusable_packs, old_lines = previous.packs, previous.lines
    known: KnownBlobs | None = None  # the previous blobs, read out when first needed
    lines = stats.lines
    folders: dict[str, int] = {}
    # A local folder: walk_local (no link followed, nothing but files opened; folders with their modes).
    walker = walk_local(root, stats.skipped) if root is not None else ((n, None) for n in iter_media(media))
    try:
        for name, seen in walker:
            if cancel is not None and cancel.is_set():
                raise BackupError("media backup cancelled: another part of the backup failed")
            if seen is not None and stat.S_ISDIR(seen.st_mode):
                folders[name] = stat.S_IMODE(seen.st_mode)
                continue
            try:
                found = _from_stat(seen) if seen is not None else _stat_media(media, root, name)
            except FileNotFoundError:
                continue  # deleted while we were walking
            except OSError as err:
                raise BackupError(f"media file {name!r} could not be read ({err}); check its permissions") from None
            if found is None:
                continue
            size, mode, mtime_ns, owner = found
            key = _path_key(name)
            old = old_lines.get(key)
            if old is not None:
                prefix = line_prefix(key, size, mode, mtime_ns, owner)
                if old.startswith(prefix):
                    line = old  # unchanged, mode and owner too: the line as it was
                else:
                    line = _same_contents(old, prefix, size, mtime_ns)
                if line is not None:
                    lines.append(line)
                    stats.reused_files += 1
                    stats.files += 1
                    stats.bytes += size
                    if on_bytes is not None:
                        on_bytes(size)
                    if on_file is not None:
                        on_file(size)
                    continue
            if known is None:
                known = previous.blobs() if previous is not None else KnownBlobs()
            entry = _read_file(media, root, name, known, writer, stats, on_bytes)
            if entry is None:
                continue
            lines.append(entry.as_line())
            stats.files += 1
            stats.bytes += entry.size
            if on_file is not None:
                on_file(entry.size)
        writer.finish()
        # Every pack a line names (a changed file's blob can be one that only a deleted file's line had).
        for pack in {p.decode() for block in _in_blocks(lines) for p in _PACK.findall(block)}:
            if pack not in stats.packs:
                stats.packs[pack] = reusable_packs[pack]
        stats.head = {"format": INDEX_FORMAT, "files": len(lines), "folders": folders}
        head = (json.dumps(stats.head, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape")

        def produce(out: BinaryIO) -> None:
            out.write(head)
            for start in range(0, len(lines), 4096):
                out.write(b"".join(line + b"\n" for line in lines[start : start + 4096]))

        stored = store_stream(storage, index_name, produce, compression=compression, gpg=gpg, copy=index_copy)
    except BaseException:
        writer.discard()
        raise
    return stored, stats


def _same_contents(old: bytes, prefix: bytes, size: int, mtime_ns: int) -> bytes | None:
    """The new line of a file whose mode or owner changed but not its size and mtime (its chunks reused)."""
    try:
        raw = json.loads(old)
        if int(raw["size"]) != size or int(raw["mtime_ns"]) != mtime_ns:
            return None
        return prefix + json.dumps(raw["chunks"], separators=(",", ":")).encode("ascii") + b"}"
    except (ValueError, KeyError, TypeError):
        return None


def _read_file(
    media, root, name, known, writer: PackWriter, stats: IncrementalStats, on_bytes: Callable[[int], None] | None = None
) -> FileEntry | None:
    """Read and hash one media file; its new blobs go to ``writer``.  None if it vanished meanwhile."""
    try:
        if root is not None:
            fh = _open_regular(root / name)
            if fh is None:
                return None  # replaced by a link or something else than a file while we were walking
            size, mode, mtime_ns, owner = _from_stat(os.fstat(fh.fileno()))
        else:
            size, mode, mtime_ns, owner = _stat_media(media, None, name)
            fh = media.open(name, "rb")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise BackupError(f"media file {name!r} could not be read ({err}); check its permissions") from None
    chunks = []
    try:
        with fh:
            reader = fh if hasattr(fh, "readinto") else fh.file
            for data in _read_chunks(reader, size, writer.chunk):
                sha = hashlib.sha256(data).hexdigest()
                ref = known.get(sha)
                if ref is None:
                    pack, offset = writer.add(data)
                    ref = known[sha] = (pack, offset, len(data))
                    stats.new_blobs += 1
                chunks.append((sha, *ref))
                stats.read_bytes += len(data)
                if on_bytes is not None:
                    on_bytes(len(data))
    except OSError as err:
        raise BackupError(
            f"media file {name!r} could not be read ({err}); it changed during the backup, run the backup again"
        ) from None
    return FileEntry(name, size, mode, mtime_ns, chunks, owner)


# --- reading an index ----------------------------------------------------------------------------------


def parse_index(stream: BinaryIO, packs: dict[str, dict] | None = None) -> MediaIndex:
    """Read a media index and validate every entry (safe unique paths, chunks that add up, known packs).

    ``packs`` is the set's pack table (the manifest's); a chunk in a pack it does not name is refused.
    RestoreError names the first problem; nothing is written.
    """
    index = MediaIndex()
    seen: set[str] = set()
    header = stream.readline()
    try:
        head = json.loads(header)
    except ValueError:
        head = None
    if not isinstance(head, dict) or head.get("format") != INDEX_FORMAT:
        raise RestoreError("the media index is not a backup_app media index; media left unchanged")
    for folder, mode in (head.get("folders") or {}).items():
        safe = _safe_name(str(folder))
        if not safe or safe != folder or not isinstance(mode, int):
            raise RestoreError(f"media index folder {folder!r} is not a plain relative path; refusing the index")
        index.folders[safe] = mode & 0o7777
    for number, line in enumerate(stream, start=2):
        try:
            raw = json.loads(line.decode("utf-8", "surrogateescape"))
            entry = FileEntry(
                str(raw["path"]),
                int(raw["size"]),
                int(raw["mode"]),
                int(raw["mtime_ns"]),
                [(str(s), str(p), int(o), int(n)) for s, p, o, n in raw["chunks"]],
                (int(raw["uid"]), int(raw["gid"])) if "uid" in raw else None,
            )
        except (ValueError, KeyError, TypeError) as err:
            raise RestoreError(f"media index line {number} is malformed ({err}); media left unchanged") from None
        member = tarfile.TarInfo(entry.path)
        member.size = entry.size
        name = check_member(member)
        if name != entry.path:
            raise RestoreError(f"media index entry {entry.path!r} is not a plain relative path; refusing the index")
        if name in seen:
            raise RestoreError(f"media index holds {name!r} twice; refusing the index")
        if len(seen) >= MAX_FILES:
            raise RestoreError("media index holds more files than any media folder should")
        seen.add(name)
        if sum(c[3] for c in entry.chunks) != entry.size or any(c[2] < 0 or c[3] <= 0 for c in entry.chunks):
            raise RestoreError(f"media index entry {name!r}: its chunks do not add up to its size; refusing the index")
        if packs is not None:
            for chunk in entry.chunks:
                if chunk[1] not in packs:
                    raise RestoreError(
                        f"media index entry {name!r} needs pack {chunk[1]}, which its manifest does not name"
                    )
        entry.mode &= 0o7777
        index.files.append(entry)
    if head.get("files") != len(index.files):
        raise RestoreError(f"media index holds {len(index.files)} files but its header says {head.get('files')}")
    return index


# --- the local copy of the last index -------------------------------------------------------------------
#
# The next backup needs the previous set's index.  Read from the storage, an encrypted index needs the
# secret key, which a backup host often does not have (it encrypts to a public key); and a remote one is a
# download.  So the backup keeps a plain copy of the index it wrote, on the host, next to the safety copies
# (media is on this host in plain anyway), and uses it when it names the same set and SHA-256 as the
# storage's newest incremental set.


def _cache_path(folder: Path, where: str) -> Path:
    return folder / f"{hashlib.sha256(where.encode()).hexdigest()[:16]}.mediaindex.gz"


def _joined(lines: list[bytes]) -> list[bytes]:
    """The lines with their newlines, joined in blocks of 4,096 (few writes, no second copy of the whole)."""
    return [b"".join(line + b"\n" for line in lines[i : i + 4096]) for i in range(0, len(lines), 4096)]


def remember_index(folder: Path, where: str, set_name: str, index_sha256: str, stats: IncrementalStats) -> None:
    """Keep a plain copy of the index just stored (for the storage described by ``where``); never fails.

    Its header names the set, the stored index's SHA-256 and the SHA-256 of the lines that follow, which
    :func:`recall_index` checks before it trusts them.
    """
    from isal import igzip

    with suppress(OSError):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = _cache_path(folder, where)
        partial = path.with_name(f".{path.name}.{os.getpid()}-{owner_tag()}")
        try:
            blocks = _joined(stats.lines)
            digest = hashlib.sha256()
            for block in blocks:
                digest.update(block)
            head = {**stats.head, "set": set_name, "sha256": index_sha256, "lines_sha256": digest.hexdigest()}
            with igzip.open(partial, "wb", compresslevel=1) as out:
                out.write((json.dumps(head, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape"))
                for block in blocks:
                    out.write(block)
            os.chmod(partial, 0o600)
            os.replace(partial, path)
        finally:
            with suppress(OSError):
                os.unlink(partial)


def recall_index(folder: Path, where: str, set_name: str, index_sha256: str, packs: dict) -> Previous | None:
    """The kept copy of set ``set_name``'s index if it is that set's (same SHA-256) and whole, else None."""
    from isal import igzip

    path = _cache_path(folder, where)
    try:
        with igzip.open(path, "rb") as fh:
            head = json.loads(fh.readline())
            if head.get("set") != set_name or head.get("sha256") != index_sha256 or "lines_sha256" not in head:
                return None
            body = fh.read()
    except (OSError, ValueError, EOFError):
        return None
    if hashlib.sha256(body).hexdigest() != head["lines_sha256"]:
        return None
    lines = body.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    if len(lines) != head.get("files"):
        return None
    return Previous(lines, packs)


# --- local copies of the stored indexes (remote storages) --------------------------------------------------
#
# Every prune reads the index of every set it keeps (which blobs are still needed): on a remote storage, a
# download each, every night, of files that never change.  An index is written once, and its manifest holds
# its stored size and SHA-256; so a copy of its stored bytes, named after that SHA-256 and hashed again before
# every use, is as good as the storage's own.  The copy is of the bytes as they are stored: an encrypted index
# stays encrypted (reading it still needs the secret key), nothing decrypted is written.  The backup keeps the
# index it uploads (a copy written as it streams out), a prune downloads one it has no good copy of once, and
# every prune deletes the copies of indexes no set in the storage has any more.


class _Copy:
    """A local file being written beside an upload: it never raises (a full disk loses the copy, not the run)."""

    def __init__(self, path: Path, fh: BinaryIO):
        self.path, self.fh, self.broken = path, fh, False

    def write(self, data) -> None:
        if not self.broken:
            try:
                self.fh.write(data)
            except OSError:
                self.broken = True

    def close(self) -> None:
        with suppress(OSError):
            self.fh.close()


class _LocalFile:
    """The storage methods reading a stored file needs, over its checked local copy (messages keep its name)."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path

    def open(self, name: str, mode: str = "rb") -> BinaryIO:
        if name != self.name:
            raise FileNotFoundError(name)
        return open(self.path, "rb")  # noqa: SIM115 - the caller closes it

    def size(self, name: str) -> int:
        return self.path.stat().st_size


class StoredIndexes:
    """Local copies of a remote storage's media indexes, by their stored SHA-256 (see the note above).

    ``root`` is a private folder of the host (``backup_safety_dir/.media-index``); each storage (``where``)
    has a folder of its own in it, 0700, each copy 0600.  ``fill=False`` reads the copies there and adds none
    (a dry run).  Nothing here ever fails the caller: without a usable copy the storage is read.
    """

    def __init__(self, root: Path, where: str, *, fill: bool = True):
        self.root = root
        self.folder = root / f"{hashlib.sha256(where.encode()).hexdigest()[:16]}.stored"
        self.fill = fill

    def checked(self, sha256: str, size: int | None) -> Path | None:
        """The copy of the index of that SHA-256 (and stored size), hashed now; a damaged copy is deleted."""
        path = self.folder / sha256
        try:
            with open(path, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
                length = os.fstat(fh.fileno()).st_size
        except OSError:
            return None
        if digest == sha256 and (size is None or length == size):
            return path
        with suppress(OSError):
            path.unlink()
        return None

    def start(self) -> _Copy | None:
        """A new private file in the storage's folder, for a copy (None where it cannot be made)."""
        if not self.fill:
            return None
        try:
            for folder in (self.root, self.folder):
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(folder, 0o700)
            fd, name = tempfile.mkstemp(dir=self.folder, prefix=f".{os.getpid()}-{owner_tag()}-")  # 0600
        except OSError:
            return None
        return _Copy(Path(name), os.fdopen(fd, "wb"))

    def keep(self, copy: _Copy | None, sha256: str, size: int) -> Path | None:
        """Name the finished ``copy`` after ``sha256`` if it has exactly those bytes; else delete it."""
        if copy is None:
            return None
        copy.close()
        if not copy.broken:
            with suppress(OSError):
                os.replace(copy.path, self.folder / sha256)
                path = self.checked(sha256, size)
                if path is not None:
                    return path
        self.drop(copy)
        return None

    def drop(self, copy: _Copy | None) -> None:
        if copy is not None:
            copy.close()
            with suppress(OSError):
                copy.path.unlink()

    def fetch(self, storage, name: str, sha256: str, size: int | None) -> Path | None:
        """Download the stored bytes of ``name`` once into a copy (checked as :meth:`checked` does)."""
        copy = self.start()
        if copy is None:
            return None
        try:
            with storage.open(name, "rb") as src:
                shutil.copyfileobj(src, copy, 1024 * 1024)
        except Exception:
            self.drop(copy)
            return None
        return self.keep(copy, sha256, size)

    def source(self, storage, f):
        """Where to read the stored index ``f`` (a :class:`~backup_app.sets.BackupFile`) from: its checked local
        copy, made now if there is none (one download); else the storage itself."""
        if not f.sha256:
            return storage
        path = self.checked(f.sha256, f.size) or self.fetch(storage, f.name, f.sha256, f.size)
        return _LocalFile(f.name, path) if path is not None else storage

    def keep_only(self, sha256s: set[str]) -> None:
        """Delete every copy but those of ``sha256s`` (the indexes of the sets in the storage), and the partial
        copies of processes that are gone."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            if name in sha256s:
                continue
            if name.startswith(".") and not scratch_gone(name[1:], "-"):
                continue  # a copy its writer is still making
            with suppress(OSError):
                os.unlink(self.folder / name)


def _list_folder(storage, folder: str) -> dict[str, int | None]:
    try:
        if isinstance(storage, RemoteStorage):
            found = storage.list_sizes(folder)
        else:
            found = dict.fromkeys(storage.listdir(folder)[1])
    except FileNotFoundError:
        return {}
    return {f"{folder}/{name}": size for name, size in found.items()}


def list_packs(storage, needed: set[str] | None = None) -> dict[str, int | None]:
    """Every pack in the backup storage with its size where the listing gives it (one listing of each folder;
    only of :data:`PACK_FOLDER` when that holds every pack of ``needed``)."""
    listing = list_store(storage, repacked=needed is None)
    if needed is not None and not needed <= set(listing.packs):
        listing.add_repacked(storage)
    return listing.packs


def list_store(storage, *, repacked: bool = True) -> Listing:
    """The packs and move records in the backup storage: one listing of :data:`PACK_FOLDER` and, unless
    ``repacked`` is False, one of :data:`REPACK_FOLDER` (:meth:`Listing.add_repacked`)."""
    listing = Listing()
    listing.packs.update(_list_folder(storage, PACK_FOLDER))
    if repacked:
        listing.add_repacked(storage)
    return listing


# --- repacked packs: where their blobs are now ----------------------------------------------------------
#
# A set's index names each blob by (pack, offset) and is checksummed in the set's manifest, which is never
# rewritten.  Repacking a pack P (when few of its blobs are still needed) writes the blobs still needed into
# a new pack Q, then a *move record* saying where each of them is in Q, and only then deletes P.  A reader
# whose index names a pack that is no longer in the storage follows its move record (or a chain of them,
# if Q was repacked in turn) and checks every blob against the SHA-256 its index gives, as always.
#
# Both live in REPACK_FOLDER, a folder of their own: a prune of a version before repacking, which deletes
# every file of PACK_FOLDER that no manifest names, never sees them.  A record's name says which pack it
# moves and into which (so pruning needs no read to know which packs are still needed); its content is
# compressed and encrypted like the packs (offsets and lengths say where files begin and end).

#: Where repacking writes its packs and move records.
REPACK_FOLDER = f"{PACK_FOLDER}/repacked"
MOVES_FORMAT = "backup_app/media-moves/1"
#: A move record's name: ``<old pack's id>-to-<new pack's id>.moves[.gz|.zst][.gpg]``.
_MOVE_NAME = re.compile(r"([0-9a-f]{32})-to-([0-9a-f]{32})\.moves(\.[a-z.]+)?$")
#: A repack under way: ``<new pack's id>.repacking``, plain JSON (the old packs, the new one, and who repacks:
#: host, pid, boot id, start), written before the new pack and deleted once the old packs are.  Another
#: prune (another site's, under a lock of its own) leaves the new pack, its records and its old packs alone
#: while that writer may still run: before its move records the new pack is named by nothing.
_MARKER_NAME = re.compile(r"([0-9a-f]{32})\.repacking$")
REPACKING_FORMAT = "backup_app/media-repacking/1"


def marker_name(new: str) -> str:
    return f"{REPACK_FOLDER}/{pack_id(new)}.repacking"


def move_source_id(record: str) -> str:
    """The id of the pack a move record moves (from its name)."""
    return _MOVE_NAME.match(record.rsplit("/", 1)[-1]).group(1)


def pack_id(pack: str) -> str:
    """The random id of a pack's name (``media-packs/<id>.pack.gz`` -> ``<id>``)."""
    return pack.rsplit("/", 1)[-1].split(".", 1)[0]


def move_target_id(record: str) -> str:
    """The id of the pack a move record moves into (from its name)."""
    return _MOVE_NAME.match(record.rsplit("/", 1)[-1]).group(2)


@dataclass
class Listing:
    """What :func:`list_store` found: every pack (both folders) and every move record, by the id it moves."""

    packs: dict[str, int | None] = field(default_factory=dict)
    moves: dict[str, str] = field(default_factory=dict)  # id of a moved pack -> its move record
    records: dict[str, int | None] = field(default_factory=dict)  # every move record -> its size
    markers: dict[str, str] = field(default_factory=dict)  # id of a new pack -> its repack's marker
    repacked: bool = False  # REPACK_FOLDER listed too
    live: dict[str, dict] | None = None  # what repacking() found (its markers read once per listing)

    def add_repacked(self, storage) -> None:
        """List :data:`REPACK_FOLDER` too: the packs repacking wrote, the move records, the repacks' markers.

        Two records of one pack (two sites' prunes that repacked it at once): ``moves`` gives one whose new pack
        is there."""
        if self.repacked:
            return
        self.repacked = True
        for name, size in sorted(_list_folder(storage, REPACK_FOLDER).items()):
            leaf = name.rsplit("/", 1)[-1]
            moved, marker = _MOVE_NAME.match(leaf), _MARKER_NAME.match(leaf)
            if marker is not None:
                self.markers[marker.group(1)] = name
            elif moved is None:
                self.packs[name] = size
            else:
                self.records[name] = size
        self._index_moves()

    def _index_moves(self) -> None:
        self.moves = {}
        there = {pack_id(name) for name in self.packs}
        for name in self.records:
            old, new = move_source_id(name), move_target_id(name)
            if old not in self.moves or (new in there and move_target_id(self.moves[old]) not in there):
                self.moves[old] = name

    def repacking(self, storage) -> dict[str, dict]:
        """The repacks under way whose writer may still run (a process of this host that is gone is not; one of
        another host, or a marker that does not read, may be): new pack's id -> its marker's data.  The
        markers are read once per listing (a later look is a new listing)."""
        if self.live is not None:
            return dict(self.live)
        live = {}
        for ident, name in self.markers.items():
            try:
                data = json.loads(read_bytes(storage, name))
            except Exception:
                data = None
            data = data if isinstance(data, dict) else {}
            if owner_gone(data) is not True:
                live[ident] = data
        self.live = live
        return dict(live)

    def forget(self, names: Iterable[str]) -> None:
        """Take ``names`` (packs, records, markers this run deleted) out of the listing."""
        names = list(names)
        for name in names:
            self.packs.pop(name, None)
            self.records.pop(name, None)
        gone = set(names)
        if self.repacked:
            self._index_moves()
        self.markers = {ident: marker for ident, marker in self.markers.items() if marker not in gone}
        if self.live is not None:
            self.live = {ident: data for ident, data in self.live.items() if ident in self.markers}


@dataclass
class Move:
    """Where the blobs of a moved pack are now: the pack, its stored size and SHA-256, and each blob's offset."""

    target: str
    info: dict
    offsets: dict[int, tuple[int, int]]  # offset in the old pack -> (offset in ``target``, length)


def move_record_name(old: str, new: str) -> str:
    _base, compression, encrypted = split_extension(new.rsplit("/", 1)[-1])
    suffix = SUFFIX[compression or "none"] + (".gpg" if encrypted else "")
    return f"{REPACK_FOLDER}/{pack_id(old)}-to-{pack_id(new)}.moves{suffix}"


def write_move(storage, old: str, new: str, info: dict, blobs: list[tuple[int, int, int]], gpg) -> str:
    """Store the move record of ``old`` into ``new`` (``blobs``: old offset, new offset, length); returns its name."""
    name = move_record_name(old, new)
    _base, compression, _encrypted = split_extension(name.rsplit("/", 1)[-1])
    body = {"format": MOVES_FORMAT, "from": old, "to": new, **info, "blobs": [list(b) for b in blobs]}
    data = json.dumps(body, separators=(",", ":")).encode()
    store_stream(storage, name, lambda out: out.write(data), compression=compression or "none", gpg=gpg)
    return name


def read_move(storage, record: str, gpg: GpgSpec | None) -> dict:
    """A move record, checked (format, names, offsets); RestoreError names it and what is wrong."""
    _base, compression, encrypted = split_extension(record.rsplit("/", 1)[-1])
    with open_stream(storage, record, compression=compression, encrypted=encrypted, gpg=gpg or GpgSpec()) as s:
        data = b"".join(iter(lambda: s.read(1024 * 1024), b""))
    try:
        body = json.loads(data)
        blobs = [(int(o), int(n), int(n_len)) for o, n, n_len in body["blobs"]]
        ok = (
            body.get("format") == MOVES_FORMAT
            and pack_id(str(body["from"])) == _MOVE_NAME.match(record.rsplit("/", 1)[-1]).group(1)
            and pack_id(str(body["to"])) == move_target_id(record)
            and isinstance(body.get("size"), int)
            and isinstance(body.get("sha256"), str)
            and all(o >= 0 and n >= 0 and 0 < n_len <= CHUNK_SIZE for o, n, n_len in blobs)
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise RestoreError(f"media move record {record} is not a valid move record; the media data is damaged")
    body["blobs"] = blobs
    return body


def find_moves(
    storage,
    needed: set[str],
    gpg: GpgSpec | None,
    listing: Listing | None = None,
    read: dict[str, dict] | None = None,
) -> dict[str, Move]:
    """For each pack of ``needed`` that is no longer in the storage but was repacked: where its blobs are now
    (a chain of moves followed).  A pack that is gone without a record is left out (the caller says it is
    missing).  With no move record in the storage this is one listing and nothing read.

    ``read`` (record name -> its checked body) keeps the records read across calls: a prune that follows the
    moves of every set's index reads each record once, not once per set."""
    listing = listing if listing is not None else list_store(storage)
    read = {} if read is None else read
    found: dict[str, Move] = {}
    if not listing.moves:
        return found
    for pack in sorted(needed):
        if pack in listing.packs:
            continue
        current, offsets, info, seen = pack, None, {}, set()
        while current not in listing.packs and current not in seen:
            record = listing.moves.get(pack_id(current))
            if record is None:
                break
            seen.add(current)
            body = read.get(record)
            if body is None:
                body = read[record] = read_move(storage, record, gpg)
            step = {old: (new, length) for old, new, length in body["blobs"]}
            if offsets is None:
                offsets = step
            else:
                offsets = {o: step[n] for o, (n, length) in offsets.items() if n in step and step[n][1] == length}
            info = {k: body[k] for k in ("size", "sha256", "bytes") if k in body}
            current = str(body["to"])
        if current in listing.packs and offsets is not None:
            found[pack] = Move(current, info, offsets)
    return found


def relocated(index: MediaIndex, packs: dict[str, dict], moves: dict[str, Move]) -> tuple[MediaIndex, dict]:
    """``index`` with every chunk of a moved pack pointed at where its blob is now, and the pack table with the
    new packs added (``index`` itself is not changed).  RestoreError if a move lost a blob the index needs."""
    if not moves:
        return index, packs
    files = []
    for entry in index.files:
        if any(chunk[1] in moves for chunk in entry.chunks):
            chunks = []
            for sha, pack, offset, length in entry.chunks:
                move = moves.get(pack)
                if move is not None:
                    at = move.offsets.get(offset)
                    if at is None or at[1] != length:
                        raise RestoreError(
                            f"media pack {pack} was repacked into {move.target} without blob {sha[:12]}; "
                            "the media data is damaged"
                        )
                    pack, offset = move.target, at[0]
                chunks.append((sha, pack, offset, length))
            entry = FileEntry(entry.path, entry.size, entry.mode, entry.mtime_ns, chunks, entry.owner)
        files.append(entry)
    table = dict(packs)
    for move in moves.values():
        table[move.target] = move.info
    return MediaIndex(files=files, folders=index.folders), table


def follow_moves(storage, index: MediaIndex, packs: dict[str, dict], gpg) -> tuple[MediaIndex, dict]:
    """:func:`relocated` with the moves of the packs ``index`` needs: one listing of :data:`PACK_FOLDER`, and
    only if a pack is not there one of :data:`REPACK_FOLDER` and a read of the move records of those gone."""
    needed = index.packs()
    listing = list_store(storage, repacked=False)
    if needed <= set(listing.packs):
        return index, packs
    listing.add_repacked(storage)
    return relocated(index, packs, find_moves(storage, needed, gpg, listing))


# --- reading packs -------------------------------------------------------------------------------------


def _read_exact(stream: BinaryIO, size: int, view: memoryview) -> memoryview:
    filled = 0
    while filled < size:
        n = stream.readinto(view[filled:size]) if hasattr(stream, "readinto") else None
        if n is None:
            data = stream.read(size - filled)
            n = len(data)
            view[filled : filled + n] = data
        if not n:
            raise RestoreError("a media pack ends early; the media data is damaged")
        filled += n
    return view[:size]


def read_pack(
    storage,
    pack: str,
    info: dict,
    extents: list[tuple[int, int, str]],
    gpg: GpgSpec | None,
    consume: Callable[[int, memoryview], None],
) -> None:
    """Read ``pack`` once, check every blob in ``extents`` (offset, length, sha256) and give it to ``consume``.

    The pack's stored size and SHA-256 are checked against ``info`` (the manifest's) after the last byte.
    RestoreError with one line names the pack and what is wrong.
    """
    _base, compression, encrypted = split_extension(pack)
    result = ReadResult()
    buffer = memoryview(bytearray(CHUNK_SIZE))
    position = 0
    try:
        with open_stream(
            storage, pack, compression=compression, encrypted=encrypted, gpg=gpg or GpgSpec(), result=result
        ) as stream:
            for offset, length, sha in sorted(set(extents)):
                if offset < position or length > CHUNK_SIZE:
                    raise RestoreError(f"media pack {pack}: overlapping or oversized blobs in the index")
                while position < offset:
                    position += len(_read_exact(stream, min(offset - position, CHUNK_SIZE), buffer))
                blob = _read_exact(stream, length, buffer)
                position += length
                if hashlib.sha256(blob).hexdigest() != sha:
                    raise RestoreError(
                        f"media pack {pack}: blob {sha[:12]} does not match its SHA-256; the media data is damaged"
                    )
                consume(offset, blob)
    except RestoreError as err:
        if str(err).startswith(f"media pack {pack}"):
            raise
        raise RestoreError(f"media pack {pack}: {err}") from None
    if result.size != info.get("size") or result.sha256 != info.get("sha256"):
        raise RestoreError(
            f"media pack {pack} is {result.size} bytes with another SHA-256 than its manifest says; "
            "the media data is damaged"
        )


#: How many times one read follows a pack that a prune repacked while it ran (a repack of the new pack too).
FOLLOW_TRIES = 3


def read_pack_followed(
    storage,
    pack: str,
    info: dict,
    extents: list[tuple[int, int, str]],
    gpg: GpgSpec | None,
    consume: Callable[[int, memoryview], None],
) -> None:
    """:func:`read_pack`, and if ``pack`` is repacked while it is read, the rest of its blobs from where they are now.

    A verify, export or restore lists the packs it needs once (:func:`follow_moves`) and then reads them one by
    one, under no lock a prune of another site (or, for a verify or an export, of this one) must wait for.  A
    repacking prune deletes the old pack only once the new pack and the move record are written and read back:
    so when reading ``pack`` fails and a fresh listing no longer has it, its move record is there, and the
    blobs not given to ``consume`` yet are read from the pack it moved into (each still checked against its
    SHA-256, that pack against the record's size and SHA-256).  ``consume`` is always given offsets in
    ``pack``.  Any other failure (the pack still there, no record, an error of ``consume``) is raised as it is.
    """
    done: set[int] = set()  # offsets in ``pack`` of the blobs consumed
    where = {offset: offset for offset, _length, _sha in extents}  # offset in the pack being read -> in ``pack``
    failed: list[BaseException] = []

    def take(offset: int, blob: memoryview) -> None:
        try:
            consume(where[offset], blob)
        except BaseException as err:
            failed.append(err)
            raise
        done.add(where[offset])

    current, current_info, todo = pack, info, list(extents)
    for attempt in range(FOLLOW_TRIES + 1):
        try:
            read_pack(storage, current, current_info, todo, gpg, take)
            return
        except Exception:
            if failed or attempt == FOLLOW_TRIES:
                raise
            try:
                listing = list_store(storage)
                move = None if current in listing.packs else find_moves(storage, {current}, gpg, listing).get(current)
            except Exception:
                move = None
            if move is None:
                raise
        moved, rest = {}, []
        for offset, length, sha in todo:
            if where[offset] in done:
                continue
            at = move.offsets.get(offset)
            if at is None or at[1] != length:
                raise RestoreError(
                    f"media pack {current} was repacked into {move.target} without blob {sha[:12]}; "
                    "the media data is damaged"
                )
            moved[at[0]] = where[offset]
            rest.append((at[0], length, sha))
        current, current_info, todo, where = move.target, move.info, rest, moved


def _pack_plan(index: MediaIndex, wanted: set[str] | None = None) -> dict[str, list[tuple[int, int, str]]]:
    """pack -> its blobs that ``index`` (the files in ``wanted``, or all) needs, in the order packs are first used."""
    plan: dict[str, set[tuple[int, int, str]]] = {}
    for entry in index.files:
        if wanted is not None and entry.path not in wanted:
            continue
        for sha, pack, offset, length in entry.chunks:
            plan.setdefault(pack, set()).add((offset, length, sha))
    return {pack: sorted(blobs) for pack, blobs in plan.items()}


def check_packs(storage, packs: dict[str, dict], index: MediaIndex, gpg: GpgSpec | None, *, read_data: bool) -> str:
    """Verify the packs a set needs: present with their sizes, or with ``read_data`` every blob read and hashed.

    Returns a line of what was checked; RestoreError names the first pack that is missing or damaged.  A pack
    that a prune repacks meanwhile is followed (:func:`read_pack_followed`; without ``read_data``, the packs
    are located again when one is gone, up to :data:`FOLLOW_TRIES` times).
    """
    unknown = index.packs() - set(packs)
    if unknown:
        raise RestoreError(f"the media index needs pack {sorted(unknown)[0]}, which its manifest does not name")
    located, table = follow_moves(storage, index, packs, gpg)
    pause_at("media:packs-located")
    if not read_data:
        for attempt in range(FOLLOW_TRIES + 1):
            try:
                return _check_present(storage, located.packs(), table)
            except RestoreError:
                if attempt == FOLLOW_TRIES:
                    raise
                again, again_table = follow_moves(storage, index, packs, gpg)
                if again.packs() == located.packs():
                    raise  # nothing moved since: the pack is missing
                located, table = again, again_table
    blobs = 0
    plan = _pack_plan(located)
    for pack, extents in plan.items():
        read_pack_followed(storage, pack, table[pack], extents, gpg, lambda _o, _b: None)
        blobs += len(extents)
    return f"{len(plan)} packs read, {blobs} blobs match their SHA-256"


def _check_present(storage, needed: set[str], packs: dict[str, dict]) -> str:
    listed = list_packs(storage, needed)
    for pack in sorted(needed):
        if pack not in listed:
            raise RestoreError(f"media pack {pack} is missing from the backup storage")
        try:
            size = listed[pack] if listed[pack] is not None else storage.size(pack)
        except FileNotFoundError:
            raise RestoreError(f"media pack {pack} is missing from the backup storage") from None
        except Exception as err:
            raise RestoreError(f"media pack {pack} cannot be read: {redact(err)}") from None
        if size != packs[pack].get("size"):
            raise RestoreError(f"media pack {pack} is {size} bytes but the manifest says {packs[pack].get('size')}")
    return f"{len(needed)} packs present with their sizes"


# --- repacking -----------------------------------------------------------------------------------------


@dataclass
class RepackStats:
    """What :func:`repack` did."""

    repacked: list[str] = field(default_factory=list)  # old packs whose blobs moved (deleted)
    new: list[str] = field(default_factory=list)  # the packs written
    moved_bytes: int = 0  # blob bytes copied
    freed: int = 0  # stored bytes of the old packs
    stored: int = 0  # stored bytes of the new packs


def pack_kind(pack: str) -> str:
    """A pack's compression and encryption, as the suffix of its name (``.gz.gpg``): packs of one kind only are
    repacked together."""
    _base, compression, encrypted = split_extension(pack.rsplit("/", 1)[-1])
    return SUFFIX[compression or "none"] + (".gpg" if encrypted else "")


def repack(
    storage,
    todo: dict[str, list[tuple[int, int, str]]],
    table: dict[str, dict],
    *,
    read_gpg: GpgSpec | None,
    write_gpg: GpgSpec | None,
) -> RepackStats:
    """Move the blobs ``todo`` names (pack -> its blobs still needed: offset, length, SHA-256) into new packs.

    ``table`` gives each old pack's stored size and SHA-256.  Packs of one kind (compression, encryption) go
    into new packs of that kind up to :data:`PACK_TARGET` (the last one of a kind up to :data:`SMALL_PACK` more,
    rather than a small pack of what is left); the blobs of one old pack never part.  For each
    new pack, in this order: its old packs are read (every blob and their whole SHA-256 checked); the new
    pack is written, then read back and every blob checked; then a move record per old pack is written and
    read back; only then are the old packs deleted.  Every set finds every blob at every instant: before the
    move records its old packs are untouched; after them its old packs may go.  Stopped or failed before the
    old packs are deleted, the records and the new pack are deleted (a killed run leaves them to the next
    prune, which deletes a pack no record names and finishes a move whose record reads back).
    """
    stats = RepackStats()
    kinds: dict[str, list[str]] = {}
    for pack in sorted(todo):
        kinds.setdefault(pack_kind(pack), []).append(pack)
    for suffix, packs in kinds.items():
        batches: list[tuple[list[str], int]] = []
        for pack in packs:
            size = sum(length for _o, length, _s in todo[pack])
            if not batches or batches[-1][1] + size > PACK_TARGET:
                batches.append(([], 0))
            batches[-1][0].append(pack)
            batches[-1] = (batches[-1][0], batches[-1][1] + size)
        if len(batches) > 1 and batches[-1][1] < SMALL_PACK:
            rest, size = batches.pop()
            batches[-1] = (batches[-1][0] + rest, batches[-1][1] + size)
        for batch, _planned in batches:
            _repack_into(storage, batch, todo, table, suffix, read_gpg, write_gpg, stats)
    return stats


def _repack_into(storage, batch, todo, table, suffix, read_gpg, write_gpg, stats: RepackStats) -> None:
    """Repack the old packs ``batch`` into one new pack (see :func:`repack`)."""
    from .interrupts import shielded

    compression = next((kind for kind, ending in SUFFIX.items() if ending and suffix.startswith(ending)), "none")
    buffer = bytearray()
    layout: dict[str, list[tuple[int, int, int]]] = {}  # old pack -> (old offset, new offset, length)
    extents: list[tuple[int, int, str]] = []  # in the new pack
    for old in batch:
        moved = layout[old] = []

        def consume(offset: int, blob: memoryview, moved=moved) -> None:
            moved.append((offset, len(buffer), len(blob)))
            extents.append((len(buffer), len(blob), hashlib.sha256(blob).hexdigest()))
            buffer.extend(blob)

        read_pack(storage, old, table[old], todo[old], read_gpg, consume)
    new = f"{REPACK_FOLDER}/{uuid.uuid4().hex}.pack{suffix}"
    marker = marker_name(new)
    view = memoryview(buffer)

    def produce(out) -> None:
        stored = getattr(out, "write_stored", None)
        for offset, length, _sha in extents:
            blob = view[offset : offset + length]
            if stored is not None and length >= STORE_PROBE_MIN and incompressible(blob):
                stored(blob)
            else:
                out.write(blob)

    records: list[str] = []
    write_json(storage, marker, {"format": REPACKING_FORMAT, "from": batch, "to": new, **owner()})
    try:
        result = store_stream(storage, new, produce, compression=compression, gpg=write_gpg)
        pause_at("prune:repack-written")
        info = {"size": result.size, "sha256": result.sha256, "bytes": len(buffer)}
        read_pack(storage, new, info, extents, read_gpg, lambda _o, _b: None)  # it reads back, every blob
        pause_at("prune:repack-verified")
        for old in batch:
            records.append(write_move(storage, old, new, info, layout[old], write_gpg))
            if read_move(storage, records[-1], read_gpg)["blobs"] != layout[old]:
                raise BackupError(f"media move record {records[-1]} does not read back as written")
        pause_at("prune:repack-recorded")
    except BaseException:
        with shielded():
            for name in [*records, new, marker]:  # the marker last: until then, the new pack is this run's
                with suppress(Exception):
                    storage.delete(name)
        raise
    stats.new.append(new)
    stats.stored += result.size
    stats.moved_bytes += len(buffer)
    try:
        for number, old in enumerate(batch):
            storage.delete(old)
            stats.repacked.append(old)
            stats.freed += table[old].get("size") or 0
            if number == 0:
                pause_at("prune:repack-deleted")
    finally:
        with shielded(), suppress(Exception):  # the records name the new pack now
            storage.delete(marker)


# --- restoring -----------------------------------------------------------------------------------------


def _live_matches(path: Path, entry: FileEntry) -> bool:
    """Whether the live file ``path`` already is the entry: bytes, mode, mtime (read, never written)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size or stat.S_IMODE(info.st_mode) != entry.mode:
            return False
        if info.st_mtime_ns != entry.mtime_ns:
            return False  # the same bytes, but restoring puts the backed-up mtime back too
        with open(fd, "rb", buffering=0, closefd=False) as fh:
            for chunk, data in zip(entry.chunks, _read_chunks(fh, entry.size), strict=False):
                if hashlib.sha256(data).hexdigest() != chunk[0]:
                    return False
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class _Files:
    """The staged files being rebuilt: each opened once when its first blob comes and closed after its last
    (mode and mtime set through the open file), at most :data:`OPEN_FILES` open at once."""

    def __init__(self, folder: str, entries: list[FileEntry]):
        self.folder = folder
        self.entries = entries
        self.left = [len(entry.chunks) for entry in entries]  # chunks still to write, per file
        self.open: dict[int, int] = {}  # entry number -> fd, oldest first
        self.made: set[str] = set()

    def _fd(self, number: int) -> int:
        fd = self.open.pop(number, None)
        if fd is None:
            path = os.path.join(self.folder, self.entries[number].path)
            parent = os.path.dirname(path)
            if parent not in self.made:
                os.makedirs(parent, exist_ok=True)
                self.made.add(parent)
            created = len(self.entries[number].chunks) == self.left[number]
            flags = os.O_WRONLY | os.O_NOFOLLOW | (os.O_CREAT | os.O_EXCL if created else 0)
            fd = os.open(path, flags, 0o600)
            if len(self.open) >= OPEN_FILES:
                os.close(self.open.pop(next(iter(self.open))))
        self.open[number] = fd  # (re)inserted last: the most recently used
        return fd

    def write(self, number: int, position: int, blob: memoryview) -> None:
        fd = self._fd(number)
        written = os.pwrite(fd, blob, position)
        while written < len(blob):
            written += os.pwrite(fd, blob[written:], position + written)
        self.left[number] -= 1
        if not self.left[number]:
            self.finish(number)

    def finish(self, number: int) -> None:
        """The file's last chunk is written (or it has none): check its size, set its mode and mtime, close it."""
        entry = self.entries[number]
        fd = self._fd(number)
        del self.open[number]
        try:
            if os.fstat(fd).st_size != entry.size:
                raise RestoreError(f"media file {entry.path!r} was not rebuilt whole; media left unchanged")
            os.fchmod(fd, entry.mode)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def close(self) -> None:
        for fd in self.open.values():
            with suppress(OSError):
                os.close(fd)
        self.open.clear()


def _rebuild(staged: StagedArchive, wanted: list[FileEntry], index, storage, packs, gpg) -> None:
    """Write the files ``wanted`` into ``staged.folder`` from their packs, each pack read once, in order."""
    files = _Files(str(staged.folder), wanted)
    targets: dict[tuple[str, int], list[tuple[int, int]]] = {}
    try:
        for number, entry in enumerate(wanted):
            position = 0
            for _sha, pack, offset, length in entry.chunks:
                targets.setdefault((pack, offset), []).append((number, position))
                position += length
            if not entry.chunks:
                files.finish(number)  # an empty file
        for pack, extents in _pack_plan(index, {e.path for e in wanted}).items():

            def consume(offset: int, blob: memoryview, pack: str = pack) -> None:
                for number, position in targets[(pack, offset)]:
                    files.write(number, position, blob)

            read_pack_followed(storage, pack, packs[pack], extents, gpg, consume)
    finally:
        files.close()
    for number, entry in enumerate(wanted):
        if files.left[number]:
            raise RestoreError(f"media file {entry.path!r} was not rebuilt whole; media left unchanged")
        staged.names.append(entry.path)


def stage_index(media, storage, index: MediaIndex, packs: dict[str, dict], gpg: GpgSpec | None) -> StagedArchive:
    """Rebuild the files of ``index`` in a staging folder from their packs, every blob checked on the way.

    The folder is under MEDIA_ROOT for local media (putting files in place is a rename), else a temp folder;
    on plain local media a live file that already has the bytes, mode and mtime is ``unchanged``.  Files get
    the index's mode and mtime (the owner is recorded, and applied as for an archive by the commit).
    Nothing of the live media changes; on any error the staging folder is removed.
    """
    root = _local_path(media, "")
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    live_root = _plain_local_root(media)
    # exact: the staged files carry the index's modes and mtimes; owners follow the media folder's rule
    # (a replaced file keeps its owner, a new one gets the folder's: see media.commit_archive).
    staged = StagedArchive(staging_folder(root), exact=live_root is not None)
    try:
        unknown = index.packs() - set(packs)
        if unknown:
            raise RestoreError(f"the media index needs pack {sorted(unknown)[0]}, which its manifest does not name")
        index, packs = follow_moves(storage, index, packs, gpg)  # packs repacked since the set was written
        pause_at("media:packs-located")
        wanted: list[FileEntry] = []
        checked: set[str] = set()
        if live_root is not None:
            for folder, mode in index.folders.items():
                _check_no_link(live_root, f"{folder}/", checked)
                staged.folders[folder] = mode
        for entry in index.files:
            if live_root is not None:
                _check_no_link(live_root, entry.path, checked)
            if live_root is not None and _live_matches(live_root / entry.path, entry):
                staged.unchanged.append(entry.path)
            else:
                wanted.append(entry)
            staged.bytes += entry.size
        _rebuild(staged, wanted, index, storage, packs, gpg)
    except BaseException:
        abandon_archive(staged)
        raise
    return staged


def export_tar(storage, index: MediaIndex, packs: dict[str, dict], gpg: GpgSpec | None, out: BinaryIO) -> int:
    """Write the files of ``index`` as a plain tar stream (what stock ``mediarestore`` reads) into ``out``.

    The files are rebuilt in a temporary folder first (packs are read whole, in order); returns the count.
    """
    from django.core.files.storage import FileSystemStorage

    from .media import write_tar

    folder = Path(tempfile.mkdtemp(prefix="backup-export-"))
    try:
        scratch = FileSystemStorage(location=str(folder))
        staged = stage_index(scratch, storage, index, packs, gpg)
        for name in staged.names:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staged.folder / name, target)
        abandon_archive(staged)
        return write_tar(scratch, out).files
    finally:
        shutil.rmtree(folder, ignore_errors=True)
