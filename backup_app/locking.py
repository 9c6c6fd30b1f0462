"""One backup or restore at a time per site.

The lock lives where every process of the site can see it and where it dies
with its holder, so a killed process never leaves a stale lock behind:

- PostgreSQL: a session advisory lock, held on a connection to the server's
  maintenance database (so the site's own database can be swapped during a
  restore);
- MariaDB/MySQL: ``GET_LOCK`` (server wide);
- SQLite: ``flock`` on a lock file next to the database file.

The lock is taken on the ``default`` database; several worker processes or
machines sharing that database share the lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from django.db import connections
from django.utils import timezone

from .errors import BackupAppError


class Locked(BackupAppError):
    """Another backup or restore of this site is running."""


def _holder() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {timezone.localtime().strftime('%H:%M:%S')}"


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"backup_app:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def _sqlite_lock(settings: dict, what: str) -> Iterator[None]:
    path = Path(f"{settings['NAME']}.backup-lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 500, 0).decode(errors="replace").strip() or "another process"
            raise Locked(f"another backup or restore is running ({holder}); wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} by {_holder()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextmanager
def _postgres_lock(settings: dict, what: str) -> Iterator[None]:
    import psycopg

    kwargs = {
        "dbname": "postgres",
        "host": settings.get("HOST") or None,
        "port": settings.get("PORT") or None,
        "user": settings.get("USER") or None,
        "password": settings.get("PASSWORD") or None,
        "application_name": f"backup_app {what} lock, {_holder()}"[:63],
        "autocommit": True,
    }
    try:
        conn = psycopg.connect(**{k: v for k, v in kwargs.items() if v is not None})
    except psycopg.Error:
        kwargs["dbname"] = settings["NAME"]
        conn = psycopg.connect(**{k: v for k, v in kwargs.items() if v is not None})
    key = _key(f"{settings.get('HOST')}:{settings.get('PORT')}/{settings['NAME']}")
    try:
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            row = conn.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.classid = %s::oid AND l.objid = %s::oid",
                ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
            ).fetchone()
            holder = row[0] if row else "another process"
            raise Locked(f"another backup or restore is running ({holder}); wait for it to finish")
        yield
    finally:
        with suppress(Exception):
            conn.close()


@contextmanager
def _mysql_lock(settings: dict, what: str) -> Iterator[None]:
    import MySQLdb

    conn = MySQLdb.connect(
        host=settings.get("HOST") or "localhost",
        port=int(settings.get("PORT") or 3306),
        user=settings.get("USER") or "",
        password=settings.get("PASSWORD") or "",
    )
    name = f"backup_app:{settings['NAME']}"[:64]
    try:
        cur = conn.cursor()
        cur.execute("SELECT GET_LOCK(%s, 0)", (name,))
        if cur.fetchone()[0] != 1:
            cur.execute("SELECT IS_USED_LOCK(%s)", (name,))
            holder = cur.fetchone()[0]
            raise Locked(f"another backup or restore is running (database connection {holder}); wait for it to finish")
        yield
    finally:
        with suppress(Exception):
            conn.close()


@contextmanager
def site_lock(what: str, alias: str = "default") -> Iterator[None]:
    """Hold the site's backup/restore lock for the block; :class:`Locked` if another holds it."""
    connection = connections[alias]
    settings = connection.settings_dict
    lockers = {"sqlite": _sqlite_lock, "postgresql": _postgres_lock, "mysql": _mysql_lock}
    with lockers[connection.vendor](settings, what):
        yield
