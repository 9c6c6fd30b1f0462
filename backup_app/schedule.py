"""Automatic backups on django-q2: the hourly check, the backup it starts, and the status admins see.

One django-q2 schedule (registered after ``migrate``, idempotently) runs
:func:`scheduled_backup` every hour.  The check backs up only when automatic
backups are switched on (:class:`~backup_app.models.BackupSettings`) and a
backup is due: the interval has passed since the last successful backup (at
the preferred hour, when one is set), and after a failure the spaced retry
time has come.  It runs the backup action (the code of ``invoke backup``)
with the run-time retention, which the action applies under the same site
lock once the new set is listed complete.

Exactly one backup runs however many workers or clusters share the database:
a queued backup first writes its history row holding the unique claim
``"backup"`` (an insert that only one process can win, on every database
engine), then decides again whether a backup is due, now that no other
queued backup can start.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from django.db import DEFAULT_DB_ALIAS, connections, router
from django.utils import timezone

from . import hints
from .errors import BackupAppError
from .history import AlreadyRunning, discard_run, record_run, same_pid_namespace, start_run
from .models import BackupRun, BackupSettings
from .progress import size_text
from .sets import age_text
from .settings import app_settings
from .tools import process_exists

logger = logging.getLogger("backup_app")

SCHEDULE_NAME = "backup_app: automatic backups"
CHECK_TASK = "backup_app.schedule.scheduled_backup"
BACKUP_NOW_TASK = "backup_app.schedule.backup_now"
#: The check runs this often; a due backup starts at the first check after its due time.
CHECK_EVERY = timedelta(hours=1)
#: Seconds a backup task may run before django-q2 stops it: long enough for large media.
#: Keep Q_CLUSTER["retry"] above it, or the ORM broker hands a running task out again
#: (harmless, the claim refuses it, but noisy).
TASK_TIMEOUT = 6 * 3600
#: A ``running`` row older than this belongs to a process that died; it is closed as failed.
STALE_AFTER = timedelta(seconds=TASK_TIMEOUT) + timedelta(minutes=15)
#: Retries after failed automatic backups: 1 h, 2 h, 4 h ... at most 12 h apart.
RETRY_FIRST = timedelta(hours=1)
RETRY_MAX = timedelta(hours=12)
CLAIM = "backup"
#: django-q2 options of every backup task: our own timeout, and a failed task is not handed out
#: again by the broker (the check spaces retries itself).
TASK_OPTIONS = {"timeout": TASK_TIMEOUT, "ack_failure": True}


# -- the decision -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """Whether a backup is due at ``now``; ``next_due`` is None when automatic backups are off."""

    due: bool
    next_due: datetime | None
    reason: str


def regular_due(last_success: datetime, interval_days: int, preferred_hour: int | None) -> datetime:
    """When the next backup is due after one that succeeded at ``last_success``.

    The due time is ``interval_days`` calendar days later (server time zone), at
    ``preferred_hour`` or else at the hour the last backup ran, so backups
    keep to a time of day instead of drifting by the check interval.
    """
    local = timezone.localtime(last_success)
    day = local.date() + timedelta(days=interval_days)
    hour = preferred_hour if preferred_hour is not None else local.hour
    return timezone.make_aware(datetime.combine(day, time(hour)))


def retry_due(last_failure: datetime, failures: int) -> datetime:
    """When to try again after ``failures`` failed automatic backups in a row, the last at ``last_failure``."""
    spacing = min(RETRY_FIRST * 2 ** max(failures - 1, 0), RETRY_MAX)
    return last_failure + spacing


def decide(
    now: datetime,
    *,
    enabled: bool,
    interval_days: int,
    preferred_hour: int | None = None,
    last_success: datetime | None = None,
    last_failure: datetime | None = None,
    failures: int = 0,
) -> Decision:
    """Is an automatic backup due at ``now``?

    ``last_success`` is the end of the last successful full backup (None:
    never); ``failures`` the automatic backups that failed since, the last
    ending at ``last_failure``.  With no backup yet, one is due at once.
    """
    if not enabled:
        return Decision(False, None, "automatic backups are off")
    due_at = regular_due(last_success, interval_days, preferred_hour) if last_success else None
    reason = "no backup yet" if last_success is None else f"the last backup is {duration_text(now - last_success)} old"
    if failures and last_failure is not None:
        retry_at = retry_due(last_failure, failures)
        if due_at is None or retry_at > due_at:
            due_at = retry_at
            reason = f"{failures} automatic backup{'s' if failures != 1 else ''} failed; retrying spaced"
    if due_at is None or now >= due_at:
        return Decision(True, due_at or now, reason)
    return Decision(False, due_at, f"next backup due at {timezone.localtime(due_at):%Y-%m-%d %H:%M %Z}")


# -- the state, from the history ----------------------------------------------------------------


def _backups():
    return BackupRun.objects.filter(kind__in=BackupRun.BACKUP_KINDS, partial=False)


@dataclass
class Status:
    """What the admin page and the health endpoint show."""

    now: datetime
    settings: BackupSettings
    last_success: BackupRun | None
    last_finished: BackupRun | None  # the latest full backup that ended, whatever its outcome
    running: BackupRun | None
    decision: Decision

    @property
    def age(self) -> timedelta | None:
        return self.now - self.last_success.finished if self.last_success else None

    @property
    def interval(self) -> timedelta:
        return timedelta(days=self.settings.interval_days)

    @property
    def state(self) -> str:
        """``failed`` (the last backup failed), ``never``, ``overdue`` (older than twice the interval), ``ok``."""
        if self.last_finished is not None and self.last_finished.outcome == BackupRun.FAILED:
            return "failed"
        if self.last_success is None:
            return "never"
        if self.age > 2 * self.interval:
            return "overdue"
        return "ok"

    @property
    def healthy(self) -> bool:
        return self.state == "ok"

    def lines(self) -> list[tuple[str, str]]:
        """``(level, sentence)`` pairs in plain words; level is ``ok``, ``info``, ``warning`` or ``error``."""
        out: list[tuple[str, str]] = []
        if self.last_success is None:
            out.append(("warning", "No successful backup is recorded yet."))
        else:
            s = self.last_success
            size = f", {size_text(s.size)}" if s.size is not None else ""
            out.append(
                (
                    "ok" if self.state == "ok" else "info",
                    f"Last successful backup: {duration_text(self.age)} ago ({_when(s.finished)}), "
                    f"set {s.set_name or '?'}{size}.",
                )
            )
        if self.state == "overdue":
            out.append(
                (
                    "error",
                    f"Overdue: no successful backup for {duration_text(self.age)}, more than twice the "
                    f"{self.settings.interval_days}-day interval.",
                )
            )
        if self.state == "failed":
            f = self.last_finished
            out.append(("error", f"The last backup failed {duration_text(self.now - f.finished)} ago: {f.error}"))
        if self.running is not None:
            out.append(("info", f"A {self.running.kind} backup is running since {_when(self.running.started)}."))
        d = self.decision
        if d.next_due is None:
            out.append(("info", "Automatic backups are off."))
        elif d.due:
            waiting = self.now - d.next_due
            late = (
                f" (due since {duration_text(waiting)}; is the worker running? {hints.command('worker')})"
                if waiting > 2 * CHECK_EVERY
                else ""
            )
            out.append(("info", f"Next automatic backup: due now, at the next hourly check{late}."))
        else:
            wait = duration_text(d.next_due - self.now)
            out.append(("info", f"Next automatic backup: in {wait} ({_when(d.next_due)})."))
        return out

    def as_json(self) -> dict:
        s = self.last_success
        f = self.last_finished
        return {
            "status": self.state,
            "healthy": self.healthy,
            "enabled": self.settings.enabled,
            "interval_days": self.settings.interval_days,
            "last_success": s.finished.isoformat() if s else None,
            "last_success_set": s.set_name if s else None,
            "age_seconds": int(self.age.total_seconds()) if s else None,
            "age": duration_text(self.age) if s else None,
            "next_due": self.decision.next_due.isoformat() if self.decision.next_due else None,
            "last_run": {"kind": f.kind, "outcome": f.outcome, "finished": f.finished.isoformat()} if f else None,
            "running": self.running is not None,
        }


def current_decision(now: datetime, settings: BackupSettings | None = None, exclude: BackupRun | None = None):
    """:func:`decide` with the run-time settings and the history of this site."""
    settings = settings or BackupSettings.load()
    backups = _backups()
    if exclude is not None and exclude.pk is not None:
        backups = backups.exclude(pk=exclude.pk)
    last_success = backups.filter(outcome=BackupRun.SUCCESS).order_by("-finished").first()
    failed = BackupRun.objects.filter(kind=BackupRun.SCHEDULED, outcome=BackupRun.FAILED)
    if last_success is not None:
        failed = failed.filter(finished__gt=last_success.finished)
    last_failure = failed.order_by("-finished").first()
    return decide(
        now,
        enabled=settings.enabled,
        interval_days=settings.interval_days,
        preferred_hour=settings.preferred_hour,
        last_success=last_success.finished if last_success else None,
        last_failure=last_failure.finished if last_failure else None,
        failures=failed.count(),
    )


def backup_status(now: datetime | None = None) -> Status:
    """The state of this site's backups at ``now`` (default: now)."""
    now = now or timezone.now()
    settings = BackupSettings.load()
    backups = _backups()
    return Status(
        now=now,
        settings=settings,
        last_success=backups.filter(outcome=BackupRun.SUCCESS).order_by("-finished").first(),
        last_finished=backups.exclude(outcome=BackupRun.RUNNING).order_by("-finished").first(),
        running=backups.filter(outcome=BackupRun.RUNNING).order_by("-started").first(),
        decision=current_decision(now, settings),
    )


