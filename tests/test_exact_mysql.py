"""MariaDB: a restore gives back the catalog exactly — tables with their AUTO_INCREMENT, triggers, procedures
and functions (DEFINER, sql_mode), events, views (DEFINER, SQL SECURITY) — keeps the database's charset and
collation and every grant of the site's user and of a reporting user (on tables, columns and routines), by either
strategy: into a side database swapped in (a user that may create databases) or in place (one that may not);
objects made after the backup are gone; rollback gives back what was replaced."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid

import pytest
from conftest import DB_PASSWORD, _my_connect, server_site, service_missing
from reference import differences, mysql_catalog
from test_interrupted import Held, side_databases


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


# --- a transaction of the running site that takes a live table after the write-lock probe ----------
# MariaDB: a transaction of the running site that takes a live table after the restore's write-lock probe.
#
# The swap cannot hold its locks through ``RENAME TABLE`` (MariaDB refuses it under ``LOCK TABLES``), so a
# transaction may begin between the probe and the swap, or between the drop of the live triggers and the
# ``RENAME``.  Whatever step it stops, the run ends with one line naming what stayed held and the fix, a non-zero
# status, and the site exactly as it was (catalog: triggers, routines, events, views, grants; every row), or, when
# even the put-back could not get the tables, a line saying the next command finishes it, which it does.
#
# A real ``manage.py backup_restore`` is held at a pause point (``backup_app.testing``) while a second, real
# connection opens its transaction; ``backup_db_lock_timeout`` is 1 s, so the put-back waits 6 s.


def whole(site) -> dict:
    return {"catalog": mysql_catalog(site.database, site.users), "rows": site.snapshot_db()}


def restoring_records(site) -> list[str]:
    """Safety records still ``restoring``: a put-back the next command has to finish."""
    return [
        p.parent.name
        for p in (site.root / "safety").glob("*/safety.json")
        if json.loads(p.read_text())["state"] == "restoring"
    ]


def open_transaction(database: str, table: str = "demo_part"):
    """A second connection in a transaction that has read ``table`` (it holds its metadata lock): the site
    mid-request.  Returns the connection and its id."""
    reader = _my_connect(database)
    with reader.cursor() as cur:
        cur.execute("START TRANSACTION")
        cur.execute(f"SELECT COUNT(*) FROM `{table}`")
        cur.execute("SELECT CONNECTION_ID()")
        (ident,) = cur.fetchone()
    return reader, ident


def waiting(user: str, statement: str, timeout: float = 60) -> None:
    """Return once a connection of ``user`` (the site's: not another test's, whose put-back may wait too) waits
    for a metadata lock running a statement starting with ``statement``."""
    conn = _my_connect()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT STATE, INFO FROM information_schema.PROCESSLIST WHERE USER = %s AND INFO LIKE %s",
                    [user, statement + "%"],
                )
                if any("metadata lock" in (s or "") for s, _ in cur.fetchall()):
                    return
            time.sleep(0.05)
    finally:
        conn.close()
    raise AssertionError(f"no connection waited on a metadata lock running {statement}...")


def held_restore(site, step: str) -> Held:
    site.env["INVENTREE_BACKUP_DB_LOCK_TIMEOUT"] = "1"
    return Held(site, step, "backup_restore", "--noinput", "--skip-media").paused(step)


def changed(database: str, site_user: str) -> None:
    """Changes after the backup; the live demo_part keeps a trigger (the swap drops it before the RENAME)."""
    conn = _my_connect(database)
    with conn.cursor() as cur:
        cur.execute("DROP VIEW big_parts")
        cur.execute("DROP FUNCTION part_total")
        cur.execute("DROP EVENT nightly")
        cur.execute(
            f"CREATE DEFINER = '{site_user}'@'%' TRIGGER part_later BEFORE UPDATE ON demo_part FOR EACH ROW "
            "SET NEW.quantity = NEW.quantity + 1"
        )
        cur.execute("CREATE TABLE made_after_the_backup (id INT)")
        cur.execute(f"CREATE DEFINER = '{site_user}'@'%' PROCEDURE made_after() SELECT 1")
        cur.execute("DELETE FROM demo_part WHERE quantity < 10")
        cur.execute("INSERT INTO audit (part, what) VALUES (1, 'later')")
    conn.close()


def prepared(site, *more: str) -> dict:
    """A backup, then changes (objects dropped and made, rows deleted, the statements ``more``): the state a
    failed restore must keep."""
    site.invoke("backup", "--skip-media")
    changed(site.database, site.user)
    if more:
        conn = _my_connect(site.database)
        with conn.cursor() as cur:
            for statement in more:
                cur.execute(statement)
        conn.close()
    conn = _my_connect()
    with conn.cursor() as cur:  # so that the restore can name the connection that holds the tables
        for host in ("%", "localhost"):
            cur.execute(f"GRANT PROCESS ON *.* TO '{site.user}'@'{host}'")
    conn.close()
    return whole(site)


@pytest.mark.parametrize("site", ["swap"], indirect=True)
def test_a_transaction_begun_after_the_probe_stops_the_swap_with_nothing_changed(site):
    before = prepared(site)
    run = held_restore(site, "restore:db-swapping:default")
    reader, ident = open_transaction(site.database)
    try:
        run.go_on()
        code, err = run.finish(timeout=120)
    finally:
        reader.rollback()
        reader.close()

    last = err.strip().splitlines()[-1]
    assert code == 1, err
    assert last.startswith("CommandError: "), err
    assert f"the tables of {site.database} stayed held by another connection for 1 s" in last, last
    assert f"connection {ident}" in last, last
    assert "end that transaction, then restore again" in last, last
    assert last.endswith("the restore was undone (nothing had been changed)"), last
    after = whole(site)
    assert after == before, differences(before["catalog"], after["catalog"])
    assert side_databases(site) == []
    assert restoring_records(site) == []


@pytest.mark.parametrize("site", ["swap"], indirect=True)
def test_a_transaction_begun_before_the_rename_is_waited_out_by_the_put_back(site):
    """The triggers are dropped, the RENAME times out; the transaction ends while the put-back waits."""
    before = prepared(site)
    run = held_restore(site, "restore:swap-renaming:default")
    reader, ident = open_transaction(site.database)
    try:
        run.go_on()
        waiting(site.user, "CREATE")  # the RENAME gave up; putting a trigger back waits for the same table
    finally:
        reader.rollback()
        reader.close()
    code, err = run.finish(timeout=120)

    last = err.strip().splitlines()[-1]
    assert code == 1, err
    assert f"the tables of {site.database} stayed held by another connection for 1 s" in last, last
    assert f"connection {ident}" in last, last
    assert "database left unchanged" in last, last
    after = whole(site)
    assert after == before, differences(before["catalog"], after["catalog"])
    assert side_databases(site) == []
    assert restoring_records(site) == []


@pytest.mark.parametrize("site", ["swap"], indirect=True)
def test_a_put_back_the_transaction_outlasts_is_finished_by_the_next_command(site):
    before = prepared(site)
    run = held_restore(site, "restore:swap-renaming:default")
    reader, ident = open_transaction(site.database)
    try:
        run.go_on()
        code, err = run.finish(timeout=120)
        left = restoring_records(site)
    finally:
        reader.rollback()
        reader.close()

    last = err.strip().splitlines()[-1]
    assert code == 1, err
    assert last.startswith("CommandError: "), err
    assert f"the tables of {site.database} stayed held by another connection for 1 s" in last, last
    assert "putting the old state back did not finish" in last, last
    assert f"connection {ident}" in last, last
    assert "the next backup, restore or rollback puts it back" in last, last
    assert len(left) == 1, left

    done = site.invoke("rollback")

    assert f"Found restore {left[0]} interrupted" in done.stderr, done.output
    after = whole(site)
    assert after == before, differences(before["catalog"], after["catalog"])
    assert side_databases(site) == []
    assert restoring_records(site) == []


@pytest.mark.parametrize("site", ["in-place"], indirect=True)
def test_in_place_a_transaction_begun_after_the_probe_stops_the_restore_and_leaves_nothing_to_undo(site):
    """The ``DROP TABLE`` of every table times out with nothing dropped: no safety entry stays that a later
    command would load over the rows the site writes after."""
    before = prepared(site)
    run = held_restore(site, "restore:in-place-dump:default")
    reader, ident = open_transaction(site.database)
    try:
        run.go_on()
        code, err = run.finish(timeout=120)
    finally:
        reader.rollback()
        reader.close()

    last = err.strip().splitlines()[-1]
    assert code == 1, err
    assert last.startswith("CommandError: "), err
    assert f"the tables of {site.database} stayed held by another connection for 1 s" in last, last
    assert f"connection {ident}" in last, last
    assert "ALSO failed" not in last, last
    assert last.endswith("the restore was undone (nothing had been changed)"), last
    assert restoring_records(site) == []
    after = whole(site)
    assert after == before, differences(before["catalog"], after["catalog"])

    site.sql("INSERT INTO demo_part (name, description, quantity, created, attachment) "
             "VALUES ('written after', '', 7, NOW(), '')")  # fmt: skip
    site.invoke("backup", "--skip-media")  # looks for restores to finish first
    assert site.query("SELECT COUNT(*) FROM demo_part WHERE name = 'written after'") == [[1]]


@pytest.mark.parametrize("site", ["in-place"], indirect=True)
def test_in_place_a_put_back_a_held_view_outlasts_is_finished_by_the_next_command(site):
    """The tables are dropped, then a view a transaction reads stays held: the load never starts, the
    put-back of the kept dump waits for the same view and gives up; the next command puts the site back."""
    before = prepared(site, f"CREATE DEFINER = '{site.user}'@'%' VIEW v_const AS SELECT 1 AS one")
    run = held_restore(site, "restore:in-place-dump:default")
    reader, _ident = open_transaction(site.database, "v_const")
    try:
        run.go_on()
        code, err = run.finish(timeout=120)
        left = restoring_records(site)
    finally:
        reader.rollback()
        reader.close()

    last = err.strip().splitlines()[-1]
    assert code == 1, err
    assert last.startswith("CommandError: "), err
    assert f"the view v_const of {site.database} stayed held by another connection for 1 s" in last, last
    assert f"ALSO failed (the view v_const of {site.database} stayed held by another connection for 6 s too" in last
    assert "SHOW PROCESSLIST names it" in last, last  # a transaction that read no InnoDB table: no id to give
    assert re.search(r"connection \d", last) is None, last
    assert "the next backup, restore or rollback puts it back" in last, last
    assert len(left) == 1, left

    done = site.invoke("rollback")

    assert f"Found restore {left[0]} interrupted" in done.stderr, done.output
    after = whole(site)
    assert after == before, differences(before["catalog"], after["catalog"])
    assert restoring_records(site) == []


@pytest.mark.parametrize("site", ["swap"], indirect=True)
def test_a_swap_killed_with_the_live_triggers_dropped_is_put_back_by_the_next_command(site):
    """SIGKILL between the drop of the live objects and the RENAME: the next command makes them again from
    the file the swap kept them in (and their routine grants), then drops what the restore staged."""
    before = prepared(site)
    run = held_restore(site, "restore:swap-renaming:default")
    run.signal(signal.SIGKILL)
    run.proc.wait(timeout=60)
    assert mysql_catalog(site.database, site.users) != before["catalog"]  # the live triggers and routines went

    done = site.invoke("rollback")

    assert "interrupted" in done.stderr, done.output
    after = whole(site)
    assert after == before, differences(before["catalog"], after["catalog"])
    assert side_databases(site) == []
    assert restoring_records(site) == []
