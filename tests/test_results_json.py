"""``--json`` results for scripts and ``--dry-run`` that changes nothing; every document is checked against
docs/results.schema.json, the schema the docs give."""

from __future__ import annotations

import json

import jsonschema
import pytest
from conftest import ROOT

SCHEMA = json.loads((ROOT / "docs" / "results.schema.json").read_text())


def validate(data, definition: str) -> None:
    """``data`` is valid against the whole schema and is the ``definition`` kind of document."""
    jsonschema.validate(data, SCHEMA)
    jsonschema.validate(data, {"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{definition}"})


def stored(site) -> list[str]:
    return sorted(p.name for p in site.backups.iterdir()) if site.backups.exists() else []


def test_backup_json_is_one_object_naming_the_set_and_its_files(sqlite_site):
    (sqlite_site.media / "a.txt").write_text("a" * 5000)

    result = sqlite_site.manage("backup_create", "--json")

    data = json.loads(result.stdout)
    validate(data, "backup")
    files = {f["name"] for f in data["files"]}
    rest = set(stored(sqlite_site)) - files  # the set's manifest and stock dbbackup's .metadata sidecars
    [manifest] = [n for n in rest if n.endswith(".manifest.metadata")]
    assert data["set"] in manifest
    assert all(n.endswith(".metadata") and n.removesuffix(".metadata") in files for n in rest - {manifest})
    assert data["source_size"] >= 5000 and data["size"] == sum(f["size"] for f in data["files"])


def test_restore_json_names_the_set_and_the_safety_copy(sqlite_site):
    sqlite_site.manage("backup_create", "--quiet")
    [entry] = sqlite_site.sets()

    data = json.loads(sqlite_site.manage("backup_restore", "--noinput", "--json").stdout)

    validate(data, "restore")
    assert data["set"] == entry["name"] and data["databases"] == ["default"]
    assert data["safety"]["name"]


def test_verify_json_reports_each_set(sqlite_site):
    sqlite_site.manage("backup_create", "--quiet")

    data = json.loads(sqlite_site.manage("backup_verify", "--json").stdout)

    validate(data, "verify")
    assert data["ok"] and [s["ok"] for s in data["sets"]] == [True]


def test_a_failure_with_json_is_one_failure_object_and_one_line_on_stderr(sqlite_site):
    result = sqlite_site.manage("backup_restore", "--noinput", "--json", "--db-file", "missing.sqlite3.gz", check=False)

    assert result.returncode != 0
    data = json.loads(result.stdout)
    validate(data, "failure")
    assert data["error"] in result.stderr and "missing.sqlite3.gz" in data["error"]


def test_verify_with_a_damaged_set_prints_one_document(sqlite_site):
    sqlite_site.manage("backup_create", "--quiet", "--skip-media")
    dump = next(p for p in sqlite_site.backups.iterdir() if p.name.endswith(".sqlite3.gz"))  # not its .metadata
    dump.write_bytes(dump.read_bytes()[:-10])

    result = sqlite_site.manage("backup_verify", "--json", check=False)

    assert result.returncode != 0
    data = json.loads(result.stdout)  # one document, not a result and a failure after it
    validate(data, "verify")
    assert not data["ok"]


def test_listbackups_json_matches_the_schema(sqlite_site):
    sqlite_site.manage("backup_create", "--quiet")

    validate(sqlite_site.sets(), "list")


def test_backup_dry_run_writes_nothing_and_says_what_and_where(sqlite_site):
    (sqlite_site.media / "a.txt").write_text("a")
    sqlite_site.backups.mkdir(exist_ok=True)

    data = json.loads(sqlite_site.manage("backup_create", "--dry-run", "--json").stdout)

    validate(data, "backup_plan")
    assert stored(sqlite_site) == []
    assert data["ok"] and data["compression"] == "gzip"
    [db] = [f for f in data["files"] if f["kind"] == "db"]
    assert db["vendor"] == "sqlite" and db["connector"].startswith("dbbackup.db.sqlite.")
    assert data["media"] == {"files": 1, "bytes": 1}
    assert str(sqlite_site.backups) in data["storage"]


def test_clean_dry_run_names_the_sets_that_would_go_and_deletes_none(sqlite_site):
    for _ in range(3):
        sqlite_site.manage("backup_create", "--quiet", "--skip-media")
    before = stored(sqlite_site)
    two_oldest = sqlite_site.sets()[-2:]  # keep 2: the new set and the newest one now

    result = sqlite_site.manage(
        "backup_create", "--dry-run", "--clean", "--json", extra_env={"INVENTREE_BACKUP_KEEP": "2"}
    )

    data = json.loads(result.stdout)
    validate(data, "backup_plan")
    assert stored(sqlite_site) == before
    assert sorted(data["deleted"]) == sorted(n for n in before if any(s["name"] in n for s in two_oldest))


def test_restore_dry_run_changes_nothing_and_says_what_would_be_replaced(sqlite_site):
    (sqlite_site.media / "a.txt").write_text("old")
    sqlite_site.manage("backup_create", "--quiet")
    (sqlite_site.media / "a.txt").write_text("new")
    db_before = sqlite_site.snapshot_db()

    data = json.loads(sqlite_site.manage("backup_restore", "--dry-run", "--json").stdout)

    validate(data, "restore_plan")
    assert data["ok"] and data["problems"] == []
    assert data["databases"][0]["alias"] == "default" and data["databases"][0]["replaces"].endswith(".sqlite3")
    assert data["media"]["files"] == 1 and data["media"]["replaces"] == str(sqlite_site.media)
    assert (sqlite_site.media / "a.txt").read_text() == "new"
    assert sqlite_site.snapshot_db() == db_before
    assert not (sqlite_site.root / "safety").exists() or not any((sqlite_site.root / "safety").iterdir())


def test_restore_dry_run_of_a_damaged_set_reports_the_problem_and_fails(sqlite_site):
    sqlite_site.manage("backup_create", "--quiet")
    media = next(p for p in sqlite_site.backups.iterdir() if "-media-" in p.name and "manifest" not in p.name)
    media.write_bytes(b"x" * media.stat().st_size)

    result = sqlite_site.manage("backup_restore", "--dry-run", check=False)

    assert result.returncode != 0
    assert "the restore would be refused" in result.stdout
    assert media.name in result.stderr and "damaged" in result.stderr


@pytest.mark.parametrize("command", ["backup_create", "backup_restore", "backup_verify"])
def test_json_is_the_only_thing_on_stdout(sqlite_site, command):
    sqlite_site.manage("backup_create", "--quiet")

    out = sqlite_site.manage(command, "--json", *(["--noinput"] if command == "backup_restore" else [])).stdout

    json.loads(out)
