"""A site that changes its filename templates and date format keeps its sets: they are found by their manifests.

The demo site backs up under one naming, then is configured with another (as check E004 forces when a second
database is added); the set written before is listed complete, verified, restored and pruned like any other.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from conftest import ROOT

BEFORE = {
    "INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE": "old-db-{datetime}.{extension}",
    "INVENTREE_BACKUP_MEDIA_FILENAME_TEMPLATE": "old-files-{datetime}.{extension}",
    "INVENTREE_BACKUP_DATE_FORMAT": "%Y%m%dT%H%M%S",
}
AFTER = {
    "INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE": "site-{databasename}-{datetime}.{extension}",
    "INVENTREE_BACKUP_MEDIA_FILENAME_TEMPLATE": "site-media-{datetime}.{extension}",
    "INVENTREE_BACKUP_DATE_FORMAT": "%Y-%m-%d-%H%M%S",
}


@pytest.fixture
def renamed(sqlite_site):
    """A set written under BEFORE's naming, then the site configured with AFTER's."""
    sqlite_site.run(sys.executable, str(ROOT / "tests" / "seed.py"), "default", "seed")
    (sqlite_site.media / "a.txt").write_text("backed up")
    sqlite_site.env.update(BEFORE)
    sqlite_site.invoke("backup")
    sqlite_site.env.update(AFTER)
    return sqlite_site


def test_a_set_of_the_old_naming_is_listed_complete(renamed):
    [entry] = renamed.sets()

    assert entry["complete"] is True
    # the dump and its .metadata sidecar, the archive and the manifest
    assert sorted(f["name"].split("-")[1] for f in entry["files"]) == ["db", "db", "files", "files"]
    assert {f["name"] for f in entry["files"]} == {p.name for p in renamed.backups.iterdir()}


def test_a_set_of_the_old_naming_verifies(renamed):
    [entry] = renamed.sets()

    result = renamed.manage("backup_verify")

    assert result.stdout.splitlines()[0].split() == ["OK", entry["name"], "(complete)"], result.output


def test_a_set_of_the_old_naming_restores_its_database_alone(renamed):
    rows = renamed.snapshot_db()
    renamed.run(sys.executable, str(ROOT / "tests" / "seed.py"), "default", "mutate")
    assert renamed.snapshot_db() != rows

    renamed.invoke("restore", "--skip-media")

    assert renamed.snapshot_db() == rows


def test_a_set_of_the_old_naming_is_pruned_whole(renamed):
    [old] = renamed.sets()

    renamed.invoke("backup", "--clean", extra_env={"INVENTREE_BACKUP_KEEP": "1"})

    [new] = renamed.sets()
    assert new["name"] != old["name"]
    assert sorted(p.name for p in renamed.backups.iterdir()) == sorted(f["name"] for f in new["files"])
    assert all(f["name"].startswith("site-") for f in new["files"])


def test_listbackups_json_names_the_old_set_by_its_own_stamp(renamed):
    [entry] = json.loads(renamed.invoke("listbackups", "--json").stdout)

    assert re.fullmatch(r"\d{8}T\d{6}", entry["name"]), entry["name"]
