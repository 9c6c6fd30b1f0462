"""A backup file from elsewhere cannot hurt the site (issue 15).

Each test hands the real commands a file crafted as an attacker who could write to the backup storage would
craft it: one that passes every checksum (the manifest is rewritten to match it) or comes with no manifest at
all.  Each checks three things: the command refuses with a non-zero exit and one line naming the file and what
is wrong; the live site (every row of every table, every media file's bytes, the server's databases and
roles) is exactly as it was; and nothing the file asked for ran (no canary file appeared).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import tarfile
import uuid
from contextlib import suppress
from pathlib import Path

import django
import pytest

django.setup()

# --- helpers ---------------------------------------------------------------------------------------------------


def last_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_refused(result, name: str, *words: str) -> str:
    """Non-zero exit; the last line of stderr names ``name`` and says each of ``words``; no traceback."""
    line = last_line(result)
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.stderr, result.stderr
    assert name in line, result.stderr
    for word in words:
        assert word in line, result.stderr
    return line


def state(site) -> tuple[dict, dict]:
    """Every row of every table and every media file's SHA-256."""
    return site.snapshot_db(), site.snapshot_media()


def manifest_path(site, index: int = 0) -> Path:
    return site.backups / next(f["name"] for f in site.sets()[index]["files"] if f["kind"] == "manifest")


def file_of(site, kind: str, index: int = 0) -> Path:
    return site.backups / next(f["name"] for f in site.sets()[index]["files"] if f["kind"] == kind)


def replace_in_set(site, kind: str, data: bytes, **manifest_changes) -> Path:
    """Put ``data`` in place of the newest set's ``kind`` file, the manifest rewritten to match its size and
    SHA-256 (so every checksum passes); ``manifest_changes`` are applied to the manifest's top level."""
    target = file_of(site, kind)
    manifest = manifest_path(site)
    target.write_bytes(data)
    content = json.loads(manifest.read_text())
    for entry in content["files"]:
        if entry["name"] == target.name:
            entry["size"] = len(data)
            entry["sha256"] = hashlib.sha256(data).hexdigest()
    content.update(manifest_changes)
    manifest.write_text(json.dumps(content))
    return target


def elsewhere(site, name: str, data: bytes) -> Path:
    """A file that came from another machine: in a folder of its own, no manifest."""
    folder = site.root / "from-elsewhere"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1)


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Zeros(io.RawIOBase):
    """``size`` zero bytes, made as they are read."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def gz_bomb_tar(member_size: int, *, tail: int = 0) -> bytes:
    """A gzip'd tar whose one member is ``member_size`` zero bytes (a few KiB per GiB stored), then ``tail``
    zero bytes after the end of the archive."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gzf:
        with tarfile.open(fileobj=gzf, mode="w|") as tar:
            info = tarfile.TarInfo("bomb.bin")
            info.size = member_size
            tar.addfile(info, Zeros(member_size))
        left = tail
        block = bytes(1024 * 1024)
        while left > 0:
            gzf.write(block[: min(left, len(block))])
            left -= len(block)
    return out.getvalue()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 16 MiB tmpfs with room for 2,000 files."""
    mount = tmp_path / f"tiny-disk-15-{os.getpid()}"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,nr_inodes=2000", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def backed_up(site) -> tuple[dict, dict]:
    """Seed the site, back it up, then change it: the state a restore would replace (returned)."""
    site.manage("demo_data")
    (site.media / "doc.txt").write_text("backed up")
    site.invoke("backup")
    site.sql("DELETE FROM demo_part WHERE quantity > 20")
    (site.media / "doc.txt").write_text("after the backup")
    (site.media / "new.txt").write_text("new")
    return state(site)


# --- manifests that cannot be used: that set alone is unreadable ------------------------------------------------

BAD_MANIFESTS = {
    "created-a-number": lambda m: {**m, "created": 123},
    "files-a-string": lambda m: {**m, "files": "abc"},
    "file-without-name": lambda m: {**m, "files": [{k: v for k, v in f.items() if k != "name"} for f in m["files"]]},
    "size-a-string": lambda m: {**m, "files": [{**f, "size": "big"} for f in m["files"]]},
    "sha-not-hex": lambda m: {**m, "files": [{**f, "sha256": "z" * 64} for f in m["files"]]},
    "path-outside": lambda m: {**m, "files": [{**f, "name": "../../etc/passwd"} for f in m["files"]]},
    "media-count-negative": lambda m: {**m, "media": {**m["media"], "files": -1}},
    "migrations-not-pairs": lambda m: {**m, "databases": [{**d, "migrations": "all"} for d in m["databases"]]},
    "dumped-bytes-negative": lambda m: {**m, "databases": [{**d, "source_bytes": -1} for d in m["databases"]]},
    "dumped-bytes-a-string": lambda m: {**m, "databases": [{**d, "source_bytes": "2 MB"} for d in m["databases"]]},
    "unknown-format": lambda m: {**m, "format": "backup_app/99"},
    "a-list": lambda m: [m],
}


@pytest.fixture
def two_sets(sqlite_site):
    """Two complete sets; the newer one's manifest is the one the tests break."""
    (sqlite_site.media / "doc.txt").write_text("older set")
    sqlite_site.invoke("backup")
    (sqlite_site.media / "doc.txt").write_text("newer set")
    sqlite_site.invoke("backup")
    return sqlite_site


@pytest.mark.parametrize("how", sorted(BAD_MANIFESTS))
def test_a_malformed_manifest_makes_its_set_unreadable_and_the_others_still_list(tmp_path, how):
    from django.core.files.storage import FileSystemStorage
    from test_sets import stored_set

    from backup_app.sets import Naming, list_sets

    storage = FileSystemStorage(location=tmp_path)
    stored_set(storage, "2026-11-26-020000")
    stored_set(storage, "2026-11-27-020000")
    content = json.loads((tmp_path / Naming().manifest_name("2026-11-27-020000")).read_text())
    content.update(
        name="2026-11-27-020000",
        databases=[{"alias": "default", "file": content["files"][0]["name"], "migrations": [], "tables": 3}],
        media={"file": content["files"][1]["name"], "files": 1, "bytes": 4},
    )
    manifest = tmp_path / Naming().manifest_name("2026-11-27-020000")
    manifest.write_text(json.dumps(BAD_MANIFESTS[how](content)))

    listed = list_sets(storage)

    assert [s.status for s in listed] == ["unreadable", "complete"]
    assert listed[0].problems[0].startswith(manifest.name + ": ")
    assert listed[0].as_json()["complete"] is False


def test_a_manifest_that_is_not_json_makes_its_set_unreadable_in_the_listing(two_sets):
    manifest = manifest_path(two_sets)
    manifest.write_bytes(b"\xff{not json")

    [bad, good] = two_sets.sets()

    assert (bad["status"], good["status"]) == ("unreadable", "complete")
    assert bad["problems"][0].startswith(manifest.name + ": not JSON")


def test_a_restore_passes_over_an_unreadable_set_and_says_so(two_sets):
    manifest = manifest_path(two_sets)
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "files": "abc"}))
    (two_sets.media / "doc.txt").write_text("changed")

    result = two_sets.invoke("restore")

    assert (two_sets.media / "doc.txt").read_text() == "older set"
    assert f"unreadable ({manifest.name}: files is str" in result.stderr


def test_verify_reports_the_unreadable_set_and_checks_the_others(two_sets):
    manifest = manifest_path(two_sets)
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "created": 123}))
    [bad, good] = two_sets.sets()

    result = two_sets.manage("backup_verify", check=False)

    assert result.returncode != 0
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["OK", good["name"]] for line in lines), result.output
    assert manifest.name in last_line(result) and "created is int" in last_line(result)


def test_a_file_of_an_unreadable_set_named_for_restore_is_refused(two_sets):
    manifest = manifest_path(two_sets)
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "created": 123}))
    db = file_of(two_sets, "db")
    before = state(two_sets)

    result = two_sets.invoke("restore", "--db-file", db.name, "--skip-media", check=False)

    assert_refused(result, db.name, "unreadable", manifest.name)
    assert state(two_sets) == before


