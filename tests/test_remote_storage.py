"""Backups to real servers on 127.0.0.1, started by these tests.

S3 (moto's server with IAM enforced), SFTP (OpenSSH's sshd, key login as an
unprivileged user), FTP (pyftpdlib), Google Cloud Storage (gcp-storage-emulator)
and Azure Blob (Azurite, from ``npm ci``).  The demo site is configured only
through ``INVENTREE_BACKUP_STORAGE`` + ``INVENTREE_BACKUP_OPTIONS`` (+
``INVENTREE_BACKUP_DIR`` where it maps onto an option), as a user would.

Each server is started once per session on a free port and stopped at the
end; each test works under its own prefix.  A server that cannot be started
skips its tests with the reason (fails with BACKUP_TEST_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, Site, free_port, service_missing

BUCKET = "backups"

#: The IAM policy docs/storage/s3.md gives the backup user; the S3 tests run with exactly it.
S3_BACKUP_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
            "Resource": f"arn:aws:s3:::{BUCKET}",
        },
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
            "Resource": f"arn:aws:s3:::{BUCKET}/*",
        },
    ],
}
#: The documented policy without s3:DeleteObject: a user that may write backups but not delete them.
S3_KEEPER_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        S3_BACKUP_POLICY["Statement"][0],
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": f"arn:aws:s3:::{BUCKET}/*"},
    ],
}
S3_READ_ONLY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{BUCKET}"},
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{BUCKET}/*"},
    ],
}
#: Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


# --- process plumbing --------------------------------------------------------------------------


def closed_port() -> int:
    """A port nothing listens on (for "unreachable host"), reserved so that no other test's server takes it."""
    return free_port()