# -- the tasks --------------------------------------------------------------------------------


def close_stale_runs(now: datetime | None = None) -> int:
    """Close ``running`` rows whose process is gone; returns how many.

    A row is stale when its process ran on this host and no longer exists (a
    worker killed by a deploy or by django-q2's timeout), or, on any host,
    when it started more than :data:`STALE_AFTER` ago.  Its claim is freed.
    """
    now = now or timezone.now()
    running = BackupRun.objects.filter(outcome=BackupRun.RUNNING)
    closed = running.filter(started__lt=now - STALE_AFTER).update(
        outcome=BackupRun.FAILED,
        finished=now,
        claim=None,
        error=f"did not finish within {duration_text(STALE_AFTER)}: the process stopped or the task timed out",
    )
    host = socket.gethostname()[:255]
    for run in running.filter(same_pid_namespace(), host=host, pid__isnull=False).exclude(pid=os.getpid()):
        if not process_exists(run.pid):
            closed += running.filter(pk=run.pk).update(
                outcome=BackupRun.FAILED,
                finished=now,
                claim=None,
                error=f"did not finish: its process (pid {run.pid} on {host}) stopped",
            )
    return closed


def scheduled_backup() -> str:
    """The hourly check (a django-q2 task): back up if due, then apply the run-time retention.

    Returns what it did, for django-q2's task list.  A failed backup is
    recorded in the history, mailed to the admins (``backup_send_email``) and
    raised, so django-q2 lists the task as failed too.
    """
    close_stale_runs()
    push_if_overdue()
    decision = current_decision(timezone.now())
    if not decision.due:
        from .actions import rollback

        expired = rollback.expire_now()  # safety copies expire on every check, backup or not
        return f"not due: {decision.reason}" + (f"; expired safety copies {', '.join(expired)}" if expired else "")
    try:
        run = start_run(BackupRun.SCHEDULED, claim=CLAIM)
    except AlreadyRunning:
        return "skipped: another backup is running"
    # Decide again now that no other queued backup can start: one may have finished meanwhile.
    decision = current_decision(timezone.now(), exclude=run)
    if not decision.due:
        discard_run(run)
        return f"not due: {decision.reason}"
    from .actions import backup  # here: every command loads this module at start-up (apps.ready), few back up

    # The run-time retention is applied under the backup's own lock, once the new set is listed complete.
    options = backup.BackupOptions(origin=BackupRun.SCHEDULED, clean=True, retention=BackupSettings.load().retention())
    result = backup.run(options, record=run)
    return f"backed up set {result.name}; removed {len(result.deleted)} old files"


