"""MariaDB/MySQL: ``mariadb-dump --single-transaction --routines --triggers --events`` streamed; restored into
a side database whose tables move in with one atomic ``RENAME TABLE``.

Triggers, stored routines, events and views do not move with the tables (a table with a trigger cannot be
renamed into another database at all): the swap reads their definitions (:class:`SchemaObject`, with the
``sql_mode``, character set and time zone each was made under), keeps the live database's as SQL in the safety
folder, drops them on both sides, moves the tables, and makes the staged database's again in the live one; the
routine-level grants that ``DROP`` takes away (``automatic_sp_privileges``) are put back as they were.  Grants
on the database, its tables and columns name the database and stay where they are.

Host, port, user and password reach the client tools in a ``[client]`` option file read from a pipe
(``--defaults-extra-file=/dev/fd/N``): never on the command line, never in a file on disk.  Stock
django-dbbackup's commands get the same through :class:`OptionFileConnector`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import BinaryIO

from dbbackup.db.exceptions import CommandConnectorError
from dbbackup.db.mysql import MysqlDumpConnector
from django.db import connections

from .. import tools
from ..errors import BackupError, NothingChanged, PutBackPending, RestoreError
from ..secrets import redact
from ..settings import app_settings
from ..testing import pause_at
from .base import SiteLock, locked, released, tool_env, words
from .mysql_guard import StatementGuard
from .server import NoSideDatabase, ServerEngine

MISSING = "install the MySQL/MariaDB client tools"

#: The server's error for a lock wait that ran out (``lock_wait_timeout``, ``innodb_lock_wait_timeout``).
LOCK_WAIT_TIMEOUT = 1205


def is_lock_timeout(err: BaseException) -> bool:
    """Whether ``err`` (Django's wrapper or the driver's own) is the server's lock wait timeout."""
    while err is not None:
        if getattr(err, "args", ())[:1] == (LOCK_WAIT_TIMEOUT,):
            return True
        err = err.__cause__
    return False


