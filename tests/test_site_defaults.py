"""A site that configured nothing but the adoption page's lines: django-q2 and the safety folder work by default.

The site is ``startproject mysite`` with prefix ``MYSITE_`` (tests/startproject_site.py): no ``Q_CLUSTER``, no
``MYSITE_BACKUP_SAFETY_DIR``.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

from startproject_site import SETTINGS, make_project

Q_WARNING = "Retry and timeout are misconfigured"


def test_a_site_without_q_cluster_gets_no_django_q_warning(tmp_path):
    project = make_project(tmp_path, MYSITE_BACKUP_DIR=str(tmp_path / "backups"))

    result = project.manage("check")

    assert result.returncode == 0, result.stderr
    assert Q_WARNING not in result.stderr
    assert "backup_app.W002" not in result.stderr  # retry above the backup task's timeout


def test_the_default_worker_settings_use_the_database_broker_with_retry_above_the_backup_timeout(tmp_path):
    project = make_project(tmp_path, MYSITE_BACKUP_DIR=str(tmp_path / "backups"))

    shown = project.manage(
        "shell",
        "--no-imports",
        "-c",
        "import json; from django.conf import settings; print(json.dumps(settings.Q_CLUSTER))",
    )

    q = json.loads(shown.stdout)
    assert q["orm"] == "default"
    assert q["retry"] > q["timeout"] >= 6 * 3600
    assert Q_WARNING not in shown.stderr


def test_a_site_q_cluster_is_kept_as_it_is(tmp_path):
    own = 'Q_CLUSTER = {"name": "site", "orm": "default", "timeout": 60, "retry": 120}\n'
    project = make_project(tmp_path, own + SETTINGS, MYSITE_BACKUP_DIR=str(tmp_path / "backups"))

    shown = project.manage("shell", "--no-imports", "-c", "from django.conf import settings; print(settings.Q_CLUSTER)")

    assert shown.stdout.strip() == "{'name': 'site', 'orm': 'default', 'timeout': 60, 'retry': 120}"


def test_the_worker_runs_a_queued_backup_with_the_default_settings(tmp_path):
    backups = tmp_path / "backups"
    project = make_project(tmp_path, MYSITE_BACKUP_DIR=str(backups))
    queued = project.manage(
        "shell", "--no-imports", "-c", "from backup_app.schedule import enqueue_backup_now; enqueue_backup_now()"
    )
    assert queued.returncode == 0, queued.stderr
    with sqlite3.connect(project.root / "db.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM django_q_ormq").fetchone()[0] == 1  # the database broker

    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=project.root,
            env=project.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not list(backups.glob("*.manifest.metadata")):
                time.sleep(0.5)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)

    assert list(backups.glob("*.manifest.metadata")), log.read_text()[-3000:]
    assert Q_WARNING not in log.read_text()


def test_safety_copies_default_next_to_the_project_not_inside_it(tmp_path):
    project = make_project(tmp_path, MYSITE_BACKUP_DIR=str(tmp_path / "backups"))
    assert project.manage("backup_create", "--quiet").returncode == 0

    restored = project.manage("backup_restore", "--quiet")

    assert restored.returncode == 0, restored.stderr
    safety = tmp_path / "mysite-project-backup-safety"
    assert [p.name for p in safety.iterdir() if not p.name.startswith(".")], restored.stderr
    assert [p.relative_to(safety).parts[1] for p in safety.glob("*/safety.json")] == ["safety.json"]
    assert not list(project.root.rglob("safety.json"))
