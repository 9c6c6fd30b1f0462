"""Stream wrappers and copy loops: every place bytes are moved from one stream to another.

All of them move :data:`CHUNK` bytes at a time through reused buffers and hold at most one chunk (a
:class:`RangedReader` one fetched range); none reads a whole file into memory.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from django.core.files import File

#: Read and write size of every stream: below glibc's mmap threshold, so buffers are reused, not page-faulted in
#: afresh (1 MiB chunks cost a third more CPU, most of it in the kernel).
CHUNK = 128 * 1024

#: Called with the size of every chunk a :class:`HashingReader` passes on; None (the default) costs nothing.
#: Only a command-line entry point sets it (``management/commands/_base.py``: it returns freed heap to the
#: system), never a host process such as a django-q2 worker.
_on_streamed: Callable[[int], None] | None = None


class ChangedWhileRead(OSError):
    """A file being compared changed size under us."""


class EndedEarly(EOFError):
    """A stream ended before the number of bytes it was to give."""


def set_streamed_hook(hook: Callable[[int], None] | None) -> None:
    """Install (or, with None, remove) the callback told the size of every chunk streamed."""
    global _on_streamed
    _on_streamed = hook


def streamed_hook() -> Callable[[int], None] | None:
    return _on_streamed


# --- writers ---------------------------------------------------------------------------------------


class ShieldedWriter(io.RawIOBase):
    """Writable wrapper whose ``close()`` does not close the wrapped stream."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._raw.write(data)
        return len(data)


class CountingWriter(io.RawIOBase):
    """Writable wrapper that tells ``on_write`` the size of every write (for progress); closes nothing."""

    def __init__(self, raw: BinaryIO, on_write: Callable[[int], None]):
        self._raw = raw
        self._on_write = on_write

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._raw.write(data)
        n = len(data)
        self._on_write(n)
        return n

    def close(self) -> None:
        pass


# --- readers ---------------------------------------------------------------------------------------


class HashingReader(io.RawIOBase):
    """Readable wrapper that counts and hashes (SHA-256) every byte read through it.

    ``on_read``, when given, is told the size of every chunk (for progress); ``copy``, when given, is written
    every chunk (a local copy of what is stored; it must not raise).
    """

    def __init__(self, raw: BinaryIO, on_read: Callable[[int], None] | None = None, copy=None):
        self._raw = raw
        self.size = 0
        self._hash = hashlib.sha256()
        self._on_read = on_read
        self._copy = copy

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        hook = _on_streamed
        if hook is not None:
            hook(n)
        if self._on_read is not None:
            self._on_read(n)
        self.size += n
        self._hash.update(data)
        if self._copy is not None:
            self._copy.write(data)
        return n

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size if size is not None and size >= 0 else CHUNK * 64)
        hook = _on_streamed
        if hook is not None:
            hook(len(data))
        if size is None or size < 0:
            parts = [data]
            while data:
                data = self._raw.read(CHUNK)
                parts.append(data)
            data = b"".join(parts)
        if self._on_read is not None:
            self._on_read(len(data))
        self.size += len(data)
        self._hash.update(data)
        if self._copy is not None:
            self._copy.write(data)
        return data

    def drain(self) -> None:
        """Read (and hash) the rest."""
        while self.read(CHUNK):
            pass

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class OutOfRoom(OSError):
    """What a stream gives would fill the file system it is written to (the message names the folder)."""


