"""PostgreSQL: ``pg_dump --format=custom`` streamed; ``pg_restore`` into a side database swapped in by rename.

Connection arguments, the password (``PGPASSWORD``, never the command line) and the TLS options come from
django-dbbackup's :func:`~dbbackup.db.postgresql.parse_postgres_settings`, so they match its connector.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import SimpleNamespace
from typing import BinaryIO

from dbbackup.db.postgresql import PgDumpBinaryConnector, parse_postgres_settings
from django.db import connections

from .. import tools
from ..errors import BackupError, RestoreError
from ..secrets import redact
from .base import SiteLock, holder, lock_key, locked, released, words
from .server import NoSideDatabase, ServerEngine

MAGIC = b"PGDMP"
MISSING = "install the PostgreSQL client tools"


class PostgresEngine(ServerEngine):
    vendor = "postgresql"
    extension = PgDumpBinaryConnector.extension
    entry_prefix = "pg"
    server = "PostgreSQL"
    replace_is_atomic = True  # pg_restore --single-transaction

    # --- backup ---------------------------------------------------------------------------------

    def _conn(self, database: str) -> tuple[list[str], dict]:
        """``--dbname=postgresql://...`` and the libpq environment for ``database`` (the connector's settings
        are not changed: the name is swapped in a copy)."""
        cmd_part, pg_env = parse_postgres_settings(SimpleNamespace(settings={**self.settings, "NAME": database}))
        return shlex.split(cmd_part), pg_env

    def _tool(self, cmd: str, prefix, suffix, database: str, args: list[str], env, error) -> tools.Tool:
        """``prefix cmd --dbname=... args suffix``; the password and TLS options in the environment."""
        conn, pg_env = self._conn(database)
        argv = [*words(prefix), cmd, *conn, *args, *words(suffix)]
        env = self.tool_env({**(env or {}), **pg_env})
        return tools.Tool(argv, name=cmd, env=env, error=error, missing_hint=MISSING)

    def dump(self, out: BinaryIO, *, compressed: bool = True) -> None:
        c = self.connector
        args = ["--format=custom"]
        if compressed:
            args.append("--compress=0")  # compressed once, by the pipeline
        args += [f"--exclude-table-data={table}" for table in self.exclude]
        for schema in c.schemas or []:
            args += ["-n", schema]
        tools.run_to(
            self._tool(c.dump_cmd, c.dump_prefix, c.dump_suffix, self.name, args, c.dump_env, BackupError), out
        )

    def check_dump(self, head: bytes, name: str) -> None:
        if not head.startswith(MAGIC):
            raise RestoreError(
                f"{name} is not a {self.vendor} dump (it starts with {head[:8]!r}); "
                "pick the database file of a backup set"
            )

    # --- restore --------------------------------------------------------------------------------

    def _restore(self, database: str, stream: BinaryIO, *, clean: bool) -> None:
        c = self.connector
        args = [*words(getattr(c, "pg_options", None)), "--single-transaction", "--exit-on-error"]
        if clean and c.drop:
            args += ["--clean", "--if-exists"]
        if getattr(c, "no_owner", True):
            args += ["--no-owner", "--no-privileges"]
        for schema in c.schemas or []:
            args += ["-n", schema]
        tool = self._tool(
            c.restore_cmd, c.restore_prefix, c.restore_suffix, database, args, c.restore_env, RestoreError
        )
        tools.run_from(tool, stream)

    def load(self, database: str, stream: BinaryIO) -> None:
        self._restore(database, stream, clean=False)

    def replace(self, stream: BinaryIO) -> None:
        connections[self.alias].close()
        self._restore(self.name, stream, clean=True)

    def _admin(self, dbname: str = "postgres", **extra):
        """An autocommit connection to ``dbname`` (default: the server's maintenance database)."""
        import psycopg

        return psycopg.connect(dbname=dbname, autocommit=True, **self.connection_args(), **extra)

    def create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        try:
            with self._admin() as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as err:
            raise NoSideDatabase(redact(str(err).strip().splitlines()[0])) from None

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self._admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def swap(self, live: str, *, aside: str, incoming: str) -> None:
        """In one transaction: end the sessions on ``live``, rename it to ``aside`` and ``incoming`` to ``live``."""
        from psycopg import sql

        connections[self.alias].close()
        with self._admin() as admin:
            try:
                with admin.transaction():
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (live,),
                    )
                    for old, new in ((live, aside), (incoming, live)):
                        admin.execute(
                            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
                        )
            except Exception as err:
                raise RestoreError(
                    f"swapping in the restored PostgreSQL database failed ({redact(err)}); database left unchanged"
                ) from None

    def side_databases(self, prefix: str) -> list[str]:
        with self._admin() as admin:
            rows = admin.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,))
            return [r[0] for r in rows.fetchall()]

    def tables_in(self, database: str) -> int:
        import psycopg

        with psycopg.connect(dbname=database, **self.connection_args()) as conn:
            return conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            ).fetchone()[0]

    # --- the site lock --------------------------------------------------------------------------

    @contextmanager
    def lock(self, what: str) -> Iterator[SiteLock]:
        """A session advisory lock, on a connection to the maintenance database (the site's own database can be
        swapped while it is held); it dies with the connection."""
        import psycopg

        application = f"backup_app {what} lock, {holder()}"[:63]
        try:
            conn = self._admin(application_name=application)
        except psycopg.Error:
            conn = self._admin(self.name, application_name=application)
        key = lock_key(f"{self.settings.get('HOST')}:{self.settings.get('PORT')}/{self.name}")
        try:
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                row = conn.execute(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                    "AND l.classid = %s::oid AND l.objid = %s::oid",
                    ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
                ).fetchone()
                raise locked(row[0] if row else "another process")
            yield from released(SiteLock(what, self.alias))
        finally:
            with suppress(Exception):
                conn.close()
