"""MariaDB: a restore gives back the catalog exactly — tables with their AUTO_INCREMENT, triggers, procedures
and functions (DEFINER, sql_mode), events, views (DEFINER, SQL SECURITY) — keeps the database's charset and
collation and every grant of the site's user and of a reporting user (on tables, columns and routines), by either
strategy: into a side database swapped in (a user that may create databases) or in place (one that may not);
objects made after the backup are gone; rollback gives back what was replaced."""

from __future__ import annotations

import os
import uuid

import pytest
from conftest import DB_PASSWORD, _my_connect, server_site, service_missing
from reference import differences, mysql_catalog


@pytest.fixture(params=["swap", "in-place"])
def site(request, tmp_path):
    try:
        conn = _my_connect()
    except Exception as err:
        service_missing("MariaDB on 127.0.0.1:3306", err)
    tag = f"i14_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    database, user, reporting = f"{tag}_db", f"{tag}_s", f"{tag}_r"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_german2_ci")
        for host in ("%", "localhost"):
            cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{DB_PASSWORD}'")
            if request.param == "swap":  # its own database and the side databases beside it
                cur.execute(f"GRANT ALL ON `{database}%`.* TO '{user}'@'{host}'")
            else:  # its own database, and what putting back grants on single routines takes
                cur.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'{host}' WITH GRANT OPTION")
                cur.execute(f"GRANT SELECT ON mysql.procs_priv TO '{user}'@'{host}'")
        cur.execute(f"CREATE USER '{reporting}'@'%'")
    conn.close()
    site = server_site(tmp_path / "site", "mysql", database, user, DB_PASSWORD)
    site.database, site.strategy, site.user = database, request.param, user
    site.users = [f"'{user}'@'%'", f"'{reporting}'@'%'"]
    build(database, user, reporting)
    yield site
    conn = _my_connect()
    with conn.cursor() as cur:
        cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s", (database + "%",))
        for (name,) in cur.fetchall():
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        for account in (f"'{user}'@'%'", f"'{user}'@'localhost'", f"'{reporting}'@'%'"):
            cur.execute(f"DROP USER IF EXISTS {account}")
    conn.close()


def build(database: str, user: str, reporting: str) -> None:
    """What the operators of a production site set up around the tables."""
    conn = _my_connect(database)
    definer = f"DEFINER = '{user}'@'%'"
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, part INT, what VARCHAR(20))")
        cur.execute("ALTER TABLE audit AUTO_INCREMENT = 1000")
        cur.execute(
            f"CREATE {definer} TRIGGER part_audit AFTER INSERT ON demo_part FOR EACH ROW "
            "INSERT INTO audit (part, what) VALUES (NEW.id, 'created')"
        )
        cur.execute("SET SESSION sql_mode = 'ANSI_QUOTES,STRICT_ALL_TABLES'")
        cur.execute(f'CREATE {definer} PROCEDURE restock(n INT) UPDATE "demo_part" SET quantity = quantity + n')
        cur.execute("SET SESSION sql_mode = DEFAULT")
        cur.execute(
            f"CREATE {definer} FUNCTION part_total() RETURNS INT READS SQL DATA "
            "RETURN (SELECT SUM(quantity) FROM demo_part)"
        )
        cur.execute(
            f"CREATE {definer} SQL SECURITY INVOKER VIEW big_parts AS "
            "SELECT name, quantity FROM demo_part WHERE quantity > 10"
        )
        cur.execute(
            f"CREATE {definer} EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 03:00:00' "
            "DISABLE DO DELETE FROM audit"
        )
        cur.execute(f"GRANT SELECT ON `{database}`.demo_part TO '{reporting}'@'%'")
        cur.execute(f"GRANT SELECT (id, username) ON `{database}`.auth_user TO '{reporting}'@'%'")
        cur.execute(f"GRANT EXECUTE ON PROCEDURE `{database}`.restock TO '{reporting}'@'%'")
        cur.execute(f"GRANT SELECT ON `{database}`.big_parts TO '{reporting}'@'%'")
        cur.execute(
            "INSERT INTO demo_part (name, description, quantity, created, attachment) "
            "SELECT CONCAT('p', seq), 'd', seq, NOW(), '' FROM seq_1_to_30"
        )
    conn.close()


def damage(database: str, site_user: str) -> None:
    conn = _my_connect(database)
    with conn.cursor() as cur:
        cur.execute("DROP TRIGGER part_audit")
        cur.execute("DROP VIEW big_parts")
        cur.execute("DROP FUNCTION part_total")
        cur.execute("DROP EVENT nightly")
        cur.execute("CREATE TABLE made_after_the_backup (id INT)")
        cur.execute(f"CREATE DEFINER = '{site_user}'@'%' PROCEDURE made_after() SELECT 1")
        cur.execute("DELETE FROM demo_part WHERE quantity < 10")
        cur.execute("INSERT INTO audit (part, what) VALUES (1, 'later')")
    conn.close()


def test_restore_gives_back_the_catalog_and_keeps_grants_and_charset(site):
    site.invoke("backup", "--skip-media")
    backed_up = mysql_catalog(site.database, site.users)
    rows = site.snapshot_db()
    damage(site.database, site.user)
    assert mysql_catalog(site.database, site.users) != backed_up

    result = site.invoke("restore", "--skip-media")

    assert ("restoring in place" in result.stderr) == (site.strategy == "in-place")
    found = mysql_catalog(site.database, site.users)
    assert found == backed_up, differences(backed_up, found)
    assert site.snapshot_db() == rows


def test_rollback_gives_back_the_replaced_catalog(site):
    site.invoke("backup", "--skip-media")
    damage(site.database, site.user)
    replaced = mysql_catalog(site.database, site.users)

    site.invoke("restore", "--skip-media")
    site.invoke("rollback")

    found = mysql_catalog(site.database, site.users)
    assert found == replaced, differences(replaced, found)


def test_verify_restore_test_takes_the_path_of_the_restore(site):
    if site.strategy == "in-place":
        pytest.skip("a user that may not create a database has no scratch database to restore into")
    site.invoke("backup", "--skip-media")

    out = site.invoke("verify", "--restore-test").stdout

    assert out.startswith("OK")
