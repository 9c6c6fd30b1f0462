"""Amazon S3 and S3-compatible stores (``storages.backends.s3.S3Storage``)."""

from __future__ import annotations

import logging
from typing import BinaryIO

from ..settings import app_settings
from ..streams import RangedReader, buffered
from .base import OPTIONS_HINT, READ_CHUNK, Adapter, first_line, unreachable

logger = logging.getLogger("backup_app")

#: Bytes per part of a multipart upload.
S3_PART = 8 * 1024 * 1024
#: Answers botocore tries again (besides timeouts and broken connections).
RETRIED_STATUS = (429, 500, 502, 503, 504)


class S3Adapter(Adapter):
    """``storages.backends.s3.S3Storage``: multipart uploads, ranged GETs, botocore retries."""

    label = "S3"
    PERMISSION = {
        "list": "s3:ListBucket on the bucket",
        "read": "s3:GetObject on the objects",
        "write": "s3:PutObject on the objects",
        "delete": "s3:DeleteObject and s3:AbortMultipartUpload on the objects, s3:ListBucketMultipartUploads on "
        "the bucket",
    }

    object_parameters = {"ContentType": "application/octet-stream"}
    #: boto3 clients are thread-safe, and S3Storage keeps one connection per thread.
    read_workers = 8

    def prepare(self, options: dict) -> dict:
        from botocore.config import Config

        options = super().prepare(options)
        client = options.get("client_config")
        # Every request gives up after backup_storage_timeout seconds of silence and is tried again at most
        # backup_storage_retries times (botocore's default: 60 s, 4 or 5 tries, a silent endpoint held a backup
        # for many minutes); keys the user gave in client_config win.
        deadlines = Config(
            connect_timeout=app_settings.storage_timeout,
            read_timeout=app_settings.storage_timeout,
            retries={"total_max_attempts": app_settings.storage_retries + 1, "mode": "standard"},
        )
        if client is None or isinstance(client, dict):
            # JSON/YAML cannot carry a botocore Config: build it, keeping what S3Storage would set.
            base = Config(
                s3={"addressing_style": options.get("addressing_style")},
                signature_version=options.get("signature_version"),
                proxies=options.get("proxies"),
            )
            options["client_config"] = base.merge(deadlines).merge(Config(**(client or {})))
        else:
            options["client_config"] = deadlines.merge(client)
        transfer = options.get("transfer_config")
        if transfer is None or isinstance(transfer, dict):
            options["transfer_config"] = self.transfer_config(transfer or {}, options.get("use_threads", True))
        return options

    @staticmethod
    def transfer_config(given: dict, use_threads: bool = True):
        """boto3's TransferConfig: our defaults, then the keys given in ``transfer_config``.

        Each part of a non-seekable upload is held in memory (several copies, while
        it is checksummed and sent) until S3 has it: at most
        ``max_in_memory_upload_chunks`` parts.  8 MiB parts, two at a time, keep a
        backup process under ~140 MiB; they allow files up to 80 GB (S3 takes
        10,000 parts): raise ``multipart_chunksize`` for larger archives.
        """
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(use_threads=use_threads)
        settings = {
            "multipart_threshold": S3_PART,
            "multipart_chunksize": S3_PART,
            "max_concurrency": 2,
            "max_in_memory_upload_chunks": 2,
            **given,
        }
        for key, value in settings.items():
            if not hasattr(config, key):
                raise ValueError(f"transfer_config: unknown key {key!r}")
            setattr(config, key, value)  # TransferConfig keeps its aliases in step
        return config

    def ready(self, backend) -> None:
        """Say each retry of this thread's client on one line (botocore retries silently)."""
        client = backend.connection.meta.client
        description = self.describe(backend)
        retries = app_settings.storage_retries

        def note(attempts=None, response=None, caught_exception=None, operation=None, **kwargs):
            if caught_exception is not None and self.unresponsive:
                raise caught_exception  # the endpoint stopped answering before: no retry (see Adapter.unresponsive)
            if not attempts or attempts > retries:
                # The last try: its failure is the error.  An endpoint that did not answer it either is taken for
                # gone: what follows (s3transfer's abort of the upload, the run's clean-up) is tried once.
                if caught_exception is not None and self.unanswered(caught_exception):
                    self.unresponsive = True
                return None
            status = (response[1] or {}).get("ResponseMetadata", {}).get("HTTPStatusCode") if response else None
            if caught_exception is not None:
                why = first_line(caught_exception)
            elif status in RETRIED_STATUS:
                why = f"HTTP {status}"
            else:
                return None
            what = getattr(operation, "name", "request")
            logger.warning("%s: %s failed (%s); retrying (%d/%d)", description, what, why, attempts, retries)
            return None

        client.meta.events.register_first("needs-retry.s3", note, unique_id="backup_app-retry-note")

    #: The bucket answered a listing once: a bare 404 to a HEAD is then a key that is not there.
    _bucket_found = False

    def _absent(self, backend, name: str) -> FileNotFoundError:
        """After a 404 to a HEAD for ``name``: FileNotFoundError, once a listing shows the bucket is there.

        A HEAD answer has no body, so a bucket that does not exist is the same bare 404 as a key that does
        not (S3Storage.exists answered False for it, and a read said "not in the bucket"); the listing's
        answer (``s3:ListBucket``, which the documented policy has) says NoSuchBucket."""
        if not self._bucket_found:
            backend.connection.meta.client.list_objects_v2(Bucket=backend.bucket_name, MaxKeys=1)
            self._bucket_found = True
        return FileNotFoundError(f"{name} is not in the bucket")

    def exists(self, backend, name: str) -> bool:
        if backend.exists(name):
            return True
        self._absent(backend, name)
        return False

    def size(self, backend, name: str) -> int:
        from botocore.exceptions import ClientError

        try:
            return backend.size(name)
        except FileNotFoundError:  # S3Storage's own, for a 404
            raise self._absent(backend, name) from None
        except ClientError as err:
            if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise self._absent(backend, name) from None
            raise

    def describe(self, backend) -> str:
        where = f"s3://{backend.bucket_name}/{backend.location}".rstrip("/")
        endpoint = getattr(backend, "endpoint_url", None)
        return f"S3 {where}" + (f" at {endpoint}" if endpoint else "")

    def open(self, backend, name: str) -> BinaryIO:
        from botocore.exceptions import ClientError
        from storages.utils import clean_name

        key = backend._normalize_name(clean_name(name))
        client = backend.connection.meta.client
        try:
            size = client.head_object(Bucket=backend.bucket_name, Key=key)["ContentLength"]
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise self._absent(backend, name) from None
            raise

        def fetch(start: int, end: int) -> bytes:
            body = client.get_object(Bucket=backend.bucket_name, Key=key, Range=f"bytes={start}-{end}")["Body"]
            with body:
                return body.read()

        return buffered(RangedReader(fetch, size, READ_CHUNK))

    def list_sizes(self, backend, path: str) -> dict[str, int | None]:
        """One ListObjects request per 1,000 keys, sizes included (S3Storage.listdir drops them)."""
        from storages.utils import clean_name

        prefix = backend._normalize_name(clean_name(path))
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        client = backend.connection.meta.client
        found: dict[str, int | None] = {}
        for page in client.get_paginator("list_objects").paginate(
            Bucket=backend.bucket_name, Delimiter="/", Prefix=prefix
        ):
            for entry in page.get("Contents", ()):
                if entry["Key"] != prefix:
                    found[entry["Key"][len(prefix) :]] = entry["Size"]
        return found

    def abort_uploads(self, backend, keep: set[str]) -> list[str]:
        """Abort the multipart uploads directly under the backup prefix (a killed or cut-off backup leaves its
        parts there, stored and billed, for good) but those of the sets in ``keep``."""
        from storages.utils import clean_name

        from ..sets import Naming

        naming = Naming()
        prefix = backend._normalize_name(clean_name(""))
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        client = backend.connection.meta.client
        aborted = []
        pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=backend.bucket_name, Prefix=prefix)
        for page in pages:
            for upload in page.get("Uploads", ()):
                name = upload["Key"][len(prefix) :]
                parsed = naming.parse(name)
                if "/" in name or (parsed is not None and parsed.stamp in keep):
                    continue
                client.abort_multipart_upload(
                    Bucket=backend.bucket_name, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted.append(name)
        return aborted

    def read_bytes(self, backend, name: str) -> bytes:
        """One GET (``open`` asks the size first, for its ranged reads)."""
        from botocore.exceptions import ClientError
        from storages.utils import clean_name

        key = backend._normalize_name(clean_name(name))
        try:
            body = backend.connection.meta.client.get_object(Bucket=backend.bucket_name, Key=key)["Body"]
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"{name} is not in the bucket") from None
            raise
        with body:
            return body.read()

    def explain(self, backend, err: BaseException, action: str, name: str) -> str | None:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        # An upload whose endpoint stops reading: the send times out, which botocore reports as the
        # connection closed ("Connection was closed before we received a valid response").
        stalled = isinstance(err, ConnectionClosedError) and unreachable(err) == "timed out"
        if isinstance(err, ReadTimeoutError) or stalled:
            return (
                f"the S3 endpoint did not answer within {app_settings.storage_timeout} s, "
                f"{app_settings.storage_retries + 1} tries ({first_line(err)}); check endpoint_url in {OPTIONS_HINT} "
                f"and the network, or raise {app_settings.env_name('backup_storage_timeout')}"
            )
        if isinstance(err, ConnectionClosedError):
            return (
                f"the S3 endpoint closed the connection ({first_line(err)}), {app_settings.storage_retries + 1} "
                f"tries; check endpoint_url in {OPTIONS_HINT} and the network"
            )
        if isinstance(err, EndpointConnectionError | ConnectTimeoutError):
            return (
                f"cannot reach the S3 endpoint ({err}); check endpoint_url / region_name in {OPTIONS_HINT} "
                "and the network"
            )
        if isinstance(err, NoCredentialsError | PartialCredentialsError):
            return f"no S3 credentials found; set access_key and secret_key in {OPTIONS_HINT} (or AWS_* variables)"
        if isinstance(err, ClientError):
            error = err.response.get("Error", {})
            code = error.get("Code", "")
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AuthFailure"):
                return f"the credentials were rejected ({code}); check access_key and secret_key in {OPTIONS_HINT}"
            if code == "NoSuchBucket":
                return f"bucket {backend.bucket_name!r} does not exist; create it or fix bucket_name in {OPTIONS_HINT}"
            if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
                return (
                    f"access denied to {action} {name or 'the bucket'} ({code or status}); the key needs "
                    f"{self.PERMISSION.get(action, 's3 rights')} (see docs/storage/s3.md)"
                )
        return super().explain(backend, err, action, name)
