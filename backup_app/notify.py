"""What the site's people and monitors are told: failure mail, pushes through Apprise, pings.

Mail: one message to the site's admins when a backup or restore fails.  Recipients: ``DBBACKUP_ADMIN``
(``ADMINS`` plus the configured admin address) and every active superuser with an email address.

Pushes: every URL of ``backup_notify_urls`` (any service Apprise knows: chat, pager, mail, a webhook) is told
of a failure, and of a success with ``backup_notify_on_success``.  Pings: ``backup_ping_url`` gets
``URL/start`` when a run starts, ``URL`` when it succeeds and ``URL/fail`` when it fails (the healthchecks.io
convention), so a dead-man's-switch monitor also notices a run that never happens.

Every body is built from the one-line error with every known secret masked; no traceback, no locals.
Timeouts are short (:data:`TIMEOUT`); a push or ping that fails is logged (without its URL) and never fails
the backup.
"""

from __future__ import annotations

import logging
import socket

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.utils import timezone

from . import hints
from .secrets import redact
from .settings import app_settings

logger = logging.getLogger("backup_app")

#: Seconds a failure mail waits for the mail server when the site sets no ``EMAIL_TIMEOUT``.
MAIL_TIMEOUT = 30


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
    # A mail server that accepts the connection and never answers must not hold the run: Django's EMAIL_TIMEOUT,
    # else MAIL_TIMEOUT seconds.
    timeout = getattr(settings, "EMAIL_TIMEOUT", None) or MAIL_TIMEOUT
    try:
        connection = get_connection(timeout=timeout)
        EmailMessage(subject, body, app_settings.server_email, to, connection=connection).send(fail_silently=False)
    except Exception as err:
        if not _timed_out(err):
            logger.error("the failure mail could not be sent: %s", redact(err))
            return False
        server = f"{getattr(settings, 'EMAIL_HOST', '?')}:{getattr(settings, 'EMAIL_PORT', '?')}"
        logger.error(
            "the failure mail could not be sent: the mail server %s did not answer within %s s (EMAIL_TIMEOUT)",
            server,
            timeout,
        )
        return False
    return True


def _timed_out(err: BaseException) -> bool:
    """A socket timeout, as it is or as smtplib reports it ("Connection unexpectedly closed: timed out")."""
    return isinstance(err, TimeoutError) or isinstance(err.__context__, TimeoutError) or "timed out" in str(err)


#: Seconds a ping or a push may take before it is given up (connect and read).
TIMEOUT = 10


def _described(url: str) -> str:
    """A URL as it may be logged: its scheme and host, no path, user or token."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}" if rest else scheme


def ping(state: str, message: str = "") -> bool:
    """Tell ``backup_ping_url`` that a run started (``start``), succeeded (``success``) or failed (``fail``).

    ``message`` (masked) goes as the request body, which healthchecks.io shows with the ping.  Returns
    whether the monitor answered 2xx; a failure is logged, never raised.
    """
    base = app_settings.ping_url
    if not base:
        return False
    import urllib.request  # (here: a run without a ping URL does not import it)

    url = base if state == "success" else f"{base}/{state}"
    request = urllib.request.Request(
        url, data=redact(message).encode()[:10000], method="POST", headers={"User-Agent": "backup_app"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - the configured URL
            response.read()
            return 200 <= response.status < 300
    except Exception as err:
        logger.warning("the %s ping to %s failed: %s", state, _described(base), redact(err))
        return False


def push(title: str, body: str, *, failed: bool) -> bool:
    """Send ``title`` and ``body`` (masked) to every ``backup_notify_urls`` through Apprise; returns whether
    all took it.  A URL Apprise does not know, or a service that fails, is logged (without the URL)."""
    urls = app_settings.notify_urls
    if not urls:
        return False
    try:
        import apprise
    except ImportError:
        logger.warning("backup_notify_urls is set but Apprise is not installed (pip install apprise)")
        return False
    sender = apprise.Apprise()
    for url in urls:
        if not sender.add(_with_timeouts(url)):
            logger.warning("backup_notify_urls: %s is not a URL Apprise knows; see its wiki", _described(url))
    if not len(sender):
        return False
    kind = apprise.NotifyType.FAILURE if failed else apprise.NotifyType.SUCCESS
    try:
        sent = bool(sender.notify(title=redact(title), body=redact(body), notify_type=kind))
    except Exception as err:
        logger.warning("the notification could not be sent: %s", redact(err))
        return False
    if not sent:
        logger.warning("a notification to backup_notify_urls was not accepted (see the apprise log)")
    return sent


def _with_timeouts(url: str) -> str:
    """Apprise's connect/read timeouts (``cto``/``rto``, 4 s by default) kept at most :data:`TIMEOUT`."""
    if "cto=" in url or "rto=" in url:
        return url
    return url + ("&" if "?" in url else "?") + f"cto={TIMEOUT}&rto={TIMEOUT}"


def announce(action: str, error: BaseException | None, *, origin: str = "manual", detail: str = "") -> None:
    """The end of a run, to the monitors: the ping (success or fail), and a push on failure (and on success
    with ``backup_notify_on_success``).  ``detail`` is the success's summary line."""
    host = socket.gethostname()
    if error is None:
        ping("success", detail)
        if app_settings.notify_on_success:
            title = f"{action.capitalize()} succeeded on {host}"
            push(title, detail or f"A {origin} {action} succeeded.", failed=False)
        return
    line = redact(error)
    ping("fail", line)
    push(
        f"{action.capitalize()} failed on {host}",
        f"A {origin} {action} failed on {host}: {line}\n\nNext step: {next_step(action)}",
        failed=True,
    )
