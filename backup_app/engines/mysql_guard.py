"""The statement guard: a MariaDB/MySQL dump reaches the client only if it stays in the database it loads into.

A dump is SQL, and the ``mysql`` client runs whatever it holds: ``USE other`` and ``DROP DATABASE site``
reach the live site from a "staging" load, ``\\! cmd`` runs a shell command.  :class:`StatementGuard` reads
the dump as the server will, statement by statement, and passes on only those that act inside the target
database; any other stops the load with :class:`~backup_app.errors.RestoreError` naming the statement's line
and what is wrong, before the statement reaches the client (which is then killed, so that it does not run
the part it holds).  The client also runs with ``--binary-mode`` (no client commands), ``--sandbox`` where
it has it, and ``--one-database``.

Refused, wherever they stand (inside routine and trigger bodies and ``/*! ... */`` comments too):

- client commands: a backslash outside a quoted string, ``source``/``system``/``connect``... statements, a
  ``DELIMITER`` other than ``;``, ``;;``, ``$$``, ``|`` (what could make the client and the guard read the
  dump differently);
- other databases: ``USE``, ``CREATE``/``DROP``/``ALTER DATABASE``, any ``name.`` other than the target's
  that is no table or alias of its statement (``NEW.``/``OLD.`` in a trigger aside), whether or not the
  server has a database of that name (``information_schema`` aside, which cannot be written);
- the server and its accounts: ``GRANT``, ``REVOKE``, users, roles and passwords, ``SET GLOBAL``, plugins and
  ``SONAME`` libraries, replication, ``FLUSH``/``RESET``/``PURGE``/``KILL``/``SHUTDOWN``/``BINLOG``/``BACKUP``;
- files and other servers: ``LOAD DATA``/``LOAD XML``/``LOAD_FILE``, ``INTO OUTFILE``/``DUMPFILE``,
  ``DATA``/``INDEX DIRECTORY``, ``CONNECTION=`` and the CONNECT, FEDERATED, SPIDER and S3 engines;
- SQL built at run time (``PREPARE``, ``EXECUTE``), which nothing can check beforehand;
- what would make the server read the rest differently: an ``sql_mode`` with ``NO_BACKSLASH_ESCAPES``,
  ``ANSI_QUOTES`` or a mode that implies them, a client character set whose characters can hide a quote
  (big5, cp932, gbk, sjis, gb18030), either set from anything but a literal or a copy saved from the server.

Names of the site's own database (``own``: the live one a staging load stands in for), or of the one database
a ``--databases`` dump names (a site's dump moved to a database of another name), in a trigger, view,
routine or event (``CREATE ... TRIGGER`` and the rest of its body) are made the target's name as they pass,
so that nothing the dump defines reaches the live database while it loads; the swap gives the objects the
site's name back (:func:`~.mysql.renamed`).  Anywhere else such a name refuses the dump like any other
database's.  ``x.y`` where ``x`` is also a table alias of the statement is a column of the alias in a select
list, ``WHERE``, ``HAVING``, ``SET``, ``... BY`` or a join's ``ON`` (:func:`_alias_column`); anywhere else,
followed by ``(`` or by a third part, ``x`` is a database.

Stripped, as the stock format of ``mysqldump --databases NAME``: the ``DROP DATABASE``, ``CREATE DATABASE``
and ``USE`` of one database before the first other statement but ``SET``.  A second database refuses the dump.

Rows are checked at the speed of a regular expression: an ``INSERT ... VALUES`` of literals (what mysqldump
writes) is matched whole, in C, and passed on as it is read.
"""

from __future__ import annotations

import io
import re
from typing import BinaryIO

from ..errors import RestoreError
from ..streams import CHUNK

#: A statement other than rows (which pass as they are read) longer than this is refused.
STATEMENT_MAX = 64 * 1024 * 1024
#: An ``INSERT ... VALUES`` head (table and column names) cut by the end of what is read is read again whole
#: when it is shorter than this.
HEAD_MAX = 64 * 1024
#: A single quoted string longer than this is refused (the server's max_allowed_packet is at most 1 GiB).
STRING_MAX = 1024 * 1024 * 1024

_WS = rb"[ \t\r\n\f\v]"
#: The first line of a dump by mariadb-dump 10.5.25, 10.6.18, 10.11.8 and later (a comment to the server, a
#: command to switch to sandbox mode for the client).
_SANDBOX = b"/*M!999999\\- enable the sandbox mode */"