@dataclass
class Server:
    """A server process of the tests and the log it writes."""

    name: str
    proc: subprocess.Popen
    log: Path

    def log_tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(name: str, argv: list[str], port: int, workdir: Path, ready: Callable[[], bool] | None = None, **kw):
    """Start ``argv``, wait until ``port`` accepts connections (and ``ready()``), or report it missing."""
    log = workdir / f"{name}.log"
    try:
        proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
    except OSError as err:
        service_missing(name, err)
    server = Server(name, proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            service_missing(name, RuntimeError(f"exited with status {proc.returncode}: {server.log_tail()}"))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                if ready is None or ready():
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    service_missing(name, TimeoutError(f"not listening on 127.0.0.1:{port} after 60 s: {server.log_tail()}"))


# --- one fixture per backend -------------------------------------------------------------------


@dataclass
class Remote:
    """A running server and how to point the demo site at a prefix on it."""

    label: str
    storage: str
    #: prefix -> (backup_options, backup_dir or None); keyword overrides change the account, host...
    configure: Callable[..., tuple[dict, str | None]]
    #: prefix -> every name the server holds under that prefix (the server's view, not ours)
    names: Callable[[str], list[str]]
    extra_env: dict = field(default_factory=dict)
    #: the local folder the server serves, and one its user may not write to (SFTP, FTP)
    home: Path | None = None
    readonly: Path | None = None

    def env(self, prefix: str, **overrides) -> dict:
        options, backup_dir = self.configure(prefix, **overrides)
        env = {
            "INVENTREE_BACKUP_STORAGE": self.storage,
            "INVENTREE_BACKUP_OPTIONS": json.dumps(options),
            **self.extra_env,
        }
        env["INVENTREE_BACKUP_DIR"] = backup_dir or ""
        return env


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # Under /tmp with 0755: sshd's login user (nobody) must reach its files.
    path = Path(tempfile.mkdtemp(prefix="backup-remote-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


MOTO_SERVER = """
import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.sansio.request import Request
from werkzeug.sansio.utils import get_current_url
from werkzeug.serving import make_server


def url_as_sent(self):
    # moto checks SigV4 signatures against request.url, in which werkzeug unescapes %2F; botocore signed
    # the query as sent (prefix=a%2Fb), as AWS checks it.  Give moto the query as it came.
    query = self.query_string.decode("latin-1")
    return get_current_url(self.scheme, self.host, self.root_path, self.path) + ("?" + query if query else "")


Request.url = property(url_as_sent)
app = DomainDispatcherApplication(create_backend_app)
make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True).serve_forever()
"""


@pytest.fixture(scope="session")
def s3_server(workdir) -> Iterator[Remote]:
    """moto in server mode; IAM enforced after set-up: users backup (the documented policy), keeper (no
    delete), reader, admin."""
    try:
        import boto3
        import moto.server  # noqa: F401
    except ImportError as err:
        service_missing("moto / boto3 (pip install -e '.[test]')", err)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_server("moto S3 server", [sys.executable, "-c", MOTO_SERVER, str(port)], port, workdir)
    setup = {
        "endpoint_url": endpoint,
        "aws_access_key_id": "setup",
        "aws_secret_access_key": "setup",
        "region_name": "us-east-1",
    }
    s3 = boto3.client("s3", **setup)
    iam = boto3.client("iam", **setup)
    s3.create_bucket(Bucket=BUCKET)
    keys = {}
    admin_policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    users = (
        ("backup", S3_BACKUP_POLICY),
        ("keeper", S3_KEEPER_POLICY),
        ("reader", S3_READ_ONLY_POLICY),
        ("admin", admin_policy),
    )
    for user, policy in users:
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="backup", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
    # From now on every request is authenticated and checked against the users' policies.
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(request, timeout=10).read()
    admin = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=keys["admin"][0],
        aws_secret_access_key=keys["admin"][1],
    )

    def configure(prefix, user="backup", secret=None, bucket=BUCKET, url=endpoint):
        access, real_secret = keys[user]
        options = {
            "bucket_name": bucket,
            "endpoint_url": url,
            "region_name": "us-east-1",
            "access_key": access,
            "secret_key": secret or real_secret,
        }
        return options, prefix

    def names(prefix):
        pages = admin.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
        return sorted(o["Key"][len(prefix) + 1 :] for page in pages for o in page.get("Contents", []))

    yield Remote("S3", "storages.backends.s3.S3Storage", configure, names)
    server.stop()


@pytest.fixture(scope="session")
def sftp_server(workdir) -> Iterator[Remote]:
    """OpenSSH's sshd on a free port: own host key, one authorized ed25519 key, SFTP only.

    Run as root (as in CI) it logs in the unprivileged user ``nobody``, so that
    file permissions apply; run as another user, it can only log in that user.
    """
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or shutil.which("ssh-keygen") is None:
        service_missing("OpenSSH sshd", FileNotFoundError("install the Debian package openssh-server"))
    try:
        import paramiko  # noqa: F401
    except ImportError as err:
        service_missing("paramiko (pip install -e '.[test]')", err)
    home = workdir / "sshd"
    home.mkdir()
    home.chmod(0o755)
    for name in ("host", "client", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(home / name)], check=True)
    (home / "authorized_keys").write_text((home / "client.pub").read_text())
    (home / "authorized_keys").chmod(0o644)
    root = os.geteuid() == 0
    user = "nobody" if root else pwd.getpwuid(os.geteuid()).pw_name
    account = pwd.getpwnam(user)
    data = home / "data"
    data.mkdir()
    readonly = home / "readonly"
    readonly.mkdir(mode=0o555)
    if root:
        os.chown(data, account.pw_uid, account.pw_gid)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    port = free_port()
    (home / "sshd_config").write_text(
        textwrap.dedent(
            f"""\
            ListenAddress 127.0.0.1
            Port {port}
            HostKey {home / "host"}
            PidFile none
            AuthorizedKeysFile {home / "authorized_keys"}
            StrictModes no
            UsePAM no
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            AllowUsers {user}
            Subsystem sftp internal-sftp
            ForceCommand internal-sftp -d {data}
            MaxStartups 50
            LogLevel ERROR
            """
        )
    )
    host_pub = (home / "host.pub").read_text().split()
    (home / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    stranger_pub = (home / "stranger.pub").read_text().split()
    (home / "wrong_known_hosts").write_text(f"[127.0.0.1]:{port} {stranger_pub[0]} {stranger_pub[1]}\n")
    server = start_server("OpenSSH sshd", [sshd, "-D", "-e", "-f", str(home / "sshd_config")], port, workdir)

    def configure(prefix, key="client", folder=None, known_hosts="known_hosts", ssh_port=port):
        options = {
            "host": "127.0.0.1",
            "params": {
                "port": ssh_port,
                "username": user,
                "key_filename": str(home / key),
                "look_for_keys": False,
                "allow_agent": False,
                "timeout": 10,
            },
            "known_host_file": str(home / known_hosts),
        }
        if folder is None:
            # INVENTREE_BACKUP_DIR relative: root_path inside the login folder (internal-sftp -d: data).
            return options, prefix
        return {**options, "root_path": str(folder / prefix)}, None

    def names(prefix):
        folder = data / prefix
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    yield Remote("SFTP", "storages.backends.sftpstorage.SFTPStorage", configure, names, home=data, readonly=readonly)
    server.stop()


FTP_SERVER = """
import json, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

port, users = json.loads(sys.argv[1])
authorizer = DummyAuthorizer()
for name, password, home, perm in users:
    authorizer.add_user(name, password, home, perm=perm)
FTPHandler.authorizer = authorizer
FTPHandler.passive_ports = None
FTPServer(("127.0.0.1", port), FTPHandler).serve_forever()
"""


@pytest.fixture(scope="session")
def ftp_server(workdir) -> Iterator[Remote]:
    """pyftpdlib: user ``backup`` may do everything in its home, ``keeper`` all but delete, ``reader`` only list
    and read, ``blind`` all but list."""
    try:
        import pyftpdlib  # noqa: F401
    except ImportError as err:
        service_missing("pyftpdlib (pip install -e '.[test]')", err)
    home = workdir / "ftp"
    home.mkdir()
    port = free_port()
    users = [
        ("backup", "ftp-secret-pw", str(home), "elradfmw"),
        ("keeper", "keeper-pw", str(home), "elrafmw"),
        ("reader", "reader-pw", str(home), "elr"),
        ("blind", "blind-pw", str(home), "eradfmw"),  # everything but listing
    ]
    server = start_server(
        "pyftpdlib FTP server", [sys.executable, "-c", FTP_SERVER, json.dumps([port, users])], port, workdir
    )

    def configure(prefix, user="backup", password=None, ftp_port=port):
        real = dict((u, p) for u, p, _h, _perm in users)[user]
        return {"location": f"ftp://{user}:{password or real}@127.0.0.1:{ftp_port}/{prefix}"}, None

    def names(prefix):
        folder = home / prefix
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    yield Remote("FTP", "storages.backends.ftp.FTPStorage", configure, names, home=home)
    server.stop()


@pytest.fixture(scope="session")
def gcs_server(workdir) -> Iterator[Remote]:
    """gcp-storage-emulator (PyPI) with bucket ``backups``; the client finds it by STORAGE_EMULATOR_HOST."""
    try:
        import gcp_storage_emulator  # noqa: F401
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage as gcs
    except ImportError as err:
        service_missing("gcp-storage-emulator / google-cloud-storage (pip install -e '.[test]')", err)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--in-memory",
        "--default-bucket",
        BUCKET,
        "--quiet",
    ]
    server = start_server("gcp-storage-emulator", argv, port, workdir)
    endpoint = f"http://127.0.0.1:{port}"
    client = gcs.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint})

    def configure(prefix, bucket=BUCKET):
        return {"bucket_name": bucket, "project_id": "test"}, prefix

    def names(prefix):
        return sorted(b.name[len(prefix) + 1 :] for b in client.list_blobs(BUCKET, prefix=prefix + "/"))

    yield Remote(
        "GCS",
        "storages.backends.gcloud.GoogleCloudStorage",
        configure,
        names,
        extra_env={"STORAGE_EMULATOR_HOST": endpoint},
    )
    server.stop()


