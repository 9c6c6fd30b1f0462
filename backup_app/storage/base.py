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
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import BinaryIO

from django.core.files import File

from .. import hints
from ..errors import StorageUnavailable
from ..secrets import redact
from ..settings import app_settings
from ..streams import StreamFile

logger = logging.getLogger("backup_app")

#: Bytes fetched per ranged request when reading.
READ_CHUNK = 8 * 1024 * 1024

OPTIONS_HINT = hints.Setting("backup_options")
#: The longest pause before a retry, in seconds.
MAX_PAUSE = 30


def pause_before_retry(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt``: 1, 2, 4 … s, never longer than backup_storage_timeout
    (nor :data:`MAX_PAUSE`)."""
    return float(min(2 ** (attempt - 1), app_settings.storage_timeout, MAX_PAUSE))


def storage_deadline() -> float:
    """Seconds one storage request may take with all its retries: backup_storage_retries + 1 tries, each
    silent for backup_storage_timeout at most, and the pauses between them; no retry starts after it."""
    retries = app_settings.storage_retries
    pauses = sum(pause_before_retry(n) for n in range(1, retries + 1))
    return (retries + 1) * app_settings.storage_timeout + pauses


def say_retry(description: str, what: str, why: str, attempt: int) -> None:
    """The one line each retry of a storage request is said on (``…; retrying (1/3)``)."""
    logger.warning(
        "%s: %s failed (%s); retrying (%d/%d)", description, what, why, attempt, app_settings.storage_retries
    )


def tries_said(err: BaseException) -> str:
    """How many times :meth:`RemoteStorage._run` tried the request that ended in ``err`` ("3 tries")."""
    count = getattr(err, "backup_app_tries", 1)
    return "1 try" if count == 1 else f"{count} tries"


class RemoteStorageError(StorageUnavailable):
    """The remote backup storage refused or could not be reached; the message says what to do."""


class RemoteStorage:
    """A remote backend with streaming save/open and errors that say what to do.

    Offers the storage methods the app uses (``save``, ``open``, ``exists``,
    ``delete``, ``listdir``, ``size``, ``get_modified_time``), each with the retries and one-line errors of
    :meth:`_run`; anything else goes to the backend.
    """

    def __init__(self, backend, adapter: Adapter, factory: Callable[[], object] | None = None):
        self.backend = backend
        self.adapter = adapter
        #: Builds another backend from the same options (another connection), for reads on other threads.
        self._factory = factory
        #: Whether :meth:`_run` tries a transient failure again (not on :meth:`read_all`'s extra connections:
        #: what fails there is read again over this one).
        self.retrying = True

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    @property
    def description(self) -> str:
        return self.adapter.describe(self.backend)

    @property
    def unresponsive(self) -> bool:
        """A request failed for good because the storage did not answer (:attr:`Adapter.unresponsive`)."""
        return self.adapter.unresponsive

    def _explanation(self, err: BaseException, action: str, name: str) -> RemoteStorageError | None:
        message = self.adapter.explain(self.backend, err, action, name)
        return None if message is None else RemoteStorageError(f"{self.description}: {message}")

    @contextmanager
    def _explained(self, action: str, name: str = "") -> Iterator[None]:
        try:
            yield
        except RemoteStorageError:
            raise
        except Exception as err:
            problem = self._explanation(err, action, name)
            if problem is None:
                raise
            raise problem from err

    def _run(self, action: str, name: str, operation: Callable[[], object], replayable: bool = True):
        """``operation()`` after :meth:`Adapter.ready`, a failure explained in one line.

        Where the backend's client does not retry (:attr:`Adapter.retries_here`: SFTP, FTP), a failure
        :meth:`Adapter.transient` says may pass (a connection dropped, reset or silent) is tried again up to
        backup_storage_retries times, each said on a line, over a new connection (:meth:`Adapter.reset`),
        after a pause (:func:`pause_before_retry`).  Each try is bounded by the client's own time-outs (paramiko
        may wait up to four times: connect, banner, login, channel), so the tries and those bound the whole; a
        deadline of (retries + 1) x timeout, as the SDKs' retries have, would cut SFTP's retries short.  An
        operation that is not ``replayable`` (an upload from a stream that cannot be read twice) is tried again
        only when it failed before it began (while connecting).
        """
        retries = app_settings.storage_retries if self.adapter.retries_here and self.retrying else 0
        if self.adapter.unresponsive:
            retries = 0  # it gave up answering once: one try each (the failed run's clean-up)
        for attempt in itertools.count(1):
            begun = False
            try:
                self.adapter.ready(self.backend)
                begun = True
                return operation()
            except RemoteStorageError:
                raise
            except Exception as err:
                if attempt > retries or not (replayable or not begun) or not self.adapter.transient(err):
                    if attempt > 1:
                        err.backup_app_tries = attempt  # the explanation says how many tries it took
                    if self.retrying and self.adapter.unanswered(err):  # (a listing's extra connection: read again)
                        self.adapter.unresponsive = True
                    problem = self._explanation(err, action, name)
                    if problem is None:
                        raise
                    raise problem from err
                say_retry(self.description, f"{action} {name}".rstrip(), first_line(err), attempt)
                self.adapter.reset(self.backend)
                time.sleep(pause_before_retry(attempt))
        raise AssertionError("unreachable")

    def save(self, name: str, content, max_length: int | None = None) -> str:
        return self._run("write", name, lambda: self.adapter.save(self.backend, name, content), replayable=False)

    def open(self, name: str, mode: str = "rb"):
        return self._run("read", name, lambda: File(self.adapter.open(self.backend, name), name=name))

    def exists(self, name: str) -> bool:
        return self._run("read", name, lambda: self.adapter.exists(self.backend, name))

    def delete(self, name: str) -> None:
        self._run("delete", name, lambda: self.adapter.delete(self.backend, name))

    def listdir(self, path: str):
        return self._run("list", path, lambda: self.adapter.listdir(self.backend, path))

    def size(self, name: str) -> int:
        return self._run("read", name, lambda: self.adapter.size(self.backend, name))

    def get_modified_time(self, name: str):
        return self._run("read", name, lambda: self.adapter.get_modified_time(self.backend, name))

    def list_sizes(self, path: str) -> dict[str, int | None]:
        """The files directly in ``path`` with their sizes where the listing gives them (else None)."""
        return self._run("list", path, lambda: self.adapter.list_sizes(self.backend, path))

    def read_bytes(self, name: str) -> bytes:
        """All of a small file (a manifest) in as few requests as the protocol allows."""
        return self._run("read", name, lambda: self.adapter.read_bytes(self.backend, name))

    def abort_uploads(self, keep: set[str]) -> list[str]:
        """Abort the unfinished uploads (S3 multipart) in the backup folder but those of the sets named in
        ``keep`` (being written by a run that may still go on); returns the names of the files they were for."""
        with self._explained("delete", "unfinished uploads"):
            return self.adapter.abort_uploads(self.backend, keep)

    @property
    def read_workers(self) -> int:
        """How many small reads may run at once on this backend."""
        return self.adapter.read_workers

    def read_all(self, read: Callable[[RemoteStorage, str], object], names: Sequence[str]) -> list:
        """``read(storage, name)`` for each of ``names`` (small files: manifests), up to
        :attr:`Adapter.read_workers` at once; in the order of ``names``, each what ``read`` returned or the
        exception it raised.

        A client that may not be shared between threads (:attr:`Adapter.shared_client` false: paramiko's SFTP
        session, ftplib's control connection) is never shared: the first worker reads over this storage's own
        connection (the caller waits meanwhile), every other one over a connection of its own, opened for it
        and closed at the end, and only when there are :attr:`Adapter.reads_per_connection` reads for it.  A
        read that failed (a server that allows fewer logins at once refused one) is done again afterwards, one
        at a time over this storage's connection, so that a limit on connections costs time, never a set; so
        those other connections do not retry (:attr:`retrying`), this one does.
        """
        adapter = self.adapter

        def attempt(storage: RemoteStorage, name: str):
            try:
                return read(storage, name)
            except Exception as err:  # noqa: BLE001 - returned to the caller, which says what it was
                return err

        workers = min(adapter.read_workers, len(names) // max(1, adapter.reads_per_connection))
        if not adapter.shared_client and self._factory is None:
            workers = 1
        if workers <= 1:
            return [attempt(self, name) for name in names]
        local = threading.local()
        opened: list[RemoteStorage] = []
        lock = threading.Lock()
        own = {"taken": False}  # this storage's connection is some worker's

        def storage_of_this_thread() -> RemoteStorage:
            storage = getattr(local, "storage", None)
            if storage is None:
                with lock:
                    if adapter.shared_client or not own["taken"]:
                        own["taken"] = True
                        storage = self
                    else:
                        storage = RemoteStorage(self._factory(), adapter, self._factory)
                        storage.retrying = False  # a login the server refuses (too many at once) is not waited for
                        opened.append(storage)
                local.storage = storage
            return storage

        def in_a_worker(name: str):
            try:
                storage = storage_of_this_thread()
            except Exception as err:  # noqa: BLE001 - no second backend: read again below, over ours
                return name, err
            return name, attempt(storage, name)

        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backup-read") as pool:
                done = list(pool.map(in_a_worker, names))
        finally:
            for storage in opened:
                storage.close()
        # Whatever failed is read again, one at a time over this connection alone (the others are closed now).
        return [attempt(self, name) if isinstance(result, Exception) else result for name, result in done]

    def close(self) -> None:
        """Close the backend's connection (a worker's, after :meth:`read_all`); never fails."""
        try:
            self.adapter.close(self.backend)
        except Exception:  # noqa: BLE001 - a connection that will not close cleanly is dropped all the same
            pass


def causes(err: BaseException | None) -> Iterator[BaseException]:
    """``err`` and what caused it: its ``__cause__`` / ``__context__`` chain, and the exceptions carried in
    the arguments of each (urllib3 and requests wrap a socket's time-out so: ``ConnectionError(ProtocolError(
    'Connection aborted.', TimeoutError('timed out')))``, which google-cloud-storage and the Azure SDK raise
    for an upload the server stopped reading; the Azure SDK's own error keeps it in ``inner_exception``)."""
    seen = set()
    waiting = [err]
    while waiting:
        err = waiting.pop(0)
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        waiting.append(err.__cause__ or err.__context__)
        waiting.append(getattr(err, "inner_exception", None))  # the Azure SDK's AzureError keeps it there
        waiting.extend(arg for arg in getattr(err, "args", ()) if isinstance(arg, BaseException))