def test_the_only_set_unreadable_says_which_and_why(sqlite_site):
    sqlite_site.invoke("backup")
    manifest = manifest_path(sqlite_site)
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "files": "abc"}))

    result = sqlite_site.invoke("restore", check=False)

    assert_refused(result, manifest.name, "no readable backup set", "files is str")


def test_prune_keeps_an_unreadable_set(two_sets):
    manifest = manifest_path(two_sets)
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "created": 123}))
    [bad, older] = two_sets.sets()
    bad_files = {f["name"] for f in bad["files"]}

    two_sets.invoke("backup", "--clean", extra_env={"INVENTREE_BACKUP_KEEP": "1"})

    left = {p.name for p in two_sets.backups.iterdir()}
    assert bad_files <= left
    assert not {f["name"] for f in older["files"]} & left  # retention did run


# --- a manifest that lies ---------------------------------------------------------------------------------------


def test_a_dump_of_another_engine_by_its_manifest_is_refused(sqlite_site):
    sqlite_site.invoke("backup")
    manifest = manifest_path(sqlite_site)
    content = json.loads(manifest.read_text())
    content["databases"][0]["vendor"] = "postgresql"
    manifest.write_text(json.dumps(content))
    before = state(sqlite_site)

    result = sqlite_site.invoke("restore", check=False)

    assert_refused(result, content["databases"][0]["file"], "postgresql", "sqlite")
    assert state(sqlite_site) == before


def test_an_archive_larger_than_its_manifest_says_stops_at_the_first_file_over(sqlite_site):
    before = backed_up(sqlite_site)
    archive = replace_in_set(sqlite_site, "media", gz_bomb_tar(64 * 1024 * 1024))

    result = sqlite_site.invoke("restore", check=False)

    assert_refused(result, archive.name, "holds more than", "its manifest says", "bomb.bin")  # its first member
    assert state(sqlite_site) == before
    assert [p.name for p in sqlite_site.media.iterdir() if p.name.startswith(".backup-restore-")] == []


def test_an_archive_with_more_files_than_its_manifest_says_is_refused(sqlite_site):
    before = backed_up(sqlite_site)
    archive = replace_in_set(sqlite_site, "media", gz(tar_bytes([(f"f{i}.txt", b"") for i in range(50)])))

    result = sqlite_site.invoke("restore", check=False)

    assert_refused(result, archive.name, "holds more files than")
    assert state(sqlite_site) == before


# --- archives that expand without end ---------------------------------------------------------------------------


def test_an_archive_without_manifest_larger_than_the_free_space_is_refused_before_the_disk_fills(
    sqlite_site, tiny_disk
):
    sqlite_site.env["INVENTREE_MEDIA_ROOT"] = str(tiny_disk)
    (tiny_disk / "doc.txt").write_text("live")
    bomb = elsewhere(sqlite_site, "InvenTree-media-2001-01-01-000000.tar.gz", gz_bomb_tar(64 * 1024 * 1024))

    result = sqlite_site.invoke("restore", "--media-file", str(bomb), "--skip-db", check=False)

    assert_refused(result, bomb.name, "expands to more than the file system", "has free")
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["doc.txt"]
    assert (tiny_disk / "doc.txt").read_text() == "live"


def test_an_archive_without_manifest_with_more_files_than_the_disk_holds_is_refused(sqlite_site, tiny_disk):
    sqlite_site.env["INVENTREE_MEDIA_ROOT"] = str(tiny_disk)
    (tiny_disk / "doc.txt").write_text("live")
    many = elsewhere(
        sqlite_site, "InvenTree-media-2001-01-01-000000.tar.gz", gz(tar_bytes([(f"f{i}", b"") for i in range(5000)]))
    )

    result = sqlite_site.invoke("restore", "--media-file", str(many), "--skip-db", check=False)

    assert_refused(result, many.name, "expands to more than the file system", "files")
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["doc.txt"]


def test_an_archive_that_goes_on_after_its_end_is_refused(sqlite_site):
    before = backed_up(sqlite_site)
    archive = replace_in_set(sqlite_site, "media", gz_bomb_tar(10, tail=64 * 1024 * 1024))
    content = json.loads(manifest_path(sqlite_site).read_text())
    content["media"].update(files=1, bytes=10)
    manifest_path(sqlite_site).write_text(json.dumps(content))

    result = sqlite_site.invoke("restore", check=False)

    assert_refused(result, archive.name, "after the end of its content")
    assert state(sqlite_site) == before


def test_a_database_file_that_expands_past_the_free_space_is_refused(tmp_path, tiny_disk):
    from conftest import make_site

    site = make_site(tmp_path / "site", INVENTREE_DB_NAME=str(tiny_disk / "db.sqlite3"))
    site.manage("migrate", "--noinput", "-v0")
    before = state(site)
    head = b"SQLite format 3\x00"
    bomb = elsewhere(site, "InvenTree-db-2001-01-01-000000.sqlite3.gz", gz(head + bytes(64 * 1024 * 1024)))

    result = site.invoke("restore", "--db-file", str(bomb), "--skip-media", check=False)

    assert_refused(result, bomb.name, "expands to more than", str(tiny_disk))
    assert state(site) == before
    assert sorted(p.name for p in tiny_disk.iterdir() if not p.name.endswith("backup-lock")) == ["db.sqlite3"]


# --- SQLite files that reach outside ----------------------------------------------------------------------------


def sqlite_file_with(site, statement: str) -> bytes:
    """A copy of the site's database with ``statement`` run in it."""
    path = site.root / f"crafted-{uuid.uuid4().hex[:6]}.sqlite3"
    conn = sqlite3.connect(site.root / "db.sqlite3")
    conn.execute(f"VACUUM INTO '{path}'")
    conn.close()
    conn = sqlite3.connect(path)
    conn.execute(statement)
    conn.commit()
    conn.close()
    return path.read_bytes()


def test_a_sqlite_file_whose_trigger_loads_an_extension_is_refused(sqlite_site):
    sqlite_site.manage("demo_data")
    before = state(sqlite_site)
    crafted = sqlite_file_with(
        sqlite_site,
        "CREATE TRIGGER evil AFTER INSERT ON demo_part BEGIN SELECT load_extension('/tmp/evil.so'); END",
    )
    dump = elsewhere(sqlite_site, "InvenTree-db-2001-01-01-000000.sqlite3", crafted)

    result = sqlite_site.invoke("restore", "--db-file", str(dump), "--skip-media", check=False)

    assert_refused(result, dump.name, "trigger 'evil'", "load_extension")
    assert state(sqlite_site) == before


def test_a_sqlite_header_on_garbage_is_refused(sqlite_site):
    before = state(sqlite_site)
    dump = elsewhere(sqlite_site, "InvenTree-db-2001-01-01-000000.sqlite3", b"SQLite format 3\x00" + os.urandom(8192))

    result = sqlite_site.invoke("restore", "--db-file", str(dump), "--skip-media", check=False)

    assert_refused(result, dump.name, "SQLite file")
    assert state(sqlite_site) == before


# --- the migration guard reads the staged database --------------------------------------------------------------

FUTURE = "INSERT INTO django_migrations (app, name, applied) VALUES ('demo', '0099_future', '2030-01-01')"


def test_a_dump_without_manifest_from_a_newer_version_is_refused(any_site):
    any_site.sql(FUTURE)
    any_site.invoke("backup", "--skip-media")
    manifest_path(any_site).unlink()  # as stock dbbackup (every InvenTree backup) writes it
    any_site.sql("DELETE FROM django_migrations WHERE name = '0099_future'")
    any_site.manage("demo_data")
    before = any_site.snapshot_db()

    result = any_site.invoke("restore", "--skip-media", check=False)

    assert_refused(result, "InvenTree-db-", "newer version", "demo.0099_future", "--restore-allow-newer-version")
    assert any_site.snapshot_db() == before


