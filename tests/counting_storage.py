"""Storages over a real local folder that count the calls the app makes of them (a test instrument: counting
is measuring, nothing is faked).

With ``BACKUP_TEST_CALL_LOG=/path/to/file`` in the environment each call of ``listdir``, ``open``, ``exists``,
``size``, ``delete``, ``save`` and ``get_modified_time`` appends one line ``<call>\\t<name>`` to that file
(every process and thread of a run appends to the same file); without it nothing is written.

- :class:`CountingStorage` is a ``FileSystemStorage``: the app treats it as a local folder.
- :class:`CountingRemoteStorage` is not one: the app wraps it as any third-party backend
  (``RemoteStorage`` with the default adapter: a listing is ``listdir``, a read is ``open``), so it takes the
  remote code paths (the manifests read in parallel, the checked local copies of media indexes).
"""

from __future__ import annotations

import os
import threading

from django.core.files.storage import FileSystemStorage, Storage

_lock = threading.Lock()


def record(call: str, name: str) -> None:
    log = os.environ.get("BACKUP_TEST_CALL_LOG")
    if not log:
        return
    with _lock, open(log, "a", encoding="utf-8") as fh:
        fh.write(f"{call}\t{name}\n")


def read_log(path) -> list[tuple[str, str]]:
    """The calls logged in ``path``: (call, name), in order."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [tuple(line.rstrip("\n").split("\t", 1)) for line in fh if line.strip()]
    except FileNotFoundError:
        return []


class CountingStorage(FileSystemStorage):
    def listdir(self, path):
        record("listdir", path)
        return super().listdir(path)

    def _open(self, name, mode="rb"):
        record("open", name)
        return super()._open(name, mode)

    def exists(self, name):
        record("exists", name)
        return super().exists(name)

    def size(self, name):
        record("size", name)
        return super().size(name)

    def delete(self, name):
        record("delete", name)
        return super().delete(name)

    def _save(self, name, content):
        record("save", name)
        return super()._save(name, content)

    def get_modified_time(self, name):
        record("get_modified_time", name)
        return super().get_modified_time(name)


class CountingRemoteStorage(Storage):
    """A backend the app does not know to be local: every call counted, then done in ``location``."""

    def __init__(self, location: str, **options):
        self.location = location
        self._files = FileSystemStorage(
            location=location, file_permissions_mode=0o600, directory_permissions_mode=0o700, allow_overwrite=True
        )

    def get_available_name(self, name, max_length=None):
        return name  # overwrites, as S3 does (file_overwrite): no exists() per save

    def listdir(self, path):
        record("listdir", path)
        return self._files.listdir(path)

    def _open(self, name, mode="rb"):
        record("open", name)
        return self._files._open(name, mode)

    def exists(self, name):
        record("exists", name)
        return self._files.exists(name)

    def size(self, name):
        record("size", name)
        return self._files.size(name)

    def delete(self, name):
        record("delete", name)
        return self._files.delete(name)

    def _save(self, name, content):
        record("save", name)
        return self._files._save(name, content)

    def get_modified_time(self, name):
        record("get_modified_time", name)
        return self._files.get_modified_time(name)
