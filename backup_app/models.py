"""Run-time backup settings (one row, edited by staff) and the history of backup and restore runs.

The configuration file says *where and how* backups are written; these rows
say *when* automatic backups run, which retention they apply, and what
happened.  Changes apply at the next check of the schedule, without a restart.
"""

from __future__ import annotations

import uuid

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from .sets import Retention

#: Longest error text kept on a run (one line, secrets masked).
ERROR_LENGTH = 500


class BackupSettings(models.Model):
    """The run-time switch of automatic backups: a single row (``BackupSettings.load()``)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    enabled = models.BooleanField(
        "automatic backups",
        default=False,
        help_text="Back up the database and media files on a schedule (needs the worker: invoke worker).",
    )
    interval_days = models.PositiveSmallIntegerField(
        "every (days)",
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Days between automatic backups.",
    )
    preferred_hour = models.PositiveSmallIntegerField(
        "preferred hour",
        null=True,
        blank=True,
        validators=[MaxValueValidator(23)],
        help_text="Hour of the day (0-23, server time zone) at which a due backup starts. "
        "Empty: the hour of the last backup.",
    )
    keep = models.PositiveIntegerField(
        "keep sets",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Complete sets kept after each automatic backup (the newest ones). Empty: backup_keep.",
    )
    keep_daily = models.PositiveIntegerField(
        "keep daily",
        null=True,
        blank=True,
        help_text="Also keep the newest set of each of the last N days (0 = unused). Empty: backup_keep_daily.",
    )
    keep_weekly = models.PositiveIntegerField(
        "keep weekly",
        null=True,
        blank=True,
        help_text="Also keep the newest set of each of the last N weeks. Empty: backup_keep_weekly.",
    )
    keep_monthly = models.PositiveIntegerField(
        "keep monthly",
        null=True,
        blank=True,
        help_text="Also keep the newest set of each of the last N months. Empty: backup_keep_monthly.",
    )
    changed = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "automatic backups"
        verbose_name_plural = "automatic backups"
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="backup_settings_single_row")]

    def __str__(self) -> str:
        return "Automatic backups"

    @classmethod
    def load(cls) -> BackupSettings:
        """The settings row, created with the defaults when missing."""
        obj, _created = cls.objects.get_or_create(id=1)
        return obj

    def retention(self) -> Retention:
        """Retention after an automatic backup: these fields, else the configured ``backup_keep*``."""
        configured = Retention.configured()
        return Retention(
            keep=self.keep if self.keep is not None else configured.keep,
            daily=self.keep_daily if self.keep_daily is not None else configured.daily,
            weekly=self.keep_weekly if self.keep_weekly is not None else configured.weekly,
            monthly=self.keep_monthly if self.keep_monthly is not None else configured.monthly,
        )


class BackupRun(models.Model):
    """One backup or restore, from start to end (``backup_app.history.record_run`` writes it)."""

    SCHEDULED, MANUAL, UPDATE, RESTORE = "scheduled", "manual", "update", "restore"
    VERIFY, DELETE = "verify", "delete"  # of one set, from the admin's sets page
    KINDS = [
        (SCHEDULED, "scheduled"),
        (MANUAL, "manual"),
        (UPDATE, "update"),
        (RESTORE, "restore"),
        (VERIFY, "verify"),
        (DELETE, "delete"),
    ]
    BACKUP_KINDS = (SCHEDULED, MANUAL, UPDATE)
    RUNNING, SUCCESS, FAILED = "running", "success", "failed"
    OUTCOMES = [(RUNNING, "running"), (SUCCESS, "success"), (FAILED, "failed")]

    token = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(max_length=16, choices=KINDS)
    started = models.DateTimeField(default=timezone.now, db_index=True)
    finished = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=OUTCOMES, default=RUNNING, db_index=True)
    set_name = models.CharField("backup set", max_length=100, blank=True)
    size = models.BigIntegerField("size (bytes)", null=True, blank=True)
    error = models.CharField(max_length=ERROR_LENGTH, blank=True)
    partial = models.BooleanField(
        default=False,
        help_text="A backup to another folder (--path) or without the database or the media files; "
        "not counted as the site's latest backup.",
    )
    requested_by = models.CharField(max_length=150, blank=True)
    # Where the run's process is: a running row whose process is gone is closed at the next check.
    host = models.CharField(max_length=255, blank=True, editable=False)
    pid = models.IntegerField(null=True, blank=True, editable=False)
    # Its PID namespace (containers of one host name each have their own): "" where unknown or written earlier.
    pid_ns = models.CharField(max_length=20, blank=True, default="", editable=False)
    # Set while a queued (scheduled or admin) backup runs; unique, so only one can hold it.
    claim = models.CharField(max_length=32, null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["-started", "-id"]
        get_latest_by = "started"
        verbose_name = "backup run"
        verbose_name_plural = "backup history"
        permissions = [("run_backup", "Can start a backup from the admin (Back up now)")]

    def __str__(self) -> str:
        when = timezone.localtime(self.started).strftime("%Y-%m-%d %H:%M")
        return f"{self.get_kind_display()} {when}: {self.outcome}"

    @property
    def duration(self):
        return (self.finished - self.started) if self.finished else None
