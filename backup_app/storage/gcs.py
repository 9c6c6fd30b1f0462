"""Google Cloud Storage (``storages.backends.gcloud.GoogleCloudStorage``)."""

from __future__ import annotations

import functools
import itertools
from typing import BinaryIO

from django.core.files import File

from ..settings import app_settings
from ..streams import ForwardOnlyReader
from .base import (
    MAX_PAUSE,
    OPTIONS_HINT,
    READ_CHUNK,
    Adapter,
    first_line,
    say_retry,
    storage_deadline,
    unreachable,
)

GCS_UPLOAD_CHUNK = 16 * 1024 * 1024  # a multiple of 256 KiB, as GCS requires


class SaidRetry:
    """google-cloud-storage's own retry (``DEFAULT_RETRY``: what it deems transient, exponential back-off),
    with backup_storage_retries retries at most per request, each said on a line, and an overall deadline
    (:func:`~backup_app.storage.base.storage_deadline`).

    Given as ``retry=`` to each call, like a ``google.api_core.retry.Retry``: the library wraps each request
    (each chunk of a resumable upload, each ranged read) with it, and each wrapped request counts its own
    retries.  google-api-core's Retry has no limit on tries, only a deadline: the ``on_error`` of each
    request ends it after the last retry, with the request's own error.

    Once a request failed for good because the storage did not answer (:attr:`Adapter.unresponsive` of
    ``adapter``), every later one is tried once: the rest of the upload, its clean-up and the failed run's
    (before, each got its full retries: with the defaults about 4 minutes per file of the set).
    """

    def __init__(self, description: str, what: str, adapter: Adapter | None = None):
        from google.cloud.storage.retry import DEFAULT_RETRY

        self.description = description
        self.what = what
        self.adapter = adapter
        self.retries = app_settings.storage_retries
        self.base = DEFAULT_RETRY.with_delay(
            initial=1.0, maximum=float(min(app_settings.storage_timeout, MAX_PAUSE)), multiplier=2.0
        ).with_timeout(storage_deadline())

    def __call__(self, func, on_error=None):
        @functools.wraps(func)
        def request(*args, **kwargs):
            attempts = itertools.count(1)

            def note(err: Exception) -> None:
                attempt = next(attempts)
                gone = self.adapter is not None and self.adapter.unresponsive
                if attempt > self.retries or gone:
                    err.backup_app_tries = attempt
                    if self.adapter is not None and self.adapter.unanswered(err):
                        self.adapter.unresponsive = True
                    raise err
                say_retry(self.description, self.what, first_line(err), attempt)

            return self.base(func, on_error=note)(*args, **kwargs)

        return request