def backup_now(requested_by: str = "") -> str:
    """A backup asked for in the admin ("Back up now"), run by the worker; no retention applied."""
    _forget_queued_backup_now()  # taken: a new click may queue another once this one ends
    close_stale_runs()
    try:
        run = start_run(BackupRun.MANUAL, claim=CLAIM, requested_by=requested_by)
    except AlreadyRunning:
        return "skipped: another backup is running"
    from .actions import backup

    result = backup.run(backup.BackupOptions(origin=BackupRun.MANUAL), record=run)
    return f"backed up set {result.name}"


def enqueue_backup_now(requested_by: str = "") -> str:
    """Queue :func:`backup_now` for the worker; returns the django-q2 task id.

    Remembered in a marker file beside the safety copies until the worker takes it: a Redis (or any other
    non-database) broker's queue cannot be looked into, and without it a second click would queue a second
    full backup.
    """
    from django_q.tasks import async_task

    # Written before the task is queued: a worker may take it (and remove the marker) before async_task returns.
    try:
        marker = _queued_marker()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(requested_by)
    except OSError as err:
        logger.warning("could not remember the queued backup in %s: %s", _queued_marker(), err)
    try:
        return async_task(
            BACKUP_NOW_TASK, requested_by=requested_by, q_options={**TASK_OPTIONS, "task_name": "backup now"}
        )
    except BaseException:
        _forget_queued_backup_now()  # nothing was queued
        raise


