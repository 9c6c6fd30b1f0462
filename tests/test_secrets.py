"""Secrets stay secret: failure mail, process table, output and manifests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import DB_PASSWORD, ROOT, free_port


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append(
            {"from": envelope.mail_from, "to": sorted(envelope.rcpt_tos), "data": envelope.content.decode()}
        )
        return "250 OK"


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller

    port = free_port()
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    inbox.port = port
    yield inbox
    controller.stop()


@pytest.fixture
def mailing_site(sqlite_site, smtp):
    sqlite_site.env.update(
        {
            "INVENTREE_EMAIL_HOST": "127.0.0.1",
            "INVENTREE_EMAIL_PORT": str(smtp.port),
            "INVENTREE_EMAIL_SENDER": "site@example.com",
            "INVENTREE_ADMIN_EMAIL": "admin@example.com",
            "INVENTREE_BACKUP_SEND_EMAIL": "true",
            "INVENTREE_BACKUP_EMAIL_PREFIX": "[Site Backup]",
            "INVENTREE_DB_PASSWORD": DB_PASSWORD,
            "INVENTREE_BACKUP_GPG_PASSPHRASE": "gpg-" + DB_PASSWORD,
            "INVENTREE_BACKUP_OPTIONS": '{"secret_key": "' + DB_PASSWORD + '-storage"}',
        }
    )
    sqlite_site.run(
        sys.executable,
        "manage.py",
        "createsuperuser",
        "--noinput",
        "--username",
        "boss",
        "--email",
        "boss@example.com",
        extra_env={"DJANGO_SUPERUSER_PASSWORD": "x" + DB_PASSWORD},
    )
    return sqlite_site


def test_failed_backup_mails_admins_and_superusers_without_secrets(mailing_site, smtp):
    result = mailing_site.invoke("backup", check=False)

    assert result.returncode != 0
    [message] = smtp.messages
    assert message["to"] == ["admin@example.com", "boss@example.com"]
    assert "Subject: [Site Backup] Backup failed on" in message["data"]
    assert "Next step" in message["data"]
    assert DB_PASSWORD not in message["data"]
    assert DB_PASSWORD not in result.stdout + result.stderr


def test_failed_restore_mails_admins_without_secrets(mailing_site, smtp):
    mailing_site.env["INVENTREE_BACKUP_OPTIONS"] = "{}"

    result = mailing_site.invoke("restore", check=False)

    assert result.returncode != 0
    [message] = smtp.messages
    assert "Subject: [Site Backup] Restore failed on" in message["data"]
    assert "run `invoke backup` first" in message["data"]
    assert DB_PASSWORD not in message["data"]


def test_no_mail_when_send_email_is_off(mailing_site, smtp):
    mailing_site.invoke("restore", check=False, extra_env={"INVENTREE_BACKUP_SEND_EMAIL": "false"})

    assert smtp.messages == []


def watch_process_table(argv, env, cwd) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``argv`` while reading every process's command line until it ends."""
    seen: set[str] = set()
    done = threading.Event()

    def scan():
        while not done.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        seen.add(
                            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                        )
                    except OSError:
                        pass
            time.sleep(0.002)

    watcher = threading.Thread(target=scan, daemon=True)
    watcher.start()
    try:
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    finally:
        done.set()
        watcher.join()
    return proc, sorted(seen)


@pytest.mark.parametrize(("fixture", "tool"), [("pg_password_site", "pg_dump"), ("mysql_password_site", "mysqldump")])
def test_database_password_never_on_a_command_line(request, fixture, tool):
    site = request.getfixturevalue(fixture)

    proc, cmdlines = watch_process_table([sys.executable, "-m", "invoke", "backup"], site.env, ROOT)

    assert proc.returncode == 0, proc.stderr
    assert any(tool in line for line in cmdlines), f"{tool} was never seen running"
    assert not [line for line in cmdlines if DB_PASSWORD in line]
    assert DB_PASSWORD not in proc.stdout + proc.stderr


@pytest.mark.parametrize("fixture", ["pg_password_site", "mysql_password_site"])
def test_restore_with_password_works_and_keeps_it_off_the_command_line(request, fixture):
    site = request.getfixturevalue(fixture)
    site.invoke("backup")
    rows = site.snapshot_db()
    site.sql("DELETE FROM demo_part")

    proc, cmdlines = watch_process_table([sys.executable, "-m", "invoke", "restore"], site.env, ROOT)

    assert proc.returncode == 0, proc.stderr
    assert not [line for line in cmdlines if DB_PASSWORD in line]
    assert site.snapshot_db() == rows


def test_manifest_and_listing_hold_no_secret(mailing_site):
    mailing_site.env["INVENTREE_BACKUP_OPTIONS"] = "{}"
    mailing_site.invoke("backup")

    stored = b"".join(p.read_bytes() for p in mailing_site.backups.iterdir() if p.name.endswith(".metadata"))
    listing = mailing_site.invoke("listbackups", "--json").stdout

    assert DB_PASSWORD.encode() not in stored
    assert DB_PASSWORD not in listing


def test_backup_config_redacts_secrets(mailing_site):
    out = mailing_site.invoke("backup-config").stdout + mailing_site.invoke("backup-config", "--json").stdout

    assert DB_PASSWORD not in out
    assert "********" in out


def test_local_backup_files_are_readable_by_the_owner_only(sqlite_site):
    sqlite_site.invoke("backup")

    modes = {p.name: p.stat().st_mode & 0o777 for p in sqlite_site.backups.iterdir()}

    assert sqlite_site.backups.stat().st_mode & 0o077 == 0
    assert set(modes.values()) == {0o600}


@pytest.mark.parametrize("fixture", ["pg_password_site", "mysql_password_site"])
def test_database_password_never_in_a_file_a_killed_backup_leaves(request, fixture, tmp_path):
    site = request.getfixturevalue(fixture)
    private_tmp = tmp_path / "tmpdir"
    private_tmp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "backup"],
        cwd=ROOT,
        env={**site.env, "TMPDIR": str(private_tmp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    for line in proc.stderr:
        if "Backing up database" in line:
            time.sleep(0.3)  # the dump tool is running
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    leftovers = [p for p in private_tmp.rglob("*") if p.is_file()]
    assert [p for p in leftovers if DB_PASSWORD.encode() in p.read_bytes()] == []