def test_a_manifest_that_hides_newer_migrations_is_not_believed(sqlite_site):
    sqlite_site.sql(FUTURE)
    sqlite_site.invoke("backup", "--skip-media")
    manifest = manifest_path(sqlite_site)
    content = json.loads(manifest.read_text())
    content["databases"][0]["migrations"] = [m for m in content["databases"][0]["migrations"] if m[0] != "demo"]
    manifest.write_text(json.dumps(content))
    sqlite_site.sql("DELETE FROM django_migrations WHERE name = '0099_future'")
    before = sqlite_site.snapshot_db()

    result = sqlite_site.invoke("restore", "--skip-media", check=False)

    assert_refused(result, content["databases"][0]["file"], "newer version", "demo.0099_future")
    assert sqlite_site.snapshot_db() == before


def test_a_dump_without_manifest_from_a_newer_version_restores_when_allowed(sqlite_site):
    sqlite_site.sql(FUTURE)
    sqlite_site.invoke("backup", "--skip-media")
    manifest_path(sqlite_site).unlink()
    sqlite_site.sql("DELETE FROM django_migrations WHERE name = '0099_future'")

    result = sqlite_site.invoke("restore", "--skip-media", "--restore-allow-newer-version")

    assert "1 unknown migrations" in result.stderr
    assert ["demo", "0099_future"] in [r[1:3] for r in sqlite_site.snapshot_db()["django_migrations"]]


# --- the MariaDB statement guard, statement by statement ------------------------------------------------------
#
# In process: the guard over dumps mysqldump wrote (they pass whole, byte for byte) and over each hostile
# statement put into one (refused, naming its line).  The end-to-end tests below run real restores.

GUARD_DATABASES = {"site_live", "mysql", "sys", "performance_schema", "information_schema", "staging"}


def guard(data: bytes, target: str = "staging", read: int = -1) -> tuple[bytes, list[str]]:
    from backup_app.engines.mysql_guard import StatementGuard

    g = StatementGuard(io.BytesIO(data), target=target, databases=GUARD_DATABASES)
    if read < 0:
        return g.read(), g.stripped
    out = bytearray()
    while chunk := g.read(read):
        out += chunk
    return bytes(out), g.stripped


STOCK_DUMP = b"""/*M!999999\\- enable the sandbox mode */
-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)
--
-- Host: 127.0.0.1    Database: site_live
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40101 SET NAMES utf8mb4 */;
/*!40103 SET @OLD_TIME_ZONE=@@TIME_ZONE */;
/*!40103 SET TIME_ZONE='+00:00' */;
/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */;
/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;
DROP TABLE IF EXISTS `t`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!40101 SET character_set_client = utf8mb4 */;
CREATE TABLE `t` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `s` varchar(100) DEFAULT NULL COMMENT 'USE other; DROP DATABASE x',
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
/*!40101 SET character_set_client = @saved_cs_client */;
LOCK TABLES `t` WRITE;
/*!40000 ALTER TABLE `t` DISABLE KEYS */;
INSERT INTO `t` VALUES
(1,'it\\'s \\\\ a \\"quote\\" ; -- not a comment; USE site_live; \\\\! id',0x00FF27,-1.50,0.00000000015),
(2,NULL,NULL,2.00,-300000),
(3,_binary 'x\\0y','\xe6\x97\xa5 \xf0\x9f\x94\xa7',0.00,1e5);
/*!40000 ALTER TABLE `t` ENABLE KEYS */;
UNLOCK TABLES;
/*!50003 SET @saved_sql_mode       = @@sql_mode */ ;
/*!50003 SET sql_mode              = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION' */ ;
DELIMITER ;;
/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER tr AFTER INSERT ON t FOR EACH ROW
BEGIN INSERT INTO log (msg) VALUES (CONCAT('added ', NEW.id)); SET @n = DATABASE(); END */;;
DELIMITER ;
/*!50003 SET sql_mode              = @saved_sql_mode */ ;
CREATE ALGORITHM=UNDEFINED DEFINER=`root`@`localhost` SQL SECURITY DEFINER VIEW `v` AS select `t`.`id` AS `id`
from `t` USE INDEX (PRIMARY) where `t`.`id` > 1 and `information_schema`.`x` is null;
/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;
/*!40101 SET CHARACTER_SET_CLIENT=@OLD_CHARACTER_SET_CLIENT */;
-- Dump completed
"""


@pytest.mark.parametrize("read", [-1, 1, 7, 4096])
def test_the_guard_passes_a_stock_dump_byte_for_byte_however_it_is_read(read):
    assert guard(STOCK_DUMP, read=read) == (STOCK_DUMP, [])


DATABASES_PREAMBLE = b"""/*!40101 SET NAMES utf8mb4 */;
--
-- Current Database: `site_live`
--

/*!40000 DROP DATABASE IF EXISTS `site_live`*/;

CREATE DATABASE /*!32312 IF NOT EXISTS*/ `site_live` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;

USE `site_live`;
DROP TABLE IF EXISTS `t`;
"""


@pytest.mark.parametrize(
    "follows", [b"SELECT 1;", b"CREATE DATABASE `other`;", b""], ids=["a-statement", "another-database", "the-end"]
)
def test_the_guard_refuses_a_drop_database_that_no_create_database_of_it_follows(follows):
    from backup_app.errors import RestoreError

    with pytest.raises(RestoreError, match="drops database site_live"):
        guard(b"/*!40000 DROP DATABASE IF EXISTS `site_live`*/;\n" + follows)


def test_the_guard_strips_the_one_database_of_a_databases_dump():
    out, stripped = guard(DATABASES_PREAMBLE)

    assert b"DATABASE" not in out and b"USE" not in out
    assert out.startswith(b"/*!40101 SET NAMES utf8mb4 */;") and out.endswith(b"DROP TABLE IF EXISTS `t`;\n")
    assert len(stripped) == 3


