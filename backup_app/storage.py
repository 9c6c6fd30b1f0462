"""The backup storage: the configured django-storages backend, or a local folder for ``--path``.

A remote backend is wrapped in :class:`RemoteStorage`, which gives every one of
them the three promises the rest of the app relies on:

- ``save`` takes the pipeline's forward-only stream (the read end of a pipe)
  and uploads it in bounded chunks as it is produced: the backend never seeks,
  never asks for the size, never buffers the whole file;
- ``open`` returns a stream that downloads as it is read (ranged requests or
  the protocol's own streaming), not the whole object in memory or a temp file;
- a failure the user has to fix (credentials, bucket, host, permission) is a
  :class:`RemoteStorageError` whose one line says what is wrong and what to do.

What differs per backend is a small :class:`Adapter`: how its options are
prepared, how it streams in and out, and how its errors read.
"""

from __future__ import annotations

import errno
import ftplib
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO

from django.core.files import File
from django.core.files.storage import FileSystemStorage

from .conf import FILESYSTEM_STORAGES, import_storage_class
from .errors import StorageUnavailable
from .secrets import redact
from .settings import app_settings
from .streams import CallbackReader, ForwardOnlyReader, RangedReader, StreamFile, buffered

#: Bytes fetched per ranged request when reading, and per part when uploading in parts.
READ_CHUNK = 8 * 1024 * 1024
S3_PART = 8 * 1024 * 1024
GCS_UPLOAD_CHUNK = 16 * 1024 * 1024  # a multiple of 256 KiB, as GCS requires
DROPBOX_CHUNK = 8 * 1024 * 1024

OPTIONS_HINT = "backup_options (INVENTREE_BACKUP_OPTIONS)"


class RemoteStorageError(StorageUnavailable):
    """The remote backup storage refused or could not be reached; the message says what to do."""


def backup_storage(path: str | None = None):
    """A Django storage for backup files.

    ``path`` (``--path DIR``) is a local folder used instead of the configured
    storage; files keep their template names inside it.  A remote backend comes
    wrapped in :class:`RemoteStorage`.  Raises :class:`StorageUnavailable` when
    the backend cannot be built from its options.
    """
    if path:
        return FileSystemStorage(location=str(path), file_permissions_mode=0o600, directory_permissions_mode=0o700)
    return build_storage(app_settings.storage_backend, app_settings.storage_options)


def build_storage(path: str, options: dict):
    """Instantiate the storage class ``path`` with ``options`` (keys as in ``backup_options``)."""
    cls = import_storage_class(path)
    options = {str(k).lower(): v for k, v in options.items()}
    if path in FILESYSTEM_STORAGES or issubclass(cls, FileSystemStorage):
        try:
            return cls(**options)
        except Exception as err:
            raise StorageUnavailable(
                f"backup_storage {path}: cannot be set up ({redact(err)}); check {OPTIONS_HINT}"
            ) from None
    adapter = adapter_for(cls)
    try:
        backend = cls(**adapter.prepare(options))
    except RemoteStorageError:
        raise
    except Exception as err:
        raise StorageUnavailable(
            f"backup_storage {path}: cannot be set up ({redact(err)}); check {OPTIONS_HINT}"
        ) from None
    return RemoteStorage(backend, adapter)


def describe(storage) -> str:
    """A short, password-free description of where backups go, for progress output."""
    if isinstance(storage, RemoteStorage):
        return storage.description
    location = getattr(storage, "location", None) or getattr(storage, "bucket_name", None) or ""
    return f"{type(storage).__name__}({location})" if location else type(storage).__name__


# --- the wrapper ------------------------------------------------------------------------------


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


# --- adapters ---------------------------------------------------------------------------------


def _unreachable(err: BaseException) -> str | None:
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


