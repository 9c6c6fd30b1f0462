"""Google Cloud Storage (``storages.backends.gcloud.GoogleCloudStorage``)."""

from __future__ import annotations

from typing import BinaryIO

from .base import OPTIONS_HINT, READ_CHUNK, Adapter, first_line, unreachable

GCS_UPLOAD_CHUNK = 16 * 1024 * 1024  # a multiple of 256 KiB, as GCS requires


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

    def open(self, backend, name: str) -> BinaryIO:
        from storages.utils import clean_name

        blob = backend.bucket.get_blob(backend._normalize_name(clean_name(name)))
        if blob is None:
            raise FileNotFoundError(f"{name} is not in the bucket")
        return blob.open("rb", chunk_size=READ_CHUNK, raw_download=True)

    def read_bytes(self, backend, name: str) -> bytes:
        """One GET (``open`` asks for the object's metadata first)."""
        from google.api_core.exceptions import NotFound
        from storages.utils import clean_name

        blob = backend.bucket.blob(backend._normalize_name(clean_name(name)))
        try:
            return blob.download_as_bytes(raw_download=True)
        except NotFound:
            raise FileNotFoundError(f"{name} is not in the bucket") from None

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
        reason = unreachable(err)
        if reason is None and isinstance(err, requests.exceptions.ConnectionError | ConnectionError):
            reason = "connection failed"
        if reason:
            return f"cannot reach Google Cloud Storage ({reason}); check the network (or STORAGE_EMULATOR_HOST)"
        return super().explain(backend, err, action, name)
