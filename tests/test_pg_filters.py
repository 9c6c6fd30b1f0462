"""The plain-dump filters of a PostgreSQL restore, against what they let through before they read by the block.

``RestrictedSql`` (psql meta-commands under a ``\\restrict`` key) passes every line not starting with a
backslash as a block; ``HeldStatements`` (owner and default-privilege statements held back) passes COPY rows
as a block and reads other lines by their quotes, comments and statement ends, not character by character.
What they pass, take out and refuse must not change: each is run here on random and hostile inputs, read in
random pieces, in two pieces cut at every byte and one byte at a time, beside the implementation they replace
(``pg_filters_before.py``, as it was at ``6e805b8``), and must give the same bytes, the same held statements
and the same refusal.

Two readings of the old ``RestrictedSql`` change on purpose.  It took out every line ``\\restrict K`` (and then
``\\unrestrict K``) wherever it was, also inside a string literal or COPY data, where psql reads it as data: a
row lost that line on restore.  Now only pg_dump's own lines are taken out: its ``\\restrict K`` found by where
pg_dump puts it, then every line ``\\unrestrict K`` with that same random key (:func:`by_key`, the reference
here; the old one is compared wherever it took out no other line).  And a
line starting with a backslash and longer than 256 bytes was judged whole when it came in one read, passed
unjudged when the read ended inside it; it now always passes unjudged (as the old one did when read one byte at a
time); no such line is one it takes out (``\\restrict KEY`` with a 240-character key), and passing a line is what
``\\restrict`` then refuses.
"""

from __future__ import annotations

import io
import random
import re

import django
import pytest

django.setup()

from pg_filters_before import HeldStatementsBefore, RestrictedSqlBefore  # noqa: E402

from backup_app.engines.postgresql import RestrictedSql  # noqa: E402
from backup_app.engines.postgresql_owners import Held, HeldStatements  # noqa: E402
from backup_app.errors import RestoreError  # noqa: E402


class Pieces(io.RawIOBase):
    """``data`` read back in the pieces cut at ``cuts``, one piece a read (as a pipe hands them)."""

    def __init__(self, data: bytes, cuts=()):
        bounds = [0, *sorted(set(cuts)), len(data)]
        self._pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a][::-1]

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._pieces.pop() if self._pieces else b""


def restricted(cls):
    return lambda stream, held: cls(stream)


def held_statements(cls):
    return lambda stream, held: cls(stream, held)


NEW = {
    "restricted": restricted(RestrictedSql),
    "held": held_statements(HeldStatements),
    "both": lambda stream, held: RestrictedSql(HeldStatements(stream, held)),
}
BEFORE = {"restricted": restricted(RestrictedSqlBefore), "held": held_statements(HeldStatementsBefore)}


def run(make, data: bytes, cuts=(), read: int = 1 << 17):
    """(bytes passed, what was held, the refusal): the key line every ``RestrictedSql`` starts with is taken
    off (random to each run)."""
    held = Held()
    stream = make(Pieces(data, cuts), held)
    out = bytearray()
    try:
        while chunk := stream.read(read):
            out += chunk
    except RestoreError as err:
        out, refusal = None, str(err)
    else:
        refusal = None
    if out is not None and isinstance(stream, (RestrictedSql, RestrictedSqlBefore)):
        head, _, rest = bytes(out).partition(b"\n")
        assert head.startswith(b"\\restrict ") and len(head) == len(b"\\restrict ") + 48, head
        out = rest
    kept = (held.owners, held.unknown_owners, held.default_acls, held.extension_comments)
    return (bytes(out) if out is not None else None), kept, refusal


def every_byte(data: bytes) -> list[int]:
    return list(range(1, len(data)))


KEY_LINE = re.compile(rb"\\(restrict|unrestrict) ([A-Za-z0-9]+)\r?\n?")
NOT_BLANK = re.compile(rb"[^ \t\r\n]")


def lines_of(data: bytes) -> list[bytes]:
    return re.findall(rb"[^\n]*\n|[^\n]+", data)


def judged(line: bytes) -> bool:
    """A line starting with a backslash is judged when it ends within 256 bytes."""
    return len(line) <= (257 if line.endswith(b"\n") else 256)


