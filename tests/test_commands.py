"""The invoke tasks do what their options say."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import pytest
from conftest import ROOT


def names(site, folder: Path | None = None) -> list[str]:
    return sorted(p.name for p in (folder or site.backups).iterdir())


def test_listbackups_json_follows_the_contract(sqlite_site):
    (sqlite_site.media / "a.txt").write_text("a")
    sqlite_site.invoke("backup")

    [entry] = json.loads(sqlite_site.invoke("listbackups", "--json").stdout)

    assert entry["complete"] is True
    assert datetime.fromisoformat(entry["created"]).utcoffset() is not None
    kinds = sorted(f["kind"] for f in entry["files"])
    assert kinds == ["db", "manifest", "manifest", "media"]  # the manifest, and the dump's .metadata sidecar
    [db] = [f["name"] for f in entry["files"] if f["kind"] == "db"]
    manifest = next(f for f in entry["files"] if f["kind"] == "manifest")
    assert "sidecar_of" not in manifest and manifest["name"].endswith(".manifest.metadata")
    assert [f["name"] for f in entry["files"] if "sidecar_of" in f] == [db + ".metadata"]
    assert [f["sidecar_of"] for f in entry["files"] if "sidecar_of" in f] == [db]
    assert sorted(f["name"] for f in entry["files"]) == names(sqlite_site)  # every file it wrote, listed
    for f in entry["files"]:
        assert (sqlite_site.backups / f["name"]).stat().st_size == f["size"]
        assert {"compressed", "encrypted", "sha256"} <= set(f)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ((), "2 data files, 4 files in all (with the manifest and 1 .metadata sidecar)"),
        (("--skip-media",), "1 data file, 3 files in all (with the manifest and 1 .metadata sidecar)"),
        (("--skip-db",), "1 data file, 2 files in all (with the manifest)"),
        (("--skip-db", "incremental"), "1 data file, 2 files in all (with the manifest), and 1 new media pack"),
    ],
)
def test_the_last_line_of_a_backup_counts_the_files_of_the_set_as_they_are(sqlite_site, flags, said):
    (sqlite_site.media / "a.txt").write_text("a")
    mode = "incremental" if "incremental" in flags else "archive"

    result = sqlite_site.invoke(
        "backup", *[f for f in flags if f != "incremental"], extra_env={"INVENTREE_BACKUP_MEDIA_MODE": mode}
    )

    [entry] = sqlite_site.sets()
    assert f"Backup set {entry['name']} complete: {said}" in result.output
    set_files = [n for n in names(sqlite_site) if n != "media-packs"]
    assert len(entry["files"]) == len(set_files) == int(said.split(", ")[1].split()[0])


def test_listbackups_lists_newest_first(sqlite_site):
    sqlite_site.invoke("backup")
    sqlite_site.invoke("backup", "--no-compress")

    created = [s["created"] for s in sqlite_site.sets()]

    assert len(created) == 2
    assert created == sorted(created, reverse=True)


def test_path_is_a_folder_holding_both_files(sqlite_site, tmp_path):
    target = tmp_path / "elsewhere"
    sqlite_site.invoke("backup", "--path", str(target))

    files = names(sqlite_site, target)

    assert any(n.startswith("InvenTree-db-") for n in files)
    assert any(n.startswith("InvenTree-media-") for n in files)
    assert not sqlite_site.backups.exists() or not any(sqlite_site.backups.iterdir())


def test_restore_reads_from_path(sqlite_site, tmp_path):
    target = tmp_path / "elsewhere"
    (sqlite_site.media / "doc.txt").write_text("original")
    sqlite_site.invoke("backup", "--path", str(target))
    (sqlite_site.media / "doc.txt").write_text("changed")

    sqlite_site.invoke("restore", "--path", str(target))

    assert (sqlite_site.media / "doc.txt").read_text() == "original"


def test_skip_db_writes_only_the_media_archive(sqlite_site):
    sqlite_site.invoke("backup", "--skip-db")

    [entry] = sqlite_site.sets()

    assert sorted(f["kind"] for f in entry["files"]) == ["manifest", "media"]


def test_skip_media_writes_only_the_database(sqlite_site):
    sqlite_site.invoke("backup", "--skip-media")

    [entry] = sqlite_site.sets()

    assert sorted(f["kind"] for f in entry["files"]) == ["db", "manifest", "manifest"]  # with the dump's sidecar
    assert sorted(f["name"] for f in entry["files"]) == names(sqlite_site)


def test_backup_create_accepts_stocks_noinput_flag(sqlite_site):
    sqlite_site.manage("backup_create", "--noinput")

    [entry] = sqlite_site.sets()

    assert entry["complete"]


def test_no_compress_writes_plain_files(sqlite_site):
    sqlite_site.invoke("backup", "--no-compress")

    data = [f for f in sqlite_site.sets()[0]["files"] if f["kind"] != "manifest"]

    assert all(not f["compressed"] for f in data)
    assert sorted(Path(f["name"]).suffix for f in data) == [".sqlite3", ".tar"]
    db_file = next(f["name"] for f in data if f["kind"] == "db")
    assert (sqlite_site.backups / db_file).read_bytes().startswith(b"SQLite format 3\x00")


def test_zstd_compression_round_trips(sqlite_site):
    (sqlite_site.media / "z.txt").write_text("zstd " * 1000)
    sqlite_site.invoke("backup", extra_env={"INVENTREE_BACKUP_COMPRESSION": "zstd"})
    (sqlite_site.media / "z.txt").write_text("changed")

    sqlite_site.invoke("restore")

    assert all(n.endswith((".zst", ".metadata")) for n in names(sqlite_site))
    assert (sqlite_site.media / "z.txt").read_text() == "zstd " * 1000


def test_clean_keeps_the_newest_sets_with_inventree_templates(sqlite_site):
    env = {"INVENTREE_BACKUP_KEEP": "2"}
    for _ in range(4):
        sqlite_site.invoke("backup", extra_env=env)
    before = [s["name"] for s in sqlite_site.sets()]

    out = sqlite_site.invoke("backup", "--clean", extra_env=env)

    after = [s["name"] for s in sqlite_site.sets()]
    assert len(after) == 2 and after[0] not in before and after[1] == before[0]
    assert "Removed" in out.stderr
    assert all(s["complete"] for s in sqlite_site.sets())


def test_clean_never_deletes_legacy_files(sqlite_site):
    sqlite_site.manage("dbbackup", "--noinput", "--compress")
    legacy = names(sqlite_site)
    env = {"INVENTREE_BACKUP_KEEP": "1"}
    sqlite_site.invoke("backup", extra_env=env)
    sqlite_site.invoke("backup", "--clean", extra_env=env)

    assert set(legacy) <= set(names(sqlite_site))


def test_restore_takes_the_newest_set_whatever_its_flags(sqlite_site):
    doc = sqlite_site.media / "doc.txt"
    doc.write_text("first")
    sqlite_site.invoke("backup")
    doc.write_text("second")
    sqlite_site.invoke("backup", "--no-compress", extra_env={"INVENTREE_BACKUP_COMPRESSION": "zstd"})
    doc.write_text("third")

    sqlite_site.invoke("restore")

    assert doc.read_text() == "second"


def test_restore_named_db_file_restores_its_own_set(sqlite_site):
    doc = sqlite_site.media / "doc.txt"
    doc.write_text("first")
    sqlite_site.invoke("backup")
    first = sqlite_site.sets()[0]
    doc.write_text("second")
    sqlite_site.invoke("backup")
    db_file = next(f["name"] for f in first["files"] if f["kind"] == "db")

    sqlite_site.invoke("restore", "--db-file", db_file)

    assert doc.read_text() == "first"


def test_restore_skips_an_incomplete_newer_set(sqlite_site):
    doc = sqlite_site.media / "doc.txt"
    doc.write_text("good")
    sqlite_site.invoke("backup")
    good = sqlite_site.sets()[0]
    doc.write_text("newer")
    sqlite_site.invoke("backup")
    newest = sqlite_site.sets()[0]
    (sqlite_site.backups / next(f["name"] for f in newest["files"] if f["kind"] == "manifest")).unlink()

    sqlite_site.invoke("restore")

    assert doc.read_text() == "good"
    assert [s["complete"] for s in sqlite_site.sets()] == [False, True]
    assert sqlite_site.sets()[1]["name"] == good["name"]


def test_restore_without_terminal_never_waits_for_input(sqlite_site):
    sqlite_site.invoke("backup")

    result = sqlite_site.invoke("restore", timeout=60)

    assert result.returncode == 0


def test_restore_with_no_backup_fails_with_one_line(sqlite_site):
    result = sqlite_site.invoke("restore", check=False)

    assert result.returncode != 0
    assert "run `invoke backup` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_damaged_backup_is_refused_and_nothing_changes(sqlite_site):
    doc = sqlite_site.media / "doc.txt"
    doc.write_text("backed up")
    sqlite_site.invoke("backup")
    doc.write_text("current")
    media_file = next(f["name"] for f in sqlite_site.sets()[0]["files"] if f["kind"] == "media")
    path = sqlite_site.backups / media_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    result = sqlite_site.invoke("restore", check=False)

    assert result.returncode != 0
    assert media_file in result.stderr
    assert doc.read_text() == "current"
    assert "Traceback" not in result.stderr


def test_update_skip_backup_writes_no_backup(sqlite_site):
    sqlite_site.invoke("update", "--skip-backup")

    assert not sqlite_site.backups.exists() or not any(sqlite_site.backups.iterdir())
    assert (sqlite_site.root / "static" / "admin").is_dir()


def test_update_backs_up_then_goes_on(sqlite_site):
    sqlite_site.invoke("update")

    [entry] = sqlite_site.sets()
    assert entry["complete"]
    assert (sqlite_site.root / "static" / "admin").is_dir()  # collectstatic ran, after migrate


def test_update_stops_before_migrating_when_the_backup_fails(sqlite_site, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")

    result = sqlite_site.invoke("update", check=False, extra_env={"INVENTREE_BACKUP_DIR": str(blocker / "b")})

    assert result.returncode != 0
    assert "--skip-backup" in result.stderr
    assert not (sqlite_site.root / "static").exists()


def test_update_prunes_old_sets(sqlite_site):
    env = {"INVENTREE_BACKUP_KEEP": "1"}
    sqlite_site.invoke("backup", extra_env=env)
    sqlite_site.invoke("update", extra_env=env)

    assert len(sqlite_site.sets()) == 1


MULTI_SETTINGS = """
import os
from config.settings import *  # noqa: F403
from backup_app.conf import apply_backup_settings

