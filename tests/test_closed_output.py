"""A reader that goes away (``| head``) and Ctrl-C: the commands end quietly, with the status shells expect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT


def test_invoke_backup_config_into_head_ends_quietly(sqlite_site):
    result = subprocess.run(
        f"{sys.executable} -m invoke backup-config | head -n 1; echo status=${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", cwd=ROOT, env=sqlite_site.env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip

    assert result.stdout.splitlines()[1] == "status=141"
    assert "Traceback" not in result.stderr and "Broken" not in result.stderr, result.stderr


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
