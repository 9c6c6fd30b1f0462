"""Dropbox (``storages.backends.dropbox.DropboxStorage``)."""

from __future__ import annotations

from typing import BinaryIO

from django.core.files import File

from ..settings import app_settings
from ..streams import CallbackReader, ForwardOnlyReader
from .base import OPTIONS_HINT, Adapter, dropped, first_line, tries_said, unreachable

#: Bytes per request of an upload session.
DROPBOX_CHUNK = 8 * 1024 * 1024


def tags(error) -> str:
    """The tags of a Dropbox route error, outermost first (``path/not_found``, ``path/restricted_content``)."""
    parts = []
    while error is not None and getattr(error, "_tag", None) is not None:
        parts.append(error._tag)
        error = getattr(error, "_value", None)
    return "/".join(parts)


def not_found(err: BaseException) -> bool:
    """``err`` is Dropbox saying the path is not there: a route error ``path/not_found`` (metadata, listing,
    download) or ``path_lookup/not_found`` (delete), and nothing else."""
    from dropbox.exceptions import ApiError

    return isinstance(err, ApiError) and tags(err.error) in ("path/not_found", "path_lookup/not_found")


class DropboxAdapter(Adapter):
    """``storages.backends.dropbox.DropboxStorage``: upload sessions fed from the stream, streamed downloads.

    The stock ``_save`` needs the size up front and its file reads the whole
    download into memory; both are replaced here.
    """

    label = "Dropbox"
    #: The Dropbox SDK retries 5xx answers silently (4 times, up to 16 s apart) and 429 without end, and a
    #: time-out not at all: the app retries all three instead (:meth:`transient`), each said on a line.
    retries_here = True

    def prepare(self, options: dict) -> dict:
        """Each request gives up after backup_storage_timeout seconds of silence (DropboxStorage's default:
        100 s); a ``timeout`` given in ``backup_options`` wins."""
        options = dict(options)
        options.setdefault("timeout", app_settings.storage_timeout)
        return options

    def ready(self, backend) -> None:
        client = backend.client
        client._max_retries_on_error = 0  # RemoteStorage retries (see retries_here)
        client._max_retries_on_rate_limit = 0

    def transient(self, err: BaseException) -> bool:
        import requests
        from dropbox.exceptions import InternalServerError, RateLimitError

        if isinstance(err, InternalServerError | RateLimitError | requests.exceptions.Timeout):
            return True
        # A connection the server dropped or left silent; not a refused one, nor a host name not found.
        broken = isinstance(err, requests.exceptions.ConnectionError)
        return broken and (dropped(err) or unreachable(err) == "timed out")

    def describe(self, backend) -> str:
        return f"Dropbox {backend.root_path or '/'}"

    # "Is it there?" and "what is in this folder?" tell absent from an error: DropboxStorage.exists answered
    # False for any route error (a path Dropbox refuses, a locked file, …), and its listdir read one page.

    def exists(self, backend, name: str) -> bool:
        try:
            backend.client.files_get_metadata(backend._full_path(name))
        except Exception as err:
            if not_found(err):
                return False
            raise
        return True

    def size(self, backend, name: str) -> int:
        try:
            return backend.client.files_get_metadata(backend._full_path(name)).size
        except Exception as err:
            if not_found(err):
                raise FileNotFoundError(f"{name} is not in Dropbox") from None
            raise

    def delete(self, backend, name: str) -> None:
        """Only a file Dropbox says is not there counts as deleted (the stock backend's v1 delete raised for
        it too)."""
        try:
            backend.client.files_delete_v2(backend._full_path(name))
        except Exception as err:
            if not not_found(err):
                raise

    def _entries(self, backend, path: str) -> list:
        """Every entry of the folder, over as many pages as Dropbox gives it in (``has_more``)."""
        from dropbox.files import FolderMetadata

        full = backend._full_path(path)
        client = backend.client
        try:
            page = client.files_list_folder("" if full == "/" else full)
        except Exception as err:
            if not_found(err):
                raise FileNotFoundError(f"{path or 'the folder'} is not in Dropbox") from None
            raise
        entries = list(page.entries)
        while page.has_more:
            page = client.files_list_folder_continue(page.cursor)
            entries.extend(page.entries)
        return [(entry, isinstance(entry, FolderMetadata)) for entry in entries]

    def listdir(self, backend, path: str) -> tuple[list[str], list[str]]:
        entries = self._entries(backend, path)
        return [e.name for e, folder in entries if folder], [e.name for e, folder in entries if not folder]

    def list_sizes(self, backend, path: str) -> dict[str, int | None]:
        """The listing gives each file's size: no request per file."""
        return {e.name: getattr(e, "size", None) for e, folder in self._entries(backend, path) if not folder}

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
            if not_found(err):
                raise FileNotFoundError(f"{name} is not in Dropbox") from None
            raise
        return CallbackReader(response.raw.read, on_close=response.close)

    def explain(self, backend, err: BaseException, action: str, name: str) -> str | None:
        import requests
        from dropbox.exceptions import ApiError, AuthError, HttpError, InternalServerError, RateLimitError

        what = name or "the folder"
        if isinstance(err, AuthError):
            if tags(err.error) == "missing_scope":
                return (
                    f"Dropbox refused to {action} {what} (missing_scope); the app needs the scopes "
                    "files.metadata.read, files.content.read and files.content.write (see docs/storage/dropbox.md)"
                )
            return (
                f"Dropbox rejected the token ({tags(err.error) or first_line(err)}); create a new one "
                f"(oauth2_access_token, or app_key + app_secret + oauth2_refresh_token) in {OPTIONS_HINT}"
            )
        if isinstance(err, ApiError):
            return (
                f"Dropbox refused to {action} {what} ({tags(err.error) or first_line(err)}); check root_path in "
                f"{OPTIONS_HINT} and that the app may read, write and delete there"
            )
        if isinstance(err, RateLimitError):
            return f"Dropbox kept refusing for now (too many requests, {tries_said(err)}); try again later"
        if isinstance(err, InternalServerError | HttpError):
            return (
                f"Dropbox answered HTTP {err.status_code} to {action} {what}, {tries_said(err)}; try again later "
                "(see status.dropbox.com)"
            )
        timed_out = unreachable(err) == "timed out" or isinstance(err, requests.exceptions.Timeout)
        if timed_out:
            return (
                f"Dropbox did not answer within {app_settings.storage_timeout} s, {tries_said(err)}; check the "
                f"network, or raise {app_settings.env_name('backup_storage_timeout')}"
            )
        if isinstance(err, requests.exceptions.ConnectionError):
            return f"cannot reach Dropbox ({first_line(err)}), {tries_said(err)}; check the network"
        return super().explain(backend, err, action, name)
