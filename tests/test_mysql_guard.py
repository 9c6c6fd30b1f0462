"""The MariaDB statement guard in process (issue 15): how it reads rows fast, and where the input is cut.

The rows of an ``INSERT ... VALUES`` are checked by one regular expression (``_ROWS``) over literals only;
these tests check that it never lets more through than the literals it names, that it reads whole the rows
mariadb-dump writes (blobs as ``0x...`` included), and that a dump cut into two reads at any byte, inside a
string, an escape, a hex literal or a comment, is read exactly as when it comes in one read.  The hostile
dumps of ``test_hostile.py`` run through the same guard.
"""

from __future__ import annotations

import io
import random
import re

import django
import pytest

django.setup()

from backup_app.engines import mysql_guard  # noqa: E402
from backup_app.errors import RestoreError  # noqa: E402

DATABASES = {"site_live", "mysql", "sys", "performance_schema", "information_schema", "staging", "test"}


class Pieces(io.RawIOBase):
    """``data`` read back in the pieces cut at ``cuts``, one piece a read (as a pipe hands them)."""

    def __init__(self, data: bytes, cuts: list[int]):
        bounds = [0, *cuts, len(data)]
        self._pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._pieces.pop(0) if self._pieces else b""


def read(g: mysql_guard.StatementGuard) -> bytes:
    out = bytearray()
    while chunk := g.read(4096):
        out += chunk
    return bytes(out)


def guard(data: bytes, cuts: list[int] = (), target: str = "staging") -> bytes:
    return read(mysql_guard.StatementGuard(Pieces(data, list(cuts)), target=target, databases=DATABASES))


# --- the rows scanner -----------------------------------------------------------------------------------------

#: The literals of a row as the guard's docstring names them, one at a time, with backtracking: what _ROWS may
#: let through and nothing more.
LITERALS = re.compile(
    rb"(?:[0-9(),.+ \t\r\n]|-(?=[0-9.])|'(?:[^'\\]|\\.)*'|NULL(?![A-Za-z0-9_])|_binary(?![A-Za-z0-9_])"
    rb"|0x[0-9A-Fa-f]+|[eE](?=[-+0-9]))*",
    re.DOTALL,
)
ALPHABET = [b"'", b"\\", b"0x", b"0", b"9", b"A", b"f", b"e", b"-", b"+", b".", b",", b"(", b")", b" ", b"\n",
            b"NULL", b"_binary", b";", b"`", b'"', b"/*", b"*/", b"#", b"--", b"x", b"U", b"@", b"\xe6"]  # fmt: skip


def test_the_rows_scanner_lets_through_only_literals():
    rng = random.Random(15)
    for _ in range(30000):
        text = b"".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))
        if mysql_guard._ROWS.fullmatch(text):
            assert LITERALS.fullmatch(text), text


def test_the_rows_scanner_reads_whole_the_rows_mariadb_dump_writes():
    """Blobs as 0x..., after numbers; escapes; negative and exponent numbers; NULL; _binary strings."""
    rows = (
        b"(1,'it\\'s \\\\ a \\\"q\\\" ; USE x','\\n\\r\\t\\0\\Z',0x00FF27,-1.50,1.5e-10,NULL,_binary 'x\\0y'),\n"
        b"(2,0xDEADbeef,'',-0.5,+3,1E5,'','\xe6\x97\xa5'),\n(3,NULL,0,0x0A,'\\\\')"
    )
    assert mysql_guard._ROWS.fullmatch(rows)


# --- a dump cut into two reads at every byte ------------------------------------------------------------------

ROWS = (
    b"INSERT INTO `t` VALUES (1,'a\\\\','b\\'c;USE site_live;',0x00FF27AB,-1.5e-3,NULL),"
    b"(2,'/* x */',0xABCDEF0123456789,12345678,_binary 'q\\0'),(3,'\\\\\\'',NULL,0,1);\n"
)


@pytest.mark.parametrize("cut", range(1, len(ROWS)))
def test_rows_cut_at_any_byte_pass_whole_and_as_literals(cut):
    """Cut inside a string, an escape, a hex literal, a number or NULL, the rows still pass byte for byte and
    all of them through the rows scanner (none token by token)."""
    dump = b"CREATE TABLE `t` (a int);\n" + ROWS + b"SELECT 1;\n"
    at = dump.index(ROWS) + cut
    literals = len(ROWS) - ROWS.index(b"(") - len(b";\n")

    for cuts in ([at], [at, at + 1, at + 3]):
        g = mysql_guard.StatementGuard(Pieces(dump, cuts), target="staging", databases=DATABASES)
        assert read(g) == dump
        assert g.literal_bytes == literals


#: Rows that end, by a quote or a comment a quote-only reader would read wrong, in a statement on another
#: database.
HIDDEN = {
    "escaped-backslash-before-the-quote": b"INSERT INTO `t` VALUES ('a\\\\'),(1); USE site_live; SELECT ('');\n",
    "quote-in-a-comment": b"INSERT INTO `t` VALUES (1,'a') /* ' */; USE site_live; -- '\n",
    "quote-in-a-line-comment": b"INSERT INTO `t` VALUES (1),  -- '\n(2); DROP DATABASE site_live; -- '\n",
    "hex-then-a-function": b"INSERT INTO `t` VALUES (0xABCDEF,LOAD_FILE('/etc/shadow'));\n",
    "number-then-a-qualified-name": b"INSERT INTO `t` VALUES (12345678,(SELECT 1 FROM site_live.t));\n",
}


@pytest.mark.parametrize("case", sorted(HIDDEN))
def test_a_statement_hidden_after_rows_is_refused_wherever_the_dump_is_cut(case):
    dump = b"CREATE TABLE `t` (a int);\n" + HIDDEN[case]
    start = dump.index(HIDDEN[case])
    line = 2 + HIDDEN[case].count(b"\n") - 1  # the statement on another database is on the last line
    for at in range(start + 1, len(dump)):
        with pytest.raises(RestoreError, match=f"line {line} of the dump"):
            guard(dump, [at])
