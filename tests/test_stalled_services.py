"""Network waits end: a mail server that accepts the connection and never answers does not hold a run.

In process: the real ``smtplib`` client of Django's SMTP backend talks to a real socket on loopback that
accepts and stays silent.
"""

from __future__ import annotations

import logging
import socket

import django

django.setup()

import pytest  # noqa: E402
from django.test import override_settings  # noqa: E402

from backup_app import notify  # noqa: E402
from backup_app.notify import notify_failure  # noqa: E402


@pytest.mark.parametrize("email_timeout", [2, None], ids=["EMAIL_TIMEOUT", "unset"])
def test_a_failure_mail_to_a_silent_mail_server_gives_up_with_one_line(caplog, monkeypatch, email_timeout):
    monkeypatch.setattr(notify, "MAIL_TIMEOUT", 2)  # the fallback, shortened for the test (30 s otherwise)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel accepts the connection; nobody ever answers
        port = silent.getsockname()[1]
        with override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=port,
            EMAIL_TIMEOUT=email_timeout,
            DBBACKUP_SEND_EMAIL=True,
            BACKUP_APP={"ADMINS": [("Admin", "admin@example.com")]},
        ):
            with caplog.at_level(logging.ERROR, logger="backup_app"):
                sent = notify_failure("backup", "the disk is full")

    assert sent is False
    assert f"the mail server 127.0.0.1:{port} did not answer within 2 s" in caplog.text
