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
import subprocess

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


def guard(data: bytes, cuts: list[int] = (), target: str = "staging", own: str = "", databases=DATABASES) -> bytes:
    g = mysql_guard.StatementGuard(Pieces(data, list(cuts)), target=target, databases=databases, own=own)
    return read(g)


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


# --- names a real site's dump holds: its own database's, and aliases that are names of databases ----------------

#: Statements where ``test`` (a database of the server) is a table alias: its columns are named, no database.
ALIASED = {
    "view-as-mariadb-writes-it": b"/*!50001 CREATE ALGORITHM=UNDEFINED */ /*!50001 VIEW `v` AS select `test`.`id` "
    b"AS `id`,`test`.`name` AS `name` from `part` `test` where `test`.`id` > 0 */;",
    "join-condition": b"CREATE VIEW v AS select `test`.`id` AS `id` from (`part` `test` join `log` `l` "
    b"on(`test`.`id` = `l`.`id` and (1, test.id) = (1, 2))) where `test`.`id` > 1;",
    "as-and-order-by": b"SELECT test.id, COUNT(test.id) FROM part AS test GROUP BY test.id ORDER BY test.id;",
    "update-set": b"UPDATE part test SET test.name = 'x' WHERE test.id = 1 AND test.name <> '';",
    "select-star": b"SELECT test.* FROM part test;",
    "joins-with-hints": b"SELECT 1 FROM part test JOIN log AS l USE INDEX (PRIMARY) ON l.id = test.id "
    b"LEFT JOIN (SELECT 1 AS id) x ON (x.id = test.id) GROUP BY test.id, test.name ORDER BY test.id;",
}


@pytest.mark.parametrize("case", sorted(ALIASED))
def test_a_table_alias_named_like_a_database_passes(case):
    dump = b"CREATE TABLE `part` (id int);\n" + ALIASED[case] + b"\n"

    assert guard(dump) == dump


#: Statements where ``test`` names the database ``test`` although the statement also has an alias ``test``.
NOT_ALIASED = {
    "comma-in-from": b"SELECT 1 FROM part test, test.secret;",
    "comma-after-a-join-condition": b"SELECT 1 FROM part test JOIN log ON (test.id = log.id), test.secret;",
    "join": b"SELECT 1 FROM part test JOIN log l ON test.id = l.id JOIN test.secret s ON 1;",
    "joined-group": b"SELECT 1 FROM part test LEFT JOIN (test.secret) ON 1;",
    "subquery": b"SELECT test.id FROM part test WHERE test.id IN (SELECT id FROM test.secret);",
    "if-not-exists": b"CREATE TABLE IF NOT EXISTS test.x (test INT);",
    "rename-as": b"ALTER TABLE part ALTER COLUMN test SET DEFAULT 1, RENAME AS test.part;",
    "sequence-function": b"SELECT SETVAL(test.seq, 1) FROM part test;",
    "next-value-for": b"SELECT NEXT VALUE FOR test.seq FROM part test WHERE test.id = 1;",
    "routine": b"SELECT test.f(1) FROM part test;",
    "three-parts": b"SELECT test.secret.id FROM part test WHERE test.id = 1;",
    "drop-index": b"DROP INDEX test ON test.secret;",
    "multi-table-update": b"UPDATE part test, test.secret SET test.name = 1;",
    "table-statement": b"SELECT * FROM part test WHERE EXISTS (TABLE test.secret);",
    "union-of-a-merge-table": b"CREATE TABLE m (test INT) ENGINE=MERGE UNION=(test.secret);",
    "not-declared": b"SELECT test.id FROM part;",
    "index-hint-then-a-comma": b"UPDATE part test FORCE INDEX FOR ORDER BY (PRIMARY), test.secret SET test.a = 1;",
    "on-of-an-index-after-a-join": b"IF (SELECT 1 FROM part test JOIN log ON 1) THEN DROP INDEX test ON test.t",
}


@pytest.mark.parametrize("case", sorted(NOT_ALIASED))
def test_a_database_named_where_the_statement_has_an_alias_of_its_name_is_refused(case):
    dump = b"CREATE TABLE `part` (id int);\n" + NOT_ALIASED[case] + b"\n"

    with pytest.raises(RestoreError, match=r"line 2 of the dump names another database \(test\.\)"):
        guard(dump)


