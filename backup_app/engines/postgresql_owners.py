"""Owners and default privileges of a PostgreSQL dump loaded by a role that may not give them.

A superuser site's dump is loaded by a throwaway role that is no superuser (:meth:`PostgresEngine.load`).
Such a role cannot run the dump's ``ALTER ... OWNER TO other_role`` or ``ALTER DEFAULT PRIVILEGES FOR ROLE
other_role`` (nor ``COMMENT ON EXTENSION`` of an extension a superuser made), so those are kept out of the
load and given back afterwards, as the superuser, in a controlled way: nothing of the dump's own SQL text runs
with the superuser's rights.

- An owner is given back only to an object the load made, found in the staging database's catalog by its kind
  and name; the ``ALTER ... OWNER TO`` is built from the catalog's own quoting of that name, the role must
  exist on the server (else the restore stops and says so).
- A default privilege is read by a strict grammar (``ALTER DEFAULT PRIVILEGES FOR ROLE r [IN SCHEMA s]
  GRANT|REVOKE privileges ON TABLES|SEQUENCES|FUNCTIONS|TYPES|SCHEMAS TO|FROM roles``) and rebuilt from its
  parts; anything else in its place stops the restore.

Plain SQL dumps carry these as statements (:class:`HeldStatements` takes them out of the stream); custom
dumps as entries of their table of contents (``pg_restore --list`` and ``--use-list``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from ..errors import RestoreError
from ..streams import FilteredReader

logger = logging.getLogger("backup_app")

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED = rf"{_IDENT}(?:\.{_IDENT})?"
#: ``ALTER <kind> <name> OWNER TO <role>;`` as pg_dump writes it (a function's name has its arguments).
OWNER_STATEMENT = re.compile(
    rf"ALTER ((?:[A-Z]+ ){{0,3}}?[A-Z]+) ({_QUALIFIED}(?:\((?:[^;()'\"]|{_IDENT})*\))?) OWNER TO ({_IDENT});\s*"
)
_PRIVILEGE = r"(?:ALL(?: PRIVILEGES)?|SELECT|INSERT|UPDATE|DELETE|TRUNCATE|REFERENCES|TRIGGER|USAGE|EXECUTE|CREATE)"
_GRANTEES = rf"(?:PUBLIC|(?:GROUP )?{_IDENT})(?:, ?(?:PUBLIC|(?:GROUP )?{_IDENT}))*"
DEFAULT_ACL_STATEMENT = re.compile(
    rf"ALTER DEFAULT PRIVILEGES FOR ROLE ({_IDENT})(?: IN SCHEMA ({_IDENT}))? "
    rf"(?:(GRANT) ({_PRIVILEGE}(?:,{_PRIVILEGE})*) ON (TABLES|SEQUENCES|FUNCTIONS|TYPES|SCHEMAS) +TO ({_GRANTEES})"
    rf"( WITH GRANT OPTION)?"
    rf"|(REVOKE) ({_PRIVILEGE}(?:,{_PRIVILEGE})*) ON (TABLES|SEQUENCES|FUNCTIONS|TYPES|SCHEMAS) +FROM ({_GRANTEES}))"
    r";\s*"
)
#: ``COMMENT ON EXTENSION name IS '...';`` (the literal with ``''`` escapes only, as pg_dump writes it).
EXTENSION_COMMENT = re.compile(rf"COMMENT ON EXTENSION ({_IDENT}) IS ('(?:[^']|'')*'|NULL);\s*")
#: ``DROP EXTENSION IF EXISTS name;`` of a ``--clean`` dump: pointless in the new staging database, and refused
#: to the throwaway role for an extension the superuser made there (PostGIS, by the connector's ADMIN_USER).
EXTENSION_DROP = re.compile(rf"DROP EXTENSION IF EXISTS ({_IDENT});\s*")
#: ``CREATE EXTENSION IF NOT EXISTS name WITH SCHEMA schema;`` as pg_dump writes it.
EXTENSION_CREATE = re.compile(rf"CREATE EXTENSION IF NOT EXISTS ({_IDENT}) WITH SCHEMA ({_IDENT});\s*")

#: What a dump's kind of object is in the catalog: relations, routines, types, schemas.
KIND_GROUPS = {
    "TABLE": "rel", "VIEW": "rel", "MATERIALIZED VIEW": "rel", "SEQUENCE": "rel", "FOREIGN TABLE": "rel",
    "FUNCTION": "proc", "PROCEDURE": "proc", "AGGREGATE": "proc",
    "TYPE": "type", "DOMAIN": "type",
    "SCHEMA": "schema",
}  # fmt: skip


def unquote(ident: str) -> str:
    """A name as PostgreSQL reads it: ``"A""b"`` is ``A"b``, an unquoted one folds to lower case."""
    if ident.startswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident.lower()


