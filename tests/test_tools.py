"""backup_app.tools: external programs run with argv lists, streamed, their failures one line, secrets in pipes."""

from __future__ import annotations

import io
import os

import django
import pytest

django.setup()

from django.test import override_settings  # noqa: E402

from backup_app.errors import BackupError, RestoreError  # noqa: E402
from backup_app.tools import SecretPipe, Tool, run_from, run_to  # noqa: E402


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