#: A queued "Back up now" that no worker took for this long is taken as lost (a broker emptied meanwhile).
QUEUED_FORGOTTEN_AFTER = timedelta(hours=24)


def _queued_marker():
    return app_settings.safety_dir / ".backup-now-queued"


def _forget_queued_backup_now() -> None:
    try:
        _queued_marker().unlink(missing_ok=True)
    except OSError as err:
        logger.warning("could not remove %s: %s", _queued_marker(), err)


def _broker_is_the_database() -> bool:
    """django-q2's queue is the database's OrmQ table, which can be read (other brokers' cannot)."""
    from django.conf import settings

    return bool((getattr(settings, "Q_CLUSTER", None) or {}).get("orm"))


def _queued_backup_now_age(now: datetime | None = None) -> timedelta | None:
    """How long the "Back up now" in a broker that cannot be looked into has waited, or None."""
    if _broker_is_the_database():
        return None  # the queue itself says (queued_tasks)
    try:
        queued = datetime.fromtimestamp(_queued_marker().stat().st_mtime, tz=UTC)
    except OSError:
        return None
    age = (now or timezone.now()) - queued
    return age if age < QUEUED_FORGOTTEN_AFTER else None


#: An overdue backup is pushed again after this long while it stays overdue.
OVERDUE_REPEAT = timedelta(hours=24)


def push_if_overdue(now: datetime | None = None) -> bool:
    """With automatic backups on and the last success older than twice the interval (``overdue``, as the
    health endpoint says), push it to ``backup_notify_urls`` and ping ``backup_ping_url``/fail — once, then
    every :data:`OVERDUE_REPEAT` while it stays overdue (a marker file in ``backup_safety_dir`` remembers).
    Returns whether it pushed; never raises."""
    from .notify import ping, push

    try:
        status = backup_status(now)
        if not status.settings.enabled or status.state != "overdue":
            return False
        marker = app_settings.safety_dir / ".overdue-pushed"
        seen = status.last_success.set_name if status.last_success else ""
        if marker.exists():
            age = timezone.now().timestamp() - marker.stat().st_mtime
            if marker.read_text() == seen and age < OVERDUE_REPEAT.total_seconds():
                return False
        host = socket.gethostname()
        text = (
            f"No backup has succeeded on {host} for {duration_text(status.age)} (automatic backups every "
            f"{status.settings.interval_days} days; last good set {seen or '?'}). Check the worker "
            f"({hints.command('worker')}) and the backup history."
        )
        push(f"Backups overdue on {host}", text, failed=True)
        ping("fail", text)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(seen)
        return True
    except Exception as err:
        logger.warning("could not check for an overdue backup: %s", err)
        return False


VERIFY_TASK = "backup_app.schedule.verify_now"
#: A worker that finished no task for this long is reported missing (the backup check runs hourly).
WORKER_SILENT_AFTER = timedelta(hours=2)
#: A queued task no worker picked up for this long means none is running.
QUEUE_UNTOUCHED_AFTER = timedelta(minutes=2)


def verify_now(name: str, requested_by: str = "") -> str:
    """Verify one set (the admin's "Verify"), run by the worker; recorded as a ``verify`` run of that set."""
    from .actions import verify

    with record_run(BackupRun.VERIFY, requested_by=requested_by) as row:
        row.set_name = name[:100]
        result = verify.run(verify.VerifyOptions(name=name))
        [report] = result.reports
        if report.problems:
            raise BackupAppError("; ".join(report.problems))
    return f"set {name} verified: " + "; ".join(report.checked)


def enqueue_verify(name: str, requested_by: str = "") -> str:
    """Queue :func:`verify_now` of set ``name`` for the worker; returns the django-q2 task id."""
    from django_q.tasks import async_task

    return async_task(
        VERIFY_TASK, name, requested_by=requested_by, q_options={**TASK_OPTIONS, "task_name": f"verify {name}"}
    )


