"""Media: a restore run as root gives back every file with its bytes, mode and mtime (to the second), keeps the
owner and group of the files it replaces, gives new files and folders the media folder's owner, keeps empty
folders and folder modes; the walker never follows a link, never blocks on a FIFO, records what it skipped,
and refuses a name that could not be put back; a restore never writes through a link out of MEDIA_ROOT."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import make_site
from reference import differences, file_stats

#: The site's user and group (the media folder's owner), and another user who owns some files.
UID, GID = 4242, 4243
OTHER = 4244

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs as root over files of other users (chown)")


@pytest.fixture
def site(tmp_path):
    site = make_site(tmp_path / "site")
    site.manage("migrate", "--noinput", "-v0")
    return site


def build(media: Path) -> None:
    """Modes 0600/0640/0755/0644, two owners, nested folders with their own modes, an empty folder, a link
    to a file inside and a FIFO; mtimes far in the past."""
    (media / "private").mkdir(mode=0o750)
    (media / "private" / "deep").mkdir(mode=0o711)
    (media / "empty").mkdir(mode=0o700)
    files = {
        "private/key.pem": (0o600, UID),
        "private/deep/report.pdf": (0o640, OTHER),
        "tool.sh": (0o755, UID),
        "photo.jpg": (0o644, UID),
        "theirs.txt": (0o664, OTHER),
    }
    for i, (name, (mode, uid)) in enumerate(files.items()):
        path = media / name
        path.write_bytes(os.urandom(100 + i))
        os.chown(path, uid, GID)
        path.chmod(mode)
        os.utime(path, (1_600_000_000 + i, 1_600_000_000 + i * 1000))
    (media / "link.jpg").symlink_to("photo.jpg")
    os.mkfifo(media / "pipe")
    for folder in (media, media / "private", media / "private" / "deep", media / "empty"):
        os.chown(folder, UID, GID)
    for link in (media / "link.jpg", media / "pipe"):
        os.chown(link, UID, GID, follow_symlinks=False)
    (media / "private").chmod(0o750)  # mkdir's mode passes through the umask


def damage(media: Path) -> None:
    (media / "private" / "key.pem").unlink()
    (media / "private" / "deep" / "report.pdf").write_bytes(b"changed")
    (media / "theirs.txt").chmod(0o600)
    os.utime(media / "tool.sh")
    (media / "photo.jpg").write_bytes(b"x")
    (media / "empty").rmdir()
    (media / "private" / "deep").chmod(0o755)


def test_restore_as_root_gives_back_bytes_modes_mtimes_owners_and_folders(site):
    build(site.media)
    site.invoke("backup", "--skip-db", timeout=120)
    backed_up = file_stats(site.media)
    damage(site.media)
    assert file_stats(site.media) != backed_up

    site.invoke("restore", "--skip-db", timeout=120)

    found = file_stats(site.media)
    assert found == backed_up, differences(backed_up, found)


def test_rollback_gives_back_the_replaced_files_exactly(site):
    build(site.media)
    site.invoke("backup", "--skip-db", timeout=120)
    damage(site.media)
    (site.media / "empty").mkdir()
    os.chown(site.media / "empty", UID, GID)
    (site.media / "empty").chmod(0o700)
    replaced = file_stats(site.media)

    site.invoke("restore", "--skip-db", timeout=120)
    site.invoke("rollback", timeout=120)

    found = file_stats(site.media)
    assert found == replaced, differences(replaced, found)


def test_links_and_special_files_are_skipped_and_recorded_in_the_manifest(site, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not media")
    (site.media / "inside.txt").write_text("media")
    (site.media / "elsewhere").symlink_to(outside)
    (site.media / "link.txt").symlink_to("inside.txt")
    os.mkfifo(site.media / "pipe")

    result = site.invoke("backup", "--skip-db", timeout=120)

    [manifest] = sorted(site.backups.glob("*manifest*"))
    media = json.loads(manifest.read_text())["media"]
    assert media["files"] == 1
    assert media["skipped"] == [
        {"name": "elsewhere", "kind": "symlink"},
        {"name": "link.txt", "kind": "symlink"},
        {"name": "pipe", "kind": "fifo"},
    ]
    assert "skipped media entry 'pipe' (fifo)" in result.stderr


def test_a_restore_never_writes_through_a_link_out_of_the_media_folder(site, tmp_path):
    (site.media / "docs").mkdir()
    (site.media / "docs" / "a.txt").write_text("backed up")
    site.invoke("backup", "--skip-db", timeout=120)
    outside = tmp_path / "outside"
    outside.mkdir()
    (site.media / "docs" / "a.txt").unlink()
    (site.media / "docs").rmdir()
    (site.media / "docs").symlink_to(outside)

    result = site.invoke("restore", "--skip-db", check=False, timeout=120)

    assert result.returncode != 0
    assert "docs" in result.stderr and "symbolic link" in result.stderr and "nothing was changed" in result.stderr
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("mode", ["archive", "incremental"])
@pytest.mark.parametrize("name", ["back\\slash.txt", "C:notes.txt"], ids=["backslash", "drive-letter"])
def test_a_name_a_restore_would_refuse_is_a_backup_error(site, mode, name):
    (site.media / "fine.txt").write_text("fine")
    (site.media / name).write_text("a legal POSIX name that a restore refuses as a Windows path")

    result = site.invoke("backup", "--skip-db", check=False, extra_env={"INVENTREE_BACKUP_MEDIA_MODE": mode})

    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]  # the progress lines before it say what was started
    assert repr(name) in line and "a restore refuses" in line and "rename it" in line, result.stderr
    assert "Traceback" not in result.output
    assert site.sets() == [] or not site.sets()[0]["complete"]


def test_a_name_too_long_to_put_back_is_a_backup_error(site):
    # 40 nested folders of 100 bytes each, made relative to each other: a full path over the system's limit.
    fd = os.open(site.media, os.O_RDONLY)
    try:
        for _ in range(40):
            os.mkdir("d" * 100, dir_fd=fd)
            new = os.open("d" * 100, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
        os.close(os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)

    result = site.invoke("backup", "--skip-db", check=False, timeout=120)

    assert result.returncode != 0
    assert "too long to be restored" in result.stderr and "dddd" in result.stderr
    assert site.sets() == [] or not site.sets()[0]["complete"]
