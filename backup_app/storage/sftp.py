"""SFTP servers (``storages.backends.sftpstorage.SFTPStorage``)."""

from __future__ import annotations

import errno
import logging
import posixpath
import socket
import threading
from typing import BinaryIO

from .. import hints
from ..settings import app_settings
from ..streams import RangedReader, buffered
from .base import OPTIONS_HINT, Adapter, dropped, first_line, tries_said


def _reported_by_us(record: logging.LogRecord) -> bool:
    """paramiko's own log of the failure that ends a client connection (``Exception (client): Error reading
    SSH protocol banner``, ``Socket exception: …`` and the traceback after them, at ERROR from the transport's
    thread): the connecting call raises that failure, and :meth:`SFTPAdapter.explain` says it in one line
    with the fix, so on stderr (Python's last-resort handler, or a site's root console handler) it would
    only stand before ours.  Kept, as DEBUG, where paramiko's debug log is asked for."""
    if record.levelno < logging.ERROR:
        return True
    import paramiko

    thread = threading.current_thread()
    if not isinstance(thread, paramiko.Transport) or thread.server_mode:
        return True
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


logging.getLogger("paramiko.transport").addFilter(_reported_by_us)


class SFTPAdapter(Adapter):
    """``storages.backends.sftpstorage.SFTPStorage``: pipelined writes, windowed reads over one SSH session."""

    label = "SFTP"
    WINDOW = 32  # read requests of 32 KiB in flight: 1 MiB per round trip
    #: A listing reads manifests over up to 8 SSH sessions at once: paramiko's SFTP client is not to be shared
    #: between threads, so each reading thread logs in on its own (one more session per 4 manifests).
    read_workers = 8
    shared_client = False
    reads_per_connection = 4
    #: paramiko does not retry: a dropped, reset or silent connection is tried again by RemoteStorage.
    retries_here = True

    def prepare(self, options: dict) -> dict:
        options = dict(options)
        # Backups are the most sensitive copy of a site's data: owner-only unless asked otherwise.
        options.setdefault("file_mode", 0o600)
        options.setdefault("dir_mode", 0o700)
        # SFTPStorage creates a missing folder by walking up posixpath.dirname until a folder exists; from a
        # relative path (or none: the login folder) that walk ends at '', which no server has, and it recurses
        # without end.  Anchored at '.' (the login folder, which exists) the walk stops there.
        root = str(options.get("root_path") or "")
        if not root.startswith("/"):
            relative = posixpath.normpath(root)
            options["root_path"] = "." if relative == "." else "./" + relative
        # A server that stops answering fails the connection after backup_storage_timeout seconds (paramiko's
        # defaults: no TCP timeout, a 15 s banner, 30 s auth); params the user gave win.
        seconds = app_settings.storage_timeout
        params = dict(options.get("params") or {})
        for key in ("timeout", "banner_timeout", "auth_timeout", "channel_timeout"):
            params.setdefault(key, seconds)
        options["params"] = params
        return options

    def ready(self, backend) -> None:
        """Every read and write of the SFTP session also gives up after backup_storage_timeout seconds."""
        channel = backend.sftp.get_channel()
        if channel is not None and channel.gettimeout() is None:
            channel.settimeout(app_settings.storage_timeout)

    def transient(self, err: BaseException) -> bool:
        """A connection the server accepted and then dropped, reset or left silent (a restarting server, a
        NAT or proxy that cut it, MaxStartups); not a refused login, a wrong host key, a refused connection
        or a file that is not there."""
        import paramiko

        if isinstance(
            err,
            paramiko.AuthenticationException
            | paramiko.BadHostKeyException
            | paramiko.ssh_exception.NoValidConnectionsError
            | paramiko.ChannelException
            | paramiko.SFTPError,
        ):
            return False
        if dropped(err) or isinstance(err, TimeoutError | socket.timeout):
            return True
        if isinstance(err, OSError):
            return err.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT)
        # "Error reading SSH protocol banner", "No existing session", "Server connection dropped", …
        return isinstance(err, paramiko.SSHException | EOFError)

    def reset(self, backend) -> None:
        try:
            backend.close()
        except Exception:  # noqa: BLE001 - a broken connection that will not close cleanly is dropped all the same
            pass
        backend._sftp = None  # the next use of backend.sftp connects again

    def delete(self, backend, name: str) -> None:
        """Remove ``name``; only a file that is not there counts as deleted.  SFTPStorage.delete passes over
        every OSError (a refused remove, a connection that timed out) as if the file were gone, so a prune said
        it removed sets that were still there."""
        try:
            backend.sftp.remove(backend._remote_path(name))
        except FileNotFoundError:
            pass

    def describe(self, backend) -> str:
        params = backend.params or {}
        user = f"{params['username']}@" if params.get("username") else ""
        port = f":{params['port']}" if params.get("port") else ""
        root = backend.root_path or "."
        return f"SFTP {user}{backend.host}{port}:{root.removeprefix('./') or '.'}"

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

    def close(self, backend) -> None:
        backend.close()

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
        if dropped(err):
            return (
                f"the SSH server closed the connection ({first_line(err)}), {tries_said(err)}; check host and "
                f"params.port in {OPTIONS_HINT}, the network, and the server's limits on connections (sshd "
                "MaxStartups)"
            )
        transport = backend._ssh.get_transport() if getattr(backend, "_ssh", None) is not None else None
        silent = transport is not None and not transport.remote_version  # connected, but no SSH banner came
        if silent or isinstance(err, TimeoutError | socket.timeout) or "timeout" in str(err).lower():
            return (
                f"the SSH server did not answer within {app_settings.storage_timeout} s, {tries_said(err)} "
                f"({first_line(err)}); check host and params.port in {OPTIONS_HINT} and the network, or raise "
                f"{app_settings.env_name('backup_storage_timeout')}"
            )
        if isinstance(err, paramiko.SSHException) and not isinstance(err, paramiko.ChannelException):
            return f"the SSH connection failed ({err}); check host and params.port in {OPTIONS_HINT}"
        return super().explain(backend, err, action, name)

    def permission_hint(self, action: str) -> str:
        return (
            "the SSH user needs to create, read, list and delete files in the root_path folder "
            f"({hints.setting('backup_dir')})"
        )