HOSTILE_STATEMENTS = {
    "use-other": (b"USE `site_live`;", "switches to another database"),
    "use-unquoted": (b"use site_live ;", "switches to another database"),
    "drop-database": (b"DROP DATABASE site_live;", "drops or changes a database"),
    "drop-schema-in-comment": (b"/*!40000 DROP SCHEMA IF EXISTS `site_live` */;", "database"),
    "create-database": (b"CREATE DATABASE evil;", "database"),
    "alter-database": (b"ALTER DATABASE `site_live` CHARACTER SET latin1;", "database"),
    "qualified-delete": (b"DELETE FROM `site_live`.`demo_part`;", "names another database (site_live.)"),
    "qualified-unquoted": (b"INSERT INTO site_live.demo_part SELECT * FROM t;", "site_live."),
    "qualified-in-trigger": (
        b"DELIMITER ;;\nCREATE TRIGGER x AFTER INSERT ON t FOR EACH ROW BEGIN DELETE FROM site_live.demo_part; END;;",
        "site_live.",
    ),
    "qualified-in-insert-rows": (
        b"INSERT INTO `t` VALUES (1,(SELECT count(*) FROM `site_live`.`demo_part`));",
        "site_live.",
    ),
    "rename-into-other": (b"RENAME TABLE `t` TO `site_live`.`t`;", "site_live."),
    "mysql-schema": (b"UPDATE mysql.global_priv SET priv = '{}';", "mysql."),
    "shell-bang": (b"\\! touch /tmp/pwned\n", "client command"),
    "shell-system": (b"system touch /tmp/pwned\n;", "client command"),
    "source": (b"source /etc/passwd;", "client command"),
    "backslash-dot": (b"\\. /etc/passwd\n", "client command"),
    "charset-command": (b"\\C gbk\n", "client command"),
    "grant": (b"GRANT ALL ON *.* TO 'x'@'%';", "privileges"),
    "create-user": (b"CREATE USER 'evil'@'%' IDENTIFIED BY 'x';", "accounts"),
    "set-password": (b"SET PASSWORD FOR 'root'@'localhost' = PASSWORD('x');", "accounts"),
    "set-global": (b"SET GLOBAL event_scheduler = ON;", "server-wide"),
    "set-global-at": (b"SET @@global.general_log = 1;", "server-wide"),
    "outfile": (b"SELECT * FROM t INTO OUTFILE '/tmp/x';", "files"),
    "load-data": (b"LOAD DATA INFILE '/etc/passwd' INTO TABLE t;", "files"),
    "load-file": (b"INSERT INTO `t` VALUES (LOAD_FILE('/etc/shadow'));", "files"),
    "data-directory": (b"CREATE TABLE x (a int) DATA DIRECTORY = '/var/lib/evil';", "files"),
    "udf": (b"CREATE FUNCTION sys_exec RETURNS int SONAME 'lib_mysqludf_sys.so';", "library"),
    "plugin": (b"INSTALL SONAME 'ha_connect';", "library"),
    "federated": (b"CREATE TABLE x (a int) ENGINE=FEDERATED CONNECTION='mysql://u@h/db/t';", "another server"),
    "prepare": (b"SET @s = CONCAT('DROP DATA', 'BASE site_live'); PREPARE st FROM @s; EXECUTE st;", "run time"),
    "execute-immediate": (b"EXECUTE IMMEDIATE CONCAT('USE ', 'site_live');", "run time"),
    "binlog": (b"BINLOG 'AAAA';", "server"),
    "shutdown": (b"SHUTDOWN;", "server"),
    "no-backslash-escapes-hides-a-statement": (
        b"SET sql_mode = 'NO_BACKSLASH_ESCAPES';\nINSERT INTO `t` VALUES ('a\\'); USE site_live; SELECT ('');",
        "switches to another database",
    ),
    "ansi-quotes-hides-a-statement": (
        b'SET @@session.sql_mode = \'ANSI\';\nSELECT "a\\"; DROP DATABASE site_live; SELECT "";',
        "database",
    ),
    "oracle-mode": (b"SET sql_mode = 'ORACLE';", "grammar"),
    "after-an-empty-comment-line": (b"--\nUSE site_live;", "switches to another database"),
    "sql-mode-expression": (b"SET sql_mode = CONCAT('NO_BACKSLASH', '_ESCAPES');", "expression"),
    "sql-mode-tainted-copy": (
        b"SET @saved_sql_mode = @@sql_mode; SET @saved_sql_mode = 'NO_BACKSLASH_ESCAPES';\n"
        b"SET sql_mode = @saved_sql_mode;",
        "expression",
    ),
    "gbk-names": (b"SET NAMES gbk;", "gbk"),
    "gbk-client": (b"SET character_set_client = 'sjis';", "sjis"),
    "delimiter-quote": (b"DELIMITER '\nSELECT 1'", "DELIMITER"),
    "delimiter-slash": (b"DELIMITER //\nSELECT 1//", "DELIMITER"),
    "multi-statement-in-delimiter": (b"DELIMITER $$\nSELECT 1; USE site_live$$", "switches to another database"),
    "hidden-behind-delimiter": (b"DELIMITER $$\nSELECT 1$$USE site_live$$", "switches to another database"),
    "nested-exec-comment": (b"/*!40000 /* x */ SELECT 1 */;", "nests"),
    "unterminated": (b"INSERT INTO `t` VALUES ('abc", "ends inside"),
    "second-database": (DATABASES_PREAMBLE + b"CREATE DATABASE `other`;\n", "database"),
    "drop-database-if-exists": (b"/*!40000 DROP DATABASE IF EXISTS `site_live`*/;\nSELECT 1;", "drops"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_STATEMENTS))
def test_the_guard_refuses_each_statement_that_leaves_its_database(case):
    from backup_app.errors import RestoreError

    statement, why = HOSTILE_STATEMENTS[case]
    dump = STOCK_DUMP.replace(b"UNLOCK TABLES;\n", b"UNLOCK TABLES;\n" + statement + b"\n")
    line = STOCK_DUMP[: STOCK_DUMP.index(b"UNLOCK TABLES;\n")].count(b"\n") + 2

    with pytest.raises(RestoreError) as refused:
        guard(dump, read=4096)

    assert why in str(refused.value)
    lines = range(line, line + statement.count(b"\n") + 1)
    assert any(f"line {n} of the dump" in str(refused.value) for n in lines) or case == "second-database"


# --- MariaDB end to end: dumps that name the live database, run commands, stop half way -----------------------


def my_databases(site) -> set[str]:
    """The site's database and those beside it (staging, safety); other tests' databases come and go."""
    from conftest import _my_connect

    conn = _my_connect()
    with conn.cursor() as cur:
        cur.execute("SHOW DATABASES")
        found = {r[0] for r in cur.fetchall() if r[0].startswith(site.env["INVENTREE_DB_NAME"])}
    conn.close()
    return found


def stock_databases_dump(site) -> bytes:
    """``mysqldump --databases SITE``, as a user makes one by hand."""
    name = site.env["INVENTREE_DB_NAME"]
    return subprocess.run(
        [
            "mariadb-dump",
            "-h127.0.0.1",
            "-uroot",
            "--databases",
            "--add-drop-database",
            "--routines",
            "--triggers",
            name,
        ],
        check=True,
        capture_output=True,
    ).stdout


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / f"canary-15-{os.getpid()}"
    yield path
    path.unlink(missing_ok=True)


def test_a_stock_databases_dump_restores_into_the_site_and_not_before_the_swap(mysql_site):
    mysql_site.manage("demo_data")
    dump = stock_databases_dump(mysql_site)
    backed_up_rows = mysql_site.snapshot_db()
    mysql_site.sql("DELETE FROM demo_part")
    file = elsewhere(mysql_site, "InvenTree-db-2001-01-01-000000.sql", dump)

    result = mysql_site.invoke("restore", "--db-file", str(file), "--skip-media")

    assert "Restore complete" in result.stderr
    assert mysql_site.snapshot_db() == backed_up_rows


@pytest.fixture
def other_mysql_database():
    """A name for another site's database (``prod``), made on the server only when the test asks (dropped after)."""
    from conftest import _my_connect, unique_name

    name = unique_name("prod15")
    made = []

    def make() -> None:
        conn = _my_connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        conn.close()
        made.append(name)

    yield name, make
    conn = _my_connect()
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


def site_with_log_trigger(site, database: str) -> None:
    """A log table and a trigger on demo_part writing to it through ``database``.log15."""
    site.sql("CREATE TABLE log15 (part int)")
    site.sql(
        f"CREATE TRIGGER log15 AFTER INSERT ON demo_part FOR EACH ROW INSERT INTO `{database}`.log15 VALUES (NEW.id)"
    )


@pytest.mark.parametrize("exists", [False, True], ids=["prod-absent", "prod-present"])
def test_a_stock_databases_dump_of_a_database_of_another_name_moves_into_the_site(
    mysql_site, other_mysql_database, exists
):
    # The same dump whether or not the server has `prod`: before, it was refused where `prod` existed and, where
    # not, its trigger went on writing to `prod` (or to nothing).
    prod, make = other_mysql_database
    live = mysql_site.env["INVENTREE_DB_NAME"]
    mysql_site.manage("demo_data")
    site_with_log_trigger(mysql_site, live)
    dump = stock_databases_dump(mysql_site).replace(f"`{live}`".encode(), f"`{prod}`".encode())
    assert f"`{prod}`.log15".encode() in dump and f"USE `{prod}`".encode() in dump
    rows = mysql_site.snapshot_db()
    mysql_site.sql("DELETE FROM log15")
    if exists:
        make()
    file = elsewhere(mysql_site, "InvenTree-db-2001-01-01-000000.sql", dump)

    mysql_site.invoke("restore", "--db-file", str(file), "--skip-media")

    assert mysql_site.snapshot_db() == rows
    mysql_site.sql(
        "INSERT INTO demo_part (name, description, quantity, created, attachment) VALUES ('n', '', 1, now(), '')"
    )
    assert len(mysql_site.snapshot_db()["log15"]) == len(rows["log15"]) + 1  # the trigger writes to the site


