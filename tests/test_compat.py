"""Compatibility with stock django-dbbackup 5.4, both directions (contract 9).

Direction 1: files written by stock ``dbbackup`` / ``mediabackup`` with
InvenTree's flags (``--noinput --compress``) are listed by ``invoke
listbackups`` as legacy sets and restored by ``invoke restore``.

Direction 2: gzip backup sets written by ``invoke backup`` are restored by
stock ``dbrestore -z`` and ``mediarestore -z -r``.

Every test runs the real commands in a throwaway demo site; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from conftest import make_site

#: Sleep that puts the next stock backup in a later second (its names carry the time to %S).
SECOND = 1.1

#: A row for every engine: ``blob`` is a reserved word in MariaDB, so it (and price) stay NULL.
INSERT_PART = (
    "INSERT INTO demo_part (name, description, quantity, created, attachment) "
    "VALUES ('{name}', 'added after the backup', 7, '2024-01-02 03:04:05', '')"
)


# --------------------------------------------------------------------------- helpers


def backup_files(site) -> set[str]:
    return {p.name for p in site.backups.iterdir()} if site.backups.exists() else set()


def stock_dbbackup(site) -> str:
    """Run stock ``dbbackup --noinput --compress``; the name of the dump it wrote."""
    before = backup_files(site)
    site.manage("dbbackup", "--noinput", "--compress")
    new = sorted(n for n in backup_files(site) - before if not n.endswith(".metadata"))
    assert len(new) == 1, f"stock dbbackup wrote {new}"
    return new[0]


def stock_mediabackup(site) -> str:
    """Run stock ``mediabackup --noinput --compress``; the name of the archive it wrote."""
    before = backup_files(site)
    site.manage("mediabackup", "--noinput", "--compress")
    new = sorted(backup_files(site) - before)
    assert len(new) == 1, f"stock mediabackup wrote {new}"
    return new[0]


def our_set_files(site) -> tuple[str, str, str]:
    """``invoke backup`` (gzip by default); the names of its db dump, media archive and manifest."""
    site.invoke("backup")
    newest = next(s for s in site.sets() if s["complete"])
    by_kind = {f["kind"]: f["name"] for f in newest["files"] if "sidecar_of" not in f}  # not the dump's sidecar
    return by_kind["db"], by_kind["media"], by_kind["manifest"]


def add_media(media: Path) -> None:
    """Media beyond the demo datasheets: nested folders, a unicode name, binary and empty files."""
    (media / "parts" / "nested").mkdir(parents=True, exist_ok=True)
    (media / "parts" / "nested" / "Schaltplan ✓ 図面.txt").write_text("Größe\n" * 300)
    (media / "parts" / "photo.bin").write_bytes(os.urandom(200_000))
    (media / "parts" / "empty.bin").write_bytes(b"")


def populate(site) -> None:
    site.manage("demo_data")
    add_media(site.media)


def change_rows(site, tag: str) -> None:
    """Update every part, delete one, add one."""
    site.sql(f"UPDATE demo_part SET quantity = quantity + 1000, description = 'changed {tag}'")
    site.sql("DELETE FROM demo_part WHERE quantity = 1010")
    site.sql(INSERT_PART.format(name=f"added {tag}"))


def change_media(media: Path, tag: str, delete: tuple[str, ...] = ("datasheet-2.txt", "nested/Schaltplan ✓ 図面.txt")):
    """Change two files, delete others (no new file: restores do not delete files)."""
    (media / "parts" / "datasheet-1.txt").write_text(f"changed {tag}\n")
    (media / "parts" / "photo.bin").write_bytes(os.urandom(20_000))
    for name in delete:
        (media / "parts" / name).unlink()


def state(site) -> tuple[dict, dict]:
    return site.snapshot_db(), site.snapshot_media()


# --------------------------------------------------------------------------- direction 1: stock -> ours


def test_stock_backups_are_listed_as_legacy_sets(any_site):
    populate(any_site)
    db_name = stock_dbbackup(any_site)
    media_name = stock_mediabackup(any_site)

    sets = any_site.sets()

    assert sets, "invoke listbackups lists nothing after stock backups"
    assert {s["status"] for s in sets} == {"legacy"}
    assert not any(s["complete"] for s in sets)
    listed = {f["name"]: f for s in sets for f in s["files"]}
    assert set(listed) == {db_name, media_name, db_name + ".metadata"}  # stock's sidecar of the dump too
    assert listed[db_name]["kind"] == "db"
    assert listed[media_name]["kind"] == "media"
    assert (listed[db_name + ".metadata"]["kind"], listed[db_name + ".metadata"]["sidecar_of"]) == ("manifest", db_name)
    for name, entry in listed.items():
        assert entry["compressed"] is (name != db_name + ".metadata")
        assert entry["encrypted"] is False
        assert entry["size"] == (any_site.backups / name).stat().st_size


def test_invoke_listbackups_json_lists_stock_backups(sqlite_site):
    populate(sqlite_site)
    db_name = stock_dbbackup(sqlite_site)
    media_name = stock_mediabackup(sqlite_site)

    sets = json.loads(sqlite_site.invoke("listbackups", "--json").stdout)

    kinds = {f["name"]: f["kind"] for s in sets for f in s["files"]}
    assert kinds == {db_name: "db", media_name: "media", db_name + ".metadata": "manifest"}
    assert all(s["status"] == "legacy" and s["complete"] is False for s in sets)


def test_stock_metadata_sidecar_is_folded_into_the_legacy_set(sqlite_site):
    populate(sqlite_site)
    db_name = stock_dbbackup(sqlite_site)
    sidecar = f"{db_name}.metadata"
    assert (sqlite_site.backups / sidecar).is_file(), "stock dbbackup wrote no .metadata sidecar"

    sets = sqlite_site.sets()

    assert len(sets) == 1, f"expected one legacy set, got {[s['name'] for s in sets]}"
    [only] = sets
    assert only["status"] == "legacy"
    assert [f["name"] for f in only["files"]] == [db_name, sidecar]
    assert only["files"][1]["sidecar_of"] == db_name
    assert only["size"] == sum((sqlite_site.backups / n).stat().st_size for n in (db_name, sidecar))


def test_restore_brings_back_the_newest_stock_backup(any_site):
    populate(any_site)
    stock_dbbackup(any_site)
    stock_mediabackup(any_site)
    change_rows(any_site, "before the newest backup")
    change_media(any_site.media, "before the newest backup")
    time.sleep(SECOND)
    stock_dbbackup(any_site)
    stock_mediabackup(any_site)
    rows_at_backup, media_at_backup = state(any_site)
    change_rows(any_site, "after the backup")
    change_media(any_site.media, "after the backup", delete=("datasheet-3.txt", "empty.bin"))
    assert any_site.snapshot_db() != rows_at_backup
    assert any_site.snapshot_media() != media_at_backup

    any_site.invoke("restore")

    assert any_site.snapshot_db() == rows_at_backup
    assert any_site.snapshot_media() == media_at_backup


def test_restore_reads_stock_backups_written_in_different_seconds(any_site):
    """InvenTree runs dbbackup and mediabackup one after the other: their stamps differ."""
    populate(any_site)
    stock_dbbackup(any_site)
    time.sleep(SECOND)
    stock_mediabackup(any_site)
    rows_at_backup, media_at_backup = state(any_site)
    change_rows(any_site, "after the backup")
    change_media(any_site.media, "after the backup")

    any_site.invoke("restore")

    assert any_site.snapshot_db() == rows_at_backup
    assert any_site.snapshot_media() == media_at_backup


def test_restore_db_file_names_an_older_stock_dump(any_site):
    populate(any_site)
    older = stock_dbbackup(any_site)
    rows_at_older = any_site.snapshot_db()
    change_rows(any_site, "between the backups")
    time.sleep(SECOND)
    newer = stock_dbbackup(any_site)
    assert newer != older
    change_rows(any_site, "after the backups")

    any_site.invoke("restore", "--db-file", older, "--skip-media")

    assert any_site.snapshot_db() == rows_at_older


def test_restore_db_file_of_stock_dump_also_restores_stock_media(sqlite_site):
    """InvenTree's ``invoke restore --db-file F``: F, and the newest media archive."""
    populate(sqlite_site)
    db_name = stock_dbbackup(sqlite_site)
    time.sleep(SECOND)
    stock_mediabackup(sqlite_site)
    rows_at_backup, media_at_backup = state(sqlite_site)
    change_rows(sqlite_site, "after the backup")
    change_media(sqlite_site.media, "after the backup")

    sqlite_site.invoke("restore", "--db-file", db_name)

    assert sqlite_site.snapshot_db() == rows_at_backup
    assert sqlite_site.snapshot_media() == media_at_backup


