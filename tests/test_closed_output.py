"""A reader that goes away (``| head``) and Ctrl-C: the commands end quietly, with the status shells expect."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import ROOT


def run_into_a_closed_pipe(
    site, *args: str, stderr_too: bool = False, program: tuple[str, ...] = ("manage.py",)
) -> subprocess.CompletedProcess:
    """``manage.py ARGS`` (or ``python PROGRAM ARGS``) whose stdout (and, with ``stderr_too``, stderr) is a pipe
    nobody reads any more: the reader is closed before the command starts, so every write meets EPIPE, as after
    ``| head`` has ended."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, *program, *args], cwd=ROOT, env=site.env, stdin=subprocess.DEVNULL,
            stdout=write_end, stderr=write_end if stderr_too else subprocess.PIPE, timeout=300,
        )  # fmt: skip
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ("backup_list",),
        ("backup_list", "--json"),
        ("backup_config",),
        ("backup_config", "--json"),
        ("backup_check",),
        ("backup_create", "--dry-run"),
        ("backup_verify", "--json"),
    ],
    ids=" ".join,
)
def test_a_command_whose_reader_is_gone_exits_141_without_a_traceback(sqlite_site, args):
    (sqlite_site.media / "a.txt").write_text("a")
    sqlite_site.manage("backup_create", "--quiet")

    result = run_into_a_closed_pipe(sqlite_site, *args)

    assert result.returncode == 141, result.stderr.decode()
    assert "Traceback" not in result.stderr.decode() and "Broken" not in result.stderr.decode()


def test_a_backup_whose_output_is_gone_completes_and_exits_141(sqlite_site):
    # stdout and stderr both closed (``manage.py backup_create 2>&1 | head -n 1``): the steps and the result are
    # lost, the backup is not: the set is whole and listed complete, nothing else is in the folder.
    (sqlite_site.media / "a.bin").write_bytes(os.urandom(1024 * 1024))

    result = run_into_a_closed_pipe(sqlite_site, "backup_create", "--json", stderr_too=True)

    assert result.returncode == 141
    [entry] = sqlite_site.sets()
    assert entry["complete"]
    assert {f["name"] for f in entry["files"]} <= {p.name for p in sqlite_site.backups.iterdir()}
    assert all(entry["name"] in p.name for p in sqlite_site.backups.iterdir())  # no pending marker, no part
    with sqlite3.connect(sqlite_site.root / "db.sqlite3") as db:
        assert db.execute("SELECT kind, outcome FROM backup_app_backuprun").fetchall() == [("manual", "success")]


@pytest.mark.parametrize("program", [("manage.py", "backup_create"), ("-m", "invoke", "backup")], ids=" ".join)
def test_a_backup_started_with_stdout_closed_completes_and_exits_141(sqlite_site, program):
    # ``>&-``: Python gives the run no sys.stdout at all (invoke backup runs the command in invoke's process).
    (sqlite_site.media / "a.txt").write_text("a")

    result = subprocess.run(
        [sys.executable, *program, "--json"], cwd=ROOT, env=sqlite_site.env, stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1), timeout=300,
    )  # fmt: skip

    assert result.returncode == 141, result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    [entry] = sqlite_site.sets()
    assert entry["complete"]


def test_a_restore_whose_output_is_gone_completes_and_exits_141(sqlite_site):
    (sqlite_site.media / "a.txt").write_text("backed up")
    sqlite_site.manage("backup_create", "--quiet")
    (sqlite_site.media / "a.txt").write_text("changed since")

    result = run_into_a_closed_pipe(sqlite_site, "backup_restore", "--noinput", stderr_too=True)

    assert result.returncode == 141
    assert (sqlite_site.media / "a.txt").read_text() == "backed up"


def test_invoke_backup_config_into_head_ends_quietly(sqlite_site):
    # The reader is closed before invoke starts (not ``| head -n 1``, which races: a short output written before
    # head exits meets no closed pipe and 0 is then the right status).
    result = run_into_a_closed_pipe(sqlite_site, "backup-config", program=("-m", "invoke"))

    assert result.returncode == 141, result.stderr.decode()
    assert "Traceback" not in result.stderr.decode() and "Broken" not in result.stderr.decode(), result.stderr


