"""backup_app.tools: external programs run with argv lists, streamed, their failures one line, secrets in pipes."""

from __future__ import annotations

import io
import os

import django
import pytest

django.setup()

from django.test import override_settings  # noqa: E402

from backup_app.errors import BackupError, RestoreError  # noqa: E402
from backup_app.tools import SecretPipe, Tool, process_exists, run_from, run_to  # noqa: E402


def sh(script: str, **kwargs) -> Tool:
    return Tool(["sh", "-c", script], name="the-tool", **kwargs)


def test_run_to_streams_the_output():
    out = io.BytesIO()

    run_to(sh("head -c 300000 /dev/zero"), out)

    assert out.getvalue() == b"\0" * 300_000


def test_a_failure_is_one_line_naming_the_tool_and_its_last_words():
    with pytest.raises(BackupError) as err:
        run_to(sh("echo first >&2; echo 'second  line' >&2; exit 3", error=BackupError), io.BytesIO())

    assert str(err.value) == "the-tool failed (exit 3): first; second line"


@override_settings(
    STORAGES={"dbbackup": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {"secret_key": "s3cr3t-pw"}}}
)
def test_a_secret_the_tool_prints_is_masked():
    tool = sh("cat >/dev/null; echo 'login with s3cr3t-pw refused' >&2; exit 1", error=RestoreError)

    with pytest.raises(RestoreError) as err:
        run_from(tool, io.BytesIO())

    assert "s3cr3t-pw" not in str(err.value) and "********" in str(err.value)


def test_a_missing_program_says_what_to_install():
    tool = Tool(["no-such-dump-tool"], name="no-such-dump-tool", error=BackupError, missing_hint="install it")

    with pytest.raises(BackupError, match="^no-such-dump-tool is not installed; install it$"):
        run_to(tool, io.BytesIO())


def test_a_tool_that_stops_reading_its_input_fails():
    with pytest.raises(RestoreError, match="the-tool failed"):
        run_from(sh("exit 0", error=RestoreError), io.BytesIO(b"x" * 10_000_000))


def test_run_from_feeds_the_whole_stream():
    reader = io.BytesIO(os.urandom(500_000))

    run_from(sh("test $(wc -c) -eq 500000", error=RestoreError), reader)

    assert reader.tell() == 500_000


def test_a_secret_pipe_is_read_as_a_file_by_the_child_and_left_nowhere():
    secret = SecretPipe("[client]\npassword=hunter2\n")
    out = io.BytesIO()

    run_to(Tool(["cat", secret.path], name="cat", secrets=[secret]), out)

    assert out.getvalue() == b"[client]\npassword=hunter2\n"
    assert secret.fd == -1  # the parent's end is closed once the child has it


# --- the MariaDB option file: any password arrives as it is, or is refused without showing it ---------------

ODD_PASSWORDS = {
    "newline": "Head7qXw\nTail9zWk",
    "carriage-return": "Head7qXw\rTail9zWk",
    "tab": "Head7qXw\tTail9zWk",
    "backspace": "Head7qXw\bTail9zWk",
    "quote-and-backslash": 'He"ad\\7q\\nXw',
    "equals-and-section": "=[client]x",
    "trailing-space": "Head7qXw ",
}


@pytest.mark.parametrize("password", list(ODD_PASSWORDS.values()), ids=list(ODD_PASSWORDS))
def test_mariadb_client_logs_in_with_an_odd_password_from_the_option_file(password):
    import uuid

    from conftest import MY, _my_connect, service_missing

    from backup_app.engines.mysql import client_options

    try:
        conn = _my_connect()
    except Exception as err:
        service_missing("MariaDB on 127.0.0.1:3306", err)
    user = f"bk_{uuid.uuid4().hex[:8]}"
    with conn.cursor() as cur:
        cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
    try:
        settings = {"HOST": MY["host"], "PORT": MY["port"], "USER": user, "PASSWORD": password, "NAME": "x"}
        options = client_options(settings)
        out = io.BytesIO()
        argv = ["mariadb", f"--defaults-extra-file={options.path}", "-N", "-e", "SELECT CURRENT_USER()"]
        run_to(Tool(argv, name="mariadb", secrets=[options], error=BackupError), out)
    finally:
        with conn.cursor() as cur:
            cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
        conn.close()

    assert out.getvalue().decode().strip() == f"{user}@%"


def test_password_with_a_nul_character_is_refused_in_one_line_that_shows_none_of_it():
    from backup_app.engines.mysql import client_options

    with pytest.raises(RestoreError) as err:
        client_options({"USER": "shop", "PASSWORD": "Head7qXw\0Tail9zWk", "NAME": "shop"}, RestoreError)

    text = str(err.value)
    assert ("password" in text, "Head7qXw" in text, "Tail9zWk" in text, "\n" in text) == (True, False, False, False)


@override_settings(
    STORAGES={
        "dbbackup": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {"secret_key": "Head7qXw\nTail9zWk"}}
    }
)
def test_each_line_of_a_secret_with_a_line_break_is_masked():
    from backup_app.secrets import redact

    text = redact("mariadb: unknown option '--Tail9zWk'; Head7qXw")

    assert "Tail9zWk" not in text and "Head7qXw" not in text


def test_a_process_that_has_ended_but_is_not_yet_reaped_does_not_exist():
    import subprocess
    import time

    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while open(f"/proc/{child.pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[0] != b"Z":
            assert time.monotonic() < deadline, "the child did not end"
            time.sleep(0.01)
        assert process_exists(child.pid) is False  # a zombie: its pid is still taken, its writing is over
        assert process_exists(os.getpid()) is True
    finally:
        child.wait()
