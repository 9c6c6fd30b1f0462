"""What every remote backend shares: the :class:`RemoteStorage` wrapper, the :class:`Adapter` base and the
explanations of network failures.

:class:`RemoteStorage` gives every backend the three promises the rest of the app relies on:

- ``save`` takes the pipeline's forward-only stream (the read end of a pipe)
  and uploads it in bounded chunks as it is produced: the backend never seeks,
  never asks for the size, never buffers the whole file;
- ``open`` returns a stream that downloads as it is read (ranged requests or
  the protocol's own streaming), not the whole object in memory or a temp file;
- a failure the user has to fix (credentials, bucket, host, permission) is a
  :class:`RemoteStorageError` whose one line says what is wrong and what to do.

What differs per backend is a small :class:`Adapter` (one module per backend in this package): how its
options are prepared, how it streams in and out, and how its errors read.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from django.core.files import File

from .. import hints
from ..errors import StorageUnavailable
from ..secrets import redact
from ..streams import StreamFile

#: Bytes fetched per ranged request when reading.
READ_CHUNK = 8 * 1024 * 1024

OPTIONS_HINT = hints.Setting("backup_options")


class RemoteStorageError(StorageUnavailable):
    """The remote backup storage refused or could not be reached; the message says what to do."""


class RemoteStorage:
    """A remote backend with streaming save/open and errors that say what to do.

    Offers the storage methods the app uses (``save``, ``open``, ``exists``,
    ``delete``, ``listdir``, ``size``); anything else goes to the backend.
    """

    def __init__(self, backend, adapter: Adapter):
        self.backend = backend
        self.adapter = adapter

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    @property
    def description(self) -> str:
        return self.adapter.describe(self.backend)

    @contextmanager
    def _explained(self, action: str, name: str = "") -> Iterator[None]:
        try:
            yield
        except RemoteStorageError:
            raise
        except Exception as err:
            message = self.adapter.explain(self.backend, err, action, name)
            if message is None:
                raise
            raise RemoteStorageError(f"{self.description}: {message}") from err

    def save(self, name: str, content, max_length: int | None = None) -> str:
        with self._explained("write", name):
            self.adapter.ready(self.backend)
            return self.adapter.save(self.backend, name, content)

    def open(self, name: str, mode: str = "rb"):
        with self._explained("read", name):
            self.adapter.ready(self.backend)
            return File(self.adapter.open(self.backend, name), name=name)

    def exists(self, name: str) -> bool:
        with self._explained("read", name):
            self.adapter.ready(self.backend)
            return self.backend.exists(name)

    def delete(self, name: str) -> None:
        with self._explained("delete", name):
            self.adapter.ready(self.backend)
            self.backend.delete(name)

    def listdir(self, path: str):
        with self._explained("list", path):
            self.adapter.ready(self.backend)
            return self.adapter.listdir(self.backend, path)

    def size(self, name: str) -> int:
        with self._explained("read", name):
            self.adapter.ready(self.backend)
            return self.backend.size(name)

    def list_sizes(self, path: str) -> dict[str, int | None]:
        """The files directly in ``path`` with their sizes where the listing gives them (else None)."""
        with self._explained("list", path):
            self.adapter.ready(self.backend)
            return self.adapter.list_sizes(self.backend, path)

    def read_bytes(self, name: str) -> bytes:
        """All of a small file (a manifest) in as few requests as the protocol allows."""
        with self._explained("read", name):
            self.adapter.ready(self.backend)
            return self.adapter.read_bytes(self.backend, name)

    @property
    def read_workers(self) -> int:
        """How many small reads may run at once on this backend (1: its client is not thread-safe)."""
        return self.adapter.read_workers


def unreachable(err: BaseException) -> str | None:
    """The reason when ``err`` (or what caused it) is a network failure to reach the server."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, socket.gaierror):
            return f"host name not found ({err.strerror})"
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, TimeoutError | socket.timeout):
            return "timed out"
        if isinstance(err, OSError) and err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET):
            return err.strerror
        err = err.__cause__ or err.__context__
    return None


def first_line(err: BaseException) -> str:
    return redact(str(err).splitlines()[0] if str(err) else type(err).__name__)


class Adapter:
    """How one family of storage classes is built, streamed to and from, and explained.

    The default streams uploads through the backend's own ``save`` (given a
    forward-only file) and reads through its ``open``.
    """

    label = "storage"
    #: Small reads (manifests) run at once by a listing; more than 1 only where the client is thread-safe.
    read_workers = 1
    #: Defaults of the backend's ``object_parameters`` option (metadata of every stored object), or None.
    object_parameters: dict | None = None

    def prepare(self, options: dict) -> dict:
        """Options as given in ``backup_options`` -> keyword arguments of the class.

        With :attr:`object_parameters`, the stored bytes are declared opaque: no Content-Encoding: gzip
        guessed from ".gz", which the backend's clients would undo on download (and the checksums would not
        match); what the user set in ``object_parameters`` wins.
        """
        if self.object_parameters is None:
            return options
        options = dict(options)
        options["object_parameters"] = {**self.object_parameters, **(options.get("object_parameters") or {})}
        return options

    def describe(self, backend) -> str:
        location = getattr(backend, "location", "") or ""
        return f"{type(backend).__name__}({location})" if location else type(backend).__name__

    def ready(self, backend) -> None:
        """Called before every operation (e.g. to create a folder the backend needs to exist)."""

    def listdir(self, backend, path: str) -> tuple[list[str], list[str]]:
        return backend.listdir(path)

    def list_sizes(self, backend, path: str) -> dict[str, int | None]:
        """Names of the files in ``path`` -> size; the default listing gives none (None: ask ``size``)."""
        return dict.fromkeys(self.listdir(backend, path)[1])

    def read_bytes(self, backend, name: str) -> bytes:
        with self.open(backend, name) as fh:
            return fh.read()

    def save(self, backend, name: str, content) -> str:
        stream = content.file if isinstance(content, File) else content
        if hasattr(stream, "seekable") and stream.seekable():
            return backend.save(name, content)
        return backend.save(name, StreamFile(stream, name))

    def open(self, backend, name: str) -> BinaryIO:
        return backend.open(name, "rb")

    def explain(self, backend, err: BaseException, action: str, name: str) -> str | None:
        """One line (what, why, what to do) for an error the user must fix, or None to let it through."""
        reason = unreachable(err)
        if reason:
            return f"cannot reach the server ({reason}); check the host in {OPTIONS_HINT} and the network"
        if isinstance(err, PermissionError):
            return f"permission denied to {action} {name or 'the folder'} ({err}); {self.permission_hint(action)}"
        if isinstance(err, RecursionError):
            # A defect of the backend's client with these options (SFTPStorage's folder walk from ''), not data.
            return (
                f"cannot {action} {name or 'the folder'}: the storage client recursed without end ({err}); "
                f"check the folder options in {OPTIONS_HINT}"
            )
        return None

    def permission_hint(self, action: str) -> str:
        return "give the account read, write, list and delete rights on the backup location"