def by_key(data: bytes) -> tuple[bytes, int]:
    """What ``RestrictedSql`` passes, line by line on the whole input, and how many lines it takes out: the first
    line starting with a backslash, when it is ``\\restrict K`` and only comment and blank lines come before it;
    then every line after it that is ``\\unrestrict K`` (the same K), wherever it is."""
    lines, key, first = lines_of(data), None, None
    for i, line in enumerate(lines):
        if line.startswith(b"\\"):
            match = KEY_LINE.fullmatch(line) if judged(line) else None
            if match and match.group(1) == b"restrict":
                key, first = match.group(2), i
            break
        if not (line.startswith(b"--") or not NOT_BLANK.search(line)):
            break
    if key is None:
        return data, 0
    out = lines[:first]
    for line in lines[first + 1 :]:
        match = KEY_LINE.fullmatch(line) if judged(line) else None
        if not (match and match.groups() == (b"unrestrict", key)):
            out.append(line)
    return b"".join(out), len(lines) - len(out)


def reference(kind: str, data: bytes):
    """What the filters give: ``RestrictedSql`` by :func:`by_key` (and as the old one read one byte a read,
    its one reading of a backslash line past 256 bytes that no read boundary changes, wherever the old one took
    out no other line than those); ``HeldStatements`` as the old one in one read; ``both``: one, then the other."""
    if kind == "restricted":
        passed, taken = by_key(data)
        if taken == sum(1 for line in lines_of(data) if judged(line) and KEY_LINE.fullmatch(line)):
            assert run(BEFORE[kind], data, every_byte(data))[0] == passed
        return passed, run(NEW[kind], b"")[1], None
    passed, kept, refusal = run(BEFORE["held"], data)
    if kind == "held" or refusal is not None:
        return passed, kept, refusal
    return by_key(passed)[0], kept, None


#: Pieces of plain dumps: meta-commands, COPY and its end, quotes, dollar quotes, comments, held statements,
#: refused default privileges, CR LF, a backslash line past 256 bytes, non-ASCII bytes.
ALPHABET = [
    b"\n", b"\n", b"\n", b"\r\n", b"\\", b"\\.", b"\\.\n", b"\\N", b"\\\\.", b"\\restrict ", b"\\unrestrict ",
    b"K1", b"K2", b"abc", b" ", b"\t", b";", b";\n", b"'", b"''", b'"', b"$$", b"$q$", b"$", b"-", b"--", b"/",
    b"/*", b"*/", b"x" * 260, b"COPY public.t (a, b) FROM stdin;\n", b"copy t FROM STDIN;", b"COPY ",
    b"ALTER TABLE public.t OWNER TO bob;\n", b"ALTER ", b'ALTER FUNCTION public."F g"(x integer) OWNER TO "B";',
    b"ALTER SCHEMA s OWNER TO bob;", b"ALTER DEFAULT PRIVILEGES FOR ROLE bob GRANT SELECT ON TABLES TO PUBLIC;\n",
    b"ALTER DEFAULT PRIVILEGES FOR ROLE bob GRANT ALL ON TABLES TO x; SELECT 1;\n",
    b"COMMENT ON EXTENSION e IS 'it''s';\n", b"COMMENT ON EXTENSION ", b"DROP EXTENSION IF EXISTS e;\n",
    b"\xe6\x97\xa5", b"SELECT 1", b"\\! id\n", b"\\restrict K1\n", b"\\unrestrict K1\n", b"\\unrestrict K2\r\n",
]  # fmt: skip

#: A plain dump as pg_dump writes it, with what the filters must read right around its rows.
DUMP = (
    b"--\n-- PostgreSQL database dump\n--\n\n\\restrict Ab12Cd34\n\nSET standard_conforming_strings = on;\n"
    b"CREATE FUNCTION public.f() RETURNS int LANGUAGE plpgsql AS $$\nbegin\n"
    b"ALTER TABLE public.t OWNER TO bob;\nreturn 1; end $$;\n\nALTER FUNCTION public.f() OWNER TO bob;\n"
    b"COMMENT ON TABLE public.t IS 'x;\nALTER TABLE public.t OWNER TO bob;\n';\n"
    b"ALTER TABLE public.t OWNER TO bob;\n"
    b"ALTER DEFAULT PRIVILEGES FOR ROLE bob IN SCHEMA public GRANT SELECT ON TABLES  TO PUBLIC;\n"
    b"COPY public.t (id, v) FROM stdin;\n1\tALTER TABLE public.t OWNER TO bob;\n\\N\t\\\\.\n"
    b"\\restrict Zz9\n\\.x\t\\r\n3\t\xe6\x97\xa5\r\n\\.\n"
    b"/* ALTER TABLE\nALTER TABLE public.t OWNER TO bob;\n*/ SELECT 1;\n\\! id\n\\unrestrict Zz9\n"
    b"COMMENT ON EXTENSION plpgsql IS 'PL/pgSQL procedural language';\nDROP EXTENSION IF EXISTS e;\n"
    b"\\" + b"y" * 300 + b"\\restrict Q1\n\\unrestrict Q1\n\\unrestrict Ab12Cd34\n\n"
)