@pytest.fixture(scope="session")
def azure_server(workdir) -> Iterator[Remote]:
    """Azurite's blob service (``npm ci`` installs it into node_modules/) with container ``backups``."""
    main = ROOT / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
    node = shutil.which("node")
    if node is None or not main.exists():
        service_missing("Azurite", FileNotFoundError(f"need node and {main}; run `npm ci` in the repository root"))
    try:
        from azure.storage.blob import BlobServiceClient
    except ImportError as err:
        service_missing("azure-storage-blob (pip install -e '.[test]')", err)
    port = free_port()
    location = workdir / "azurite"
    location.mkdir()
    argv = [
        node,
        str(main),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(location),
        "--silent",
        "--skipApiVersionCheck",
        "--loose",
    ]
    server = start_server("Azurite", argv, port, workdir)
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"

    def connection_string(key=AZURITE_KEY, url=endpoint):
        return f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};BlobEndpoint={url};"

    service = BlobServiceClient.from_connection_string(connection_string())
    service.create_container(BUCKET)
    container = service.get_container_client(BUCKET)

    def configure(prefix, key=AZURITE_KEY, container_name=BUCKET, url=endpoint):
        return {"connection_string": connection_string(key, url), "azure_container": container_name}, prefix

    def names(prefix):
        return sorted(b.name[len(prefix) + 1 :] for b in container.list_blobs(name_starts_with=prefix + "/"))

    yield Remote("Azure", "storages.backends.azure_storage.AzureStorage", configure, names)
    server.stop()


