"""backup_app.sets in process: names parsed exactly against the templates, sets listed from a folder, and
which sets retention keeps and deletes.  No command runs; the settings are the session's (InvenTree's
templates) unless a test overrides them."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import datetime, timedelta
from hashlib import sha256
from zoneinfo import ZoneInfo

import django
import pytest

django.setup()

from django.core.files.base import ContentFile  # noqa: E402
from django.core.files.storage import FileSystemStorage  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.utils import timezone  # noqa: E402

from backup_app.sets import (  # noqa: E402
    MANIFEST_FORMAT,
    BackupSet,
    Naming,
    Retention,
    doomed,
    held_back,
    list_sets,
    retained,
    split_extension,
    write_json,
)

UTC = ZoneInfo("UTC")


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "stamp", "compression", "encrypted"),
    [
        ("InvenTree-db-2026-11-28-020304.sqlite3.gz", "db", "2026-11-28-020304", "gzip", False),
        ("InvenTree-db-2026-11-28-020304.psql.bin.zst.gpg", "db", "2026-11-28-020304", "zstd", True),
        ("InvenTree-db-2026-11-28-020304.dump", "db", "2026-11-28-020304", None, False),
        ("InvenTree-media-2026-11-28-020304.tar.gz", "media", "2026-11-28-020304", "gzip", False),
        ("InvenTree-media-2026-11-28-020304.tar", "media", "2026-11-28-020304", None, False),
    ],
)
def test_a_backup_file_name_tells_its_kind_stamp_and_flags(name, kind, stamp, compression, encrypted):
    parsed = Naming().parse(name)

    assert (parsed.kind, parsed.stamp, parsed.compression, parsed.encrypted) == (kind, stamp, compression, encrypted)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("InvenTree-media-2026-11-28-020304.manifest.metadata", "manifest"),
        ("InvenTree-media-2026-11-28-020304.pending.metadata", "pending"),
        ("InvenTree-db-2026-11-28-020304.sqlite3.gz.metadata", "metadata"),
    ],
)
def test_manifests_markers_and_stock_sidecars_are_told_apart(name, kind):
    assert Naming().parse(name).kind == kind


@pytest.mark.parametrize(
    "name",
    [
        "InvenTree-db-2026-11-28.sqlite3.gz",  # the stamp lacks the time
        "InvenTree-db-2026-13-28-020304.sqlite3.gz",  # month 13: not a date
        "xInvenTree-db-2026-11-28-020304.sqlite3.gz",  # never by substring
        "InvenTree-db-2026-11-28-020304.manifest.metadata",  # a manifest is named by the media template
        "notes.txt",
    ],
)
def test_names_that_are_not_backup_files_of_these_templates(name):
    assert Naming().parse(name) is None


def test_the_database_name_comes_from_its_place_in_the_template():
    naming = Naming(db_template="{databasename}-{servername}-{datetime}.{extension}")

    parsed = naming.parse("reports-db.example.com-2026-11-28-020304.psql.bin")

    assert (parsed.kind, parsed.database, parsed.stamp) == ("db", "reports", "2026-11-28-020304")


def test_a_rendered_name_parses_back():
    naming = Naming()
    stamp = naming.stamp(datetime(2026, 11, 28, 2, 3, 4, tzinfo=UTC))

    assert naming.parse(naming.db_name(stamp, "default", "sqlite3.gz.gpg")).stamp == stamp
    assert naming.parse(naming.media_name(stamp, "tar.zst")).kind == "media"


def test_split_extension_peels_encryption_then_compression():
    assert split_extension("psql.bin.gz.gpg") == ("psql.bin", "gzip", True)
    assert split_extension("tar") == ("tar", None, False)


# --- listing ----------------------------------------------------------------------------------


def gone_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def stored_set(
    storage,
    stamp: str,
    *,
    manifest: bool = True,
    pending: bool = False,
    missing: bool = False,
    writer: dict | None = None,
) -> None:
    """A set's files in ``storage``; ``pending``: its marker names ``writer`` (default: a process that is gone)."""
    naming = Naming()
    db, media = naming.db_name(stamp, "default", "sqlite3.gz"), naming.media_name(stamp, "tar.gz")
    for name in (db, media):
        storage.save(name, ContentFile(b"data"))
    if pending:
        who = writer if writer is not None else {"host": socket.gethostname(), "pid": gone_pid()}
        write_json(storage, naming.pending_name(stamp), {"started": stamp, **who})
    if manifest:
        files = [{"name": n, "kind": k, "size": 4, "sha256": "0" * 64} for n, k in ((db, "db"), (media, "media"))]
        if missing:
            files.append({"name": naming.media_name(stamp, "tar.zst"), "kind": "media", "size": 4})
        created = datetime.strptime(stamp, naming.date_format).replace(tzinfo=UTC).isoformat()
        write_json(
            storage, naming.manifest_name(stamp), {"format": MANIFEST_FORMAT, "created": created, "files": files}
        )


