"""Failure mail: one message to the site's admins when a backup or restore fails.

Recipients: ``DBBACKUP_ADMIN`` (``ADMINS`` plus the configured admin address)
and every active superuser with an email address.  The body is built from
the one-line error with every known secret masked; no traceback, no locals.
"""

from __future__ import annotations

import logging
import socket

from django.core.mail import EmailMessage
from django.utils import timezone

from . import hints
from .secrets import redact
from .settings import app_settings

logger = logging.getLogger("backup_app")


def next_step(what: str) -> str:
    """What the admin does after a failed ``what`` (backup, restore), with the site's commands."""
    listing = hints.command("listbackups")
    if what == "backup":
        return (
            f"Fix the cause, then run {hints.command('backup')} and check {listing} shows a complete set. "
            "Until then the newest complete set listed there is your latest good backup."
        )
    if what != "restore":
        return ""
    return (
        f"Read the message above for what state was left. Run {listing} to pick a set and "
        f"{hints.command('restore')} again once the cause is fixed."
    )


def recipients() -> list[str]:
    """Admin addresses: DBBACKUP_ADMIN plus active superusers with an email, no duplicates."""
    found = [address for _name, address in app_settings.admins if address]
    try:
        from django.contrib.auth import get_user_model

        users = get_user_model().objects.filter(is_superuser=True, is_active=True).exclude(email="")
        found += list(users.values_list("email", flat=True))
    except Exception as err:  # the database itself may be what failed
        logger.warning("could not read superusers for the failure mail: %s", redact(err))
    return list(dict.fromkeys(found))


def notify_failure(action: str, error: object, *, origin: str = "manual") -> bool:
    """Send the failure mail if ``backup_send_email`` is on; returns whether a message went out."""
    if not app_settings.send_email:
        return False
    to = recipients()
    if not to:
        logger.warning("backup_send_email is on but there is no admin address to mail")
        return False
    host = socket.gethostname()
    prefix = app_settings.email_prefix or ""
    when = timezone.localtime(timezone.now()).strftime("%Y-%m-%d %H:%M:%S %Z")
    subject = f"{prefix} {action.capitalize()} failed on {host}".strip()
    body = "\n".join(
        [
            f"A {origin} {action} failed on {host} at {when}.",
            "",
            f"Error: {redact(error)}",
            "",
            f"Next step: {next_step(action)}",
        ]
    )
    try:
        EmailMessage(subject, body, app_settings.server_email, to).send(fail_silently=False)
    except Exception as err:
        logger.error("the failure mail could not be sent: %s", redact(err))
        return False
    return True