BACKENDS = ["s3", "sftp", "ftp", "gcs", "azure"]


@pytest.fixture(params=BACKENDS)
def remote(request) -> Remote:
    return request.getfixturevalue(f"{request.param}_server")


@dataclass
class RemoteSite:
    site: Site
    remote: Remote
    prefix: str

    def names(self) -> list[str]:
        return self.remote.names(self.prefix)


def point_at(site: Site, remote: Remote, prefix: str, **overrides) -> None:
    """Configure ``site`` for ``remote`` only through the backup environment variables."""
    site.env.update(remote.env(prefix, **overrides))
    if not site.env["INVENTREE_BACKUP_DIR"]:
        del site.env["INVENTREE_BACKUP_DIR"]  # the backend has no folder option (FTP: the path is in location)


@pytest.fixture
def remote_site(sqlite_site, remote) -> RemoteSite:
    prefix = f"site-{uuid.uuid4().hex[:10]}"
    point_at(sqlite_site, remote, prefix)
    return RemoteSite(sqlite_site, remote, prefix)


# --- helpers -----------------------------------------------------------------------------------


def seed(site: Site) -> None:
    site.run(sys.executable, str(ROOT / "tests" / "seed.py"), "default", "seed")


def mutate(site: Site) -> None:
    site.run(sys.executable, str(ROOT / "tests" / "seed.py"), "default", "mutate")


def write_media(media: Path, big_mb: int = 10) -> None:
    """Nested folders, a unicode name, an empty file and one file larger than an S3 part / Azure block."""
    (media / "parts" / "nested").mkdir(parents=True, exist_ok=True)
    (media / "parts" / "nested" / "Schaltplan ✓ 図面.txt").write_text("Größe\n" * 1000)
    (media / "parts" / "empty.bin").write_bytes(b"")
    for i in range(0, 60, 3):
        (media / "parts" / f"p{i}.bin").write_bytes(os.urandom(i * 97))
    (media / "big.bin").write_bytes(os.urandom(big_mb * 1024 * 1024))


def one_line_error(result) -> str:
    """The failure as the user sees it: non-zero exit, one line on stderr, no traceback."""
    assert result.returncode != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# --- every backend: backup, list, verify, restore, prune, check --------------------------------


