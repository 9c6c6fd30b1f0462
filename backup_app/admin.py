"""Admin pages: the automatic-backup settings, the backup history, and "Back up now".

Both pages open with the same status panel: the last successful backup's age,
the next due time in plain words, overdue and failed marked in red, and for
staff with ``backup_app.run_backup`` a "Back up now" button that queues a
backup for the worker (the web request never runs one).
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme

from . import hints
from .models import BackupRun, BackupSettings
from .schedule import (
    CLAIM,
    backup_status,
    check_soon,
    close_stale_runs,
    duration_text,
    enqueue_backup_now,
    size_text,
)
from .sets import Retention

RUN_PERMISSION = "backup_app.run_backup"


def status_context(request) -> dict:
    """Context of the status panel (``backup_app/status.html``)."""
    status = backup_status()
    return {
        "backup_status": status,
        "backup_status_lines": status.lines(),
        "backup_queue": _queue_size(),
        "can_run_backup": request.user.has_perm(RUN_PERMISSION),
        "backup_now_url": reverse("admin:backup_app_backuprun_backup_now"),
        "backup_history_url": reverse("admin:backup_app_backuprun_changelist"),
        "backup_settings_url": reverse("admin:backup_app_backupsettings_change", args=[1]),
    }


def _queue_size() -> int | None:
    """Tasks waiting for the worker, or None when the broker cannot say."""
    try:
        from django_q.brokers import get_broker

        return get_broker().queue_size()
    except Exception:
        return None


@admin.register(BackupSettings)
class BackupSettingsAdmin(admin.ModelAdmin):
    """One row: the list and the add page lead to its change page."""

    fieldsets = [
        (None, {"fields": ["enabled", "interval_days", "preferred_hour"]}),
        (
            "Retention after automatic backups",
            {"fields": ["keep", "keep_daily", "keep_weekly", "keep_monthly"]},
        ),
    ]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        BackupSettings.load()
        return HttpResponseRedirect(reverse("admin:backup_app_backupsettings_change", args=[1]))

    def get_object(self, request, object_id, from_field=None):
        return BackupSettings.load() if str(object_id) == "1" else None

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        configured = Retention.configured()
        for field, value in (
            ("keep", configured.keep),
            ("keep_daily", configured.daily),
            ("keep_weekly", configured.weekly),
            ("keep_monthly", configured.monthly),
        ):
            if field in form.base_fields:
                form.base_fields[field].help_text += f" (now {value})"
        return form

    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = {**status_context(request), "title": "Automatic backups", "subtitle": None, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context=context)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if obj.enabled and {"enabled", "interval_days", "preferred_hour"} & set(form.changed_data):
            # Let the worker look at the new settings at its next pass, not at the next hour.
            check_soon()

    def response_change(self, request, obj):
        self.message_user(request, "Settings saved; the worker uses them from its next check.", messages.SUCCESS)
        return HttpResponseRedirect(request.path)


@admin.register(BackupRun)
class BackupRunAdmin(admin.ModelAdmin):
    """The history: read-only rows, filters, failed and running runs marked."""

    list_display = ["when", "kind", "result", "set_text", "size_text", "took", "requested_by", "error_text"]
    list_display_links = ["when"]
    list_filter = ["outcome", "kind", "partial", "started"]
    date_hierarchy = "started"
    search_fields = ["set_name", "error", "requested_by"]
    readonly_fields = [
        "kind",
        "outcome",
        "started",
        "finished",
        "set_name",
        "size",
        "partial",
        "requested_by",
        "error",
        "host",
        "pid",
        "token",
    ]
    fields = readonly_fields
    list_per_page = 50

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="started", ordering="started")
    def when(self, run: BackupRun):
        return format_html(
            '<span style="white-space: nowrap">{}</span>', f"{timezone.localtime(run.started):%Y-%m-%d %H:%M:%S}"
        )

    @admin.display(description="outcome", ordering="outcome")
    def result(self, run: BackupRun):
        style = {
            BackupRun.SUCCESS: ("#1a7f37", "✔ success"),
            BackupRun.FAILED: ("#cf222e", "✖ failed"),
            BackupRun.RUNNING: ("#9a6700", "… running"),
        }
        color, text = style.get(run.outcome, ("inherit", run.outcome))
        return format_html(
            '<strong class="backup-{}" style="color: {}; white-space: nowrap">{}</strong>', run.outcome, color, text
        )

    @admin.display(description="backup set", ordering="set_name")
    def set_text(self, run: BackupRun):
        return format_html('<span style="white-space: nowrap">{}</span>', run.set_name)

    @admin.display(description="size", ordering="size")
    def size_text(self, run: BackupRun):
        return format_html('<span style="white-space: nowrap">{}</span>', size_text(run.size) if run.size else "–")

    @admin.display(description="took")
    def took(self, run: BackupRun):
        seconds = int(run.duration.total_seconds()) if run.duration is not None else None
        if seconds is None:
            return "–"
        text = f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"
        return format_html('<span style="white-space: nowrap">{}</span>', text)

    @admin.display(description="error")
    def error_text(self, run: BackupRun):
        if not run.error:
            return ""
        return format_html('<span style="color: #cf222e">{}</span>', run.error)

    def get_urls(self):
        urls = [
            path(
                "backup-now/",
                self.admin_site.admin_view(self.backup_now_view),
                name="backup_app_backuprun_backup_now",
            )
        ]
        return urls + super().get_urls()

    def changelist_view(self, request, extra_context=None):
        context = {**status_context(request), **(extra_context or {})}
        return super().changelist_view(request, extra_context=context)

    def backup_now_view(self, request):
        """POST: queue a backup for the worker (``backup_app.schedule.backup_now``)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm(RUN_PERMISSION):
            raise PermissionDenied
        close_stale_runs()
        running = BackupRun.objects.filter(claim=CLAIM).first()
        if running is not None:
            since = duration_text(timezone.now() - running.started)
            self.message_user(
                request,
                f"A {running.kind} backup is already running (started {since} ago); "
                "its result will show in the history.",
                messages.WARNING,
            )
        else:
            enqueue_backup_now(request.user.get_username())
            self.message_user(
                request,
                f"Backup queued. The worker ({hints.command('worker')}) runs it in a few seconds; "
                "reload this page to see it in the history.",
                messages.SUCCESS,
            )
        target = request.POST.get("next") or reverse("admin:backup_app_backuprun_changelist")
        if not url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
            target = reverse("admin:backup_app_backuprun_changelist")
        return HttpResponseRedirect(target)
