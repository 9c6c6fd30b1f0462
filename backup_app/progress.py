"""What an action tells whoever runs it: the steps it takes and the bytes it moves.

Every action takes a :class:`Progress`; the default, :data:`NO_PROGRESS`, says nothing (the scheduler, the
admin's "Back up now").  The commands print the steps; a live display can also draw the bytes.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def step(self, message: str) -> None:
        """A sentence about what happens now (``Backing up database 'default' (sqlite) to ...``)."""

    def advance(self, name: str, nbytes: int) -> None:
        """``nbytes`` more bytes of the file ``name`` were written or read."""


class NoProgress:
    """A :class:`Progress` that says nothing."""

    def step(self, message: str) -> None:
        pass

    def advance(self, name: str, nbytes: int) -> None:
        pass


NO_PROGRESS = NoProgress()