def split_names(text: str) -> list[str]:
    """``a, "b c", GROUP d`` -> ``['a', 'b c', 'd']`` (``PUBLIC`` as ``''``)."""
    names = re.findall(rf"(?:GROUP )?({_IDENT})", text)
    return ["" if name == "PUBLIC" else unquote(name) for name in names]


@dataclass(frozen=True)
class DefaultAcl:
    """One ``ALTER DEFAULT PRIVILEGES`` statement, in parts."""

    role: str
    schema: str | None
    grant: bool
    privileges: tuple[str, ...]
    kind: str
    grantees: tuple[str, ...]  # '' is PUBLIC
    grant_option: bool = False

    @classmethod
    def parse(cls, text: str) -> DefaultAcl:
        match = DEFAULT_ACL_STATEMENT.fullmatch(text)
        if match is None:
            raise RestoreError(f"the dump sets default privileges in a form not understood: {text.strip()[:120]!r}")
        g = match.groups()
        grant = g[2] == "GRANT"
        privileges, kind, grantees = (g[3], g[4], g[5]) if grant else (g[8], g[9], g[10])
        return cls(
            role=unquote(g[0]),
            schema=unquote(g[1]) if g[1] else None,
            grant=grant,
            privileges=tuple(p.strip() for p in privileges.split(",")),
            kind=kind,
            grantees=tuple(split_names(grantees)),
            grant_option=bool(g[6]),
        )

    def roles(self) -> set[str]:
        return {self.role, *(g for g in self.grantees if g)}

    def statement(self):
        from psycopg import sql

        parts = [sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {}").format(sql.Identifier(self.role))]
        if self.schema is not None:
            parts.append(sql.SQL("IN SCHEMA {}").format(sql.Identifier(self.schema)))
        grantees = sql.SQL(", ").join(sql.Identifier(g) if g else sql.SQL("PUBLIC") for g in self.grantees)
        privileges = sql.SQL(", ").join(sql.SQL(p) for p in self.privileges)  # from the grammar's fixed words
        if self.grant:
            parts.append(sql.SQL("GRANT {} ON {} TO {}").format(privileges, sql.SQL(self.kind), grantees))
            if self.grant_option:
                parts.append(sql.SQL("WITH GRANT OPTION"))
        else:
            parts.append(sql.SQL("REVOKE {} ON {} FROM {}").format(privileges, sql.SQL(self.kind), grantees))
        return sql.SQL(" ").join(parts)


@dataclass
class Held:
    """What a load by the throwaway role left out, to be given back as the superuser."""

    #: ``(kind group, name as the dump writes it, owner)``: plain statements name the object qualified
    #: (``public.t``, ``public.f(x integer)``), table-of-contents entries as ``schema`` + `` `` + tag.
    owners: list[tuple[str, str, str]] = field(default_factory=list)
    unknown_owners: list[str] = field(default_factory=list)
    default_acls: list[DefaultAcl] = field(default_factory=list)
    extension_comments: list[tuple[str, str | None]] = field(default_factory=list)
    #: ``(extension, schema)`` a custom dump creates: made first by the superuser where the server has them
    #: and the schema exists (an extension that is not *trusted*, such as PostGIS, is refused to the role).
    extensions: list[tuple[str, str]] = field(default_factory=list)

    def take(self, statement: str) -> bool:
        """Keep ``statement`` (one line of a plain dump) if it is one of those; whether it was."""
        if statement.startswith("ALTER DEFAULT PRIVILEGES "):
            self.default_acls.append(DefaultAcl.parse(statement))
            return True
        if statement.startswith("DROP EXTENSION IF EXISTS "):
            return EXTENSION_DROP.fullmatch(statement) is not None
        if statement.startswith("COMMENT ON EXTENSION "):
            match = EXTENSION_COMMENT.fullmatch(statement)
            if match is None:
                return False
            literal = match.group(2)
            text = None if literal == "NULL" else literal[1:-1].replace("''", "'")
            self.extension_comments.append((unquote(match.group(1)), text))
            return True
        match = OWNER_STATEMENT.fullmatch(statement)
        if match is None:
            return False
        kind, name, role = match.groups()
        group = KIND_GROUPS.get(kind)
        if group is None:
            self.unknown_owners.append(f"{kind} {name}")
            group = "?"
        self.owners.append((group, name, unquote(role)))
        return True

    def roles(self) -> set[str]:
        return {role for _g, _n, role in self.owners} | {r for acl in self.default_acls for r in acl.roles()}


#: ``CREATE SCHEMA name;`` as pg_dump writes it.
SCHEMA_CREATE = re.compile(rf"CREATE SCHEMA ({_IDENT});\s*")

#: Catalog names of what ``role`` owns in the current database, in the two spellings of a dump:
#: ``(group, qualified name as pg_dump quotes it, schema + ' ' + table-of-contents tag, ALTER kind, oid)``.
OWNED_OBJECTS = """
SELECT 'rel', format('%%I.%%I', n.nspname, c.relname), n.nspname || ' ' || c.relname,
       CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                      WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
       format('%%I.%%I', n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relowner = %(role)s::regrole AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
UNION ALL
SELECT 'proc', format('%%I.%%I(%%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
       n.nspname || ' ' || p.proname || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')',
       CASE p.prokind WHEN 'a' THEN 'AGGREGATE' WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
       format('%%I.%%I(%%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.proowner = %(role)s::regrole
UNION ALL
SELECT 'type', format('%%I.%%I', n.nspname, t.typname), n.nspname || ' ' || t.typname,
       CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, format('%%I.%%I', n.nspname, t.typname)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE t.typowner = %(role)s::regrole AND t.typtype IN ('b', 'c', 'd', 'e', 'm', 'r')
   AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
   AND NOT (t.typelem <> 0 AND t.typlen = -1 AND t.typtype = 'b')
UNION ALL
SELECT 'schema', format('%%I', n.nspname), '- ' || n.nspname, 'SCHEMA', format('%%I', n.nspname)
  FROM pg_namespace n WHERE n.nspowner = %(role)s::regrole
"""


def make_extensions(conn, held: Held) -> None:
    """As the superuser on ``conn`` (the new staging database): the dump's extensions that the server has and
    the role could not make (not trusted), in their schema where it exists already; the dump's own ``CREATE
    EXTENSION IF NOT EXISTS`` then finds them."""
    from psycopg import sql

    for name, schema in held.extensions:
        row = conn.execute(
            "SELECT bool_or(NOT v.trusted), EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)"
            " FROM pg_available_extension_versions v WHERE v.name = %s",
            (schema, name),
        ).fetchone()
        if row and row[0] and row[1]:
            conn.execute(
                sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}").format(
                    sql.Identifier(name), sql.Identifier(schema)
                )
            )


