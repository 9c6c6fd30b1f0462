"""Network waits end: a mail server that accepts the connection and never answers does not hold a run.

In process: the real ``smtplib`` client of Django's SMTP backend talks to a real socket on loopback that
accepts and stays silent.
"""

from __future__ import annotations

import io
import logging
import socket
import uuid

import django

django.setup()

import pytest  # noqa: E402
from django.test import override_settings  # noqa: E402
from test_remote_storage import (  # noqa: E402, F401
    azure_server,
    ftp_server,
    gcs_server,
    s3_server,
    sftp_server,
    workdir,
)

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


# --- a remote storage that accepts connections and never answers --------------------------------


class SilentServer:
    """Accepts every connection on ``free_port()`` and never sends a byte (a stalled endpoint, a hung proxy)."""

    def __init__(self):
        import threading

        from conftest import free_port

        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.held: list[socket.socket] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)

    def requests(self) -> list[str]:
        """The first line sent on each connection, up to the query (``GET /path?…`` -> ``GET /path``) plus the
        query for a check of the listing prefix."""
        found = []
        for conn in self.held:
            conn.settimeout(2)
            try:
                line = conn.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
            except OSError:
                line = ""
            path = line.split(" ")[1] if line.count(" ") >= 2 else ""
            found.append(
                f"{line.split(' ')[0]} {path.split('?')[0]}" + (" prefix=site" if "prefix=site" in path else "")
            )
        return found

    def close(self):
        self.done.set()
        self.thread.join(timeout=5)
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


def test_a_listing_of_a_silent_s3_endpoint_retries_visibly_and_gives_up_with_one_line(sqlite_site, silent_server):
    import json

    sqlite_site.env.update(
        {
            "INVENTREE_BACKUP_STORAGE": "storages.backends.s3.S3Storage",
            "INVENTREE_BACKUP_OPTIONS": json.dumps(
                {
                    "bucket_name": "backups",
                    "endpoint_url": f"http://127.0.0.1:{silent_server.port}",
                    "region_name": "us-east-1",
                    "access_key": "AKIASILENT0000000000",
                    "secret_key": "not-a-real-secret",
                }
            ),
            "INVENTREE_BACKUP_DIR": "site",
            "INVENTREE_BACKUP_STORAGE_TIMEOUT": "1",
            "INVENTREE_BACKUP_STORAGE_RETRIES": "2",
        }
    )

    result = sqlite_site.manage("backup_list", check=False, timeout=120)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert [line.split("; ")[-1] for line in lines if "retrying (" in line] == ["retrying (1/2)", "retrying (2/2)"]
    assert f"127.0.0.1:{silent_server.port}" in lines[0]
    assert "the S3 endpoint did not answer within 1 s, 3 tries" in lines[-1]
    assert "INVENTREE_BACKUP_STORAGE_TIMEOUT" in lines[-1]
    assert "not-a-real-secret" not in result.output
    assert len(silent_server.held) == 3  # one connection per try, each left unanswered


@pytest.mark.parametrize(
    ("storage", "options", "what"),
    [
        ("storages.backends.sftpstorage.SFTPStorage", {"host": "127.0.0.1", "params": {"username": "backup"}}, "SSH"),
        ("storages.backends.ftp.FTPStorage", {"location": "ftp://backup:not-a-real-secret@127.0.0.1:PORT/"}, "FTP"),
    ],
    ids=["SFTP", "FTP"],
)
def test_a_silent_sftp_or_ftp_server_fails_the_listing_within_the_storage_timeout(
    sqlite_site, silent_server, storage, options, what
):
    import json

    if what == "SSH":
        options = {**options, "params": {**options["params"], "port": silent_server.port}}
    else:
        options = {"location": options["location"].replace("PORT", str(silent_server.port))}
    sqlite_site.env.update(
        {
            "INVENTREE_BACKUP_STORAGE": storage,
            "INVENTREE_BACKUP_OPTIONS": json.dumps(options),
            "INVENTREE_BACKUP_STORAGE_TIMEOUT": "1",
            "INVENTREE_BACKUP_STORAGE_RETRIES": "1",
        }
    )
    del sqlite_site.env["INVENTREE_BACKUP_DIR"]

    result = sqlite_site.manage("backup_list", check=False, timeout=120)

    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].endswith("; retrying (1/1)"), result.stderr  # one retry, said
    last = lines[-1]
    assert f"the {what} server did not answer within 1 s, 2 tries" in last, result.stderr
    assert len(silent_server.held) == 2
    assert "INVENTREE_BACKUP_STORAGE_TIMEOUT" in last and "Traceback" not in result.output
    assert "not-a-real-secret" not in result.output


