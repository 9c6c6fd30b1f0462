"""What InvenTree's admins do, per the seed page and InvenTree's own tasks (issue 17): a remote backup storage
with Docker's absolute ``INVENTREE_BACKUP_DIR`` set, ``invoke restore --db-file X`` or ``--media-file Y`` alone,
and a date format without a time (one backup a day).

Every command runs for real in a throwaway demo site; S3 is moto's server over loopback.
"""

from __future__ import annotations

import json
import uuid

from conftest import make_site
from test_conf import settings_for
from test_remote_storage import s3_server, workdir  # noqa: F401  (session fixtures)

S3 = "storages.backends.s3.S3Storage"
DOCKER_DIR = "/home/inventree/data/backup"


# --------------------------------------------------------------------------- backup_dir and a remote storage


def test_an_absolute_backup_dir_is_not_a_remote_storages_prefix(tmp_path):
    ns = settings_for(
        tmp_path,
        {
            "INVENTREE_BACKUP_STORAGE": S3,
            "INVENTREE_BACKUP_DIR": DOCKER_DIR,
            "INVENTREE_BACKUP_OPTIONS": json.dumps({"bucket_name": "b"}),
        },
    )

    assert ns["STORAGES"]["dbbackup"]["OPTIONS"] == {"bucket_name": "b"}


def test_a_relative_backup_dir_stays_the_remote_prefix(tmp_path):
    ns = settings_for(
        tmp_path,
        {
            "INVENTREE_BACKUP_STORAGE": S3,
            "INVENTREE_BACKUP_DIR": "backups/site1",
            "INVENTREE_BACKUP_OPTIONS": json.dumps({"bucket_name": "b"}),
        },
    )

    assert ns["STORAGES"]["dbbackup"]["OPTIONS"]["location"] == "backups/site1"


def test_an_absolute_backup_dir_stays_the_local_folder(tmp_path):
    ns = settings_for(tmp_path, {"INVENTREE_BACKUP_DIR": DOCKER_DIR})

    assert ns["STORAGES"]["dbbackup"]["OPTIONS"]["location"] == DOCKER_DIR


def test_s3_with_dockers_backup_dir_backs_up_lists_restores_and_warns(sqlite_site, s3_server):  # noqa: F811
    prefix = f"docker-{uuid.uuid4().hex[:8]}"
    options, _ = s3_server.configure(prefix)
    sqlite_site.env.update(
        INVENTREE_BACKUP_STORAGE=S3,
        INVENTREE_BACKUP_OPTIONS=json.dumps({**options, "location": prefix}),
        INVENTREE_BACKUP_DIR=DOCKER_DIR,
    )
    sqlite_site.manage("demo_data")

    done = sqlite_site.invoke("backup")
    listed = sqlite_site.sets()
    sqlite_site.invoke("restore")

    assert "backup_app.W008" in done.output and "INVENTREE_BACKUP_DIR" in done.output
    assert [s["complete"] for s in listed] == [True]
    assert any(name.endswith(".manifest.metadata") for name in s3_server.names(prefix))


def test_w008_names_the_option_to_use(tmp_path):
    site = make_site(
        tmp_path / "site",
        INVENTREE_BACKUP_STORAGE=S3,
        INVENTREE_BACKUP_DIR=DOCKER_DIR,
        INVENTREE_BACKUP_OPTIONS=json.dumps({"bucket_name": "b"}),
    )

    out = site.manage("check", check=False).output

    line = next(x for x in out.splitlines() if "backup_app.W008" in x)
    assert DOCKER_DIR in line and "location" in out


# --------------------------------------------------------------------------- --db-file / --media-file alone


def _files(bset: dict, kind: str) -> list[str]:
    return [f["name"] for f in bset["files"] if f["kind"] == kind]