def lend_extension_tables(conn, role: str) -> None:
    """Let ``role`` fill the configuration tables of the extensions a superuser made in this database (PostGIS's
    ``spatial_ref_sys``: a dump carries their rows).  ``DROP OWNED BY`` takes these grants back with the role."""
    from psycopg import sql

    rows = conn.execute(
        "SELECT format('%I.%I', n.nspname, c.relname), c.relkind FROM pg_extension e, unnest(e.extconfig) AS t(oid)"
        " JOIN pg_class c ON c.oid = t.oid JOIN pg_namespace n ON n.oid = c.relnamespace"
    ).fetchall()
    for name, kind in rows:
        what = "SEQUENCE" if kind == "S" else "TABLE"
        conn.execute(sql.SQL("GRANT ALL ON {} {} TO {}").format(sql.SQL(what), sql.SQL(name), sql.Identifier(role)))


def check_roles(conn, held: Held, site: str) -> None:
    """RestoreError naming the roles ``held`` gives objects or privileges to that the server lacks."""
    wanted = held.roles() - {site}
    if wanted:
        rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (sorted(wanted),)).fetchall()
        missing = sorted(wanted - {r[0] for r in rows})
        if missing:
            raise RestoreError(
                f'role "{missing[0]}" does not exist; the dump gives objects or privileges to roles this server does '
                f"not have ({', '.join(missing)}): create them, or set the connector option NO_OWNER: True to "
                "restore without owners and privileges"
            )


