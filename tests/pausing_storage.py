"""A FileSystemStorage that stops before its first delete of a manifest until a gate opens (a test instrument).

With ``BACKUP_TEST_DELETE_GATE=/path/to/fifo`` in the environment, before deleting the first
``*.manifest.metadata`` (where pruning starts) it writes ``<gate>.reached`` and opens the FIFO for reading,
which waits until the test opens it for writing: the process is held at that step while the test acts.
``BACKUP_TEST_DELETE_GATE_SUFFIX`` names another ending to stop at (``.pack.gz``: the first media pack).
"""

import os
from pathlib import Path

from django.core.files.storage import FileSystemStorage


class PausingStorage(FileSystemStorage):
    paused = False

    def delete(self, name):
        gate = os.environ.get("BACKUP_TEST_DELETE_GATE")
        suffix = os.environ.get("BACKUP_TEST_DELETE_GATE_SUFFIX", ".manifest.metadata")
        if gate and not PausingStorage.paused and name.endswith(suffix):
            PausingStorage.paused = True
            Path(gate + ".reached").write_text(name)
            with open(gate, "rb"):
                pass
        super().delete(name)
