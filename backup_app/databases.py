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

import logging
import os
import shlex
import shutil
import sqlite3
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dbbackup.db.base import get_connector
from dbbackup.db.mysql import MysqlDumpConnector
from dbbackup.db.postgresql import PgDumpBinaryConnector, parse_postgres_settings
from dbbackup.db.sqlite import SqliteBackupConnector
from django.db import connections

from . import tools
from .errors import BackupError, RestoreError
from .secrets import redact
from .streams import CHUNK, pump, spool
from .tools import SecretPipe, Tool

if TYPE_CHECKING:
    from .safety import SafetyRecord

logger = logging.getLogger("backup_app")

#: First bytes of each engine's dump, to refuse a file of the wrong kind before restoring.
MAGIC = {
    "sqlite": b"SQLite format 3\x00",
    "postgresql": b"PGDMP",
}


def _words(value) -> list[str]:
    if not value:
        return []
    return list(value) if isinstance(value, list | tuple) else shlex.split(str(value))


def _run_dump(args: list[str], env: dict, out: BinaryIO, what: str, name: str, secrets=()) -> None:
    """Run a dump tool, copying its stdout into ``out`` as it comes."""
    tools.run_to(
        Tool(
            args,
            name=name,
            env=env,
            secrets=secrets,
            error=BackupError,
            missing_hint=f"install the {what} client tools",
        ),
        out,
    )


def _run_restore(args: list[str], env: dict, stream: BinaryIO, what: str, name: str, secrets=()) -> None:
    """Run a restore tool, feeding ``stream`` to its stdin."""
    tools.run_from(
        Tool(
            args,
            name=name,
            env=env,
            secrets=secrets,
            error=RestoreError,
            missing_hint=f"install the {what} client tools",
        ),
        stream,
    )


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

    def stage(self, stream: BinaryIO) -> dict:
        """Load the dump in ``stream`` somewhere the live database is not (a temp file, a new database).

        Returns what :meth:`commit` or :meth:`abandon` need.  The live database is untouched.
        """
        raise NotImplementedError

    def commit(self, staged: dict, safety: SafetyRecord) -> None:
        """Swap the staged database in, atomically; the replaced one is kept and described in ``safety``."""
        raise NotImplementedError

    def abandon(self, staged: dict) -> None:
        """Throw a staged database away."""

    def staged_tables(self, staged: dict) -> int:
        """Number of tables in a staged database."""
        raise NotImplementedError

    def rollback(self, entry: dict, folder: Path) -> None:
        """Put back the state a safety ``entry`` kept."""
        raise NotImplementedError

    def discard(self, entry: dict) -> None:
        """Drop the state a safety ``entry`` kept (files go with the record's folder)."""

    def cleanup_stale(self) -> list[str]:
        """Remove what a restore killed half way left behind (never the live database); returns names."""
        return []

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

    def table_count(self) -> int:
        """Number of tables in the live database."""
        connection = connections[self.alias]
        with connection.cursor() as cursor:
            return len(connection.introspection.table_names(cursor))

    def scratch_restore(self, stream: BinaryIO) -> int:
        """Restore into a throwaway place, count its tables, throw it away; returns the count."""
        staged = self.stage(stream)
        try:
            return self.staged_tables(staged)
        finally:
            self.abandon(staged)

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
            with open(snapshot, "rb", buffering=0) as fh:
                pump(fh, out)

    def stage(self, stream: BinaryIO) -> dict:
        path = Path(self.settings["NAME"])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.restore-", dir=path.parent)
        try:
            with open(fd, "wb") as fh:
                while data := stream.read(CHUNK):
                    fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            _check_sqlite_file(Path(tmp_name))
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return {"file": tmp_name}

    def commit(self, staged: dict, safety: SafetyRecord) -> None:
        path = Path(self.settings["NAME"])
        # No connection may keep the old file (or its WAL) open across the swap.
        connections[self.alias].close()
        if path.exists():
            kept = safety.folder / f"{self.alias}.sqlite3"
            _checkpoint(path)
            try:
                os.link(path, kept)  # the old file, kept for free
            except OSError:
                shutil.copy2(path, kept)
            safety.add_database(self.alias, {"kind": "sqlite-file", "file": kept.name, "path": str(path)})
        else:
            safety.add_database(self.alias, {"kind": "sqlite-new", "path": str(path)})
        _swap_sqlite(Path(staged["file"]), path)

    def abandon(self, staged: dict) -> None:
        Path(staged["file"]).unlink(missing_ok=True)

    def staged_tables(self, staged: dict) -> int:
        conn = sqlite3.connect(staged["file"])
        try:
            return conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            ).fetchone()[0]
        finally:
            conn.close()

    def cleanup_stale(self) -> list[str]:
        path = Path(self.settings["NAME"])
        gone = []
        for stale in path.parent.glob(f".{path.name}.restore-*"):
            stale.unlink(missing_ok=True)
            gone.append(stale.name)
        return gone

    def rollback(self, entry: dict, folder: Path) -> None:
        path = Path(entry["path"])
        connections[self.alias].close()
        if entry["kind"] == "sqlite-new":
            for suffix in ("", "-wal", "-shm", "-journal"):
                with suppress(FileNotFoundError):
                    os.remove(f"{path}{suffix}")
            return
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.rollback-", dir=path.parent)
        os.close(fd)
        shutil.copyfile(folder / entry["file"], tmp_name)
        _swap_sqlite(Path(tmp_name), path)