def test_restore_db_file_given_as_a_path_to_a_stock_dump(sqlite_site, tmp_path):
    populate(sqlite_site)
    db_name = stock_dbbackup(sqlite_site)
    rows_at_backup = sqlite_site.snapshot_db()
    elsewhere = tmp_path / "copied"
    elsewhere.mkdir()
    (elsewhere / db_name).write_bytes((sqlite_site.backups / db_name).read_bytes())
    change_rows(sqlite_site, "after the backup")

    sqlite_site.invoke("restore", "--db-file", str(elsewhere / db_name), "--skip-media")

    assert sqlite_site.snapshot_db() == rows_at_backup


def test_restore_media_file_names_an_older_stock_archive(sqlite_site):
    populate(sqlite_site)
    older = stock_mediabackup(sqlite_site)
    media_at_older = sqlite_site.snapshot_media()
    change_media(sqlite_site.media, "between the backups")
    time.sleep(SECOND)
    newer = stock_mediabackup(sqlite_site)
    assert newer != older
    change_media(sqlite_site.media, "after the backups", delete=("datasheet-3.txt",))

    sqlite_site.invoke("restore", "--media-file", older, "--skip-db")

    assert sqlite_site.snapshot_media() == media_at_older


def test_stock_backups_with_dbbackup_default_templates_are_listed_and_restored(tmp_path):
    """Sites that kept django-dbbackup's own templates ({databasename}, {servername})."""
    site = make_site(
        tmp_path / "site",
        INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE="{databasename}-{servername}-{datetime}.{extension}",
        INVENTREE_BACKUP_MEDIA_FILENAME_TEMPLATE="{servername}-{datetime}.{extension}",
    )
    site.manage("migrate", "--noinput", "-v0")
    populate(site)
    db_name = stock_dbbackup(site)
    media_name = stock_mediabackup(site)
    rows_at_backup, media_at_backup = state(site)

    listed = {f["name"]: f for s in site.sets() for f in s["files"]}
    kinds = {n: f["kind"] for n, f in listed.items()}
    assert kinds == {db_name: "db", media_name: "media", db_name + ".metadata": "manifest"}  # and stock's sidecar
    assert listed[db_name]["database"] == "default"

    change_rows(site, "after the backup")
    change_media(site.media, "after the backup")
    site.invoke("restore")

    assert site.snapshot_db() == rows_at_backup
    assert site.snapshot_media() == media_at_backup