@pytest.mark.parametrize("exists", [False, True], ids=["other-absent", "other-present"])
def test_a_dump_whose_trigger_writes_another_database_is_refused_whether_or_not_it_is_here(
    mysql_site, other_mysql_database, exists
):
    other, make = other_mysql_database
    mysql_site.manage("demo_data")
    site_with_log_trigger(mysql_site, other)
    dump = stock_databases_dump(mysql_site)
    mysql_site.sql("DROP TRIGGER log15")
    before, databases = mysql_site.snapshot_db(), my_databases(mysql_site)
    if exists:
        make()
    file = elsewhere(mysql_site, "InvenTree-db-2001-01-01-000000.sql", dump)

    result = mysql_site.invoke("restore", "--db-file", str(file), "--skip-media", check=False)

    assert_refused(result, file.name, f"names another database ({other}.)", "nothing was changed")
    assert mysql_site.snapshot_db() == before
    assert my_databases(mysql_site) == databases


def test_a_stock_databases_dump_cut_half_way_leaves_the_live_database_as_it_was(mysql_site):
    mysql_site.manage("demo_data")
    dump = stock_databases_dump(mysql_site)
    cut = dump[: dump.index(b"INSERT INTO `demo_part`") + 200]  # inside the rows of the table
    mysql_site.sql("DELETE FROM demo_part WHERE quantity > 20")
    before, databases = mysql_site.snapshot_db(), my_databases(mysql_site)
    file = elsewhere(mysql_site, "InvenTree-db-2001-01-01-000000.sql", cut)

    result = mysql_site.invoke("restore", "--db-file", str(file), "--skip-media", check=False)

    assert_refused(result, file.name, "nothing was changed")
    assert mysql_site.snapshot_db() == before
    assert my_databases(mysql_site) == databases


def test_a_dump_that_drops_the_site_database_is_refused_and_the_site_keeps_it(mysql_site):
    mysql_site.manage("demo_data")
    name = mysql_site.env["INVENTREE_DB_NAME"]
    before, databases = mysql_site.snapshot_db(), my_databases(mysql_site)
    file = elsewhere(
        mysql_site, "InvenTree-db-2001-01-01-000000.sql", f"-- x\nDROP DATABASE `{name}`;\nbad line;\n".encode()
    )

    result = mysql_site.invoke("restore", "--db-file", str(file), "--skip-media", check=False)

    assert_refused(result, file.name, "line 2 of the dump", "drops database", "nothing was changed")
    assert my_databases(mysql_site) == databases
    assert mysql_site.snapshot_db() == before


def test_a_dump_that_writes_the_live_database_by_name_is_refused(mysql_site):
    mysql_site.manage("demo_data")
    name = mysql_site.env["INVENTREE_DB_NAME"]
    before = mysql_site.snapshot_db()
    dump = f"-- x\nCREATE TABLE t (a int);\nDELETE FROM `{name}`.demo_part;\n".encode()
    file = elsewhere(mysql_site, "InvenTree-db-2001-01-01-000000.sql", dump)

    result = mysql_site.invoke("restore", "--db-file", str(file), "--skip-media", check=False)

    assert_refused(result, file.name, f"names another database ({name}.)")
    assert mysql_site.snapshot_db() == before


@pytest.mark.parametrize("command", ["\\! touch {canary}", "system touch {canary}"], ids=["bang", "system"])
def test_a_dump_that_runs_a_shell_command_is_refused_and_nothing_runs(mysql_site, canary, command):
    before = mysql_site.snapshot_db()
    dump = f"-- x\nCREATE TABLE t (a int);\n{command.format(canary=canary)}\nSELECT 1;\n".encode()
    file = elsewhere(mysql_site, "InvenTree-db-2001-01-01-000000.sql", dump)

    result = mysql_site.invoke("restore", "--db-file", str(file), "--skip-media", check=False)

    assert_refused(result, file.name, "client command")
    assert not canary.exists()
    assert mysql_site.snapshot_db() == before


def test_the_client_itself_refuses_a_shell_command_the_guard_would_let_by(mysql_site, canary):
    """--binary-mode and --sandbox: the client is no shell even for a line the guard did not see as one."""
    from backup_app.engines.mysql import _has_sandbox

    dump = f"SELECT 1;\n\\! touch {canary}\nSELECT 2;\n".encode()
    args = ["--binary-mode", "--one-database"] + (["--sandbox"] if _has_sandbox("mariadb") else [])
    done = subprocess.run(
        ["mariadb", "-h127.0.0.1", "-uroot", *args, mysql_site.env["INVENTREE_DB_NAME"]],
        input=dump,
        capture_output=True,
    )

    assert done.returncode != 0
    assert not canary.exists()


def test_verify_restore_test_refuses_a_hostile_dump_in_a_set(mysql_site, canary):
    mysql_site.invoke("backup", "--skip-media")
    name = mysql_site.env["INVENTREE_DB_NAME"]
    dump = gzip.decompress(file_of(mysql_site, "db").read_bytes())
    dump += f"\nDROP DATABASE `{name}`;\n\\! touch {canary}\n".encode()
    db = replace_in_set(mysql_site, "db", gz(dump))
    before, databases = mysql_site.snapshot_db(), my_databases(mysql_site)

    result = mysql_site.manage("backup_verify", "--restore-test", check=False)

    assert result.returncode != 0
    assert db.name in last_line(result) and "database" in last_line(result)
    assert my_databases(mysql_site) == databases and not canary.exists()
    assert mysql_site.snapshot_db() == before


# --- PostgreSQL: what a dump defines runs with no superuser's rights --------------------------------------------


def pg_roles(prefix: str) -> set[str]:
    from conftest import _pg_connect

    with _pg_connect() as conn:
        return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,))}


def pg_databases(site) -> set[str]:
    from conftest import _pg_connect

    with _pg_connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (site.env["INVENTREE_DB_NAME"],)
        )
        return {r[0] for r in rows}


def pg_custom_dump(body: str, *extra: str) -> bytes:
    """``pg_dump --format=custom`` of a scratch database holding one table whose CHECK constraint calls a plpgsql
    function running ``body`` (so it runs once per row as the rows load), and one row; ``extra`` statements run
    after (owners, default privileges).  The function acts only outside the scratch database: making the file
    runs nothing."""
    from conftest import PG, _pg_connect

    name = f"hostile15_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with _pg_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with _pg_connect(name) as conn:
            conn.execute(
                "CREATE FUNCTION evil(x int) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN "
                f"IF current_database() NOT LIKE 'hostile15%' THEN {body} END IF; RETURN true; END $f$"
            )
            conn.execute("CREATE TABLE victim (id int CHECK (evil(id)))")
            conn.execute("INSERT INTO victim VALUES (1)")
            for statement in extra:
                conn.execute(statement)
        return subprocess.run(
            ["pg_dump", f"--host={PG['host']}", f"--port={PG['port']}", f"--username={PG['user']}", "-Fc", name],
            check=True,
            capture_output=True,
        ).stdout
    finally:
        with _pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stale_restore_roles(settle: float = 120.0) -> set[str]:
    """Throwaway restore roles of this host whose process is gone (left behind) and that stay so; another host's
    (tagged so by test_interrupted's cleanup test) are not this host's to judge.

    The roles are server-wide and the other xdist worker's tests make such roles on purpose for a few seconds
    (test_interrupted's cleanup tests create dead-pid roles, a killed restore's role lives until that test's next
    command), so one seen here is looked at again until it has been gone or ``settle`` seconds pass: a role this
    test's restore left behind stays, and is returned; another test's is dropped by that test within seconds."""
    import time

    from backup_app.tools import scratch_gone

    deadline = time.monotonic() + settle
    while True:
        stale = {r for r in pg_roles("bk_restore_") if scratch_gone(r[len("bk_restore_") :], "_")}
        if not stale or time.monotonic() > deadline:
            return stale
        time.sleep(0.5)


EVIL_ROLE = f"evil15_{os.getpid()}"


