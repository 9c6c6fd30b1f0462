"""The safety copies restores keep: shown where operators look, expired on every run, and a warning when they
crowd the disk they are on."""

from __future__ import annotations

import os
import subprocess

import pytest


def restore_once(site, size: int = 1024) -> None:
    """A backup, a changed media file, a restore: the restore keeps the replaced state."""
    (site.media / "doc.bin").write_bytes(os.urandom(size))
    site.manage("backup_create", "--quiet")
    (site.media / "doc.bin").write_bytes(os.urandom(size))
    site.manage("backup_restore", "--noinput", "--quiet")


def copies(site) -> list[str]:
    safety = site.root / "safety"
    return sorted(p.name for p in safety.iterdir() if (p / "safety.json").exists()) if safety.exists() else []


def test_listbackups_and_backup_config_show_the_kept_copy_its_size_and_place(sqlite_site):
    restore_once(sqlite_site)
    [name] = copies(sqlite_site)

    listing = sqlite_site.manage("backup_list").stdout
    config = sqlite_site.manage("backup_config").stdout

    for shown in (listing, config):
        assert "1 safety copy kept by restores" in shown
        line = next(line for line in shown.splitlines() if line.strip().startswith(name))
        assert str(sqlite_site.root / "safety" / name) in line and "KiB" in line and "expires" in line


def test_a_backup_expires_old_safety_copies(sqlite_site):
    restore_once(sqlite_site)
    assert len(copies(sqlite_site)) == 1

    result = sqlite_site.manage("backup_create", extra_env={"INVENTREE_BACKUP_SAFETY_DAYS": "0"})

    assert copies(sqlite_site) == []
    assert "Removed expired safety copy" in result.stderr


def test_a_backup_keeps_safety_copies_that_have_not_expired(sqlite_site):
    restore_once(sqlite_site)

    sqlite_site.manage("backup_create", "--quiet")

    assert len(copies(sqlite_site)) == 1


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_w007_warns_when_safety_copies_hold_much_of_the_free_space(sqlite_site, small_disk):
    sqlite_site.env["INVENTREE_BACKUP_SAFETY_DIR"] = str(small_disk / "safety")
    restore_once(sqlite_site, size=1536 * 1024)

    result = sqlite_site.manage("check", "--tag", "backup_app", check=False)

    assert "backup_app.W010" in result.output
    assert str(small_disk / "safety") in result.output


def test_no_w007_when_the_copies_are_small_next_to_the_free_space(sqlite_site):
    restore_once(sqlite_site)

    result = sqlite_site.manage("check", "--tag", "backup_app", check=False)

    assert "W010" not in result.output