# --- SFTP and FTP: a connection the server drops is tried again -----------------------------------


def _dropping_proxy(request, site, backend: str, drop: int):
    """``site`` pointed at the ``backend`` test server through a proxy that closes the first ``drop``
    connections as soon as they are accepted."""
    from conftest import free_port
    from tcp_proxy import CountingProxy
    from test_listing_requests import _through_proxy

    remote = request.getfixturevalue(f"{backend}_server")
    proxy_port = free_port()
    upstream = _through_proxy(site, backend, remote, f"drop-{uuid.uuid4().hex[:10]}", proxy_port)
    proxy = CountingProxy(proxy_port, upstream, delay=0, drop=drop)
    request.addfinalizer(proxy.close)
    return proxy


@pytest.mark.parametrize("backend", ["sftp", "ftp", "gcs", "azure"])
def test_a_connection_dropped_once_is_tried_again_with_one_line(request, sqlite_site, backend):
    proxy = _dropping_proxy(request, sqlite_site, backend, drop=1)
    # google-cloud-storage reads the bucket's metadata on a thread of its own for its telemetry: off, so that
    # the dropped connection is one of ours.
    sqlite_site.env["DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"] = "true"
    (sqlite_site.media / "a.txt").write_text("a")

    result = sqlite_site.manage("backup_create", "--quiet", check=False, timeout=120)

    assert result.returncode == 0, result.output
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].endswith("; retrying (1/3)"), result.stderr  # nothing of paramiko's
    where = "Google Cloud Storage gs://backups/drop-" if backend == "gcs" else f"127.0.0.1:{proxy.port}"
    assert where in said[0], said[0]
    assert proxy.dropped == 1
    [backup] = sqlite_site.sets()
    assert backup["complete"]


@pytest.mark.parametrize(("backend", "what"), [("sftp", "SSH"), ("ftp", "FTP")])
def test_an_sftp_or_ftp_server_that_drops_every_connection_gives_up_after_the_retries(
    request, sqlite_site, backend, what
):
    proxy = _dropping_proxy(request, sqlite_site, backend, drop=1000)
    sqlite_site.env.update({"INVENTREE_BACKUP_STORAGE_TIMEOUT": "1", "INVENTREE_BACKUP_STORAGE_RETRIES": "2"})

    result = sqlite_site.manage("backup_list", check=False, timeout=120)

    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line.split("; ")[-1] for line in lines[:-1]] == ["retrying (1/2)", "retrying (2/2)"], result.stderr
    assert lines[-1].startswith("CommandError: ") and f"127.0.0.1:{proxy.port}" in lines[-1]
    assert f"the {what} server closed the connection" in lines[-1] and "3 tries" in lines[-1], lines[-1]
    assert "check host and" in lines[-1]
    assert proxy.dropped == 3


# --- Google Cloud Storage and Azure: the SDKs' retries, bounded and said -------------------------


