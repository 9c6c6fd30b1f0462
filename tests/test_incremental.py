"""Incremental media sets (``backup_media_mode: incremental``): file contents stored once in packs the sets
share, a checksummed media index per set.

Real storages (a local folder and moto's S3 server), real kills.  Each test states one behaviour.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, export_public, gpg_agents
from reference import differences, file_stats
from test_listing_requests import _admin_client, _requests_since
from test_remote_storage import BUCKET, point_at, s3_server, sftp_server, workdir  # noqa: F401 - fixtures

from backup_app.errors import RestoreError
from backup_app.incremental import INDEX_FORMAT, PACK_FOLDER, REPACK_FOLDER, parse_index

PRUNE = (
    "from backup_app.actions import prune; from backup_app.sets import Retention; "
    "print(prune.run(prune.PruneOptions(retention=Retention(keep={keep}))).deleted)"
)


def incremental(site):
    site.env["INVENTREE_BACKUP_MEDIA_MODE"] = "incremental"
    return site


@pytest.fixture
def site(sqlite_site):
    return incremental(sqlite_site)


def write_media(media: Path, small: int = 300, big: int = 4, big_mb: float = 2.5) -> None:
    """Many small text files (thumbnails, notes) and a few large incompressible ones (photos, PDFs)."""
    (media / "notes" / "deep").mkdir(parents=True, exist_ok=True)
    (media / "photos").mkdir(exist_ok=True)
    for i in range(small):
        (media / "notes" / ("deep" if i % 3 else "") / f"n{i:04}.txt").write_text(f"part {i} ✓\n" * (i % 50 + 1))
    (media / "notes" / "empty.txt").write_bytes(b"")
    for i in range(big):
        (media / "photos" / f"p{i}.jpg").write_bytes(os.urandom(int(big_mb * 1024 * 1024) + i))


def media_state(media: Path) -> dict[str, tuple]:
    """Every file: SHA-256, size, mode, mtime (ns), owner."""
    import hashlib

    state = {}
    for path in sorted(media.rglob("*")):
        if path.is_file() and not any(part.startswith(".backup-restore-") for part in path.parts):
            info = path.stat()
            state[path.relative_to(media).as_posix()] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                info.st_size,
                stat.S_IMODE(info.st_mode),
                info.st_mtime_ns,
                info.st_uid,
                info.st_gid,
            )
    return state


def stored(folder: Path) -> dict[str, int]:
    """Every file in a local backup folder (packs included) and its size."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def packs_on_disk(site) -> set[str]:
    folder = site.backups / PACK_FOLDER
    return {f"{PACK_FOLDER}/{p.name}" for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()


def manifests(site, folder: Path | None = None) -> list[dict]:
    """The manifests of the complete sets, newest first (in ``folder``: the backup folder as the server has it)."""
    found = []
    for entry in site.sets():
        if entry["complete"]:
            name = next(f["name"] for f in entry["files"] if f["kind"] == "manifest")
            found.append(json.loads(((folder or site.backups) / name).read_text()))
    return found


def media_size(media: Path) -> int:
    return sum(p.stat().st_size for p in media.rglob("*") if p.is_file())


def one_line_error(result) -> str:
    assert result.returncode != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def empty(media: Path) -> None:
    for path in sorted(media.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()


# --- writing: the second backup costs what changed ------------------------------------------------------


def test_the_default_media_mode_is_a_tar_archive(sqlite_site):
    write_media(sqlite_site.media, small=3, big=1)
    sqlite_site.invoke("backup")

    [media] = [f["name"] for f in sqlite_site.sets()[0]["files"] if f["kind"] == "media"]
    assert media.endswith(".tar.gz") and not (sqlite_site.backups / PACK_FOLDER).exists()


def test_a_second_backup_of_unchanged_media_writes_no_pack_and_almost_no_bytes(site):
    write_media(site.media)
    site.invoke("backup")
    first = stored(site.backups)

    site.invoke("backup")

    second = stored(site.backups)
    added = {name: size for name, size in second.items() if name not in first}
    assert not [name for name in added if name.startswith(PACK_FOLDER)]  # no pack
    assert [name for name in added if ".mediaindex" in name] and [n for n in added if n.endswith(".manifest.metadata")]
    index_and_manifest = sum(size for name, size in added.items() if ".sqlite3" not in name)
    assert index_and_manifest < media_size(site.media) * 0.01, (index_and_manifest, media_size(site.media))
    assert manifests(site)[0]["media"]["read_bytes"] == 0  # not one media byte read again


def test_unchanged_files_with_quotes_backslashes_and_control_characters_in_their_names_are_not_read_again(site):
    # (DEL and U+2028 are not printable: their index keys take the slow, exact way as the quotes do)
    for name in ('say "hi".txt', "new\nline.txt", "tab\t.txt", "Größe ✓.txt", "del\x7f.txt", "line\u2028sep.txt"):
        (site.media / name).write_text(name * 100)
    (site.media / os.fsdecode(b"latin-1 \xe9.txt")).write_text("not UTF-8")  # a name that is not UTF-8
    site.invoke("backup")

    site.invoke("backup")

    assert manifests(site)[0]["media"]["read_bytes"] == 0
    expected = media_state(site.media)
    empty(site.media)
    site.invoke("restore", "--skip-db")
    assert media_state(site.media) == expected


def test_a_changed_file_is_the_only_media_stored_again(site):
    write_media(site.media)
    site.invoke("backup")
    (site.media / "photos" / "p1.jpg").write_bytes(os.urandom(2 * 1024 * 1024))
    packs_before = packs_on_disk(site)

    site.invoke("backup")

    [new_pack] = packs_on_disk(site) - packs_before
    newest = manifests(site)[0]["media"]
    assert newest["read_bytes"] == 2 * 1024 * 1024 and newest["reused_files"] == newest["files"] - 1
    assert 2 * 1024 * 1024 <= (site.backups / new_pack).stat().st_size < 2 * 1024 * 1024 + 4096


def test_a_large_file_that_grew_at_its_end_stores_only_its_last_chunk_again(site):
    big = site.media / "logs" / "big.log"
    big.parent.mkdir()
    big.write_bytes(os.urandom(10 * 1024 * 1024))  # chunks of 4 + 4 + 2 MiB
    site.invoke("backup")
    packs_before = packs_on_disk(site)
    with big.open("ab") as fh:
        fh.write(os.urandom(100 * 1024))

    site.invoke("backup")

    assert manifests(site)[0]["media"]["read_bytes"] == big.stat().st_size  # read whole to find what changed
    new = sum((site.backups / name).stat().st_size for name in packs_on_disk(site) - packs_before)
    assert 2 * 1024 * 1024 < new < 2 * 1024 * 1024 + 200 * 1024, new  # the last chunk only, not 10 MiB
    expected = media_state(site.media)
    empty(site.media)
    site.invoke("restore", "--skip-db")
    assert media_state(site.media) == expected


def test_identical_contents_are_stored_once(site):
    blob = os.urandom(3 * 1024 * 1024)
    for i in range(5):
        (site.media / f"copy{i}.bin").write_bytes(blob)

    site.invoke("backup")

    assert sum(stored(site.backups / PACK_FOLDER).values()) < len(blob) + 4096


def test_a_renamed_file_is_stored_as_a_reference_to_its_old_pack_and_restores(site):
    write_media(site.media, small=10, big=1)
    site.invoke("backup")
    (site.media / "photos" / "extra.jpg").write_bytes(os.urandom(1024 * 1024))
    site.invoke("backup")  # the photo in a pack of its own, which only its line names
    os.rename(site.media / "photos" / "extra.jpg", site.media / "photos" / "renamed.jpg")  # same bytes, new path
    packs_before = packs_on_disk(site)

    site.invoke("backup")

    assert packs_on_disk(site) == packs_before  # read and hashed, but its blob is already stored
    newest = manifests(site)[0]["media"]
    assert newest["read_bytes"] == (site.media / "photos" / "renamed.jpg").stat().st_size
    expected = media_state(site.media)
    empty(site.media)
    site.invoke("restore", "--skip-db")
    assert media_state(site.media) == expected


def test_a_file_whose_mode_changed_is_not_read_and_comes_back_with_the_new_mode(site):
    write_media(site.media, small=10, big=1)
    site.invoke("backup")
    os.chmod(site.media / "photos" / "p0.jpg", 0o600)

    site.invoke("backup")

    assert manifests(site)[0]["media"]["read_bytes"] == 0
    expected = media_state(site.media)
    empty(site.media)
    site.invoke("restore", "--skip-db")
    assert media_state(site.media) == expected


def test_a_media_folder_named_like_the_pack_folder_backs_up_and_restores(site):
    # A path is not a pack name: a site's own "media-packs/..." file must not be read as one of the set's packs.
    (site.media / PACK_FOLDER).mkdir()
    (site.media / PACK_FOLDER / "report.pdf").write_bytes(os.urandom(64 * 1024))
    write_media(site.media, small=5, big=0)
    site.invoke("backup")
    (site.media / "notes" / "new.txt").write_text("new")
    site.invoke("backup")
    expected = media_state(site.media)
    empty(site.media)

    site.invoke("restore", "--skip-db")

    assert media_state(site.media) == expected


def test_an_encrypting_host_without_the_secret_key_backs_up_incrementally(site, gpg_home, tmp_path):
    public_only = tmp_path / "public-only"
    export_public(gpg_home, public_only)
    site.env.update({"INVENTREE_BACKUP_GPG_RECIPIENT": gpg_home.email, "INVENTREE_BACKUP_GPG_HOME": str(public_only)})
    write_media(site.media, small=20, big=2)
    site.invoke("backup", "--encrypt")
    packs = packs_on_disk(site)
    assert packs and all(name.endswith(".pack.gz.gpg") for name in packs)

    site.invoke("backup", "--encrypt")

    assert packs_on_disk(site) == packs
    assert manifests(site)[0]["media"]["read_bytes"] == 0
    expected = media_state(site.media)
    empty(site.media)
    site.invoke("restore", "--skip-db", extra_env={"INVENTREE_BACKUP_GPG_HOME": str(gpg_home.path)})
    assert media_state(site.media) == expected
    assert gpg_agents(public_only) == []  # neither the backups in that home nor the test's key import left one


# --- restoring ------------------------------------------------------------------------------------------


def test_restoring_an_incremental_set_into_an_emptied_media_folder_is_exact(site):
    write_media(site.media)
    os.chmod(site.media / "photos" / "p0.jpg", 0o640)
    site.invoke("backup")
    (site.media / "notes" / "n0001.txt").write_text("changed")
    site.invoke("backup")  # a set whose packs are mostly the first one's
    expected = media_state(site.media)
    empty(site.media)

    site.invoke("restore", "--skip-db")

    assert media_state(site.media) == expected


def test_folders_come_back_with_their_modes_and_links_and_fifos_are_skipped_and_listed(site):
    write_media(site.media, small=5, big=0)
    (site.media / "empty" / "inner").mkdir(parents=True)
    os.chmod(site.media / "empty", 0o750)
    (site.media / "link.txt").symlink_to("/etc/hostname")
    os.mkfifo(site.media / "pipe")
    site.invoke("backup")
    skipped = manifests(site)[0]["media"]["skipped"]
    for special in ("link.txt", "pipe"):
        (site.media / special).unlink()
    expected = media_state(site.media)
    empty(site.media)

    site.invoke("restore", "--skip-db")

    assert sorted(s["name"] for s in skipped) == ["link.txt", "pipe"]
    assert media_state(site.media) == expected
    assert (site.media / "empty" / "inner").is_dir()
    assert stat.S_IMODE((site.media / "empty").stat().st_mode) == 0o750


def test_a_restore_brings_back_changed_and_deleted_files_and_keeps_new_ones(site):
    write_media(site.media, small=20, big=1)
    site.invoke("backup")
    expected = media_state(site.media)
    (site.media / "notes" / "n0003.txt").write_text("changed since")
    (site.media / "photos" / "p0.jpg").unlink()
    (site.media / "new.txt").write_text("made after the backup")

    site.invoke("restore", "--skip-db")

    now = media_state(site.media)
    assert {k: v for k, v in now.items() if k != "new.txt"} == expected and "new.txt" in now


def test_restore_and_rollback_of_an_incremental_set_put_the_media_back(site):
    write_media(site.media, small=20, big=1)
    site.invoke("backup")
    (site.media / "notes" / "n0003.txt").write_text("changed since")
    before_restore = media_state(site.media)
    site.invoke("restore", "--skip-db")

    site.invoke("rollback")

    assert media_state(site.media) == before_restore


def test_every_backup_on_s3_after_the_first_uploads_no_pack(sqlite_site, s3_server):  # noqa: F811
    site = incremental(sqlite_site)
    prefix = f"i20-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    point_at(site, s3_server, prefix)
    write_media(site.media)
    site.invoke("backup")
    first = set(s3_server.names(prefix))

    site.invoke("backup")

    added = set(s3_server.names(prefix)) - first
    # The dump (and its sidecar), the index and the manifest: no pack.
    assert added and not any(name.startswith(PACK_FOLDER) for name in added), added
    assert len(added) == len(set(first) - {n for n in first if n.startswith(PACK_FOLDER)}), (added, first)
    expected = media_state(site.media)
    empty(site.media)
    site.invoke("restore", "--skip-db")
    assert media_state(site.media) == expected
    site.invoke("verify", "--read-data")


NEEDED_PACKS = (
    "import json; from backup_app.sets import list_sets; from backup_app.storage import backup_storage; "
    "print(json.dumps(sorted({p for s in list_sets(backup_storage()) for p in s.packs})))"
)


@pytest.mark.parametrize("backend", ["s3", "sftp"])
def test_on_a_remote_storage_backups_upload_only_new_packs_and_prune_deletes_only_unreferenced_ones(
    sqlite_site, request, backend
):
    remote = request.getfixturevalue(f"{backend}_server")
    site = incremental(sqlite_site)
    prefix = f"i20-{backend}-{uuid.uuid4().hex[:8]}"
    point_at(site, remote, prefix)

    def names() -> set[str]:
        if remote.home is None:  # S3: the listing of every key under the prefix
            return set(remote.names(prefix))
        folder = remote.home / prefix  # SFTP: the server's folder, subfolders too
        return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}

    def packs() -> set[str]:
        return {name for name in names() if name.startswith(PACK_FOLDER + "/")}

    write_media(site.media, small=30, big=2)
    site.invoke("backup", "--skip-db")
    first = names()
    (site.media / "photos" / "extra.jpg").write_bytes(os.urandom(1024 * 1024))

    site.invoke("backup", "--skip-db")

    added = names() - first
    [new_pack] = [name for name in added if name.startswith(PACK_FOLDER)]  # the photo, nothing else
    assert sorted(name.rsplit(".", 2)[-2:][0] for name in added - {new_pack}) == ["manifest", "mediaindex"], added
    with_photo = media_state(site.media)
    empty(site.media)
    site.invoke("restore", "--skip-db")
    assert media_state(site.media) == with_photo
    (site.media / "photos" / "extra.jpg").unlink()
    site.invoke("backup", "--skip-db")  # the newest set does not need the photo's pack
    without_photo = media_state(site.media)
    before = packs()

    prune(site, keep=1)

    assert before - packs() == {new_pack}
    assert packs() == set(json.loads(site.manage("shell", "--no-imports", "-c", NEEDED_PACKS).stdout))
    empty(site.media)
    site.invoke("restore", "--skip-db")
    assert media_state(site.media) == without_photo


def test_an_incremental_set_exports_as_a_plain_tar_of_every_file(site, tmp_path):
    import hashlib
    import tarfile

    write_media(site.media, small=20, big=1)
    site.invoke("backup")
    expected = {name: state[0] for name, state in media_state(site.media).items()}

    site.invoke("backup-export", "--output", str(tmp_path / "media.tar.gz"))

    with tarfile.open(tmp_path / "media.tar.gz") as tar:
        found = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar if m.isfile()}
    assert found == expected