class GCSAdapter(Adapter):
    """``storages.backends.gcloud.GoogleCloudStorage``: resumable uploads in chunks, ranged reads."""

    label = "Google Cloud Storage"
    #: google-cloud-storage's Client may be shared between threads (its documentation says so): a listing
    #: reads up to 8 manifests at once.
    read_workers = 8

    object_parameters = {"content_type": "application/octet-stream", "content_encoding": None}

    def prepare(self, options: dict) -> dict:
        options = super().prepare(options)
        # A resumable upload holds one chunk in memory (the library's default is 100 MiB).
        options.setdefault("blob_chunk_size", GCS_UPLOAD_CHUNK)
        return options

    def describe(self, backend) -> str:
        return f"Google Cloud Storage gs://{backend.bucket_name}/{backend.location}".rstrip("/")

    # Every request the app makes is made here, with backup_storage_timeout (each request's connect and read
    # time-out; the library's default is 60 s) and a SaidRetry (GoogleCloudStorage passes the library's
    # DEFAULT_RETRY: two minutes of silent retries per request).

    def _waits(self, backend, what: str) -> dict:
        """The time-out and retry of a request, ``what`` in the line that says a retry ("read NAME")."""
        return {"timeout": app_settings.storage_timeout, "retry": SaidRetry(self.describe(backend), what, self)}

    @staticmethod
    def _key(backend, name: str) -> str:
        from storages.utils import clean_name

        return backend._normalize_name(clean_name(name))

    def save(self, backend, name: str, content) -> str:
        """A resumable upload from the stream, ``blob_chunk_size`` bytes per request (GoogleCloudStorage's
        ``_save``, which first reads the object's metadata, with our time-out and retries)."""
        from storages.utils import clean_name

        stream = content.file if isinstance(content, File) else content
        if not isinstance(stream, ForwardOnlyReader) and not (hasattr(stream, "seekable") and stream.seekable()):
            stream = ForwardOnlyReader(stream)  # tell() and seek(0) at the start, as the upload asks
        cleaned = clean_name(name)
        key = backend._normalize_name(cleaned)
        blob = backend.bucket.blob(key, chunk_size=backend.blob_chunk_size)
        params = backend.get_object_parameters(key)
        acl = params.pop("acl", backend.default_acl)
        content_type = params.pop("content_type", None) or "application/octet-stream"
        for prop, value in params.items():
            setattr(blob, prop, value)
        waits = self._waits(backend, f"write {cleaned}")
        blob.upload_from_file(stream, content_type=content_type, predefined_acl=acl, **waits)
        return cleaned

    #: The bucket answered a listing once: a 404 for an object is then an object that is not there.
    _bucket_found = False

    def _absent(self, backend, name: str) -> FileNotFoundError:
        """After a 404 for ``name``: FileNotFoundError, once a listing shows the bucket is there.

        google-cloud-storage's ``get_blob`` answers None for any 404, a bucket that does not exist too (a
        check said "not there" and a read "not in the bucket"); a listing (storage.objects.list, which the
        documented role has) fails with the bucket's own NotFound, which says so."""
        if not self._bucket_found:
            list(backend.bucket.list_blobs(max_results=1, **self._waits(backend, "list the bucket")))
            self._bucket_found = True
        return FileNotFoundError(f"{name} is not in the bucket")

    def exists(self, backend, name: str) -> bool:
        if not name:
            return backend.bucket.exists(**self._waits(backend, "read the bucket"))
        if backend.bucket.get_blob(self._key(backend, name), **self._waits(backend, f"read {name}")) is not None:
            return True
        self._absent(backend, name)
        return False

    def delete(self, backend, name: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            backend.bucket.delete_blob(self._key(backend, name), **self._waits(backend, f"delete {name}"))
        except NotFound:
            pass

    def _blob(self, backend, name: str):
        """The object's metadata (one GET), or FileNotFoundError."""
        blob = backend.bucket.get_blob(self._key(backend, name), **self._waits(backend, f"read {name}"))
        if blob is None:
            raise self._absent(backend, name)
        return blob

    def size(self, backend, name: str) -> int:
        return self._blob(backend, name).size

    def get_modified_time(self, backend, name: str):
        """GoogleCloudStorage.get_modified_time reads the metadata with the library's defaults (60 s, two
        minutes of silent retries): here with ours, as every other request."""
        from django.conf import settings
        from django.utils import timezone

        updated = self._blob(backend, name).updated
        return updated if settings.USE_TZ else timezone.make_naive(updated)

    def _list(self, backend, path: str):
        prefix = self._key(backend, path)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        pages = backend.bucket.list_blobs(prefix=prefix, delimiter="/", **self._waits(backend, f"list {path}".rstrip()))
        blobs = list(pages)
        return prefix, blobs, pages.prefixes

    def listdir(self, backend, path: str) -> tuple[list[str], list[str]]:
        prefix, blobs, folders = self._list(backend, path)
        files = [blob.name[len(prefix) :] for blob in blobs if blob.name != prefix]
        return [folder[len(prefix) :].rstrip("/") for folder in folders], files

    def list_sizes(self, backend, path: str) -> dict[str, int | None]:
        """One list request per 1,000 names, sizes included."""
        prefix, blobs, _folders = self._list(backend, path)
        return {blob.name[len(prefix) :]: blob.size for blob in blobs if blob.name != prefix}

    def open(self, backend, name: str) -> BinaryIO:
        waits = self._waits(backend, f"read {name}")
        blob = backend.bucket.get_blob(self._key(backend, name), **waits)
        if blob is None:
            raise self._absent(backend, name)
        return blob.open("rb", chunk_size=READ_CHUNK, raw_download=True, **waits)

    def read_bytes(self, backend, name: str) -> bytes:
        """One GET (``open`` asks for the object's metadata first)."""
        from google.api_core.exceptions import NotFound

        blob = backend.bucket.blob(self._key(backend, name))
        try:
            return blob.download_as_bytes(raw_download=True, **self._waits(backend, f"read {name}"))
        except NotFound:
            raise self._absent(backend, name) from None

    def explain(self, backend, err: BaseException, action: str, name: str) -> str | None:
        import requests
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        if isinstance(err, auth_exc.DefaultCredentialsError):
            return (
                "no Google credentials found; set GOOGLE_APPLICATION_CREDENTIALS to a service account key file "
                "(or run on a machine with a service account)"
            )
        if isinstance(err, auth_exc.RefreshError | gexc.Unauthorized):
            return f"the Google credentials were rejected ({first_line(err)}); check the service account key"
        if isinstance(err, gexc.NotFound) and "bucket" in str(err).lower():
            return f"bucket {backend.bucket_name!r} does not exist; create it or fix bucket_name in {OPTIONS_HINT}"
        if isinstance(err, gexc.Forbidden):
            return (
                f"access denied to {action} {name or 'the bucket'} ({first_line(err)}); the service account "
                "needs storage.objects.list, get, create and delete on the bucket (see docs/storage/gcs.md)"
            )
        # A request the server stopped reading (an upload's chunk) times out in the send, which requests
        # reports as the connection aborted: the server did not answer either.
        stalled = isinstance(err, requests.exceptions.ConnectionError) and unreachable(err) == "timed out"
        if isinstance(err, gexc.RetryError) or isinstance(err, requests.exceptions.Timeout) or stalled:
            tries = getattr(err, "backup_app_tries", None)
            within = f"{tries} tries" if tries else f"retried for {storage_deadline():.0f} s"
            cause = err.cause if isinstance(err, gexc.RetryError) and err.cause is not None else err
            return (
                f"Google Cloud Storage did not answer within {app_settings.storage_timeout} s, {within} "
                f"({first_line(cause)}); check the network (or STORAGE_EMULATOR_HOST), or raise "
                f"{app_settings.env_name('backup_storage_timeout')}"
            )
        reason = unreachable(err)
        if reason is None and isinstance(err, requests.exceptions.ConnectionError | ConnectionError):
            reason = "connection failed"
        if reason:
            return f"cannot reach Google Cloud Storage ({reason}); check the network (or STORAGE_EMULATOR_HOST)"
        return super().explain(backend, err, action, name)