@pytest.mark.parametrize("backend", ["gcs", "azure"])
def test_a_listing_of_a_silent_gcs_or_azure_endpoint_retries_visibly_and_gives_up_with_one_line(
    sqlite_site, silent_server, backend
):
    import json
    import time

    from test_remote_storage import AZURITE_ACCOUNT, AZURITE_KEY

    endpoint = f"127.0.0.1:{silent_server.port}"
    if backend == "gcs":
        storage, options, what = (
            "storages.backends.gcloud.GoogleCloudStorage",
            {"bucket_name": "backups", "project_id": "test"},
            "Google Cloud Storage did not answer within 1 s, 3 tries",
        )
        sqlite_site.env["STORAGE_EMULATOR_HOST"] = f"http://{endpoint}"
    else:
        connection = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://{endpoint}/{AZURITE_ACCOUNT};"
        )
        storage, options, what = (
            "storages.backends.azure_storage.AzureStorage",
            {"connection_string": connection, "azure_container": "backups"},
            "the Azure endpoint did not answer within 1 s, 3 tries",
        )
    sqlite_site.env.update(
        {
            "INVENTREE_BACKUP_STORAGE": storage,
            "INVENTREE_BACKUP_OPTIONS": json.dumps(options),
            "INVENTREE_BACKUP_DIR": "site",
            "INVENTREE_BACKUP_STORAGE_TIMEOUT": "1",
            "INVENTREE_BACKUP_STORAGE_RETRIES": "2",
        }
    )

    started = time.monotonic()
    result = sqlite_site.manage("backup_list", check=False, timeout=120)
    seconds = time.monotonic() - started

    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line.split("; ")[-1] for line in lines[:-1]] == ["retrying (1/2)", "retrying (2/2)"], result.stderr
    assert lines[-1].startswith("CommandError: ") and what in lines[-1], lines[-1]
    assert "INVENTREE_BACKUP_STORAGE_TIMEOUT" in lines[-1]
    assert AZURITE_KEY not in result.output
    # One connection per try of the listing, each left unanswered (google-cloud-storage also reads the bucket's
    # metadata once, on a thread of its own, for its telemetry: not a request of ours).
    listing = "GET /" + ("storage/v1/b/backups/o" if backend == "gcs" else f"{AZURITE_ACCOUNT}/backups")
    assert [request for request in silent_server.requests() if "prefix=site" in request] == [
        f"{listing} prefix=site"
    ] * 3
    assert seconds < 60, seconds  # 3 silent seconds, 2 pauses of 1 s, and the command's start


# --- S3: an endpoint that hangs in the middle of an upload ----------------------------------------


def test_an_s3_endpoint_that_stalls_mid_upload_fails_the_backup_within_its_timeouts_and_no_set_is_complete(
    request, sqlite_site
):
    import os
    import time

    from conftest import free_port
    from tcp_proxy import CountingProxy
    from test_listing_requests import _through_proxy
    from test_remote_storage import BUCKET, point_at, s3_client

    s3 = request.getfixturevalue("s3_server")
    prefix = f"stall-{uuid.uuid4().hex[:10]}"
    proxy_port = free_port()
    upstream = _through_proxy(sqlite_site, "s3", s3, prefix, proxy_port)
    # Two 8 MiB parts of a multipart upload; the endpoint hangs 10 MiB in, and stays hung.
    proxy = CountingProxy(proxy_port, upstream, delay=0, stall_after=10 * 1024 * 1024)
    request.addfinalizer(proxy.close)
    (sqlite_site.media / "big.bin").write_bytes(os.urandom(16 * 1024 * 1024))
    sqlite_site.env.update({"INVENTREE_BACKUP_STORAGE_TIMEOUT": "1", "INVENTREE_BACKUP_STORAGE_RETRIES": "1"})

    started = time.monotonic()
    result = sqlite_site.manage("backup_create", "--quiet", check=False, timeout=120)
    seconds = time.monotonic() - started

    assert proxy.stalled.is_set()
    assert result.returncode != 0 and "Traceback" not in result.output
    *retries, last = [line for line in result.stderr.splitlines() if line.strip()]
    # Only the parts that were being sent are tried again; once they failed for good, the abort of the upload
    # and the clean-up of the set are tried once each (before: each retried, about 4 minutes each by default).
    assert retries and all(": UploadPart failed (" in r and r.endswith("; retrying (1/1)") for r in retries), retries
    assert last.startswith("CommandError: writing InvenTree-media-"), last
    assert "the S3 endpoint did not answer within 1 s, 2 tries" in last, last
    assert "the storage did not answer, so what set " in last and "stays marked unfinished" in last, last
    assert seconds < 60, seconds  # 1 s x (2 tries + abort + 2 checks), 1 s pause, two starts of Django
    # Straight to the server: no manifest, so no set is complete; the next --clean leaves only its own set.
    names = s3.names(prefix)
    assert not [n for n in names if n.endswith(".manifest.metadata")], names
    point_at(sqlite_site, s3, prefix)
    assert not [s for s in sqlite_site.sets() if s["complete"]]
    sqlite_site.manage("backup_create", "--clean", "--quiet", "--skip-media")
    [done] = sqlite_site.sets()
    assert done["complete"]
    assert set(s3.names(prefix)) == {f["name"] for f in done["files"]}
    client = s3_client(s3, prefix)
    assert client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/").get("Uploads", []) == []