def run_invoke_with_stdout_closed(site, *args: str) -> subprocess.CompletedProcess:
    """``invoke ARGS >&-``: Python gives the run no sys.stdout at all."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=ROOT, env=site.env, stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1), timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("closed", ["reader gone", "stdout closed"])
@pytest.mark.parametrize(
    "tasks",
    [
        ("backup",),
        ("listbackups",),
        ("backup-config",),
        ("verify",),
        ("backup", "listbackups"),
        ("backup", "--quiet", "listbackups"),
        ("listbackups", "backup"),
        ("listbackups", "backup-config"),
    ],
    ids=" ".join,
)
def test_every_task_and_every_run_of_several_into_a_closed_output_runs_each_and_exits_141(sqlite_site, tasks, closed):
    # Each task of the run does its work (a backup among them makes its set, even after a task whose output was
    # lost), and the run ends as a piped command whose reader went away: 141, no traceback.
    (sqlite_site.media / "a.txt").write_text("a")
    sqlite_site.manage("backup_create", "--quiet")
    if closed == "reader gone":
        result = run_into_a_closed_pipe(sqlite_site, *tasks, program=("-m", "invoke"))
    else:
        result = run_invoke_with_stdout_closed(sqlite_site, *tasks)

    assert result.returncode == 141, result.stderr.decode()
    assert "Traceback" not in result.stderr.decode() and "Broken" not in result.stderr.decode(), result.stderr
    sets = sqlite_site.sets()
    assert len(sets) == 1 + tasks.count("backup") and all(entry["complete"] for entry in sets)


def test_a_task_after_one_whose_reader_went_away_still_runs(sqlite_site):
    # The backup's report meets the closed pipe first (the backup runs in invoke's process): the run goes on to
    # the next task (before, it ended with the backup, 141, and collected nothing).
    (sqlite_site.media / "a.txt").write_text("a")

    result = run_into_a_closed_pipe(sqlite_site, "backup", "update", "--skip-backup", program=("-m", "invoke"))

    assert result.returncode == 141, result.stderr.decode()
    assert len(sqlite_site.sets()) == 1
    assert any(sqlite_site.root.rglob("admin/css/base.css")), "collectstatic did not run"


def test_invoke_restore_that_fails_into_a_closed_pipe_keeps_its_status_and_its_error_line(sqlite_site):
    # stdout's reader is gone, stderr is not: the failure is a failure (not 141, which scripts take for SIGPIPE)
    # and its one line still reaches stderr.
    result = run_into_a_closed_pipe(sqlite_site, "restore", "--json", program=("-m", "invoke"))

    assert result.returncode == 1, result.stderr.decode()
    assert result.stderr.decode().strip().splitlines()[-1].startswith("CommandError: no backup found")
    assert "Traceback" not in result.stderr.decode()


def test_invoke_update_into_a_closed_pipe_still_migrates_and_collects_static(sqlite_site):
    # The backup's report meets the closed pipe first: only the report is lost, the update's later steps run.
    (sqlite_site.media / "a.txt").write_text("a")

    result = run_into_a_closed_pipe(sqlite_site, "update", program=("-m", "invoke"))

    assert result.returncode == 141, result.stderr.decode()
    assert len(sqlite_site.sets()) == 1
    assert any(sqlite_site.root.rglob("admin/css/base.css")), "collectstatic did not run"


def test_ctrl_c_during_a_backup_says_what_state_is_left(sqlite_site):
    big = sqlite_site.media / "big.bin"
    with open(big, "wb") as fh:
        for _ in range(200):
            fh.write(os.urandom(1024 * 1024))
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "backup_create"],
        cwd=ROOT, env=sqlite_site.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(sqlite_site.backups.glob("*.tar*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    lines = [line for line in err.decode().splitlines() if line.strip()]

    assert proc.returncode == 130, err
    assert "Traceback" not in err.decode()
    assert lines[-1] == "Interrupted: backup interrupted; the partial set was removed"
    assert [p.name for p in sqlite_site.backups.iterdir()] == []
