"""Automatic backups: the due decision, the history, the health endpoint, and real django-q2 clusters.

The decision and the history are plain functions, tested in this process on
the session's private demo site.  The clusters are real ``manage.py
qcluster`` processes on the ORM broker of a throwaway site.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import django
import pytest
from conftest import ROOT, Site, free_port, unique_name

django.setup()

from django.core.management import call_command  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.utils import timezone  # noqa: E402

from backup_app.actions import backup  # noqa: E402
from backup_app.history import AlreadyRunning, finish_run, record_run, start_run  # noqa: E402
from backup_app.models import BackupRun, BackupSettings  # noqa: E402
from backup_app.schedule import (  # noqa: E402
    SCHEDULE_NAME,
    STALE_AFTER,
    backup_status,
    close_stale_runs,
    decide,
    register_schedule,
)

UTC = ZoneInfo("UTC")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- the decision: plain functions ------------------------------------------------------------


def test_nothing_is_due_while_automatic_backups_are_off():
    decision = decide(at("2026-11-28 03:00"), enabled=False, interval_days=1, last_success=None)

    assert not decision.due
    assert decision.next_due is None


def test_first_backup_is_due_at_once():
    decision = decide(at("2026-11-28 15:00"), enabled=True, interval_days=1, preferred_hour=2, last_success=None)

    assert decision.due


def test_not_due_before_the_interval_has_passed():
    decision = decide(at("2026-11-28 20:00"), enabled=True, interval_days=1, last_success=at("2026-11-28 02:04"))

    assert not decision.due
    assert decision.next_due == at("2026-11-29 02:00")


def test_due_at_the_same_hour_a_day_later_without_drift():
    # The hourly check found the backup due at 02:00 yesterday; it ended 02:04.  Today's 02:00
    # check must back up again, not wait until 03:00 (drift by one check per day).
    decision = decide(at("2026-11-29 02:00"), enabled=True, interval_days=1, last_success=at("2026-11-28 02:04"))

    assert decision.due


def test_interval_of_several_days():
    last = at("2026-11-28 02:04")

    assert not decide(at("2026-11-30 01:59"), enabled=True, interval_days=3, last_success=last).due
    assert decide(at("2026-12-01 02:00"), enabled=True, interval_days=3, last_success=last).due


def test_preferred_hour_waits_for_its_hour():
    last = at("2026-11-27 15:30")  # a manual backup in the afternoon

    early = decide(at("2026-11-28 01:00"), enabled=True, interval_days=1, preferred_hour=2, last_success=last)
    on_time = decide(at("2026-11-28 02:00"), enabled=True, interval_days=1, preferred_hour=2, last_success=last)

    assert not early.due and early.next_due == at("2026-11-28 02:00")
    assert on_time.due


def test_a_missed_preferred_hour_is_caught_up_at_once():
    decision = decide(
        at("2026-11-28 09:00"), enabled=True, interval_days=1, preferred_hour=2, last_success=at("2026-11-27 02:01")
    )

    assert decision.due


def test_preferred_hour_is_in_the_server_time_zone():
    with timezone.override(ZoneInfo("Europe/Berlin")):
        decision = decide(
            at("2026-11-28 00:30"), enabled=True, interval_days=1, preferred_hour=2, last_success=at("2026-11-27 01:00")
        )

    assert decision.next_due == at("2026-11-28 01:00")  # 02:00 in Berlin (UTC+1 in November)
    assert not decision.due


def test_retries_after_failures_are_spaced():
    last = at("2026-11-27 02:00")
    common = {"enabled": True, "interval_days": 1, "last_success": last}

    one = decide(at("2026-11-28 02:30"), last_failure=at("2026-11-28 02:05"), failures=1, **common)
    three = decide(at("2026-11-28 07:00"), last_failure=at("2026-11-28 05:05"), failures=3, **common)
    many = decide(at("2026-11-29 00:00"), last_failure=at("2026-11-28 12:00"), failures=10, **common)

    assert not one.due and one.next_due == at("2026-11-28 03:05")
    assert not three.due and three.next_due == at("2026-11-28 09:05")  # 1 h, 2 h, then 4 h
    assert many.due and many.next_due == at("2026-11-29 00:00")  # never more than 12 h apart


# --- the history: record_run, claims, stale runs ----------------------------------------------


@pytest.fixture(scope="module")
def session_db():
    """The session's private demo site, migrated (conftest points Django at it)."""
    call_command("migrate", interactive=False, verbosity=0)