def test_pruning_legacy_sets_removes_their_metadata_sidecars(sqlite_site):
    populate(sqlite_site)
    old_db = stock_dbbackup(sqlite_site)
    time.sleep(SECOND)
    new_db = stock_dbbackup(sqlite_site)

    sqlite_site.manage("backup_create", "--clean", "--clean-legacy", extra_env={"INVENTREE_BACKUP_KEEP": "1"})

    left = backup_files(sqlite_site)
    assert not {old_db, f"{old_db}.metadata"} & left
    assert {new_db, f"{new_db}.metadata"} <= left


def test_pruning_legacy_files_keeps_the_newest_stock_dump_and_archive(sqlite_site):
    """Stock writes db and media in separate runs; keeping 1 must keep one of each, like stock --clean."""
    populate(sqlite_site)
    old_db = stock_dbbackup(sqlite_site)
    time.sleep(SECOND)
    old_media = stock_mediabackup(sqlite_site)
    time.sleep(SECOND)
    new_db = stock_dbbackup(sqlite_site)
    time.sleep(SECOND)
    new_media = stock_mediabackup(sqlite_site)

    sqlite_site.manage("backup_create", "--clean", "--clean-legacy", extra_env={"INVENTREE_BACKUP_KEEP": "1"})

    left = backup_files(sqlite_site)
    assert {new_db, new_media} <= left, f"the newest stock backups were pruned; left: {sorted(left)}"
    assert not {old_db, old_media} & left


# --------------------------------------------------------------------------- direction 2: ours -> stock


def test_stock_dbrestore_reads_our_gzip_dump(any_site):
    populate(any_site)
    db_name, _media, _manifest = our_set_files(any_site)
    assert db_name.endswith(".gz")
    rows_at_backup = any_site.snapshot_db()
    change_rows(any_site, "after the backup")
    assert any_site.snapshot_db() != rows_at_backup

    any_site.manage("dbrestore", "--noinput", "-z", "-i", db_name)

    assert any_site.snapshot_db() == rows_at_backup


def test_stock_mediarestore_reads_our_gzip_archive(sqlite_site):
    populate(sqlite_site)
    _db, media_name, _manifest = our_set_files(sqlite_site)
    assert media_name.endswith(".tar.gz")
    media_at_backup = sqlite_site.snapshot_media()
    change_media(sqlite_site.media, "after the backup")
    assert sqlite_site.snapshot_media() != media_at_backup

    sqlite_site.manage("mediarestore", "--noinput", "-z", "-r", "-i", media_name)

    assert sqlite_site.snapshot_media() == media_at_backup


def test_stock_dbrestore_without_a_name_finds_our_newest_gzip_dump(sqlite_site):
    """Stock's latest-backup lookup (``-z``, no ``-i``) picks our dump, not our manifest."""
    populate(sqlite_site)
    our_set_files(sqlite_site)
    rows_at_backup = sqlite_site.snapshot_db()
    change_rows(sqlite_site, "after the backup")

    sqlite_site.manage("dbrestore", "--noinput", "-z")

    assert sqlite_site.snapshot_db() == rows_at_backup


def test_stock_mediarestore_without_a_name_finds_our_newest_gzip_archive(sqlite_site):
    """Stock's latest-backup lookup (``-z``, no ``-i``) picks our archive, not our manifest."""
    populate(sqlite_site)
    our_set_files(sqlite_site)
    media_at_backup = sqlite_site.snapshot_media()
    change_media(sqlite_site.media, "after the backup")

    sqlite_site.manage("mediarestore", "--noinput", "-z", "-r")

    assert sqlite_site.snapshot_media() == media_at_backup


# --------------------------------------------------------------------------- stock listbackups


def test_stock_listbackups_runs_and_does_not_list_our_manifest(sqlite_site):
    populate(sqlite_site)
    db_name, media_name, manifest_name = our_set_files(sqlite_site)
    assert (sqlite_site.backups / manifest_name).is_file()

    result = sqlite_site.manage("listbackups")

    names = {line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip()}
    assert names == {db_name, media_name}
    assert manifest_name not in result.stdout
