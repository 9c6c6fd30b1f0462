"""SQLite: a restore gives back the whole file exactly — schema with triggers and views, every row, the header
(WAL stays WAL, page size, user_version, application_id) — and keeps the owner, group and mode of the file it
replaces, run as root over a file that belongs to the site's user; rollback gives back the replaced file the
same way; files the run makes next to the database belong to the database's owner."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from conftest import make_site
from reference import SQLITE_COMPANIONS, differences, sqlite_catalog

#: The site's user and group: not root, like www-data (a number is enough for chown).
UID, GID = 4242, 4243

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs as root over files of another user (chown)")


def build(path: Path) -> None:
    """A site as production has it: WAL, 8 KiB pages, user_version and application_id, a trigger and a view;
    the file and its folder belong to the site's user, group-writable."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        PRAGMA page_size = 8192; VACUUM;
        PRAGMA journal_mode = WAL;
        PRAGMA user_version = 42;
        PRAGMA application_id = 1234567;
        CREATE TABLE audit (id INTEGER PRIMARY KEY, part INTEGER, what TEXT);
        CREATE TRIGGER part_audit AFTER INSERT ON demo_part BEGIN
            INSERT INTO audit (part, what) VALUES (new.id, 'created');
        END;
        CREATE VIEW big_parts AS SELECT name, quantity FROM demo_part WHERE quantity > 10;
        INSERT INTO demo_part (name, description, quantity, created, attachment)
            VALUES ('bolt', 'M6', 50, '2024-01-01 00:00:00', '');
        """
    )
    conn.close()
    for p in (path.parent, path):
        os.chown(p, UID, GID)
    path.chmod(0o664)


def damage(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        DROP TRIGGER part_audit; DROP VIEW big_parts;
        PRAGMA user_version = 7;
        INSERT INTO demo_part (name, description, quantity, created, attachment)
            VALUES ('nut', 'M6', 5, '2024-01-02 00:00:00', '');
        PRAGMA journal_mode = DELETE;
        """
    )
    conn.close()


@pytest.fixture(params=["plain", "odd-name"])
def site(request, tmp_path):
    """A site whose database file is ``db.sqlite3`` in a folder with an ordinary name, or with ``#`` and ``?``
    in it (names a ``file:`` URI must quote)."""
    folder = tmp_path / ("data" if request.param == "plain" else "data #1 ?x=y")
    folder.mkdir()
    site = make_site(tmp_path / "site", INVENTREE_DB_NAME=str(folder / "db.sqlite3"))
    site.manage("migrate", "--noinput", "-v0")
    site.db = folder / "db.sqlite3"
    build(site.db)
    return site


def test_restore_gives_back_the_file_exactly_as_root_over_a_file_of_the_sites_user(site):
    site.invoke("backup", "--skip-media")
    backed_up = sqlite_catalog(site.db)
    assert backed_up["header"]["journal"] == "wal" and len(backed_up["dump"]) > 50
    damage(site.db)
    assert sqlite_catalog(site.db) != backed_up

    site.invoke("restore", "--skip-media")

    found = sqlite_catalog(site.db)
    assert found == backed_up, differences(backed_up, found)


def test_rollback_gives_back_the_replaced_file_exactly(site):
    site.invoke("backup", "--skip-media")
    damage(site.db)
    os.chmod(site.db, 0o640)
    replaced = sqlite_catalog(site.db)

    site.invoke("restore", "--skip-media")
    site.invoke("rollback")

    found = sqlite_catalog(site.db)
    assert found == replaced, differences(replaced, found)


def test_files_the_runs_make_next_to_the_database_belong_to_its_owner(site):
    site.invoke("backup", "--skip-media")
    site.invoke("restore", "--skip-media")

    companions = sqlite_catalog(site.db)["files"]

    assert companions["db"] == {"mode": "0o664", "uid": UID, "gid": GID}
    made = {suffix: st for suffix, st in companions.items() if suffix != "db" and st is not None}
    assert set(made) == {".backup-lock"}, "only the lock file stays next to the database"
    assert made[".backup-lock"]["uid"] == UID and made[".backup-lock"]["gid"] == GID
    assert all(suffix in SQLITE_COMPANIONS for suffix in made)