def give_back(conn, loader: str, site: str, held: Held) -> None:
    """As the superuser on ``conn`` (the staging database): give each object the load made (owned by
    ``loader``) the owner the dump names, where that is not ``site`` (the rest goes to ``site`` afterwards);
    then set the dump's default privileges and extension comments.  Done before the loader's objects go to
    the site's role, so that grants the dump made as the owner come out as made by the owner it names."""
    from psycopg import sql

    check_roles(conn, held, site)
    if any(role != site for _g, _n, role in held.owners):
        catalog = conn.execute(OWNED_OBJECTS, {"role": loader}).fetchall()
        found = {}
        for group, qualified, toc_name, kind, name in catalog:
            found[(group, qualified)] = (kind, name)
            found[(group, toc_name)] = (kind, name)
        lost = []
        for group, name, role in held.owners:
            if role == site:
                continue
            target = found.get((group, name))
            if target is None:
                lost.append(name)
                continue
            kind, qualified = target
            conn.execute(
                sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(kind), sql.SQL(qualified), sql.Identifier(role))
            )
        if lost:
            logger.warning(
                "the dump gives %d object(s) to other roles that could not be given back and belong to %s: %s",
                len(lost),
                site,
                ", ".join(lost[:10]),
            )
    for acl in held.default_acls:
        conn.execute(acl.statement())
    for name, text in held.extension_comments:
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("COMMENT ON EXTENSION {} IS {}").format(sql.Identifier(name), sql.Literal(text)))


#: Table-of-contents kinds that begin like an ownable kind but carry no owner of their own.
NOT_OWNABLE = ("TABLE DATA ", "TABLE ATTACH ", "SEQUENCE SET ", "SEQUENCE OWNED BY ", "MATERIALIZED VIEW DATA ")


def toc_owners(toc: list[str]) -> list[tuple[str, str, str]]:
    """``(kind group, schema + ' ' + tag, owner)`` of the ownable entries of ``pg_restore --list`` lines
    (``id; tableoid oid DESC schema tag owner``); the owner is the last word."""
    owners = []
    for line in toc:
        match = re.match(r"\d+; \d+ \d+ (.*)$", line)
        if match is None:
            continue
        rest = match.group(1)
        if rest.startswith(NOT_OWNABLE):
            continue
        for kind in sorted(KIND_GROUPS, key=len, reverse=True):
            if rest.startswith(kind + " "):
                body, _, owner = rest[len(kind) + 1 :].rpartition(" ")
                if body and owner:
                    owners.append((KIND_GROUPS[kind], body, owner))
                break
    return owners


#: Table-of-contents entries a throwaway role cannot load: default privileges, comments on extensions.
def toc_held(line: str) -> bool:
    return bool(re.match(r"\d+; \d+ \d+ (DEFAULT ACL |COMMENT - EXTENSION )", line))


def toc_schema(line: str) -> str | None:
    """The name of a schema entry of ``pg_restore --list`` (``id; 0 oid SCHEMA - name owner``), else None."""
    match = re.match(r"\d+; \d+ \d+ SCHEMA - (.+) \S+$", line)
    return match.group(1) if match else None


def toc_extension(line: str) -> bool:
    """An extension entry: its SQL is read (for :func:`make_extensions`), and it still loads."""
    return bool(re.match(r"\d+; \d+ \d+ EXTENSION ", line))