# --- verify ---------------------------------------------------------------------------------------------


def corrupt_one_pack(site) -> str:
    pack = sorted(packs_on_disk(site), key=lambda n: (site.backups / n).stat().st_size)[-1]
    path = site.backups / pack
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return pack


def test_a_corrupted_pack_is_found_by_verify_read_data_in_one_line(site):
    write_media(site.media, small=10, big=2)
    site.invoke("backup")
    pack = corrupt_one_pack(site)

    line = one_line_error(site.manage("backup_verify", "--read-data", "--quiet", check=False))

    assert pack in line and "damaged" in line


def test_a_missing_pack_is_found_by_a_quick_verify(site):
    write_media(site.media, small=10, big=2)
    site.invoke("backup")
    pack = sorted(packs_on_disk(site))[0]
    (site.backups / pack).unlink()

    line = one_line_error(site.manage("backup_verify", "--quiet", check=False))

    assert pack in line and "missing" in line


def test_a_restore_from_a_corrupted_pack_changes_nothing(site):
    write_media(site.media, small=10, big=2)
    site.invoke("backup")
    corrupt_one_pack(site)
    (site.media / "notes" / "n0001.txt").write_text("live, after the backup")
    (site.media / "photos" / "p0.jpg").unlink()
    live = media_state(site.media)

    line = one_line_error(site.manage("backup_restore", "--skip-db", "--quiet", check=False))

    assert "damaged" in line and "nothing was changed" in line
    assert media_state(site.media) == live