DATABASES["second"] = {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["SECOND_DB"]}
apply_backup_settings(globals(), config=CONFIG, default_dir=DATA_DIR / "backup")  # noqa: F405
"""


@pytest.fixture
def multi_site(sqlite_site, tmp_path):
    (tmp_path / "multi_settings.py").write_text(MULTI_SETTINGS)
    sqlite_site.env.update(
        {
            "DJANGO_SETTINGS_MODULE": "multi_settings",
            "PYTHONPATH": f"{tmp_path}:{ROOT}",
            "SECOND_DB": str(tmp_path / "second.sqlite3"),
            "INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE": "InvenTree-db-{databasename}-{datetime}.{extension}",
        }
    )
    sqlite_site.manage("migrate", "--database", "second", "--noinput", "-v0")
    return sqlite_site


def test_every_database_is_backed_up_and_restored(multi_site):
    seed = [sys.executable, str(ROOT / "tests" / "seed.py")]
    multi_site.run(*seed, "default", "seed")
    multi_site.run(*seed, "second", "seed")
    before = (multi_site.snapshot_db("default"), multi_site.snapshot_db("second"))
    multi_site.invoke("backup")
    multi_site.run(*seed, "second", "mutate")

    multi_site.invoke("restore")

    assert (multi_site.snapshot_db("default"), multi_site.snapshot_db("second")) == before
    dbs = sorted(f["database"] for f in multi_site.sets()[0]["files"] if f["kind"] == "db")
    assert dbs == ["default", "second"]
