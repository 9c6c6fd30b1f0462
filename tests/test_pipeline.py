"""The gzip writer and the media tar writer, in process: formats other tools read, and stored passages."""

from __future__ import annotations

import gzip
import io
import os
import random
import subprocess
import tarfile

import django
import pytest

django.setup()

from django.core.files.storage import FileSystemStorage  # noqa: E402

from backup_app.media import STORE_PROBE_MIN, write_tar  # noqa: E402
from backup_app.pipeline import GzipWriter, incompressible  # noqa: E402

TEXT = b"".join(b"part %d, resistor 10k 0603, qty %d\n" % (i, i * 7 % 1000) for i in range(20_000))


class RecordingGzip(GzipWriter):
    """A real GzipWriter that also counts the bytes given to write_stored."""

    def __init__(self, raw):
        super().__init__(raw)
        self.stored = 0

    def write_stored(self, data) -> int:
        self.stored += len(memoryview(data).cast("B"))
        return super().write_stored(data)


def test_gzip_with_stored_passages_is_read_back_by_python_and_gnu_gzip(tmp_path):
    noise = random.Random(3).randbytes(200_000)
    raw = io.BytesIO()
    out = GzipWriter(raw)
    out.write(TEXT[:300_000])
    out.write_stored(noise)
    out.write_stored(noise[:70_000])
    out.write(TEXT)
    out.write_stored(b"")
    out.close()
    expected = TEXT[:300_000] + noise + noise[:70_000] + TEXT
    (tmp_path / "mixed.gz").write_bytes(raw.getvalue())

    assert gzip.decompress(raw.getvalue()) == expected
    gnu = subprocess.run(["gzip", "-dc", str(tmp_path / "mixed.gz")], capture_output=True, check=True)
    assert gnu.stdout == expected


def test_gzip_from_a_reused_buffer_in_uneven_writes_reads_back_whole():
    rnd = random.Random(7)
    noise = rnd.randbytes(300_000)
    raw = io.BytesIO()
    out = GzipWriter(raw)
    buffer = bytearray(200_000)  # reused for every write, as the dump pump does
    expected = bytearray()
    for _ in range(60):
        size = rnd.choice([1, 511, 512, 4_096, 131_071, 131_072, 131_073, 200_000])
        source = TEXT if rnd.random() < 0.8 else noise
        start = rnd.randrange(len(source) - size)
        buffer[:size] = source[start : start + size]
        (out.write_stored if source is noise and rnd.random() < 0.5 else out.write)(memoryview(buffer)[:size])
        expected += source[start : start + size]
        buffer[:size] = b"\0" * size  # the caller overwrites its buffer at once
    out.close()

    assert gzip.decompress(raw.getvalue()) == bytes(expected)
    assert len(raw.getvalue()) < len(expected) // 2


def test_incompressible_tells_random_bytes_from_text():
    assert incompressible(os.urandom(64 * 1024))
    assert not incompressible(TEXT[: 64 * 1024])


def test_media_archive_stores_only_the_files_that_do_not_compress(tmp_path):
    media = tmp_path / "media"
    (media / "photos").mkdir(parents=True)
    photo = random.Random(5).randbytes(STORE_PROBE_MIN * 3 + 17)
    (media / "photos" / "board.jpg").write_bytes(photo)
    (media / "notes.txt").write_bytes(TEXT)
    raw = io.BytesIO()
    out = RecordingGzip(raw)

    stats = write_tar(FileSystemStorage(location=media), out)
    out.close()

    assert out.stored == len(photo)
    assert (stats.files, stats.bytes) == (2, len(photo) + len(TEXT))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw.getvalue()))) as tar:
        assert tar.extractfile("photos/board.jpg").read() == photo
        assert tar.extractfile("notes.txt").read() == TEXT


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 10_240])
def test_media_archive_is_a_tar_that_gnu_tar_lists(tmp_path, size):
    media = tmp_path / "media"
    media.mkdir()
    (media / "file.bin").write_bytes(b"x" * size)
    raw = io.BytesIO()

    write_tar(FileSystemStorage(location=media), raw)

    assert len(raw.getvalue()) % tarfile.RECORDSIZE == 0
    (tmp_path / "a.tar").write_bytes(raw.getvalue())
    listing = subprocess.run(["tar", "-tvf", str(tmp_path / "a.tar")], capture_output=True, text=True, check=True)
    assert listing.stdout.split()[2] == str(size)
    assert listing.stderr == ""
