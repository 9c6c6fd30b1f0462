"""Which files a restore takes (actions.restore.choose), in process, over sets listed from a folder of files.

Nothing is restored here: ``choose`` only looks at the sets.
"""

from __future__ import annotations

import django
import pytest

django.setup()

from django.core.files.base import ContentFile  # noqa: E402
from django.core.files.storage import FileSystemStorage  # noqa: E402
from test_sets import stored_set  # noqa: E402

from backup_app.actions.restore import RestoreOptions, choose  # noqa: E402
from backup_app.errors import RestoreError  # noqa: E402
from backup_app.sets import MANIFEST_FORMAT, Naming, list_sets, write_json  # noqa: E402

ALIASES = ["default"]


@pytest.fixture
def storage(tmp_path):
    return FileSystemStorage(location=tmp_path)


def stock(storage, stamp: str, *, db: bool = True, media: bool = True) -> None:
    """Files as stock dbbackup/mediabackup write them: no manifest."""
    naming = Naming()
    if db:
        storage.save(naming.db_name(stamp, "default", "sqlite3.gz"), ContentFile(b"dump"))
    if media:
        storage.save(naming.media_name(stamp, "tar.gz"), ContentFile(b"tar"))


def pick(storage, **options) -> tuple[str | None, list[str], str | None]:
    plan = choose(list_sets(storage), RestoreOptions(**options), exists=storage.exists, aliases=ALIASES)
    return (
        plan.set.name if plan.set else None,
        [item.file.name for item in plan.databases],
        plan.media.name if plan.media else None,
    )


def test_the_newest_complete_set_whatever_is_newer(storage):
    stored_set(storage, "2026-11-26-020000")
    stored_set(storage, "2026-11-27-020000")
    stored_set(storage, "2026-11-28-020000", manifest=False, pending=True)

    assert pick(storage) == (
        "2026-11-27-020000",
        ["InvenTree-db-2026-11-27-020000.sqlite3.gz"],
        "InvenTree-media-2026-11-27-020000.tar.gz",
    )


def test_without_a_complete_set_the_newest_legacy_dump_and_archive_even_from_different_seconds(storage):
    stock(storage, "2026-11-26-020000")
    stock(storage, "2026-11-27-020000", media=False)
    stock(storage, "2026-11-27-020005", db=False)

    assert pick(storage) == (
        "2026-11-27-020005",
        ["InvenTree-db-2026-11-27-020000.sqlite3.gz"],
        "InvenTree-media-2026-11-27-020005.tar.gz",
    )


def test_a_named_dump_of_a_complete_set_comes_with_that_sets_archive(storage):
    stored_set(storage, "2026-11-26-020000")
    stored_set(storage, "2026-11-27-020000")

    assert pick(storage, db_file="InvenTree-db-2026-11-26-020000.sqlite3.gz") == (
        "2026-11-26-020000",
        ["InvenTree-db-2026-11-26-020000.sqlite3.gz"],
        "InvenTree-media-2026-11-26-020000.tar.gz",
    )


def test_a_named_legacy_dump_comes_with_the_newest_legacy_archive(storage):
    stock(storage, "2026-11-26-020000", media=False)
    stock(storage, "2026-11-25-020000", db=False)
    stock(storage, "2026-11-27-020000", db=False)

    assert pick(storage, db_file="InvenTree-db-2026-11-26-020000.sqlite3.gz")[1:] == (
        ["InvenTree-db-2026-11-26-020000.sqlite3.gz"],
        "InvenTree-media-2026-11-27-020000.tar.gz",
    )


def test_skip_flags_leave_a_part_out(storage):
    stored_set(storage, "2026-11-26-020000")

    assert pick(storage, skip_media=True)[1:] == (["InvenTree-db-2026-11-26-020000.sqlite3.gz"], None)
    assert pick(storage, skip_db=True)[1:] == ([], "InvenTree-media-2026-11-26-020000.tar.gz")