def test_backup_list_verify_restore_and_prune(remote_site):
    site = remote_site.site
    seed(site)
    write_media(site.media)
    rows_before = site.snapshot_db()
    media_before = site.snapshot_media()

    site.invoke("backup")

    [entry] = site.sets()
    assert entry["complete"]
    assert sorted(f["kind"] for f in entry["files"]) == ["db", "manifest", "manifest", "media"]  # with the sidecar
    stored = {f["name"] for f in entry["files"]}
    assert set(remote_site.names()) == stored  # nothing else on the server: no marker, no part left over
    site.invoke("verify")

    mutate(site)
    (site.media / "big.bin").write_bytes(b"changed")
    (site.media / "parts" / "nested" / "Schaltplan ✓ 図面.txt").unlink()
    site.invoke("restore")

    assert site.snapshot_db() == rows_before
    assert site.snapshot_media() == media_before

    keep = {"INVENTREE_BACKUP_KEEP": "2"}
    site.invoke("backup", "--skip-media", extra_env=keep)
    site.invoke("backup", "--skip-media", "--clean", extra_env=keep)

    sets = site.sets()
    assert len(sets) == 2 and all(s["complete"] for s in sets)
    assert entry["name"] not in [s["name"] for s in sets]
    assert stored.isdisjoint(remote_site.names())
    assert set(remote_site.names()) == {f["name"] for s in sets for f in s["files"]}


def test_backup_check_round_trips_a_small_object(remote_site):
    result = remote_site.site.invoke("backup-check")

    assert "Backup storage OK" in result.stdout
    for step in ("list", "write", "read", "delete"):
        assert f"  {step}" in result.stderr
    assert remote_site.names() == []


def test_restore_named_file_from_the_remote(remote_site):
    site = remote_site.site
    (site.media / "doc.txt").write_text("first")
    site.invoke("backup", "--skip-db")
    first = site.sets()[0]
    (site.media / "doc.txt").write_text("second")
    site.invoke("backup", "--skip-db")
    media_file = next(f["name"] for f in first["files"] if f["kind"] == "media")

    site.invoke("restore", "--media-file", media_file, "--skip-db")

    assert (site.media / "doc.txt").read_text() == "first"


# --- errors that say what to do ----------------------------------------------------------------


def failing_site(sqlite_site, remote: Remote, **overrides) -> RemoteSite:
    prefix = f"site-{uuid.uuid4().hex[:10]}"
    (sqlite_site.media / "doc.txt").write_text("data")
    point_at(sqlite_site, remote, prefix, **overrides)
    return RemoteSite(sqlite_site, remote, prefix)


def backup_fails(target: RemoteSite) -> str:
    """Run the backup; it must fail with one line and leave nothing on the server."""
    line = one_line_error(target.site.invoke("backup", "--quiet", check=False))
    assert target.names() == []
    return line


def s3_client(remote: Remote, prefix: str, user: str = "backup"):
    import boto3

    options, _ = remote.configure(prefix, user=user)
    return boto3.client(
        "s3",
        endpoint_url=options["endpoint_url"],
        region_name=options["region_name"],
        aws_access_key_id=options["access_key"],
        aws_secret_access_key=options["secret_key"],
    )


def test_clean_aborts_the_uploads_killed_backups_left_but_not_a_running_ones(sqlite_site, s3_server):
    prefix = f"site-{uuid.uuid4().hex[:10]}"
    point_at(sqlite_site, s3_server, prefix)
    client = s3_client(s3_server, prefix)
    killed = "InvenTree-media-2020-01-01-000000.tar.gz"  # its process is gone: only its upload is left
    running = "2020-01-02-000000"  # another machine is writing this set now
    client.put_object(
        Bucket=BUCKET,
        Key=f"{prefix}/InvenTree-media-{running}.pending.metadata",
        Body=json.dumps({"started": "2020-01-02T00:00:00+00:00", "host": "another-machine", "pid": 4242}).encode(),
    )
    for name in (killed, f"InvenTree-db-{running}.sqlite3.gz"):
        upload = client.create_multipart_upload(Bucket=BUCKET, Key=f"{prefix}/{name}")
        client.upload_part(
            Bucket=BUCKET, Key=f"{prefix}/{name}", UploadId=upload["UploadId"], PartNumber=1, Body=b"p" * 4096
        )

    result = sqlite_site.invoke("backup", "--clean")

    left = client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/").get("Uploads", [])
    assert [u["Key"] for u in left] == [f"{prefix}/InvenTree-db-{running}.sqlite3.gz"]
    assert f"Aborted 1 unfinished uploads of killed or cut-off backups: {killed}" in result.stderr