#: Tokens as the server reads them.  Executable comments (``/*!50003 ... */``, ``/*M!100100 ... */``) are read
#: through: the server runs what they hold.
_TOKEN = (
    rb"(?P<ws>" + _WS + rb"++)"
    rb"|(?P<sandbox>" + re.escape(_SANDBOX) + rb")"
    rb"|(?P<lc>\#[^\n]*+|--(?:\n|[\x00-\x09\x0b-\x20][^\n]*+))"
    rb"|(?P<xo>/\*M?!\d*+)"
    rb"|(?P<bc>/\*(?:[^*]++|\*(?!/))*+\*/)"
    rb"|(?P<xc>\*/)"
    rb"%(quoted)s"
    rb"|(?P<bq>`(?:[^`]++|``)*+`)"
    rb"%(delimiter)s"
    rb"|(?P<semi>;)"
    rb"|(?P<word>[A-Za-z0-9_]++)"
    rb"|(?P<bs>\\)"
    rb"|(?P<open>['\"`]|/\*|--\Z|-\Z)"
    rb"|(?P<other>.)"
)

#: The head of an INSERT/REPLACE of rows into one unqualified table, and rows of literals after it.
_INSERT_HEAD = re.compile(
    rb"(?:INSERT|REPLACE)"
    + _WS
    + rb"++(?:IGNORE"
    + _WS
    + rb"++)?INTO"
    + _WS
    + rb"*+`(?:[^`]|``)++`"
    + _WS
    + rb"*+(?:\((?:"
    + _WS
    + rb"*+`(?:[^`]|``)++`"
    + _WS
    + rb"*+,?)++\)"
    + _WS
    + rb"*+)?VALUES"
    + _WS
    + rb"*+",
    re.IGNORECASE,
)
_ROWS = re.compile(
    rb"(?:'[^'\\]*+(?:\\.[^'\\]*+)*+'|[(),.+ \t\r\n]++|0x[0-9A-Fa-f]++|[0-9]++|-(?=[0-9.])|NULL(?![A-Za-z0-9_])"
    rb"|_binary(?![A-Za-z0-9_])|[eE](?=[-+0-9]))*+",
    re.DOTALL,
)

#: Bytes after which rows matched by _ROWS can be cut and matched again: each is a whole literal of its own (the
#: last quote before where _ROWS stopped ends a string, as a string it could not match is not matched at all).
_ROW_BOUNDARIES = [bytes([b]) for b in b"(),.+ \t\r\n'"]

_SERVER = "acts on the server, not on one database"
_ACCOUNTS = "changes database accounts or privileges"
_FILES = "reads or writes files on the database server"
#: Bare words refused wherever they stand, and why.
REFUSED_WORDS = {
    **dict.fromkeys(("GRANT", "REVOKE"), _ACCOUNTS),
    **dict.fromkeys(
        ("FLUSH", "RESET", "PURGE", "SHUTDOWN", "KILL", "BINLOG", "MASTER", "SLAVE", "REPLICA", "BACKUP", "INSTANCE"),
        _SERVER,
    ),
    "GLOBAL": "changes a server-wide setting",
    **dict.fromkeys(("INSTALL", "UNINSTALL", "SONAME"), "loads a library into the database server"),
    **dict.fromkeys(("PREPARE", "EXECUTE"), "runs SQL made at run time, which cannot be checked beforehand"),
    **dict.fromkeys(("LOAD", "LOAD_FILE", "OUTFILE", "DUMPFILE", "INFILE", "DIRECTORY"), _FILES),
    **dict.fromkeys(
        ("CONNECTION", "SERVER", "CONNECT", "FEDERATED", "FEDERATEDX", "SPIDER", "S3"), "reaches another server"
    ),
}
#: Words refused as the first of a statement: the client's own commands (off in --binary-mode anyway).
CLIENT_WORDS = {"SYSTEM", "SOURCE", "TEE", "NOTEE", "PAGER", "NOPAGER", "CHARSET", "EDIT", "RESETCONNECTION"}
#: Words refused after one of these (``CREATE USER``, ``SET PASSWORD``...).
ACCOUNT_WORDS = {
    "USER": {"CREATE", "DROP", "ALTER", "RENAME", "REPLACE"},
    "ROLE": {"CREATE", "DROP", "ALTER", "DEFAULT", "REPLACE"},
    "PASSWORD": {"SET"},
}
#: sql_mode flags that change how the server reads quotes and backslashes (or the whole grammar).
#: sql_mode flags that change the grammar itself: refused.
BAD_MODES = {"MSSQL", "ORACLE"}
#: sql_mode flags under which ``"`` quotes a name (no backslash escapes in it), read so by the guard too.
ANSI_QUOTES = {"ANSI_QUOTES", "ANSI", "DB2", "MAXDB", "POSTGRESQL"}
#: Client character sets in which the second byte of a character can be a backslash or a quote.
BAD_CHARSETS = {"BIG5", "CP932", "GBK", "SJIS", "GB18030"}
#: System variables whose value changes how the rest is read.
READING_VARIABLES = {"SQL_MODE", "CHARACTER_SET_CLIENT"}
DELIMITERS = {b";", b";;", b"$$", b"|"}