def test_a_file_outside_the_templates_is_taken_by_its_suffixes(storage):
    storage.save("copied-by-hand.sqlite3.gz.gpg", ContentFile(b"dump"))

    plan = choose(
        list_sets(storage),
        RestoreOptions(db_file="copied-by-hand.sqlite3.gz.gpg", skip_media=True),
        exists=storage.exists,
        aliases=ALIASES,
    )

    [item] = plan.databases
    assert (item.alias, item.file.compression, item.file.encrypted, plan.set) == ("default", "gzip", True, None)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({}, "no backup found in the backup storage; run `invoke backup` first"),
        ({"db_file": "nowhere.sqlite3"}, "nowhere.sqlite3 is not in the backup storage"),
    ],
)
def test_nothing_to_choose_is_one_line(storage, options, reason):
    with pytest.raises(RestoreError, match=reason.replace("(", r"\(").replace("`", ".")):
        pick(storage, **options)


def test_a_named_archive_with_no_dump_anywhere_asks_for_one(storage):
    stock(storage, "2026-11-26-020000", db=False)

    with pytest.raises(RestoreError, match="no database file goes with the named media file"):
        pick(storage, media_file="InvenTree-media-2026-11-26-020000.tar.gz")


def test_a_dump_of_an_alias_the_site_does_not_have_is_refused(storage):
    naming = Naming(db_template="InvenTree-db-{databasename}-{datetime}.{extension}")
    stamp = "2026-11-26-020000"
    storage.save(naming.db_name(stamp, "reports", "sqlite3.gz"), ContentFile(b"dump"))
    files = [{"name": naming.db_name(stamp, "reports", "sqlite3.gz"), "kind": "db", "size": 4, "database": "reports"}]
    write_json(
        storage,
        naming.manifest_name(stamp),
        {"format": MANIFEST_FORMAT, "files": files, "databases": [{"alias": "reports", "file": files[0]["name"]}]},
    )

    with pytest.raises(RestoreError, match="holds database 'reports', which is not in DATABASES"):
        choose(list_sets(storage, naming), RestoreOptions(), exists=storage.exists, aliases=ALIASES)


def database_only_set(storage, stamp: str) -> None:
    """A complete set without media (``backup --skip-media``)."""
    naming = Naming()
    db = naming.db_name(stamp, "default", "sqlite3.gz")
    storage.save(db, ContentFile(b"data"))
    created = f"{stamp[:10]}T{stamp[11:13]}:{stamp[13:15]}:{stamp[15:17]}+00:00"
    files = [{"name": db, "kind": "db", "size": 4, "sha256": "0" * 64}]
    write_json(storage, naming.manifest_name(stamp), {"format": MANIFEST_FORMAT, "created": created, "files": files})


def test_a_newer_set_without_media_is_taken_and_says_which_set_has_media(storage):
    stored_set(storage, "2026-11-26-020000")
    database_only_set(storage, "2026-11-27-020000")

    plan = choose(list_sets(storage), RestoreOptions(), exists=storage.exists, aliases=ALIASES)

    assert (plan.set.name, plan.media) == ("2026-11-27-020000", None)
    [note] = plan.notes
    assert "set 2026-11-27-020000 holds no media archive" in note and "media files are left as they are" in note
    assert "set 2026-11-26-020000 has one" in note
    assert "--skip-db --media-file InvenTree-media-2026-11-26-020000.tar.gz" in note


def test_no_note_when_media_are_skipped_or_no_older_set_has_any(storage):
    database_only_set(storage, "2026-11-27-020000")
    assert choose(list_sets(storage), RestoreOptions(), exists=storage.exists, aliases=ALIASES).notes == []
    stored_set(storage, "2026-11-26-020000")
    skipped = choose(list_sets(storage), RestoreOptions(skip_media=True), exists=storage.exists, aliases=ALIASES)
    assert skipped.notes == []
