"""Admin pages: the automatic-backup settings, the backup history, the sets in the storage, "Back up now".

Every page opens with the same status panel: the last successful backup's age,
the next due time in plain words, overdue and failed marked in red, a notice
when no worker has been seen, and for staff with ``backup_app.run_backup`` a
"Back up now" button that queues a backup for the worker (the web request
never runs one; a second click while one is queued or running queues nothing).

The sets page lists what is in the backup storage (one listing plus one read
per manifest) with size, parts, encryption, status and last verification;
"Verify" queues a verification of one set for the worker, "Delete" asks first
and then deletes the set under the site lock; both are recorded in the history.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme

from . import hints
from .actions.list import kept_copies
from .errors import BackupAppError
from .models import BackupRun, BackupSettings
from .progress import size_text
from .schedule import (
    CLAIM,
    backup_now_queued,
    backup_status,
    check_soon,
    close_stale_runs,
    duration_text,
    enqueue_backup_now,
    enqueue_verify,
    worker_missing,
)
from .secrets import redact
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
        "backup_sets_url": reverse("admin:backup_app_backuprun_sets"),
        "worker_missing": worker_missing(),
        "worker_command": hints.command("worker").strip("`"),
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
        # A width of its own: in a narrow column the browser broke the message after every word.
        return format_html('<div style="color: #cf222e; min-width: 24em; max-width: 48em">{}</div>', run.error)

    readonly_fields = [*readonly_fields, "destination", "files"]
    fields = [f for f in readonly_fields if f not in ("host", "pid", "token")]

    @admin.display(description="destination")
    def destination(self, run: BackupRun):
        from .storage import backup_storage, describe

        if run.kind not in BackupRun.BACKUP_KINDS or not run.set_name:
            return "–"
        if run.partial:
            return "another folder or a partial set (--path, --skip-db or --skip-media)"
        try:
            return describe(backup_storage())
        except Exception as err:
            return f"the backup storage ({redact(err)})"

    @admin.display(description="files")
    def files(self, run: BackupRun):
        sets = _sets_or_error()[0]
        found = next((s for s in sets if s.name == run.set_name), None) if run.set_name else None
        if found is None:
            return "–" if not run.set_name else "not in the backup storage now (pruned or deleted)"
        return format_html(
            "<ul style='margin:0;padding-left:1em'>{}</ul>",
            format_html_join_lines((f.name, size_text(f.size) if f.size is not None else "") for f in found.files),
        )

    def get_urls(self):
        view = self.admin_site.admin_view
        urls = [
            path("backup-now/", view(self.backup_now_view), name="backup_app_backuprun_backup_now"),
            path("sets/", view(self.sets_view), name="backup_app_backuprun_sets"),
            path("sets/<str:name>/verify/", view(self.verify_view), name="backup_app_backuprun_verify"),
            path("sets/<str:name>/delete/", view(self.delete_view), name="backup_app_backuprun_delete_set"),
        ]
        return urls + super().get_urls()

    def sets_view(self, request):
        """The sets in the backup storage, newest first, with their last verification."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        sets, error = _sets_or_error()
        verified = {}
        for run in BackupRun.objects.filter(kind=BackupRun.VERIFY).order_by("started"):
            verified[run.set_name] = run  # the newest wins
        rows = []
        for s in sets:
            data = s.data_files
            rows.append(
                {
                    "set": s,
                    "size": size_text(s.size),
                    "parts": ", ".join(
                        f"database {f.database}" if f.kind == "db" and f.database else f.kind for f in data
                    ),
                    "compression": ", ".join(sorted({f.compression or "none" for f in data})) or "–",
                    "encrypted": any(f.encrypted for f in data),
                    "verified": verified.get(s.name),
                }
            )
        context = {
            **self.admin_site.each_context(request),
            **status_context(request),
            "title": "Backup sets in the storage",
            "rows": rows,
            "error": error,
            "safety_copies": [{**c, "size": size_text(c["bytes"])} for c in kept_copies()],
            "opts": self.model._meta,
            "can_run_backup": request.user.has_perm(RUN_PERMISSION),
        }
        return TemplateResponse(request, "admin/backup_app/backuprun/sets.html", context)

    def verify_view(self, request, name: str):
        """POST: queue a verification of set ``name`` for the worker."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm(RUN_PERMISSION):
            raise PermissionDenied
        enqueue_verify(name, request.user.get_username())
        notice = f" {_worker_notice()}" if worker_missing() else " Its result will show in this list and the history."
        self.message_user(request, f"Verification of set {name} queued.{notice}", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:backup_app_backuprun_sets"))

    def delete_view(self, request, name: str):
        """GET: what would be deleted, and a confirmation button; POST: delete the set (actions.delete)."""
        if not request.user.has_perm(RUN_PERMISSION):
            raise PermissionDenied
        sets, error = _sets_or_error()
        found = next((s for s in sets if s.name == name), None)
        if found is None:
            if error:
                self.message_user(request, error, messages.ERROR)
                return HttpResponseRedirect(reverse("admin:backup_app_backuprun_sets"))
            raise Http404(f"no backup set {name}")
        if request.method == "POST":
            from .actions import delete

            try:
                result = delete.run(name, requested_by=request.user.get_username())
            except BackupAppError as err:
                self.message_user(request, f"Set {name} was not deleted: {redact(err)}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"Deleted set {name}: {len(result.deleted)} files, {size_text(result.size)}.",
                    messages.SUCCESS,
                )
            return HttpResponseRedirect(reverse("admin:backup_app_backuprun_sets"))
        complete = [s for s in sets if s.complete]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Delete backup set {name}?",
            "set": found,
            "last_complete": bool(found.complete and len(complete) == 1),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/backup_app/backuprun/delete_set.html", context)

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
        if backup_now_queued():
            self.message_user(
                request,
                "A backup is already queued; it was not queued again. "
                + (_worker_notice() if worker_missing() else ""),
                messages.WARNING,
            )
        elif running is not None:
            since = duration_text(timezone.now() - running.started)
            self.message_user(
                request,
                f"A {running.kind} backup is already running (started {since} ago); "
                "its result will show in the history.",
                messages.WARNING,
            )
        else:
            enqueue_backup_now(request.user.get_username())
            if worker_missing():
                self.message_user(request, f"Backup queued. {_worker_notice()}", messages.WARNING)
            else:
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


def _worker_notice() -> str:
    reason = worker_missing()
    return f"No worker seems to be running ({reason}): it waits until one is started with {hints.command('worker')}."


def _sets_or_error() -> tuple[list, str | None]:
    """The sets of the backup storage, or ``([], the one-line reason)`` when it cannot be listed."""
    from .actions import list as list_action

    try:
        return list_action.run(), None
    except Exception as err:
        return [], f"The backup storage cannot be listed: {redact(err)}"


def format_html_join_lines(items) -> str:
    from django.utils.html import format_html_join

    return format_html_join("", "<li>{} <span style='color:#666'>{}</span></li>", items)