def _check_sqlite_file(path: Path) -> None:
    try:
        check = sqlite3.connect(path)
        try:
            # quick_check reads every page and checks the b-trees (integrity_check also cross-checks every index
            # against its table, 3x slower); the bytes themselves are proven by the manifest's SHA-256.
            result = check.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            check.close()
    except sqlite3.DatabaseError as err:
        raise RestoreError(f"the restored SQLite file fails to open ({err}); database left unchanged") from None
    if result != "ok":
        raise RestoreError(f"the restored SQLite file fails its integrity check ({result}); database left unchanged")


def _checkpoint(path: Path) -> None:
    """Fold a WAL into the main file so the file alone is the whole database."""
    with suppress(sqlite3.Error):
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()


def _swap_sqlite(new: Path, path: Path) -> None:
    """Atomically put ``new`` at ``path``; a stale WAL/SHM/journal of the old file is removed first."""
    for suffix in ("-wal", "-shm", "-journal"):
        with suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")
    os.replace(new, path)


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
        _run_dump(
            args, self.env({**(self.connector.dump_env or {}), **pg_env}), out, "PostgreSQL", self.connector.dump_cmd
        )

    def _admin(self):
        """An autocommit connection to the server's maintenance database."""
        import psycopg

        kwargs = {
            "dbname": "postgres",
            "host": self.settings.get("HOST") or None,
            "port": self.settings.get("PORT") or None,
            "user": self.settings.get("USER") or None,
            "password": self.settings.get("PASSWORD") or None,
            "autocommit": True,
        }
        return psycopg.connect(**{k: v for k, v in kwargs.items() if v is not None})

    def _restore_args(self, database: str, *, clean: bool) -> tuple[list[str], dict]:
        saved = self.connector.settings.get("NAME")
        self.connector.settings["NAME"] = database
        try:
            conn, pg_env = self._conn()
        finally:
            self.connector.settings["NAME"] = saved
        args = [
            *_words(self.connector.restore_prefix),
            self.connector.restore_cmd,
            *conn,
            *_words(getattr(self.connector, "pg_options", None)),
            "--single-transaction",
            "--exit-on-error",
        ]
        if clean and self.connector.drop:
            args += ["--clean", "--if-exists"]
        if getattr(self.connector, "no_owner", True):
            args += ["--no-owner", "--no-privileges"]
        for schema in self.connector.schemas or []:
            args += ["-n", schema]
        args += _words(self.connector.restore_suffix)
        return args, self.env({**(self.connector.restore_env or {}), **pg_env})

    def stage(self, stream: BinaryIO) -> dict:
        """pg_restore into a new database (or, without CREATE DATABASE rights, into a temp file)."""
        import psycopg
        from psycopg import sql

        fresh = f"{self.settings['NAME'][:30]}_restore_{os.getpid()}_{int(time.time())}"
        try:
            with self._admin() as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(fresh)))
        except psycopg.Error as err:
            reason = redact(str(err).strip().splitlines()[0])
            logger.warning("cannot stage the PostgreSQL restore in a new database (%s); restoring in place", reason)
            return {"file": spool(stream, "backup-pg-restore-")}
        try:
            args, env = self._restore_args(fresh, clean=False)
            _run_restore(args, env, stream, "PostgreSQL", self.connector.restore_cmd)
        except BaseException:
            self.abandon({"database": fresh})
            raise
        return {"database": fresh}

    def commit(self, staged: dict, safety: SafetyRecord) -> None:
        """Swap names in one transaction: live database aside (kept), staged one in."""

        if "file" in staged:
            return self._commit_in_place(staged, safety)
        name, fresh = self.settings["NAME"], staged["database"]
        kept = f"{name[:30]}_safety_{safety.name.replace('-', '')[-20:]}"
        connections[self.alias].close()
        with self._admin() as admin:
            try:
                self._swap(admin, name, aside=kept, incoming=fresh)
            except Exception as err:
                raise RestoreError(
                    f"swapping in the restored PostgreSQL database failed ({redact(err)}); database left unchanged"
                ) from None
        safety.add_database(self.alias, {"kind": "pg-database", "database": kept, "name": name})

    @staticmethod
    def _swap(admin, live: str, *, aside: str, incoming: str) -> None:
        """In one transaction: rename ``live`` to ``aside`` and ``incoming`` to ``live``."""
        from psycopg import sql

        with admin.transaction():
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (live,),
            )
            for old, new in ((live, aside), (incoming, live)):
                admin.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
                )

    def _commit_in_place(self, staged: dict, safety: SafetyRecord) -> None:
        """Without CREATE DATABASE rights: keep a dump, then restore in one transaction."""
        kept = safety.folder / f"{self.alias}.psql.bin"
        with open(kept, "wb") as fh:
            self.dump(fh, compressed=False)
        safety.add_database(self.alias, {"kind": "pg-dump", "file": kept.name})
        args, env = self._restore_args(self.settings["NAME"], clean=True)
        try:
            with open(staged["file"], "rb") as fh:
                _run_restore(args, env, fh, "PostgreSQL", self.connector.restore_cmd)
        except RestoreError as err:
            raise RestoreError(f"{err}; the restore ran in one transaction, database left unchanged") from None
        finally:
            os.unlink(staged["file"])

    def abandon(self, staged: dict) -> None:
        from psycopg import sql

        if "file" in staged:
            Path(staged["file"]).unlink(missing_ok=True)
            return
        with self._admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(staged["database"])))

    def staged_tables(self, staged: dict) -> int:
        import psycopg

        if "file" in staged:
            raise RestoreError("counting tables needs CREATE DATABASE rights on the PostgreSQL server")
        kwargs = {
            "dbname": staged["database"],
            "host": self.settings.get("HOST") or None,
            "port": self.settings.get("PORT") or None,
            "user": self.settings.get("USER") or None,
            "password": self.settings.get("PASSWORD") or None,
        }
        with psycopg.connect(**{k: v for k, v in kwargs.items() if v is not None}) as conn:
            return conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            ).fetchone()[0]

    def cleanup_stale(self) -> list[str]:
        from psycopg import sql

        prefix = f"{self.settings['NAME'][:30]}_restore_"
        admin = self._admin()
        try:
            names = [
                r[0]
                for r in admin.execute(
                    "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
                ).fetchall()
            ]
            for name in names:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        finally:
            admin.close()
        return names

    def rollback(self, entry: dict, folder: Path) -> None:
        from psycopg import sql

        connections[self.alias].close()
        if entry["kind"] == "pg-dump":
            args, env = self._restore_args(self.settings["NAME"], clean=True)
            with open(folder / entry["file"], "rb") as fh:
                _run_restore(args, env, fh, "PostgreSQL", self.connector.restore_cmd)
            return
        name, kept = entry["name"], entry["database"]
        trash = f"{kept[:40]}_undone"
        admin = self._admin()
        try:
            self._swap(admin, name, aside=trash, incoming=kept)
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(trash)))
        finally:
            admin.close()

    def discard(self, entry: dict) -> None:
        from psycopg import sql

        if entry["kind"] != "pg-database":
            return
        admin = self._admin()
        try:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(entry["database"])))
        finally:
            admin.close()