class Adapter:
    """How one family of storage classes is built, streamed to and from, and explained.

    The default streams uploads through the backend's own ``save`` (given a
    forward-only file) and reads through its ``open``.
    """

    label = "storage"

    def prepare(self, options: dict) -> dict:
        """Options as given in ``backup_options`` -> keyword arguments of the class."""
        return options

    def describe(self, backend) -> str:
        location = getattr(backend, "location", "") or ""
        return f"{type(backend).__name__}({location})" if location else type(backend).__name__

    def ready(self, backend) -> None:
        """Called before every operation (e.g. to create a folder the backend needs to exist)."""

    def listdir(self, backend, path: str) -> tuple[list[str], list[str]]:
        return backend.listdir(path)

    def save(self, backend, name: str, content) -> str:
        stream = content.file if isinstance(content, File) else content
        if hasattr(stream, "seekable") and stream.seekable():
            return backend.save(name, content)
        return backend.save(name, StreamFile(stream, name))

    def open(self, backend, name: str) -> BinaryIO:
        return backend.open(name, "rb")

    def explain(self, backend, err: BaseException, action: str, name: str) -> str | None:
        """One line (what, why, what to do) for an error the user must fix, or None to let it through."""
        reason = _unreachable(err)
        if reason:
            return f"cannot reach the server ({reason}); check the host in {OPTIONS_HINT} and the network"
        if isinstance(err, PermissionError):
            return f"permission denied to {action} {name or 'the folder'} ({err}); {self.permission_hint(action)}"
        return None

    def permission_hint(self, action: str) -> str:
        return "give the account read, write, list and delete rights on the backup location"


class S3Adapter(Adapter):
    """``storages.backends.s3.S3Storage``: multipart uploads, ranged GETs, botocore retries."""

    label = "S3"
    PERMISSION = {
        "list": "s3:ListBucket on the bucket",
        "read": "s3:GetObject on the objects",
        "write": "s3:PutObject on the objects",
        "delete": "s3:DeleteObject on the objects",
    }

    def prepare(self, options: dict) -> dict:
        from botocore.config import Config

        options = dict(options)
        # Stored bytes are opaque: no Content-Encoding: gzip guessed from ".gz" for clients to undo.
        params = dict(options.get("object_parameters") or {})
        params.setdefault("ContentType", "application/octet-stream")
        options["object_parameters"] = params
        client = options.get("client_config")
        if isinstance(client, dict):
            # JSON/YAML cannot carry a botocore Config: build it, keeping what S3Storage would set.
            base = Config(
                s3={"addressing_style": options.get("addressing_style")},
                signature_version=options.get("signature_version"),
                proxies=options.get("proxies"),
            )
            options["client_config"] = base.merge(Config(**client))
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
                raise FileNotFoundError(f"{name} is not in the bucket") from None
            raise

        def fetch(start: int, end: int) -> bytes:
            body = client.get_object(Bucket=backend.bucket_name, Key=key, Range=f"bytes={start}-{end}")["Body"]
            with body:
                return body.read()

        return buffered(RangedReader(fetch, size, READ_CHUNK))

    def explain(self, backend, err: BaseException, action: str, name: str) -> str | None:
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
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


class SFTPAdapter(Adapter):
    """``storages.backends.sftpstorage.SFTPStorage``: pipelined writes, windowed reads over one SSH session."""

    label = "SFTP"
    WINDOW = 32  # read requests of 32 KiB in flight: 1 MiB per round trip

    def prepare(self, options: dict) -> dict:
        options = dict(options)
        # Backups are the most sensitive copy of a site's data: owner-only unless asked otherwise.
        options.setdefault("file_mode", 0o600)
        options.setdefault("dir_mode", 0o700)
        return options

    def describe(self, backend) -> str:
        params = backend.params or {}
        user = f"{params['username']}@" if params.get("username") else ""
        port = f":{params['port']}" if params.get("port") else ""
        return f"SFTP {user}{backend.host}{port}:{backend.root_path or '.'}"

    def open(self, backend, name: str) -> BinaryIO:
        remote = backend.sftp.open(backend._remote_path(name), "rb")
        size = remote.stat().st_size
        window = self.WINDOW * 32768

        def fetch(start: int, end: int) -> bytes:
            # readv pipelines the requests of one window instead of one round trip per 32 KiB.
            wanted = []
            offset = start
            while offset <= end:
                length = min(32768, end + 1 - offset)
                wanted.append((offset, length))
                offset += length
            return b"".join(remote.readv(wanted))

        return buffered(RangedReader(fetch, size, window, on_close=remote.close))

    def explain(self, backend, err: BaseException, action: str, name: str) -> str | None:
        import paramiko

        if isinstance(err, paramiko.BadHostKeyException):
            return (
                f"the server's host key does not match the one in known_host_file ({err}); if the server was "
                "re-keyed on purpose, update that file, otherwise do not connect"
            )
        if isinstance(err, paramiko.AuthenticationException):
            return (
                f"the SSH login was refused ({err}); check username and key_filename (or password) under "
                f"params in {OPTIONS_HINT}, and that the key is in the account's authorized_keys"
            )
        if isinstance(err, paramiko.ssh_exception.NoValidConnectionsError):
            return f"cannot reach the SSH server ({err}); check host and params.port in {OPTIONS_HINT}"
        if isinstance(err, paramiko.SSHException) and not isinstance(err, paramiko.ChannelException):
            return f"the SSH connection failed ({err}); check host and params.port in {OPTIONS_HINT}"
        return super().explain(backend, err, action, name)

    def permission_hint(self, action: str) -> str:
        return "the SSH user needs to create, read, list and delete files in the root_path folder (backup_dir)"