# --- retention ------------------------------------------------------------------------------------------


def prune(site, keep: int, **kwargs):
    return site.manage("shell", "--no-imports", "-c", PRUNE.format(keep=keep), **kwargs)


def test_prune_keeps_every_pack_a_kept_set_needs_and_deletes_the_rest(site):
    write_media(site.media, small=30, big=1)
    site.invoke("backup")
    for _ in range(2):  # a photo added, then replaced: each version in a pack of its own
        (site.media / "photos" / "extra.jpg").write_bytes(os.urandom(2 * 1024 * 1024))
        site.invoke("backup")
    expected = media_state(site.media)
    [newest, *older] = manifests(site)
    only_older = set().union(*(m["media"]["packs"] for m in older)) - set(newest["media"]["packs"])
    assert len(only_older) == 1  # the first version of the photo

    prune(site, keep=1, extra_env={"INVENTREE_BACKUP_MEDIA_REPACK_PERCENT": "0"})  # deleting only, no repack

    assert packs_on_disk(site) == set(newest["media"]["packs"])
    empty(site.media)
    site.invoke("restore", "--skip-db")
    assert media_state(site.media) == expected


def test_clean_dry_run_names_the_packs_the_prune_deletes_and_deletes_nothing(site):
    write_media(site.media, small=10, big=1)
    site.invoke("backup")
    (site.media / "photos" / "extra.jpg").write_bytes(os.urandom(1024 * 1024))
    site.invoke("backup")  # the only set that needs the photo's pack
    (site.media / "photos" / "extra.jpg").unlink()
    site.invoke("backup")
    [only_the_photo] = packs_on_disk(site) - set(manifests(site)[0]["media"]["packs"])
    before = stored(site.backups)
    keep_one = {"INVENTREE_BACKUP_KEEP": "1"}

    planned = json.loads(site.manage("backup_create", "--dry-run", "--clean", "--json", extra_env=keep_one).stdout)

    assert stored(site.backups) == before
    assert [name for name in planned["deleted"] if name.startswith(PACK_FOLDER)] == [only_the_photo]
    site.invoke("backup", "--clean", extra_env=keep_one)
    assert only_the_photo not in packs_on_disk(site)
    assert packs_on_disk(site) == set(before) & packs_on_disk(site)  # every other pack stayed