@pytest.fixture
def no_evil_role():
    yield EVIL_ROLE
    from conftest import _pg_connect

    with _pg_connect() as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{EVIL_ROLE}"')


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (f"CREATE ROLE {EVIL_ROLE} SUPERUSER LOGIN;", "must be superuser to create superusers"),
        ("COPY (SELECT 1) TO PROGRAM 'touch {canary}';", "COPY to or from an external program"),
        ("ALTER SYSTEM SET log_statement = 'all';", "ALTER SYSTEM"),
        ("PERFORM lo_import('/etc/passwd');", "lo_import"),
        ("PERFORM pg_read_file('/etc/passwd');", "pg_read_file"),
    ],
    ids=["create-role", "copy-program", "alter-system", "lo-import", "read-file"],
)
def test_a_dump_whose_constraint_acts_as_a_superuser_is_refused_and_nothing_runs(
    postgres_site, canary, no_evil_role, body, why
):
    postgres_site.manage("demo_data")
    before, databases = postgres_site.snapshot_db(), pg_databases(postgres_site)
    dump = pg_custom_dump(body.format(canary=canary))
    file = elsewhere(postgres_site, "InvenTree-db-2001-01-01-000000.psql.bin", dump)

    result = postgres_site.invoke("restore", "--db-file", str(file), "--skip-media", check=False)

    assert_refused(result, file.name, "nothing was changed")
    assert why.lower() in last_line(result).lower()
    assert not canary.exists()
    assert pg_roles(EVIL_ROLE) == set()
    assert pg_roles("bk_restore_") == set() or all(
        not r.startswith(f"bk_restore_{os.getpid()}") for r in pg_roles("bk_restore_")
    )
    assert postgres_site.snapshot_db() == before
    assert pg_databases(postgres_site) == databases


def test_verify_restore_test_runs_a_dump_with_no_superuser_rights(postgres_site, canary):
    postgres_site.invoke("backup", "--skip-media", "--no-compress")
    dump = pg_custom_dump(f"COPY (SELECT 1) TO PROGRAM 'touch {canary}';")
    db = replace_in_set(postgres_site, "db", dump)

    result = postgres_site.manage("backup_verify", "--restore-test", check=False)

    assert result.returncode != 0
    assert db.name in last_line(result)
    assert not canary.exists()


def test_a_superuser_site_restores_its_own_backup_owned_by_its_role(postgres_site):
    postgres_site.manage("demo_data")
    postgres_site.invoke("backup", "--skip-media")
    rows = postgres_site.snapshot_db()
    postgres_site.sql("DELETE FROM demo_part")

    postgres_site.invoke("restore", "--skip-media")

    from conftest import _pg_connect

    assert postgres_site.snapshot_db() == rows
    with _pg_connect(postgres_site.env["INVENTREE_DB_NAME"]) as conn:
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public' UNION "
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchall()
    assert owners == [("postgres",)]
    assert stale_restore_roles() == set()


def test_a_superuser_site_role_is_warned_about(postgres_site):
    result = postgres_site.manage("check", "--database", "default")

    assert "backup_app.W009" in result.stderr + result.stdout


@pytest.fixture
def other_role():
    """A role of the server that is not the site's (a reporting role, say); dropped afterwards."""
    from conftest import _pg_connect, unique_name

    name = unique_name("other15")
    with _pg_connect() as conn:
        conn.execute(f"CREATE ROLE {name}")
    yield name
    with _pg_connect() as conn:
        for (database,) in conn.execute("SELECT datname FROM pg_database WHERE datallowconn").fetchall():
            with suppress(Exception), _pg_connect(database) as db:
                db.execute(f"DROP OWNED BY {name}")
        conn.execute(f"DROP ROLE IF EXISTS {name}")


@pytest.mark.parametrize(
    "extra",
    [
        ["ALTER TABLE victim OWNER TO {role}", "ALTER FUNCTION evil(int) OWNER TO {role}"],
        ["ALTER DEFAULT PRIVILEGES FOR ROLE {role} GRANT SELECT ON TABLES TO PUBLIC"],
        ["ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC"],
    ],
    ids=["other-owner", "default-privileges-of-another-role", "default-privileges-of-the-site"],
)
def test_a_dump_giving_objects_to_another_role_still_runs_with_no_superuser_rights(
    postgres_site, canary, other_role, extra
):
    postgres_site.manage("demo_data")
    before, databases = postgres_site.snapshot_db(), pg_databases(postgres_site)
    dump = pg_custom_dump(f"COPY (SELECT 1) TO PROGRAM 'touch {canary}';", *(e.format(role=other_role) for e in extra))
    file = elsewhere(postgres_site, "InvenTree-db-2001-01-01-000000.psql.bin", dump)

    result = postgres_site.invoke("restore", "--db-file", str(file), "--skip-media", check=False)

    assert_refused(result, file.name, "nothing was changed", "COPY to or from an external program")
    assert not canary.exists()
    assert postgres_site.snapshot_db() == before
    assert pg_databases(postgres_site) == databases
    assert stale_restore_roles() == set()


PLAIN_HEAD = "--\n-- PostgreSQL database dump\n--\n\nSET client_encoding = 'UTF8';\n"


@pytest.mark.parametrize(
    ("statement", "why", "options"),
    [
        (f"CREATE ROLE {EVIL_ROLE} LOGIN;", "permission denied to create role", {}),
        ("COPY (SELECT 1) TO PROGRAM 'touch {canary}';", "COPY to or from an external program", {}),
        ("ALTER SYSTEM SET log_statement = 'all';", "ALTER SYSTEM", {}),
        (f"SET ROLE postgres; CREATE ROLE {EVIL_ROLE} SUPERUSER;", "permission denied to set role", {}),
        ("SET SESSION AUTHORIZATION postgres;", "permission denied to set session authorization", {}),
        ('ALTER DATABASE "{live}" RENAME TO "{live}_gone";', "must be owner of database", {}),
        ('DROP DATABASE "{live}";', "must be owner of database", {"SINGLE_TRANSACTION": False}),
        ("ALTER ROLE postgres PASSWORD 'stolen';", "must be superuser to alter superuser roles", {}),
        (f"CREATE DATABASE {EVIL_ROLE};", "permission denied to create database", {"SINGLE_TRANSACTION": False}),
        ("CREATE EXTENSION dblink;", "permission denied to create extension", {}),
        ("DO $$ BEGIN EXECUTE 'CREATE ROLE ' || '" + EVIL_ROLE + "'; END $$;", "permission denied", {}),
        ("\\connect {live}\nDELETE FROM demo_part;", "backslash commands are restricted", {}),
        ("\\copy (SELECT 1) TO PROGRAM 'touch {canary}'", "backslash commands are restricted", {}),
        ("\\o {canary}\nSELECT 1;", "backslash commands are restricted", {}),
        ("\\! touch {canary}", "backslash commands are restricted", {}),
    ],
    ids=[
        "create-role", "copy-program", "alter-system", "set-role", "session-authorization", "rename-live-database",
        "drop-live-database", "alter-role-password", "create-database", "dblink", "dynamic-sql",
        "meta-connect", "meta-copy-program", "meta-output-file", "meta-shell",
    ],
)  # fmt: skip
def test_a_plain_sql_dump_runs_with_no_superuser_rights_and_no_psql_meta_command(
    postgres_site, canary, no_evil_role, statement, why, options
):
    # The connector of plain dumps: before, it sent every plain dump of a superuser site to psql as the superuser.
    options = {"CONNECTOR": "dbbackup.db.postgresql.PgDumpConnector", **options}
    postgres_site.env["INVENTREE_BACKUP_CONNECTOR_OPTIONS"] = json.dumps(options)
    postgres_site.manage("demo_data")
    live = postgres_site.env["INVENTREE_DB_NAME"]
    before, databases = postgres_site.snapshot_db(), pg_databases(postgres_site)
    sql = PLAIN_HEAD + statement.format(canary=canary, live=live) + "\nSELECT 1;\n"
    file = elsewhere(postgres_site, "InvenTree-db-2001-01-01-000000.psql.gz", gz(sql.encode()))

    result = postgres_site.invoke("restore", "--db-file", str(file), "--skip-media", check=False)

    assert_refused(result, file.name, "nothing was changed")
    assert why.lower() in last_line(result).lower()
    assert not canary.exists()
    assert pg_roles(EVIL_ROLE) == set()
    assert postgres_site.snapshot_db() == before
    assert pg_databases(postgres_site) == databases
    assert stale_restore_roles() == set()


