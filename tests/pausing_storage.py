"""A FileSystemStorage that stops at a named step until a gate opens (a test instrument).

With ``BACKUP_TEST_DELETE_GATE=/path/to/fifo`` in the environment, before deleting the first
``*.manifest.metadata`` (where pruning starts) it writes ``<gate>.reached`` and opens the FIFO for reading,
which waits until the test opens it for writing: the process is held at that step while the test acts.
``BACKUP_TEST_DELETE_GATE_SUFFIX`` names another ending to stop at (``.pack.gz``: the first media pack).

With ``BACKUP_TEST_LIST_GATE=/path/to/fifo``, it does the same once the first listing of the top folder (the
sets) has been made, before it is returned: a prune is held between that listing and whatever it does next.

With ``BACKUP_TEST_SAVE_GATE=/path/to/fifo``, it does the same once the first chunk of the media archive
(a name holding ``-media-``) is written: the backup holds the site lock, has begun its set, and a part of
its media file is on disk, as a backup stopped half-way would leave it.  (A FIFO in the media folder no
longer holds a backup: the media walker opens no FIFO.)
"""

import os
from pathlib import Path

from django.core.files.storage import FileSystemStorage


def _hold(gate: str, name: str) -> None:
    Path(gate + ".reached").write_text(name)
    with open(gate, "rb"):
        pass


class PausingStorage(FileSystemStorage):
    paused = False
    save_paused = False
    list_paused = False

    def listdir(self, path):
        found = super().listdir(path)
        gate = os.environ.get("BACKUP_TEST_LIST_GATE")
        if gate and not PausingStorage.list_paused and path in ("", "."):
            PausingStorage.list_paused = True
            _hold(gate, "listdir")
        return found

    def delete(self, name):
        gate = os.environ.get("BACKUP_TEST_DELETE_GATE")
        suffix = os.environ.get("BACKUP_TEST_DELETE_GATE_SUFFIX", ".manifest.metadata")
        if gate and not PausingStorage.paused and name.endswith(suffix):
            PausingStorage.paused = True
            _hold(gate, name)
        super().delete(name)

    def _save(self, name, content):
        gate = os.environ.get("BACKUP_TEST_SAVE_GATE")
        if gate and not PausingStorage.save_paused and "-media-" in name and not name.endswith(".metadata"):
            PausingStorage.save_paused = True
            chunks = content.chunks

            def held(chunk_size=None):
                for index, chunk in enumerate(chunks(chunk_size)):
                    yield chunk
                    if index == 0:  # FileSystemStorage has written it when it asks for the next one
                        _hold(gate, name)

            content.chunks = held
        return super()._save(name, content)
