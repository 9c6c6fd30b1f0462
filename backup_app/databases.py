"""Dump and restore one database, per engine, on django-dbbackup's connectors.

Every engine exposes the same three things (see :class:`Engine`):
``extension`` (stock dbbackup's, so stock ``dbrestore`` reads our files),
``dump(out)`` writing the dump to a stream, and ``restore(stream)``.

The connection settings, ``EXCLUDE`` list, command names, prefixes, suffixes
and environments all come from :func:`dbbackup.db.base.get_connector`, so
``backup_connector_options`` reach the tools.  Passwords go to the tools
through the environment (PostgreSQL) or a private option file (MySQL), never
the command line.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import subprocess
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from dbbackup.db.base import get_connector
from dbbackup.db.mysql import MysqlDumpConnector
from dbbackup.db.postgresql import PgDumpBinaryConnector, parse_postgres_settings
from dbbackup.db.sqlite import SqliteBackupConnector
from django.db import connections

from .errors import BackupError, RestoreError
from .pipeline import CHUNK
from .secrets import redact

#: First bytes of each engine's dump, to refuse a file of the wrong kind before restoring.
MAGIC = {
    "sqlite": b"SQLite format 3\x00",
    "postgresql": b"PGDMP",
}


def _words(value) -> list[str]:
    if not value:
        return []
    return list(value) if isinstance(value, list | tuple) else shlex.split(str(value))


def _stderr_text(handle) -> str:
    handle.seek(0)
    lines = [ln.strip() for ln in handle.read().decode(errors="replace").splitlines() if ln.strip()]
    return redact("; ".join(lines[-3:]))


def _run_dump(args: list[str], env: dict, out: BinaryIO, what: str) -> None:
    """Run a dump tool, copying its stdout into ``out`` as it comes."""
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=env)
        except FileNotFoundError:
            raise BackupError(f"{args[0]} is not installed; install the {what} client tools") from None
        try:
            while data := proc.stdout.read(CHUNK):
                out.write(data)
        finally:
            proc.stdout.close()
            proc.wait()
        if proc.returncode:
            raise BackupError(f"{args[0]} failed (exit {proc.returncode}): {_stderr_text(err)}")


def _run_restore(args: list[str], env: dict, stream: BinaryIO, what: str) -> None:
    """Run a restore tool, feeding ``stream`` to its stdin."""
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=err, stdout=subprocess.DEVNULL, env=env)
        except FileNotFoundError:
            raise RestoreError(f"{args[0]} is not installed; install the {what} client tools") from None
        broken = False
        try:
            while data := stream.read(CHUNK):
                proc.stdin.write(data)
        except BrokenPipeError:
            broken = True
        finally:
            with suppress(BrokenPipeError):
                proc.stdin.close()
            proc.wait()
        if proc.returncode or broken:
            raise RestoreError(f"{args[0]} failed (exit {proc.returncode}): {_stderr_text(err)}")


class Engine:
    """Dump and restore for one database alias."""

    vendor = ""
    extension = "dump"
    stock_connector: type = object

    def __init__(self, alias: str):
        self.alias = alias
        self.connector = get_connector(alias)
        self.settings = self.connector.settings
        self.exclude = list(self.connector.exclude or [])

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ) if self.connector.use_parent_env else {}
        env.update(self.connector.env or {})
        env.update(extra or {})
        return {k: str(v) for k, v in env.items()}

    def dump(self, out: BinaryIO, *, compressed: bool = True) -> None:
        raise NotImplementedError

    def restore(self, stream: BinaryIO) -> None:
        raise NotImplementedError

    def check_magic(self, head: bytes, name: str) -> None:
        """Refuse a file whose first bytes are not this engine's dump."""
        magic = MAGIC.get(self.vendor)
        if magic is not None and not head.startswith(magic):
            raise RestoreError(
                f"{name} is not a {self.vendor} dump (it starts with {head[:8]!r}); "
                "pick the database file of a backup set"
            )
        if self.vendor == "mysql" and head.lstrip()[:2] not in (b"--", b"/*"):
            raise RestoreError(f"{name} is not a MySQL dump; pick the database file of a backup set")

    def applied_migrations(self) -> list[list[str]]:
        """``[app, name]`` of every migration recorded in this database, sorted."""
        from django.db.migrations.recorder import MigrationRecorder

        recorder = MigrationRecorder(connections[self.alias])
        if not recorder.has_table():
            return []
        return sorted([app, name] for app, name in recorder.applied_migrations())