@pytest.fixture
def db(session_db):
    BackupRun.objects.all().delete()
    BackupSettings.objects.all().delete()
    yield
    BackupRun.objects.all().delete()
    BackupSettings.objects.all().delete()


def test_record_run_records_success(db):
    with record_run("manual") as run:
        run.set_name = "2026-11-28-020000"

    row = BackupRun.objects.get()
    assert (row.kind, row.outcome, row.set_name, row.error) == ("manual", "success", "2026-11-28-020000", "")
    assert row.finished >= row.started


@override_settings(EMAIL_HOST_PASSWORD="smtp-Secret-4711")
def test_record_run_records_a_failure_as_one_line_without_secrets(db):
    with pytest.raises(RuntimeError), record_run("scheduled"):
        raise RuntimeError("could not log in with smtp-Secret-4711\n  at line 2")

    row = BackupRun.objects.get()
    assert row.outcome == "failed"
    assert row.error == "RuntimeError: could not log in with ******** at line 2"


def test_a_queued_backup_is_recorded_in_the_row_that_holds_the_claim(db):
    row = start_run("scheduled", claim="backup")

    result = backup.run(backup.BackupOptions(origin="scheduled"), record=row)

    recorded = BackupRun.objects.values_list("pk", "kind", "outcome", "set_name", "size", "claim")
    assert list(recorded) == [(row.pk, "scheduled", "success", result.name, result.size, None)]


def test_only_one_run_holds_the_claim(db):
    first = start_run("scheduled", claim="backup")

    with pytest.raises(AlreadyRunning):
        start_run("manual", claim="backup")
    finish_run(first)
    second = start_run("manual", claim="backup")

    assert BackupRun.objects.get(pk=second.pk).claim == "backup"
    assert BackupRun.objects.get(pk=first.pk).claim is None


def test_stale_running_rows_are_closed_and_free_the_claim(db):
    now = timezone.now()
    stale = start_run("scheduled", claim="backup")
    BackupRun.objects.filter(pk=stale.pk).update(started=now - STALE_AFTER - timedelta(minutes=1))
    fresh = start_run("manual")

    assert close_stale_runs(now) == 1

    stale.refresh_from_db()
    assert (stale.outcome, stale.claim) == ("failed", None)
    assert "did not finish" in stale.error
    assert BackupRun.objects.get(pk=fresh.pk).outcome == "running"


def test_a_run_whose_process_died_is_closed_at_once(db):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = start_run("scheduled", claim="backup")
    BackupRun.objects.filter(pk=dead.pk).update(pid=int(gone.stdout))
    alive = start_run("manual")  # this process: still running

    assert close_stale_runs() == 1

    dead.refresh_from_db()
    assert (dead.outcome, dead.claim) == ("failed", None)
    assert f"pid {gone.stdout.strip()}" in dead.error
    assert BackupRun.objects.get(pk=alive.pk).outcome == "running"


def test_the_schedule_is_registered_once(db):
    from django_q.models import Schedule

    register_schedule()
    Schedule.objects.create(name=SCHEDULE_NAME, func="somewhere.else")  # a stray copy
    register_schedule()
    register_schedule()

    [schedule] = Schedule.objects.filter(name=SCHEDULE_NAME)
    assert schedule.func == "backup_app.schedule.scheduled_backup"
    assert schedule.schedule_type == Schedule.HOURLY
    assert "'timeout': 21600" in schedule.kwargs


# --- the health endpoint --------------------------------------------------------------------


def add_run(kind="scheduled", outcome="success", hours_ago=1.0, partial=False) -> BackupRun:
    when = timezone.now() - timedelta(hours=hours_ago)
    return BackupRun.objects.create(
        kind=kind, outcome=outcome, started=when - timedelta(minutes=2), finished=when, set_name="s", partial=partial
    )


def health() -> tuple[int, dict]:
    response = Client().get("/backup/health/")
    return response.status_code, response.json()


def test_health_is_503_before_the_first_backup(db):
    code, body = health()

    assert code == 503
    assert body["status"] == "never"
    assert body["last_success"] is None


def test_health_is_200_when_the_last_backup_is_fresh(db):
    run = add_run(hours_ago=20)

    code, body = health()

    assert code == 200
    assert body["status"] == "ok"
    assert body["last_success"] == run.finished.isoformat()
    assert 20 * 3600 - 60 < body["age_seconds"] < 20 * 3600 + 60