class FTPAdapter(Adapter):
    """``storages.backends.ftp.FTPStorage``: STOR from the stream, RETR streamed on its own connection."""

    label = "FTP"

    def __init__(self):
        self._folder_ready = False

    def describe(self, backend) -> str:
        c = backend._config
        scheme = "ftps" if c["secure"] else "ftp"
        return f"FTP {scheme}://{c['user']}@{c['host']}:{c['port']}/{c['path'].lstrip('/')}"

    def _connect(self, backend, cwd: bool = True) -> ftplib.FTP:
        c = backend._config
        conn = ftplib.FTP_TLS() if c["secure"] else ftplib.FTP()
        conn.encoding = backend.encoding
        conn.connect(c["host"], c["port"], timeout=60)
        conn.login(c["user"], c["passwd"])
        if c["secure"]:
            conn.prot_p()
        if c["active"]:
            conn.set_pasv(False)
        if cwd and c["path"] not in ("", "/"):
            conn.cwd(c["path"])
        return conn

    def ready(self, backend) -> None:
        """Create the backup folder (``path`` of ``location``) once: FTPStorage only changes into it."""
        if self._folder_ready:
            return
        conn = self._connect(backend, cwd=False)
        try:
            path = backend._config["path"]
            if path.startswith("/"):
                conn.cwd("/")
            for part in [p for p in path.split("/") if p]:
                try:
                    conn.cwd(part)
                except ftplib.error_perm:
                    conn.mkd(part)
                    conn.cwd(part)
        finally:
            with suppress(Exception):
                conn.quit()
        self._folder_ready = True

    def open(self, backend, name: str) -> BinaryIO:
        conn = self._connect(backend)
        try:
            conn.voidcmd("TYPE I")
            sock = conn.transfercmd("RETR " + name)
        except ftplib.error_perm as err:
            with suppress(Exception):
                conn.close()
            if str(err).startswith("550"):
                raise FileNotFoundError(f"{name}: {err}") from None
            raise
        data = sock.makefile("rb")

        def finish() -> None:
            """Finish the transfer and the control connection."""
            with suppress(Exception):
                data.close()
                sock.close()
                conn.voidresp()
            with suppress(Exception):
                conn.quit()

        return CallbackReader(readinto=data.readinto, on_close=finish)

    def explain(self, backend, err: BaseException, action: str, name: str) -> str | None:
        cause = err
        # FTPStorage hides the ftplib error (and prints the password) in its own exception.
        if type(err).__name__ == "FTPStorageException" and err.__context__ is not None:
            cause = err.__context__
        reason = _unreachable(cause)
        if reason:
            return f"cannot reach the FTP server ({reason}); check host and port of location in {OPTIONS_HINT}"
        text = " ".join(str(cause).split())
        if isinstance(cause, ftplib.error_perm) and text.startswith("530"):
            return f"the FTP login was refused ({text}); check user and password in location in {OPTIONS_HINT}"
        if isinstance(cause, ftplib.error_perm) and text.startswith(("550", "553")):
            return (
                f"the FTP server refused to {action} {name or 'the folder'} ({text}); the FTP user needs to "
                "create, read, list and delete files in the folder of location"
            )
        if type(err).__name__ == "FTPStorageException":
            return f"FTP {action} {name} failed ({text}); check location in {OPTIONS_HINT}"
        return super().explain(backend, cause, action, name)