def test_a_trigger_or_routine_naming_the_site_database_names_the_staging_one_instead():
    """The body names the live database (``site_live``); loaded into ``staging`` it names ``staging`` (the swap
    makes it ``site_live`` again, in the live database); the rest of the dump is unchanged."""
    trigger = (
        b"DELIMITER ;;\n/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER tr AFTER INSERT "
        b"ON `site_live`.`part` FOR EACH ROW BEGIN INSERT INTO `site_live`.`log` VALUES (NEW.id); "
        b"UPDATE site_live.log test SET test.id = 1; END */;;\nDELIMITER ;\n"
    )
    routine = b"CREATE PROCEDURE p() SELECT COUNT(*) FROM site_live.part WHERE site_live.part.id > 0;\n"
    dump = b"CREATE TABLE `part` (id int);\n" + trigger + routine

    for at in range(len(dump)):  # wherever a read ends
        assert guard(dump, [at], own="site_live") == dump.replace(b"site_live", b"staging")


@pytest.mark.parametrize(
    "statement",
    [
        b"DELETE FROM `site_live`.`part`;",
        b"INSERT INTO site_live.part SELECT * FROM part;",
        b"CREATE TABLE site_live.x (a int);",
        b"DELIMITER ;;\nCREATE PROCEDURE p() SELECT 1;;\nDELETE FROM site_live.part;;",
        b"DELIMITER ;;\nCREATE TRIGGER t AFTER INSERT ON part FOR EACH ROW DELETE FROM other_site.part;;",
        b"DELIMITER $$\nCREATE PROCEDURE p() BEGIN SELECT 1; END$$\nDELETE FROM site_live.part$$",
    ],
    ids=["delete", "insert-select", "create-table", "after-a-routine", "another-site-in-a-trigger", "after-a-body"],
)
def test_a_statement_on_the_site_database_outside_a_trigger_view_or_routine_is_still_refused(statement):
    dump = b"CREATE TABLE `part` (id int);\n" + statement + b"\n"

    with pytest.raises(RestoreError, match="names another database"):
        guard(dump, own="site_live", databases=DATABASES | {"other_site"})


# --- end to end: a real site's objects naming its database and aliases named like databases -------------------


@pytest.fixture
def alias_database():
    """A database of the server whose name the site's objects use as a table alias."""
    from conftest import _my_connect, service_missing, unique_name

    try:
        conn = _my_connect()
    except Exception as err:
        service_missing("MariaDB on 127.0.0.1:3306", err)
    name = unique_name("alias15")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    conn.close()
    yield name
    conn = _my_connect()
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


def build_named_objects(site, alias: str) -> None:
    """A trigger, a procedure and an event whose bodies name the site's database, views with an alias named
    like another database, as an operator writes them."""
    from conftest import _my_connect

    name = site.env["INVENTREE_DB_NAME"]
    site.manage("demo_data")
    conn = _my_connect(name)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, part INT, what VARCHAR(20))")
        cur.execute(
            "CREATE TRIGGER part_audit AFTER INSERT ON demo_part FOR EACH ROW BEGIN "
            f"INSERT INTO `{name}`.`audit` (part, what) VALUES (NEW.id, 'created'); "
            f"UPDATE {name}.audit {alias} SET {alias}.what = 'seen' WHERE {alias}.part = NEW.id; END"
        )
        cur.execute(
            f"CREATE PROCEDURE count_parts() BEGIN SELECT COUNT(*) FROM {name}.demo_part {alias} "
            f"WHERE {alias}.quantity > 0; DELETE FROM `{name}`.audit WHERE part IS NULL; END"
        )
        cur.execute(
            "CREATE EVENT tidy ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 03:00:00' DISABLE DO "
            f"DELETE FROM `{name}`.`audit` WHERE part IS NULL"
        )
        cur.execute(
            f"CREATE VIEW stocked AS SELECT {alias}.id, {alias}.name FROM demo_part AS {alias} "
            f"JOIN audit a ON a.part = {alias}.id WHERE {alias}.quantity > 1"
        )
    conn.close()


def query(site, sql: str) -> list[tuple]:
    from conftest import _my_connect

    conn = _my_connect(site.env["INVENTREE_DB_NAME"])
    with conn.cursor() as cur:
        cur.execute(sql)
        rows = [tuple(row) for row in cur.fetchall()]
    conn.close()
    return rows


