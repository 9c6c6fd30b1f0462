"""Containers of one host name on one machine (compose ``hostname:``, one ``--hostname``): they share the boot id
and the host name, not the PID namespace, so a pid of one means another process (or none) in the other.  Whatever
judges "is this process alive, is this mine" from host and pid also compares the PID namespace
(docs/incremental.md "Repacking", docs/restore.md).  Real processes in namespaces of their own
(``unshare --pid --fork --mount-proc``, root only): the same pid on the same host name is really seen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

#: A command in a PID namespace (and a /proc) of its own; it dies with the unshare process.
UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")


def _why_no_namespaces() -> str | None:
    try:
        subprocess.run([*UNSHARE, "true"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        return f"cannot make a PID namespace here (unshare --pid needs root): {err}"
    return None


NO_NAMESPACES = _why_no_namespaces()
needs_namespaces = pytest.mark.skipif(NO_NAMESPACES is not None, reason=NO_NAMESPACES or "")
pytestmark = needs_namespaces


def in_namespace(code: str, *args: str, second: bool = False, env: dict | None = None) -> subprocess.Popen:
    """Python ``code`` in a new PID namespace: as its pid 1, or (``second``) as pid 2, under a shell."""
    python = [sys.executable, "-c", code, *args]
    argv = [*UNSHARE, "sh", "-c", '"$@"; :', "sh", *python] if second else [*UNSHARE, *python]
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def judged(code: str, *args: str, env: dict | None = None) -> str:
    """What ``code`` prints, run as pid 1 of a namespace of its own (where the other's pid is taken or missing)."""
    proc = in_namespace(code, *args, env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


@pytest.fixture
def running():
    """Start a process in a namespace of its own that prints one line when ready and then waits; ended after."""
    started: list[subprocess.Popen] = []

    def start(code: str, *args: str, second: bool = False, env: dict | None = None) -> str:
        proc = in_namespace(code, *args, second=second, env=env)
        started.append(proc)
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        return line.strip()

    yield start
    for proc in started:
        proc.kill()  # unshare: its child dies with it (--kill-child)
        proc.wait()


OWNER = """
import json, time
from backup_app.tools import owner
print(json.dumps(owner()), flush=True)
time.sleep(600)
"""

JUDGE = """
import json, sys
from backup_app.tools import owner_gone
print(json.dumps(owner_gone(json.loads(sys.argv[1]))))
"""


def test_a_marker_of_pid_1_in_another_namespace_is_not_judged_by_this_namespaces_pid_1(running):
    """Both are pid 1 on this host name and boot: the marker's process runs; another container cannot tell."""
    marker = json.loads(running(OWNER))
    assert marker["pid"] == 1
    assert json.loads(judged(JUDGE, json.dumps(marker))) is None
    assert json.loads(judged(JUDGE, json.dumps({**marker, "pid_ns": ""}))) is True  # no namespace: as before


def test_a_marker_of_this_namespace_is_still_judged_by_its_pid():
    proc = in_namespace("import json; from backup_app.tools import owner; print(json.dumps(owner()))", second=True)
    out, err = proc.communicate(timeout=300)
    marker = json.loads(out)  # pid 2 of a namespace that has ended
    code = JUDGE.replace("json.loads(sys.argv[1])", "{**json.loads(sys.argv[1]), 'pid_ns': owner()['pid_ns']}")
    code = code.replace("import owner_gone", "import owner, owner_gone")
    assert json.loads(judged(code, json.dumps(marker))) is True  # pid 2 is not there in the judge's namespace


STAGING = """
import os, sys, time
from pathlib import Path
from backup_app.media import staging_folder
print(staging_folder(Path(sys.argv[1])).name, os.getpid(), flush=True)
time.sleep(600)
"""

CLEANUP = """
import os, sys
from pathlib import Path
from django.conf import settings
settings.configure()
from django.core.files.storage import FileSystemStorage
from backup_app.media import STAGING_PREFIX, remove_stale_staging
from backup_app.tools import owner_tag
dead = Path(sys.argv[1]) / f"{STAGING_PREFIX}4000000-{owner_tag()}-x"  # a pid this namespace does not have
dead.mkdir()
print(sorted(remove_stale_staging(FileSystemStorage(location=sys.argv[1]))))
"""


def test_a_restores_staging_folder_in_another_namespace_is_left_and_a_dead_one_of_this_namespace_goes(
    running, tmp_path
):
    """The live restore is pid 2 of its namespace; the cleaning one's namespace has no pid 2."""
    name, pid = running(STAGING, str(tmp_path), second=True).split()
    assert pid == "2"
    removed = json.loads(judged(CLEANUP, str(tmp_path)).replace("'", '"'))
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert len(removed) == 1 and removed[0].startswith(".backup-restore-4000000-")


RUN = """
from backup_app.history import start_run
run = start_run("backup", claim="scheduled")
print(run.pk, flush=True)
import time; time.sleep(600)
"""

CLOSE = """
from backup_app.history import close_dead_runs
print(close_dead_runs())
"""


def test_a_running_backup_of_another_namespace_is_not_closed_as_dead_and_keeps_its_claim(running, sqlite_site):
    """Its pid (2 there) is not in the closing command's namespace: before, the row was closed as failed and its
    claim freed, so a second queued backup could start beside the running one."""
    site = sqlite_site
    env = {**os.environ, **site.env}
    setup = "import django; django.setup()\n"
    pk = running(setup + RUN, second=True, env=env)
    assert judged(setup + CLOSE, env=env).strip() == "0"
    row = site.manage("shell", "-c", SHOW.format(pk=pk)).stdout.splitlines()[-1]
    assert row == "running scheduled"


SHOW = "from backup_app.models import BackupRun; r = BackupRun.objects.get(pk={pk}); print(r.outcome, r.claim)"