IN_PLACE_CASES = [
    (f"CREATE ROLE {EVIL_ROLE} SUPERUSER LOGIN;", "must be superuser to create superusers"),
    ("COPY (SELECT 1) TO PROGRAM 'touch {canary}';", "COPY to or from an external program"),
    ("ALTER SYSTEM SET log_statement = 'all';", "ALTER SYSTEM"),
]


def pg_leftover_schemas(database: str) -> set[str]:
    """Schemas a restore's throwaway role left in ``database``."""
    from conftest import _pg_connect

    with _pg_connect(database) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'bk_restore_')")
        return {r[0] for r in rows}


@pytest.mark.parametrize("dump_format", ["custom", "plain"])
@pytest.mark.parametrize(("body", "why"), IN_PLACE_CASES, ids=["create-role", "copy-program", "alter-system"])
def test_an_in_place_restore_of_a_superuser_site_runs_the_dump_with_no_superuser_rights(
    postgres_site, canary, no_evil_role, dump_format, body, why
):
    # SCHEMAS names part of the database: the restore is in place (before: loaded as the superuser).
    options = {"SCHEMAS": ["public"]}
    if dump_format == "plain":
        options["CONNECTOR"] = "dbbackup.db.postgresql.PgDumpConnector"
    postgres_site.env["INVENTREE_BACKUP_CONNECTOR_OPTIONS"] = json.dumps(options)
    postgres_site.manage("demo_data")
    live = postgres_site.env["INVENTREE_DB_NAME"]
    before, databases = postgres_site.snapshot_db(), pg_databases(postgres_site)
    statement = body.format(canary=canary)
    if dump_format == "custom":
        file = elsewhere(postgres_site, "InvenTree-db-2001-01-01-000000.psql.bin", pg_custom_dump(statement))
    else:
        if statement.startswith("COPY"):
            # A bare COPY that is not pg_dump's own 'COPY … FROM stdin;' is refused by the in-place statement
            # guard (d956580) before psql runs it; run through EXECUTE it reaches the load and the role's rights.
            statement = f"DO $do$BEGIN EXECUTE $q${statement.rstrip(';')}$q$; END$do$;"
        sql = PLAIN_HEAD + "CREATE TABLE public.victim (id int);\n" + statement + "\nSELECT 1;\n"
        file = elsewhere(postgres_site, "InvenTree-db-2001-01-01-000000.psql.gz", gz(sql.encode()))

    result = postgres_site.invoke("restore", "--db-file", str(file), "--skip-media", check=False)

    line = assert_refused(result, file.name)
    assert why.lower() in line.lower()
    assert "left unchanged" in line or "undone" in line, line
    assert not canary.exists()
    assert pg_roles(EVIL_ROLE) == set()
    assert postgres_site.snapshot_db() == before
    assert pg_databases(postgres_site) == databases
    assert stale_restore_roles() == set()
    assert pg_leftover_schemas(live) == set()


ENDS = [
    "COMMIT;",
    "ROLLBACK;",
    "COMMIT; BEGIN;",
    "END;",
    "ABORT;",
    "COMMIT AND CHAIN;",
    "/* c */ commit;",
    "SELECT 1; COMMIT;",
    "PREPARE TRANSACTION 'x';",
]


@pytest.mark.parametrize(
    "site,end",
    [("postgres_site", end) for end in ENDS[:3]] + [("pg_role_site", end) for end in ENDS],
)
def test_a_plain_dump_ending_the_in_place_transaction_itself_changes_nothing(request, site, end):
    # The drops and the load commit together or not at all: a dump's own COMMIT must not commit the drops alone,
    # whether the site's role is a superuser (loaded as a throwaway role) or not (loaded as itself).
    postgres_site = request.getfixturevalue(site)
    postgres_site.env["INVENTREE_BACKUP_CONNECTOR_OPTIONS"] = json.dumps(
        {"SCHEMAS": ["public"], "CONNECTOR": "dbbackup.db.postgresql.PgDumpConnector"}
    )
    postgres_site.manage("demo_data")
    live = postgres_site.env["INVENTREE_DB_NAME"]
    before = postgres_site.snapshot_db()
    # A COMMIT inside a string, a function body, a comment or COPY data is data: only the last line is refused.
    sql = PLAIN_HEAD + (
        "CREATE TABLE public.victim (id int, t text);\n"
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN COMMIT; RETURN 1; END $$;\n"
        "/* COMMIT; */ -- COMMIT;\n"
        "INSERT INTO public.victim VALUES (1, ';\nCOMMIT;');\n"
        "COPY public.victim (id, t) FROM stdin;\n2\tx\n3\tCOMMIT;\n\\.\n"
        f"{end}\nCREATE TABLE public.after (id int);\n"
    )
    file = elsewhere(postgres_site, "InvenTree-db-2001-01-01-000000.psql.gz", gz(sql.encode()))
    line_no = sql.count("\n", 0, sql.index(f"{end}\nCREATE TABLE public.after")) + 1

    result = postgres_site.invoke("restore", "--db-file", str(file), "--skip-media", check=False)

    line = assert_refused(result, file.name)
    assert f"line {line_no} of the dump holds " in line and "nothing was changed" in line, line
    assert postgres_site.snapshot_db() == before
    assert stale_restore_roles() == set()
    assert pg_leftover_schemas(live) == set()


def pg_privileges(database: str) -> list:
    """Owners and ACLs of every schema, relation, routine and type of the site, and its default privileges."""
    from conftest import _pg_connect

    with _pg_connect(database) as conn:
        return conn.execute(
            """
            SELECT 'schema', nspname, pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace
             WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
            UNION ALL
            SELECT 'rel', n.nspname || '.' || c.relname, pg_get_userbyid(c.relowner), c.relacl::text
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'rep')
            UNION ALL
            SELECT 'proc', n.nspname || '.' || p.proname, pg_get_userbyid(p.proowner), p.proacl::text
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname IN ('public', 'rep')
            UNION ALL
            SELECT 'type', n.nspname || '.' || t.typname, pg_get_userbyid(t.typowner), t.typacl::text
              FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname IN ('public', 'rep')
            UNION ALL
            SELECT 'default', pg_get_userbyid(d.defaclrole) || ' ' || coalesce(n.nspname, '-') || ' '
                   || d.defaclobjtype::text, '', d.defaclacl::text
              FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
            ORDER BY 1, 2
            """
        ).fetchall()


@pytest.mark.parametrize("strategy", ["swap", "in-place"])
@pytest.mark.parametrize("connector", [None, "dbbackup.db.postgresql.PgDumpConnector"], ids=["custom", "plain"])
def test_a_superuser_site_gets_back_what_it_gave_other_roles_from_a_load_with_no_superuser_rights(
    postgres_site, other_role, connector, strategy
):
    options = {"CONNECTOR": connector} if connector else {}
    if strategy == "in-place":  # SCHEMAS: loaded in place, over the live database (before: as the superuser)
        options["SCHEMAS"] = ["public", "rep"]
    postgres_site.env["INVENTREE_BACKUP_CONNECTOR_OPTIONS"] = json.dumps(options)
    live, r = postgres_site.env["INVENTREE_DB_NAME"], other_role
    postgres_site.manage("demo_data")
    for statement in [
        # Rows that load only where no superuser loads them: the restore must run confined.
        "CREATE FUNCTION confined(x int) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN "
        f"IF current_database() <> '{live}' AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
        "THEN RAISE EXCEPTION 'loaded by a superuser'; END IF; RETURN true; END $f$",
        "CREATE TABLE guard (id int CHECK (confined(id)))",
        "INSERT INTO guard VALUES (1)",
        f"CREATE SCHEMA rep AUTHORIZATION {r}",
        "CREATE TABLE rep.daily (id serial PRIMARY KEY, line text)",
        "INSERT INTO rep.daily (line) VALUES ('ALTER TABLE rep.daily OWNER TO postgres;')",
        f"ALTER TABLE rep.daily OWNER TO {r}",
        "CREATE VIEW rep.parts AS SELECT id, name FROM demo_part",
        f"ALTER VIEW rep.parts OWNER TO {r}",
        f"GRANT SELECT ON demo_part TO {r}",
        "GRANT SELECT ON rep.daily TO PUBLIC",
        "CREATE FUNCTION rep.total(x integer, y text) RETURNS int LANGUAGE sql AS 'SELECT 1'",
        f"ALTER FUNCTION rep.total(integer, text) OWNER TO {r}",
        "CREATE TYPE rep.\"Mood Kind\" AS ENUM ('ok')",
        f'ALTER TYPE rep."Mood Kind" OWNER TO {r}',
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {r} IN SCHEMA rep GRANT SELECT ON TABLES TO postgres",
        "ALTER DEFAULT PRIVILEGES FOR ROLE postgres REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE ON SEQUENCES TO {r} WITH GRANT OPTION",
    ]:
        postgres_site.sql(statement)
    postgres_site.invoke("backup", "--skip-media")
    rows, privileges = postgres_site.snapshot_db(), pg_privileges(live)
    postgres_site.sql("DROP SCHEMA rep CASCADE")
    if strategy == "swap":  # (a dump of named schemas holds no database-wide default privileges)
        postgres_site.sql("ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT EXECUTE ON FUNCTIONS TO PUBLIC")
    else:
        postgres_site.sql(f"REVOKE SELECT ON demo_part FROM {r}; CREATE TABLE made_after (id int)")

    result = postgres_site.invoke("restore", "--skip-media")

    assert ("restoring them in place" in result.stderr) == (strategy == "in-place")
    assert pg_privileges(live) == privileges
    assert postgres_site.snapshot_db() == rows
    assert stale_restore_roles() == set()