class HeldStatements(FilteredReader):
    """A plain SQL dump with its ``ALTER ... OWNER TO``, ``ALTER DEFAULT PRIVILEGES`` and ``COMMENT ON
    EXTENSION`` statements taken out (into :class:`Held`), every other byte passed on as it came.

    A statement is taken only where pg_dump writes one: a whole line at the start of a statement, outside
    strings, quoted names, dollar quotes, comments and ``COPY ... FROM stdin`` data, so a row or a function
    body holding such text passes unchanged.  Nothing taken runs as it is written (:func:`give_back`).

    ``held=None``: nothing is taken.  ``guard`` (a load in place, in one transaction with its drops): a statement
    that ends or splits that transaction (``COMMIT``, ``END``, ``ROLLBACK``, ``ABORT``, ``BEGIN``, ``START``,
    ``PREPARE``, ``SAVEPOINT``, ``RELEASE``) raises before it is passed on, as does anything psql could read
    otherwise than this scan does: a quote after a backslash in a string (``standard_conforming_strings``
    decides), a ``COPY`` that is not one whole line of its own, a ``\\.`` line with more than its line end.
    """

    _LONGEST = 8192
    _COPY_END = re.compile(rb"\n\\\.")  # a line starting with ``\.`` (found faster than by bytes.find)
    #: What changes the state: a quote, a dollar quote, a comment's start, the end of a statement.
    _TOKENS = re.compile(rb"'|\"|\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$|--|/\*|;")
    #: Text between them that makes a statement begin (a lone ``$``, ``/`` or ``-`` and spaces do not).
    _WORD = re.compile(rb"[^\s'\"$;/-]")
    #: The first word of a statement a guarded load refuses (see the class).
    _CONTROL = re.compile(
        rb"(?:COMMIT|END|ROLLBACK|ABORT|BEGIN|START|PREPARE|SAVEPOINT|RELEASE|COPY)(?![A-Za-z0-9_$\x80-\xff])",
        re.IGNORECASE,
    )
    _NAME_BYTE = re.compile(rb"[A-Za-z0-9_$\x80-\xff]")  # a $ after one is part of a name to psql (a$b$)
    _COPY_LINE = re.compile(rb"COPY [^;]* FROM stdin;\r?\n?")

    def __init__(self, stream, held: Held | None, make_schema=None, guard: bool = False):
        super().__init__(stream)
        self.held = held
        self.guard = guard
        self._first = guard  # no word of this statement seen yet, comments skipped (guard only)
        self.lines = 0  # lines read so far
        #: ``name -> statement``: what a whole-line ``CREATE SCHEMA name;`` becomes (a load in place, where the
        #: throwaway role may not create schemas: a function of this restore makes them for it); there a
        #: ``DROP SCHEMA IF EXISTS public;`` (of ``--clean`` with ``-n public``) is left out, public being kept.
        self.make_schema = make_schema
        self._buf = b""
        self._copy = False
        self._state: bytes | None = None  # b"'", b'"', a dollar quote, b"/*"
        self._depth = 0  # nested /* */
        self._start = True  # at the start of a statement

    def _scan(self, line: bytes) -> None:
        """Follow ``line``'s quotes and comments; note where statements end."""
        pos, n = 0, len(line)
        while pos < n:
            state = self._state
            if state is None:
                match = self._TOKENS.search(line, pos)
                end = n if match is None else match.start()
                if self._start or self._first:
                    word = self._WORD.search(line, pos, end)
                    if word is not None:
                        self._start = False
                        if self._first:
                            self._first = False
                            self._check(line, word.start())
                if match is None:
                    return
                token, pos = match.group(), match.end()
                if token == b"--":
                    return
                if token == b";":
                    self._start, self._first = True, self.guard
                    continue
                self._start = False
                if token != b"/*":
                    self._first = False
                if (
                    self.guard
                    and token.startswith(b"$")
                    and match.start() > 0
                    and self._NAME_BYTE.match(line, match.start() - 1)
                ):
                    pos = match.start() + 1  # part of a name, as psql reads it
                elif token in (b"'", b'"') or token.startswith(b"$"):
                    self._state = token
                elif token == b"/*":
                    self._state, self._depth = b"/*", 1
            elif state == b"/*":
                opens, closes = line.find(b"/*", pos), line.find(b"*/", pos)
                if closes < 0:
                    return
                if 0 <= opens < closes:
                    self._depth += 1
                    pos = opens + 2
                    continue
                self._depth -= 1
                pos = closes + 2
                if self._depth == 0:
                    self._state = None
            else:
                end = line.find(state, pos)
                if end < 0:
                    return
                if self.guard and state == b"'" and line[end - 1 : end] == b"\\":
                    self._refuse("a quote after a backslash in a string, which psql may read either way")
                if state in (b"'", b'"') and line[end + 1 : end + 2] == state:
                    pos = end + 2  # a doubled quote
                    continue
                pos = end + len(state)
                self._state = None

    def _check(self, line: bytes, at: int) -> None:
        """A guarded load: refuse the statement whose first word starts at ``line[at]`` if it is one of those."""
        match = self._CONTROL.match(line, at)
        if match is None:
            return
        word = match.group().decode().upper()
        if word != "COPY":
            self._refuse(f"a {word} of its own, which would end the restore's one transaction")
        elif at or not self._COPY_LINE.fullmatch(line) or line.count(b";") != 1:
            self._refuse("a COPY that is not one whole line of its own")

    def _refuse(self, what: str) -> None:
        raise RestoreError(
            f"line {self.lines} of the dump holds {what}; a plain dump restored in place may hold no "
            "transaction control; nothing was changed"
        )

    def _line(self, line: bytes) -> None:
        self.lines += 1
        if self._copy:
            bare = line.rstrip(b"\r\n")
            if bare == b"\\.":
                if self.guard and line not in (b"\\.\n", b"\\.\r\n", b"\\."):
                    self._refuse("an end of COPY data psql would not read as one")
                self._copy = False
            self._out += line
            return
        if self.held is not None and self._start and self._state is None and len(line) <= self._LONGEST:
            if line.startswith((b"ALTER ", b"COMMENT ON EXTENSION ", b"DROP EXTENSION IF EXISTS ")):
                text = line.decode("utf-8", errors="replace")
                if self.held.take(text):
                    return
            if self.make_schema and line.startswith((b"CREATE SCHEMA ", b"DROP SCHEMA IF EXISTS public;")):
                if line.rstrip(b"\r\n") == b"DROP SCHEMA IF EXISTS public;":
                    return  # in place, public is kept (its objects were dropped): its owner and grants stay
                if match := SCHEMA_CREATE.fullmatch(line.decode("utf-8", errors="replace")):
                    self._out += self.make_schema(unquote(match.group(1)))
                    return
        if self._first and self._state is None and line.startswith(b"\\") and b";" not in line:
            self._out += line  # a psql meta-command (RestrictedSql's to judge): no statement starts there
            return
        was_start = self._start and self._state is None
        self._scan(line)
        self._out += line
        if was_start and self._start and re.fullmatch(rb"COPY .* FROM stdin;\r?\n?", line, re.IGNORECASE):
            self._copy = True

    def _feed(self, data: bytes) -> None:
        data, pos = self._buf + data, 0
        while True:
            if self._copy and not data.startswith(b"\\.", pos):
                # Rows: straight on to the line that ends them (pos is at the start of a line).
                match = self._COPY_END.search(data, pos)
                end = -1 if match is None else match.start()
                if end < 0:
                    last = data.rfind(b"\n", pos) + 1
                    if last > pos:
                        self.lines += data.count(b"\n", pos, last)
                        self._out += memoryview(data)[pos:last]
                        pos = last
                    self._buf = data[pos:]
                    return
                self.lines += data.count(b"\n", pos, end + 1)
                self._out += memoryview(data)[pos : end + 1]
                pos = end + 1
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._buf = data[pos:]
                return
            self._line(data[pos : nl + 1])
            pos = nl + 1

    def _finish(self) -> None:
        if self._buf:
            buf, self._buf = self._buf, b""
            if self._copy:
                self._out += buf
            else:
                self._line(buf)
