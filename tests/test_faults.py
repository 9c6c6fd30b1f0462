"""Faults: each one is refused or undone, and nothing is lost.

Each test runs the real thing: real damaged files, real archives with hostile
members, a real SIGKILL, a real full filesystem (a small tmpfs).
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import ROOT

BIG_ROWS = {
    "sqlite": "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 40000) "
    "INSERT INTO demo_part (name, description, quantity, created, attachment) "
    "SELECT 'big', hex(randomblob(2000)), n, '2024-01-01 00:00:00', '' FROM g",
    "postgresql": "INSERT INTO demo_part (name, description, quantity, created, attachment) "
    "SELECT 'big', repeat(md5(g::text), 120), g, now(), '' FROM generate_series(1, 40000) g",
    "mysql": "INSERT INTO demo_part (name, description, quantity, created, attachment) "
    "SELECT 'big', REPEAT(MD5(seq), 120), seq, NOW(), '' FROM seq_1_to_40000",
}


def engine_of(site) -> str:
    return {"sqlite3": "sqlite", "postgresql": "postgresql", "mysql": "mysql"}[site.env["INVENTREE_DB_ENGINE"]]


def start(site, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        env=site.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )


def kill_when(proc: subprocess.Popen, marker: str, delay: float, timeout: float = 120) -> str:
    """SIGKILL the whole process group ``delay`` seconds after ``marker`` shows on stderr."""
    seen = []
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "".join(seen)
        assert time.monotonic() < deadline, "".join(seen)
    proc.wait()
    raise AssertionError(f"{marker!r} never appeared; the command ended first:\n{''.join(seen)}")


def files_of(site, kind: str, index: int = 0) -> str:
    return next(f["name"] for f in site.sets()[index]["files"] if f["kind"] == kind)


def test_truncated_file_is_refused_and_nothing_changes(sqlite_site):
    sqlite_site.manage("demo_data")
    sqlite_site.invoke("backup")
    db_file = sqlite_site.backups / files_of(sqlite_site, "db")
    db_file.write_bytes(db_file.read_bytes()[: db_file.stat().st_size // 2])
    sqlite_site.sql("DELETE FROM demo_part")
    rows = sqlite_site.snapshot_db()

    result = sqlite_site.invoke("restore", check=False)

    assert result.returncode != 0
    assert "truncated or damaged" in result.stderr
    assert sqlite_site.snapshot_db() == rows


def test_file_of_the_wrong_type_is_refused(sqlite_site):
    (sqlite_site.media / "doc.txt").write_text("media")
    sqlite_site.invoke("backup", "--no-compress")
    media = files_of(sqlite_site, "media")
    rows = sqlite_site.snapshot_db()

    result = sqlite_site.invoke("restore", "--db-file", media, "--skip-media", check=False)

    assert result.returncode != 0
    assert "is not a sqlite dump" in result.stderr
    assert sqlite_site.snapshot_db() == rows


def test_gzip_bytes_named_as_plain_dump_are_refused(sqlite_site):
    sqlite_site.invoke("backup")
    gz = sqlite_site.backups / files_of(sqlite_site, "db")
    plain = sqlite_site.backups / "InvenTree-db-2001-01-01-000000.sqlite3"  # a legacy name without .gz
    plain.write_bytes(gz.read_bytes())
    rows = sqlite_site.snapshot_db()

    result = sqlite_site.invoke("restore", "--db-file", plain.name, "--skip-media", check=False)

    assert result.returncode != 0
    assert "is not a sqlite dump" in result.stderr
    assert sqlite_site.snapshot_db() == rows


def hostile_archive(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("good.txt")
        good.size = 4
        tar.addfile(good, io.BytesIO(b"good"))
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if member.isreg() else None)


def _symlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("link")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    return info


def _hardlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("hard")
    info.type = tarfile.LNKTYPE
    info.linkname = "good.txt"
    return info


def _device() -> tarfile.TarInfo:
    info = tarfile.TarInfo("dev")
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (tarfile.TarInfo("../escaped.txt"), "outside the media folder"),
        (tarfile.TarInfo("parts/../../escaped.txt"), "outside the media folder"),
        (tarfile.TarInfo("/tmp/absolute-escape.txt"), "absolute"),
        (_symlink(), "is a link"),
        (_hardlink(), "is a link"),
        (_device(), "special file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device"],
)
def test_hostile_archive_member_is_refused_before_anything_is_written(sqlite_site, member, why):
    (sqlite_site.media / "doc.txt").write_text("current")
    before = sqlite_site.snapshot_media()
    sqlite_site.backups.mkdir(exist_ok=True)
    archive = sqlite_site.backups / "InvenTree-media-2001-01-01-000000.tar"
    hostile_archive(archive, member, b"evil")

    result = sqlite_site.invoke("restore", "--media-file", archive.name, "--skip-db", check=False)

    assert result.returncode != 0
    assert why in result.stderr
    assert sqlite_site.snapshot_media() == before
    assert not (sqlite_site.root / "escaped.txt").exists()
    assert not Path("/tmp/absolute-escape.txt").exists()


def test_backup_from_a_newer_schema_is_refused(sqlite_site):
    sqlite_site.sql("INSERT INTO django_migrations (app, name, applied) VALUES ('demo', '0099_future', '2030-01-01')")
    sqlite_site.invoke("backup")
    sqlite_site.sql("DELETE FROM django_migrations WHERE name = '0099_future'")
    sqlite_site.manage("demo_data")
    rows = sqlite_site.snapshot_db()

    result = sqlite_site.invoke("restore", check=False)

    assert result.returncode != 0
    assert "newer version" in result.stderr and "demo.0099_future" in result.stderr
    assert "--restore-allow-newer-version" in result.stderr
    assert sqlite_site.snapshot_db() == rows


def test_newer_schema_restores_when_allowed(sqlite_site):
    sqlite_site.sql("INSERT INTO django_migrations (app, name, applied) VALUES ('demo', '0099_future', '2030-01-01')")
    sqlite_site.invoke("backup")
    sqlite_site.sql("DELETE FROM django_migrations WHERE name = '0099_future'")

    sqlite_site.invoke("restore", "--restore-allow-newer-version")

    assert ["demo", "0099_future"] in [r[1:3] for r in sqlite_site.snapshot_db()["django_migrations"]]


def test_older_backup_is_migrated_forward(sqlite_site):
    sqlite_site.manage("migrate", "demo", "zero", "--noinput", "-v0")
    sqlite_site.invoke("backup")
    sqlite_site.manage("migrate", "--noinput", "-v0")

    result = sqlite_site.invoke("restore")

    assert "older than this code" in result.stderr
    assert "demo_part" in sqlite_site.snapshot_db()


@pytest.mark.parametrize("engine", ["sqlite", "postgres", "mysql"])
def test_restore_killed_half_way_leaves_the_database_as_it_was(request, engine):
    site = request.getfixturevalue(f"{engine}_site")
    site.sql(BIG_ROWS[engine_of(site)])
    site.invoke("backup", "--skip-media")
    site.sql("DELETE FROM demo_part WHERE quantity > 100")
    site.manage("demo_data")
    rows = site.snapshot_db()

    kill_when(start(site, "restore"), "into a staging database", delay=0.3)

    assert site.snapshot_db() == rows
    site.invoke("restore")  # and the next restore cleans up and works
    assert site.query("SELECT COUNT(*), COUNT(DISTINCT quantity) FROM demo_part") == [[40000, 40000]]


def test_backup_killed_half_way_leaves_an_incomplete_set_that_restore_skips_and_clean_removes(sqlite_site):
    (sqlite_site.media / "doc.txt").write_text("good")
    sqlite_site.invoke("backup")
    # Held with a part of its media file written: killed there, it is half-way.
    running, _gate = backup_held_at_a_gate(sqlite_site)
    os.killpg(running.pid, signal.SIGKILL)
    running.wait()

    sets = sqlite_site.sets()
    assert [s["status"] for s in sets] == ["incomplete", "complete"]
    (sqlite_site.media / "doc.txt").write_text("changed")
    sqlite_site.invoke("restore")
    assert (sqlite_site.media / "doc.txt").read_text() == "good"
    sqlite_site.invoke("backup", "--clean")
    assert [s["status"] for s in sqlite_site.sets()] == ["complete", "complete"]


def backup_held_at_a_gate(site, timeout: float = 120) -> tuple[subprocess.Popen, Path]:
    """Start ``invoke backup``; it stops once it holds the lock, has begun the set and has written a part of
    its media file (``tests/pausing_storage.py``, a FileSystemStorage at the site's backup folder, from then
    on the site's backup storage).  Open the returned gate for writing (:func:`open_gate`) to let it go on.

    Fails, and never waits without end, when the backup ends before it reaches the gate."""
    gate = site.root / "gate"
    os.mkfifo(gate)
    site.env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), site.env.get("PYTHONPATH")])),
            "INVENTREE_BACKUP_STORAGE": "pausing_storage.PausingStorage",
            "INVENTREE_BACKUP_OPTIONS": json.dumps({"location": str(site.backups)}),
        }
    )
    running = subprocess.Popen(
        [sys.executable, "-m", "invoke", "backup"],
        cwd=ROOT,
        env={**site.env, "BACKUP_TEST_SAVE_GATE": str(gate)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while not Path(str(gate) + ".reached").exists():
        if running.poll() is not None or time.monotonic() > deadline:
            os.killpg(running.pid, signal.SIGKILL)
            out, err = running.communicate()
            raise AssertionError(f"the backup did not stop at the gate (exit {running.returncode}):\n{out}{err}")
        time.sleep(0.05)
    return running, gate


def open_gate(gate: Path) -> None:
    """Let a process held at ``gate`` go on; an error (ENXIO), not a wait without end, if none is held there."""
    os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))


def test_two_backups_at_once_the_second_is_refused(sqlite_site):
    first, gate = backup_held_at_a_gate(sqlite_site)

    second = sqlite_site.invoke("backup", check=False)

    open_gate(gate)  # let the first backup go on
    assert first.wait(timeout=300) == 0
    assert second.returncode != 0
    assert "another backup or restore is running" in second.stderr
    assert [s["status"] for s in sqlite_site.sets()] == ["complete"]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_during_backup_leaves_no_set_and_says_so(sqlite_site, small_disk):
    (sqlite_site.media / "doc.txt").write_text("x")
    with open(sqlite_site.media / "big.bin", "wb") as fh:
        fh.write(os.urandom(8 * 1024 * 1024))

    result = sqlite_site.invoke("backup", check=False, extra_env={"INVENTREE_BACKUP_DIR": str(small_disk / "b")})

    assert result.returncode != 0
    assert "No space left on device" in result.stderr
    assert list((small_disk / "b").iterdir()) == []


def test_rollback_undoes_a_restore(any_site):
    any_site.manage("demo_data")
    (any_site.media / "doc.txt").write_text("backed up")
    any_site.invoke("backup")
    any_site.sql("DELETE FROM demo_part WHERE quantity > 20")
    (any_site.media / "doc.txt").write_text("after the backup")
    (any_site.media / "new.txt").write_text("new")
    rows, media = any_site.snapshot_db(), any_site.snapshot_media()
    any_site.invoke("restore", "--mirror")
    assert any_site.snapshot_db() != rows

    any_site.invoke("rollback")

    assert any_site.snapshot_db() == rows
    assert any_site.snapshot_media() == media


def test_restore_leaves_matching_media_files_alone_and_keeps_only_what_it_replaced(sqlite_site):
    media = sqlite_site.media
    block = 128 * 1024
    big = random.Random(11).randbytes(3 * block + 5)
    (media / "same.bin").write_bytes(big)
    (media / "late.bin").write_bytes(big)
    (media / "size.txt").write_text("short")
    (media / "link.txt").write_text("plain text")
    (media / "gone.txt").write_text("deleted after the backup")
    sqlite_site.invoke("backup")
    backed_up = sqlite_site.snapshot_media()
    late = bytearray(big)
    late[2 * block + 100] ^= 1  # the first two blocks still agree
    (media / "late.bin").write_bytes(late)
    (media / "size.txt").write_text("longer now")
    (media / "gone.txt").unlink()
    (media / "link.txt").unlink()
    (media / "elsewhere.txt").write_text("plain text")
    (media / "link.txt").symlink_to(media / "elsewhere.txt")  # same bytes, but a link
    same_inode = (media / "same.bin").stat().st_ino
    before = sqlite_site.snapshot_media()

    out = sqlite_site.invoke("restore", "--skip-db").output

    assert {k: v for k, v in sqlite_site.snapshot_media().items() if k != "elsewhere.txt"} == backed_up
    assert not (media / "link.txt").is_symlink()
    assert (media / "same.bin").stat().st_ino == same_inode
    assert "5 files restored (1 already as in the backup)" in out
    [record] = (sqlite_site.root / "safety").iterdir()
    kept = sorted(p.relative_to(record / "media").as_posix() for p in (record / "media").rglob("*"))
    assert kept == ["late.bin", "link.txt", "size.txt"]

    sqlite_site.invoke("rollback")

    assert sqlite_site.snapshot_media() == before
    assert (media / "link.txt").is_symlink()


def test_no_safety_backup_keeps_no_copy(sqlite_site):
    (sqlite_site.media / "doc.txt").write_text("backed up")
    sqlite_site.invoke("backup")
    (sqlite_site.media / "doc.txt").write_text("changed")

    sqlite_site.invoke("restore", "--no-safety-backup")

    assert (sqlite_site.media / "doc.txt").read_text() == "backed up"
    # The safety folder was not there before this restore: with no copy to keep, the restore takes away the folder
    # its safety record made (365977d), so nothing of it is left.
    assert not (sqlite_site.root / "safety").exists()


def test_a_restore_keeps_a_safety_copy_by_default(sqlite_site):
    (sqlite_site.media / "doc.txt").write_text("backed up")
    sqlite_site.invoke("backup")
    (sqlite_site.media / "doc.txt").write_text("changed")

    sqlite_site.invoke("restore")

    [record] = (sqlite_site.root / "safety").iterdir()
    assert (record / "media" / "doc.txt").read_text() == "changed"
    assert json.loads((record / "safety.json").read_text())["state"] == "done"
