"""PostgreSQL: ``pg_dump`` streamed; ``pg_restore`` (or ``psql``) into a side database swapped in by rename.

The connector's class picks the format, as in django-dbbackup: ``PgDumpBinaryConnector`` (the default)
writes ``pg_dump --format=custom`` (``.psql.bin``), ``PgDumpConnector`` and ``PgDumpGisConnector`` plain SQL
(``.psql``).  A restore reads the format of the file, whatever the connector now: custom dumps go to
``pg_restore``, plain ones to ``psql`` under a ``\\restrict`` key of this run (:class:`RestrictedSql`), so a
meta-command in the file (``\\!``, ``\\connect``, ``\\copy``...) is refused instead of run.
``PgDumpGisConnector``'s ``ADMIN_USER`` creates the ``postgis`` extension in the staging database first.

Connection arguments, the password (``PGPASSWORD``, never the command line) and the TLS options come from
django-dbbackup's :func:`~dbbackup.db.postgresql.parse_postgres_settings`, so they match its connector.

What the dump carries comes back: owners and privileges (ACLs, default privileges) unless the connector option
``NO_OWNER`` asks otherwise.  What belongs to the database itself and no dump of its contents carries — owner,
encoding, locale provider, collation, ctype, ICU locale, connection limit, tablespace, ACL, per-database and
per-role-in-database settings, comment — is copied from the live database to the side database
(:class:`DatabaseProperties`) before the swap; a restore in place keeps the database, so it keeps them all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import secrets
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import BinaryIO

from dbbackup.db.postgresql import (
    PgDumpBinaryConnector,
    PgDumpConnector,
    PgDumpGisConnector,
    parse_postgres_settings,
)
from django.db import connections
from django.utils import timezone

from .. import tools
from ..errors import BackupError, RestoreError
from ..secrets import redact
from ..streams import CHUNK, FilteredReader, PrefixedReader
from ..testing import pause_at
from ..tools import owner_tag, scratch_gone
from .base import SiteLock, holder, lock_key, locked, released, words
from .postgresql_owners import (
    EXTENSION_CREATE,
    Held,
    HeldStatements,
    check_roles,
    give_back,
    lend_extension_tables,
    make_extensions,
    toc_extension,
    toc_held,
    toc_owners,
    toc_schema,
    unquote,
)
from .server import NoSideDatabase, ServerEngine

MAGIC = b"PGDMP"
#: How pg_dump begins a plain SQL dump.
PLAIN_MAGIC = b"--\n-- PostgreSQL database dump"
#: The table of contents of a dump is read from at most this much of its start.
TOC_MAX = 256 * 1024 * 1024
#: Throwaway roles that load a dump (:meth:`PostgresEngine.restricted_role`): ``bk_restore_<pid>_<tag>_<random>``
#: (:func:`~backup_app.tools.owner_tag`).
RESTRICTED_PREFIX = "bk_restore_"
MISSING = "install the PostgreSQL client tools"
#: Our own sessions on a staging database: whatever its settings (a dump's ALTER DATABASE ... SET), writes
#: work and nothing times out.
STAGING_OPTIONS = "-c default_transaction_read_only=off -c statement_timeout=0 -c lock_timeout=0"

logger = logging.getLogger("backup_app")

#: Settings whose value is a list of quoted names (``GUC_LIST_QUOTE``): given back element by element.
LIST_SETTINGS = {
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "shared_preload_libraries",
    "local_preload_libraries",
    "unix_socket_directories",
}


def split_list(value: str) -> list[str]:
    """The elements of a list setting as PostgreSQL stores it (``"$user", public``): names, some quoted."""
    items, current, quoted, i = [], "", False, 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == '"' and value[i + 1 : i + 2] == '"':
                current += '"'
                i += 1
            elif c == '"':
                quoted = False
            else:
                current += c
        elif c == '"':
            quoted = True
        elif c == ",":
            items.append(current.strip())
            current = ""
        else:
            current += c
        i += 1
    items.append(current.strip())
    return [item for item in items if item]


#: ``pg_default_acl.defaclobjtype`` -> the word ``ALTER DEFAULT PRIVILEGES`` uses, and what PUBLIC has by default.
DEFAULT_ACL_KINDS = {"r": ("TABLES", None), "S": ("SEQUENCES", None), "f": ("FUNCTIONS", "EXECUTE"),
                     "T": ("TYPES", "USAGE"), "n": ("SCHEMAS", None)}  # fmt: skip


def default_privileges_reset(rows: list[tuple[str, str | None, str, str]]) -> list[str]:
    """Statements that take every ``ALTER DEFAULT PRIVILEGES`` back to PostgreSQL's built-in defaults, from rows
    ``(role, schema or None, objtype, grantee)`` (names quoted).  Before a restore in place: tables the dump
    makes must not pick up default grants set after the backup (the dump sets its own at its end)."""
    statements, seen = [], set()
    for role, schema, objtype, grantee in rows:
        kind, public = DEFAULT_ACL_KINDS[objtype]
        scope = f"ALTER DEFAULT PRIVILEGES FOR ROLE {role}" + (f" IN SCHEMA {schema}" if schema else "")
        statements.append(f"{scope} REVOKE ALL ON {kind} FROM {grantee}")
        if schema is None and (role, objtype) not in seen:
            seen.add((role, objtype))
    for role, objtype in sorted(seen):
        kind, public = DEFAULT_ACL_KINDS[objtype]
        # What a role has by default on what it makes, and PUBLIC's default: the entry then disappears.
        statements.append(f"ALTER DEFAULT PRIVILEGES FOR ROLE {role} GRANT ALL ON {kind} TO {role}")
        if public:
            statements.append(f"ALTER DEFAULT PRIVILEGES FOR ROLE {role} GRANT {public} ON {kind} TO PUBLIC")
    return statements


def sql_text(text: str):
    """A statement built here, from names already quoted (psycopg takes only literal strings as SQL)."""
    from psycopg import sql

    return sql.SQL(text)  # type: ignore[arg-type]


@contextmanager
def missing_roles_named() -> Iterator[None]:
    """A restore that fails on a role this server lacks says what to do about it."""
    try:
        yield
    except RestoreError as err:
        if 'role "' in str(err) and "does not exist" in str(err):
            raise RestoreError(
                f"{err}; the dump gives objects or grants to a role this server does not have: create the "
                "role, or set the connector option NO_OWNER: True to restore without owners and privileges"
            ) from None
        raise


@dataclass
class DatabaseProperties:
    """What a database has of its own, outside anything ``pg_dump`` of its contents carries."""

    owner: str
    encoding: str
    provider: str  # 'c' libc, 'i' ICU
    collate: str
    ctype: str
    icu_locale: str | None
    connlimit: int
    tablespace: str
    acl: list[tuple[str, str, bool]] | None  # (grantee or '' for PUBLIC, privilege, grantable); None: default
    comment: str | None
    settings: list[tuple[str | None, list[str]]] = field(default_factory=list)  # (role or None, name=value...)

    @classmethod
    def read(cls, admin, database: str) -> DatabaseProperties:
        row = admin.execute(
            "SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datlocprovider, d.datcollate,"
            " d.datctype, d.daticulocale, d.datconnlimit, t.spcname, d.datacl IS NULL,"
            " shobj_description(d.oid, 'pg_database'), d.oid"
            " FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = %s",
            (database,),
        ).fetchone()
        acl = None
        if not row[8]:
            acl = [
                (grantee or "", privilege, grantable)
                for grantee, privilege, grantable in admin.execute(
                    "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,"
                    " a.privilege_type, a.is_grantable"
                    " FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s",
                    (database,),
                ).fetchall()
            ]
        settings = admin.execute(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, s.setconfig"
            " FROM pg_db_role_setting s WHERE s.setdatabase = %s ORDER BY 1 NULLS FIRST",
            (row[10],),
        ).fetchall()
        return cls(*row[:8], acl=acl, comment=row[9], settings=[(r, list(c)) for r, c in settings])

    def create(self, admin, name: str) -> None:
        """``CREATE DATABASE name`` with this owner, encoding, locale and connection limit (from template0)."""
        from psycopg import sql

        parts = [
            sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING {}").format(
                sql.Identifier(name), sql.Identifier(self.owner), sql.Literal(self.encoding)
            ),
            sql.SQL("LC_COLLATE {} LC_CTYPE {}").format(sql.Literal(self.collate), sql.Literal(self.ctype)),
            sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(self.connlimit)),
        ]
        if admin.info.server_version >= 150000:
            parts.append(sql.SQL("LOCALE_PROVIDER {}").format(sql.SQL("icu" if self.provider == "i" else "libc")))
            if self.provider == "i" and self.icu_locale:
                parts.append(sql.SQL("ICU_LOCALE {}").format(sql.Literal(self.icu_locale)))
        if self.tablespace != "pg_default":
            parts.append(sql.SQL("TABLESPACE {}").format(sql.Identifier(self.tablespace)))
        admin.execute(sql.SQL(" ").join(parts))

    def setting_statements(self, name: str, *, reset: bool = False) -> list:
        """``ALTER DATABASE name SET ...`` / ``ALTER ROLE r IN DATABASE name SET ...`` (``reset``: RESET ALL)."""
        from psycopg import sql

        statements = []
        for role, config in self.settings:
            target = sql.SQL("ALTER DATABASE {}").format(sql.Identifier(name))
            if role is not None:
                target = sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), sql.Identifier(name))
            if reset:
                statements.append(sql.SQL("{} RESET ALL").format(target))
                continue
            for item in config:
                key, _, value = item.partition("=")
                values = split_list(value) if key.lower() in LIST_SETTINGS else [value]
                statements.append(
                    sql.SQL("{} SET {} TO {}").format(
                        target, sql.Identifier(key), sql.SQL(", ").join(sql.Literal(v) for v in values)
                    )
                )
        return statements

    def apply(self, admin, name: str) -> None:
        """Give database ``name`` these settings, comment and ACL."""
        from psycopg import sql

        for statement in self.setting_statements(name):
            admin.execute(statement)
        if self.comment is not None:
            admin.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(self.comment))
            )
        if self.acl is not None:
            db = sql.Identifier(name)
            admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC, {}").format(db, sql.Identifier(self.owner)))
            for grantee, privilege, grantable in self.acl:
                admin.execute(
                    sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                        sql.SQL(privilege),
                        db,
                        sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                        sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                    )
                )

    def check(self, admin, name: str) -> None:
        """Try the settings on the new, empty database ``name`` and take them off again: a refusal comes now,
        before any of the dump is read, not after (they go back on after the load, which they could hamper)."""
        for statement in self.setting_statements(name):
            admin.execute(statement)
        if self.comment is not None:
            from psycopg import sql

            admin.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(self.comment))
            )
        for statement in self.setting_statements(name, reset=True):
            admin.execute(statement)


class RestrictedSql(FilteredReader):
    """A plain SQL dump for ``psql``, which runs any meta-command it meets (``\\! cmd`` is a shell command).

    It starts with ``\\restrict KEY`` (psql 15.14 and later), KEY random to this run: from there psql refuses
    every meta-command but ``\\unrestrict KEY``, which no file can know (``own_key=False``: no such line, the
    caller puts it first).  pg_dump writes its own ``\\restrict K`` at the top and ``\\unrestrict K`` at the
    end: those lines are left out (they would be refused).  ``\\restrict K`` is found by where it is: the first
    line starting with a backslash when nothing but comment and blank lines come before it; ``\\unrestrict K``
    by its key: any line that is exactly ``\\unrestrict`` with that same K, wherever it stands (K is pg_dump's
    random key, so no data line holds it by chance; SQL after it, as an edited dump has, still runs).  Any
    other such line (another key) passes: inside a string literal (a ``--inserts`` dump's text holding that
    line) it is data; at the top level psql refuses it and the restore fails.  Every other byte passes
    unchanged, in bounded memory.
    """

    _KEY = re.compile(rb"\\restrict ([A-Za-z0-9]+)\r?\n?")
    _LONGEST = 256  # a line starting with a backslash is judged when it ends within this many bytes
    _HEAD_MOST = 1 << 16  # pg_dump's key line comes after four comment and blank lines: looked for this far
    _BACKSLASH_LINE = re.compile(rb"\n\\")  # (a regular expression finds it faster than bytes.find)
    _NOT_BLANK = re.compile(rb"[^ \t\r\n]")

    @staticmethod
    def key_line() -> bytes:
        return b"\\restrict " + secrets.token_hex(24).encode() + b"\n"

    def __init__(self, stream, own_key: bool = True):
        super().__init__(stream, self.key_line() if own_key else b"")
        self._head: bytearray | None = bytearray()  # the start of the dump, until pg_dump's key line is found
        self._unrestrict = None  # matches pg_dump's ``\unrestrict K`` line, once its ``\restrict K`` was found
        self._held = b""  # the start of a line beginning with a backslash, not yet judged
        self._line_start = True

    def _end_head(self, final: bool) -> None:
        """Find pg_dump's ``\\restrict K``: the first line starting with a backslash, when only comment and blank
        lines come before it.  Until that is decided, what was read is kept in ``_head``."""
        head, pos = bytes(self._head), 0
        while True:
            nl = head.find(b"\n", pos)
            end = len(head) if nl < 0 else nl + 1
            line = head[pos:end]
            if line.startswith(b"\\"):
                if nl < 0 and not final and len(line) <= self._LONGEST:
                    return  # judged once whole
                whole = len(line) <= (self._LONGEST + 1 if nl >= 0 else self._LONGEST)
                match = self._KEY.fullmatch(line) if whole else None
                if match:
                    self._unrestrict = re.compile(re.escape(b"\\unrestrict " + match.group(1)) + rb"\r?\n?")
                self._out += head[:pos]
                rest = head[end:] if match else head[pos:]
                break
            if pos > self._HEAD_MOST:
                pass
            elif nl >= 0 and (line.startswith(b"--") or not self._NOT_BLANK.search(line)):
                pos = end
                continue
            elif nl < 0 and not final and (line[:2] in (b"--", b"-") or not self._NOT_BLANK.search(line)):
                if len(head) <= self._HEAD_MOST:
                    return  # may still be a comment or blank line
            self._out += head[:pos]  # a line that is neither: pg_dump's key line is not there
            rest = head[pos:]
            break
        self._head = None
        if rest:
            self._feed_body(rest)

    def _judge(self, line: bytes) -> bytes:
        if self._unrestrict is not None and self._unrestrict.fullmatch(line):
            return b""  # pg_dump's own ``\unrestrict K``, wherever it stands
        return line

    def _feed(self, data: bytes) -> None:
        if self._head is None:
            self._feed_body(data)
        else:
            self._head += data
            self._end_head(final=False)

    def _feed_body(self, data: bytes) -> None:
        """Every other line passes as a block: only a line starting with a backslash is looked at (found by
        ``\\n\\\\``), judged whole when it ends within :attr:`_LONGEST` bytes, else passed on as it came."""
        out, longest = self._out, self._LONGEST
        if self._held:
            data, self._held = self._held + data, b""
            pos = 0
        elif self._line_start and data[:1] == b"\\":
            pos = 0
        else:
            # Not at a backslash line: pass everything up to the next line starting with one.
            match = self._BACKSLASH_LINE.search(data)
            if match is None:
                out += data
                self._line_start = data.endswith(b"\n")
                return
            pos = match.start() + 1
            out += data[:pos]
        n = len(data)
        while True:
            # data[pos] is a backslash at the start of a line
            nl = data.find(b"\n", pos, pos + longest + 1)
            if nl >= 0:
                out += self._judge(data[pos : nl + 1])
                pos = nl + 1
            elif n - pos <= longest:
                self._held = data[pos:]
                return
            else:  # longer than any line judged: passes as it is, to its end
                nl = data.find(b"\n", pos)
                if nl < 0:
                    out += data[pos:]
                    self._line_start = False
                    return
                out += data[pos : nl + 1]
                pos = nl + 1
            if pos < n and data[pos] == 0x5C and data[pos - 1] == 0x0A:  # the next line starts with a backslash too
                continue
            match = self._BACKSLASH_LINE.search(data, pos)
            if match is None:
                out += data[pos:]
                self._line_start = data.endswith(b"\n")
                return
            out += data[pos : match.start() + 1]
            pos = match.start() + 1

    def _finish(self) -> None:
        if self._head is not None:
            self._end_head(final=True)
        if self._held:
            self._out += self._judge(self._held)
            self._held = b""


@dataclass
class Confined:
    """The throwaway role that loads a superuser site's dump (:meth:`PostgresEngine.restricted_role`)."""

    user: str
    password: str = field(repr=False)
    site: str  # the site's role, which gets what the load made
    held: Held = field(default_factory=Held)  # what the load left out, given back after it

    def settings(self) -> dict:
        """``USER`` and ``PASSWORD`` for the connector's settings."""
        return {"USER": self.user, "PASSWORD": self.password}

    def args(self) -> dict:
        return {"user": self.user, "password": self.password}


