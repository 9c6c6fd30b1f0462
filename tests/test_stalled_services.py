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


# --- a MariaDB restore beside an open transaction of the running site ---------------------------


@pytest.mark.parametrize("fixture", ["mysql_site", "mysql_password_site"], ids=["swap", "in-place"])
def test_a_mariadb_restore_held_up_by_an_open_transaction_stops_with_the_site_unchanged(request, fixture):
    from conftest import _my_connect

    site = request.getfixturevalue(fixture)
    database = site.env["INVENTREE_DB_NAME"]
    site.manage("backup_create", "--skip-media")
    site.sql("INSERT INTO demo_part (name, description, quantity, created, attachment) "
             "VALUES ('after', '', 1, NOW(), '')")  # fmt: skip
    before = site.snapshot_db()
    reader = _my_connect(database)
    try:
        with reader.cursor() as cur:  # the site mid-request: its transaction holds demo_part's metadata lock
            cur.execute("START TRANSACTION")
            cur.execute("SELECT COUNT(*) FROM demo_part")
        result = site.manage(
            "backup_restore", "--noinput", "--skip-media", check=False, timeout=120,
            extra_env={"INVENTREE_BACKUP_DB_LOCK_TIMEOUT": "2"},
        )  # fmt: skip
        after = site.snapshot_db()
    finally:
        reader.rollback()
        reader.close()

    assert result.returncode != 0, result.output
    lines = result.stderr.strip().splitlines()  # progress, then the error
    assert lines[-1].startswith("CommandError: "), result.stderr
    assert f"the tables of {database} stayed held by another connection for 2 s" in lines[-1]
    assert "nothing had been changed" in lines[-1]
    assert after == before
    conn = _my_connect()
    with conn.cursor() as cur:  # no staged or kept database left beside the site's
        cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s", [database + "%"])
        assert [name for (name,) in cur.fetchall()] == [database]
    conn.close()