def test_health_is_503_when_overdue(db):
    BackupSettings.objects.create(enabled=True, interval_days=1)
    add_run(hours_ago=49)

    code, body = health()

    assert code == 503
    assert body["status"] == "overdue"


def test_health_follows_the_interval(db):
    BackupSettings.objects.create(enabled=True, interval_days=3)
    add_run(hours_ago=49)

    assert health()[0] == 200


def test_health_is_503_when_the_last_backup_failed(db):
    add_run(hours_ago=5)
    add_run(outcome="failed", hours_ago=1)

    code, body = health()

    assert code == 503
    assert body["status"] == "failed"
    assert "error" not in str(body["last_run"])  # no error text for unauthenticated callers


def test_health_ignores_partial_backups_and_restores(db):
    add_run(hours_ago=5)
    add_run(outcome="failed", hours_ago=1, partial=True)
    add_run(kind="restore", outcome="failed", hours_ago=1)

    assert health()[0] == 200


def test_status_says_when_the_next_backup_is_due(db):
    # The hour the last backup ran: the next is due a day after it, ~21 hours from now at any time of day (a fixed
    # hour made this fail when the test ran within 3 hours after that hour of the next day).
    hour = timezone.localtime(timezone.now() - timedelta(hours=3)).hour
    BackupSettings.objects.create(enabled=True, interval_days=1, preferred_hour=hour)
    add_run(hours_ago=3)

    lines = " ".join(text for _level, text in backup_status().lines())

    assert "Last successful backup: 3 hours ago" in lines
    assert "Next automatic backup: in " in lines


# --- real processes: the scheduled task and django-q2 clusters ---------------------------------


def django_shell(site: Site, code: str) -> str:
    return site.manage("shell", "--no-imports", "-c", code).stdout


def enable(site: Site, **fields) -> None:
    values = {"enabled": True, **fields}
    django_shell(
        site,
        "from backup_app.models import BackupSettings; "
        f"BackupSettings.objects.update_or_create(id=1, defaults={values!r})",
    )


def runs(site: Site) -> list[dict]:
    with sqlite3.connect(site.root / "db.sqlite3", timeout=30) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM backup_app_backuprun ORDER BY started").fetchall()
    return [dict(r) for r in rows]


def q_tasks(site: Site) -> tuple[int, int]:
    """(tasks done, tasks still queued) of the site's django-q2."""
    with sqlite3.connect(site.root / "db.sqlite3", timeout=30) as conn:
        done = conn.execute("SELECT COUNT(*) FROM django_q_task").fetchone()[0]
        queued = conn.execute("SELECT COUNT(*) FROM django_q_ormq").fetchone()[0]
    return done, queued