def test_restore_dry_run_of_an_incremental_set_reads_every_pack_and_changes_nothing(site):
    write_media(site.media, small=10, big=1)
    site.invoke("backup")
    (site.media / "notes" / "n0001.txt").write_text("changed after the backup")
    live = media_state(site.media)

    result = site.invoke("restore", "--skip-db", "--dry-run")

    assert media_state(site.media) == live
    assert "checks pass" in result.stdout and "packs read" in result.stdout, result.stdout
    pack = corrupt_one_pack(site)
    refused = site.invoke("restore", "--skip-db", "--dry-run", check=False)
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]  # the lines before it say what was checked
    assert "would be refused" in last and pack in last and "damaged" in last, refused.stderr
    assert media_state(site.media) == live


def test_prune_leaves_every_pack_when_a_manifest_cannot_be_read(site):
    write_media(site.media, small=10, big=1)
    site.invoke("backup")
    (site.media / "photos" / "extra.jpg").write_bytes(os.urandom(1024 * 1024))
    site.invoke("backup")  # the only set that needs the photo's pack
    (site.media / "photos" / "extra.jpg").unlink()
    site.invoke("backup")
    packs = packs_on_disk(site)
    assert packs - set(manifests(site)[0]["media"]["packs"])
    middle = sorted(site.backups.glob("*.manifest.metadata"))[1]
    middle.write_text("{not json")  # unreadable: its set might need any pack

    prune(site, keep=1)

    assert packs_on_disk(site) == packs


# --- the prune's local copies of the stored indexes (remote storages) -----------------------------------


def stored_indexes(site) -> dict[str, Path]:
    """The prune's local copies of stored media indexes (``backup_safety_dir/.media-index/<storage>.stored/``),
    by the SHA-256 each is named after."""
    found = {}
    for folder in (site.root / "safety" / ".media-index").glob("*.stored"):
        found.update({p.name: p for p in folder.iterdir()})
    return found


def index_requests(site, log: Path, prefix: str, keep: int) -> list[tuple[str, str]]:
    """The reads (HEAD, GET) of one prune (keeping ``keep`` sets) of a media index, from moto's request log."""
    offset = log.stat().st_size
    prune(site, keep=keep)
    return [r for r in _requests_since(log, offset, prefix) if ".mediaindex" in r[1] and r[0] in ("HEAD", "GET")]


