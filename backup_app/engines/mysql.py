"""MariaDB/MySQL: ``mariadb-dump --single-transaction`` streamed; restored into a side database whose tables
move in with one atomic ``RENAME TABLE``.

Host, port, user and password reach the client tools in a ``[client]`` option file read from a pipe
(``--defaults-extra-file=/dev/fd/N``): never on the command line, never in a file on disk.  Stock
django-dbbackup's commands get the same through :class:`OptionFileConnector`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO

from dbbackup.db.exceptions import CommandConnectorError
from dbbackup.db.mysql import MysqlDumpConnector
from django.db import connections

from .. import tools
from ..errors import BackupError, RestoreError
from ..secrets import redact
from .base import SiteLock, locked, released, tool_env, words
from .server import NoSideDatabase, ServerEngine

MISSING = "install the MySQL/MariaDB client tools"

#: What the client's option file parser (mysys) decodes inside double quotes.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b"}


def client_options(settings: dict, error: type[Exception] = BackupError) -> tools.SecretPipe:
    """A ``[client]`` option file with host, port, user and password, in a pipe.

    Every value is double-quoted with the escapes the client's parser decodes (backslash, quote, newline, CR,
    tab, backspace), so that any password arrives as it is.  A NUL character cannot be handed to the client
    tools by any means: ``error`` says so in one line that shows no part of the value.
    """
    lines = ["[client]"]
    for key, option in (("HOST", "host"), ("PORT", "port"), ("USER", "user"), ("PASSWORD", "password")):
        if not settings.get(key):
            continue
        value = str(settings[key])
        if "\0" in value:
            raise error(
                f"the database {option} of {settings.get('NAME', '')!r} holds a NUL character, which the "
                f"MariaDB/MySQL client tools cannot be given; change the {option}"
            )
        lines.append(f'{option}="' + "".join(_ESCAPES.get(c, c) for c in value) + '"')
    return tools.SecretPipe("\n".join(lines) + "\n")


def option_file_tool(connector, cmd: str, prefix, suffix, args: list[str], env, error) -> tools.Tool:
    """``prefix cmd --defaults-extra-file=/dev/fd/N args suffix`` for ``connector``'s database.

    The credentials go through the pipe (the option must come right after the program); the environment is
    made as the connector makes it: ``use_parent_env``, its ``env``, then ``env`` (its dump or restore env).
    """
    options = client_options(connector.settings, error)
    argv = [*words(prefix), cmd, f"--defaults-extra-file={options.path}", *args, *words(suffix)]
    return tools.Tool(
        argv, name=cmd, env=tool_env(connector, env), secrets=[options], error=error, missing_hint=MISSING
    )


class OptionFileConnector(MysqlDumpConnector):
    """django-dbbackup's MySQL connector with the credentials in an option file read from a pipe.

    Stock :class:`~dbbackup.db.mysql.MysqlDumpConnector` puts ``--password=...`` on the command line, where
    ``ps`` shows it and stock's error messages and failure mails quote it.  ``apply_backup_settings`` maps the
    MySQL engines to this class (``DBBACKUP_CONNECTOR_MAPPING``), so that stock ``dbbackup`` and ``dbrestore``
    use it too.  The dump and the restore are stock's (``NAME --quick``, ``--ignore-table`` per excluded
    table); every connector option applies.
    """

    #: Dumps up to this size stay in memory (stock's ``DBBACKUP_TMP_FILE_MAX_SIZE`` default); larger ones go
    #: to an unnamed temporary file, which no kill can leave behind.
    SPOOL_MAX = 10 * 1024 * 1024

    def _create_dump(self):
        name = self.settings["NAME"]
        args = [name, "--quick", *(f"--ignore-table={name}.{table}" for table in self.exclude)]
        tool = option_file_tool(
            self, self.dump_cmd, self.dump_prefix, self.dump_suffix, args, self.dump_env, CommandConnectorError
        )
        out = tempfile.SpooledTemporaryFile(max_size=self.SPOOL_MAX)
        tools.run_to(tool, out)
        out.seek(0)
        return out

    def _restore_dump(self, dump):
        with suppress(AttributeError, OSError, ValueError):
            dump.seek(0)
        args = [self.settings["NAME"]]
        tool = option_file_tool(
            self,
            self.restore_cmd,
            self.restore_prefix,
            self.restore_suffix,
            args,
            self.restore_env,
            CommandConnectorError,
        )
        tools.run_from(tool, dump)
        return None, None


class MysqlEngine(ServerEngine):
    vendor = "mysql"
    extension = MysqlDumpConnector.extension
    entry_prefix = "mysql"
    server = "MySQL"

    # --- backup ---------------------------------------------------------------------------------

    def _tool(self, cmd: str, prefix, suffix, args: list[str], database: str, env, error) -> tools.Tool:
        """``prefix cmd --defaults-extra-file=/dev/fd/N args suffix database``, the client options in the pipe."""
        return option_file_tool(self.connector, cmd, prefix, [*words(suffix), database], args, env, error)

    def dump(self, out: BinaryIO, *, compressed: bool = True) -> None:
        c = self.connector
        args = ["--single-transaction", "--quick", "--routines", "--triggers", "--hex-blob"]
        args += ["--default-character-set=utf8mb4"]
        args += [f"--ignore-table-data={self.name}.{table}" for table in self.exclude]
        tools.run_to(
            self._tool(c.dump_cmd, c.dump_prefix, c.dump_suffix, args, self.name, c.dump_env, BackupError), out
        )

    def check_dump(self, head: bytes, name: str) -> None:
        if head.lstrip()[:2] not in (b"--", b"/*"):
            raise RestoreError(f"{name} is not a MySQL dump; pick the database file of a backup set")

    # --- restore --------------------------------------------------------------------------------

    def load(self, database: str, stream: BinaryIO) -> None:
        c = self.connector
        args = ["--default-character-set=utf8mb4"]
        tool = self._tool(
            c.restore_cmd, c.restore_prefix, c.restore_suffix, args, database, c.restore_env, RestoreError
        )
        tools.run_from(tool, stream)

    def replace(self, stream: BinaryIO) -> None:
        """Drop every table of the live database, then load the dump into it (not atomic: a failure is rolled
        back by the restore from the kept dump)."""
        connection = connections[self.alias]
        with connection.cursor() as cursor:
            tables = self._tables(cursor, self.name)
            cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
            for table in tables:
                cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
            cursor.execute("SET FOREIGN_KEY_CHECKS = 1")
        connection.close()
        self.load(self.name, stream)

    def _charset(self, cursor, database: str) -> tuple[str, str]:
        cursor.execute(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
            "WHERE SCHEMA_NAME = %s",
            [database],
        )
        return cursor.fetchone()

    def create_database(self, name: str) -> None:
        with connections[self.alias].cursor() as cursor:
            charset, collation = self._charset(cursor, self.name)
            try:
                cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET {charset} COLLATE {collation}")
            except Exception as err:
                raise NoSideDatabase(redact(err)) from None

    def drop_database(self, name: str) -> None:
        with connections[self.alias].cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")

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

    def swap(self, live: str, *, aside: str, incoming: str) -> None:
        """Every table moves in one ``RENAME TABLE``: ``live``'s into ``aside`` (created like it), ``incoming``'s
        into ``live``; ``incoming`` is dropped after."""
        connection = connections[self.alias]
        with connection.cursor() as cursor:
            new_tables, old_tables = self._tables(cursor, incoming), self._tables(cursor, live)
            charset, collation = self._charset(cursor, live)
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{aside}` CHARACTER SET {charset} COLLATE {collation}")
            moves = [(live, aside, t) for t in old_tables] + [(incoming, live, t) for t in new_tables]
            try:
                if moves:
                    cursor.execute(
                        "RENAME TABLE "
                        + ", ".join(f"`{src}`.`{table}` TO `{dst}`.`{table}`" for src, dst, table in moves)
                    )
            except Exception as err:
                cursor.execute(f"DROP DATABASE IF EXISTS `{aside}`")
                raise RestoreError(
                    f"swapping in the restored tables failed ({redact(err)}); database left unchanged"
                ) from None
            cursor.execute(f"DROP DATABASE IF EXISTS `{incoming}`")
        connection.close()

    def side_databases(self, prefix: str) -> list[str]:
        with connections[self.alias].cursor() as cursor:
            cursor.execute(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE LEFT(SCHEMA_NAME, %s) = %s",
                [len(prefix), prefix],
            )
            return [r[0] for r in cursor.fetchall()]

    def tables_in(self, database: str) -> int:
        with connections[self.alias].cursor() as cursor:
            return len(self._tables(cursor, database))

    # --- the site lock --------------------------------------------------------------------------

    @contextmanager
    def lock(self, what: str) -> Iterator[SiteLock]:
        """``GET_LOCK`` (server wide), on a connection of its own; it dies with the connection."""
        import MySQLdb

        args = self.connection_args()
        conn = MySQLdb.connect(
            host=args.get("host", "localhost"),
            port=int(args.get("port", 3306)),
            user=args.get("user", ""),
            password=args.get("password", ""),
        )
        name = f"backup_app:{self.name}"[:64]
        try:
            cur = conn.cursor()
            cur.execute("SELECT GET_LOCK(%s, 0)", (name,))
            if cur.fetchone()[0] != 1:
                cur.execute("SELECT IS_USED_LOCK(%s)", (name,))
                raise locked(f"database connection {cur.fetchone()[0]}")
            yield from released(SiteLock(what, self.alias))
        finally:
            with suppress(Exception):
                conn.close()