class SqliteEngine(Engine):
    """SQLite: online backup API to a private snapshot; restore by atomic rename."""

    vendor = "sqlite"
    extension = SqliteBackupConnector.extension

    def dump(self, out: BinaryIO, *, compressed: bool = True) -> None:
        path = Path(self.settings["NAME"])
        with tempfile.TemporaryDirectory(prefix="backup-sqlite-") as tmp:
            snapshot = Path(tmp) / "snapshot.sqlite3"
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                dst = sqlite3.connect(snapshot)
                try:
                    src.backup(dst)
                    tables = {r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                    for table in self.exclude:
                        if table in tables:
                            dst.execute(f'DELETE FROM "{table.replace(chr(34), chr(34) * 2)}"')
                    dst.commit()
                    # A plain rollback-journal file: restorable by copying, no WAL needed.
                    dst.execute("PRAGMA journal_mode=DELETE")
                finally:
                    dst.close()
            except sqlite3.Error as err:
                raise BackupError(f"SQLite backup of {path} failed: {err}") from None
            finally:
                src.close()
            with open(snapshot, "rb") as fh:
                while data := fh.read(CHUNK):
                    out.write(data)

    def restore(self, stream: BinaryIO) -> None:
        path = Path(self.settings["NAME"])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.restore-", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with open(fd, "wb") as fh:
                while data := stream.read(CHUNK):
                    fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                check = sqlite3.connect(tmp)
                try:
                    result = check.execute("PRAGMA integrity_check").fetchone()[0]
                finally:
                    check.close()
            except sqlite3.DatabaseError as err:
                raise RestoreError(f"the restored SQLite file fails to open ({err}); database left unchanged") from None
            if result != "ok":
                raise RestoreError(
                    f"the restored SQLite file fails its integrity check ({result}); database left unchanged"
                )
            # No connection may keep the old file (or its WAL) open across the swap.
            connections[self.alias].close()
            for suffix in ("-wal", "-shm", "-journal"):
                with suppress(FileNotFoundError):
                    os.remove(f"{path}{suffix}")
            os.replace(tmp, path)
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()


class PostgresEngine(Engine):
    """PostgreSQL: ``pg_dump --format=custom`` streamed; ``pg_restore`` in one transaction."""

    vendor = "postgresql"
    extension = PgDumpBinaryConnector.extension

    def _conn(self) -> tuple[list[str], dict]:
        cmd_part, pg_env = parse_postgres_settings(self.connector)
        return shlex.split(cmd_part), pg_env

    def dump(self, out: BinaryIO, *, compressed: bool = True) -> None:
        conn, pg_env = self._conn()
        args = [*_words(self.connector.dump_prefix), self.connector.dump_cmd, *conn, "--format=custom"]
        if compressed:
            args.append("--compress=0")  # compressed once, by the pipeline
        args += [f"--exclude-table-data={table}" for table in self.exclude]
        for schema in self.connector.schemas or []:
            args += ["-n", schema]
        args += _words(self.connector.dump_suffix)
        _run_dump(args, self.env({**(self.connector.dump_env or {}), **pg_env}), out, "PostgreSQL")

    def restore(self, stream: BinaryIO) -> None:
        connections[self.alias].close()
        conn, pg_env = self._conn()
        args = [
            *_words(self.connector.restore_prefix),
            self.connector.restore_cmd,
            *conn,
            *_words(getattr(self.connector, "pg_options", None)),
            "--single-transaction",
            "--exit-on-error",
        ]
        if self.connector.drop:
            args += ["--clean", "--if-exists"]
        if getattr(self.connector, "no_owner", True):
            args += ["--no-owner", "--no-privileges"]
        for schema in self.connector.schemas or []:
            args += ["-n", schema]
        args += _words(self.connector.restore_suffix)
        try:
            _run_restore(args, self.env({**(self.connector.restore_env or {}), **pg_env}), stream, "PostgreSQL")
        except RestoreError as err:
            raise RestoreError(f"{err}; the restore ran in one transaction, database left unchanged") from None


@contextmanager
def mysql_option_file(settings: dict):
    """A private ``[client]`` option file with host, port, user and password (mode 0600)."""

    def quote(value) -> str:
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["[client]"]
    for key, option in (("HOST", "host"), ("PORT", "port"), ("USER", "user"), ("PASSWORD", "password")):
        if settings.get(key):
            lines.append(f"{option}={quote(settings[key])}")
    with tempfile.TemporaryDirectory(prefix="backup-mysql-") as tmp:
        path = Path(tmp) / "client.cnf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        yield str(path)


class MysqlEngine(Engine):
    """MariaDB/MySQL: ``mysqldump --single-transaction`` streamed; ``mysql`` to restore."""

    vendor = "mysql"
    extension = MysqlDumpConnector.extension

    def dump(self, out: BinaryIO, *, compressed: bool = True) -> None:
        name = self.settings["NAME"]
        with mysql_option_file(self.settings) as option_file:
            args = [
                *_words(self.connector.dump_prefix),
                self.connector.dump_cmd,
                f"--defaults-extra-file={option_file}",
                "--single-transaction",
                "--quick",
                "--routines",
                "--triggers",
                "--hex-blob",
                "--default-character-set=utf8mb4",
            ]
            args += [f"--ignore-table-data={name}.{table}" for table in self.exclude]
            args += [*_words(self.connector.dump_suffix), name]
            _run_dump(args, self.env(self.connector.dump_env), out, "MySQL/MariaDB")

    def restore(self, stream: BinaryIO) -> None:
        connections[self.alias].close()
        name = self.settings["NAME"]
        with mysql_option_file(self.settings) as option_file:
            args = [
                *_words(self.connector.restore_prefix),
                self.connector.restore_cmd,
                f"--defaults-extra-file={option_file}",
                "--default-character-set=utf8mb4",
                *_words(self.connector.restore_suffix),
                name,
            ]
            _run_restore(args, self.env(self.connector.restore_env), stream, "MySQL/MariaDB")


ENGINES: dict[str, type[Engine]] = {
    "sqlite": SqliteEngine,
    "postgresql": PostgresEngine,
    "mysql": MysqlEngine,
}


def engine_for(alias: str) -> Engine:
    """The :class:`Engine` for a ``DATABASES`` alias; an unsupported vendor is a clear error."""
    if alias not in connections.settings:
        raise BackupError(f"database alias {alias!r} is not in DATABASES")
    vendor = connections[alias].vendor
    if vendor not in ENGINES:
        raise BackupError(
            f"database {alias!r} uses {vendor!r}, which backup_app cannot back up; "
            "use SQLite, PostgreSQL or MariaDB/MySQL"
        )
    return ENGINES[vendor](alias)