def test_a_dump_giving_objects_to_a_role_this_server_lacks_is_refused_and_names_it(postgres_site, other_role):
    dump = pg_custom_dump("NULL;", "CREATE TABLE mine (id int)", f"ALTER TABLE mine OWNER TO {other_role}")
    from conftest import _pg_connect

    with _pg_connect() as conn:
        conn.execute(f"DROP ROLE {other_role}")
    before = postgres_site.snapshot_db()
    file = elsewhere(postgres_site, "InvenTree-db-2001-01-01-000000.psql.bin", dump)

    result = postgres_site.invoke("restore", "--db-file", str(file), "--skip-media", check=False)

    assert_refused(result, file.name, other_role, "NO_OWNER", "nothing was changed")
    assert postgres_site.snapshot_db() == before
    assert stale_restore_roles() == set()


@pytest.mark.parametrize("read", [1, 7, 1 << 20])
def test_a_plain_dump_loses_only_its_owner_and_default_privilege_statements_however_it_is_read(read):
    from backup_app.engines.postgresql_owners import Held, HeldStatements

    kept = (
        "SET standard_conforming_strings = on;\n"
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE plpgsql AS $$\n"
        "begin\nALTER TABLE public.t OWNER TO bob;\nreturn 1; end $$;\n"
        "COMMENT ON TABLE public.t IS 'x;\nALTER TABLE public.t OWNER TO bob;\n';\n"
        "COPY public.t (id, v) FROM stdin;\n1\tALTER TABLE public.t OWNER TO bob;\n2\t\\\\.\n\\.\n"
        "/* ALTER TABLE\nALTER TABLE public.t OWNER TO bob;\n*/ SELECT 1;\n"
    )
    held_out = (
        "ALTER TABLE public.t OWNER TO bob;\n"
        'ALTER FUNCTION public."F g"(x integer) OWNER TO "Bob B";\n'
        "ALTER DEFAULT PRIVILEGES FOR ROLE bob IN SCHEMA public GRANT SELECT ON TABLES  TO PUBLIC;\n"
    )
    source = io.BytesIO((kept + held_out).encode())
    held = Held()
    stream = HeldStatements(source, held)
    out = b"".join(iter(lambda: stream.read(read), b""))

    assert out.decode() == kept
    assert held.owners == [("rel", "public.t", "bob"), ("proc", 'public."F g"(x integer)', "Bob B")]
    assert [(a.role, a.schema, a.privileges, a.kind, a.grantees) for a in held.default_acls] == [
        ("bob", "public", ("SELECT",), "TABLES", ("",))
    ]


@pytest.fixture
def logged_superuser_site(tmp_path, postgres_database):
    """A site reaching PostgreSQL as a superuser role of its own whose sessions log every DDL statement."""
    from conftest import _pg_connect, server_site, unique_name

    role = unique_name("su15")
    with _pg_connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
        conn.execute(f"ALTER ROLE {role} SET log_statement = 'ddl'")
    try:
        yield server_site(tmp_path / "site", "postgresql", postgres_database, role)
    finally:
        with _pg_connect() as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (postgres_database,))
            for (database,) in rows.fetchall():
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_the_throwaway_roles_password_reaches_the_server_only_as_a_scram_verifier(logged_superuser_site):
    from conftest import service_missing

    logs = sorted(Path("/var/log/postgresql").glob("postgresql-*-main.log"), key=lambda p: p.stat().st_mtime)
    if not logs or not os.access(logs[-1], os.R_OK):
        service_missing("the PostgreSQL server log", FileNotFoundError("/var/log/postgresql/postgresql-*-main.log"))
    site = logged_superuser_site
    site.invoke("backup", "--skip-media")
    start = logs[-1].stat().st_size

    site.invoke("restore", "--skip-media")

    with logs[-1].open("rb") as fh:
        fh.seek(start)
        text = fh.read().decode(errors="replace")
    created = [line for line in text.splitlines() if "CREATE ROLE" in line and "bk_restore_" in line]
    assert created
    assert all("PASSWORD 'SCRAM-SHA-256$4096:" in line for line in created), created


def pg_database_properties(name: str) -> tuple:
    from conftest import _pg_connect

    with _pg_connect() as conn:
        return conn.execute(
            "SELECT d.datacl::text, shobj_description(d.oid, 'pg_database'),"
            " (SELECT array_agg(s.setconfig::text ORDER BY s.setrole) FROM pg_db_role_setting s"
            "  WHERE s.setdatabase = d.oid) FROM pg_database d WHERE d.datname = %s",
            (name,),
        ).fetchone()


HOSTILE_DATABASE_SETTINGS = """
DO $$ BEGIN
EXECUTE format('ALTER DATABASE %I SET search_path = trojan, public', current_database());
EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on', current_database());
EXECUTE format('ALTER ROLE %I IN DATABASE %I SET work_mem = ''1GB''', current_user, current_database());
EXECUTE format('GRANT CREATE ON DATABASE %I TO PUBLIC', current_database());
EXECUTE format('COMMENT ON DATABASE %I IS ''owned''', current_database());
END $$;
"""


@pytest.mark.parametrize("superuser", [True, False], ids=["superuser-site", "site-role"])
def test_what_a_dump_gives_the_staging_database_itself_does_not_reach_the_site(request, superuser):
    site = request.getfixturevalue("postgres_site" if superuser else "pg_role_site")
    site.env["INVENTREE_BACKUP_CONNECTOR_OPTIONS"] = json.dumps({"CONNECTOR": "dbbackup.db.postgresql.PgDumpConnector"})
    live = site.env["INVENTREE_DB_NAME"]
    site.invoke("backup", "--skip-media")
    before = pg_database_properties(live)
    db = file_of(site, "db")
    replace_in_set(site, "db", gz(gzip.decompress(db.read_bytes()) + HOSTILE_DATABASE_SETTINGS.encode()))

    site.invoke("restore", "--skip-media")

    acl, comment, settings = pg_database_properties(live)
    assert (comment, settings) == before[1:]
    # The ACL as it was, or (when the dump touched it) PostgreSQL's default spelled out.
    owner = acl[1:-1].rsplit("/", 1)[-1] if acl else ""
    default = {f"=Tc/{owner}", f"{owner}=CTc/{owner}"}
    assert acl == before[0] or (before[0] is None and set(acl[1:-1].split(",")) == default)
    site.sql("INSERT INTO demo_part (name, description, quantity, created, attachment) VALUES ('w', '', 1, now(), '')")
