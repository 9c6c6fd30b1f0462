"""The health endpoint for monitoring systems: JSON, HTTP 200 when backups are fresh, 503 when not."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from .schedule import backup_status


@never_cache
@require_safe
def health(request):
    """Last successful backup, its age and the state; no set contents, no error text.

    200 when the state is ``ok``; 503 when the last backup failed, when there
    is no backup yet, or when the last success is older than twice the
    interval (``overdue``).
    """
    status = backup_status()
    return JsonResponse(status.as_json(), status=200 if status.healthy else 503)
