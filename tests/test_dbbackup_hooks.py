"""django-dbbackup's hooks under backup_app, as stock uses them (issue 17).

- every database file gets stock's ``.metadata`` sidecar (``engine``, ``connector`` and the keys of
  ``DBBACKUP_BACKUP_METADATA_SETTER``), which stock ``dbrestore`` reads;
- ``DBBACKUP_RESTORE_METADATA_VALIDATOR`` is called with a file's sidecar (ours or stock's) before a restore
  changes anything; a refusal stops it unless ``--restore-allow-newer-version`` or
  ``<PREFIX>BACKUP_RESTORE_ALLOW_NEWER_VERSION`` (InvenTree's switch) is given;
- django-dbbackup's eight signals are sent with the arguments stock's commands send.

The site is the demo site with the hooks of ``tests/hooks_site.py``; every command runs for real.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import ROOT, make_site

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def hooks_site(tmp_path):
    site = make_site(tmp_path / "site")
    site.env.update(
        DJANGO_SETTINGS_MODULE="hooks_site",
        PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]),
        HOOKS_LOG=str(tmp_path / "hooks.jsonl"),
    )
    site.manage("migrate", "--noinput", "-v0")
    site.manage("demo_data")
    site.log = tmp_path / "hooks.jsonl"
    return site


def calls(site, **match) -> list[dict]:
    """Entries of the hooks log (``signal=...`` or ``hook=...``); the log is emptied."""
    lines = site.log.read_text().splitlines() if site.log.exists() else []
    site.log.write_text("")
    entries = [json.loads(line) for line in lines]
    return [e for e in entries if all(e.get(k) == v for k, v in match.items())]


def newest_set(site) -> dict:
    return next(s for s in site.sets() if s["complete"])


def db_file(bset: dict) -> str:
    return next(f["name"] for f in bset["files"] if f["kind"] == "db")


def part_count(site) -> int:
    return len(site.snapshot_db()["demo_part"])


# --------------------------------------------------------------------------- the .metadata sidecar


def test_each_database_file_gets_stocks_sidecar_with_the_setters_keys(hooks_site):
    hooks_site.invoke("backup")
    name = db_file(newest_set(hooks_site))

    sidecar = json.loads((hooks_site.backups / f"{name}.metadata").read_text())

    assert sidecar["engine"] == "django.db.backends.sqlite3"
    assert sidecar["connector"] == "dbbackup.db.sqlite.SqliteBackupConnector"
    assert sidecar["ivt_1_version_api"] == 100
    assert "ivt_1_backup_time" in sidecar


def test_the_setter_gets_what_stock_gives_it(hooks_site):
    hooks_site.manage("dbbackup", "--noinput", "--compress")
    stock = calls(hooks_site, hook="setter")
    hooks_site.invoke("backup")
    ours = calls(hooks_site, hook="setter")

    assert [c["given"] for c in ours] == [c["given"] for c in stock]


def test_the_sidecar_is_listed_with_its_set_and_pruned_with_it(hooks_site):
    hooks_site.invoke("backup")
    first = newest_set(hooks_site)
    hooks_site.invoke("backup")
    sidecar = f"{db_file(first)}.metadata"
    assert (hooks_site.backups / sidecar).exists()
    [listed] = [f for f in first["files"] if f["name"] == sidecar]
    assert (listed["kind"], listed["sidecar_of"]) == ("manifest", db_file(first))
    assert listed["size"] == (hooks_site.backups / sidecar).stat().st_size and listed["sha256"]

    hooks_site.invoke("backup", "--clean", extra_env={"INVENTREE_BACKUP_KEEP": "1"})

    assert not (hooks_site.backups / sidecar).exists()
    assert not (hooks_site.backups / db_file(first)).exists()


def test_verify_checks_the_sidecar_against_its_manifest(sqlite_site):
    sqlite_site.invoke("backup", "--skip-media")
    sidecar = sqlite_site.backups / f"{db_file(newest_set(sqlite_site))}.metadata"
    text = sidecar.read_text()
    sidecar.write_text(text.replace('"django.db.backends.sqlite3"', '"django.db.backends.mysql__"'))  # same size

    result = sqlite_site.invoke("verify", check=False)

    assert result.returncode != 0
    assert f"{sidecar.name} does not match its SHA-256 in the manifest" in result.output


def test_a_set_whose_sidecar_is_gone_is_incomplete_and_names_it(sqlite_site):
    sqlite_site.invoke("backup", "--skip-media")
    sidecar = sqlite_site.backups / f"{db_file(newest_set(sqlite_site))}.metadata"
    sidecar.unlink()  # a restore would skip the site's validator

    [entry] = sqlite_site.sets()

    assert (entry["status"], entry["problems"]) == ("incomplete", [f"missing: {sidecar.name}"])


def test_restore_refuses_a_sidecar_named_as_the_database_file(sqlite_site):
    sqlite_site.invoke("backup", "--skip-media")
    name = db_file(newest_set(sqlite_site))

    result = sqlite_site.invoke("restore", "--db-file", f"{name}.metadata", "--skip-media", check=False)

    assert result.returncode != 0
    assert f"{name}.metadata is the .metadata sidecar of {name}, not a backup; name {name}" in result.stderr


def test_stock_dbrestore_runs_the_validator_on_our_sidecar(hooks_site):
    hooks_site.invoke("backup")
    name = db_file(newest_set(hooks_site))

    refused = hooks_site.manage(
        "dbrestore", "--noinput", "-z", "-i", name, check=False, extra_env={"HOOKS_API_VERSION": "99"}
    )

    assert refused.returncode != 0
    assert "Custom metadata validation failed" in refused.output
    assert [c["given"]["ivt_1_version_api"] for c in calls(hooks_site, hook="validator")] == [100]


# --------------------------------------------------------------------------- the validator before a restore


def test_the_validator_gets_the_sidecar_before_a_restore(hooks_site):
    hooks_site.invoke("backup")
    name = db_file(newest_set(hooks_site))
    calls(hooks_site)

    hooks_site.invoke("restore")

    given = [c["given"] for c in calls(hooks_site, hook="validator")]
    assert given == [json.loads((hooks_site.backups / f"{name}.metadata").read_text())]


def test_a_refusal_stops_the_restore_before_anything_changes(hooks_site):
    hooks_site.invoke("backup")
    name = db_file(newest_set(hooks_site))
    hooks_site.manage("demo_data")
    before = hooks_site.snapshot_db()

    refused = hooks_site.invoke("restore", check=False, extra_env={"HOOKS_API_VERSION": "99"})

    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert name in last and "hooks_site.validate_restore" in last and "--restore-allow-newer-version" in last
    assert hooks_site.snapshot_db() == before
    assert calls(hooks_site, signal="pre_restore") == []


def test_restore_allow_newer_version_lets_the_refused_backup_restore(hooks_site):
    hooks_site.invoke("backup")
    count = part_count(hooks_site)
    hooks_site.manage("demo_data")

    hooks_site.invoke("restore", "--restore-allow-newer-version", extra_env={"HOOKS_API_VERSION": "99"})

    assert part_count(hooks_site) == count
    assert [c["allow_newer_setting"] for c in calls(hooks_site, hook="validator")] == [True]


def test_inventrees_environment_switch_lets_the_refused_backup_restore(hooks_site):
    hooks_site.invoke("backup")
    count = part_count(hooks_site)
    hooks_site.manage("demo_data")

    hooks_site.invoke(
        "restore",
        extra_env={"HOOKS_API_VERSION": "99", "INVENTREE_BACKUP_RESTORE_ALLOW_NEWER_VERSION": "true"},
    )

    assert part_count(hooks_site) == count


def test_the_switch_follows_the_sites_prefix(tmp_path):
    from backup_app.conf import apply_backup_settings, load_config

    config_file = tmp_path / "config.yaml"
    config_file.write_text("")
    ns = {"BASE_DIR": tmp_path, "MEDIA_ROOT": str(tmp_path), "DATABASES": {"default": {}}}
    env = {"MYSITE_BACKUP_RESTORE_ALLOW_NEWER_VERSION": "1", "INVENTREE_BACKUP_RESTORE_ALLOW_NEWER_VERSION": "0"}
    config = load_config(prefix="MYSITE_", config_file=config_file, environ=env)

    apply_backup_settings(ns, config=config)

    assert ns["BACKUP_RESTORE_ALLOW_NEWER_VERSION"] is True


def _inventree_backup_from_2020(site) -> str:
    """A stock dump renamed to a 2020 stamp, its sidecar as InvenTree writes it, from a newer InvenTree."""
    site.manage("dbbackup", "--noinput", "--compress")
    dump = next(p for p in site.backups.iterdir() if p.name.endswith(".sqlite3.gz"))
    old = site.backups / "InvenTree-db-2020-01-02-030405.sqlite3.gz"
    dump.rename(old)
    Path(f"{dump}.metadata").unlink()
    Path(f"{old}.metadata").write_text(
        json.dumps(
            {
                "engine": "django.db.backends.sqlite3",
                "connector": "dbbackup.db.sqlite.SqliteBackupConnector",
                "ivt_1_version": "9.9.9",
                "ivt_1_version_api": 9999,
                "ivt_1_backup_time": "2020-01-02T03:04:05",
            }
        )
    )
    return old.name


def test_an_inventree_backup_from_a_newer_version_is_refused(hooks_site):
    name = _inventree_backup_from_2020(hooks_site)

    refused = hooks_site.invoke("restore", "--db-file", name, "--skip-media", check=False)

    assert refused.returncode != 0
    assert name in refused.stderr and "validate_restore" in refused.stderr


def test_an_old_backup_restores_with_a_warning_naming_its_age(hooks_site):
    name = _inventree_backup_from_2020(hooks_site)

    done = hooks_site.invoke("restore", "--db-file", name, "--skip-media", "--restore-allow-newer-version")

    assert "days old" in done.output and "2020-01-02" in done.output


def test_the_age_warning_follows_its_setting(hooks_site):
    name = _inventree_backup_from_2020(hooks_site)

    done = hooks_site.invoke(
        "restore",
        "--db-file",
        name,
        "--skip-media",
        "--restore-allow-newer-version",
        extra_env={"INVENTREE_BACKUP_RESTORE_WARN_AGE_DAYS": "0"},
    )

    assert "days old" not in done.output


# --------------------------------------------------------------------------- signals


def _signature(entries: list[dict]) -> list[tuple]:
    return [
        (e["signal"], tuple(e["keys"]), e["sender"], e["storage_is_stocks"], e["storage_name"], e["connector"])
        for e in entries
    ]


def test_backup_sends_stocks_signals_with_stocks_arguments(hooks_site):
    hooks_site.manage("dbbackup", "--noinput", "--compress")
    hooks_site.manage("mediabackup", "--noinput", "--compress")
    stock = calls(hooks_site)
    stock = [e for e in stock if "signal" in e]

    hooks_site.invoke("backup")
    ours = [e for e in calls(hooks_site) if "signal" in e]

    assert sorted(_signature(ours)) == sorted(_signature(stock))


def test_post_backup_names_the_stored_file_and_the_storage_holds_it(hooks_site):
    hooks_site.invoke("backup")
    bset = newest_set(hooks_site)
    entries = calls(hooks_site)

    post = next(e for e in entries if e.get("signal") == "post_backup")
    media = next(e for e in entries if e.get("signal") == "post_media_backup")
    assert post["filename"] == db_file(bset)
    assert post["filename"] in post["storage_lists"]
    assert media["filename"] == next(f["name"] for f in bset["files"] if f["kind"] == "media")


def test_restore_sends_stocks_signals_with_stocks_arguments(hooks_site):
    hooks_site.invoke("backup")
    bset = newest_set(hooks_site)
    calls(hooks_site)
    media = next(f["name"] for f in bset["files"] if f["kind"] == "media")
    hooks_site.manage("dbrestore", "--noinput", "-z", "-i", db_file(bset))
    hooks_site.manage("mediarestore", "--noinput", "-z", "-r", "-i", media)
    stock = [e for e in calls(hooks_site) if "signal" in e]

    hooks_site.invoke("restore")
    ours = [e for e in calls(hooks_site) if "signal" in e]

    assert sorted(_signature(ours)) == sorted(_signature(stock))
    assert [e["signal"] for e in ours] == ["pre_restore", "pre_media_restore", "post_restore", "post_media_restore"]
    assert sorted((e["signal"], e["filename"]) for e in ours) == sorted((e["signal"], e["filename"]) for e in stock)
    assert next(e for e in ours if e["signal"] == "pre_restore")["database_name"] == "default"


def test_a_failed_restore_sends_no_post_restore(hooks_site):
    hooks_site.invoke("backup")
    name = db_file(newest_set(hooks_site))
    path = hooks_site.backups / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    calls(hooks_site)

    failed = hooks_site.invoke("restore", check=False)

    assert failed.returncode != 0
    sent = [e["signal"] for e in calls(hooks_site) if "signal" in e]
    assert "post_restore" not in sent and "post_media_restore" not in sent


# --------------------------------------------------------------------------- verify says what restore would refuse


def test_verify_reports_the_validators_refusal_as_restore_would(hooks_site):
    hooks_site.invoke("backup")
    name = db_file(newest_set(hooks_site))

    refused = hooks_site.invoke("verify", check=False, extra_env={"HOOKS_API_VERSION": "99"})

    assert refused.returncode != 0
    text = " ".join(refused.output.split())
    assert f"{name}: DBBACKUP_RESTORE_METADATA_VALIDATOR hooks_site.validate_restore refused this backup" in text
    assert "invoke restore would refuse this file" in text


def test_verify_under_the_newer_version_switch_asks_the_validator_with_the_switch_on(hooks_site):
    hooks_site.invoke("backup")
    calls(hooks_site)

    done = hooks_site.invoke(
        "verify", extra_env={"HOOKS_API_VERSION": "99", "INVENTREE_BACKUP_RESTORE_ALLOW_NEWER_VERSION": "true"}
    )

    assert done.returncode == 0
    assert [c["allow_newer_setting"] for c in calls(hooks_site, hook="validator")] == [True]


def test_the_age_warning_reads_inventrees_backup_time_not_the_files_name(hooks_site):
    name = _inventree_backup_from_2020(hooks_site)
    recent = hooks_site.backups / name.replace("2020-01-02-030405", "2026-01-02-030405")
    (hooks_site.backups / name).rename(recent)
    (hooks_site.backups / f"{name}.metadata").rename(f"{recent}.metadata")

    done = hooks_site.invoke("restore", "--db-file", recent.name, "--skip-media", "--restore-allow-newer-version")

    assert f"warning: {recent.name} is" in done.output and "(made 2020-01-02 03:04" in done.output
