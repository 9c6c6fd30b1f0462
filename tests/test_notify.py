"""Pushes to monitors: a real HTTP server on loopback receives the pings (healthchecks.io style) and the Apprise
notifications (its ``json://`` service) that a backup sends; the tokens in their URLs are never shown."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import free_port


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request (method, path, body)."""

    def __init__(self, status: int = 200):
        self.requests: list[tuple[str, str, bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                received.append((self.command, self.path, self.rfile.read(length)))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = _record  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [path for _method, path, _body in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_a_backup_pings_start_then_success(sqlite_site, receiver):
    token = uuid.uuid4().hex

    sqlite_site.manage("backup_create", "--quiet", extra_env={"INVENTREE_BACKUP_PING_URL": f"{receiver.url}/{token}"})

    assert receiver.paths() == [f"/{token}/start", f"/{token}"]
    assert b"1 database" in receiver.requests[1][2]  # the summary line goes with the success ping


def test_a_failed_backup_pings_fail_and_pushes_the_reason_without_tokens(sqlite_site, receiver, tmp_path):
    ping_token, push_token = uuid.uuid4().hex, uuid.uuid4().hex
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    env = {
        "INVENTREE_BACKUP_DIR": str(not_a_folder),
        "INVENTREE_BACKUP_PING_URL": f"{receiver.url}/{ping_token}",
        "INVENTREE_BACKUP_NOTIFY_URLS": f"json://127.0.0.1:{receiver.url.rsplit(':', 1)[1]}/hook/{push_token}",
    }

    result = sqlite_site.manage("backup_create", extra_env=env, check=False)

    assert result.returncode != 0
    paths = receiver.paths()
    assert paths[0] == f"/{ping_token}/start" and f"/{ping_token}/fail" in paths
    [push] = [r for r in receiver.requests if r[1].startswith("/hook/")]
    message = json.loads(push[2])
    assert message["type"] == "failure" and "failed" in message["title"]
    assert str(not_a_folder) in message["message"]
    fail_body = next(body for _m, path, body in receiver.requests if path.endswith("/fail"))
    for shown in (message["message"], message["title"], fail_body.decode(), result.output):
        assert ping_token not in shown and push_token not in shown


def test_success_is_pushed_only_when_asked(sqlite_site, receiver):
    port = receiver.url.rsplit(":", 1)[1]
    env = {"INVENTREE_BACKUP_NOTIFY_URLS": f"json://127.0.0.1:{port}/hook"}

    sqlite_site.manage("backup_create", "--quiet", extra_env=env)
    assert receiver.requests == []

    sqlite_site.manage("backup_create", "--quiet", extra_env={**env, "INVENTREE_BACKUP_NOTIFY_ON_SUCCESS": "true"})
    [push] = receiver.requests
    assert json.loads(push[2])["type"] == "success"


def test_an_unreachable_monitor_does_not_fail_the_backup(sqlite_site):
    with socket_closed() as url:
        result = sqlite_site.manage("backup_create", extra_env={"INVENTREE_BACKUP_PING_URL": f"{url}/secret-token"})

    assert result.returncode == 0
    assert "ping to http://127.0.0.1" in result.stderr and "secret-token" not in result.stderr


class socket_closed:  # noqa: N801 - used as a context manager
    """The URL of a loopback port nothing listens on."""

    def __enter__(self) -> str:
        # Reserved, and below the ephemeral range: no other test's server (a Receiver binds port 0) can take it.
        return f"http://127.0.0.1:{free_port()}"

    def __exit__(self, *exc):
        return False


def test_an_overdue_backup_is_pushed_once_not_every_hour(sqlite_site, receiver):
    import sqlite3

    from test_schedule import django_shell, enable

    port = receiver.url.rsplit(":", 1)[1]
    sqlite_site.env["INVENTREE_BACKUP_NOTIFY_URLS"] = f"json://127.0.0.1:{port}/hook"
    sqlite_site.manage("backup_create", "--quiet")
    enable(sqlite_site, interval_days=1)
    with sqlite3.connect(sqlite_site.root / "db.sqlite3") as conn:  # the last success: months ago
        conn.execute("UPDATE backup_app_backuprun SET started = '2026-01-01 00:00', finished = '2026-01-01 00:01'")
    check = "from backup_app.schedule import push_if_overdue; print(push_if_overdue())"

    first = django_shell(sqlite_site, check)
    second = django_shell(sqlite_site, check)

    assert (first.strip(), second.strip()) == ("True", "False")
    [push] = receiver.requests
    message = json.loads(push[2])
    assert message["type"] == "failure" and "overdue" in message["title"].lower()
    assert "No backup has succeeded" in message["message"]
