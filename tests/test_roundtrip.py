"""Backup, change everything, restore: every row and every media file is back as it was."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from conftest import ROOT

BIG = 50 * 1024 * 1024


def seed(site, alias: str = "default") -> None:
    site.run(sys.executable, str(ROOT / "tests" / "seed.py"), alias, "seed")


def mutate(site, alias: str = "default") -> None:
    site.run(sys.executable, str(ROOT / "tests" / "seed.py"), alias, "mutate")


def write_media(media: Path) -> None:
    """Nested folders, unicode names, an empty file and a 50 MB file of mixed content."""
    (media / "parts" / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    (media / "parts" / "nested" / "deeper" / "Schaltplan ✓ 図面.txt").write_text("Größe\n" * 1000)
    (media / "parts" / "empty.bin").write_bytes(b"")
    for i in range(0, 200, 3):
        (media / "parts" / f"p{i}.bin").write_bytes(os.urandom(i * 50))
    with open(media / "big.bin", "wb") as fh:
        block = os.urandom(1024 * 1024)
        text = b"The quick brown fox jumps over the lazy dog. " * 23302
        for i in range(BIG // (1024 * 1024)):
            fh.write(block if i % 2 else text[: 1024 * 1024])


def change_media(media: Path) -> None:
    (media / "parts" / "p0.bin").write_bytes(b"changed")
    (media / "parts" / "nested" / "deeper" / "Schaltplan ✓ 図面.txt").unlink()
    (media / "parts" / "empty.bin").write_bytes(b"no longer empty")
    with open(media / "big.bin", "r+b") as fh:
        fh.seek(BIG // 2)
        fh.write(b"flipped")


def test_round_trip_restores_every_row_and_file(any_site):
    seed(any_site)
    write_media(any_site.media)
    rows_before = any_site.snapshot_db()
    media_before = any_site.snapshot_media()
    assert len(rows_before["demo_part"]) == 200

    any_site.invoke("backup")
    mutate(any_site)
    change_media(any_site.media)
    (any_site.media / "created-after-backup.txt").write_text("stays")
    assert any_site.snapshot_db() != rows_before

    any_site.invoke("restore")

    assert any_site.snapshot_db() == rows_before
    media_after = any_site.snapshot_media()
    assert media_after.pop("created-after-backup.txt")
    assert media_after == media_before


def test_mirror_removes_files_created_after_the_backup(sqlite_site):
    (sqlite_site.media / "kept.txt").write_text("in the backup")
    sqlite_site.invoke("backup")
    backed_up = sqlite_site.snapshot_media()
    (sqlite_site.media / "later").mkdir()
    (sqlite_site.media / "later" / "new.txt").write_text("not in the backup")
    (sqlite_site.media / "kept.txt").write_text("changed after the backup")

    sqlite_site.invoke("restore", "--mirror")

    assert sqlite_site.snapshot_media() == backed_up
    assert list(backed_up) == ["kept.txt"]