class GCSAdapter(Adapter):
    """``storages.backends.gcloud.GoogleCloudStorage``: resumable uploads in chunks, ranged reads."""

    label = "Google Cloud Storage"

    def prepare(self, options: dict) -> dict:
        options = dict(options)
        # A resumable upload holds one chunk in memory (the library's default is 100 MiB).
        options.setdefault("blob_chunk_size", GCS_UPLOAD_CHUNK)
        # Stored bytes must come back as they were: no Content-Encoding: gzip on .gz files, which GCS
        # would otherwise decompress on download (and the checksums would not match).
        params = dict(options.get("object_parameters") or {})
        params.setdefault("content_type", "application/octet-stream")
        params.setdefault("content_encoding", None)
        options["object_parameters"] = params
        return options

    def describe(self, backend) -> str:
        return f"Google Cloud Storage gs://{backend.bucket_name}/{backend.location}".rstrip("/")

    def open(self, backend, name: str) -> BinaryIO:
        from storages.utils import clean_name

        blob = backend.bucket.get_blob(backend._normalize_name(clean_name(name)))
        if blob is None:
            raise FileNotFoundError(f"{name} is not in the bucket")
        return blob.open("rb", chunk_size=READ_CHUNK, raw_download=True)

    def explain(self, backend, err: BaseException, action: str, name: str) -> str | None:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        if isinstance(err, auth_exc.DefaultCredentialsError):
            return (
                "no Google credentials found; set GOOGLE_APPLICATION_CREDENTIALS to a service account key file "
                "(or run on a machine with a service account)"
            )
        if isinstance(err, auth_exc.RefreshError | gexc.Unauthorized):
            return f"the Google credentials were rejected ({_first_line(err)}); check the service account key"
        if isinstance(err, gexc.NotFound) and "bucket" in str(err).lower():
            return f"bucket {backend.bucket_name!r} does not exist; create it or fix bucket_name in {OPTIONS_HINT}"
        if isinstance(err, gexc.Forbidden):
            return (
                f"access denied to {action} {name or 'the bucket'} ({_first_line(err)}); the service account "
                "needs storage.objects.list, get, create and delete on the bucket (see docs/storage/gcs.md)"
            )
        reason = _unreachable(err)
        if reason is None and type(err).__name__ == "ConnectionError":
            reason = "connection failed"
        if reason:
            return f"cannot reach Google Cloud Storage ({reason}); check the network (or STORAGE_EMULATOR_HOST)"
        return super().explain(backend, err, action, name)


class AzureAdapter(Adapter):
    """``storages.backends.azure_storage.AzureStorage``: block uploads from the stream, chunked downloads."""

    label = "Azure Blob Storage"

    def prepare(self, options: dict) -> dict:
        options = dict(options)
        # No Content-Encoding: gzip guessed from ".gz": the SDK would decompress such blobs on download.
        params = dict(options.get("object_parameters") or {})
        params.setdefault("content_type", "application/octet-stream")
        params.setdefault("content_encoding", None)
        options["object_parameters"] = params
        return options

    def describe(self, backend) -> str:
        account = backend.account_name or "connection string"
        where = f"{backend.azure_container}/{backend.location}".rstrip("/")
        return f"Azure Blob {account}/{where}"

    def listdir(self, backend, path: str) -> tuple[list[str], list[str]]:
        # The stock listdir lists the whole container, recursively, with full names; list one level.
        prefix = backend._get_valid_path(path) if path else (backend.location or "").strip("/")
        prefix = f"{prefix}/" if prefix else ""
        dirs, files = [], []
        for item in backend.client.walk_blobs(name_starts_with=prefix, delimiter="/", timeout=backend.timeout):
            name = item.name[len(prefix) :]
            if name.endswith("/"):
                dirs.append(name.rstrip("/"))
            elif name:
                files.append(name)
        return dirs, files

    def open(self, backend, name: str) -> BinaryIO:
        from azure.core.exceptions import ResourceNotFoundError

        blob = backend.client.get_blob_client(backend._get_valid_path(name))
        try:
            downloader = blob.download_blob(max_concurrency=1, decompress=False, timeout=backend.timeout)
        except ResourceNotFoundError:
            raise FileNotFoundError(f"{name} is not in the container") from None
        return buffered(CallbackReader(downloader.read))

    def explain(self, backend, err: BaseException, action: str, name: str) -> str | None:
        from azure.core import exceptions as aexc

        code = getattr(err, "error_code", None) or ""
        code = str(getattr(code, "value", code))
        if (
            isinstance(err, aexc.ClientAuthenticationError)
            and code != "AuthorizationFailure"
            or code
            in (
                "AuthenticationFailed",
                "InvalidAuthenticationInfo",
            )
        ):
            return (
                f"the credentials were rejected ({code or _first_line(err)}); check account_key, sas_token or "
                f"connection_string in {OPTIONS_HINT}"
            )
        if code == "ContainerNotFound":
            return (
                f"container {backend.azure_container!r} does not exist; create it or fix azure_container in "
                f"{OPTIONS_HINT}"
            )
        if code == "AuthorizationFailure":
            # Azure says this for a SAS or network rule that does not allow the request, Azurite for a bad key.
            return (
                f"the request to {action} {name or 'the container'} was not authorized ({code}); check "
                f"account_key, sas_token or connection_string in {OPTIONS_HINT}, and that the key or SAS "
                "allows read, write, delete and list on the container"
            )
        if code.startswith("AuthorizationPermission") or (
            isinstance(err, aexc.HttpResponseError) and getattr(err, "status_code", None) == 403
        ):
            return (
                f"access denied to {action} {name or 'the container'} ({code or 403}); the account or SAS needs "
                "read, write, delete and list on the container (see docs/storage/azure.md)"
            )
        if isinstance(err, aexc.ServiceRequestError):
            return f"cannot reach the Azure endpoint ({_first_line(err)}); check the account / endpoint and network"
        return super().explain(backend, err, action, name)


