"""The safety copies restores keep: shown where operators look, expired on every run, and a warning when they
crowd the disk they are on."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import _my_connect, _pg_connect, server_site, unique_name

from backup_app.progress import size_text


def restore_once(site, size: int = 1024) -> None:
    """A backup, a changed media file, a restore: the restore keeps the replaced state."""
    (site.media / "doc.bin").write_bytes(os.urandom(size))
    site.manage("backup_create", "--quiet")
    (site.media / "doc.bin").write_bytes(os.urandom(size))
    site.manage("backup_restore", "--noinput", "--quiet")


def copies(site) -> list[str]:
    safety = site.root / "safety"
    return sorted(p.name for p in safety.iterdir() if (p / "safety.json").exists()) if safety.exists() else []


def test_listbackups_and_backup_config_show_the_kept_copy_its_size_and_place(sqlite_site):
    restore_once(sqlite_site)
    [name] = copies(sqlite_site)

    listing = sqlite_site.manage("backup_list").stdout
    config = sqlite_site.manage("backup_config").stdout

    for shown in (listing, config):
        assert "1 safety copy kept by restores" in shown
        line = next(line for line in shown.splitlines() if line.strip().startswith(name))
        assert str(sqlite_site.root / "safety" / name) in line and "KiB" in line and "expires" in line


def test_a_backup_expires_old_safety_copies(sqlite_site):
    restore_once(sqlite_site)
    assert len(copies(sqlite_site)) == 1

    result = sqlite_site.manage("backup_create", extra_env={"INVENTREE_BACKUP_SAFETY_DAYS": "0"})

    assert copies(sqlite_site) == []
    assert "Removed expired safety copy" in result.stderr


def test_a_backup_keeps_safety_copies_that_have_not_expired(sqlite_site):
    restore_once(sqlite_site)

    sqlite_site.manage("backup_create", "--quiet")

    assert len(copies(sqlite_site)) == 1


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_w007_warns_when_safety_copies_hold_much_of_the_free_space(sqlite_site, small_disk):
    sqlite_site.env["INVENTREE_BACKUP_SAFETY_DIR"] = str(small_disk / "safety")
    restore_once(sqlite_site, size=1536 * 1024)

    result = sqlite_site.manage("check", "--tag", "backup_app", check=False)

    assert "backup_app.W010" in result.output
    assert str(small_disk / "safety") in result.output


def test_no_w007_when_the_copies_are_small_next_to_the_free_space(sqlite_site):
    restore_once(sqlite_site)

    result = sqlite_site.manage("check", "--tag", "backup_app", check=False)

    assert "W010" not in result.output


# --- databases kept on the database server (SITE_safety_...) ------------------------------------------------


def server_copies(site) -> list[dict]:
    [copy] = json.loads(site.manage("backup_config", "--json").stdout)["safety_copies"]
    return copy["server_databases"]


def test_a_safety_database_kept_on_postgresql_is_sized_and_weighed_against_the_servers_disk(postgres_site):
    # The tests' role is a superuser on a server on this machine: data_directory is known, its disk is weighed.
    restore_once(postgres_site)

    [kept] = server_copies(postgres_site)
    check = postgres_site.manage("check", "--tag", "backup_app", check=False)
    listing = postgres_site.manage("backup_list").stdout

    with _pg_connect() as conn:
        size = conn.execute("SELECT pg_database_size(%s)", (kept["database"],)).fetchone()[0]
    assert kept["bytes"] == size
    assert f"{kept['database']} on its server, {size_text(size)}" in listing
    assert "W010" not in check.output  # a few MiB next to the free space of the server's disk


def test_a_safety_database_on_a_server_whose_disk_cannot_be_seen_is_named_by_w010(postgres_database, tmp_path):
    # A role that may create databases but is no superuser: PostgreSQL does not show it data_directory, so the
    # free space the kept database takes cannot be read here, and the check says so instead of keeping quiet.
    role = unique_name("bk_role")
    with _pg_connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN CREATEDB")
        conn.execute(f'ALTER DATABASE "{postgres_database}" OWNER TO {role}')
    try:
        site = server_site(tmp_path / "site", "postgresql", postgres_database, role)
        restore_once(site)
        [kept] = server_copies(site)

        check = site.manage("check", "--tag", "backup_app", check=False)

        assert kept["bytes"] > 0
        [line] = [line for line in check.output.splitlines() if "backup_app.W010" in line]
        assert f"hold {kept['bytes']:,} bytes ({kept['database']})" in line
        assert "cannot be read from here" in line
    finally:
        with _pg_connect() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (postgres_database,)
            ).fetchall()
            for (database,) in rows:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_safety_database_kept_on_mariadb_is_sized_from_information_schema(mysql_site):
    restore_once(mysql_site)

    [kept] = server_copies(mysql_site)
    check = mysql_site.manage("check", "--tag", "backup_app", check=False)

    with _my_connect() as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
            [kept["database"]],
        )
        size = int(cursor.fetchone()[0])
    assert kept["bytes"] == size > 0
    assert "W010" not in check.output  # @@datadir is on this machine: its disk was weighed
