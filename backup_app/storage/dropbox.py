"""Dropbox (``storages.backends.dropbox.DropboxStorage``)."""

from __future__ import annotations

from typing import BinaryIO

from django.core.files import File

from ..streams import CallbackReader, ForwardOnlyReader
from .base import OPTIONS_HINT, Adapter, first_line

#: Bytes per request of an upload session.
DROPBOX_CHUNK = 8 * 1024 * 1024


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
        from dropbox.exceptions import ApiError, AuthError

        if isinstance(err, AuthError):
            return (
                f"Dropbox rejected the token ({first_line(err)}); create a new one (oauth2_access_token, or "
                f"app_key + app_secret + oauth2_refresh_token) in {OPTIONS_HINT}"
            )
        if isinstance(err, ApiError) and "insufficient" in str(err):
            return f"Dropbox refused to {action} {name} ({first_line(err)}); the app needs files.content.write/read"
        return super().explain(backend, err, action, name)