@pytest.mark.parametrize("kind", sorted(NEW))
def test_a_plain_dump_cut_at_every_byte_passes_as_before(kind):
    """Two reads cut at each byte of a dump, then one byte a read, and every consumer read size: as before."""
    want = reference(kind, DUMP)
    assert want[0] and want[2] is None
    for cut in every_byte(DUMP):
        assert run(NEW[kind], DUMP, [cut]) == want, cut
    assert run(NEW[kind], DUMP, every_byte(DUMP)) == want
    for read in (1, 7, 4096, -1):
        assert run(NEW[kind], DUMP, [len(DUMP) // 3], read=read) == want, read


@pytest.mark.parametrize("kind", sorted(NEW))
def test_random_inputs_pass_and_are_refused_as_before(kind):
    rng = random.Random(f"pg-filters-{kind}")
    refused = 0
    for _ in range(2500):
        data = b"".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 14)))
        want = reference(kind, data)
        refused += want[2] is not None
        cuts = rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 4))) if len(data) > 1 else []
        assert run(NEW[kind], data, cuts, read=rng.choice((1, 5, 300, 1 << 17))) == want, (data, cuts)
        assert run(NEW[kind], data) == want, data
    if kind != "restricted":
        assert refused  # the refusal of a default privilege it cannot read is among what is compared


@pytest.mark.parametrize("kind", sorted(NEW))
def test_random_inputs_cut_at_every_byte_pass_as_before(kind):
    rng = random.Random(f"pg-filters-every-{kind}")
    for _ in range(100):
        data = b"".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 8)))
        want = reference(kind, data)
        for cut in every_byte(data):
            assert run(NEW[kind], data, [cut]) == want, (data, cut)
        assert run(NEW[kind], data, every_byte(data)) == want, data


@pytest.mark.parametrize("length", range(250, 263))
def test_a_backslash_line_about_the_longest_judged_is_read_as_before_wherever_it_is_cut(length):
    """``\\restrict KEY`` lines of 250 to 262 bytes (the longest judged is 256 before its newline), followed by
    their ``\\unrestrict KEY`` and by another backslash line, in two pieces cut at every byte."""
    key = b"k" * (length - len(b"\\restrict "))
    for end in (b"\n", b"\r\n"):
        data = b"SELECT 1;\n\\restrict " + key + end + b"\\unrestrict " + key + end + b"\\N\n"
        want = reference("restricted", data)
        for cut in every_byte(data):
            assert run(NEW["restricted"], data, [cut]) == want, (length, cut)
        assert run(NEW["restricted"], data) == want


def test_a_long_backslash_line_read_whole_is_passed_unjudged():
    """The one change: before, a 300-byte ``\\restrict`` line came out or not by where the read ended."""
    line = b"\\restrict " + b"k" * 290 + b"\n"
    data = b"-- where pg_dump's key line is\n" + line + b"SELECT 2;\n"
    assert run(BEFORE["restricted"], data)[0] == b"-- where pg_dump's key line is\nSELECT 2;\n"
    assert run(BEFORE["restricted"], data, every_byte(data))[0] == data
    for cuts in ([], [12], every_byte(data)):
        assert run(NEW["restricted"], data, cuts)[0] == data


def test_a_key_line_inside_a_string_or_copy_data_passes_as_data():
    """Only pg_dump's own key lines come out: lines of another key (and its ``\\restrict K`` after the top) in a
    multi-line string of a ``--inserts`` dump or in COPY data are data (the old filter took them out: the row lost
    them on restore).  ``\\unrestrict K`` with pg_dump's own random key comes out wherever it is, also with SQL
    after it (an edited dump): no data holds that key by chance."""
    head = b"--\n-- PostgreSQL database dump\n--\n\n\\restrict Ab12\n\nSET x = 1;\n"
    body = (
        b"INSERT INTO public.t VALUES (1, 'first\n\\restrict Ab12\n\\unrestrict Zz\n\\restrict Zz\nlast');\n"
        b"COPY public.t (id, v) FROM stdin;\n\\restrict Zz\n\\unrestrict Ab123\n\\unrestrict Ab1\n\\.\n"
    )
    data = head + body + b"\\unrestrict Ab12\n\n"
    want = b"--\n-- PostgreSQL database dump\n--\n\n\nSET x = 1;\n" + body + b"\n"
    assert run(BEFORE["restricted"], data)[0] != want
    for cuts in ([], every_byte(data), *([cut] for cut in every_byte(data))):
        assert run(NEW["restricted"], data, cuts)[0] == want, cuts
    # not the last line that is not blank: taken out all the same, what follows it passes
    after = data + b"SELECT 1;\n\\unrestrict Ab12\r\n"
    for cuts in ([], every_byte(after), *([cut] for cut in every_byte(after))):
        assert run(NEW["restricted"], after, cuts)[0] == want + b"SELECT 1;\n", cuts
    # a backslash line before pg_dump's key line: that one is not taken out either
    assert run(NEW["restricted"], b"\\x\n" + data)[0].startswith(
        b"\\x\n--\n-- PostgreSQL database dump\n--\n\n\\restrict Ab12\n"
    )