def room_margin(total: int) -> int:
    """Bytes a restore leaves free on a file system of ``total`` bytes: 5 %, at most 256 MiB."""
    return min(256 * 1024 * 1024, total // 20)


def room_left(folder: str | os.PathLike) -> tuple[int, int]:
    """``(bytes, files)`` that may still be written in ``folder``: what its file system has free for this user,
    less :func:`room_margin` (bytes may be negative: already inside the margin)."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize - room_margin(st.f_blocks * st.f_frsize), st.f_favail


def file_system_of(path: str | os.PathLike) -> tuple[int, Path]:
    """``(device, mount point)`` of the file system ``path`` is (or, when it does not exist yet, would be) on.

    A link to nothing (an unmounted disk) counts as not there yet: its folder's file system is given, and the step
    that writes there says what is wrong with it."""
    here = Path(os.path.abspath(path))
    while not os.path.exists(here) and here.parent != here:
        here = here.parent
    device = os.stat(here).st_dev
    while here.parent != here and os.stat(here.parent).st_dev == device:
        here = here.parent
    return device, here


class RoomGuard(io.RawIOBase):
    """Readable wrapper for a stream about to be written into ``folder``: :class:`OutOfRoom` as soon as more
    has been read than the file system there has room for (:func:`room_left`), before it is full.

    A file that expands without end (a decompression bomb) stops here, the disk still usable.  The free space
    is looked at again only when the bytes read pass what it was.
    """

    def __init__(self, raw: BinaryIO, folder: str | os.PathLike):
        self._raw = raw
        self._folder = folder
        self.size = 0
        self._budget = room_left(folder)[0]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.size += n
        if self.size > self._budget:
            left = room_left(self._folder)[0]
            if left < 0:
                raise OutOfRoom(
                    f"it expands to more than the {self._folder} file system has free ({self.size:,} bytes "
                    f"so far, a margin kept)"
                )
            self._budget = self.size + left
        return n


class RoomKeeper(io.RawIOBase):
    """Writable wrapper for a file being written into ``folder``: :class:`OutOfRoom` before a write would go
    into the margin :func:`room_left` keeps on that file system (what was written stays, for the caller to
    remove).  The free space is looked at again only when the bytes written pass what it was."""

    def __init__(self, raw: BinaryIO, folder: str | os.PathLike):
        self._raw = raw
        self._folder = folder
        self.size = 0
        self._budget = room_left(folder)[0]

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        n = len(data)
        if self.size + n > self._budget:
            self._raw.flush()
            left = room_left(self._folder)[0]
            if left < n:
                raise OutOfRoom(
                    f"would fill the {self._folder} file system ({self.size:,} bytes written, a margin kept)"
                )
            self._budget = self.size + left
        self._raw.write(data)
        self.size += n
        return n


class PrefixedReader(io.RawIOBase):
    """A stream that gives ``head`` first, then the rest of ``stream`` (bytes already read to look at them)."""

    def __init__(self, head: bytes, stream):
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data, self._head = (
                (self._head, b"") if size < 0 or size >= len(self._head) else (self._head[:size], self._head[size:])
            )
            return data
        return self._stream.read(size)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class ForwardOnlyReader(io.RawIOBase):
    """A readable stream that never goes back, and reads fully.

    Backends "rewind" a fresh upload (``seek(0)``) and probe for a length
    (``seek(0, SEEK_END)``): a seek to where the stream already is succeeds,
    any other raises :class:`io.UnsupportedOperation`, which the backends take
    as "length unknown, upload in parts".

    ``read(n)`` returns ``n`` bytes unless the stream ends: a pipe gives at
    most 64 KiB per read, and backends take a short read for the end (GCS
    resumable uploads stop; boto3 decides "small file" and reads the rest into
    memory for one PUT; multipart parts would fall under S3's 5 MiB minimum).
    """

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset}.get(whence)
        if target != self._pos:
            raise io.UnsupportedOperation("a backup stream cannot seek")
        return self._pos

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        parts, missing = [], size
        while missing > 0:
            data = self._raw.read(missing)
            if not data:
                break
            parts.append(data)
            missing -= len(data)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos += len(data)
        return data


class RangedReader(io.RawIOBase):
    """Reads an object of known ``size`` by fetching ``chunk`` bytes at a time with ``fetch(start, end)``.

    ``fetch`` returns the bytes ``start..end`` inclusive; the backend's client
    retries each request by its own retry settings.  At most one chunk is held.
    """

    def __init__(
        self,
        fetch: Callable[[int, int], bytes],
        size: int,
        chunk: int,
        on_close: Callable[[], None] | None = None,
    ):
        self._fetch = fetch
        self._on_close = on_close
        self._size = size
        self._chunk = chunk
        self._pos = 0
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed and self._on_close is not None:
            with suppress(Exception):
                self._on_close()
        super().close()

    def readinto(self, buffer) -> int:
        if not self._buffer:
            if self._pos >= self._size:
                return 0
            end = min(self._pos + self._chunk, self._size) - 1
            self._buffer = self._fetch(self._pos, end)
            if not self._buffer:
                raise OSError(f"the storage returned no data at offset {self._pos} of {self._size}")
            self._pos += len(self._buffer)
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


class CallbackReader(io.RawIOBase):
    """A raw stream over a ``read(n)`` (or ``readinto(buffer)``) function; ``on_close`` runs once on close."""

    def __init__(
        self,
        read: Callable[[int], bytes] | None = None,
        *,
        readinto: Callable[[memoryview], int] | None = None,
        on_close: Callable[[], None] | None = None,
    ):
        self._read = read
        self._readinto = readinto
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._readinto is not None:
            return self._readinto(buffer)
        data = self._read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed and self._on_close is not None:
            self._on_close()
        super().close()


def buffered(raw: io.RawIOBase, size: int = 1024 * 1024) -> BinaryIO:
    """``raw`` behind a read buffer of ``size`` bytes (for readers that fetch in large pieces)."""
    return io.BufferedReader(raw, buffer_size=size)


# --- Django File wrappers ----------------------------------------------------------------------------


class ChunkedFile(File):
    """A Django File over a stream, read by storages :data:`CHUNK` bytes at a time (Django's default: 64 KiB)."""

    DEFAULT_CHUNK_SIZE = CHUNK


class StreamFile(File):
    """A Django ``File`` over a :class:`ForwardOnlyReader` whose size is unknown (None)."""

    def __init__(self, raw: BinaryIO, name: str):
        super().__init__(raw if isinstance(raw, ForwardOnlyReader) else ForwardOnlyReader(raw), name=name)

    @property
    def size(self):  # noqa: D401 - Django's File computes it by seeking, which a pipe cannot do
        return None

    def seekable(self) -> bool:
        return False


# --- copy loops ------------------------------------------------------------------------------------


def pump(src, out: BinaryIO) -> None:
    """Copy ``src`` (a raw or buffered binary file) into ``out`` through one reused buffer."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := src.readinto(buf):
        out.write(view[:n])


def copy(src: BinaryIO, dst, size: int = CHUNK) -> int:
    """Copy ``src`` into ``dst`` ``size`` bytes at a time with ``read``; returns the bytes copied."""
    total = 0
    while True:
        data = src.read(size)
        if not data:
            return total
        dst.write(data)
        total += len(data)


def copy_exact(
    src,
    out: BinaryIO,
    size: int,
    buf: memoryview,
    choose_write: Callable[[memoryview | bytes], Callable] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """Copy exactly ``size`` bytes of ``src`` into ``out``; OSError if ``src`` is shorter.

    A plain file (:class:`io.FileIO`) is read into the reused ``buf``; other files (a storage's) return bytes.
    ``choose_write(first_chunk)``, when given, returns the write function used for the whole copy;
    ``on_chunk(n)`` is told each chunk's size once it is written (progress inside a large file).
    """
    write = out.write
    direct = isinstance(src, io.FileIO)
    remaining = size
    first = True
    while remaining:
        if direct:
            n = src.readinto(buf[: min(remaining, len(buf))])
            data = buf[:n]
        else:
            data = src.read(min(remaining, len(buf)))
            n = len(data)
        if not n:
            raise OSError(f"file is shorter than its size ({size - remaining} of {size} bytes)")
        if first:
            first = False
            if choose_write is not None:
                write = choose_write(data)
        write(data)
        remaining -= n
        if on_chunk is not None:
            on_chunk(n)


def copy_unless_same(source: BinaryIO, size: int, existing: int | None, open_target: Callable[[], BinaryIO]) -> bool:
    """Copy ``size`` bytes of ``source`` into ``open_target()``, unless the open descriptor ``existing`` holds
    the same bytes; True if it wrote.

    The existing file (already known to have ``size`` bytes) is compared as ``source`` is read: while they
    agree nothing is written; at the first difference the agreed part is copied from the existing file and
    the rest from ``source``.  :class:`EndedEarly` if ``source`` ends early; :class:`ChangedWhileRead` if the existing
    file shrinks meanwhile.
    """
    chunk = b""
    agreed = 0
    if existing is not None:
        while agreed < size:
            chunk = source.read(min(CHUNK, size - agreed))
            if not chunk:
                raise EndedEarly("the stream ends inside a file")
            if os.read(existing, len(chunk)) != chunk:
                break
            agreed += len(chunk)
            chunk = b""
        else:
            return False
    with open_target() as fh:
        if agreed:
            os.lseek(existing, 0, os.SEEK_SET)
            left = agreed
            while left:
                data = os.read(existing, min(CHUNK, left))
                if not data:
                    raise ChangedWhileRead("the file changed while it was compared")
                fh.write(data)
                left -= len(data)
        fh.write(chunk)
        shutil.copyfileobj(source, fh, CHUNK)
    return True


def spool(stream: BinaryIO, prefix: str, folder: str | os.PathLike | None = None) -> str:
    """Write ``stream`` to a private temporary file (in ``folder``, else ``$TMPDIR``); returns its path (the
    caller removes it)."""
    fd, path = tempfile.mkstemp(prefix=prefix, dir=folder)
    try:
        with open(fd, "wb") as fh:
            shutil.copyfileobj(stream, fh, CHUNK)
    except BaseException:
        os.unlink(path)
        raise
    return path


class FilteredReader(io.RawIOBase):
    """A stream read through a filter, in bounded memory: :meth:`_feed` takes each block read from ``stream``
    and appends what passes to ``self._out``; :meth:`_finish` does the same for what it still holds at the end."""

    BLOCK = 1 << 20

    def __init__(self, stream, out: bytes = b""):
        self._stream = stream
        self._out = bytearray(out)
        self._eof = False

    def readable(self) -> bool:
        return True

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """At the end of ``stream``: pass on or judge whatever is still held back."""

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._out) < size):
            data = self._stream.read(self.BLOCK)
            if not data:
                self._eof = True
                self._finish()
                break
            self._feed(data)
        if size < 0 or size >= len(self._out):
            data, self._out = bytes(self._out), bytearray()
        else:
            with memoryview(self._out) as view:
                data = bytes(view[:size])  # one copy
            del self._out[:size]  # a bytearray drops its head without copying the rest
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
