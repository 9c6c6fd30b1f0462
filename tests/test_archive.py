"""Media archive members are checked before anything is written (backup_app.media, in process)."""

from __future__ import annotations

import io
import tarfile

import django
import pytest

django.setup()

from django.core.files.storage import FileSystemStorage  # noqa: E402

from backup_app.errors import RestoreError  # noqa: E402
from backup_app.media import STAGING_PREFIX, check_member, scan_archive, stage_archive  # noqa: E402


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def archive(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    raw.seek(0)
    return raw


def test_a_regular_file_gets_its_plain_relative_name():
    assert check_member(member("./parts//p1.bin")) == "parts/p1.bin"


def test_a_folder_is_passed_over():
    assert check_member(member("parts", tarfile.DIRTYPE)) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../escaped.txt", "points outside the media folder"),
        ("parts/../../escaped.txt", "points outside the media folder"),
        ("..", "points outside the media folder"),
        ("/etc/passwd", "absolute or unsafe path"),
        ("C:windows.txt", "absolute or unsafe path"),
        ("parts\\..\\x", "absolute or unsafe path"),
        ("nul\x00.txt", "absolute or unsafe path"),
    ],
)
def test_a_name_that_leaves_the_media_folder_is_refused(name, why):
    with pytest.raises(RestoreError, match=why):
        check_member(member(name))


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (tarfile.SYMTYPE, "is a link"),
        (tarfile.LNKTYPE, "is a link"),
        (tarfile.CHRTYPE, "is a special file"),
        (tarfile.BLKTYPE, "is a special file"),
        (tarfile.FIFOTYPE, "is a special file"),
    ],
)
def test_anything_but_a_regular_file_is_refused(kind, what):
    with pytest.raises(RestoreError, match=what):
        check_member(member("x", kind, linkname="/etc/passwd"))


def test_scanning_counts_the_files_and_their_bytes():
    contents = scan_archive(archive((member("a.txt"), b"aaa"), (member("d/b.bin"), b"bb")))

    assert contents.members == {"a.txt": 3, "d/b.bin": 2}
    assert (contents.files, contents.bytes) == (2, 5)


def test_a_name_given_twice_is_refused():
    with pytest.raises(RestoreError, match="holds 'a.txt' twice"):
        scan_archive(archive((member("a.txt"), b"1"), (member("./a.txt"), b"2")))


def test_bytes_that_are_not_a_tar_are_refused():
    with pytest.raises(RestoreError, match="damaged or not a tar file"):
        scan_archive(io.BytesIO(b"not a tar archive " * 100))


def test_staging_stops_at_a_bad_member_and_leaves_nothing_behind(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.txt").write_text("live")
    bad = archive((member("a.txt"), b"from the archive"), (member("../escape.txt"), b"evil"))

    with pytest.raises(RestoreError, match="outside the media folder"):
        stage_archive(FileSystemStorage(location=media), bad)

    assert sorted(p.name for p in media.iterdir()) == ["a.txt"]
    assert (media / "a.txt").read_text() == "live"
    assert not (tmp_path / "escape.txt").exists()
    assert not any(p.name.startswith(STAGING_PREFIX) for p in media.iterdir())