class WaitedOut(Exception):
    """A statement's lock wait ran out; ``what`` names what it waited for ("the tables of DB", "the function F
    of DB")."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


#: Putting back what a failed swap or restore in place had done waits this many times ``backup_db_lock_timeout``
#: for the tables: the site is not as it was until it is done.
PUT_BACK_FACTOR = 6


def _object(obj: SchemaObject, database: str) -> str:
    if obj.kind == "TRIGGER":
        return f"the table of the trigger {obj.name} in {database}"
    return f"the {obj.kind.lower()} {obj.name} of {database}"


logger = logging.getLogger("backup_app")


@dataclass
class SchemaObject:
    """A trigger, routine, event or view as ``SHOW CREATE`` gives it, with what it was made under."""

    kind: str  # TRIGGER, PROCEDURE, FUNCTION, EVENT, VIEW
    name: str
    sql: str
    sql_mode: str = ""
    charset: str = ""
    collation: str = ""
    time_zone: str = ""


#: The order objects are made in: routines first (views and triggers may call them), events last.
KINDS = ("FUNCTION", "PROCEDURE", "VIEW", "TRIGGER", "EVENT")


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def read_objects(cursor, database: str, *, definitions: bool = True) -> list[SchemaObject]:
    """Every trigger, routine, event and view of ``database``, as made in it (``USE`` it: names unqualified);
    without ``definitions`` only their kinds and names (enough to drop them)."""
    cursor.execute("SELECT DATABASE()")
    current = cursor.fetchone()[0]
    cursor.execute(f"USE {quote(database)}")
    try:
        found = []
        listings = {
            "VIEW": ("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s", [database]),
            "TRIGGER": (
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s "
                "ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER",
                [database],
            ),
            "EVENT": ("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s", [database]),
            "FUNCTION": (
                "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s "
                "AND ROUTINE_TYPE = 'FUNCTION'",
                [database],
            ),
            "PROCEDURE": (
                "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s "
                "AND ROUTINE_TYPE = 'PROCEDURE'",
                [database],
            ),
        }
        for kind in KINDS:
            query, args = listings[kind]
            cursor.execute(query, args)
            for (name,) in cursor.fetchall():
                if not definitions:
                    found.append(SchemaObject(kind, name, ""))
                    continue
                cursor.execute(f"SHOW CREATE {kind} {quote(name)}")
                row = cursor.fetchone()
                names = [d[0].lower() for d in cursor.description]
                value = dict(zip(names, row, strict=False))
                sql = next(value[n] for n in names if n.startswith(("create ", "sql original")))
                if sql is None:
                    raise RestoreError(
                        f"the {kind.lower()} {name} of {database} cannot be read by this database user "
                        "(it is another user's); nothing was changed"
                    )
                found.append(
                    SchemaObject(
                        kind,
                        name,
                        sql,
                        value.get("sql_mode", "") or "",
                        value.get("character_set_client", "") or "",
                        value.get("collation_connection", "") or "",
                        value.get("time_zone", "") or "",
                    )
                )
        return found
    finally:
        if current:
            cursor.execute(f"USE {quote(current)}")


def renamed(obj: SchemaObject, database: str, to: str) -> SchemaObject:
    """``obj`` with the name ``database`` in its SQL (where a trigger, routine or event names its own database)
    made ``to``."""
    sql = re.sub(rf"(?<![\w$]){re.escape(database)}(?![\w$])", lambda _match: to, obj.sql)
    return replace(obj, sql=sql) if sql != obj.sql else obj


def drop_objects(cursor, database: str, objects: list[SchemaObject]) -> None:
    """Drop ``objects`` (last made first); WaitedOut naming the one whose lock wait ran out."""
    for obj in reversed(objects):
        try:
            cursor.execute(f"DROP {obj.kind} IF EXISTS {quote(database)}.{quote(obj.name)}")
        except Exception as err:
            if is_lock_timeout(err):
                raise WaitedOut(_object(obj, database)) from None
            raise


def make_objects(cursor, database: str, objects: list[SchemaObject]) -> None:
    """Make ``objects`` in ``database``, each under its own sql_mode, character set and time zone."""
    cursor.execute("SELECT DATABASE(), @@SESSION.sql_mode, @@SESSION.character_set_client, "
                   "@@SESSION.collation_connection, @@SESSION.time_zone")  # fmt: skip
    current, mode, charset, collation, zone = cursor.fetchone()
    cursor.execute(f"USE {quote(database)}")
    try:
        for obj in objects:
            cursor.execute("SET SESSION sql_mode = %s", [obj.sql_mode])
            if obj.charset:
                cursor.execute(f"SET SESSION character_set_client = {obj.charset}")
            if obj.collation:
                cursor.execute(f"SET SESSION collation_connection = {obj.collation}")
            if obj.time_zone:
                cursor.execute("SET SESSION time_zone = %s", [obj.time_zone])
            try:
                cursor.execute(obj.sql)
            except Exception as err:
                if is_lock_timeout(err):
                    raise WaitedOut(_object(obj, database)) from None
                raise
    finally:
        cursor.execute("SET SESSION sql_mode = %s, time_zone = %s", [mode, zone])
        cursor.execute(f"SET SESSION character_set_client = {charset}, collation_connection = {collation}")
        if current:
            cursor.execute(f"USE {quote(current)}")


def routine_grants(cursor, database: str) -> list[tuple] | None:
    """``(user, host, routine, type, privileges)`` of every routine-level grant in ``database``; None when this
    user may not read them (``mysql.procs_priv``)."""
    try:
        cursor.execute(
            "SELECT User, Host, Routine_name, Routine_type, Proc_priv FROM mysql.procs_priv WHERE Db = %s "
            "ORDER BY 1, 2, 3, 4",
            [database],
        )
    except Exception:
        return None
    return [tuple(row) for row in cursor.fetchall()]


def put_back_routine_grants(cursor, database: str, grants: list[tuple] | None) -> None:
    """Make the routine-level grants of ``database`` exactly ``grants`` again (``DROP`` took them away, and
    ``CREATE`` may have given its maker new ones)."""
    if grants is None:
        logger.warning(
            "this database user cannot read mysql.procs_priv: grants on single routines of %s are not kept", database
        )
        return
    now = routine_grants(cursor, database) or []
    for user, host, routine, kind, _privileges in set(now) - set(grants):
        cursor.execute(f"REVOKE ALL ON {kind} {quote(database)}.{quote(routine)} FROM %s@%s", [user, host])
    for user, host, routine, kind, privileges in grants:
        for privilege in sorted(p for p in str(privileges).split(",") if p):
            cursor.execute(f"GRANT {privilege} ON {kind} {quote(database)}.{quote(routine)} TO %s@%s", [user, host])


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


def load_objects(path: Path) -> list[SchemaObject]:
    """The objects a swap kept in ``path`` (none if it wrote no file: the database had none)."""
    if not path.exists():
        return []
    return [SchemaObject(**item) for item in json.loads(path.read_text())]


def grants_file(objects: Path) -> Path:
    """Where a swap keeps the routine-level grants of the live database, beside its objects (``DROP`` of a
    routine takes its grants away: an undo of a swap stopped half way reads them here)."""
    return objects.with_name(objects.name.replace(".objects.json", "") + ".routine-grants.json")


def load_grants(objects: Path | None) -> list[tuple] | None:
    path = grants_file(objects) if objects is not None else None
    if path is None or not path.exists():
        return None
    return [tuple(row) for row in json.loads(path.read_text())]


@functools.cache
def _has_sandbox(cmd: str) -> bool:
    """Whether the client ``cmd`` takes ``--sandbox`` (MariaDB 10.5.25, 10.6.18, 10.11.8 and later)."""
    try:
        done = subprocess.run([cmd, "--help"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return b"--sandbox" in done.stdout


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
    connectors = (MysqlDumpConnector,)
    entry_prefix = "mysql"
    server = "MySQL"

    # --- backup ---------------------------------------------------------------------------------

    def _tool(self, cmd: str, prefix, suffix, args: list[str], database: str, env, error) -> tools.Tool:
        """``prefix cmd --defaults-extra-file=/dev/fd/N args suffix database``, the client options in the pipe."""
        return option_file_tool(self.connector, cmd, prefix, [*words(suffix), database], args, env, error)

    def dump(self, out: BinaryIO, *, compressed: bool = True) -> None:
        c = self.connector
        args = ["--single-transaction", "--quick", "--routines", "--triggers", "--events", "--hex-blob"]
        args += ["--default-character-set=utf8mb4"]
        args += [f"--ignore-table-data={self.name}.{table}" for table in self.exclude]
        tools.run_to(
            self._tool(c.dump_cmd, c.dump_prefix, c.dump_suffix, args, self.name, c.dump_env, BackupError), out
        )

    def check_dump(self, head: bytes, name: str) -> None:
        if head.lstrip()[:2] not in (b"--", b"/*"):
            raise RestoreError(f"{name} is not a MySQL dump; pick the database file of a backup set")

    # --- restore --------------------------------------------------------------------------------

    def load(self, database: str, stream: BinaryIO, *, wait: int | None = None) -> None:
        """Load the dump in ``stream`` into ``database``, confined to it: every statement goes through the
        :class:`~.mysql_guard.StatementGuard`; the client runs with ``--binary-mode`` (no client commands),
        ``--one-database`` and, where it has it, ``--sandbox``; its waits for a table held by another connection
        end after ``wait`` seconds (default ``backup_db_lock_timeout``; a restore in place loads into the live
        database, whose new tables the running site may take at once)."""
        c = self.connector
        wait = wait or app_settings.db_lock_timeout
        args = ["--binary-mode", "--one-database", "--default-character-set=utf8mb4"]
        args.append(f"--init-command=SET SESSION lock_wait_timeout = {int(wait)}")
        if _has_sandbox(c.restore_cmd):
            args.insert(0, "--sandbox")
        tool = self._tool(
            c.restore_cmd, c.restore_prefix, c.restore_suffix, args, database, c.restore_env, RestoreError
        )
        databases, sql_mode = self._server_state()
        guard = StatementGuard(stream, target=database, databases=databases, sql_mode=sql_mode, own=self.name)
        tools.run_from(tool, guard)

    def _server_state(self) -> tuple[set[str], str]:
        """The databases of the server the site's user sees, and the sql_mode a new session starts with."""
        with connections[self.alias].cursor() as cursor:
            cursor.execute("SHOW DATABASES")
            databases = {row[0] for row in cursor.fetchall()}
            cursor.execute("SELECT @@GLOBAL.sql_mode")
            return databases, cursor.fetchone()[0] or ""

    def replace(self, stream: BinaryIO, *, undo: bool = False) -> None:
        """Drop every table, view, trigger, routine and event of the live database, then load the dump into it,
        and put back the routine-level grants (not atomic: a failure is rolled back by the restore from the
        kept dump).  NothingChanged when the tables stayed held (one ``DROP TABLE`` of them all: the server
        takes every table's lock before it drops any); ``undo`` (putting back the kept dump) waits longer."""
        connection = connections[self.alias]
        try:
            with connection.cursor() as cursor:
                seconds = self._lock_wait(cursor, undo=undo)
                grants = routine_grants(cursor, self.name)
                objects = read_objects(cursor, self.name, definitions=False)
                tables = self._tables(cursor, self.name)
                cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
                if tables:
                    try:
                        cursor.execute("DROP TABLE IF EXISTS " + ", ".join(quote(t) for t in tables))
                    except Exception as err:
                        if is_lock_timeout(err):
                            what = f"the tables of {self.name}"
                            raise self._held(cursor, what, seconds, NothingChanged, undo=undo) from None
                        raise
                cursor.execute("SET FOREIGN_KEY_CHECKS = 1")
                try:
                    drop_objects(cursor, self.name, objects)
                except WaitedOut as err:
                    raise self._held(cursor, err.what, seconds, undo=undo) from None
        finally:
            connection.close()
        self.load(self.name, stream, wait=seconds)
        with connection.cursor() as cursor:
            put_back_routine_grants(cursor, self.name, grants)
        connection.close()

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
        """The base tables of ``database`` (views are objects: :func:`read_objects`)."""
        cursor.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE <> 'VIEW'",
            [database],
        )
        return [name for (name,) in cursor.fetchall()]

    def swap(
        self,
        live: str,
        *,
        aside: str,
        incoming: str,
        keep: Path | None = None,
        objects: Path | None = None,
        undo: bool = False,
    ) -> None:
        """Every table moves in one ``RENAME TABLE``: ``live``'s into ``aside`` (created like it), ``incoming``'s
        into ``live``; ``incoming`` is dropped after.

        Around it (see the module docstring): ``live``'s triggers, routines, events and views are written to
        ``keep`` (its routine grants beside it, :func:`grants_file`) and dropped, ``incoming``'s (or those of
        the file ``objects``) made in ``live``.  The triggers of both sides are dropped under ``LOCK TABLES`` of
        every table of both, so the only wait before anything changes is that lock (NothingChanged when it runs
        out); MariaDB refuses ``RENAME TABLE`` under ``LOCK TABLES``, so a transaction can still take a table
        between the unlock and the ``RENAME``.  If any step fails, what was done is undone, waiting
        :data:`PUT_BACK_FACTOR` times longer for the tables, and RestoreError says the database was left
        unchanged; PutBackPending if even that could not be done (the safety entry lets the next command
        finish it: :meth:`put_back_objects`).
        """
        connection = connections[self.alias]
        with connection.cursor() as cursor:
            seconds = self._lock_wait(cursor, undo=undo)
            new_tables, old_tables = self._tables(cursor, incoming), self._tables(cursor, live)
            old_objects = read_objects(cursor, live)
            staged_objects = read_objects(cursor, incoming)
            if objects is not None:
                new_objects = load_objects(objects)
            else:  # named as they were in the dump: the guard made the live database's name the staging one's
                new_objects = [renamed(o, incoming, live) for o in staged_objects]
            grants = load_grants(objects) if undo else None
            grants = grants if grants is not None else routine_grants(cursor, live)
            if keep is not None and old_objects:
                keep.write_text(json.dumps([asdict(o) for o in old_objects], indent=1))
                if grants is not None:
                    grants_file(keep).write_text(json.dumps(grants, default=str))
            charset, collation = self._charset(cursor, live)
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{aside}` CHARACTER SET {charset} COLLATE {collation}")
            moves = [(live, aside, t) for t in old_tables] + [(incoming, live, t) for t in new_tables]
            # A routine, event or view that is the same on both sides stays as it is (and so keep the grants on
            # it); a trigger belongs to its table and always goes (a table with one cannot change database).
            same = {(o.kind, o.name) for o in new_objects if o.kind != "TRIGGER" and o in old_objects}
            old_objects = [o for o in old_objects if (o.kind, o.name) not in same]
            new_objects = [o for o in new_objects if (o.kind, o.name) not in same]
            done = []
            try:
                locked = self._lock_tables(cursor, [live, incoming], seconds)
                try:
                    drop_objects(cursor, incoming, [o for o in staged_objects if o.kind == "TRIGGER"])
                    done.append("dropping")  # from here on, undone even if only some of live's objects went
                    drop_objects(cursor, live, [o for o in old_objects if o.kind == "TRIGGER"])
                finally:
                    if locked:
                        cursor.execute("UNLOCK TABLES")
                drop_objects(cursor, incoming, staged_objects)
                drop_objects(cursor, live, old_objects)
                done.append("dropped")
                pause_at(f"restore:swap-renaming:{self.alias}")
                if moves:
                    try:
                        cursor.execute(
                            "RENAME TABLE "
                            + ", ".join(f"`{src}`.`{table}` TO `{dst}`.`{table}`" for src, dst, table in moves)
                        )
                    except Exception as err:
                        if is_lock_timeout(err):
                            raise WaitedOut(f"the tables of {live}") from None
                        raise
                done.append("moved")
                make_objects(cursor, live, new_objects)
                put_back_routine_grants(cursor, live, grants)
            except Exception as err:
                if isinstance(err, NothingChanged):
                    cursor.execute(f"DROP DATABASE IF EXISTS `{aside}`")
                    raise
                if isinstance(err, WaitedOut):
                    failure = self._held(cursor, err.what, seconds)
                else:
                    failure = RestoreError(f"swapping in the restored tables failed ({redact(err)})")
                try:
                    longer = self._lock_wait(cursor, undo=True)
                    self._swap_back(cursor, live, aside, moves, done, old_objects, new_objects, grants)
                except Exception as back:
                    why = str(self._held(cursor, back.what, longer, undo=True)) if isinstance(back, WaitedOut) else None
                    raise PutBackPending(
                        f"{failure}; putting the old state back did not finish ({why or redact(back)})"
                    ) from None
                raise RestoreError(f"{failure}; database left unchanged") from None
            cursor.execute(f"DROP DATABASE IF EXISTS `{incoming}`")
        connection.close()

    def _swap_back(self, cursor, live, aside, moves, done, old_objects, new_objects, grants) -> None:
        """Undo what a failed :meth:`swap` did: the objects it made in ``live`` dropped, tables moved back, the
        objects it dropped from ``live`` (only those: one still there may be held) and the routine grants made
        again."""
        if "moved" in done:
            drop_objects(cursor, live, new_objects)
            if moves:
                try:
                    cursor.execute(
                        "RENAME TABLE "
                        + ", ".join(f"`{dst}`.`{t}` TO `{src}`.`{t}`" for src, dst, t in reversed(moves))
                    )
                except Exception as err:
                    if is_lock_timeout(err):
                        raise WaitedOut(f"the tables of {live}") from None
                    raise
        if "dropping" in done:
            self._make_missing(cursor, live, old_objects, grants)
        cursor.execute(f"DROP DATABASE IF EXISTS `{aside}`")

    def _make_missing(self, cursor, live: str, objects: list[SchemaObject], grants: list[tuple] | None) -> None:
        present = {(o.kind, o.name) for o in read_objects(cursor, live, definitions=False)}
        make_objects(cursor, live, [o for o in objects if (o.kind, o.name) not in present])
        put_back_routine_grants(cursor, live, grants)

    def put_back_objects(self, live: str, objects: Path | None) -> None:
        """What a swap stopped half way (killed, or its own put-back failed) had dropped of ``live``'s
        triggers, routines, events and views, made again from the file it kept them in, with their routine
        grants; waits :data:`PUT_BACK_FACTOR` times ``backup_db_lock_timeout`` for the tables."""
        if objects is None:
            return
        connection = connections[self.alias]
        with connection.cursor() as cursor:
            seconds = self._lock_wait(cursor, undo=True)
            kept = load_objects(objects)
            grants = load_grants(objects)
            try:
                self._make_missing(cursor, live, kept, grants if grants is not None else routine_grants(cursor, live))
            except WaitedOut as err:
                raise self._held(cursor, err.what, seconds, undo=True) from None
        connection.close()

    # --- waits for the live tables ----------------------------------------------------------------

    def _lock_wait(self, cursor, *, undo: bool = False) -> int:
        """Make this session's waits for a table's metadata lock end after ``backup_db_lock_timeout`` seconds (the
        server's default is a day: an open transaction of the running site would hold the restore that long);
        ``undo``: :data:`PUT_BACK_FACTOR` times that (putting the old state back)."""
        seconds = app_settings.db_lock_timeout * (PUT_BACK_FACTOR if undo else 1)
        cursor.execute("SET SESSION lock_wait_timeout = %s", [seconds])
        return seconds

    def _holders(self, cursor) -> str:
        """The connections to the live database with a transaction open now (InnoDB's list, which needs the
        PROCESS privilege; a transaction that read no InnoDB table is not in it)."""
        try:
            cursor.execute(
                "SELECT t.trx_mysql_thread_id, t.trx_started FROM information_schema.INNODB_TRX t "
                "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
                "WHERE t.trx_mysql_thread_id <> CONNECTION_ID() AND p.DB = %s ORDER BY t.trx_started LIMIT 5",
                [self.name],
            )
            rows = cursor.fetchall()
        except Exception:  # noqa: BLE001 - naming the holder is a help, not a need
            rows = ()
        if not rows:
            return "SHOW PROCESSLIST names it"
        found = ", ".join(f"connection {ident} since {started:%H:%M:%S}" for ident, started in rows)
        return f"open on {self.name} now: {found}"

    def _held(
        self, cursor, what: str, seconds: int, cls: type[RestoreError] = RestoreError, *, undo: bool = False
    ) -> RestoreError:
        """``what`` stayed held for ``seconds``: the connections that may hold it, and the fix (``undo``: while
        putting the old state back, where the caller says what happens next)."""
        if undo:
            return cls(f"{what} stayed held by another connection for {seconds} s too ({self._holders(cursor)})")
        return cls(
            f"{what} stayed held by another connection for {seconds} s (an open transaction or LOCK TABLES of the "
            f"running site; {self._holders(cursor)}): stop the site or end that transaction, then restore again "
            f"(or raise {app_settings.env_name('backup_db_lock_timeout')})"
        )

    def _lock_tables(self, cursor, databases: list[str], seconds: int) -> bool:
        """``LOCK TABLES`` every table of ``databases`` for writing (what ``RENAME TABLE`` and ``DROP`` need);
        NothingChanged when other connections hold one for ``seconds``; False (no lock taken) when this user
        may not lock tables or there are none."""
        tables = [f"{quote(db)}.{quote(t)} WRITE" for db in databases for t in self._tables(cursor, db)]
        if not tables:
            return False
        try:
            cursor.execute("LOCK TABLES " + ", ".join(tables))
        except Exception as err:
            if is_lock_timeout(err):
                raise self._held(cursor, f"the tables of {databases[0]}", seconds, NothingChanged) from None
            # No LOCK TABLES right: the swap's own statements wait no longer than this all the same.
            logger.debug("cannot LOCK TABLES before the swap (%s)", redact(err))
            return False
        return True

    def wait_for_tables(self, databases: list[str]) -> None:
        """Take, then let go of, a write lock on every table of ``databases``, waiting at most
        ``backup_db_lock_timeout`` seconds for other connections to let go of them."""
        connection = connections[self.alias]
        with connection.cursor() as cursor:
            seconds = self._lock_wait(cursor)
            if self._lock_tables(cursor, databases, seconds):
                cursor.execute("UNLOCK TABLES")

    def side_databases(self, prefix: str) -> list[str]:
        with connections[self.alias].cursor() as cursor:
            cursor.execute(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE LEFT(SCHEMA_NAME, %s) = %s",
                [len(prefix), prefix],
            )
            return [r[0] for r in cursor.fetchall()]

    #: ``--hex-blob`` writes a binary column's bytes as twice as many hex digits.
    dump_growth = 2

    def live_table_bytes(self) -> int:
        """The data of the live database's tables (InnoDB's estimate), not their indexes: a dump holds none, and
        with them the estimate a restore in place weighed was several times its dump."""
        with connections[self.alias].cursor() as cursor:
            cursor.execute(
                "SELECT COALESCE(SUM(DATA_LENGTH), 0) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
                [self.name],
            )
            return int(cursor.fetchone()[0])

    def spools_in_place(self) -> bool:
        """The site's user surely may not create the side database: no global CREATE, no CREATE on a database
        name pattern the side database's name matches, and no role (whose grants information_schema does not
        show) it could take."""
        side = self.side_name("restore")
        with connections[self.alias].cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM information_schema.APPLICABLE_ROLES")
            if cursor.fetchone()[0]:
                return False
            cursor.execute("SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES WHERE PRIVILEGE_TYPE = 'CREATE'")
            if cursor.fetchone()[0]:
                return False
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.SCHEMA_PRIVILEGES "
                "WHERE PRIVILEGE_TYPE = 'CREATE' AND %s LIKE TABLE_SCHEMA",
                [side],
            )
            return not cursor.fetchone()[0]

    def database_bytes(self, database: str) -> int | None:
        """Data and indexes of ``database``'s tables as information_schema gives them (InnoDB's estimate)."""
        with connections[self.alias].cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*), COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = %s",
                [database],
            )
            tables, size = cursor.fetchone()
            if not tables and database not in self.side_databases(database):
                return None
            return int(size)

    def server_data_folder(self) -> str | None:
        with connections[self.alias].cursor() as cursor:
            cursor.execute("SELECT @@datadir")
            return cursor.fetchone()[0]

    def tables_in(self, database: str) -> int:
        """Base tables of ``database``; its triggers, routines, events and views are read as the swap reads
        them, so that ``verify --restore-test`` fails where a swap would."""
        with connections[self.alias].cursor() as cursor:
            read_objects(cursor, database)
            return len(self._tables(cursor, database))

    def migrations_in(self, database: str) -> set[tuple[str, str]]:
        with connections[self.alias].cursor() as cursor:
            cursor.execute(
                "SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                [database, "django_migrations"],
            )
            row = cursor.fetchone()
            if row is None:
                return set()
            if row[0] != "BASE TABLE":
                raise RestoreError(
                    f"its django_migrations is a {row[0].lower()}, not a table; refusing it, database left unchanged"
                )
            cursor.execute(f"SELECT app, name FROM `{database}`.`django_migrations`")
            return {(str(app), str(name)) for app, name in cursor.fetchall()}

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
