"""Pruning never overlaps a backup: it runs only under the site lock (real processes, real lock contention).

The fault this prevents: the scheduled run pruned after its backup had released the lock, so a manual
backup started in between had its pending set's files deleted and still reported success.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import django
import pytest
from conftest import ROOT
from test_faults import backup_held_at_a_gate, open_gate
from test_schedule import enable

django.setup()

from backup_app.actions import prune  # noqa: E402
from backup_app.engines import SiteLock  # noqa: E402
from backup_app.errors import BackupAppError  # noqa: E402
from backup_app.sets import Retention  # noqa: E402

SCHEDULED = "from backup_app.schedule import scheduled_backup; print(scheduled_backup())"
PRUNE = (
    "from backup_app.actions import prune; from backup_app.sets import Retention; "
    "print(prune.run(prune.PruneOptions(retention=Retention(keep=1))))"
)


def test_prune_refuses_a_lock_that_is_not_held(tmp_path):
    from django.core.files.storage import FileSystemStorage

    with pytest.raises(BackupAppError, match="needs the site lock held"):
        prune.prune(FileSystemStorage(location=tmp_path), Retention(keep=1), lock=SiteLock("backup", "default", False))


def test_a_backup_started_while_the_scheduled_run_prunes_is_refused(sqlite_site, tmp_path):
    site = sqlite_site
    site.env.update(
        {
            "PYTHONPATH": str(ROOT / "tests"),
            "INVENTREE_BACKUP_STORAGE": "pausing_storage.PausingStorage",
            "INVENTREE_BACKUP_OPTIONS": json.dumps({"location": str(site.backups)}),
        }
    )
    for _ in range(2):
        site.manage("backup_create", "--quiet")
    enable(site, keep=1)
    with sqlite3.connect(site.root / "db.sqlite3") as conn:  # the last success was two days ago: a backup is due
        conn.execute("UPDATE backup_app_backuprun SET started = '2026-01-01 00:00', finished = '2026-01-01 00:01'")
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    scheduled = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", SCHEDULED],
        cwd=ROOT,
        env={**site.env, "BACKUP_TEST_DELETE_GATE": str(gate)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "gate.reached").exists():  # the scheduled run has begun to prune
            assert scheduled.poll() is None and time.monotonic() < deadline, scheduled.communicate()
            time.sleep(0.1)

        manual = site.invoke("backup", check=False)
    finally:
        with open(gate, "wb"):
            pass  # let the scheduled run go on
    out, err = scheduled.communicate(timeout=300)

    assert scheduled.returncode == 0, err
    assert manual.returncode != 0
    assert "another backup or restore is running (backup by pid" in manual.stderr
    [only] = site.sets()
    assert only["complete"] and out.startswith(f"backed up set {only['name']}; removed ")


def test_pruning_is_refused_while_a_backup_runs_and_its_files_stay(sqlite_site):
    site = sqlite_site
    site.manage("backup_create", "--quiet")
    running, gate = backup_held_at_a_gate(site)
    pending = sorted(p.name for p in site.backups.iterdir() if p.name.endswith(".pending.metadata"))

    refused = site.manage("shell", "--no-imports", "-c", PRUNE, check=False)

    assert pending and set(pending) <= {p.name for p in site.backups.iterdir()}
    open_gate(gate)
    assert running.wait(timeout=300) == 0
    assert refused.returncode != 0
    assert "another backup or restore is running" in refused.stderr
    assert [s["status"] for s in site.sets()] == ["complete", "complete"]


def test_a_clean_that_cannot_delete_a_local_file_stops_with_one_line_naming_it_and_the_fix(sqlite_site):
    site = sqlite_site
    (site.media / "doc.txt").write_text("data")
    site.invoke("backup", "--quiet")
    [old] = site.sets()
    names = sorted(f["name"] for f in old["files"])
    archive = site.backups / next(f["name"] for f in old["files"] if f["kind"] == "media")  # deleted last
    # Root may delete in any folder: an immutable file is one even root cannot delete.
    if subprocess.run(["chattr", "+i", str(archive)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not possible on this file system (or without CAP_LINUX_IMMUTABLE)")
    try:
        result = site.invoke("backup", "--clean", "--quiet", check=False, extra_env={"INVENTREE_BACKUP_KEEP": "1"})
    finally:
        subprocess.run(["chattr", "-i", str(archive)], check=True)

    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    removed = len(names) - 1  # the manifest first, then the dump and its sidecar
    assert f"--clean removed {removed} files, then stopped (set {old['name']} is left incomplete: {removed} of " in line
    assert f"cannot delete {archive.name} (Operation not permitted)" in line, line
    assert f"the right to delete files in {site.backups}" in line, line
    assert "Traceback" not in result.output
    assert [s["complete"] for s in site.sets()] == [True, False]
    assert archive.exists()