# --- Google Cloud Storage: a file's modified time, with the time-out and retries of every request -----------


def _gcs_storage(monkeypatch, endpoint: str):
    from backup_app.storage import build_storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    monkeypatch.setenv("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
    return build_storage("storages.backends.gcloud.GoogleCloudStorage", {"bucket_name": "backups", "project_id": "t"})


def test_the_modified_time_of_a_file_on_a_silent_gcs_endpoint_retries_visibly_and_gives_up_with_one_line(
    silent_server, monkeypatch, caplog
):
    from backup_app.storage.base import RemoteStorageError

    with override_settings(BACKUP_APP={"STORAGE_TIMEOUT": 1, "STORAGE_RETRIES": 2}):
        storage = _gcs_storage(monkeypatch, f"http://127.0.0.1:{silent_server.port}")
        with caplog.at_level(logging.WARNING, logger="backup_app"), pytest.raises(RemoteStorageError) as raised:
            storage.get_modified_time("InvenTree-db-2020-01-01-000000.sqlite3")

    retries = [r.getMessage() for r in caplog.records if "retrying (" in r.getMessage()]
    assert [r.rsplit("; ", 1)[-1] for r in retries] == ["retrying (1/2)", "retrying (2/2)"], retries
    assert "read InvenTree-db-2020-01-01-000000.sqlite3 failed" in retries[0]
    assert "Google Cloud Storage did not answer within 1 s, 3 tries" in str(raised.value)


def test_the_modified_time_of_a_file_on_gcs_is_the_objects_update_time(request, monkeypatch):
    gcs = request.getfixturevalue("gcs_server")
    storage = _gcs_storage(monkeypatch, gcs.extra_env["STORAGE_EMULATOR_HOST"])
    name = f"mtime-{uuid.uuid4().hex[:10]}/InvenTree-db-2020-01-01-000000.sqlite3"
    storage.save(name, io.BytesIO(b"dump"))

    assert storage.get_modified_time(name) == storage.backend.bucket.get_blob(name).updated


# --- every other remote backend: a storage that hangs in the middle of an upload -----------------------


@pytest.mark.parametrize("backend", ["gcs", "azure", "sftp"])  # FTP: its data connections do not pass the proxy
def test_a_storage_that_stalls_mid_upload_fails_the_backup_within_its_timeouts_and_no_set_is_complete(
    request, sqlite_site, backend
):
    import os
    import time

    from conftest import free_port
    from tcp_proxy import CountingProxy
    from test_listing_requests import _through_proxy
    from test_remote_storage import point_at

    remote = request.getfixturevalue(f"{backend}_server")
    prefix = f"stall-{uuid.uuid4().hex[:10]}"
    proxy_port = free_port()
    upstream = _through_proxy(sqlite_site, backend, remote, prefix, proxy_port)
    proxy = CountingProxy(proxy_port, upstream, delay=0, stall_after=6 * 1024 * 1024)
    request.addfinalizer(proxy.close)
    (sqlite_site.media / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    sqlite_site.env.update({"INVENTREE_BACKUP_STORAGE_TIMEOUT": "1", "INVENTREE_BACKUP_STORAGE_RETRIES": "1"})
    sqlite_site.env["DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"] = "true"

    started = time.monotonic()
    result = sqlite_site.manage("backup_create", "--quiet", check=False, timeout=300)
    seconds = time.monotonic() - started
    print(f"{backend}: failed after {seconds:.1f} s\n{result.stderr}")

    assert proxy.stalled.is_set()
    assert result.returncode != 0 and "Traceback" not in result.output
    *retries, last = [line for line in result.stderr.splitlines() if line.strip()]
    assert all(r.endswith("; retrying (1/1)") for r in retries), retries
    assert last.startswith("CommandError: writing InvenTree-"), last
    assert "did not answer within 1 s" in last, last
    assert "the storage did not answer, so what set " in last and "stays marked unfinished" in last, last
    assert seconds < 30, seconds
    proxy.close()  # the held connections close (the GCS emulator serves one request at a time)
    # Straight to the server: no manifest, so no set is complete; the next --clean leaves only its own set.
    names = remote.names(prefix)
    assert not [n for n in names if n.endswith(".manifest.metadata")], names
    point_at(sqlite_site, remote, prefix)
    if backend == "gcs":
        sqlite_site.env["STORAGE_EMULATOR_HOST"] = remote.extra_env["STORAGE_EMULATOR_HOST"]
    assert not [s for s in sqlite_site.sets() if s["complete"]]
    sqlite_site.manage("backup_create", "--clean", "--quiet", "--skip-media")
    [done] = sqlite_site.sets()
    assert done["complete"]
    assert set(remote.names(prefix)) == {f["name"] for f in done["files"]}


# FTP's data connections and GCS downloads (the emulator's media links name its own port) do not pass the proxy.
@pytest.mark.parametrize("backend", ["s3", "azure", "sftp"])
def test_a_storage_that_stalls_mid_download_fails_the_restore_within_its_timeouts_and_changes_nothing(
    request, sqlite_site, backend
):
    import os
    import time

    from conftest import free_port
    from tcp_proxy import CountingProxy
    from test_listing_requests import _through_proxy
    from test_remote_storage import point_at

    remote = request.getfixturevalue(f"{backend}_server")
    prefix = f"stall-{uuid.uuid4().hex[:10]}"
    point_at(sqlite_site, remote, prefix)
    sqlite_site.env["DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"] = "true"
    (sqlite_site.media / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    sqlite_site.manage("backup_create", "--quiet", "--skip-db")
    (sqlite_site.media / "big.bin").write_bytes(b"changed")
    before = sqlite_site.snapshot_media()
    proxy_port = free_port()
    upstream = _through_proxy(sqlite_site, backend, remote, prefix, proxy_port)
    proxy = CountingProxy(proxy_port, upstream, delay=0, stall_down_after=6 * 1024 * 1024)
    request.addfinalizer(proxy.close)
    sqlite_site.env.update({"INVENTREE_BACKUP_STORAGE_TIMEOUT": "1", "INVENTREE_BACKUP_STORAGE_RETRIES": "1"})

    started = time.monotonic()
    result = sqlite_site.manage("backup_restore", "--noinput", "--skip-db", check=False, timeout=300)
    seconds = time.monotonic() - started
    print(f"{backend}: failed after {seconds:.1f} s\n{result.stderr}")

    assert proxy.stalled.is_set()
    assert result.returncode != 0 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("CommandError: "), lines[-1]
    assert "did not answer within 1 s" in lines[-1], lines[-1]
    assert seconds < 30, seconds
    proxy.close()
    assert sqlite_site.snapshot_media() == before
