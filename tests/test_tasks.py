"""The invoke tasks of ``backup_app.tasks`` run the ``manage.py`` of the project they are run in.

The wrapper's own logic — which ``manage.py``, in which folder, with which
arguments, in which order for ``invoke update``, with or without a terminal —
is tested with real ``invoke`` runs in a throwaway project whose ``manage.py``
writes down how it was started (and fails when told to).  What the commands
themselves do is tested through the demo site (test_commands.py) and a
second project installed from the wheel (test_stranger.py).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from invoke.exceptions import Exit

from backup_app.tasks import find_project

TASKS_PY = "from backup_app.tasks import *  # noqa: F403\n"

# A manage.py that appends one JSON line per run to $RECORD: its arguments, folder, interpreter, terminals,
# settings module and process id; it prints to both streams, reads stdin when $READ_STDIN is set, and exits 3
# (after one line on stderr) when its command is $FAIL, and raises KeyboardInterrupt when it is $INTERRUPT.
RECORDING_MANAGE_PY = """\
import json, os, sys

record = {
    "argv": sys.argv,
    "cwd": os.getcwd(),
    "executable": sys.executable,
    "stdin_tty": sys.stdin.isatty(),
    "stdout_tty": sys.stdout.isatty(),
    "settings": os.environ.get("DJANGO_SETTINGS_MODULE"),
    "invoked": os.environ.get("BACKUP_APP_INVOKED"),
    "pid": os.getpid(),
}
if os.environ.get("READ_STDIN"):
    record["stdin"] = sys.stdin.read()
if os.environ.get("SET_TZ"):  # what Django's settings do with TIME_ZONE
    import time

    os.environ["TZ"] = os.environ["SET_TZ"]
    time.tzset()
with open(os.environ["RECORD"], "a") as fh:
    fh.write(json.dumps(record) + "\\n")
print("out of", sys.argv[1])
print("err of", sys.argv[1], file=sys.stderr)
if os.environ.get("FAIL") == sys.argv[1]:
    print(sys.argv[1], "failed", file=sys.stderr)
    sys.exit(3)
if os.environ.get("INTERRUPT") == sys.argv[1]:  # Ctrl-C before the command's own handler is in place
    raise KeyboardInterrupt