class BeforeLastCommit(FilteredReader):
    """A ``pg_restore --single-transaction`` script with ``insert`` put before its closing ``COMMIT;`` (the last
    line that is ``COMMIT;``, followed only by blank lines, comments and ``\\unrestrict``).  A script without
    one raises: its transaction is then never committed."""

    def __init__(self, stream, insert: bytes):
        super().__init__(stream)
        self._insert = insert
        self._buf = b""
        self._held: bytearray | None = None  # from a COMMIT; line on, while nothing else came after it

    def _line(self, line: bytes) -> None:
        bare = line.rstrip(b"\r\n")
        if bare == b"COMMIT;":
            if self._held is not None:
                self._out += self._held
            self._held = bytearray(line)
        elif self._held is not None and (not bare.strip() or bare.startswith((b"--", b"\\unrestrict "))):
            self._held += line
        else:
            if self._held is not None:
                self._out += self._held
                self._held = None
            self._out += line

    def _feed(self, data: bytes) -> None:
        data, pos = self._buf + data, 0
        if self._held is None:  # the fast way: whole blocks with no COMMIT; line pass as they are
            last = data.rfind(b"\n") + 1
            if b"\nCOMMIT;" not in data[:last] and not data.startswith(b"COMMIT;"):
                self._out += data[:last]
                self._buf = data[last:]
                return
        while (nl := data.find(b"\n", pos)) >= 0:
            self._line(data[pos : nl + 1])
            pos = nl + 1
        self._buf = data[pos:]

    def _finish(self) -> None:
        if self._buf:
            self._line(self._buf)
            self._buf = b""
        if self._held is None:
            raise RestoreError("the restore script has no closing COMMIT; nothing was loaded")
        self._out += self._insert + self._held