def test_sigterm_during_an_s3_upload_aborts_it(sqlite_site, s3_server):
    import signal

    prefix = f"site-{uuid.uuid4().hex[:10]}"
    point_at(sqlite_site, s3_server, prefix)
    client = s3_client(s3_server, prefix)
    (sqlite_site.media / "big.bin").write_bytes(os.urandom(96 * 1024 * 1024))  # twelve 8 MiB parts
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "backup_create"],
        cwd=ROOT,
        env=sqlite_site.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/").get("Uploads"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no multipart upload started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # as docker stop sends it, mid-upload
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()

    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err
    assert client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/").get("Uploads", []) == []
    assert s3_server.names(prefix) == []


@pytest.mark.parametrize("backend", ["s3", "sftp", "ftp"])
def test_a_clean_that_may_not_delete_an_old_set_stops_with_one_line_naming_it_and_the_set_stays(
    request, sqlite_site, backend
):
    remote = request.getfixturevalue(f"{backend}_server")
    target = failing_site(sqlite_site, remote)
    site = target.site
    site.invoke("backup", "--quiet")
    [old] = site.sets()
    if backend == "sftp":
        if os.geteuid() != 0:
            pytest.skip("needs root: the SSH login is then another user (nobody), whose rights apply")
        # The old set's files become root's in a sticky folder: the SSH user writes new files, deletes only its own.
        folder = remote.home / target.prefix
        for path in folder.iterdir():
            os.chown(path, 0, 0)
            path.chmod(0o644)
        os.chown(folder, 0, 0)
        folder.chmod(0o1777)
    else:
        point_at(site, remote, target.prefix, user="keeper")  # may write and read, not delete

    result = site.invoke("backup", "--clean", "--quiet", check=False, extra_env={"INVENTREE_BACKUP_KEEP": "1"})

    line = one_line_error(result)
    manifest = next(f["name"] for f in old["files"] if f["kind"] == "manifest")
    assert f"delete {manifest}" in line, line  # the first file the prune deletes: the old set's manifest
    assert "delete" in line.rsplit("; ", 1)[-1].lower(), line  # and what to fix: the account's delete right
    assert "--clean removed 0 files" in line and "is complete" in line, line
    sets = site.sets()
    assert [s["complete"] for s in sets] == [True, True]
    assert {f["name"] for f in old["files"]} <= set(target.names())


def test_ftp_with_allow_overwrite_a_clean_deletes_the_old_set(sqlite_site, ftp_server):
    # FTPStorage.exists() answers False whenever allow_overwrite is on, and its delete() deletes only what
    # exists() finds.
    target = failing_site(sqlite_site, ftp_server)
    site = target.site
    options = json.loads(site.env["INVENTREE_BACKUP_OPTIONS"])
    site.env["INVENTREE_BACKUP_OPTIONS"] = json.dumps({**options, "allow_overwrite": True})
    site.invoke("backup", "--quiet")
    [old] = site.sets()

    site.invoke("backup", "--clean", "--quiet", extra_env={"INVENTREE_BACKUP_KEEP": "1"})

    [new] = site.sets()
    assert new["name"] != old["name"]
    assert set(target.names()) == {f["name"] for f in new["files"]}


def test_s3_wrong_secret_key(sqlite_site, s3_server):
    target = failing_site(sqlite_site, s3_server, secret="not-the-right-secret-key")

    line = backup_fails(target)

    assert "credentials were rejected (SignatureDoesNotMatch)" in line
    assert "secret_key" in line
    assert "not-the-right-secret-key" not in line


def test_s3_unknown_access_key(sqlite_site, s3_server):
    target = failing_site(sqlite_site, s3_server)
    options = json.loads(target.site.env["INVENTREE_BACKUP_OPTIONS"])
    target.site.env["INVENTREE_BACKUP_OPTIONS"] = json.dumps({**options, "access_key": "AKIAUNKNOWN000000000"})

    line = backup_fails(target)

    assert "credentials were rejected (InvalidAccessKeyId)" in line


def test_s3_unknown_bucket(sqlite_site, s3_server):
    target = failing_site(sqlite_site, s3_server, user="admin", bucket="no-such-bucket")

    line = backup_fails(target)

    assert "bucket 'no-such-bucket' does not exist; create it or fix bucket_name" in line


