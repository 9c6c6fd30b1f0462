"""FTP and FTPS servers (``storages.backends.ftp.FTPStorage``)."""

from __future__ import annotations

import ftplib
import io
import posixpath
from contextlib import suppress
from typing import BinaryIO

from ..settings import app_settings
from ..streams import CallbackReader
from .base import OPTIONS_HINT, Adapter, dropped, tries_said, unreachable


class FTPAdapter(Adapter):
    """``storages.backends.ftp.FTPStorage``: STOR from the stream, RETR streamed on its own connection."""

    label = "FTP"
    #: A listing reads manifests over up to 8 logins at once: an ftplib connection serves one thread, so each
    #: reading thread has its own (one more per 4 manifests), kept for all its reads.
    read_workers = 8
    shared_client = False
    reads_per_connection = 4
    #: ftplib does not retry: a dropped, reset or silent connection, or a 4xx answer (421: too many
    #: connections), is tried again by RemoteStorage.
    retries_here = True

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
        conn.connect(c["host"], c["port"], timeout=app_settings.storage_timeout)  # data connections too
        conn.login(c["user"], c["passwd"])
        if c["secure"]:
            conn.prot_p()
        if c["active"]:
            conn.set_pasv(False)
        if cwd and c["path"] not in ("", "/"):
            conn.cwd(c["path"])
        return conn

    def ready(self, backend) -> None:
        """Create the backup folder (``path`` of ``location``) once: FTPStorage only changes into it.  Hand
        FTPStorage a connection of ours, with backup_storage_timeout (its own has none: a silent server would
        hold a save for good); it keeps using it while it answers."""
        self._make_folder(backend)
        if backend._connection is None:
            backend._connection = self._connect(backend)

    def _make_folder(self, backend) -> None:
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

    @staticmethod
    def _cause(err: BaseException) -> BaseException:
        """The ftplib error FTPStorage hid in its own exception (which prints the password)."""
        from storages.backends.ftp import FTPStorageException

        if isinstance(err, FTPStorageException) and err.__context__ is not None:
            return err.__context__
        return err

    def transient(self, err: BaseException) -> bool:
        cause = self._cause(err)
        if isinstance(cause, ftplib.error_temp):
            return True
        return dropped(cause) or isinstance(cause, TimeoutError)

    def reset(self, backend) -> None:
        self.close(backend)
        backend._connection = None

    def exists(self, backend, name: str) -> bool:
        """Whether the server lists ``name`` in its folder.  FTPStorage.exists answers False whenever
        allow_overwrite is on, and for a 4xx answer (a busy server) too."""
        folder, base = posixpath.split(name)
        try:
            listed = backend._connection.nlst(folder) if folder else backend._connection.nlst()
        except ftplib.error_perm as err:
            if str(err).startswith("550") and (_no_files(err) or not self._folder_there(backend, folder)):
                return False
            raise
        return name in listed or base in listed

    def _folder_there(self, backend, folder: str) -> bool:
        """After a 550 to listing ``folder``: whether its parent lists it.  FTP answers 550 both for "no such
        folder" and for a refusal ("Not enough privileges", "Permission denied"): only a folder its parent does
        not list is absent; the backup folder itself ('') always counts as there, so a refusal to list it is
        said, never read as an empty folder.  A refusal to list the parent raises."""
        if not folder:
            return True
        parent, base = posixpath.split(folder.rstrip("/"))
        try:
            listed = backend._connection.nlst(parent) if parent else backend._connection.nlst()
        except ftplib.error_perm as err:
            if str(err).startswith("550") and (_no_files(err) or not self._folder_there(backend, parent)):
                return False
            raise
        return base in listed or folder in listed or f"{parent}/{base}" in listed

    def delete(self, backend, name: str) -> None:
        """DELE ``name`` whatever allow_overwrite says (FTPStorage.delete deletes only what its exists() finds:
        with allow_overwrite, nothing, and a prune said it removed sets that were still there).  A 550 answer
        is a file already gone only when the server no longer lists it; otherwise the refusal stands."""
        try:
            backend._connection.delete(name)
        except ftplib.error_perm as err:
            if str(err).startswith("550") and not self.exists(backend, name):
                return
            raise

    def read_bytes(self, backend, name: str) -> bytes:
        """A small file over a connection that is open: the backend's own (its listing's), else one logged in
        for this backend's reads and kept (:meth:`open` needs one per file for its streamed transfer).  A
        connection the server dropped while idle is replaced once."""
        for attempt in (1, 2):
            conn = backend._connection or getattr(backend, "_backup_app_reader", None)
            if conn is None:
                conn = backend._backup_app_reader = self._connect(backend)
            data = io.BytesIO()
            try:
                conn.retrbinary("RETR " + name, data.write)
                return data.getvalue()
            except ftplib.error_perm as err:
                if str(err).startswith("550"):
                    raise FileNotFoundError(f"{name}: {err}") from None
                raise
            except (ftplib.error_temp, EOFError, OSError):
                if conn is backend._connection:
                    backend._connection = None  # FTPStorage logs in again when it needs to
                else:
                    backend._backup_app_reader = None
                with suppress(Exception):
                    conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self, backend) -> None:
        conn = getattr(backend, "_backup_app_reader", None)
        backend._backup_app_reader = None
        for connection in (conn, getattr(backend, "_connection", None)):
            if connection is not None:
                with suppress(Exception):
                    connection.quit()
                with suppress(Exception):
                    connection.close()

    def listdir(self, backend, path: str) -> tuple[list[str], list[str]]:
        """A folder that is not there (``media-packs`` before the first incremental set) is FileNotFoundError,
        as on the other backends; a 550 for a folder that is there (a refusal) stays an error."""
        from storages.backends.ftp import FTPStorageException

        try:
            return backend.listdir(path)
        except FTPStorageException as err:
            cause = err.__context__
            if isinstance(cause, ftplib.error_perm) and str(cause).startswith("550"):
                if not self._folder_there(backend, path):
                    raise FileNotFoundError(f"{path}: {cause}") from None
                if _no_files(cause):
                    return [], []
            raise

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
        from storages.backends.ftp import FTPStorageException

        cause = self._cause(err)
        tries = tries_said(err)
        if dropped(cause):
            return (
                f"the FTP server closed the connection ({type(cause).__name__}), {tries}; check host and port of "
                f"location in {OPTIONS_HINT}, the network, and the server's limit on connections"
            )
        reason = unreachable(cause)
        if reason == "timed out":
            return (
                f"the FTP server did not answer within {app_settings.storage_timeout} s, {tries}; check host "
                f"and port of location in {OPTIONS_HINT} and the network, or raise "
                f"{app_settings.env_name('backup_storage_timeout')}"
            )
        if isinstance(cause, ftplib.error_temp):
            text = " ".join(str(cause).split())
            return (
                f"the FTP server refused for now ({text}), {tries}; check the server's limit on connections "
                f"(or try again later)"
            )
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
        if isinstance(err, FTPStorageException):
            return f"FTP {action} {name} failed ({text}); check location in {OPTIONS_HINT}"
        return super().explain(backend, cause, action, name)


def _no_files(err: ftplib.error_perm) -> bool:
    """A 550 that says a listing found nothing ("550 No files found."): some servers (IIS, wu-ftpd) answer so
    for an empty folder, which is neither absent nor a refusal."""
    return "no files found" in str(err).lower()