def test_db_file_alone_restores_the_newest_media_when_its_set_has_none(sqlite_site):
    sqlite_site.manage("demo_data")
    sqlite_site.invoke("backup")
    media_set = sqlite_site.sets()[0]
    media_before = sqlite_site.snapshot_media()
    sqlite_site.invoke("backup", "--skip-media")
    db_only = sqlite_site.sets()[0]
    db_before = sqlite_site.snapshot_db()
    (name,) = _files(db_only, "db")
    sqlite_site.sql("UPDATE demo_part SET quantity = quantity + 1000")
    first = next(p for p in sorted(sqlite_site.media.rglob("*")) if p.is_file())
    first.write_text("changed")

    done = sqlite_site.invoke("restore", "--db-file", name)

    assert sqlite_site.snapshot_db() == db_before
    assert sqlite_site.snapshot_media() == media_before
    assert _files(media_set, "media")[0] in done.output


def test_db_file_alone_takes_the_media_of_its_own_set(sqlite_site):
    sqlite_site.manage("demo_data")
    sqlite_site.invoke("backup")
    own = sqlite_site.sets()[0]
    media_before = sqlite_site.snapshot_media()
    (sqlite_site.media / "later.txt").write_text("after the first backup")
    sqlite_site.invoke("backup")
    next(p for p in sorted(sqlite_site.media.rglob("*")) if p.is_file() and p.name != "later.txt").write_text("x")

    done = sqlite_site.invoke("restore", "--db-file", _files(own, "db")[0])

    after = sqlite_site.snapshot_media()
    after.pop("later.txt")
    assert after == media_before
    assert _files(own, "media")[0] in done.output


def test_media_file_alone_restores_the_newest_database_when_its_set_has_none(sqlite_site):
    sqlite_site.manage("demo_data")
    sqlite_site.invoke("backup")
    db_before = sqlite_site.snapshot_db()
    sqlite_site.invoke("backup", "--skip-db")
    media_only = sqlite_site.sets()[0]
    sqlite_site.sql("UPDATE demo_part SET quantity = quantity + 1000")

    sqlite_site.invoke("restore", "--media-file", _files(media_only, "media")[0])

    assert sqlite_site.snapshot_db() == db_before


# --------------------------------------------------------------------------- date formats without a time


def test_a_day_only_date_format_is_accepted_with_a_warning(tmp_path):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_DATE_FORMAT="%Y-%m-%d")

    result = site.manage("check", check=False)

    assert result.returncode == 0, result.output
    assert "backup_app.W007" in result.output and "backup_app.E007" not in result.output


def test_two_backups_of_one_day_get_distinct_names_and_both_list(sqlite_site):
    sqlite_site.env["INVENTREE_BACKUP_DATE_FORMAT"] = "%Y-%m-%d"
    sqlite_site.manage("demo_data")
    sqlite_site.invoke("backup")
    sqlite_site.sql("UPDATE demo_part SET quantity = quantity + 1000")
    sqlite_site.invoke("backup")
    second = sqlite_site.snapshot_db()

    sets = sqlite_site.sets()
    sqlite_site.sql("UPDATE demo_part SET quantity = 0")
    sqlite_site.invoke("restore")

    assert [s["complete"] for s in sets] == [True, True]
    assert sets[0]["name"] == sets[1]["name"] + "_2"
    assert sqlite_site.snapshot_db() == second


def test_a_day_only_name_is_read_by_stock_dbrestore(sqlite_site):
    sqlite_site.env["INVENTREE_BACKUP_DATE_FORMAT"] = "%Y-%m-%d"
    sqlite_site.manage("demo_data")
    sqlite_site.invoke("backup")
    before = sqlite_site.snapshot_db()
    sqlite_site.sql("UPDATE demo_part SET quantity = 0")

    sqlite_site.manage("dbrestore", "--noinput", "-z")

    assert sqlite_site.snapshot_db() == before


def test_a_format_whose_stamps_do_not_read_back_is_e007(tmp_path):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_DATE_FORMAT="%s")

    assert "backup_app.E007" in site.manage("check", check=False).output