def test_a_site_whose_objects_name_its_database_and_alias_a_database_restores_exactly(mysql_site, alias_database):
    from reference import differences, mysql_catalog

    name = mysql_site.env["INVENTREE_DB_NAME"]
    build_named_objects(mysql_site, alias_database)
    mysql_site.invoke("backup", "--skip-media")
    backed_up, rows = mysql_catalog(name), mysql_site.snapshot_db()
    mysql_site.sql("DROP TRIGGER part_audit")
    mysql_site.sql("DELETE FROM demo_part WHERE quantity > 5")

    result = mysql_site.invoke("restore", "--skip-media", check=False)

    assert result.returncode == 0, result.stderr
    found = mysql_catalog(name)
    assert found == backed_up, differences(backed_up, found)
    assert mysql_site.snapshot_db() == rows
    audit = query(mysql_site, "SELECT part, what FROM audit ORDER BY id")
    mysql_site.sql("INSERT INTO demo_part (name, description, quantity, created, attachment) "
                   "VALUES ('new', '', 3, NOW(), '')")  # fmt: skip
    (new,) = query(mysql_site, "SELECT MAX(id) FROM demo_part")[0]
    assert query(mysql_site, "SELECT part, what FROM audit ORDER BY id") == [*audit, (new, "seen")]


def test_a_stock_databases_dump_of_such_a_site_restores_from_elsewhere(mysql_site, alias_database):
    from reference import differences, mysql_catalog
    from test_hostile import elsewhere

    name = mysql_site.env["INVENTREE_DB_NAME"]
    build_named_objects(mysql_site, alias_database)
    dump = subprocess.run(
        ["mariadb-dump", "-h127.0.0.1", "-uroot", "--databases", "--add-drop-database", "--routines", "--triggers",
         "--events", name],
        check=True,
        capture_output=True,
    ).stdout  # fmt: skip
    backed_up, rows = mysql_catalog(name), mysql_site.snapshot_db()
    mysql_site.sql("DROP VIEW stocked")
    mysql_site.sql("DELETE FROM audit")
    file = elsewhere(mysql_site, "InvenTree-db-2001-01-01-000000.sql", dump)

    result = mysql_site.invoke("restore", "--db-file", str(file), "--skip-media", check=False)

    assert result.returncode == 0, result.stderr
    found = mysql_catalog(name)
    assert found == backed_up, differences(backed_up, found)
    assert mysql_site.snapshot_db() == rows


def test_a_trigger_naming_the_site_database_acts_on_the_staging_one_while_it_loads(mysql_site):
    """A hostile dump's trigger fires during the load and deletes from the site's database by name: it deletes
    from the database being loaded (verify --restore-test: a scratch one; a restore: the staged one, which is
    then swapped in), never from the live site."""
    import gzip

    from test_hostile import file_of, gz, replace_in_set

    name = mysql_site.env["INVENTREE_DB_NAME"]
    mysql_site.manage("demo_data")
    mysql_site.invoke("backup", "--skip-media")
    dump = gzip.decompress(file_of(mysql_site, "db").read_bytes())
    dump += (
        "\nDELIMITER ;;\nCREATE TRIGGER wipe AFTER INSERT ON auth_group FOR EACH ROW BEGIN "
        f"DELETE FROM `{name}`.`demo_part`; END;;\nDELIMITER ;\nINSERT INTO auth_group (name) VALUES ('x');\n"
    ).encode()
    replace_in_set(mysql_site, "db", gz(dump))
    before = mysql_site.snapshot_db()
    assert before["demo_part"]

    result = mysql_site.manage("backup_verify", "--restore-test", check=False)

    assert result.returncode == 0, result.stderr
    assert mysql_site.snapshot_db() == before
    mysql_site.invoke("restore", "--skip-media")  # the trigger fired in the staged database, swapped in
    assert mysql_site.snapshot_db()["demo_part"] == []


def test_a_stock_dump_cut_into_two_reads_at_any_byte_passes_whole():
    """Inside the sandbox line, an executable comment's version, a DELIMITER line, a string, a name..."""
    from test_hostile import STOCK_DUMP

    for at in range(1, len(STOCK_DUMP)):
        assert guard(STOCK_DUMP, [at]) == STOCK_DUMP, at
