"""Dropbox through the real Dropbox SDK over HTTPS, against the loopback API server of ``dropbox_server``.

"Is it there?" and "what is in this folder?" must tell absent from an error: an error read as "absent" can
make a verify pass, a prune delete or a backup overwrite.  Each error the server answers (a route error
other than not_found, a revoked token, an outage, silence) is one line naming the storage and the fix.
"""

from __future__ import annotations

import io
import time

import django

django.setup()

import pytest  # noqa: E402
from django.test import override_settings  # noqa: E402

pytest.importorskip("dropbox")

from dropbox_server import DropboxServer, point, route_error  # noqa: E402

from backup_app.storage import build_storage  # noqa: E402
from backup_app.storage.base import RemoteStorageError  # noqa: E402

NAME = "InvenTree-db-2020-01-01-000000.sqlite3.gz"

#: (what the server answers, what the one line must say)
ERRORS = {
    "restricted": (route_error("path", "restricted_content"), "path/restricted_content"),
    "token revoked": (
        (401, {"error_summary": "invalid_access_token/..", "error": {".tag": "invalid_access_token"}}),
        "Dropbox rejected the token",
    ),  # fmt: skip
    "outage": ((503, {"error": "unavailable"}), "Dropbox answered HTTP 503"),
    "silent": ("silent", "Dropbox did not answer within 1 s"),
}


@pytest.fixture
def server(tmp_path):
    server = DropboxServer(tmp_path)
    yield server
    server.close()


@pytest.fixture
def storage(server):
    with override_settings(BACKUP_APP={"STORAGE_TIMEOUT": 1, "STORAGE_RETRIES": 1}):
        storage = build_storage(
            "storages.backends.dropbox.DropboxStorage", {"oauth2_access_token": "not-a-real-token", "root_path": "/b"}
        )
        point(storage.backend.client, server)
        yield storage


def one_line(raised) -> str:
    line = str(raised.value)
    assert "\n" not in line and line.startswith("Dropbox /b: "), line
    assert "not-a-real-token" not in line
    return line


def test_exists_is_true_for_a_file_and_false_for_one_dropbox_does_not_have(server, storage):
    server.files["/b/" + NAME] = b"dump"

    assert storage.exists(NAME) is True
    assert storage.exists("InvenTree-db-2020-01-02-000000.sqlite3.gz") is False


@pytest.mark.parametrize("kind", ERRORS)
def test_exists_answered_with_an_error_raises_one_line_never_absent(server, storage, kind):
    answer, said = ERRORS[kind]
    server.fail["files/get_metadata"] = answer

    started = time.monotonic()
    with pytest.raises(RemoteStorageError) as raised:
        storage.exists(NAME)

    assert said in one_line(raised)
    assert time.monotonic() - started < 15


def test_a_listing_has_every_file_of_a_folder_longer_than_one_page(server, storage):
    names = [f"InvenTree-db-2020-01-0{day}-000000.sqlite3.gz" for day in range(1, 6)]
    for name in names:
        server.files["/b/" + name] = name.encode()
    server.files["/b/media-packs/p1"] = b"pack"

    dirs, files = storage.listdir("")
    sizes = storage.list_sizes("")

    assert (dirs, sorted(files)) == (["media-packs"], names)  # 6 entries, 2 a page
    assert sizes == {name: len(name) for name in names}
    assert "files/list_folder/continue" in server.requests


def test_a_listing_of_a_folder_dropbox_does_not_have_is_file_not_found(server, storage):
    server.files["/b/" + NAME] = b"dump"

    with pytest.raises(FileNotFoundError):
        storage.listdir("media-packs")


@pytest.mark.parametrize("kind", ERRORS)
def test_a_listing_answered_with_an_error_raises_one_line(server, storage, kind):
    answer, said = ERRORS[kind]
    server.files["/b/" + NAME] = b"dump"
    server.fail["files/list_folder"] = answer

    with pytest.raises(RemoteStorageError) as raised:
        storage.list_sizes("")

    assert said in one_line(raised)


@pytest.mark.parametrize("route", ["files/list_folder/continue"])
def test_a_listing_whose_next_page_fails_raises_one_line_never_a_shorter_listing(server, storage, route):
    for day in range(1, 6):
        server.files[f"/b/InvenTree-db-2020-01-0{day}-000000.sqlite3.gz"] = b"dump"
    server.fail[route] = ERRORS["outage"][0]

    with pytest.raises(RemoteStorageError) as raised:
        storage.listdir("")

    assert "Dropbox answered HTTP 503" in one_line(raised)


def test_size_and_open_of_a_file_dropbox_does_not_have_are_file_not_found(server, storage):
    with pytest.raises(FileNotFoundError):
        storage.size(NAME)
    with pytest.raises(FileNotFoundError):
        storage.open(NAME)


@pytest.mark.parametrize("route", ["files/get_metadata", "files/download"])
def test_size_and_open_answered_with_an_error_raise_one_line(server, storage, route):
    server.files["/b/" + NAME] = b"dump"
    server.fail[route] = ERRORS["restricted"][0]

    with pytest.raises(RemoteStorageError) as raised:
        storage.size(NAME) if route == "files/get_metadata" else storage.open(NAME)

    assert "path/restricted_content" in one_line(raised)


def test_deleting_a_file_dropbox_does_not_have_is_done_and_a_refused_delete_raises(server, storage):
    storage.delete(NAME)  # not there: deleted already
    server.files["/b/" + NAME] = b"dump"
    server.fail["files/delete_v2"] = route_error("path_lookup", "restricted_content")

    with pytest.raises(RemoteStorageError) as raised:
        storage.delete(NAME)

    assert "path_lookup/restricted_content" in one_line(raised)
    assert "/b/" + NAME in server.files


def test_an_upload_whose_server_stops_answering_gives_up_within_the_storage_timeout(server, storage):
    from backup_app.storage.dropbox import DROPBOX_CHUNK

    server.fail["files/upload_session/append_v2"] = "silent"
    started = time.monotonic()

    with pytest.raises(RemoteStorageError) as raised:
        storage.save(NAME, io.BytesIO(b"x" * (DROPBOX_CHUNK + 10)))

    assert "Dropbox did not answer within 1 s" in one_line(raised)
    assert time.monotonic() - started < 15
    assert "/b/" + NAME not in server.files  # never finished: nothing a listing shows


def test_an_archive_is_uploaded_from_the_stream_in_sessions_and_downloaded_as_a_stream(server, storage):
    from backup_app.pipeline import ReadResult, open_stream, store_stream
    from backup_app.storage.dropbox import DROPBOX_CHUNK

    payload = bytes(range(256)) * ((2 * DROPBOX_CHUNK + 12345) // 256)

    stored = store_stream(storage, "InvenTree-media-x.tar", lambda out: out.write(payload))
    result = ReadResult()
    with open_stream(storage, "InvenTree-media-x.tar", compression=None, encrypted=False, result=result) as stream:
        read_back = stream.read()

    assert server.files["/b/InvenTree-media-x.tar"] == payload
    # start, append, append, finish
    assert server.uploaded == [DROPBOX_CHUNK, DROPBOX_CHUNK, len(payload) - 2 * DROPBOX_CHUNK, 0]
    assert read_back == payload
    assert result.sha256 == stored.sha256