def _token_regex(delimiter: bytes, mode: frozenset[str] = frozenset()) -> re.Pattern:
    """The tokens as the server reads them under ``mode`` (sql_mode flags) with the client's ``delimiter``."""
    extra = b"" if set(delimiter) == {ord(";")} else b"|(?P<delim>" + re.escape(delimiter) + b")"
    plain = "NO_BACKSLASH_ESCAPES" in mode

    def quoted(q: bytes, escapes: bool) -> bytes:
        body = rb"[^" + q + rb"\\]++|\\." if escapes else rb"[^" + q + rb"]++|" + q + q
        return q + rb"(?:" + body + rb")*+" + q

    strings = [quoted(b"'", not plain)]
    names = []
    (names if mode & ANSI_QUOTES else strings).append(quoted(b'"', not plain and not mode & ANSI_QUOTES))
    group = b"|(?P<str>" + b"|".join(strings) + b")" + (b"|(?P<dq>" + names[0] + b")" if names else b"")
    return re.compile(_TOKEN.replace(b"%(delimiter)s", extra).replace(b"%(quoted)s", group), re.DOTALL)


#: What ``CREATE`` makes when one of these comes first: a trigger, view, routine or event (whose body names
#: the tables it acts on), or something else.
_OBJECT_KINDS = {"TRIGGER", "VIEW", "PROCEDURE", "FUNCTION", "EVENT"}
_OTHER_KINDS = {"TABLE", "INDEX", "SEQUENCE", "DATABASE", "SCHEMA", "USER", "ROLE", "SERVER", "TABLESPACE", "PACKAGE"}


def _defines_object(words: list) -> bool:
    """Whether the statement is ``CREATE [OR REPLACE] [ALGORITHM=...] [DEFINER=...] ... TRIGGER|VIEW|...``."""
    if words[0] != "CREATE":
        return False
    kind = next((w for w in words[1:16] if w in _OBJECT_KINDS | _OTHER_KINDS | {"AS"}), None)
    return kind in _OBJECT_KINDS


#: Words after which a name is a table (or routine, trigger, sequence...) of the statement: ``db.name`` there
#: names a database.  Anything not known to be an expression is taken as such.
_TABLE_WORDS = {
    *("FROM", "JOIN", "STRAIGHT_JOIN", "INTO", "UPDATE", "TABLE", "TABLES", "TO", "DELETE", "INSERT", "REPLACE"),
    *("CALL", "REFERENCES", "LIKE", "FOR", "USING", "RENAME", "EXISTS", "IN", "UNION", "NEXTVAL", "SETVAL"),
    *("LASTVAL", "SEQUENCE", "INDEX", "KEY", "DESC", "DESCRIBE", "EXPLAIN", "HANDLER", "TRUNCATE", "LOCK"),
    *("FOLLOWS", "PRECEDES", "ANALYZE", "OPTIMIZE", "REPAIR", "CHECK", "CHECKSUM", "SHOW", "ALTER", "DROP"),
    *("CREATE", "DO"),
    *_OBJECT_KINDS,
}
#: Words after which ``x.y`` is a column ``y`` of the table or alias ``x`` (``ON`` too, after a ``JOIN``).
_EXPRESSION_WORDS = {"SELECT", "WHERE", "HAVING", "SET", "BY"}