def test_a_prune_on_s3_downloads_no_media_index_it_has_a_checked_copy_of(sqlite_site, s3_server, workdir):  # noqa: F811
    # Issue 20: every prune reads every kept set's index; before, on S3 a HEAD, a HEAD and a GET each, every night.
    site = incremental(sqlite_site)
    prefix = f"i20-cache-{uuid.uuid4().hex[:8]}"
    point_at(site, s3_server, prefix)
    log = workdir / "moto S3 server.log"
    write_media(site.media, small=10, big=1, big_mb=0.1)
    for i in range(2):
        (site.media / "photos" / "p0.jpg").write_bytes(os.urandom(50_000 + i))
        site.manage("backup_create", "--skip-db", "--quiet")

    kept = index_requests(site, log, prefix, keep=2)
    shutil.rmtree(site.root / "safety" / ".media-index")  # a new host, or the folder deleted
    downloads = index_requests(site, log, prefix, keep=2)
    print(f"prune of 2 sets: {len(kept)} index requests with the copies, {len(downloads)} without: {downloads}")
    assert kept == []  # each backup kept the index it uploaded
    assert [m for m, _p in downloads].count("GET") == 2 and len(downloads) <= 4, downloads  # each read once
    assert index_requests(site, log, prefix, keep=1) == []  # ... and kept

    [newest] = [s for s in site.sets() if s["complete"]]
    [index] = [f for f in newest["files"] if f["kind"] == "media"]
    assert list(stored_indexes(site)) == [index["sha256"]]  # pruned with the sets
    [copy] = stored_indexes(site).values()
    remote = _admin_client(s3_server).get_object(Bucket=BUCKET, Key=f"{prefix}/{index['name']}")["Body"].read()
    assert copy.read_bytes() == remote  # the stored bytes, as they are
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and stat.S_IMODE(copy.parent.stat().st_mode) == 0o700