"""


class Project:
    """A folder with ``tasks.py`` (the one-line import) and the recording ``manage.py``."""

    def __init__(self, root: Path):
        self.root = root
        self.record = root.parent / "record.jsonl"
        root.mkdir(parents=True)
        (root / "tasks.py").write_text(TASKS_PY)
        (root / "manage.py").write_text(RECORDING_MANAGE_PY)

    def env(self, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INVENTREE_", "DJANGO_"))}
        # backup_app from this checkout (the interpreter's own install may be another checkout's).
        env.update(PYTHONPATH=str(ROOT), RECORD=str(self.record), PYTHONUNBUFFERED="1", **extra)
        return env

    def invoke(self, *args: str, cwd: Path | None = None, stdin=subprocess.DEVNULL, **extra: str):
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=cwd or self.root,
            env=self.env(**extra),
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def runs(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def commands(self) -> list[list[str]]:
        return [run["argv"][1:] for run in self.runs()]


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path / "site")


def on_terminal(argv: list[str], cwd: Path, env: dict, answer: bytes | None = None, timeout: float = 60) -> str:
    """Run ``argv`` with a pty as its controlling terminal (stdin, stdout, stderr), as in a terminal session.

    ``answer`` (plus Enter) is typed once, at the first prompt.  Returns everything the terminal showed.
    """
    pid, master = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else
        os.chdir(cwd)
        os.execve(argv[0], argv, env)
    shown, typed, deadline = b"", answer is None, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last user is gone
                break
            if not chunk:
                break
            shown += chunk
            if not typed and shown.rstrip().endswith(b":"):
                os.write(master, answer + b"\r")
                typed = True
        else:
            raise AssertionError(f"{argv} still running after {timeout} s; the terminal showed:\n{shown.decode()}")
    finally:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(master)
    return shown.decode(errors="replace")


# --- finding the project ---------------------------------------------------------------------------------------


def test_find_project_takes_the_folder_holding_manage_py(tmp_path):
    (tmp_path / "manage.py").write_text("")

    assert find_project(tmp_path) == tmp_path.resolve()


def test_find_project_looks_upwards_and_takes_the_nearest(tmp_path):
    (tmp_path / "manage.py").write_text("")
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "manage.py").write_text("")
    (tmp_path / "inner" / "a" / "b").mkdir(parents=True)

    assert find_project(tmp_path / "inner" / "a" / "b") == (tmp_path / "inner").resolve()


def test_find_project_ignores_a_folder_named_manage_py(tmp_path):
    (tmp_path / "manage.py").write_text("")
    (tmp_path / "inner" / "manage.py").mkdir(parents=True)

    assert find_project(tmp_path / "inner") == tmp_path.resolve()


def test_find_project_without_manage_py_exits_2_with_one_line(tmp_path):
    with pytest.raises(Exit) as raised:
        find_project(tmp_path)

    assert raised.value.code == 2
    message = raised.value.message
    assert "\n" not in message
    assert f"No manage.py in {tmp_path.resolve()} or any folder above it" in message
    assert "run invoke in your Django project's folder (the one with manage.py)" in message


# --- which manage.py, run how ------------------------------------------------------------------------------------


def test_task_runs_the_projects_manage_py_with_this_python_from_a_subfolder(project):
    below = project.root / "a" / "b"
    below.mkdir(parents=True)

    result = project.invoke("listbackups", "--json", cwd=below)

    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    assert run["argv"] == ["manage.py", "backup_list", "--json"]
    assert run["cwd"] == str(project.root.resolve())
    assert os.path.realpath(run["executable"]) == os.path.realpath(sys.executable)


def test_nearest_manage_py_is_used_though_tasks_py_is_higher_up(project):
    inner = project.root / "inner"
    inner.mkdir()
    (inner / "manage.py").write_text(RECORDING_MANAGE_PY)

    project.invoke("migrate", cwd=inner)

    [run] = project.runs()
    assert run["cwd"] == str(inner.resolve())
    assert run["argv"] == ["manage.py", "migrate", "--noinput"]


def test_tasks_leave_the_settings_module_to_manage_py(project):
    project.invoke("backup")

    [run] = project.runs()
    assert run["settings"] is None


def test_without_manage_py_invoke_fails_with_one_line(tmp_path):
    folder = tmp_path / "no-project"
    folder.mkdir()
    (folder / "tasks.py").write_text(TASKS_PY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVENTREE_", "DJANGO_"))}

    result = subprocess.run(
        [sys.executable, "-m", "invoke", "backup"],
        cwd=folder,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"No manage.py in {folder.resolve()} or any folder above it: run invoke in your Django project's folder "
        "(the one with manage.py) or below it."
    ]


def test_tasks_tell_the_command_it_runs_under_invoke(project):
    project.invoke("listbackups")

    [run] = project.runs()
    assert run["invoked"] == "1"


def test_a_settings_module_manage_py_names_but_nothing_holds_fails_with_one_line(project):
    manage_py = project.root / "manage.py"
    manage_py.write_text(
        'import os\nos.environ.setdefault("DJANGO_SETTINGS_MODULE", "nowhere_i18.settings")\n' + RECORDING_MANAGE_PY
    )

    result = project.invoke("backup")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"Settings module nowhere_i18.settings (the default of {manage_py.resolve()}) is not in "
        f"{project.root.resolve()} nor importable: set DJANGO_SETTINGS_MODULE to the project's settings module, "
        "or run invoke in the project it belongs to."
    ]
    assert project.runs() == []


def test_a_missing_settings_module_in_the_environment_is_named_by_its_variable(project):
    result = project.invoke("backup", DJANGO_SETTINGS_MODULE="elsewhere_i18.settings")

    assert result.returncode == 2
    assert result.stderr.startswith("Settings module elsewhere_i18.settings (DJANGO_SETTINGS_MODULE) is not in ")
    assert project.runs() == []


def test_a_settings_module_in_the_project_folder_is_found(project):
    (project.root / "site_i18").mkdir()
    (project.root / "site_i18" / "__init__.py").write_text("")
    (project.root / "site_i18" / "settings.py").write_text("")
    (project.root / "manage.py").write_text(
        'import os\nos.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_i18.settings")\n' + RECORDING_MANAGE_PY
    )

    result = project.invoke("backup")

    assert result.returncode == 0, result.stderr
    assert project.commands() == [["backup_create"]]


def test_exit_status_is_the_commands(project):
    result = project.invoke("listbackups", FAIL="backup_list")

    assert result.returncode == 3
    assert "backup_list failed" in result.stderr


@pytest.mark.parametrize(("task", "command"), [("backup", "backup_create"), ("restore", "backup_restore")])
def test_backup_and_restore_without_a_terminal_run_in_invokes_own_process(project, task, command):
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", task], cwd=project.root, env=project.env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, err
    [run] = project.runs()
    assert run["pid"] == proc.pid
    assert (run["argv"], run["cwd"], run["stdin_tty"], run["invoked"]) == (
        ["manage.py", command],
        str(project.root.resolve()),
        False,
        "1",
    )
    assert (out, err) == (f"out of {command}\n", f"err of {command}\n")


def test_a_backup_run_in_invokes_process_exits_with_the_commands_status(project):
    result = project.invoke("backup", FAIL="backup_create")

    assert result.returncode == 3
    assert result.stderr == "err of backup_create\nbackup_create failed\n"


def test_a_backup_after_a_tasks_py_that_loaded_settings_gets_a_process_of_its_own(project):
    # Settings read at import (not set up): in invoke's process manage.py would run with those, not its own.
    (project.root / "tasks.py").write_text(TASKS_PY + "from django.conf import settings\nsettings.configure()\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "backup"], cwd=project.root, env=project.env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, err
    [run] = project.runs()
    assert run["pid"] != proc.pid


def test_a_backup_with_stdin_closed_gets_a_process_of_its_own_with_stdin_at_its_end(project):
    # fd 0 closed (``<&-``): Python gives invoke no sys.stdin; the command must still find one at its end.
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "backup"], cwd=project.root, env=project.env(READ_STDIN="1"),
        preexec_fn=lambda: os.close(0), capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    assert (run["stdin_tty"], run["stdin"]) == (False, "")


def test_a_failed_backup_called_from_a_projects_own_task_raises_unexpected_exit_as_before(project):
    # A caller's task that handles a failed backup (as invoke update does for its own) still gets invoke's
    # UnexpectedExit with the command's status, though the backup ran in invoke's process.
    (project.root / "tasks.py").write_text(
        TASKS_PY
        + "from invoke import task\nfrom invoke.exceptions import UnexpectedExit\n\n\n@task\ndef nightly(c):\n"
        + "    try:\n        backup(c)\n    except UnexpectedExit as err:\n"
        + "        print('backup failed with', err.result.exited)\n"
    )

    result = project.invoke("nightly", FAIL="backup_create")

    assert result.returncode == 0, result.stderr
    assert "backup failed with 3" in result.stdout


@pytest.mark.parametrize("name", ["backup", "restore"])
def test_a_command_run_in_invokes_process_leaves_its_time_zone_to_the_command(project, name):
    # Django sets TZ to TIME_ZONE and calls time.tzset(): the environment is put back after the command, and a
    # later step of the caller's task (a file named by the local date) must have the clock of the environment.
    (project.root / "tasks.py").write_text(
        TASKS_PY + f"import time\nfrom invoke import task\n\n\n@task\ndef nightly(c):\n    {name}(c)\n"
        "    print('zone', time.strftime('%z'))\n"
    )

    result = project.invoke("nightly", TZ="UTC", SET_TZ="Asia/Tokyo")

    assert result.returncode == 0, result.stderr
    assert "zone +0000" in result.stdout, result.stdout


def test_invoke_dry_shows_the_backups_command_line_and_runs_nothing(project):
    result = project.invoke("--dry", "backup")

    assert result.returncode == 0, result.stderr
    assert project.runs() == []
    assert f"{sys.executable} manage.py backup_create" in result.stdout


def test_ctrl_c_before_the_commands_handler_in_invokes_process_exits_130_with_one_line(project):
    result = project.invoke("backup", INTERRUPT="backup_create")

    assert result.returncode == 130
    assert result.stderr == "err of backup_create\nInterrupted (Ctrl-C).\n"


def test_a_command_after_the_backup_in_the_same_invoke_run_gets_a_process_of_its_own(project):
    below = project.root / "a"
    below.mkdir()
    read_end, write_end = os.pipe()  # stdin open for the whole run: each command must still read its end at once
    try:
        result = project.invoke("backup", "listbackups", cwd=below, stdin=read_end, READ_STDIN="1")
    finally:
        os.close(read_end)
        os.close(write_end)

    assert result.returncode == 0, result.stderr
    first, second = project.runs()
    assert first["argv"] == ["manage.py", "backup_create"] and second["argv"] == ["manage.py", "backup_list"]
    assert second["pid"] != first["pid"]
    for run in (first, second):  # the second finds what the first found: folder, stdin, environment
        assert (run["cwd"], run["stdin_tty"], run["stdin"], run["invoked"], run["settings"]) == (
            str(project.root.resolve()),
            False,
            "",
            "1",
            None,
        )


def test_relative_path_is_taken_from_the_folder_invoke_runs_in(project):
    below = project.root / "sub"
    below.mkdir()

    project.invoke("backup", "--path", "out", cwd=below)
    project.invoke("listbackups", "--path", "../lists", cwd=below)

    assert project.commands() == [
        ["backup_create", "--path", str(below / "out")],
        ["backup_list", "--path", str(project.root / "lists")],
    ]


def test_restore_file_here_is_passed_by_its_path_a_storage_name_as_it_is(project):
    below = project.root / "sub"
    below.mkdir()
    (below / "InvenTree-db-2024-01-01-000000.sqlite3.gz").write_bytes(b"")

    project.invoke(
        "restore",
        "--db-file",
        "InvenTree-db-2024-01-01-000000.sqlite3.gz",
        "--media-file",
        "InvenTree-media-2024-01-01-000000.tar.gz",
        cwd=below,
    )

    assert project.commands() == [
        [
            "backup_restore",
            "--db-file",
            str(below / "InvenTree-db-2024-01-01-000000.sqlite3.gz"),
            "--media-file",
            "InvenTree-media-2024-01-01-000000.tar.gz",
        ]
    ]


# --- invoke update -----------------------------------------------------------------------------------------------


def test_update_backs_up_migrates_and_collects_static_in_that_order(project):
    result = project.invoke("update")

    assert result.returncode == 0, result.stderr
    assert project.commands() == [
        ["backup_create", "--clean", "--origin", "update"],
        ["migrate", "--noinput"],
        ["collectstatic", "--noinput", "--verbosity", "0"],
    ]


def test_update_stops_before_migrate_when_the_backup_fails(project):
    result = project.invoke("update", FAIL="backup_create")

    assert result.returncode == 3
    assert project.commands() == [["backup_create", "--clean", "--origin", "update"]]
    assert result.stderr.splitlines()[-1] == (
        "Update stopped: the backup failed (see above); nothing was migrated. Fix the backup, "
        "or run `invoke update --skip-backup` to update without one."
    )


def test_update_skip_backup_and_skip_static_leave_only_migrate(project):
    result = project.invoke("update", "--skip-backup", "--skip-static")

    assert result.returncode == 0, result.stderr
    assert project.commands() == [["migrate", "--noinput"]]


def test_update_accepts_inventrees_other_flags_and_says_it_ignores_them(project):
    flags = ["--backend", "--no-backend", "--frontend", "--no-frontend", "--uv", "--verbose"]

    result = project.invoke("update", "--skip-backup", *flags)

    assert result.returncode == 0, result.stderr
    assert project.commands() == [["migrate", "--noinput"], ["collectstatic", "--noinput", "--verbosity", "0"]]
    [note] = [line for line in result.stderr.splitlines() if line.startswith("Note:")]
    assert note == (
        "Note: --backend, --no-backend, --frontend, --no-frontend, --uv, --verbose ignored: this update has no "
        "backend translations, frontend build, package installation step (it runs backup, migrate, collectstatic)."
    )


def test_update_without_inventree_flags_prints_no_note(project):
    result = project.invoke("update", "--skip-backup")

    assert "Note:" not in result.stderr


# --- terminals ---------------------------------------------------------------------------------------------------


def test_without_a_terminal_the_command_reads_end_of_input_at_once(project):
    # stdin is a pipe that stays open for the whole run: a command waiting for input would hang until the timeout.
    read_end, write_end = os.pipe()
    try:
        result = project.invoke("restore", stdin=read_end, READ_STDIN="1")
    finally:
        os.close(read_end)
        os.close(write_end)

    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    assert (run["stdin_tty"], run["stdin"]) == (False, "")


def test_without_a_terminal_stdout_and_stderr_stay_apart(project):
    result = project.invoke("listbackups", "--json")

    assert result.stdout == "out of backup_list\n"
    assert result.stderr == "err of backup_list\n"


def test_on_a_terminal_the_command_runs_on_a_pty(project):
    on_terminal([sys.executable, "-m", "invoke", "restore"], project.root, project.env())

    [run] = project.runs()
    assert (run["stdin_tty"], run["stdout_tty"]) == (True, True)


def test_with_output_piped_the_command_gets_no_pty_even_from_a_terminal(project):
    controller, terminal = pty.openpty()
    try:
        result = project.invoke("listbackups", "--json", stdin=terminal)
    finally:
        os.close(controller)
        os.close(terminal)

    [run] = project.runs()
    assert (run["stdin_tty"], run["stdout_tty"]) == (False, False)
    assert result.stdout == "out of backup_list\n"


def test_restore_on_a_terminal_asks_and_no_changes_nothing(sqlite_site):
    doc = sqlite_site.media / "doc.txt"
    doc.write_text("backed up")
    sqlite_site.invoke("backup")
    doc.write_text("current")

    shown = on_terminal([sys.executable, "-m", "invoke", "restore"], ROOT, sqlite_site.env, answer=b"n")

    assert "Continue?" in shown
    assert "restore cancelled; nothing was changed" in shown
    assert doc.read_text() == "current"


# --- the repository's own tasks.py -------------------------------------------------------------------------------


def test_repository_tasks_are_the_apps_plus_demo_and_benchmark():
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert set(re.findall(r"^  (\S+)", result.stdout, flags=re.MULTILINE)) == {
        *("backup", "restore", "listbackups", "update", "verify", "rollback", "backup-check", "backup-config"),
        *("backup-export", "worker", "migrate", "static", "demo", "benchmark"),
    }
