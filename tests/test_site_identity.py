"""A set belongs to a site: two sites sharing one backup folder restore and prune only their own sets.

Real ``manage.py``/``invoke`` processes of two demo sites (SQLite, different database files) writing into one
backup folder.  A set records the site that wrote it (``manifest["site"]``); ``--allow-other-site`` restores
another site's set on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_site


def sqlite_site_named(root, db_file: str, backups) -> object:
    site = make_site(root, INVENTREE_DB_NAME=str(root / db_file), INVENTREE_BACKUP_DIR=str(backups))
    site.manage("migrate", "--noinput", "-v0")
    return site


@pytest.fixture
def two_sites(tmp_path):
    """Sites ``a`` and ``b`` (databases ``a.sqlite3`` and ``b.sqlite3``) backing up into one folder."""
    shared = tmp_path / "shared-backups"
    a = sqlite_site_named(tmp_path / "a", "a.sqlite3", shared)
    b = sqlite_site_named(tmp_path / "b", "b.sqlite3", shared)
    (a.media / "whose.txt").write_text("site a")
    (b.media / "whose.txt").write_text("site b")
    return a, b


def sets_by_site(site) -> dict[str, str]:
    return {s["name"]: s["site"] for s in site.sets()}


def test_each_set_records_the_site_that_wrote_it(two_sites):
    a, b = two_sites
    a.manage("backup_create")
    b.manage("backup_create")

    shared = Path(a.env["INVENTREE_BACKUP_DIR"])
    manifests = [json.loads(p.read_text()) for p in sorted(shared.glob("*.manifest.metadata"))]
    assert [m["site"] for m in manifests] == [
        {"id": "default=sqlite3:a.sqlite3", "source": "derived"},
        {"id": "default=sqlite3:b.sqlite3", "source": "derived"},
    ]
    assert sorted(sets_by_site(a).values()) == ["default=sqlite3:a.sqlite3", "default=sqlite3:b.sqlite3"]


def test_a_restore_takes_its_own_newest_set_not_a_newer_one_of_another_site(two_sites):
    a, b = two_sites
    a.manage("backup_create")
    b.manage("backup_create")  # newer, in the same folder
    (a.media / "whose.txt").write_text("changed on a")

    result = a.manage("backup_restore", "--noinput")

    assert (a.media / "whose.txt").read_text() == "site a"
    assert "Skipping newer sets of other sites" in result.stderr


def test_a_restore_of_only_another_sites_sets_is_refused_unless_allowed(two_sites):
    a, b = two_sites
    b.manage("backup_create")
    (a.media / "whose.txt").write_text("changed on a")

    refused = a.invoke("restore", "--noinput", check=False)
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert "no backup set of this site (default=sqlite3:a.sqlite3)" in last
    assert "of default=sqlite3:b.sqlite3" in last and "--allow-other-site" in last
    assert (a.media / "whose.txt").read_text() == "changed on a"

    a.invoke("restore", "--noinput", "--allow-other-site")
    assert (a.media / "whose.txt").read_text() == "site b"


def test_a_named_file_of_another_sites_set_is_refused(two_sites):
    a, b = two_sites
    a.manage("backup_create")
    b.manage("backup_create")
    [b_media] = [
        f["name"] for s in b.sets() if s["site"].endswith("b.sqlite3") for f in s["files"] if f["kind"] == "media"
    ]

    result = a.manage("backup_restore", "--noinput", "--skip-db", "--media-file", b_media, check=False)

    assert result.returncode != 0
    assert f"{b_media} belongs to set" in result.stderr and "written by another site" in result.stderr
    assert (a.media / "whose.txt").read_text() == "site a"


def test_clean_deletes_only_its_own_sets(two_sites):
    a, b = two_sites
    b.manage("backup_create")
    b.manage("backup_create")
    a.manage("backup_create")
    b_sets = sorted(n for n, site in sets_by_site(a).items() if site.endswith("b.sqlite3"))

    a.manage("backup_create", "--clean", extra_env={"INVENTREE_BACKUP_KEEP": "1"})

    after = sets_by_site(a)
    assert sorted(n for n, site in after.items() if site.endswith("b.sqlite3")) == b_sets
    assert len([n for n, site in after.items() if site.endswith("a.sqlite3")]) == 1


def test_another_sites_clean_leaves_a_backup_being_written_alone(two_sites):
    # The case found: a's --clean deleted b's set while b wrote it; b then said "complete" with files gone.
    from test_interrupted import Held

    a, b = two_sites
    held = Held(b, "backup:media-written", "backup_create").paused("backup:media-written")

    a.manage("backup_create", "--clean", extra_env={"INVENTREE_BACKUP_KEEP": "1"})
    held.go_on()
    code, err = held.finish()

    assert code == 0, err
    assert [s["status"] for s in b.sets() if s["site"].endswith("b.sqlite3")] == ["complete"]


def test_another_sites_clean_leaves_the_packs_of_an_incremental_backup_being_written_alone(two_sites):
    # The packs of an incremental backup are uploaded before its manifest, which alone names them: another
    # site's prune (its own lock) took them for packs no manifest needs and deleted them; b then said
    # "complete" and its set could not be restored.
    from test_interrupted import Held

    a, b = two_sites
    for site in (a, b):
        site.env["INVENTREE_BACKUP_MEDIA_MODE"] = "incremental"
    (b.media / "big.bin").write_bytes(bytes(range(256)) * 4096)
    held = Held(b, "backup:media-written", "backup_create", "--skip-db").paused("backup:media-written")

    result = a.manage("backup_create", "--skip-db", "--clean", extra_env={"INVENTREE_BACKUP_KEEP": "1"})
    held.go_on()
    code, err = held.finish()

    assert code == 0, err
    (b.media / "big.bin").unlink()
    (b.media / "whose.txt").write_text("changed on b")
    b.manage("backup_restore", "--noinput", "--skip-db")
    assert (b.media / "whose.txt").read_text() == "site b"
    assert (b.media / "big.bin").read_bytes() == bytes(range(256)) * 4096
    assert "Media packs left alone: set " in result.stderr and "is being written" in result.stderr, result.stderr


def test_a_configured_site_id_is_the_same_site_whatever_its_database(tmp_path):
    shared = tmp_path / "shared-backups"
    old = sqlite_site_named(tmp_path / "old", "old.sqlite3", shared)
    new = sqlite_site_named(tmp_path / "new", "new.sqlite3", shared)
    for site in (old, new):
        site.env["INVENTREE_BACKUP_SITE_ID"] = "shop-eu"
    (old.media / "whose.txt").write_text("the shop")
    old.manage("backup_create")

    new.manage("backup_restore", "--noinput")

    assert (new.media / "whose.txt").read_text() == "the shop"