def test_a_damaged_local_copy_of_an_encrypted_index_is_not_used_and_is_read_again(
    sqlite_site,
    s3_server,  # noqa: F811
    workdir,  # noqa: F811
    gpg_home,
):
    site = incremental(sqlite_site)
    prefix = f"i20-cache-{uuid.uuid4().hex[:8]}"
    point_at(site, s3_server, prefix)
    site.env.update({"INVENTREE_BACKUP_GPG_RECIPIENT": gpg_home.email, "INVENTREE_BACKUP_GPG_HOME": str(gpg_home.path)})
    write_media(site.media, small=10, big=1, big_mb=0.1)
    site.manage("backup_create", "--skip-db", "--encrypt", "--quiet")
    [copy] = stored_indexes(site).values()
    stored = copy.read_bytes()
    assert stored[0] & 0x80  # an OpenPGP packet: kept encrypted, never decrypted
    damaged = bytearray(stored)
    damaged[len(damaged) // 2] ^= 0xFF
    copy.write_bytes(bytes(damaged))

    downloads = index_requests(site, log=workdir / "moto S3 server.log", prefix=prefix, keep=1)

    assert [m for m, _p in downloads].count("GET") == 1, downloads
    assert copy.read_bytes() == stored


def repacked_on_disk(site) -> set[str]:
    folder = site.backups / REPACK_FOLDER
    return {f"{REPACK_FOLDER}/{p.name}" for p in folder.iterdir()} if folder.is_dir() else set()


def churned(site, *backup_args: str) -> dict[str, dict]:
    """Three sets: photos replaced in each, so that the first pack is mostly blobs only the first set needs.
    Returns each set's media state, by set name."""
    write_media(site.media, small=40, big=4, big_mb=1)  # one pack: notes and four photos
    states = {}
    for round in range(3):
        if round:
            for i in range(3):  # three of the four photos replaced
                # 400 KiB: the packs of the three (small: below a quarter of the 16 MiB target) and what the first
                # pack keeps add up to less than that quarter, so a prune keeping 2 sets repacks the first alone.
                (site.media / "photos" / f"p{i}.jpg").write_bytes(os.urandom(400 * 1024 + round))
        site.invoke("backup", "--skip-db", *backup_args)
        states[site.sets()[0]["name"]] = file_stats(site.media)
    return states


#: Restore every complete set, one after the other, into the emptied media folder, in one process (a
#: process per set cost most of the kill test's time); prints each set's reference.file_stats of the media.
RESTORE_EACH = """
import json, shutil, sys
from pathlib import Path
from django.conf import settings
sys.path.insert(0, "tests")
from reference import file_stats
from backup_app.actions import restore
from backup_app.sets import list_sets
from backup_app.storage import backup_storage
media = Path(settings.MEDIA_ROOT)
found = {}
for bset in [s for s in list_sets(backup_storage()) if s.complete]:
    for path in media.iterdir():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    restore.run(restore.RestoreOptions(media_file=bset.media_file.name, skip_db=True, safety=False))
    found[bset.name] = file_stats(media)
print(json.dumps(found))
"""


def restores_exactly(site, states: dict[str, dict]) -> None:
    """Every complete set restores into an emptied media folder to what it backed up (reference.file_stats:
    every file's bytes, mode, owner, mtime, every folder's mode)."""
    found = json.loads(site.manage("shell", "--no-imports", "-c", RESTORE_EACH).stdout.splitlines()[-1])
    assert found, "no complete set"
    for name, stats in found.items():
        assert stats == states[name], (name, differences(states[name], stats))


def test_a_pack_mostly_of_pruned_blobs_is_repacked_and_every_kept_set_restores_exactly(site):
    states = churned(site)
    [first_pack] = manifests(site)[-1]["media"]["packs"]
    before = sum(stored(site.backups).values())
    keep_two = {"INVENTREE_BACKUP_KEEP": "2"}

    planned = json.loads(site.manage("backup_create", "--dry-run", "--clean", "--json", extra_env=keep_two).stdout)
    assert planned["repacked"]["packs"] == [first_pack]  # a quarter of it is still needed
    below = {**keep_two, "INVENTREE_BACKUP_MEDIA_REPACK_PERCENT": "20"}
    planned = json.loads(site.manage("backup_create", "--dry-run", "--clean", "--json", extra_env=below).stdout)
    assert planned["repacked"]["packs"] == []  # backup_media_repack_percent: not less than 20 % is needed
    assert sum(stored(site.backups).values()) == before  # the dry run wrote and deleted nothing

    result = site.invoke("backup", "--skip-db", "--clean", extra_env=keep_two)  # the first set goes
    assert "Repacked 1 media packs into 1" in result.stderr, result.stderr
    assert first_pack not in packs_on_disk(site)
    [new_pack] = [p for p in repacked_on_disk(site) if ".pack" in p]
    [record] = [p for p in repacked_on_disk(site) if ".moves" in p]
    assert sum(stored(site.backups).values()) < before  # the pack shrank by the photos only the first set had
    kept = [s["name"] for s in site.sets()]
    states[kept[0]] = file_stats(site.media)
    restores_exactly(site, states)  # the set written before the repack finds its blobs through the record
    assert "blobs match" in site.invoke("verify", "--read-data", "--set", kept[-1]).stdout

    # The next backup reads nothing again and names the new pack, not the old one.
    site.invoke("backup", "--skip-db")
    newest = manifests(site)[0]["media"]
    assert newest["read_bytes"] == 0 and newest["new_packs"] == 0
    assert new_pack in newest["packs"] and first_pack not in newest["packs"]
    # Once no set needs the old pack's name, its move record goes; the new pack stays.
    site.invoke("backup", "--skip-db", "--clean", extra_env={"INVENTREE_BACKUP_KEEP": "1"})
    assert repacked_on_disk(site) == {new_pack}
    states[site.sets()[0]["name"]] = file_stats(site.media)
    restores_exactly(site, states)
    assert record not in repacked_on_disk(site)


# --- killed runs ----------------------------------------------------------------------------------------


def start(site, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        env={**site.env, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("where", ["local", "sftp"])
def test_a_backup_killed_while_writing_packs_leaves_no_complete_set_and_the_next_clean_no_orphan(site, request, where):
    folder = site.backups
    if where == "sftp":  # killed mid-upload: the pack being sent is a partial file on the server
        remote = request.getfixturevalue("sftp_server")
        prefix = f"i20-kill-{uuid.uuid4().hex[:8]}"
        point_at(site, remote, prefix)
        folder = remote.home / prefix

    def packs_on_disk(_site) -> set[str]:
        found = folder / PACK_FOLDER
        return {f"{PACK_FOLDER}/{p.name}" for p in found.iterdir()} if found.is_dir() else set()

    write_media(site.media, small=10, big=1)
    site.invoke("backup")
    kept = media_state(site.media)
    for i in range(12):  # 36 MiB of new contents: packs of 16 MiB
        (site.media / "photos" / f"new{i}.jpg").write_bytes(os.urandom(3 * 1024 * 1024))
    packs_before = packs_on_disk(site)

    running = start(site, "backup")
    deadline = time.monotonic() + 120
    while not (packs_on_disk(site) - packs_before):
        assert running.poll() is None and time.monotonic() < deadline, "the backup ended before writing a pack"
        time.sleep(0.005)
    os.killpg(running.pid, signal.SIGKILL)
    running.wait()
    deadline = time.monotonic() + 30  # every process of the run is gone (a child can outlive invoke a moment)
    while time.monotonic() < deadline:
        try:
            os.killpg(running.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)

    statuses = [s["status"] for s in site.sets()]
    assert statuses == ["incomplete", "complete"]
    assert packs_on_disk(site) - packs_before  # the killed run's packs are there, named by no manifest
    empty(site.media)
    site.invoke("restore", "--skip-db")
    assert media_state(site.media) == kept  # the restore took the complete set
    site.invoke("backup", "--clean")
    referenced = set().union(*(m["media"]["packs"] for m in manifests(site, folder)))
    assert packs_on_disk(site) == referenced
    assert [s["status"] for s in site.sets()] == ["complete", "complete"]
    # The next backup still finds everything stored (none of the killed run's packs): nothing read again.
    packs = packs_on_disk(site)
    site.invoke("backup")
    assert manifests(site, folder)[0]["media"]["read_bytes"] == 0 and packs_on_disk(site) == packs
    now = media_state(site.media)
    empty(site.media)
    site.invoke("restore", "--skip-db")
    assert media_state(site.media) == now


@pytest.mark.parametrize("step", [".manifest.metadata", ".pack.gz"], ids=["deleting-sets", "deleting-packs"])
def test_a_prune_killed_half_way_leaves_every_kept_set_restorable_exactly(site, tmp_path, step):
    site.env.update(
        {
            "PYTHONPATH": str(ROOT / "tests"),
            "INVENTREE_BACKUP_STORAGE": "pausing_storage.PausingStorage",
            "INVENTREE_BACKUP_OPTIONS": json.dumps({"location": str(site.backups)}),
        }
    )
    write_media(site.media, small=20, big=2)
    states = {}
    for i in range(4):
        (site.media / "photos" / f"p{i % 2}.jpg").write_bytes(os.urandom(1024 * 1024 + i))
        site.invoke("backup")
        states[site.sets()[0]["name"]] = media_state(site.media)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    env = {"BACKUP_TEST_DELETE_GATE": str(gate), "BACKUP_TEST_DELETE_GATE_SUFFIX": step}
    pruning = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", PRUNE.format(keep=1)],
        cwd=ROOT,
        env={**site.env, **env},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "gate.reached").exists():
        assert pruning.poll() is None and time.monotonic() < deadline, "the prune ended before the gate"
        time.sleep(0.05)
    os.killpg(pruning.pid, signal.SIGKILL)
    pruning.wait()

    complete = [s for s in site.sets() if s["complete"]]
    assert complete[0]["name"] == max(states)  # the kept set; older ones may still be there too
    for entry in complete:
        index = next(f["name"] for f in entry["files"] if f["kind"] == "media")
        empty(site.media)
        site.invoke("restore", "--skip-db", "--media-file", index)
        assert media_state(site.media) == states[entry["name"]], entry["name"]
    prune(site, keep=1)  # which also repacks the first pack: most of it only the deleted sets needed
    assert packs_on_disk(site) | repacked_on_disk(site) == needed_on_disk(site)


def test_encrypted_packs_are_repacked_encrypted_and_a_host_without_the_secret_key_keeps_them_whole(
    site, gpg_home, tmp_path
):
    public_only = tmp_path / "public-only"
    export_public(gpg_home, public_only)
    site.env.update({"INVENTREE_BACKUP_GPG_RECIPIENT": gpg_home.email, "INVENTREE_BACKUP_GPG_HOME": str(public_only)})
    states = churned(site, "--encrypt")
    [first_pack] = manifests(site)[-1]["media"]["packs"]
    keep_two = {"INVENTREE_BACKUP_KEEP": "2"}

    # A host that can only encrypt cannot read the indexes: every pack is kept whole, on one line.
    result = site.invoke("backup", "--skip-db", "--encrypt", "--clean", extra_env=keep_two)
    assert "Media packs kept whole where needed: the media index of set" in result.stderr, result.stderr
    assert first_pack in packs_on_disk(site) and not repacked_on_disk(site)

    # With the secret key the next prune repacks, into an encrypted pack and an encrypted move record.
    secret = {**keep_two, "INVENTREE_BACKUP_GPG_HOME": str(gpg_home.path)}
    result = site.invoke("backup", "--skip-db", "--encrypt", "--clean", extra_env=secret)
    assert "Repacked 1 media packs into 1" in result.stderr, result.stderr
    assert first_pack not in packs_on_disk(site)
    assert repacked_on_disk(site) and all(name.endswith(".gz.gpg") for name in repacked_on_disk(site))
    for entry in site.sets():
        states.setdefault(entry["name"], file_stats(site.media))
    site.env["INVENTREE_BACKUP_GPG_HOME"] = str(gpg_home.path)
    restores_exactly(site, states)
    assert gpg_agents(public_only) == []


REPACK_STEPS = [
    "prune:sets-deleted",  # the old sets deleted, no pack yet
    "prune:repack-written",  # the new pack written, not read back
    "prune:repack-verified",  # ... read back, no move record yet
    "prune:repack-recorded",  # ... its move records written and read back, the old pack still there
    "prune:repack-deleted",  # ... the old pack deleted, the prune not finished
]


def needed_on_disk(site) -> set[str]:
    """What the complete and incomplete sets' manifests need, worked out here from the files: each pack a
    manifest names if it is there, else its move record and the pack that record moves it into."""
    on_disk = packs_on_disk(site) | repacked_on_disk(site)
    by_id = {name.rsplit("/", 1)[-1].split(".", 1)[0]: name for name in on_disk if ".moves" not in name}
    needed = set()
    for manifest in site.backups.glob("*.manifest.metadata"):
        for pack in json.loads(manifest.read_text())["media"]["packs"]:
            ident = pack.rsplit("/", 1)[-1].split(".", 1)[0]
            while ident not in by_id:
                [record] = [n for n in on_disk if n.rsplit("/", 1)[-1].startswith(f"{ident}-to-")]
                needed.add(record)
                ident = record.rsplit("/", 1)[-1].split("-to-")[1].split(".", 1)[0]
            needed.add(by_id[ident])
    return needed


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_prune_killed_at_each_step_of_a_repack_leaves_every_kept_set_restorable_and_no_orphan(site, signum):
    states = churned(site)
    (site.media / "photos" / "new.jpg").write_bytes(os.urandom(3 * 1024 * 1024))  # a small pack of its own
    site.invoke("backup", "--skip-db")
    states[site.sets()[0]["name"]] = file_stats(site.media)
    # Keeping 2 sets, the repack moves what the first pack keeps and merges the two small packs the kept sets need.
    [first_pack, _gone, *small] = dict.fromkeys(p for m in reversed(manifests(site)) for p in m["media"]["packs"])
    planned = json.loads(
        site.manage("backup_create", "--dry-run", "--clean", "--json", extra_env={"INVENTREE_BACKUP_KEEP": "2"}).stdout
    )
    assert planned["repacked"]["packs"] == sorted([first_pack, *small]) and len(small) == 2, planned["repacked"]
    saved = site.root / "saved"
    shutil.copytree(site.backups, saved / "backup")
    for step in REPACK_STEPS:
        shutil.rmtree(site.backups)
        shutil.copytree(saved / "backup", site.backups)
        resume = site.root / f"resume-{step.replace(':', '-')}"
        killed = subprocess.Popen(
            [sys.executable, "manage.py", "backup_create", "--skip-db", "--clean"],
            cwd=ROOT,
            env={
                **site.env,
                "INVENTREE_BACKUP_KEEP": "2",
                "BACKUP_APP_PAUSE_AT": step,
                "BACKUP_APP_RESUME_FILE": str(resume),
            },
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        said = []
        for line in killed.stderr:
            said.append(line)
            if line.strip() == f"paused at {step}":
                break
        assert said and said[-1].strip() == f"paused at {step}", "".join(said)
        states[site.sets()[0]["name"]] = file_stats(site.media)  # the set the killed run wrote
        if signum == signal.SIGKILL:
            os.killpg(killed.pid, signal.SIGKILL)
        else:
            os.kill(killed.pid, signal.SIGTERM)  # as docker stop sends it
        rest = killed.stderr.read()
        assert killed.wait(timeout=120) == 128 + signum or signum == signal.SIGKILL, (step, rest)
        if signum == signal.SIGTERM:  # a handled signal: the move under way is undone, not left to the next prune
            assert not [n for n in repacked_on_disk(site) if ".moves" in n] or step == "prune:repack-deleted", step
        restores_exactly(site, states)
        assert packs_on_disk(site) | repacked_on_disk(site) >= needed_on_disk(site), step

        site.manage("shell", "--no-imports", "-c", PRUNE.format(keep=3))  # the next prune: no set goes
        assert packs_on_disk(site) | repacked_on_disk(site) == needed_on_disk(site), step  # no orphan
        restores_exactly(site, states)


# --- a crafted index is refused before anything is written -------------------------------------------------


def index_bytes(*entries: dict, files: int | None = None) -> io.BytesIO:
    lines = [json.dumps({"format": INDEX_FORMAT, "files": len(entries) if files is None else files})]
    lines += [json.dumps(e) for e in entries]
    return io.BytesIO(("\n".join(lines) + "\n").encode())


def entry(path: str, size: int = 3, chunks=None) -> dict:
    chunks = [["a" * 64, "media-packs/x.pack.gz", 0, size]] if chunks is None else chunks
    return {"path": path, "size": size, "mode": 0o644, "mtime_ns": 0, "chunks": chunks}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([entry("../outside.txt")], "outside the media folder"),
        ([entry("/etc/passwd")], "absolute or unsafe path"),
        ([entry("a.txt"), entry("a.txt")], "twice"),
        ([entry("a.txt", size=5, chunks=[["a" * 64, "media-packs/x.pack.gz", 0, 3]])], "do not add up"),
        ([entry("a.txt", chunks=[["a" * 64, "media-packs/other.pack.gz", 0, 3]])], "does not name"),
    ],
    ids=["dot-dot", "absolute", "duplicate", "short-chunks", "unknown-pack"],
)
def test_a_crafted_media_index_is_refused(entries, message):
    with pytest.raises(RestoreError, match=message):
        parse_index(index_bytes(*entries), {"media-packs/x.pack.gz": {"size": 1, "sha256": "b" * 64}})


def test_an_index_whose_header_miscounts_its_files_is_refused():
    with pytest.raises(RestoreError, match="header says 2"):
        parse_index(index_bytes(entry("a.txt"), files=2), None)


STALE_STAGING = (
    "from backup_app.media import media_storage, remove_stale_staging; print(remove_stale_staging(media_storage()))"
)


def test_a_running_incremental_restores_staging_folder_stays_and_a_killed_ones_goes(site):
    """The staging folder carries its restore's pid (``.backup-restore-<pid>-…``, as an archive restore's
    does): cleaning up beside a running restore leaves it; once that restore is killed the next run removes it."""
    from test_interrupted import Held

    write_media(site.media, small=20, big=1)
    site.invoke("backup")
    held = Held(site, "restore:staged", "backup_restore", "--noinput", "--skip-db").paused("restore:staged")
    staging = [p.name for p in site.media.glob(".backup-restore-*")]
    assert len(staging) == 1, staging

    cleaned = site.manage("shell", "--no-imports", "-c", STALE_STAGING).stdout

    assert cleaned.strip() == "[]" and (site.media / staging[0]).is_dir(), cleaned
    assert staging[0].startswith(f".backup-restore-{held.proc.pid}-"), staging
    held.signal(signal.SIGKILL)
    held.proc.wait(timeout=60)
    done = site.invoke("rollback")
    assert f"Removed {staging[0]}, left in the media folder by an interrupted restore" in done.stderr, done.output
    assert list(site.media.glob(".backup-restore-*")) == []


def test_merging_moves_a_blob_once_even_when_a_merge_splits_at_the_pack_target(site):
    """Five small packs of 3.5 MiB (17.5 MiB: more than one 16 MiB pack) are merged; a later prune with a new small
    pack must not merge what the first merge wrote again (docs/incremental.md: "merging moves a blob once")."""
    photos = site.media / "photos"
    photos.mkdir(parents=True)
    for night in range(5):  # each backup's one pack: a new 3.5 MiB photo (incompressible), small
        (photos / f"n{night}.jpg").write_bytes(os.urandom(3 * 1024 * 1024 + 512 * 1024))
        site.invoke("backup", "--skip-db")
    written = packs_on_disk(site)
    assert len(written) == 5
    first = prune(site, keep=10)  # every set kept: nothing sparse, the five small packs merged
    assert not written & packs_on_disk(site), first.stderr
    merged = {n for n in repacked_on_disk(site) if ".pack" in n and ".moves" not in n}
    (photos / "n5.jpg").write_bytes(os.urandom(1024 * 1024))  # one more small pack
    site.invoke("backup", "--skip-db")

    second = prune(site, keep=10)
    assert merged <= repacked_on_disk(site), second.stdout + second.stderr  # none of them merged (moved) again
    assert packs_on_disk(site) | repacked_on_disk(site) == needed_on_disk(site)
    assert site.manage("backup_verify", "--read-data", check=False).returncode == 0


def test_a_small_pack_a_repack_wrote_is_not_merged_with_later_small_packs(site):
    """What a repack wrote is never merged, small or not (only repacked once sparse): a merged blob is never merged
    again, whatever the batches left small (docs/incremental.md)."""
    churned(site)
    prune(site, keep=2)  # the first pack, mostly pruned, repacked alone into a small new pack
    [written] = [n for n in repacked_on_disk(site) if ".pack" in n and ".moves" not in n]
    before = packs_on_disk(site)
    for night in range(2):  # two small packs of 2.5 MiB: together enough to merge
        (site.media / f"new{night}.jpg").write_bytes(os.urandom(5 * 512 * 1024))
        site.invoke("backup", "--skip-db")
    new = packs_on_disk(site) - before

    result = prune(site, keep=10)
    assert len(new) == 2 and not new & packs_on_disk(site), result.stderr  # the two new ones merged
    assert written in repacked_on_disk(site), result.stderr  # not moved again
    assert packs_on_disk(site) | repacked_on_disk(site) == needed_on_disk(site)