# --- a load in place: a statement ending its one transaction is refused ----------------------------------------


def guarded(data: bytes, cuts=()) -> tuple[bytes | None, str | None]:
    passed, _kept, refusal = run(lambda stream, held: HeldStatements(stream, None, guard=True), data, cuts)
    return passed, refusal


def test_a_guarded_plain_dump_passes_whole_wherever_it_is_cut():
    for cuts in [(), *([n] for n in every_byte(DUMP))]:
        assert guarded(DUMP, cuts) == (DUMP, None)


#: Not statements of their own: data, names, bodies, comments (line 2 of each is the one to look at).
PASSED = [
    b"SELECT 'x;\nCOMMIT;';\n",
    b"SELECT $q$ ;\nCOMMIT; $q$;\n",
    b'SELECT 1 AS "x;\nCOMMIT;";\n',
    b"/* ; /* ; */\nCOMMIT; */ SELECT 1;\n",
    b"SELECT 1; -- ; COMMIT;\nSELECT 2;\n",
    b"COPY public.t (a) FROM stdin;\nCOMMIT;\n\\.\\.\n'\n\\.\nSELECT 1;\n",
    b"CREATE TABLE commits (endless int);\nSELECT ended, committed FROM commits;\n",
    b"SELECT E'x';\nSELECT 'C:\\dir';\n",
]


@pytest.mark.parametrize("data", PASSED)
def test_a_commit_that_is_data_passes_a_guarded_load(data):
    for cuts in [(), *([n] for n in every_byte(data))]:
        assert guarded(data, cuts) == (data, None)


#: Each refused, on line 2 (what psql would run as a statement of its own, or could read otherwise).
REFUSED = [
    b"SELECT 1;\nCOMMIT;\n",
    b"SELECT 1;\n  end;\n",
    b"SELECT 1;\nSELECT 2; ROLLBACK;\n",
    b"SELECT 1;\n/* x */ Abort;\n",
    b"SELECT 1;\n-- x\n",  # (line 3 below)
    b"SELECT 1;\nSELECT 1 \\; COMMIT;\n",
    b"SELECT 1;\nBEGIN;\n",
    b"SELECT 1;\nSTART TRANSACTION;\n",
    b"SELECT 1;\nPREPARE TRANSACTION 'x';\n",
    b"SELECT 1;\nSAVEPOINT s;\n",
    b"SELECT 1;\nRELEASE s;\n",
    b"SELECT 1;\nSELECT abc$x$; COMMIT; $x$;\n",  # abc$x$ is one name to psql, no dollar quote
    b"SELECT 1;\nSELECT E'\\''; COMMIT; '';\n",  # E'\'' is one quote to psql
    b"SELECT 1;\nSELECT 'a\\'; COMMIT; --';\n",  # standard_conforming_strings off: the same
    b"SELECT 1;\nCOPY t FROM stdin; COPY u FROM stdin;\n1\n\\.\n'\n\\.\nCOMMIT;\n",
    b"SELECT 1;\nCOPY t\nFROM stdin;\n'\n\\.\nCOMMIT;\n",
    b"SELECT 1;\nSELECT 1; COPY t FROM stdin;\n'\n\\.\nCOMMIT;\n",
    b"\\restrict K\nCOMMIT;\n",  # after a meta-command line (pg_dump's key line, taken out), a statement
    b"SELECT 1;\n\\; COMMIT;\n",
]


@pytest.mark.parametrize("data", REFUSED)
def test_a_statement_ending_the_load_s_transaction_is_refused_wherever_it_is_cut(data):
    if data.endswith(b"-- x\n"):
        data += b"COMMIT;\n"
        line = 3
    else:
        line = 2
    for cuts in [(), *([n] for n in every_byte(data))]:
        passed, refusal = guarded(data, cuts)
        assert passed is None, (data, cuts)
        assert refusal.startswith(f"line {line} of the dump holds "), refusal
        assert refusal.endswith("nothing was changed"), refusal


def test_a_copy_end_psql_would_not_read_as_one_is_refused():
    data = b"COPY public.t (a) FROM stdin;\n1\n\\.\r\r\n'\n\\.\nCOMMIT;\n"
    assert guarded(data)[1].startswith("line 3 of the dump holds an end of COPY data")