def test_s3_unreachable_endpoint(sqlite_site, s3_server):
    url = f"http://127.0.0.1:{closed_port()}"
    target = failing_site(sqlite_site, s3_server, url=url)
    target.site.env["INVENTREE_BACKUP_STORAGE_RETRIES"] = "2"

    result = target.site.invoke("backup", "--quiet", check=False)

    assert result.returncode != 0 and "Traceback" not in result.output
    *retries, line = [line for line in result.stderr.splitlines() if line.strip()]
    assert [r.rsplit("; ", 1)[-1] for r in retries] == ["retrying (1/2)", "retrying (2/2)"]  # each retry said
    assert f'cannot reach the S3 endpoint (Could not connect to the endpoint URL: "{url}/' in line
    assert "endpoint_url" in line
    assert target.names() == []


def test_s3_key_without_write_permission(sqlite_site, s3_server):
    target = failing_site(sqlite_site, s3_server, user="reader")

    line = backup_fails(target)

    assert "access denied to write" in line
    assert "s3:PutObject" in line


def test_s3_backend_package_missing_names_the_extra(sqlite_site, s3_server, tmp_path):
    target = failing_site(sqlite_site, s3_server)
    blocker = tmp_path / "no-boto3"
    (blocker / "boto3").mkdir(parents=True)
    (blocker / "boto3" / "__init__.py").write_text("raise ImportError(\"No module named 'boto3'\")\n")

    result = target.site.invoke("backup", "--quiet", check=False, extra_env={"PYTHONPATH": f"{blocker}:{ROOT}"})

    line = one_line_error(result)
    assert "pip install 'backup_app[s3]'" in line
    assert target.names() == []


def test_s3_check_fails_with_one_line(sqlite_site, s3_server):
    target = failing_site(sqlite_site, s3_server, user="reader")

    line = one_line_error(target.site.invoke("backup-check", "--quiet", check=False))

    assert "connection check failed at 'write'" in line
    assert "access denied to write" in line
    assert target.names() == []


def test_sftp_key_not_authorized(sqlite_site, sftp_server):
    target = failing_site(sqlite_site, sftp_server, key="stranger")

    line = backup_fails(target)

    assert "the SSH login was refused" in line
    assert "key_filename" in line


def test_sftp_unreachable_host(sqlite_site, sftp_server):
    target = failing_site(sqlite_site, sftp_server, ssh_port=closed_port())

    line = backup_fails(target)

    assert "cannot reach the SSH server" in line


def test_sftp_folder_without_write_permission(sqlite_site, sftp_server):
    target = failing_site(sqlite_site, sftp_server, folder=sftp_server.readonly)

    line = one_line_error(target.site.invoke("backup", "--quiet", check=False))

    assert "permission denied to write" in line
    assert "root_path" in line
    assert not (sftp_server.readonly / target.prefix).exists()


def test_sftp_host_key_mismatch(sqlite_site, sftp_server):
    target = failing_site(sqlite_site, sftp_server, known_hosts="wrong_known_hosts")

    line = backup_fails(target)

    assert "host key does not match the one in known_host_file" in line


def test_sftp_with_dockers_absolute_backup_dir_backs_up_into_the_login_folder(sqlite_site, sftp_server):
    # InvenTree's Docker image always sets an absolute local INVENTREE_BACKUP_DIR: unused on SFTP (W008), so
    # root_path is unset and the set goes to the login folder (SFTPStorage alone recursed without end there).
    options, _ = sftp_server.configure("unused")
    tag = uuid.uuid4().hex[:8]  # the login folder is shared by the session's SFTP tests
    sqlite_site.env.update(
        INVENTREE_BACKUP_STORAGE=sftp_server.storage,
        INVENTREE_BACKUP_OPTIONS=json.dumps(options),
        INVENTREE_BACKUP_DIR="/home/inventree/data/backup",
        INVENTREE_BACKUP_MEDIA_FILENAME_TEMPLATE=f"{tag}-media-{{datetime}}.{{extension}}",
    )
    (sqlite_site.media / "doc.txt").write_text("data")

    done = sqlite_site.invoke("backup", "--skip-db")
    try:
        [entry] = sqlite_site.sets()
        top = {p.name for p in sftp_server.home.iterdir() if p.is_file()}
        assert "backup_app.W008" in done.output
        assert entry["complete"] and {f["name"] for f in entry["files"]} <= top
    finally:
        for p in sftp_server.home.iterdir():
            if p.name.startswith(tag):
                p.unlink()


