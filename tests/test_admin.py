"""The admin pages: settings saved by staff, the status panel, and "Back up now" queued, never run inline."""

from __future__ import annotations

import gc
import io
from datetime import timedelta

import django
import pytest

django.setup()

from django.contrib.auth.models import Permission, User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402
from django_q.models import OrmQ, Schedule  # noqa: E402

from backup_app import streams  # noqa: E402
from backup_app.models import BackupRun, BackupSettings  # noqa: E402
from backup_app.schedule import BACKUP_NOW_TASK, SCHEDULE_NAME  # noqa: E402

SETTINGS_URL = "/admin/backup_app/backupsettings/1/change/"
HISTORY_URL = "/admin/backup_app/backuprun/"
BACKUP_NOW_URL = "/admin/backup_app/backuprun/backup-now/"


@pytest.fixture(scope="module")
def session_db():
    call_command("migrate", interactive=False, verbosity=0)


@pytest.fixture
def db(session_db):
    def clean():
        BackupRun.objects.all().delete()
        BackupSettings.objects.all().delete()
        OrmQ.objects.all().delete()
        User.objects.all().delete()

    clean()
    yield
    clean()


def staff(*permissions: str) -> Client:
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    for codename in ("view_backuprun", "view_backupsettings", "change_backupsettings", *permissions):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


def superuser() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("boss", password="pw"))
    return client


def test_a_command_run_in_process_as_workers_run_it_leaves_the_collector_alone(db):
    frozen = gc.get_freeze_count()

    call_command("backup_config", json=True, stdout=io.StringIO())

    assert gc.get_freeze_count() == frozen


def test_a_command_run_in_process_installs_no_heap_trimming(db):
    call_command("backup_config", json=True, stdout=io.StringIO())

    assert streams.streamed_hook() is None


def test_the_settings_list_leads_to_the_one_settings_page(db):
    response = superuser().get("/admin/backup_app/backupsettings/")

    assert response.status_code == 302
    assert response["Location"] == SETTINGS_URL


def test_staff_switch_automatic_backups_on(db):
    Schedule.objects.filter(name=SCHEDULE_NAME).update(next_run=timezone.now() + timedelta(hours=1))
    client = staff()

    response = client.post(
        SETTINGS_URL, {"enabled": "on", "interval_days": "2", "preferred_hour": "3", "keep": "5"}, follow=True
    )

    assert response.status_code == 200
    row = BackupSettings.load()
    assert (row.enabled, row.interval_days, row.preferred_hour, row.keep, row.keep_daily) == (True, 2, 3, 5, None)
    assert row.retention().keep == 5
    # The worker looks at the new settings at its next pass, not in an hour.
    assert Schedule.objects.get(name=SCHEDULE_NAME).next_run <= timezone.now()
    assert "Settings saved" in response.content.decode()


def test_interval_must_be_at_least_one_day(db):
    response = staff().post(SETTINGS_URL, {"enabled": "on", "interval_days": "0"})

    assert response.status_code == 200  # the form again, with the error
    assert "greater than or equal to 1" in response.content.decode()
    assert BackupSettings.load().interval_days == 1


def test_back_up_now_needs_the_permission(db):
    client = staff()

    page = client.get(HISTORY_URL).content.decode()
    response = client.post(BACKUP_NOW_URL)

    assert 'id="backup-now"' not in page
    assert response.status_code == 403
    assert OrmQ.objects.count() == 0


def test_back_up_now_queues_a_task_and_runs_nothing_in_the_request(db):
    client = staff("run_backup")

    page = client.get(HISTORY_URL).content.decode()
    response = client.post(BACKUP_NOW_URL)

    assert 'id="backup-now"' in page
    assert response.status_code == 302 and response["Location"] == HISTORY_URL
    [queued] = OrmQ.objects.all()
    assert queued.func() == BACKUP_NOW_TASK
    assert queued.task["kwargs"] == {"requested_by": "staff"}
    assert queued.task["timeout"] >= 6 * 3600
    assert BackupRun.objects.count() == 0


def test_back_up_now_is_refused_while_a_queued_backup_runs(db):
    BackupRun.objects.create(kind="scheduled", claim="backup")

    response = staff("run_backup").post(BACKUP_NOW_URL, follow=True)

    assert "already running" in response.content.decode()
    assert OrmQ.objects.count() == 0


def test_the_history_marks_failed_runs_and_the_status_says_so(db):
    now = timezone.now()
    BackupRun.objects.create(
        kind="scheduled", outcome="success", started=now - timedelta(days=1), finished=now - timedelta(days=1)
    )
    BackupRun.objects.create(
        kind="scheduled",
        outcome="failed",
        started=now - timedelta(hours=2),
        finished=now - timedelta(hours=2),
        error="backup failed: disk full",
    )

    page = staff().get(HISTORY_URL).content.decode()

    assert "✖ failed" in page and "✔ success" in page
    assert "LAST BACKUP FAILED" in page
    assert "The last backup failed 2 hours ago: backup failed: disk full" in page


def test_the_status_marks_an_overdue_backup(db):
    BackupSettings.objects.create(enabled=True, interval_days=1)
    when = timezone.now() - timedelta(days=3)
    BackupRun.objects.create(kind="scheduled", outcome="success", started=when, finished=when)

    page = staff().get(SETTINGS_URL).content.decode()

    assert "OVERDUE" in page
    assert "Overdue: no successful backup for 3 days, more than twice the 1-day interval." in page


def test_a_second_click_on_back_up_now_queues_nothing_more(db):
    client = staff("run_backup")

    client.post(BACKUP_NOW_URL)
    response = client.post(BACKUP_NOW_URL, follow=True)

    assert OrmQ.objects.count() == 1
    assert "already queued" in response.content.decode()


def test_no_worker_seen_is_said_on_the_status_panel(db):
    page = staff().get(HISTORY_URL).content.decode()  # no worker has ever run a task in this database

    assert 'id="worker-missing"' in page and "No worker seems to be running" in page


def test_back_up_now_without_a_worker_says_it_will_wait(db):
    response = staff("run_backup").post(BACKUP_NOW_URL, follow=True)

    assert "it waits until one is started" in response.content.decode()
    assert "runs it in a few seconds" not in response.content.decode()