def queued_tasks() -> list[dict]:
    """The tasks waiting in django-q2's database queue (``func``, ``args``, ``queued`` when known, ``taken``);
    empty for other brokers, which cannot be looked into."""
    try:
        from django_q.models import OrmQ

        found = []
        for row in OrmQ.objects.all()[:200]:
            task = row.task
            found.append(
                {
                    "func": task.get("func"),
                    "args": task.get("args"),
                    "taken": row.lock is not None,
                    "queued": task.get("started"),
                }
            )
        return found
    except Exception:
        return []


def backup_now_queued() -> bool:
    """A "Back up now" is waiting for the worker (so a second click must not queue another): in the database
    queue, or, with another broker, remembered since it was queued (:func:`enqueue_backup_now`)."""
    if _queued_backup_now_age() is not None:
        return True
    return any(t["func"] == BACKUP_NOW_TASK for t in queued_tasks())


def worker_missing(now: datetime | None = None) -> str | None:
    """Why no django-q2 worker seems to run, or None when one was seen recently.

    Seen: a task finished within :data:`WORKER_SILENT_AFTER` (the hourly backup check is one).  Missing also
    when a queued task has waited :data:`QUEUE_UNTOUCHED_AFTER` untaken.
    """
    now = now or timezone.now()
    try:
        from django_q.models import OrmQ, Task

        last = Task.objects.order_by("-stopped").values_list("stopped", flat=True).first()
        stale = OrmQ.objects.filter(lock__isnull=True).order_by("id").first()
    except Exception:
        return None
    if stale is not None:
        queued_at = stale.task.get("started")
        if queued_at is not None and now - queued_at > QUEUE_UNTOUCHED_AFTER:
            return f"a task has waited {duration_text(now - queued_at)} for a worker"
    waited = _queued_backup_now_age(now)  # a broker whose queue cannot be read: our own queued backup
    if waited is not None and waited > QUEUE_UNTOUCHED_AFTER:
        return f"a task has waited {duration_text(waited)} for a worker"
    if last is None:
        return "no task has ever been run by a worker"
    if now - last > WORKER_SILENT_AFTER:
        return f"the last task a worker ran ended {duration_text(now - last)} ago"
    return None


# -- registration -------------------------------------------------------------------------------


def register_schedule(sender=None, using: str = DEFAULT_DB_ALIAS, **kwargs):
    """Create or repair the one django-q2 schedule of the hourly check (a ``post_migrate`` handler).

    Idempotent: running it again changes nothing; duplicate rows are removed.
    Does nothing where django-q2's tables are not (yet) in database ``using``.
    Returns the schedule, or None.
    """
    from django.apps import apps

    if not apps.is_installed("django_q"):
        return None
    from django_q.models import Schedule

    if not router.allow_migrate_model(using, Schedule):
        return None
    if Schedule._meta.db_table not in connections[using].introspection.table_names():
        return None
    wanted = {
        "func": CHECK_TASK,
        "schedule_type": Schedule.HOURLY,
        "repeats": -1,
        "kwargs": repr({"q_options": {**TASK_OPTIONS, "task_name": "automatic backup check"}}),
        "args": None,
        "cluster": None,
    }
    rows = list(Schedule.objects.using(using).filter(name=SCHEDULE_NAME).order_by("id"))
    if not rows:
        return Schedule.objects.using(using).create(name=SCHEDULE_NAME, next_run=timezone.now(), **wanted)
    schedule, extra = rows[0], rows[1:]
    if extra:
        Schedule.objects.using(using).filter(pk__in=[s.pk for s in extra]).delete()
    changed = [name for name, value in wanted.items() if getattr(schedule, name) != value]
    if changed:
        for name in changed:
            setattr(schedule, name, wanted[name])
        schedule.save(update_fields=changed)
    return schedule


def check_soon() -> None:
    """Run the check at the scheduler's next pass (after the settings changed), not at the next hour."""
    from django_q.models import Schedule

    schedule = register_schedule(using=router.db_for_write(Schedule))
    if schedule is not None:
        Schedule.objects.filter(pk=schedule.pk).update(next_run=timezone.now())


def _when(moment: datetime) -> str:
    return f"{timezone.localtime(moment):%Y-%m-%d %H:%M %Z}"


def duration_text(delta: timedelta) -> str:
    """``"42 seconds"``, ``"1 second"``, ``"3 hours"``: the largest whole unit."""
    if delta < timedelta(minutes=1):
        seconds = max(int(delta.total_seconds()), 0)
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return age_text(delta)


__all__ = [
    "Decision",
    "Status",
    "backup_now",
    "backup_status",
    "check_soon",
    "decide",
    "enqueue_backup_now",
    "register_schedule",
    "scheduled_backup",
]