def test_ftp_wrong_password_is_not_printed(sqlite_site, ftp_server):
    target = failing_site(sqlite_site, ftp_server, password="wrong-ftp-password")

    line = backup_fails(target)

    assert "the FTP login was refused (530" in line
    assert "wrong-ftp-password" not in line


def test_ftp_user_without_write_permission(sqlite_site, ftp_server):
    target = failing_site(sqlite_site, ftp_server, user="reader")
    (ftp_server.home / target.prefix).mkdir()

    line = backup_fails(target)

    assert "the FTP server refused to write" in line
    assert "reader-pw" not in line


def test_gcs_unknown_bucket(sqlite_site, gcs_server):
    target = failing_site(sqlite_site, gcs_server, bucket="no-such-bucket")

    line = backup_fails(target)

    assert "bucket 'no-such-bucket' does not exist" in line


def test_azure_wrong_account_key(sqlite_site, azure_server):
    wrong = AZURITE_KEY[:-8] + "AAAAAAA="
    target = failing_site(sqlite_site, azure_server, key=wrong)

    line = backup_fails(target)

    assert "not authorized (AuthorizationFailure); check account_key" in line


def test_azure_unknown_container(sqlite_site, azure_server):
    target = failing_site(sqlite_site, azure_server, container_name="no-such-container")

    line = backup_fails(target)

    assert "container 'no-such-container' does not exist" in line


# --- large archives stream ---------------------------------------------------------------------

#: Size of the media folder of the streaming test; BACKUP_TEST_STREAM_MB=1024 for the 1 GB measurement.
STREAM_MB = int(os.environ.get("BACKUP_TEST_STREAM_MB", "160"))
#: Peak RSS a backup or restore process may reach, whatever the archive's size.  Streaming measured
#: 60-135 MiB here; a backend holding the whole archive would need the process's ~60 MiB + STREAM_MB.
RSS_LIMIT_MB = 175

RSS_WRAPPER = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "print('peak-rss-kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def peak_rss_mb(site: Site, *args: str) -> float:
    """Run ``invoke *args`` and return the peak RSS of the largest process it started, in MiB."""
    result = site.run(sys.executable, "-c", RSS_WRAPPER, sys.executable, "-m", "invoke", *args, timeout=1800)
    kb = int(result.stderr.rsplit("peak-rss-kb", 1)[1].split()[0])
    return kb / 1024


def write_random_media(media: Path, total_mb: int) -> None:
    """Incompressible files of 32 MiB (gzip cannot shrink them: the archive is as large as the folder)."""
    block = 1024 * 1024
    for index in range(0, total_mb, 32):
        with open(media / f"blob-{index:05d}.bin", "wb") as fh:
            for _ in range(min(32, total_mb - index)):
                fh.write(os.urandom(block))


def test_large_archive_streams_in_bounded_memory(remote_site):
    site = remote_site.site
    write_random_media(site.media, STREAM_MB)
    before = site.snapshot_media()

    backup_mb = peak_rss_mb(site, "backup", "--skip-db")
    for path in site.media.iterdir():
        path.unlink()
    restore_mb = peak_rss_mb(site, "restore", "--skip-db")

    print(
        f"{remote_site.remote.label}: {STREAM_MB} MiB media, peak RSS backup {backup_mb:.0f} MiB, "
        f"restore {restore_mb:.0f} MiB"
    )
    [entry] = site.sets()
    media = next(f for f in entry["files"] if f["kind"] == "media")
    assert media["size"] > STREAM_MB * 1024 * 1024
    assert site.snapshot_media() == before
    assert backup_mb < RSS_LIMIT_MB
    assert restore_mb < RSS_LIMIT_MB


# Dropbox: tests/test_dropbox_storage.py (the real SDK against a loopback server speaking Dropbox's API).
