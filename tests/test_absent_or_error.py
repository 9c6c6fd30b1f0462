"""A file that is not there, or a storage that answers an error: never the one read as the other.

"Does this object exist?" answered False for a bucket or container that does not exist (S3's HEAD has no
body: a missing bucket is a bare 404, as a missing key is; google-cloud-storage's ``get_blob`` returns None
for either 404; the Azure SDK's ``exists`` answers False for ContainerNotFound), and a read of such a file
was FileNotFoundError: a check that reads "absent" can make a verify pass, a prune delete or a backup
overwrite.  Against the real test servers of ``test_remote_storage``, in process.
"""

from __future__ import annotations

import uuid

import django

django.setup()

import pytest  # noqa: E402
from test_remote_storage import azure_server, ftp_server, gcs_server, s3_server, workdir  # noqa: E402, F401

from backup_app.storage import build_storage  # noqa: E402
from backup_app.storage.base import RemoteStorageError  # noqa: E402

NAME = "InvenTree-db-2020-01-01-000000.sqlite3.gz"

MISSING = {
    "s3": ({"user": "admin", "bucket": "no-such-bucket"}, "bucket 'no-such-bucket' does not exist"),
    "gcs": ({"bucket": "no-such-bucket"}, "bucket 'no-such-bucket' does not exist"),
    "azure": ({"container_name": "no-such-container"}, "container 'no-such-container' does not exist"),
}


def storage_of(request, monkeypatch, backend: str, **overrides):
    remote = request.getfixturevalue(f"{backend}_server")
    monkeypatch.setenv("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
    for key, value in remote.extra_env.items():
        monkeypatch.setenv(key, value)
    options, folder = remote.configure(f"absent-{uuid.uuid4().hex[:10]}", **overrides)
    key = "location"
    return build_storage(remote.storage, {**options, key: folder})


@pytest.mark.parametrize("backend", MISSING)
def test_a_file_that_is_not_there_is_absent_on_a_storage_that_is(request, monkeypatch, backend):
    storage = storage_of(request, monkeypatch, backend)

    assert storage.exists(NAME) is False
    with pytest.raises(FileNotFoundError):
        storage.open(NAME)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(NAME)


@pytest.mark.parametrize("backend", MISSING)
@pytest.mark.parametrize("call", ["exists", "open", "read_bytes", "size"])
def test_a_file_in_a_bucket_or_container_that_does_not_exist_is_an_error_not_absent(
    request, monkeypatch, backend, call
):
    overrides, said = MISSING[backend]
    storage = storage_of(request, monkeypatch, backend, **overrides)

    with pytest.raises(RemoteStorageError) as raised:
        getattr(storage, call)(NAME)

    assert said in str(raised.value)


# --- FTP: 550 is both "no such folder" and a refusal ----------------------------------------------


def ftp_storage(ftp, prefix: str, user: str = "backup"):
    options, _ = ftp.configure(prefix, user=user)
    return build_storage(ftp.storage, options)


def test_on_ftp_a_file_or_folder_that_is_not_there_is_absent(request):
    ftp = request.getfixturevalue("ftp_server")
    prefix = f"absent-{uuid.uuid4().hex[:10]}"
    (ftp.home / prefix).mkdir()
    storage = ftp_storage(ftp, prefix)

    assert storage.exists(NAME) is False
    assert storage.exists(f"media-packs/{NAME}") is False
    with pytest.raises(FileNotFoundError):
        storage.listdir("media-packs")


@pytest.mark.parametrize("call", ["exists", "exists in a folder", "listdir", "listdir of a folder"])
def test_on_ftp_a_user_who_may_not_list_gets_an_error_not_absent(request, call):
    ftp = request.getfixturevalue("ftp_server")
    prefix = f"absent-{uuid.uuid4().hex[:10]}"
    (ftp.home / prefix / "media-packs").mkdir(parents=True)
    (ftp.home / prefix / NAME).write_bytes(b"dump")
    storage = ftp_storage(ftp, prefix, user="blind")

    with pytest.raises(RemoteStorageError) as raised:
        if call == "exists":
            storage.exists(NAME)
        elif call == "exists in a folder":
            storage.exists(f"media-packs/{NAME}")
        else:
            storage.listdir("" if call == "listdir" else "media-packs")

    assert "the FTP server refused to" in str(raised.value) and "550" in str(raised.value)
    assert "blind-pw" not in str(raised.value)


#: pyftpdlib answering NLST of an empty folder "550 No files found." as some FTP servers do (IIS, wu-ftpd).
EMPTY_550_SERVER = """
import json, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

class Handler(FTPHandler):
    def ftp_NLST(self, path):
        try:
            empty = self.fs.isdir(path) and not self.fs.listdir(path)
        except OSError:
            empty = False
        if empty:
            self.respond("550 No files found.")
            return
        return super().ftp_NLST(path)

port, home = json.loads(sys.argv[1])
authorizer = DummyAuthorizer()
authorizer.add_user("backup", "ftp-secret-pw", home, perm="elradfmw")
Handler.authorizer = authorizer
FTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def empty_550_ftp(workdir):  # noqa: F811
    import json
    import sys

    from test_remote_storage import free_port, start_server

    home = workdir / "ftp-550"
    home.mkdir()
    port = free_port()
    argv = [sys.executable, "-c", EMPTY_550_SERVER, json.dumps([port, str(home)])]
    server = start_server("pyftpdlib 550-when-empty", argv, port, workdir)
    yield home, port
    server.stop()


def test_on_ftp_an_empty_folder_answered_550_no_files_found_is_empty_not_a_refusal(empty_550_ftp):
    """A first backup into a new, empty folder (and an empty media-packs folder) on such a server."""
    home, port = empty_550_ftp
    prefix = f"empty-{uuid.uuid4().hex[:10]}"
    (home / prefix).mkdir()
    storage = build_storage(
        "storages.backends.ftp.FTPStorage", {"location": f"ftp://backup:ftp-secret-pw@127.0.0.1:{port}/{prefix}"}
    )

    assert storage.exists(NAME) is False  # the folder of location itself is empty
    (home / prefix / "media-packs").mkdir()
    assert storage.exists(f"media-packs/{NAME}") is False
    (home / prefix / NAME).write_bytes(b"dump")
    assert storage.exists(NAME) is True


# --- the local backup folder: os.path.lexists answers False for any error ----------------------------


def test_in_a_local_backup_folder_a_missing_file_is_absent_and_one_that_cannot_be_checked_is_an_error(tmp_path):
    from backup_app.errors import StorageUnavailable
    from backup_app.storage import backup_storage

    (tmp_path / NAME).write_bytes(b"dump")
    (tmp_path / "packs").symlink_to("packs")  # a loop: every lookup under it fails with ELOOP, as root too
    storage = backup_storage(str(tmp_path))

    assert storage.exists(NAME) is True
    assert storage.exists("InvenTree-db-2020-01-02-000000.sqlite3.gz") is False
    assert storage.exists(f"{NAME}/x") is False  # under a file: not there
    with pytest.raises(StorageUnavailable) as raised:
        storage.exists("packs/x")

    line = str(raised.value)
    assert "\n" not in line and "cannot check packs/x" in line and "Too many levels of symbolic links" in line