def unreachable(err: BaseException) -> str | None:
    """The reason when ``err`` (or what caused it) is a network failure to reach the server."""
    for cause in causes(err):
        if isinstance(cause, socket.gaierror):
            return f"host name not found ({cause.strerror})"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, TimeoutError | socket.timeout):
            return "timed out"
        if isinstance(cause, OSError) and cause.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET):
            return cause.strerror
    return None


def dropped(err: BaseException) -> bool:
    """``err`` (or what caused it) is the server closing or resetting a connection it had accepted."""
    return any(
        isinstance(cause, EOFError | ConnectionResetError | ConnectionAbortedError | BrokenPipeError)
        for cause in causes(err)
    )


def first_line(err: BaseException) -> str:
    return redact(str(err).splitlines()[0] if str(err) else type(err).__name__)


class Adapter:
    """How one family of storage classes is built, streamed to and from, and explained.

    The default streams uploads through the backend's own ``save`` (given a
    forward-only file) and reads through its ``open``.
    """

    label = "storage"
    #: Small reads (manifests) run at once by a listing (:meth:`RemoteStorage.read_all`).
    read_workers = 1
    #: One client may serve several threads at once (boto3, google-cloud-storage and the Azure SDK say theirs
    #: do); when False, each reading thread gets a connection of its own.
    shared_client = True
    #: A thread with a connection of its own is started only for at least this many reads (a new SSH or FTP
    #: login costs several round trips; a read on a connection that is open, one or two).
    reads_per_connection = 1
    #: The backend's client does not retry on its own: :meth:`RemoteStorage._run` retries what
    #: :meth:`transient` allows (S3, GCS and Azure retry in their SDKs, configured by their adapters).
    retries_here = False
    #: Defaults of the backend's ``object_parameters`` option (metadata of every stored object), or None.
    object_parameters: dict | None = None
    #: Set once a request failed for good because the storage did not answer (a time-out, a connection it
    #: dropped or refused, after the retries): every later request is tried once (the SDKs' retries too), and
    #: a failed run's clean-up stops at its first such failure, instead of waiting the whole retry time again
    #: for each file of the set (with the defaults, about 4 minutes each).
    unresponsive = False

    def unanswered(self, err: BaseException) -> bool:
        """``err`` is the storage not answering (time-out, unreachable, connection dropped), not a refusal."""
        return unreachable(err) is not None or dropped(err)

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

    def exists(self, backend, name: str) -> bool:
        return backend.exists(name)

    def delete(self, backend, name: str) -> None:
        backend.delete(name)

    def size(self, backend, name: str) -> int:
        return backend.size(name)

    def get_modified_time(self, backend, name: str):
        return backend.get_modified_time(name)

    def transient(self, err: BaseException) -> bool:
        """``err`` may pass if the request is made again (only asked when :attr:`retries_here`)."""
        return False

    def reset(self, backend) -> None:
        """Drop the backend's connection after a transient failure, so that the next try opens a new one."""

    def list_sizes(self, backend, path: str) -> dict[str, int | None]:
        """Names of the files in ``path`` -> size; the default listing gives none (None: ask ``size``)."""
        return dict.fromkeys(self.listdir(backend, path)[1])

    def read_bytes(self, backend, name: str) -> bytes:
        with self.open(backend, name) as fh:
            return fh.read()

    def close(self, backend) -> None:
        """Close the backend's connections (a clone's, made for one thread of :meth:`RemoteStorage.read_all`)."""

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

    def abort_uploads(self, backend, keep: set[str]) -> list[str]:
        """Abort unfinished uploads but those of the sets in ``keep``; a backend without such uploads has none."""
        return []

    def permission_hint(self, action: str) -> str:
        return "give the account read, write, list and delete rights on the backup location"