def start_cluster(site: Site, log: Path) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=site.env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_cluster(proc: subprocess.Popen) -> None:
    """SIGTERM to the cluster's main process (it stops its workers); the whole group killed if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_for(condition, timeout: float, what: str, logs: list[Path] = ()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    tails = "\n".join(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:] for log in logs)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


def test_scheduled_backup_applies_runtime_retention_and_is_then_not_due(sqlite_site):
    for _ in range(3):
        sqlite_site.manage("backup_create", "--quiet")
    enable(sqlite_site, keep=2)
    older = [s["name"] for s in sqlite_site.sets()]
    # The last success is a few seconds old: make the history say it was two days ago.
    with sqlite3.connect(sqlite_site.root / "db.sqlite3") as conn:
        conn.execute("UPDATE backup_app_backuprun SET started = '2026-01-01 00:00', finished = '2026-01-01 00:01'")

    first = django_shell(sqlite_site, "from backup_app.schedule import scheduled_backup; print(scheduled_backup())")
    second = django_shell(sqlite_site, "from backup_app.schedule import scheduled_backup; print(scheduled_backup())")

    names = [s["name"] for s in sqlite_site.sets()]
    assert first.startswith("backed up set ")
    assert second.startswith("not due: ")
    assert len(names) == 2 and names[1] == older[0]
    last = runs(sqlite_site)[-1]
    assert (last["kind"], last["outcome"], last["set_name"]) == ("scheduled", "success", names[0])


class Inbox:
    def __init__(self):
        self.messages: list[str] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append(envelope.content.decode())
        return "250 OK"


def test_failed_scheduled_backup_is_recorded_and_mailed(sqlite_site, tmp_path):
    from aiosmtpd.controller import Controller

    port = free_port()
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the backup folder should be")
    sqlite_site.env.update(
        {
            "INVENTREE_BACKUP_DIR": str(blocker),
            "INVENTREE_EMAIL_HOST": "127.0.0.1",
            "INVENTREE_EMAIL_PORT": str(port),
            "INVENTREE_ADMIN_EMAIL": "admin@example.com",
            "INVENTREE_BACKUP_SEND_EMAIL": "true",
        }
    )
    enable(sqlite_site)
    try:
        result = sqlite_site.manage(
            "shell",
            "--no-imports",
            "-c",
            "from backup_app.schedule import scheduled_backup; scheduled_backup()",
            check=False,
        )
    finally:
        controller.stop()

    assert result.returncode != 0  # raised, so django-q2 lists the task as failed too
    [run] = runs(sqlite_site)
    assert (run["kind"], run["outcome"], run["claim"]) == ("scheduled", "failed", None)
    assert "backup refused" in run["error"]
    [mail] = inbox.messages
    assert "A scheduled backup failed" in mail


def test_a_cluster_makes_the_scheduled_backup(sqlite_site, tmp_path):
    (sqlite_site.media / "doc.txt").write_text("scheduled")
    enable(sqlite_site)
    log = tmp_path / "qcluster.log"

    cluster = start_cluster(sqlite_site, log)
    try:
        # django-q2's scheduler makes its first pass 30 s after the cluster starts.
        wait_for(lambda: [r for r in runs(sqlite_site) if r["outcome"] != "running"], 75, "the scheduled run", [log])
    finally:
        stop_cluster(cluster)

    [run] = runs(sqlite_site)
    [backup] = sqlite_site.sets()
    assert (run["kind"], run["outcome"], run["error"]) == ("scheduled", "success", ""), run
    assert backup["complete"] and backup["name"] == run["set_name"]
    assert run["size"] == sum(f["size"] for f in backup["files"] if f["kind"] != "manifest")


def test_two_clusters_make_exactly_one_backup(sqlite_site, tmp_path):
    (sqlite_site.media / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    enable(sqlite_site)
    logs = [tmp_path / "qcluster-1.log", tmp_path / "qcluster-2.log"]
    clusters = [start_cluster(sqlite_site, log) for log in logs]
    copies = 6
    try:
        # Both clusters' schedulers, and catch-up after downtime, can queue the check more than
        # once: queue it several times at once and let both clusters race for it.
        django_shell(
            sqlite_site,
            "from django_q.tasks import async_task; from backup_app.schedule import TASK_OPTIONS, CHECK_TASK\n"
            f"for _ in range({copies}): async_task(CHECK_TASK, q_options=dict(TASK_OPTIONS))",
        )
        wait_for(lambda: q_tasks(sqlite_site)[0] >= copies, 60, f"{copies} tasks to finish", logs)
    finally:
        for cluster in clusters:
            stop_cluster(cluster)

    assert all(c.returncode is not None for c in clusters)
    [run] = runs(sqlite_site)
    assert (run["kind"], run["outcome"]) == ("scheduled", "success"), run
    assert [s["name"] for s in sqlite_site.sets()] == [run["set_name"]]


# --- the Redis broker ---------------------------------------------------------------------------

REDIS_SETTINGS = """\
from config.settings import *  # noqa: F403