class Appended(FilteredReader):
    """``stream``, then what ``tail()`` returns, called at its end (it may raise: the load then never ends)."""

    def __init__(self, stream, tail):
        super().__init__(stream)
        self._tail = tail

    def _feed(self, data: bytes) -> None:
        self._out += data

    def _finish(self) -> None:
        self._out += self._tail()


@dataclass
class Lent:
    """What a superuser site's load in place lends its throwaway role (:meth:`PostgresEngine._lend`).

    ``schema`` (named as the role, in the live database, the superuser's) holds the functions the load calls:
    ``begin_load(token)`` first, which does the drops as the superuser; ``end_load(token)`` last; and
    ``make_schema(name)`` in between, for a plain dump's ``CREATE SCHEMA``.  The tokens are random to this run:
    only the hash of each is in the functions, so a dump cannot make either call."""

    schema: str
    begin: str = field(repr=False)
    end: str = field(repr=False)

    def call(self, function: str, token: str) -> bytes:
        return f"SELECT \"{self.schema}\".{function}('{token}');\n".encode()

    def make_schema(self, name: str) -> bytes:
        tag = f"n{secrets.token_hex(8)}"
        if f"${tag}$" in name:
            raise RestoreError(f"the dump creates a schema named {name[:60]!r}, which cannot be passed on")
        return f'SELECT "{self.schema}".make_schema(${tag}${name}${tag}$);\n'.encode()