def _alias_column(tokens, words, i: int) -> bool:
    """Whether ``tokens[i]`` (a name before ``.``) is a table alias or table of the statement whose column follows
    (``test.id`` in ``SELECT test.id FROM part test``), not a database: ``x.y`` with no third part and no ``(``
    after, in a select list, ``WHERE``, ``HAVING``, ``SET``, ``... BY`` or a join's ``ON`` (not after a comma
    that starts another table there), with ``x`` standing alone elsewhere in the statement (as the alias or table
    it is).  Anywhere else (``FROM x.y``, ``CALL x.y``, ``NEXTVAL(x.y)``, ``IF NOT EXISTS x.y``, a statement's
    start...) ``x`` is a database."""
    n = len(tokens)
    if i + 2 >= n or tokens[i + 2][0] not in ("w", "q") and tokens[i + 2] != ("p", "*"):
        return False
    if i + 3 < n and tokens[i + 3] in (("p", "."), ("p", "(")):
        return False  # db.table.column, db.routine(...)
    name = str(tokens[i][1]).lower()
    alone = (
        j
        for j, (kind, value) in enumerate(tokens)
        if j != i and kind in ("w", "q") and str(value).lower() == name
        if (j + 1 == n or tokens[j + 1] != ("p", ".")) and (j == 0 or tokens[j - 1] not in (("p", "."), ("p", "@")))
    )
    if next(alone, None) is None:
        return False
    depth, comma = 0, False
    for j in range(i - 1, -1, -1):
        token = tokens[j]
        if token == ("p", ")"):
            depth += 1
        elif token == ("p", "("):
            if depth:
                depth -= 1
            else:
                comma = False  # out of a group: its commas parted arguments
        elif depth:
            continue
        elif token == ("p", ","):
            comma = True
        elif words[j] == "BY" and j >= 2 and words[j - 2] == "FOR":
            continue  # an index hint (FORCE INDEX FOR ORDER BY (...)): part of a table
        elif words[j] in _TABLE_WORDS:
            return False
        elif words[j] in _EXPRESSION_WORDS:
            return True
        elif words[j] == "ON":
            return not comma and _join_condition(tokens, words, j)
    return False


#: Words that may stand between ``JOIN`` and the ``ON`` of its condition (an index hint, a partition list).
_JOINED_TABLE_WORDS = {"AS", "USE", "FORCE", "IGNORE", "INDEX", "KEY", "FOR", "PARTITION"}


def _join_condition(tokens, words, on: int) -> bool:
    """Whether the ``ON`` at ``tokens[on]`` starts a join's condition: ``... JOIN name [alias] ON``, not the
    ``ON`` of an index (``DROP INDEX i ON db.t``), a trigger or a grant."""
    depth = 0
    for j in range(on - 1, -1, -1):
        token = tokens[j]
        if token == ("p", ")"):
            depth += 1
        elif token == ("p", "("):
            if not depth:
                return False
            depth -= 1
        elif depth or token[0] == "q" or token == ("p", "."):
            continue
        elif token[0] != "w":
            return False
        elif words[j].endswith("JOIN"):
            return True
        elif words[j] in (_TABLE_WORDS | _EXPRESSION_WORDS) - _JOINED_TABLE_WORDS:
            return False
    return False


def _modes(value: str) -> frozenset[str]:
    return frozenset(m.strip().upper() for m in value.split(",") if m.strip())


class _Refused(Exception):
    def __init__(self, reason: str, line: int | None = None):
        self.reason = reason
        self.line = line