class DropboxAdapter(Adapter):
    """``storages.backends.dropbox.DropboxStorage``: upload sessions fed from the stream, streamed downloads.

    The stock ``_save`` needs the size up front and its file reads the whole
    download into memory; both are replaced here.
    """

    label = "Dropbox"

    def describe(self, backend) -> str:
        return f"Dropbox {backend.root_path or '/'}"

    def save(self, backend, name: str, content) -> str:
        from dropbox.files import CommitInfo, UploadSessionCursor, WriteMode

        stream = ForwardOnlyReader(content.file if isinstance(content, File) else content)
        path = backend._full_path(name)
        client = backend.client
        chunk = stream.read(DROPBOX_CHUNK)
        session = client.files_upload_session_start(chunk)
        cursor = UploadSessionCursor(session_id=session.session_id, offset=len(chunk))
        while True:
            chunk = stream.read(DROPBOX_CHUNK)
            if not chunk:
                break
            client.files_upload_session_append_v2(chunk, cursor)
            cursor.offset += len(chunk)
        client.files_upload_session_finish(b"", cursor, CommitInfo(path=path, mode=WriteMode(backend.write_mode)))
        return name

    def open(self, backend, name: str) -> BinaryIO:
        from dropbox.exceptions import ApiError

        try:
            _meta, response = backend.client.files_download(backend._full_path(name))
        except ApiError as err:
            if "not_found" in str(err):
                raise FileNotFoundError(f"{name} is not in Dropbox") from None
            raise
        return CallbackReader(response.raw.read, on_close=response.close)

    def explain(self, backend, err: BaseException, action: str, name: str) -> str | None:
        kind = type(err).__name__
        if kind == "AuthError":
            return (
                f"Dropbox rejected the token ({_first_line(err)}); create a new one (oauth2_access_token, or "
                f"app_key + app_secret + oauth2_refresh_token) in {OPTIONS_HINT}"
            )
        if kind == "ApiError" and "insufficient" in str(err):
            return f"Dropbox refused to {action} {name} ({_first_line(err)}); the app needs files.content.write/read"
        return super().explain(backend, err, action, name)


def _first_line(err: BaseException) -> str:
    return redact(str(err).splitlines()[0] if str(err) else type(err).__name__)


#: Storage module -> adapter class; a class not named here gets the default :class:`Adapter`.
ADAPTERS: dict[str, type[Adapter]] = {
    "storages.backends.s3": S3Adapter,
    "storages.backends.s3boto3": S3Adapter,
    "storages.backends.sftpstorage": SFTPAdapter,
    "storages.backends.ftp": FTPAdapter,
    "storages.backends.gcloud": GCSAdapter,
    "storages.backends.azure_storage": AzureAdapter,
    "storages.backends.dropbox": DropboxAdapter,
}


def adapter_for(cls: type) -> Adapter:
    """The adapter of a storage class (by the module of the class or of a django-storages base)."""
    for klass in cls.__mro__:
        adapter = ADAPTERS.get(klass.__module__)
        if adapter is not None:
            return adapter()
    return Adapter()


__all__ = [
    "RemoteStorage",
    "RemoteStorageError",
    "StreamFile",
    "backup_storage",
    "build_storage",
    "describe",
]