Q_CLUSTER = {{**Q_CLUSTER, "name": "{name}", "redis": "redis://127.0.0.1:6379/0"}}  # noqa: F405
Q_CLUSTER.pop("orm", None)
"""


@pytest.fixture
def redis_site(sqlite_site, tmp_path) -> Site:
    """The site with django-q2 on the Redis broker (127.0.0.1:6379), a queue of its own."""
    try:
        import redis

        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3).ping()
    except Exception as err:
        from conftest import service_missing

        service_missing("Redis on 127.0.0.1:6379 (and the redis package)", err)
    name = unique_name()
    (tmp_path / "redis_settings.py").write_text(REDIS_SETTINGS.format(name=name))
    sqlite_site.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), sqlite_site.env.get("PYTHONPATH")]))
    sqlite_site.env["DJANGO_SETTINGS_MODULE"] = "redis_settings"
    return sqlite_site


def test_backup_redis_url_puts_the_demo_site_on_redis(sqlite_site):
    sqlite_site.env["INVENTREE_BACKUP_REDIS_URL"] = "redis://127.0.0.1:6379/0"

    out = django_shell(sqlite_site, "from django.conf import settings; print(sorted(settings.Q_CLUSTER))")

    assert "'redis'" in out and "'orm'" not in out


def test_back_up_now_runs_on_the_redis_broker(redis_site, tmp_path):
    log = tmp_path / "qcluster.log"
    broker = django_shell(redis_site, "from django_q.brokers import get_broker; print(type(get_broker()).__module__)")
    assert broker.strip() == "django_q.brokers.redis_broker"
    django_shell(redis_site, "from backup_app.schedule import enqueue_backup_now; enqueue_backup_now('ops')")
    assert q_tasks(redis_site) == (0, 0)  # nothing in the database queue: the task is in Redis
    assert backup_now_queued(redis_site)  # so the admin's second click queues nothing (the queue is unreadable)

    cluster = start_cluster(redis_site, log)
    try:
        [run] = wait_for(lambda: [r for r in runs(redis_site) if r["outcome"] != "running"], 45, "the backup", [log])
    finally:
        stop_cluster(cluster)

    assert (run["kind"], run["outcome"], run["requested_by"]) == ("manual", "success", "ops"), run
    assert [s["name"] for s in redis_site.sets()] == [run["set_name"]]
    assert not backup_now_queued(redis_site)  # taken: a click now queues a new one


def backup_now_queued(site) -> bool:
    out = django_shell(site, "from backup_app.schedule import backup_now_queued; print(backup_now_queued())")
    return out.strip() == "True"


def test_a_back_up_now_no_worker_takes_from_redis_says_no_worker_runs(redis_site):
    django_shell(redis_site, "from backup_app.schedule import enqueue_backup_now; enqueue_backup_now('ops')")
    [marker] = (redis_site.root / "safety").glob(".backup-now-queued")
    queued = time.time() - 300
    os.utime(marker, (queued, queued))  # queued five minutes ago, and still not taken

    try:
        missing = django_shell(redis_site, "from backup_app.schedule import worker_missing; print(worker_missing())")
    finally:
        django_shell(redis_site, "from django_q.brokers import get_broker; get_broker().purge_queue()")

    assert missing.startswith("a task has waited ") and missing.strip().endswith(" for a worker"), missing


def test_a_back_up_now_a_worker_takes_at_once_is_not_left_queued(redis_site, tmp_path):
    # A worker may take the task before async_task has even returned (django-q2's sync mode takes it inside the
    # call, as a fast worker on Redis can): the marker of the queued backup must not outlive the backup.
    (tmp_path / "redis_sync_settings.py").write_text(
        'from redis_settings import *  # noqa: F403\nQ_CLUSTER["sync"] = True\n'
    )
    redis_site.env["DJANGO_SETTINGS_MODULE"] = "redis_sync_settings"
    django_shell(redis_site, "from backup_app.schedule import enqueue_backup_now; enqueue_backup_now('ops')")

    [run] = runs(redis_site)
    assert (run["kind"], run["outcome"]) == ("manual", "success"), run
    assert not backup_now_queued(redis_site)  # else a click queues nothing for 24 h, and "no worker runs"


# --- the history across restores -------------------------------------------------------------


def test_the_history_survives_a_restore(sqlite_site):
    sqlite_site.manage("backup_create", "--quiet")
    first = sqlite_site.sets()[0]["name"]
    sqlite_site.manage("backup_create", "--quiet")
    db_file = next(f["name"] for s in sqlite_site.sets() if s["name"] == first for f in s["files"] if f["kind"] == "db")

    sqlite_site.manage("backup_restore", "--noinput", "--quiet", "--db-file", db_file)

    history = [(r["kind"], r["outcome"], r["set_name"]) for r in runs(sqlite_site)]
    second = sqlite_site.sets()[0]["name"]
    assert history == [("manual", "success", first), ("manual", "success", second), ("restore", "success", first)]


def test_a_restore_on_a_new_machine_closes_the_run_its_backup_caught(sqlite_site, tmp_path):
    from conftest import make_site

    sqlite_site.manage("backup_create", "--quiet")
    [backup] = sqlite_site.sets()
    new = make_site(tmp_path / "new-machine")
    new.manage("migrate", "--noinput", "-v0")

    new.manage("backup_restore", "--noinput", "--quiet", "--path", str(sqlite_site.backups))

    history = [(r["kind"], r["outcome"], r["set_name"]) for r in runs(new)]
    # The dump was taken while its own run was "running": that run wrote the restored set.
    assert history == [("manual", "success", backup["name"]), ("restore", "success", backup["name"])]