class StatementGuard(io.RawIOBase):
    """A readable stream of the statements of the dump ``raw`` that stay in database ``target``.

    ``databases`` are the names of the server's databases (as the restoring user sees them); since a dump's
    ``other.`` is refused whether or not the server has ``other``, they are not needed any more.
    """

    def __init__(self, raw: BinaryIO, *, target: str, databases: set[str], sql_mode: str = "", own: str = ""):
        self._raw = raw
        self._target = target
        #: The site's own database (the live one a staging load stands in for): names of it in a trigger, view,
        #: routine or event are made names of the target (see :meth:`_check`).
        self._own = own.lower() if own.lower() != target.lower() else ""
        self._mode = _modes(sql_mode)  # as the server reads the dump now (the client's session starts global)
        self._saved_modes: dict[str, frozenset[str]] = {}  # @x = @@sql_mode copies
        self._next_mode: frozenset[str] | None = None  # set by the statement being checked
        #: Names before a ``.`` that stay in the target: itself, and information_schema (which cannot be written).
        #: Any other that is no table or alias of its statement names another database, whether or not the
        #: server has one of that name now (so ``databases`` no longer decides anything).
        self._mine = {target.lower(), "information_schema"}
        self._buf = bytearray()
        self._pos = 0  # scan position in _buf
        self._start = 0  # start of the current statement in _buf
        self._emitted = 0  # bytes of _buf already passed on
        self._out = bytearray()
        self._eof = False
        self._line = 1  # line of _buf[0] in the dump
        self._tokens: list[tuple[str, object]] = []  # of the current statement
        self._spans: list[int] = []  # where each token starts and ends in the dump (offsets from its start)
        self._base = 0  # offset in the dump of _buf[0]
        self._renames: list[int] = []  # tokens of the statement checked that name the site's own database
        self._in_body = False  # the statement being read is part of a trigger, view, routine or event
        self._first = 0  # where its first token is in _buf
        self._in_exec = False
        self._rows = False  # the current statement is rows, checked by _ROWS
        self.literal_bytes = 0  # bytes of rows passed by _ROWS (the rest is read token by token)
        self._preamble = True  # no statement but SET (and stripped ones) so far
        self._source: str | None = None  # the one database a --databases dump names
        #: Its DROP DATABASE (name, line), stripped: the next statement must create it.
        self._dropped: tuple[str | None, int | None] = (None, None)
        self._saved: dict[str, bool] = {}  # user variable -> only ever a copy of a system variable
        self._delimiter_now = b";"
        self._regex = _token_regex(b";", self._mode)
        self.stripped: list[str] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out and not (self._eof and self._emitted >= len(self._buf)):
            self._fill()
            self._scan()
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        del self._out[:n]
        return n

    # --- input --------------------------------------------------------------------------------

    def _fill(self) -> None:
        if self._eof:
            return
        # Drop what is passed on and scanned past (keeping the current statement's start when held).
        keep = self._emitted if self._rows else max(0, min(self._emitted, self._start))
        if keep:
            self._line += self._buf.count(b"\n", 0, keep)
            self._base += keep
            del self._buf[:keep]
            self._pos -= keep
            self._start -= keep
            self._first -= keep
            self._emitted -= keep
        # A token longer than what is buffered (a large string) doubles the read, so it is scanned O(log n) times.
        data = self._raw.read(max(CHUNK * 8, len(self._buf) - self._pos))
        if not data:
            self._eof = True
        else:
            self._buf += data

    def _line_now(self) -> int:
        """The line of the current statement's first token (or of the scan)."""
        at = self._first if self._first >= self._start else self._pos
        return self._line + self._buf.count(b"\n", 0, max(0, at))

    def _refuse(self, reason: str, line: int | None = None):
        line = line or self._line_now()
        raise RestoreError(
            f"line {line} of the dump {reason}; refused before that statement ran (a dump is loaded only into its "
            "staging database)"
        )

    # --- scanning -----------------------------------------------------------------------------

    def _scan(self) -> None:
        buf = self._buf
        end = len(buf)
        try:
            while self._pos < end:
                if self._rows:
                    stop = _ROWS.match(buf, self._pos).end()
                    more = not self._eof and (end - stop < 16 or buf[stop] == ord("'"))
                    if more:
                        # A literal may go on in the next chunk (a number, 0x..., NULL cut by its end, or a
                        # string): it is matched again, whole, from where the last whole one ended.
                        stop = max(self._pos, *(buf.rfind(b, self._pos, stop) + 1 for b in _ROW_BOUNDARIES))
                    self.literal_bytes += stop - self._pos
                    self._emit(stop)  # literals only: pass them on as they come
                    self._pos = stop
                    if more:
                        return
                    self._rows = False  # not a literal: read on token by token
                    continue
                match = self._regex.match(buf, self._pos)
                kind = match.lastgroup
                if match.end() == end and not self._eof and kind in ("word", "ws", "other", "delim", "lc", "xo"):
                    return  # the token may go on in the next chunk
                if kind == "xo" and not self._eof and end - self._pos < len(_SANDBOX):
                    if _SANDBOX.startswith(buf[self._pos : end]):
                        return  # the sandbox line may go on in the next chunk
                if kind == "open":
                    if not self._eof:
                        if end - self._pos > STRING_MAX:
                            raise _Refused("holds a quoted string or comment longer than 1 GiB")
                        return  # a string or comment that ends in a later chunk
                    raise _Refused("ends inside a quoted string or comment")
                self._pos = match.end()
                if kind == "bc" and self._in_exec:
                    raise _Refused("nests a comment in an executable comment")
                if kind in ("ws", "lc", "bc", "sandbox"):
                    continue
                if kind == "xo":
                    if self._in_exec:
                        raise _Refused("nests an executable comment in another")
                    self._in_exec = True
                    continue
                if kind == "xc":
                    self._in_exec = False
                    continue
                if kind in ("semi", "delim"):
                    self._end_statement(self._pos, by=kind)
                    continue
                if kind == "bs":
                    raise _Refused("holds a client command (a backslash outside a quoted string)")
                text = match.group()
                if kind == "word" and not self._tokens and text.upper() == b"DELIMITER":
                    self._delimiter(match.start())
                    continue
                if not self._tokens:
                    self._first = match.start()
                self._spans.append((self._base + match.start(), self._base + match.end()))
                if kind == "word":
                    self._tokens.append(("w", text.upper().decode()))
                elif kind == "bq":
                    self._tokens.append(("q", text[1:-1].replace(b"``", b"`").decode("utf-8", "replace")))
                elif kind == "dq":
                    self._tokens.append(("q", text[1:-1].replace(b'""', b'"').decode("utf-8", "replace")))
                elif kind == "str":
                    self._tokens.append(("s", text[1:-1].decode("utf-8", "replace")))
                else:
                    self._tokens.append(("p", text.decode("latin-1")))
                if (
                    len(self._tokens) == 1
                    and self._tokens[0][1] in ("INSERT", "REPLACE")
                    and "NO_BACKSLASH_ESCAPES" not in self._mode
                ):
                    head = _INSERT_HEAD.match(buf, match.start())
                    if (head is None or head.end() == end) and not self._eof and end - match.start() < HEAD_MAX:
                        self._tokens.clear()  # the head may go on in the next chunk: read it again, whole
                        self._spans.clear()
                        self._pos = match.start()
                        return
                    if head is not None and (head.end() < end or self._eof):
                        self._tokens.append(("rows", None))
                        self._spans.append((0, 0))
                        self._pos = head.end()
                        self._rows = True
                        self._emit(self._pos)
                if self._pos - self._start > STATEMENT_MAX and not self._rows:
                    raise _Refused(f"holds a statement longer than {STATEMENT_MAX // (1024 * 1024)} MiB")
            if self._eof:
                if self._tokens:
                    self._end_statement(self._pos)
                if self._dropped[0] is not None:
                    raise _Refused(f"drops database {self._dropped[0]}", self._dropped[1])
                self._emit(self._pos)
        except _Wait:
            return
        except _Refused as refused:
            self._refuse(refused.reason, refused.line)

    def _emit(self, upto: int) -> None:
        if upto > self._emitted:
            self._out += self._buf[self._emitted : upto]
            self._emitted = upto

    def _emit_renamed(self, upto: int, spans: list[tuple[int, int]], kinds: list[str]) -> None:
        """Pass on the statement up to ``upto`` with each name at ``spans`` (of the site's own database) made the
        target's name, quoted as it was."""
        target = self._target.encode()
        bare = re.fullmatch(rb"[A-Za-z0-9_$]*[A-Za-z_$][A-Za-z0-9_$]*", target) is not None
        at = self._emitted
        for (start, stop), kind in zip(spans, kinds, strict=True):
            start, stop = start - self._base, stop - self._base
            self._out += self._buf[at:start]
            self._out += target if kind == "w" and bare else b"`" + target.replace(b"`", b"``") + b"`"
            at = stop
        self._out += self._buf[at:upto]
        self._emitted = upto
        self._renames = []

    def _delimiter(self, at: int) -> None:
        """A ``DELIMITER`` line: the client's, read to its end."""
        line_end = self._buf.find(b"\n", at)
        if line_end < 0:
            if not self._eof:
                self._pos = at  # the line ends in a later chunk
                raise _Wait
            line_end = len(self._buf)
        found = re.fullmatch(rb"DELIMITER[ \t]+(\S+)[ \t\r]*", bytes(self._buf[at:line_end]), re.IGNORECASE)
        if found is None or found.group(1) not in DELIMITERS:
            raise _Refused(f"sets a DELIMITER other than {', '.join(d.decode() for d in sorted(DELIMITERS))}")
        self._delimiter_now = found.group(1)
        self._in_body = False
        self._regex = _token_regex(found.group(1), self._mode)
        self._pos = line_end
        self._emit(line_end)
        self._start = line_end

    # --- one statement ------------------------------------------------------------------------

    def _end_statement(self, end: int, *, by: str = "delim") -> None:
        """The statement up to ``end`` is read: check it, pass it on.  ``by``: ``semi`` when it ended at a ``;``
        that is not the client's delimiter (the client sends on, the server reads a compound statement)."""
        tokens, self._tokens = self._tokens, []
        spans, self._spans = self._spans, []
        rows, self._rows = self._rows, False
        if not tokens:
            self._emit(end)
            self._start = end
            self._in_body = False  # ";;"
            return
        self._next_mode = None
        inside = self._in_body
        self._in_body = False
        strip = self._check(tokens, inside=inside) if not rows else False
        if by == "semi" and self._delimiter_now != b";" and (inside or _defines_object(self._words(tokens))):
            self._in_body = True  # the next statement is of the same trigger, view, routine or event
        if rows and len(tokens) > 2:
            self._check(tokens)  # rows that were not all literals
        if strip:
            self.stripped.append(" ".join(str(v) for _k, v in tokens[:4]))
            self._emitted = end  # the statement is not passed on
        elif self._renames:
            self._emit_renamed(end, [spans[i] for i in self._renames], [tokens[i][0] for i in self._renames])
        else:
            self._emit(end)
        self._start = end
        if self._next_mode is not None and self._next_mode != self._mode:
            # The statement changed sql_mode: what follows is read as the server now reads it.
            self._mode = self._next_mode
            self._regex = _token_regex(self._delimiter_now, self._mode)
        first = tokens[0][1]
        if first != "SET" and not strip:
            self._preamble = False

    @staticmethod
    def _words(tokens) -> list:
        return [v if k == "w" else None for k, v in tokens]

    def _check(self, tokens: list[tuple[str, object]], *, inside: bool = False) -> bool:
        """Refuse ``tokens`` (one statement) or pass them; True: the statement is stripped (preamble).
        ``inside``: the statement is part of the body of a trigger, view, routine or event."""
        words = self._words(tokens)
        first = words[0]
        if first in CLIENT_WORDS:
            raise _Refused(f"holds the client command {first.lower()}")
        stripped = self._preamble_statement(tokens)
        if stripped:
            return True
        setting = first == "SET"
        defines = inside or _defines_object(words)
        for i, (kind, value) in enumerate(tokens):
            prev = words[i - 1] if i else None
            after = tokens[i + 1] if i + 1 < len(tokens) else (None, None)
            if kind == "w":
                if value in REFUSED_WORDS:
                    raise _Refused(f"{REFUSED_WORDS[value]} ({value})")
                if value in ACCOUNT_WORDS and prev in ACCOUNT_WORDS[value]:
                    raise _Refused(f"{_ACCOUNTS} ({prev} {value})")
                if value == "USE" and after[1] not in ("INDEX", "KEY"):
                    raise _Refused("switches to another database (USE)")
                if value in ("DATABASE", "SCHEMA") and after[1] != "(":
                    raise _Refused(f"creates, drops or changes a database ({prev or ''} {value})".replace("( ", "("))
                if value in READING_VARIABLES and not self._user_variable(tokens, i):
                    self._check_reading_variable(tokens, i)
                if setting and (value in ("NAMES", "CHARSET") or (value == "CHARACTER" and after == ("w", "SET"))):
                    if prev == "SET" or tokens[i - 1] == ("p", ","):
                        self._check_charset(tokens[i + (2 if value == "CHARACTER" else 1) :])
            if kind in ("w", "q") and after == ("p", ".") and (i == 0 or tokens[i - 1] not in (("p", "."), ("p", "@"))):
                name = str(value).lower()
                if name not in self._mine and not _alias_column(tokens, words, i):
                    if defines and name in (self._own, (self._source or "").lower()) and name:
                        self._renames.append(i)  # the dump's own database, by the site's name or the dump's
                    elif not (defines and kind == "w" and value in ("NEW", "OLD")):
                        # Whether or not the server has that database now: a name that is no alias of the
                        # statement is a database's (a trigger or routine would reach it once it exists).
                        raise _Refused(f"names another database ({name}.)")
            if kind == "p" and value == "@" and i + 1 < len(tokens) and self._user_variable(tokens, i + 1):
                self._note_user_variable(tokens, i)
        return False

    def _preamble_statement(self, tokens) -> bool:
        """A ``DROP DATABASE`` / ``CREATE DATABASE`` / ``USE`` of the one database of a --databases dump (which
        says ``USE`` again before its views): True, to be stripped.

        A ``DROP DATABASE`` is stripped only when the ``CREATE DATABASE`` of the same name follows at once (the
        stock ``--add-drop-database`` form); otherwise the next statement refuses the dump (nothing stripped has
        reached the client).
        """
        kinds = [k for k, _v in tokens]
        words = [v if k == "w" else None for k, v in tokens]
        verb, name = words[0], None
        if verb == "USE" and len(tokens) == 2 and kinds[1] in ("w", "q"):
            name = str(tokens[1][1])
        elif verb in ("DROP", "CREATE") and words[1] in ("DATABASE", "SCHEMA"):
            guard = ["IF", "EXISTS"] if verb == "DROP" else ["IF", "NOT", "EXISTS"]
            rest = tokens[2 + len(guard) :] if words[2 : 2 + len(guard)] == guard else tokens[2:]
            options = rest[1:]
            if rest and rest[0][0] in ("w", "q") and (verb == "CREATE" or not options):
                if all(k in ("w", "s") or v == "=" for k, v in options):
                    name = str(rest[0][1])
        (dropped, at), self._dropped = self._dropped, (None, None)
        if dropped is not None and not (verb == "CREATE" and name is not None and name.lower() == dropped.lower()):
            raise _Refused(f"drops database {dropped}", at)
        if name is None:
            return False
        known = self._source is not None and name.lower() == self._source.lower()
        if verb == "USE" and known:
            return True
        if not self._preamble:
            return False
        if self._source is None:
            self._source = name
        elif not known:
            raise _Refused(f"holds more than one database ({self._source}, {name})")
        if verb == "DROP":
            self._dropped = (name, self._line_now())
        return True

    @staticmethod
    def _user_variable(tokens, i: int) -> bool:
        """Whether ``tokens[i]`` names a user variable (``@x``, not ``@@x``)."""
        return (
            tokens[i][0] in ("w", "q", "s")
            and i >= 1
            and tokens[i - 1] == ("p", "@")
            and (i < 2 or tokens[i - 2] != ("p", "@"))
        )

    def _check_reading_variable(self, tokens, i: int) -> None:
        """``sql_mode = ...`` / ``character_set_client = ...``: a literal the server reads the same way, or a
        saved copy of the server's own value."""
        name = tokens[i][1]
        if i + 2 > len(tokens) or tokens[i + 1] not in (("p", "="), ("p", ":")):
            return  # read, not set
        j = i + 2 if tokens[i + 1] == ("p", "=") else i + 3
        value = tokens[j] if j < len(tokens) else (None, None)
        follows = tokens[j + 1] if j + 1 < len(tokens) else ("p", ",")
        if value[0] in ("s", "w") and follows == ("p", ","):
            if name == "SQL_MODE":
                modes = _modes(str(value[1]))
                if modes & BAD_MODES:
                    raise _Refused(
                        f"sets sql_mode {', '.join(sorted(modes & BAD_MODES))}, which changes the grammar itself"
                    )
                self._next_mode = modes
            elif str(value[1]).upper() in BAD_CHARSETS:
                raise _Refused(f"sets the client character set to {str(value[1]).lower()}, which can hide a quote")
            return
        if value == ("p", "@") and j + 2 <= len(tokens) and self._saved.get(str(tokens[j + 1][1]).lower()):
            if j + 2 == len(tokens) or tokens[j + 2] == ("p", ","):
                if name == "SQL_MODE":
                    self._next_mode = self._saved_modes.get(str(tokens[j + 1][1]).lower(), self._mode)
                return
        raise _Refused(f"sets {name.lower()} from an expression, which cannot be checked")

    def _check_charset(self, rest) -> None:
        value = rest[0] if rest else (None, None)
        if value[0] not in ("s", "w", "q") or str(value[1]).upper() in BAD_CHARSETS | {"DEFAULT"}:
            raise _Refused(f"sets the client character set to {str(value[1]).lower()}, which can hide a quote")

    def _note_user_variable(self, tokens, i: int) -> None:
        """Track whether user variable ``@x`` is only ever ``SET @x = @@system_variable`` (a saved copy)."""
        name = str(tokens[i + 1][1]).lower()
        if i >= 1 and tokens[i - 1] == ("p", "="):
            return  # a value: judged by _check_reading_variable when it is assigned to one
        copy = (
            i + 6 <= len(tokens)
            and tokens[i + 2] == ("p", "=")
            and tokens[i + 3] == ("p", "@")
            and tokens[i + 4] == ("p", "@")
            and (i + 6 == len(tokens) or i + 6 < len(tokens) and tokens[i + 6] == ("p", ","))
        )
        self._saved[name] = copy and self._saved.get(name, True)
        if copy and str(tokens[i + 5][1]).upper() == "SQL_MODE":
            self._saved_modes[name] = self._mode


class _Wait(Exception):
    """More input is needed before the scan can go on."""