class PostgresEngine(ServerEngine):
    vendor = "postgresql"
    extension = PgDumpBinaryConnector.extension
    entry_prefix = "pg"
    server = "PostgreSQL"
    replace_is_atomic = True  # one transaction: pg_restore --single-transaction, as a script or not
    connectors = (PgDumpConnector,)  # PgDumpBinaryConnector and PgDumpGisConnector are subclasses

    def __init__(self, alias: str, connector):
        super().__init__(alias, connector)
        #: PgDumpConnector and PgDumpGisConnector write plain SQL; PgDumpBinaryConnector the custom format.
        self.plain = not isinstance(connector, PgDumpBinaryConnector)
        self.extension = connector.extension
        self.single_transaction = bool(getattr(connector, "single_transaction", True))
        # A custom dump in place always loads in one transaction (the drops need it); SINGLE_TRANSACTION false
        # applies to loads into the side database and to plain dumps.
        self.replace_is_atomic = self.single_transaction or not self.plain

    # --- backup ---------------------------------------------------------------------------------

    def _conn(self, database: str, login: dict | None = None) -> tuple[list[str], dict]:
        """``--dbname=postgresql://...`` and the libpq environment for ``database`` (the connector's settings
        are not changed: the name, and ``login``'s USER and PASSWORD, are swapped in a copy)."""
        settings = {**self.settings, "NAME": database, **(login or {})}
        cmd_part, pg_env = parse_postgres_settings(SimpleNamespace(settings=settings))
        return shlex.split(cmd_part), pg_env

    def _tool(
        self, cmd: str, prefix, suffix, database: str, args: list[str], env, error, login: dict | None = None
    ) -> tools.Tool:
        """``prefix cmd --dbname=... args suffix``; the password and TLS options in the environment."""
        conn, pg_env = self._conn(database, login)
        argv = [*words(prefix), cmd, *conn, *args, *words(suffix)]
        env = self.tool_env({**(env or {}), **pg_env})
        return tools.Tool(argv, name=cmd, env=env, error=error, missing_hint=MISSING)

    def _script_tool(self, restore_cmd: str, args: list[str]) -> tools.Tool:
        """``prefix pg_restore args suffix`` with no database: it reads an archive and writes its TOC or its SQL
        script (fed to ``psql``), in the connector's restore environment."""
        c = self.connector
        argv = [*words(c.restore_prefix), restore_cmd, *args, *words(c.restore_suffix)]
        return tools.Tool(
            argv, name=restore_cmd, env=self.tool_env(c.restore_env), error=RestoreError, missing_hint=MISSING
        )

    def stage(self, stream: BinaryIO):
        """With the connector's ``SCHEMAS`` the dump holds those schemas only: swapping it in for the whole
        database would drop every other schema.  It is loaded in place instead (:class:`InPlace`), which drops
        and loads only what those schemas hold and keeps a dump of them for undo, as stock's restore leaves
        the rest of the database alone."""
        if self.connector.schemas:
            logger.warning(
                "the connector's SCHEMAS (%s) name only part of the database: restoring them in place, the other "
                "schemas left as they are",
                ", ".join(self.connector.schemas),
            )
            return self.strategies()[1].stage(stream)
        return super().stage(stream)

    def dump(self, out: BinaryIO, *, compressed: bool = True) -> None:
        c = self.connector
        if self.plain:  # as PgDumpConnector: DROP (and IF_EXISTS, check E022) go into the dump
            # pg_dump takes --if-exists only with --clean (stock passes it with DROP false too, and pg_dump fails).
            args = ["--clean", "--if-exists"] if c.drop else []
            if getattr(c, "no_owner", False):
                args += ["--no-owner", "--no-privileges"]
        else:
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
        if not head.startswith((MAGIC, PLAIN_MAGIC)):
            raise RestoreError(
                f"{name} is not a {self.vendor} dump (it starts with {head[:8]!r}); "
                "pick the database file of a backup set"
            )

    # --- restore --------------------------------------------------------------------------------

    def _restore(
        self, database: str, stream: BinaryIO, *, clean: bool, login: Confined | None = None, listing: str = ""
    ) -> None:
        """``pg_restore`` into ``database`` (a plain dump: :meth:`_restore_plain`); ``login``: as the throwaway
        role, owners left out (:func:`give_back` puts them back); ``listing``: a ``--use-list`` file."""
        head = stream.read(len(MAGIC))
        stream = PrefixedReader(head, stream)
        if not head.startswith(MAGIC):
            self._restore_plain(database, stream)
            return
        c = self.connector
        restore_cmd = c.restore_cmd if not self.plain else PgDumpBinaryConnector.restore_cmd
        args = [*words(getattr(c, "pg_options", None)), "--exit-on-error"]
        if self.single_transaction:
            args.append("--single-transaction")
        if clean:
            args += ["--clean", "--if-exists"]
        if getattr(c, "no_owner", False):
            # Asked for (connector option NO_OWNER): objects belong to the restoring role, grants are dropped.
            logger.warning("restoring without owners and privileges (the connector option NO_OWNER is set)")
            args += ["--no-owner", "--no-privileges"]
        elif login:
            args.append("--no-owner")  # a throwaway role's load: the owners are given back after it
        if listing:
            args.append(f"--use-list={listing}")
        for schema in c.schemas or []:
            args += ["-n", schema]
        tool = self._tool(
            restore_cmd,
            c.restore_prefix,
            c.restore_suffix,
            database,
            args,
            c.restore_env,
            RestoreError,
            login.settings() if login else None,
        )
        with missing_roles_named():
            tools.run_from(tool, stream)

    def _restore_plain(
        self, database: str, stream: BinaryIO, login: Confined | None = None, *, before: bytes = b""
    ) -> None:
        """A plain SQL dump through ``psql``, its meta-commands refused (:class:`RestrictedSql`); ``login``: as
        the throwaway role, what it may not run taken out (:class:`HeldStatements`) into ``login.held``;
        ``before``: SQL run ahead of the dump, after the key line (pg_dump's own key lines are still found where
        pg_dump puts them)."""
        c = self.connector
        restore_cmd = c.restore_cmd if self.plain else PgDumpConnector.restore_cmd
        args = ["--no-psqlrc", "--quiet", "--output=/dev/null", "--set", "ON_ERROR_STOP=on"]
        if self.single_transaction:
            args.append("--single-transaction")
        if isinstance(c, PgDumpGisConnector) and self.settings.get("ADMIN_USER"):
            self._enable_postgis(database)
            if login:
                with self._admin(database, options=STAGING_OPTIONS) as conn:
                    lend_extension_tables(conn, login.user)
        tool = self._tool(
            restore_cmd,
            c.restore_prefix,
            c.restore_suffix,
            database,
            args,
            c.restore_env,
            RestoreError,
            login.settings() if login else None,
        )
        if login:
            stream = HeldStatements(stream, login.held)
        with missing_roles_named():
            body = RestrictedSql(stream, own_key=False)
            tools.run_from(tool, PrefixedReader(RestrictedSql.key_line() + before, body))

    def _enable_postgis(self, database: str) -> None:
        """``CREATE EXTENSION IF NOT EXISTS postgis`` in ``database`` as the connector's ``ADMIN_USER``
        (``ADMIN_PASSWORD`` through the environment), as ``PgDumpGisConnector`` does before its restore."""
        import psycopg

        admin = {**self.connection_args(), "user": str(self.settings["ADMIN_USER"])}
        admin.pop("password", None)
        if self.settings.get("ADMIN_PASSWORD"):
            admin["password"] = str(self.settings["ADMIN_PASSWORD"])
        try:
            with psycopg.connect(dbname=database, autocommit=True, **admin) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        except psycopg.Error as err:
            raise RestoreError(
                f"enabling PostGIS as ADMIN_USER {admin['user']!r} failed ({redact(str(err).strip())})"
            ) from None

    def load(self, database: str, stream: BinaryIO) -> None:
        """Restore the dump into the staging ``database`` with no more rights than the dump needs.

        When the site's role is a superuser, what a dump defines (a CHECK constraint, a default, a trigger
        calling a function; any statement of a plain SQL dump) would run with a superuser's rights as it
        loads: create roles, ``COPY ... PROGRAM``, read server files, act on other databases.  So the dump is
        loaded by a throwaway role that is no superuser and owns the staging database and nothing else
        (:meth:`restricted_role`).  What that role may not do is left out of the load and done afterwards by
        the superuser from the parts of the dump, not its SQL (:mod:`.postgresql_owners`): owners other than
        the site's role, default privileges, comments on extensions.  Everything else the role made goes to the
        site's role.  A role that is no superuser loads as itself: never with more rights than the site has.
        """
        head = stream.read(len(MAGIC))
        stream = PrefixedReader(head, stream)
        toc: list[str] = []
        if head.startswith(MAGIC):
            head, toc = self._toc(stream)
            stream = PrefixedReader(head, stream)
        with self.restricted_role(database) as login:
            if login is None:
                self._restore(database, stream, clean=False)
                self._reset_database(database)
            elif not head.startswith(MAGIC):
                self._restore_plain(database, stream, login)
                self._reset_database(database)
                self._give_back(database, login)
            else:
                with tempfile.TemporaryDirectory(prefix="backup-app-toc-") as where:
                    folder = Path(where)
                    read = [line for line in toc if toc_held(line) or toc_extension(line)]
                    self._held_entries(head, read, folder, login.held)
                    with self._admin(database, options=STAGING_OPTIONS) as conn:
                        make_extensions(conn, login.held)
                        lend_extension_tables(conn, login.user)
                    listing = folder / "toc.list"  # the whole table of contents, the held entries left out
                    listing.write_text("".join(f";{line}\n" if toc_held(line) else f"{line}\n" for line in toc))
                    self._restore(database, stream, clean=False, login=login, listing=str(listing))
                self._reset_database(database)
                if getattr(self.connector, "no_owner", False):
                    login.held.owners, login.held.default_acls = [], []
                else:
                    login.held.owners = toc_owners(toc)
                self._give_back(database, login)
        # What the database has of its own (settings, comment, ACL) goes on once the dump is in.
        with self._admin() as admin:
            DatabaseProperties.read(admin, self.name).apply(admin, database)

    def _reset_database(self, database: str, expected: DatabaseProperties | None = None) -> None:
        """Take off what the load gave ``database`` itself (its owner, the loading role, may: ``ALTER DATABASE
        ... SET search_path``, ``default_transaction_read_only``, ``ALTER ROLE ... IN DATABASE ... SET``, a
        comment, grants), which a swap would carry into the site and no dump of a database's contents sets.

        ``expected``: what it had before the load (a restore in place): each part the load changed is put back
        (and only those: a setting of another role this one may not set stays untouched).  Without it (a new
        database) each is taken off; the live database's own go on after (:meth:`DatabaseProperties.apply`)."""
        from psycopg import sql

        db = sql.Identifier(database)
        with self._admin() as admin:
            now = DatabaseProperties.read(admin, database)
            if expected is None:
                expected = dataclasses.replace(now, acl=None, comment=None, settings=[])
            before, after = dict(expected.settings), dict(now.settings)
            for role in sorted(set(before) | set(after), key=lambda r: r or ""):
                if before.get(role) == after.get(role):
                    continue
                if role is None:
                    admin.execute(sql.SQL("ALTER DATABASE {} RESET ALL").format(db))
                else:
                    admin.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL").format(sql.Identifier(role), db))
                if role in before:
                    mine = dataclasses.replace(expected, settings=[(role, before[role])])
                    for statement in mine.setting_statements(database):
                        admin.execute(statement)
            if now.comment != expected.comment:
                admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(expected.comment)))
            if now.acl != expected.acl:
                for grantee in sorted({grantee for grantee, _p, _g in now.acl or []}):
                    target = sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC")
                    admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {} CASCADE").format(db, target))
                if expected.acl is None:  # what PostgreSQL gives a new database, spelled out
                    admin.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO PUBLIC").format(db))
                    admin.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(db, sql.Identifier(now.owner)))
                else:
                    dataclasses.replace(expected, settings=[], comment=None).apply(admin, database)

    def _give_back(self, database: str, login: Confined) -> None:
        with self._admin(database, options=STAGING_OPTIONS) as conn:
            give_back(conn, login.user, login.site, login.held)

    def _held_entries(self, head: bytes, entries: list[str], folder, held: Held) -> None:
        """The default privileges and extension comments of the dump, read (not run) from its table of
        contents: ``pg_restore --use-list`` of those entries alone writes their SQL, parsed by :class:`Held`."""
        if not entries:
            return
        listing = folder / "held.list"
        listing.write_text("".join(f"{line}\n" for line in entries), encoding="utf-8")
        c = self.connector
        restore_cmd = PgDumpBinaryConnector.restore_cmd if self.plain else c.restore_cmd
        argv = [*words(c.restore_prefix), restore_cmd, f"--use-list={listing}", "--file=-", *words(c.restore_suffix)]
        try:
            done = subprocess.run(argv, input=head, capture_output=True, env=self.tool_env(c.restore_env), check=False)
        except FileNotFoundError:
            raise RestoreError(f"{restore_cmd} was not found; {MISSING}") from None
        if done.returncode:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            why = redact(lines[0] if lines else f"exit {done.returncode}")
            raise RestoreError(f"{restore_cmd} could not read the dump's privileges: {why}")
        for line in done.stdout.decode(errors="replace").splitlines():
            if match := EXTENSION_CREATE.fullmatch(line):
                held.extensions.append((unquote(match.group(1)), unquote(match.group(2))))
            elif line.startswith(("ALTER DEFAULT PRIVILEGES ", "COMMENT ON EXTENSION ")) and not held.take(line):
                raise RestoreError(f"the dump holds a statement not understood among its privileges: {line[:120]!r}")

    def _toc(self, stream: BinaryIO) -> tuple[bytes, list[str]]:
        """The entries of the dump's table of contents (``pg_restore --list``: ``id; oid oid DESC schema tag
        owner``) and the bytes read from ``stream`` for them (the archive starts with its TOC)."""
        c = self.connector
        restore_cmd = PgDumpBinaryConnector.restore_cmd if self.plain else c.restore_cmd  # not psql's --list
        running = tools.start(self._script_tool(restore_cmd, ["--list"]))
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(running.stdout.read()), daemon=True)
        reader.start()
        head = bytearray()
        broken = False
        try:
            while running.proc.poll() is None and len(head) < TOC_MAX:
                data = stream.read(CHUNK)
                if not data:
                    break
                head += data
                try:
                    running.stdin.write(data)
                    running.stdin.flush()
                except BrokenPipeError:
                    break  # it has read the TOC
        except BaseException:
            running.kill()
            raise
        finally:
            with suppress(OSError):
                running.stdin.close()
            running.wait()
            reader.join()
        running.check(broken=broken)
        lines = (out[0] if out else b"").decode(errors="replace").splitlines()
        return bytes(head), [line for line in lines if line and not line.startswith(";")]

    def spools_in_place(self) -> bool:
        """With ``SCHEMAS``, or a site role that may not create databases (and is no superuser)."""
        if self.connector.schemas:
            return True
        with self._admin() as admin:
            row = admin.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        return row is not None and not row[0]

    def live_table_bytes(self) -> int:
        """The rows of the tables and materialized views in the dumped schemas (``SCHEMAS``, else every schema
        but the system's): their main fork and TOAST, not their indexes (a dump holds none; they were most of the
        bytes, and the estimate a restore in place weighed was then several times its dump) nor the free-space
        and visibility maps (tens of KiB a table, more than the rows of a small table)."""
        schemas = list(self.connector.schemas or [])
        with self._admin(self.name) as admin:
            row = admin.execute(
                "SELECT COALESCE(sum(pg_relation_size(c.oid) "
                "+ COALESCE(pg_relation_size(NULLIF(c.reltoastrelid, 0)), 0)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%' "
                "AND (%s OR n.nspname = ANY(%s))",
                (not schemas, schemas),
            ).fetchone()
        return int(row[0])

    def _site_role(self) -> tuple[str, bool]:
        """The site's role and whether it is a superuser."""
        with self._admin() as admin:
            return admin.execute("SELECT rolname, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()

    @contextmanager
    def restricted_role(self, database: str) -> Iterator[Confined | None]:
        """For a ``with`` block: a new login role (``bk_restore_<pid>_<tag>_<random>``, random password, valid one day)
        that is no superuser, cannot create roles or databases, and owns ``database``; yields its
        :class:`Confined` login.  Afterwards everything it owns there goes to the site's role and the role is
        dropped.  Yields None (load as the site's role) when that role is no superuser.

        The password reaches the server only as a SCRAM-SHA-256 verifier computed here (libpq's
        ``PQencryptPasswordConn``), so no statement text (``pg_stat_activity``, ``log_statement``) holds it;
        the tools get it in their environment (``PGPASSWORD``), never on their command line.  Its login is tried
        before the load, so a ``pg_hba.conf`` that lets only the site's role in is said plainly.
        """
        from psycopg import sql

        site, superuser = self._site_role()
        if not superuser:
            yield None
            return
        login = self._new_role(site)
        role = login.user
        owner = None
        try:
            with self._admin() as admin:
                row = admin.execute(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)
                ).fetchone()
                owner = row[0] if row else None
                admin.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(role))
                )
            self._try_login(login, database)
            pause_at(f"restore:loading:{self.alias}")
            yield login
        except BaseException:
            # The load failed: the staging database is thrown away, and the role with it.  Whatever that cleanup
            # meets is a warning: the error shown stays the one that stopped the load.
            self._discard(database, role)
            raise
        try:
            self._retire(role, database)
        except BaseException:
            self._discard(database, role)
            raise
        if owner is not None:  # the staging database was made like the live one: its owner too
            with self._admin() as admin:
                admin.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(owner))
                )

    def _new_role(self, site: str) -> Confined:
        """A new throwaway login role (``bk_restore_<pid>_<tag>_<random>``) that is no superuser, cannot create roles or
        databases, with a random password that reaches the server only as a SCRAM-SHA-256 verifier."""
        from psycopg import sql

        role = f"{RESTRICTED_PREFIX}{os.getpid()}_{owner_tag()}_{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(24)
        with self._admin() as admin:
            verifier = admin.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
            admin.execute(
                sql.SQL(
                    "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT "
                    "CONNECTION LIMIT 4 PASSWORD {} VALID UNTIL {}"
                ).format(
                    sql.Identifier(role),
                    sql.Literal(verifier),
                    sql.Literal((timezone.now() + timedelta(days=1)).isoformat()),
                )
            )
        return Confined(role, password, site)

    def _try_login(self, login: Confined, database: str) -> None:
        """Log in as ``login`` to ``database`` as the tools will: a refusal names the ``pg_hba.conf`` line to add."""
        import psycopg

        try:
            args = {**self.connection_args(), **login.args()}
            psycopg.connect(dbname=database, connect_timeout=10, **args).close()
        except psycopg.OperationalError as err:
            text = redact(str(err).strip().splitlines()[0])
            host = self.connection_args().get("host", "")
            if not host or host.startswith("/") or host.startswith("@"):  # a Unix socket: 'local' lines apply
                role = self.connection_args().get("user") or "SITE_ROLE"
                where = (
                    "pg_hba.conf lets socket logins in by peer (the OS user's name must be the role's), which a "
                    "throwaway role never passes: "
                    if "peer authentication" in text.lower()
                    else "where pg_hba.conf lets only the site's role in, "
                )
                fix = (
                    f"let the site's role in by peer and every other role with a password over the socket (e.g. "
                    f"'local all {role} peer' then 'local all all scram-sha-256'), or give the site a role that is "
                    "no superuser"
                )
            else:
                where = "where pg_hba.conf lets only the site's role in, "
                fix = (
                    "let every role log in with a password from the site's host (e.g. 'host all all 127.0.0.1/32 "
                    "scram-sha-256'), or give the site a role that is no superuser"
                )
            raise RestoreError(
                f"the throwaway role {login.user} that loads dumps of a superuser site could not log in as the site "
                f"does ({text}): {where}{fix}"
            ) from None

    # --- a superuser site's restore in place ----------------------------------------------------

    def _replace_confined(self, stream: BinaryIO, site: str, *, undo: bool) -> None:
        """:meth:`replace` for a superuser site: the dump is loaded over the live database by a throwaway role, in
        one transaction, with no more rights than the load must have (:meth:`_lend`): the drops are done by a
        function of this restore the load calls first, as the superuser; the role owns ``public`` (the dump
        grants and comments on it) and the schemas the dump makes, for that transaction only.  Owners, default
        privileges and extension comments are given back afterwards by the superuser from the parts of the dump,
        as after a swap; everything else the role made goes to the site's role.

        The connector's ``DROP`` false is not honoured here when undoing (the kept dump always replaces); without
        drops the role can only add what is not there.  ``SINGLE_TRANSACTION`` false is not honoured: what is
        lent lasts one transaction."""
        c = self.connector
        start = stream.tell()
        custom = os.pread(stream.fileno(), len(MAGIC), start).startswith(MAGIC)
        if not custom and not self.single_transaction:
            logger.warning("SINGLE_TRANSACTION false is not honoured: a superuser site's restore in place loads in one")
        no_owner = bool(getattr(c, "no_owner", False))
        drops = self._drops(confined=True) if (undo or c.drop) else []
        held, toc, schemas = Held(), [], []
        with tempfile.TemporaryDirectory(prefix="backup-app-toc-") as where:
            folder = Path(where)
            if custom:
                head, toc = self._toc(stream)
                stream.seek(start)
                named = set(c.schemas or [])
                schemas = [n for line in toc if (n := toc_schema(line)) and (not named or n in named)]
                self._held_entries(head, [line for line in toc if toc_held(line)], folder, held)
                held.owners = [] if no_owner else toc_owners(toc)
                if no_owner:
                    held.default_acls = []
                with self._admin() as admin:
                    check_roles(admin, held, site)
            login = self._new_role(site)
            try:
                lent = self._lend(login, drops, schemas)
                if custom:
                    listing = folder / "toc.list"  # held entries and schemas left out (made by begin_load)
                    listing.write_text(
                        "".join(f";{line}\n" if toc_held(line) or toc_schema(line) else f"{line}\n" for line in toc)
                    )
                    self._load_custom_confined(stream, login, lent, listing, no_owner)
                else:
                    self._load_plain_confined(stream, login, lent, held, no_owner, guard=not undo)
                with self._admin(self.name, options=STAGING_OPTIONS) as conn:
                    ended = conn.execute(
                        sql_text(f"SELECT EXISTS (SELECT 1 FROM \"{lent.schema}\".state WHERE step = 'end')")
                    ).fetchone()[0]
                if not ended:
                    raise RestoreError("the dump ended the restore's transaction before its end; nothing was loaded")
            except BaseException:
                self._abandon_in_place(login.user, login.user)  # the schema is named as the role
                raise
        try:  # the load is committed: from here on, a failure leaves it in place (the safety dump undoes it)
            pause_at(f"restore:in-place-loaded:{self.alias}")
            with self._admin(self.name, options=STAGING_OPTIONS) as conn:
                give_back(conn, login.user, site, held)
                self._return_lent(conn, lent.schema)
            self._retire(login.user, self.name)
        except BaseException as err:
            # The role must not outlive this run, whatever stopped it here (SIGTERM too): what it owns goes to the
            # superuser, its schema and it are dropped, as the next restore's cleanup does for a killed run.
            self._clear_committed(login.user)
            if not isinstance(err, Exception):
                raise
            error = RestoreError(f"giving back owners after the load failed ({redact(err)})")
            error.committed = True
            raise error from None

    def _clear_committed(self, role: str) -> None:
        """After a committed load in place whose owners were not given back: clear ``role`` from the live database
        and drop it (:meth:`_clear_in_place`; the restore's undo then loads the safety dump).  Never raises: what
        could not be removed is one warning line (a later restore's :meth:`cleanup` removes it)."""
        try:
            self._clear_in_place(role)
            self._retire(role, None)
        except Exception as err:  # noqa: BLE001 - the error that stopped the restore is the one shown
            logger.warning("could not remove the throwaway role %s (%s); a later restore removes it", role, redact(err))

    def _lend(self, login: Confined, drops: list[str], schemas: list[str]) -> Lent:
        """In the live database, as the superuser, one transaction: the schema of this restore (named as the
        role, the superuser's) with its functions, EXECUTE on them for the role only, CONNECT for the role if
        PUBLIC lacks it; then the role's login is tried.  Nothing of the live data changes here."""
        from psycopg import sql

        role = login.user
        lent = Lent(role, secrets.token_hex(24), secrets.token_hex(24))
        s, r = sql.Identifier(role), sql.Identifier(role)
        tag = f"bk{secrets.token_hex(12)}"
        with self._admin(self.name, options=STAGING_OPTIONS) as conn, conn.transaction():
            conn.execute("SET search_path = pg_catalog")
            public_owner = conn.execute(
                "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'"
            ).fetchone()
            named = self.connector.schemas or []
            dumps_public = public_owner is not None and (not named or "public" in named)
            body = [*drops]
            make = sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}")
            body += [make.format(sql.Identifier(n), r).as_string(conn) for n in schemas]
            if dumps_public:
                body.append(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(r).as_string(conn))
            begin = "".join(f"{statement};\n" for statement in body)
            if f"${tag}$" in begin:
                raise RestoreError("a name in the live database holds this restore's quoting tag; try again")

            def token_check(token: str) -> str:
                digest = hashlib.sha256(token.encode()).hexdigest()
                return (
                    f"IF encode(sha256(convert_to(token, 'UTF8')), 'hex') <> '{digest}' THEN "
                    "RAISE EXCEPTION 'not a call of this restore'; END IF;\n"
                )

            begun = (
                f"IF NOT EXISTS (SELECT 1 FROM {s.as_string(conn)}.state WHERE step = 'begin' "
                "AND xid = txid_current()) THEN RAISE EXCEPTION 'the dump ended the restore''s transaction before "
                "its end (a COMMIT or ROLLBACK of its own)'; END IF;\n"
            )
            header = "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS "
            schema = s.as_string(conn)
            statements = [
                f"CREATE SCHEMA {schema}",
                f"CREATE TABLE {schema}.state (step text PRIMARY KEY, xid bigint NOT NULL DEFAULT txid_current(),"
                " value text)",
                sql.SQL("INSERT INTO {}.state (step, xid, value) VALUES ('public-owner', 0, {})")
                .format(s, sql.Literal(public_owner[0] if dumps_public else None))
                .as_string(conn),
                f"CREATE FUNCTION {schema}.guard() RETURNS trigger {header}${tag}$BEGIN\n"
                f"IF NOT EXISTS (SELECT 1 FROM {schema}.state WHERE step = 'end' AND xid = txid_current()) THEN "
                "RAISE EXCEPTION 'the dump ended the restore''s transaction before its end (a COMMIT or ROLLBACK "
                f"of its own)'; END IF;\nRETURN NULL;\nEND ${tag}$",
                f"CREATE CONSTRAINT TRIGGER guard AFTER INSERT ON {schema}.state DEFERRABLE INITIALLY DEFERRED "
                f"FOR EACH ROW WHEN (NEW.step = 'begin') EXECUTE FUNCTION {schema}.guard()",
                f"CREATE FUNCTION {schema}.begin_load(token text) RETURNS void {header}${tag}$BEGIN\n"
                f"{token_check(lent.begin)}INSERT INTO {schema}.state (step) VALUES ('begin');\n{begin}END ${tag}$",
                f"CREATE FUNCTION {schema}.make_schema(name text) RETURNS void {header}${tag}$BEGIN\n{begun}"
                "EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', name, "
                f"{sql.Literal(role).as_string(conn)});\n"
                f"END ${tag}$",
                f"CREATE FUNCTION {schema}.end_load(token text) RETURNS void {header}${tag}$BEGIN\n"
                f"{token_check(lent.end)}{begun}INSERT INTO {schema}.state (step) VALUES ('end');\nEND ${tag}$",
                f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {schema} FROM PUBLIC",
                f"GRANT USAGE ON SCHEMA {schema} TO {r.as_string(conn)}",
                f"GRANT EXECUTE ON FUNCTION {schema}.begin_load(text), {schema}.end_load(text), "
                f"{schema}.make_schema(text) TO {r.as_string(conn)}",
            ]
            for statement in statements:
                conn.execute(sql_text(statement))
            if not conn.execute("SELECT has_database_privilege(%s, current_database(), 'CONNECT')", (role,)).fetchone()[
                0
            ]:
                conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(self.name), r))
        self._try_login(login, self.name)
        return lent

    def _load_custom_confined(self, stream: BinaryIO, login: Confined, lent: Lent, listing: Path, no_owner) -> None:
        c = self.connector
        args = [*words(getattr(c, "pg_options", None)), "--single-transaction", "--no-owner", "--file=-"]
        if no_owner:
            logger.warning("restoring without owners and privileges (the connector option NO_OWNER is set)")
            args.append("--no-privileges")
        args.append(f"--use-list={listing}")
        for schema in c.schemas or []:
            args += ["-n", schema]
        script = self._script_tool(c.restore_cmd, args)
        psql = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]
        loader = self._tool("psql", None, None, self.name, psql, c.restore_env, RestoreError, login.settings())
        end = lent.call("end_load", lent.end)
        with missing_roles_named():
            tools.run_chain(
                script,
                stream,
                loader,
                after=b"BEGIN;",
                insert=lent.call("begin_load", lent.begin),
                through=lambda out: BeforeLastCommit(out, end),
            )

    def _load_plain_confined(
        self, stream: BinaryIO, login: Confined, lent: Lent, held: Held, no_owner, *, guard: bool
    ) -> None:
        c = self.connector
        restore_cmd = c.restore_cmd if self.plain else PgDumpConnector.restore_cmd
        args = ["--no-psqlrc", "--quiet", "--output=/dev/null", "--set", "ON_ERROR_STOP=on", "--single-transaction"]
        tool = self._tool(
            restore_cmd, c.restore_prefix, c.restore_suffix, self.name, args, c.restore_env, RestoreError,
            login.settings(),
        )  # fmt: skip

        def end() -> bytes:  # the whole dump has been read: every role it names is known, checked before COMMIT
            if no_owner:
                held.owners, held.default_acls = [], []
            with self._admin() as admin:
                check_roles(admin, held, login.site)
            return lent.call("end_load", lent.end)

        # pg_dump's own key lines are found where it puts them, before the load's own first and last calls
        body = Appended(
            HeldStatements(RestrictedSql(stream, own_key=False), held, make_schema=lent.make_schema, guard=guard), end
        )
        with missing_roles_named():
            tools.run_from(tool, PrefixedReader(RestrictedSql.key_line() + lent.call("begin_load", lent.begin), body))

    def _return_lent(self, conn, schema: str) -> None:
        """``public`` back to the owner it had (what the dump said of its grants stays), and the restore's schema
        dropped."""
        from psycopg import sql

        row = conn.execute(
            sql.SQL("SELECT value FROM {}.state WHERE step = 'public-owner'").format(sql.Identifier(schema))
        ).fetchone()
        if row and row[0]:
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(row[0])))
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

    def _abandon_in_place(self, role: str, schema: str | None) -> None:
        """After a failed load in place (rolled back): what the role made outside that transaction (a dump that
        ended it and went on) is dropped, then the restore's schema and the role.  Never raises: what could not be
        removed is one warning line (a later restore removes it)."""
        from psycopg import sql

        try:
            with self._admin() as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s "
                    "AND pid <> pg_backend_pid()",
                    (role,),
                )
            with self._admin(self.name, options=STAGING_OPTIONS) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                if schema:
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            self._retire(role, None)
        except Exception as err:  # noqa: BLE001 - the load's error is the one shown
            logger.warning("could not remove the throwaway role %s (%s); a later restore removes it", role, redact(err))

    def _discard(self, database: str, role: str) -> None:
        """After a failed load: drop the staging ``database`` first (every session on it ended), then ``role``
        (it owns nothing once the database is gone).  Never raises: what could not be removed is logged as one
        warning line with the SQL that removes it."""
        left = []
        try:
            self.drop_database(database)
        except Exception as err:  # noqa: BLE001 - reported below, the load's error goes on
            left.append((f"staging database {database}", f'DROP DATABASE "{database}" WITH (FORCE)', err))
        try:
            self._retire(role, None)
        except Exception as err:  # noqa: BLE001 - reported below, the load's error goes on
            left.append((f"throwaway role {role}", f'DROP OWNED BY "{role}"; DROP ROLE "{role}"', err))
        if left:
            logger.warning(
                "could not remove the %s (%s); remove %s with: %s (a later restore also removes it)",
                " and the ".join(what for what, _, _ in left),
                "; ".join(redact((str(err).strip() or type(err).__name__).splitlines()[0]) for *_, err in left),
                "them" if len(left) > 1 else "it",
                "; ".join(how for _, how, _ in left),
            )

    def _retire(self, role: str, database: str | None) -> None:
        """Give what ``role`` owns in ``database`` to the site's role and drop ``role``."""
        from psycopg import sql

        ident = sql.Identifier(role)
        if database:  # an error here is the cause: DROP ROLE would only fail after it for what it still owns
            with self._admin(database, options=STAGING_OPTIONS) as conn:
                conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(ident))
                conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        with self._admin() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
                (role,),
            )
            admin.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))

    def cleanup(self) -> list[str]:
        """What a killed restore left: staging databases, spool folders, and its throwaway role.  A throwaway role
        of a gone process that still holds something in another database (another site's restore, killed) is
        left to that site's next restore: only there can what it made be cleared or given back."""
        gone = super().cleanup()
        with self._admin() as admin:
            rows = admin.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (RESTRICTED_PREFIX,)
            ).fetchall()
        for (role,) in rows:
            if not scratch_gone(role[len(RESTRICTED_PREFIX) :], "_"):
                continue  # still at work, or another host's (roles are the server's: its own host cleans it)
            with self._admin() as admin:  # roles are the server's: one that holds another database's is not ours
                elsewhere = admin.execute(
                    "SELECT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid "
                    "WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = to_regrole(%(r)s) "
                    "AND d.datname <> %(db)s UNION SELECT datname FROM pg_database "
                    "WHERE datdba = to_regrole(%(r)s) AND datname <> %(db)s",
                    {"r": f'"{role}"', "db": self.name},
                ).fetchall()
            if elsewhere:
                continue  # that site's next restore clears it in its own database, then drops it
            try:
                self._clear_in_place(role)
                self._retire(role, None)
            except Exception as err:  # noqa: BLE001 - a leftover must not stop this restore; the next one looks again
                logger.warning("could not remove the throwaway role %s left behind (%s)", role, redact(err))
                continue
            gone.append(role)
        return gone

    def _clear_in_place(self, role: str) -> None:
        """What a killed restore in place left of ``role`` in the live database: a committed load (its schema says
        so) goes to the site's role, with ``public`` back to its owner (the killed restore is undone from its
        safety dump); anything else the role made there is dropped; then the restore's schema."""
        from psycopg import sql

        ident = sql.Identifier(role)
        with self._admin(self.name, options=STAGING_OPTIONS) as conn:
            found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (role,)).fetchone()
            if (
                found
                and conn.execute(
                    sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.state WHERE step = 'end')").format(ident)
                ).fetchone()[0]
            ):
                conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(ident))
            if found:
                self._return_lent(conn, role)
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))

    def replace(self, stream: BinaryIO, *, undo: bool = False) -> None:
        """Load the dump over the live database in one transaction, everything of the database's own (owner,
        locale, ACL, settings, comment) kept, as the swap leaves it: ``pg_restore`` writes the dump as a script,
        ``psql`` runs it in the script's one transaction after dropping every object of the dumped schemas, so that the
        result holds exactly what the backup holds (tables made after it, say by newer migrations, are gone
        and cannot collide with the dump's).  ``stream`` is a file (the spooled dump, or the safety dump).

        A plain SQL dump goes to ``psql`` (meta-commands refused) after the same drops.  ``undo`` (putting the
        kept dump back) always drops first, whatever the connector's DROP says."""
        connections[self.alias].close()
        with self._admin() as admin:
            props = DatabaseProperties.read(admin, self.name)
        site, superuser = self._site_role()
        try:
            if superuser:
                self._replace_confined(stream, site, undo=undo)
            else:
                self._replace(stream, undo=undo)
        finally:
            self._reset_database(self.name, props)  # what the dump gave the live database itself comes off

    def _replace(self, stream: BinaryIO, *, undo: bool) -> None:
        c = self.connector
        # A file: the script path below hands its descriptor on, so its offset must not move (pread).
        head = os.pread(stream.fileno(), len(MAGIC), stream.tell())
        drop = undo or c.drop
        if not head.startswith(MAGIC):
            drops = "".join(f"{statement};\n" for statement in self._drops()) if drop else ""
            if self.single_transaction and not undo:  # its own COMMIT would commit the drops alone
                stream = HeldStatements(stream, None, guard=True)
            self._restore_plain(self.name, stream, before=drops.encode())
            return
        if not drop:  # the connector asks not to drop anything: load over what is there
            self._restore(self.name, stream, clean=False)
            return
        drops = "".join(f"{statement};\n" for statement in self._drops())
        args = [*words(getattr(c, "pg_options", None)), "--single-transaction", "--clean", "--if-exists", "--file=-"]
        if getattr(c, "no_owner", False):
            logger.warning("restoring without owners and privileges (the connector option NO_OWNER is set)")
            args += ["--no-owner", "--no-privileges"]
        for schema in c.schemas or []:
            args += ["-n", schema]
        script = self._script_tool(c.restore_cmd, args)
        psql = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]
        loader = self._tool("psql", None, None, self.name, psql, c.restore_env, RestoreError)
        # The drops go right after the script's BEGIN: one transaction, committed by the script's last line.
        with missing_roles_named():
            tools.run_chain(script, stream, loader, after=b"BEGIN;", insert=drops.encode())

    def _drops(self, *, confined: bool = False) -> list[str]:
        """``DROP ... CASCADE`` of every object of the dumped schemas that no extension owns: the schemas other
        than ``public`` (the dump makes them again), and in ``public`` (or the connector's ``schemas``) the
        tables, views, materialized views, sequences, foreign tables, routines and types; then the default
        privileges of those schemas taken back (and the database-wide ones, when the whole database is dumped).

        ``confined`` (a throwaway role loads, without ``--clean``): the connector's ``schemas`` other than
        ``public`` are dropped whole too, since the dump makes them again.  Names come spelled in full
        (``search_path`` empty), so the statements mean the same wherever they run."""
        import psycopg

        schemas = list(self.connector.schemas or [])
        with psycopg.connect(dbname=self.name, **self.connection_args()) as conn:
            conn.execute("SET search_path = pg_catalog")
            rows = conn.execute(
                """
                WITH ns AS (
                    SELECT n.oid, n.nspname FROM pg_namespace n
                    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                      AND n.nspname NOT LIKE 'pg\\_%%'
                      AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_namespace'::regclass
                                      AND e.objid = n.oid AND e.deptype = 'e')
                      AND (cardinality(%(schemas)s::text[]) = 0 OR n.nspname = ANY(%(schemas)s::text[]))
                ), members AS (
                    SELECT classid, objid FROM pg_depend WHERE deptype = 'e'
                )
                SELECT 0, 'SCHEMA', format('%%I', nspname) FROM ns
                 WHERE nspname <> 'public' AND (cardinality(%(schemas)s::text[]) = 0 OR %(confined)s)
                UNION ALL
                SELECT 1, CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                               WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
                       format('%%I.%%I', ns.nspname, c.relname)
                  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND NOT c.relispartition
                   AND NOT EXISTS (SELECT 1 FROM members m WHERE m.classid = 'pg_class'::regclass
                                   AND m.objid = c.oid)
                UNION ALL
                SELECT 2, CASE p.prokind WHEN 'a' THEN 'AGGREGATE' ELSE 'ROUTINE' END,
                       format('%%I.%%I(%%s)', ns.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
                  FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
                 WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.classid = 'pg_proc'::regclass
                                   AND m.objid = p.oid)
                UNION ALL
                SELECT 3, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
                       format('%%I.%%I', ns.nspname, t.typname)
                  FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
                 WHERE t.typtype IN ('c', 'd', 'e', 'r')
                   AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
                   AND NOT EXISTS (SELECT 1 FROM members m WHERE m.classid = 'pg_type'::regclass
                                   AND m.objid = t.oid)
                ORDER BY 1, 3
                """,
                {"schemas": schemas, "confined": confined},
            ).fetchall()
            defaults = conn.execute(
                """
                SELECT format('%%I', pg_get_userbyid(d.defaclrole)),
                       CASE WHEN d.defaclnamespace = 0 THEN NULL ELSE format('%%I', n.nspname) END,
                       d.defaclobjtype,
                       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE format('%%I', pg_get_userbyid(a.grantee)) END
                  FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace,
                       aclexplode(d.defaclacl) a
                 WHERE cardinality(%(schemas)s::text[]) = 0 OR n.nspname = ANY(%(schemas)s::text[])
                 GROUP BY 1, 2, 3, 4 ORDER BY 1, 2 NULLS FIRST, 3, 4
                """,
                {"schemas": schemas},
            ).fetchall()
        statements = [f"DROP {kind} IF EXISTS {name} CASCADE" for _order, kind, name in rows]
        return statements + default_privileges_reset(defaults)

    def _admin(self, dbname: str = "postgres", **extra):
        """An autocommit connection to ``dbname`` (default: the server's maintenance database)."""
        import psycopg

        return psycopg.connect(dbname=dbname, autocommit=True, **self.connection_args(), **extra)

    def create_database(self, name: str) -> None:
        """A database like the live one: same owner, encoding, locale provider, collation, ctype, ICU locale,
        connection limit and tablespace; its settings and comment tried on it (:meth:`DatabaseProperties.check`)
        so that one this role may not copy sends the restore in place, where the database keeps them all."""
        import psycopg

        try:
            with self._admin() as admin:
                props = DatabaseProperties.read(admin, self.name)
                props.create(admin, name)
                try:
                    props.check(admin, name)
                except psycopg.Error:
                    self.drop_database(name)
                    raise
        except psycopg.Error as err:
            raise NoSideDatabase(redact(str(err).strip().splitlines()[0])) from None

    def drop_database(self, name: str, *, attempts: int = 3) -> None:
        """Drop ``name``: end every other session on it, then ``DROP DATABASE ... WITH (FORCE)`` (PostgreSQL 13 and
        later; before, a plain drop); a session that comes in between is ended on the next of ``attempts`` tries."""
        import psycopg
        from psycopg import sql

        for attempt in range(1, attempts + 1):
            try:
                with self._admin() as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (name,),
                    )
                    force = sql.SQL(" WITH (FORCE)") if admin.info.server_version >= 130000 else sql.SQL("")
                    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force))
                return
            except psycopg.errors.ObjectInUse:
                if attempt == attempts:
                    raise
                time.sleep(0.2 * attempt)

    def swap(self, live: str, *, aside: str, incoming: str, keep=None, objects=None, undo=False) -> None:
        """In one transaction: end the sessions on ``live``, rename it to ``aside`` and ``incoming`` to ``live``
        (a renamed database takes everything in it along: ``keep`` and ``objects`` are not needed)."""
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

    def database_bytes(self, database: str) -> int | None:
        with self._admin() as admin:
            row = admin.execute(
                "SELECT pg_database_size(oid) FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            return row[0] if row else None

    def server_data_folder(self) -> str | None:
        """``data_directory``: shown only to superusers and members of pg_read_all_settings (else None)."""
        import psycopg

        try:
            with self._admin() as admin:
                return admin.execute("SELECT current_setting('data_directory')").fetchone()[0]
        except psycopg.Error:
            return None

    def tables_in(self, database: str) -> int:
        import psycopg

        with psycopg.connect(dbname=database, **self.connection_args()) as conn:
            return conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            ).fetchone()[0]

    def migrations_in(self, database: str) -> set[tuple[str, str]]:
        import psycopg

        with psycopg.connect(dbname=database, **self.connection_args()) as conn:
            conn.execute("SET search_path = pg_catalog")
            columns = conn.execute(
                "SELECT c.relkind, a.attname, a.atttypid::regtype::text FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname IN ('app', 'name') "
                "AND NOT a.attisdropped "
                "WHERE n.nspname = 'public' AND c.relname = 'django_migrations'"
            ).fetchall()
            if not columns:
                return set()
            kinds = {kind for kind, _column, _type in columns}
            types = {column: kind for _relkind, column, kind in columns if column}
            if kinds != {"r"} or set(types) != {"app", "name"} or set(types.values()) - {"character varying", "text"}:
                raise RestoreError(
                    "its django_migrations is not a plain table of text columns; refusing it, database left unchanged"
                )
            rows = conn.execute("SELECT app, name FROM public.django_migrations").fetchall()
            return {(app, name) for app, name in rows}

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