def test_sets_are_listed_newest_first_with_their_status(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    stored_set(storage, "2026-11-26-020000")
    stored_set(storage, "2026-11-27-020000", manifest=False)  # stock dbbackup's files
    stored_set(storage, "2026-11-28-020000", manifest=False, pending=True)  # a run that never finished
    stored_set(storage, "2026-11-29-020000", missing=True)  # its manifest names a file that is gone

    sets = list_sets(storage)

    assert [(s.name, s.status) for s in sets] == [
        ("2026-11-29-020000", "incomplete"),
        ("2026-11-28-020000", "incomplete"),
        ("2026-11-27-020000", "legacy"),
        ("2026-11-26-020000", "complete"),
    ]
    assert sets[0].problems == ["missing: InvenTree-media-2026-11-29-020000.tar.zst"]
    assert sets[3].db_files[0].sha256 == "0" * 64


# --- retention --------------------------------------------------------------------------------


def complete(when: str) -> BackupSet:
    created = datetime.fromisoformat(when).replace(tzinfo=UTC)
    return BackupSet(name=created.strftime("%Y-%m-%d-%H%M%S"), created=created, status="complete")


#: Two sets a day, 2026-10-01 .. 2026-11-29, newest first.
SETS = [
    complete(f"{day:%Y-%m-%d} {hour:02d}:00")
    for day in (datetime(2026, 11, 29) - timedelta(days=n) for n in range(60))
    for hour in (14, 2)
]


def names(sets: list[BackupSet]) -> set[str]:
    return {s.name for s in sets}


def test_keep_alone_keeps_the_newest_sets():
    assert retained(SETS, Retention(keep=3)) == names(SETS[:3])


def test_daily_keeps_the_newest_set_of_each_of_the_last_days():
    kept = retained(SETS, Retention(keep=1, daily=3))

    assert sorted(kept) == ["2026-11-27-140000", "2026-11-28-140000", "2026-11-29-140000"]


def test_weekly_keeps_the_newest_set_of_each_iso_week():
    kept = retained(SETS, Retention(keep=1, weekly=3))

    # Sunday 2026-11-29 ends ISO week 48; weeks 47 and 46 end on 11-22 and 11-15.
    assert sorted(kept) == ["2026-11-15-140000", "2026-11-22-140000", "2026-11-29-140000"]


def test_monthly_keeps_the_newest_set_of_each_month():
    kept = retained(SETS, Retention(keep=1, monthly=2))

    assert sorted(kept) == ["2026-10-31-140000", "2026-11-29-140000"]


def test_buckets_add_to_each_other():
    kept = retained(SETS, Retention(keep=2, daily=2, monthly=2))

    assert sorted(kept) == ["2026-10-31-140000", "2026-11-28-140000", "2026-11-29-020000", "2026-11-29-140000"]


def test_days_are_days_of_the_server_time_zone():
    late = [complete("2026-11-29 23:30"), complete("2026-11-29 22:30")]  # the same UTC day, two Berlin days

    with timezone.override(ZoneInfo("Europe/Berlin")):
        assert retained(late, Retention(keep=1, daily=2)) == names(late)
    with override_settings(TIME_ZONE="UTC"):
        assert retained(late, Retention(keep=1, daily=2)) == names(late[:1])


def test_only_complete_sets_count():
    unfinished = BackupSet(name="2026-11-30-020000", created=SETS[0].created + timedelta(days=1), status="incomplete")

    assert retained([unfinished, *SETS], Retention(keep=1)) == names(SETS[:1])


def test_doomed_lists_whole_sets_manifest_first_and_incomplete_ones_unless_protected(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    for stamp in ("2026-11-26-020000", "2026-11-27-020000"):
        stored_set(storage, stamp)
    stored_set(storage, "2026-11-28-020000", manifest=False, pending=True)
    sets = list_sets(storage)

    gone = doomed(sets, Retention(keep=1))
    protected = doomed(sets, Retention(keep=1), protect={"2026-11-28-020000"})

    assert gone == [
        "InvenTree-db-2026-11-28-020000.sqlite3.gz",
        "InvenTree-media-2026-11-28-020000.pending.metadata",
        "InvenTree-media-2026-11-28-020000.tar.gz",
        "InvenTree-media-2026-11-26-020000.manifest.metadata",
        "InvenTree-db-2026-11-26-020000.sqlite3.gz",
        "InvenTree-media-2026-11-26-020000.tar.gz",
    ]
    assert protected == gone[3:]


def test_doomed_keeps_an_unfinished_set_whose_writer_may_still_run(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    stored_set(storage, "2026-11-26-020000")
    here = {"host": socket.gethostname(), "pid": os.getpid()}  # running: this very process
    stored_set(storage, "2026-11-27-020000", manifest=False, pending=True, writer=here)
    stored_set(storage, "2026-11-28-020000", manifest=False, pending=True, writer={"host": "elsewhere", "pid": 1})
    stored_set(storage, "2026-11-29-020000", manifest=False, pending=True, writer={})  # says nothing
    sets = list_sets(storage)

    assert doomed(sets, Retention(keep=1)) == []
    assert [name for name, _why in held_back(sets)] == ["2026-11-29-020000", "2026-11-28-020000", "2026-11-27-020000"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: bytes([raw[0] ^ 0x01]) + raw[1:],  # one flipped bit: the opening brace
        lambda raw: raw.replace(MANIFEST_FORMAT.encode(), b"backup_app/2"),  # a newer format, after a downgrade
    ],
    ids=["flipped-byte", "newer-format"],
)
def test_doomed_never_deletes_a_set_whose_manifest_cannot_be_read(tmp_path, damage):
    storage = FileSystemStorage(location=tmp_path)
    for stamp in ("2026-11-26-020000", "2026-11-27-020000", "2026-11-28-020000"):
        stored_set(storage, stamp)
    manifest = tmp_path / Naming().manifest_name("2026-11-26-020000")
    manifest.write_bytes(damage(manifest.read_bytes()))
    sets = list_sets(storage)

    gone = doomed(sets, Retention(keep=1))

    assert not any("2026-11-26" in name for name in gone)
    assert [name for name in gone if name.endswith(".manifest.metadata")] == [
        "InvenTree-media-2026-11-27-020000.manifest.metadata"
    ]
    assert held_back(sets) == [("2026-11-26-020000", "its manifest cannot be read")]


def test_doomed_keeps_the_newest_complete_set_whatever_the_retention(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    stored_set(storage, "2026-11-26-020000")
    stored_set(storage, "2026-11-27-020000")

    assert doomed(list_sets(storage), Retention(keep=0)) == [
        "InvenTree-media-2026-11-26-020000.manifest.metadata",
        "InvenTree-db-2026-11-26-020000.sqlite3.gz",
        "InvenTree-media-2026-11-26-020000.tar.gz",
    ]


def test_doomed_keeps_legacy_files_unless_asked_then_the_newest_of_each_kind(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    naming = Naming()
    for stamp in ("2026-11-26-020000", "2026-11-27-020000", "2026-11-28-020000"):
        storage.save(naming.db_name(stamp, "default", "sqlite3.gz"), ContentFile(b"dump"))
        storage.save(naming.db_name(stamp, "default", "sqlite3.gz.metadata"), ContentFile(b"{}"))
    storage.save(naming.media_name("2026-11-26-020001", "tar.gz"), ContentFile(b"tar"))
    sets = list_sets(storage)

    assert doomed(sets, Retention(keep=1)) == []
    assert doomed(sets, Retention(keep=1), include_legacy=True) == [
        "InvenTree-db-2026-11-27-020000.sqlite3.gz",
        "InvenTree-db-2026-11-27-020000.sqlite3.gz.metadata",
        "InvenTree-db-2026-11-26-020000.sqlite3.gz",
        "InvenTree-db-2026-11-26-020000.sqlite3.gz.metadata",
    ]


# --- sets found by their manifests, whatever the templates were --------------------------------------------------

#: Templates and date format a site used before changing them.
OLD = Naming(
    db_template="{servername}-{databasename}-{datetime}.{extension}",
    media_template="files-{datetime}.{extension}",
    date_format="%Y%m%dT%H%M%S",
)


def manifest_set(
    storage, naming: Naming, stamp: str, *, missing: bool = False, sidecar: bool = False
) -> dict[str, str]:
    """A set as ``write_set`` stores it (gzip + gpg dump of 'default', gzip archive), named by ``naming``;
    ``sidecar``: with the dump's .metadata sidecar, named in the manifest's database entry."""
    db, media = naming.db_name(stamp, "default", "sqlite3.gz.gpg"), naming.media_name(stamp, "tar.gz")
    for name in (db,) if missing else (db, media):
        storage.save(name, ContentFile(b"data"))
    database = {"alias": "default", "file": db}
    if sidecar:
        raw = b'{"engine": "django.db.backends.sqlite3"}\n'
        storage.save(db + ".metadata", ContentFile(raw))
        database.update(metadata=db + ".metadata", metadata_size=len(raw), metadata_sha256=sha256(raw).hexdigest())
    created = naming.stamp_to_datetime(stamp).astimezone(UTC).isoformat()
    entry = {"size": 4, "sha256": "1" * 64}
    files = [
        {**entry, "name": db, "kind": "db", "compression": "gzip", "encrypted": True, "database": "default"},
        {**entry, "name": media, "kind": "media", "compression": "gzip", "encrypted": False, "database": None},
    ]
    write_json(
        storage,
        naming.manifest_name(stamp),
        {
            "format": MANIFEST_FORMAT,
            "name": stamp,
            "created": created,
            "databases": [database],
            "media": {"file": media},
            "files": files,
        },
    )
    return {"db": db, "media": media, "manifest": naming.manifest_name(stamp)}


def test_a_set_written_under_other_templates_and_date_format_is_listed_complete_from_its_manifest(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    old = manifest_set(storage, OLD, "20261127T020000")
    manifest_set(storage, Naming(), "2026-11-28-020000")

    sets = list_sets(storage)

    assert [(s.name, s.status) for s in sets] == [("2026-11-28-020000", "complete"), ("20261127T020000", "complete")]
    older = sets[1]
    assert older.created == datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    assert {f.kind: f.name for f in older.files} == old
    [dump] = older.db_files
    assert (dump.database, dump.compression, dump.encrypted, dump.sha256) == ("default", "gzip", True, "1" * 64)
    assert (older.media_file.compression, older.media_file.encrypted) == ("gzip", False)
    assert older.problems == []


def test_a_set_under_other_templates_missing_a_file_is_incomplete_and_names_it(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    old = manifest_set(storage, OLD, "20261127T020000", missing=True)

    [bset] = list_sets(storage)

    assert (bset.name, bset.status, bset.problems) == ("20261127T020000", "incomplete", [f"missing: {old['media']}"])


def test_files_without_a_manifest_are_found_by_the_current_templates_only(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    storage.save(OLD.db_name("20261127T020000", "default", "sqlite3.gz"), ContentFile(b"stock"))
    storage.save(Naming().db_name("2026-11-28-020000", "default", "sqlite3.gz"), ContentFile(b"stock"))

    assert [(s.name, s.status) for s in list_sets(storage)] == [("2026-11-28-020000", "legacy")]


def test_a_file_that_only_ends_like_a_manifest_makes_no_set(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    storage.save("notes.manifest.metadata", ContentFile(b"not json"))
    storage.save("other.manifest.metadata", ContentFile(b'{"format": "someone-else/1"}'))

    assert list_sets(storage) == []


def test_retention_deletes_a_set_of_older_templates_whole_manifest_first(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    old = manifest_set(storage, OLD, "20261127T020000")
    manifest_set(storage, Naming(), "2026-11-28-020000")

    gone = doomed(list_sets(storage), Retention(keep=1))

    assert (gone[0], sorted(gone[1:])) == (old["manifest"], sorted([old["db"], old["media"]]))


def test_the_sidecar_a_manifest_names_is_a_file_of_its_set_listed_and_pruned_with_it(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    old = manifest_set(storage, OLD, "20261127T020000", sidecar=True)  # the current templates do not parse it
    manifest_set(storage, Naming(), "2026-11-28-020000")
    sets = list_sets(storage)

    [sidecar] = sets[1].sidecars
    listed = next(f for f in sets[1].as_json()["files"] if f["name"] == old["db"] + ".metadata")
    gone = doomed(sets, Retention(keep=1))

    assert (sets[1].status, sidecar.of, sidecar.size) == (
        "complete",
        old["db"],
        (tmp_path / sidecar.name).stat().st_size,
    )
    assert (listed["kind"], listed["sidecar_of"], listed["sha256"]) == ("manifest", old["db"], sidecar.sha256)
    assert sets[1].size == sum(p.stat().st_size for p in tmp_path.iterdir() if "20261127T020000" in p.name)
    assert sorted(gone) == sorted([old["manifest"], old["db"], old["media"], old["db"] + ".metadata"])


def test_a_set_whose_named_sidecar_is_gone_is_incomplete(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    old = manifest_set(storage, Naming(), "2026-11-27-020000", sidecar=True)
    (tmp_path / (old["db"] + ".metadata")).unlink()

    [bset] = list_sets(storage)

    assert (bset.status, bset.problems) == ("incomplete", [f"missing: {old['db']}.metadata"])


def test_a_sidecar_its_manifest_does_not_name_goes_with_its_dump(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    old = manifest_set(storage, OLD, "20261127T020000")  # a set written before manifests named sidecars
    storage.save(old["db"] + ".metadata", ContentFile(b"{}"))
    manifest_set(storage, Naming(), "2026-11-28-020000")
    sets = list_sets(storage)

    assert [(f.name, f.of) for f in sets[1].sidecars] == [(old["db"] + ".metadata", old["db"])]
    assert old["db"] + ".metadata" in doomed(sets, Retention(keep=1))


def test_a_manifest_naming_files_of_another_set_does_not_get_them_deleted(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    good = manifest_set(storage, Naming(), "2026-11-28-020000")
    storage.save("notes.txt", ContentFile(b"not a backup"))
    liar = Naming().manifest_name("2026-11-27-020000")
    write_json(
        storage,
        liar,
        {
            "format": MANIFEST_FORMAT,
            "name": "2026-11-27-020000",
            "created": "2026-11-27T02:00:00+00:00",
            "files": [{"name": good["db"], "kind": "db"}, {"name": "notes.txt", "kind": "media"}],
        },
    )

    sets = list_sets(storage)
    gone = doomed(sets, Retention(keep=1))

    assert [(s.name, s.status) for s in sets] == [
        ("2026-11-28-020000", "complete"),
        ("2026-11-27-020000", "incomplete"),
    ]
    assert gone == [liar]


def test_a_manifest_claiming_another_stamp_than_its_name_is_not_believed(tmp_path):
    storage = FileSystemStorage(location=tmp_path)
    good = manifest_set(storage, Naming(), "2026-11-28-020000")
    liar = Naming().manifest_name("2026-11-27-020000")
    write_json(storage, liar, {"format": MANIFEST_FORMAT, "name": "2026-11-28-020000", "files": []})

    sets = list_sets(storage)

    assert [(s.name, s.status) for s in sets] == [
        ("2026-11-28-020000", "complete"),
        ("2026-11-27-020000", "incomplete"),
    ]
    assert {f.name for f in sets[0].files} == set(good.values())
    assert doomed(sets, Retention(keep=1)) == [liar]