def mysql_client_options(settings: dict) -> SecretPipe:
    """A ``[client]`` option file with host, port, user and password, in a pipe (``--defaults-extra-file=``)."""

    def quote(value) -> str:
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["[client]"]
    for key, option in (("HOST", "host"), ("PORT", "port"), ("USER", "user"), ("PASSWORD", "password")):
        if settings.get(key):
            lines.append(f"{option}={quote(settings[key])}")
    return SecretPipe("\n".join(lines) + "\n")


class MysqlEngine(Engine):
    """MariaDB/MySQL: ``mysqldump --single-transaction`` streamed; ``mysql`` to restore."""

    vendor = "mysql"
    extension = MysqlDumpConnector.extension

    def dump(self, out: BinaryIO, *, compressed: bool = True) -> None:
        name = self.settings["NAME"]
        options = mysql_client_options(self.settings)
        args = [
            *_words(self.connector.dump_prefix),
            self.connector.dump_cmd,
            f"--defaults-extra-file={options.path}",
            "--single-transaction",
            "--quick",
            "--routines",
            "--triggers",
            "--hex-blob",
            "--default-character-set=utf8mb4",
        ]
        args += [f"--ignore-table-data={name}.{table}" for table in self.exclude]
        args += [*_words(self.connector.dump_suffix), name]
        _run_dump(args, self.env(self.connector.dump_env), out, "MySQL/MariaDB", self.connector.dump_cmd, [options])

    def _feed(self, database: str, stream: BinaryIO) -> None:
        options = mysql_client_options(self.settings)
        args = [
            *_words(self.connector.restore_prefix),
            self.connector.restore_cmd,
            f"--defaults-extra-file={options.path}",
            "--default-character-set=utf8mb4",
            *_words(self.connector.restore_suffix),
            database,
        ]
        env = self.env(self.connector.restore_env)
        _run_restore(args, env, stream, "MySQL/MariaDB", self.connector.restore_cmd, [options])

    @staticmethod
    def _tables(cursor, database: str) -> list[str]:
        cursor.execute(
            "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", [database]
        )
        rows = cursor.fetchall()
        views = [name for name, kind in rows if kind == "VIEW"]
        if views:
            raise RestoreError(
                f"database {database} has views ({', '.join(views[:3])}), which cannot be swapped "
                "atomically; nothing was changed"
            )
        return [name for name, _kind in rows]

    @staticmethod
    def _move(cursor, moves: list[tuple[str, str, str]]) -> None:
        """One RENAME TABLE statement: all moves happen, or none."""
        if moves:
            cursor.execute(
                "RENAME TABLE " + ", ".join(f"`{src}`.`{table}` TO `{dst}`.`{table}`" for src, dst, table in moves)
            )

    def stage(self, stream: BinaryIO) -> dict:
        """Load the dump into a new side database."""
        name = self.settings["NAME"]
        fresh = f"{name[:30]}_restore_{os.getpid()}_{int(time.time())}"
        with connections[self.alias].cursor() as cursor:
            cursor.execute(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM "
                "information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                [name],
            )
            charset, collation = cursor.fetchone()
            try:
                cursor.execute(f"CREATE DATABASE `{fresh}` CHARACTER SET {charset} COLLATE {collation}")
            except Exception as err:
                logger.warning(
                    "cannot stage the MySQL restore in a side database (%s); restoring in place", redact(err)
                )
                return {"file": spool(stream, "backup-mysql-restore-")}
        try:
            self._feed(fresh, stream)
        except BaseException:
            self.abandon({"database": fresh})
            raise
        return {"database": fresh, "charset": charset, "collation": collation}

    def commit(self, staged: dict, safety: SafetyRecord) -> None:
        """Move all tables in one atomic RENAME TABLE: live ones aside (kept), staged ones in."""
        if "file" in staged:
            return self._commit_in_place(staged, safety)
        name, fresh = self.settings["NAME"], staged["database"]
        kept = f"{name[:30]}_safety_{safety.name.replace('-', '')[-20:]}"
        connection = connections[self.alias]
        with connection.cursor() as cursor:
            new_tables, old_tables = self._tables(cursor, fresh), self._tables(cursor, name)
            cursor.execute(f"CREATE DATABASE `{kept}` CHARACTER SET {staged['charset']} COLLATE {staged['collation']}")
            try:
                self._move(cursor, [(name, kept, t) for t in old_tables] + [(fresh, name, t) for t in new_tables])
            except Exception as err:
                cursor.execute(f"DROP DATABASE IF EXISTS `{kept}`")
                raise RestoreError(
                    f"swapping in the restored tables failed ({redact(err)}); database left unchanged"
                ) from None
            cursor.execute(f"DROP DATABASE IF EXISTS `{fresh}`")
        connection.close()
        safety.add_database(self.alias, {"kind": "mysql-database", "database": kept, "name": name})

    def _drop_all_tables(self) -> None:
        connection = connections[self.alias]
        with connection.cursor() as cursor:
            tables = self._tables(cursor, self.settings["NAME"])
            cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
            for table in tables:
                cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
            cursor.execute("SET FOREIGN_KEY_CHECKS = 1")
        connection.close()

    def _commit_in_place(self, staged: dict, safety: SafetyRecord) -> None:
        """Without rights for a side database: keep a dump, replace the tables, roll back from the dump on failure."""
        kept = safety.folder / f"{self.alias}.dump"
        with open(kept, "wb") as fh:
            self.dump(fh, compressed=False)
        safety.add_database(self.alias, {"kind": "mysql-dump", "file": kept.name})
        try:
            self._drop_all_tables()
            with open(staged["file"], "rb") as fh:
                self._feed(self.settings["NAME"], fh)
        finally:
            os.unlink(staged["file"])

    def abandon(self, staged: dict) -> None:
        if "file" in staged:
            Path(staged["file"]).unlink(missing_ok=True)
            return
        with connections[self.alias].cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{staged['database']}`")

    def staged_tables(self, staged: dict) -> int:
        if "file" in staged:
            raise RestoreError("counting tables needs the right to create a database on the MySQL server")
        with connections[self.alias].cursor() as cursor:
            return len(self._tables(cursor, staged["database"]))

    def cleanup_stale(self) -> list[str]:
        prefix = f"{self.settings['NAME'][:30]}_restore_"
        with connections[self.alias].cursor() as cursor:
            cursor.execute(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE LEFT(SCHEMA_NAME, %s) = %s",
                [len(prefix), prefix],
            )
            names = [r[0] for r in cursor.fetchall()]
            for name in names:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        return names

    def rollback(self, entry: dict, folder: Path) -> None:
        if entry["kind"] == "mysql-dump":
            self._drop_all_tables()
            with open(folder / entry["file"], "rb") as fh:
                self._feed(self.settings["NAME"], fh)
            return
        name, kept = entry["name"], entry["database"]
        trash = f"{kept[:50]}_undone"
        connection = connections[self.alias]
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{trash}`")
            current, saved = self._tables(cursor, name), self._tables(cursor, kept)
            self._move(cursor, [(name, trash, t) for t in current] + [(kept, name, t) for t in saved])
            cursor.execute(f"DROP DATABASE IF EXISTS `{trash}`")
            cursor.execute(f"DROP DATABASE IF EXISTS `{kept}`")
        connection.close()

    def discard(self, entry: dict) -> None:
        if entry["kind"] != "mysql-database":
            return
        with connections[self.alias].cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{entry['database']}`")


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
