"""SIGTERM and SIGINT end a run the way any failure does: the current step is finished or undone.

``docker stop`` and systemd send SIGTERM, a terminal sends SIGINT.  Under :func:`handled` (the command-line
entry installs it) either signal raises :class:`Interrupted` in the main thread, so that the ``except`` and
``finally`` blocks of the run put back what they must.  Inside :func:`shielded` (an undo that must not be cut
short) a signal is only noted: it is raised when the block ends, and a second one does not stop the undo.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """The run got SIGTERM or SIGINT (a KeyboardInterrupt, so that it passes every ``except Exception``)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        # Ctrl-C is what the user did; any other signal is named (SIGTERM: docker stop, systemd, kill).
        return "interrupted" if self.signum == signal.SIGINT else f"interrupted by {self.name}"

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


_pending: list[int] = []
_shield_depth = [0]


def _handler(signum, frame) -> None:
    if _shield_depth[0]:
        _pending.append(signum)
        return
    raise Interrupted(signum)


@contextmanager
def handled() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Interrupted` in the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextmanager
def shielded() -> Iterator[None]:
    """Signals that arrive in the block wait for its end; then the first is raised (unless an error is)."""
    _shield_depth[0] += 1
    try:
        yield
    finally:
        _shield_depth[0] -= 1
    if not _shield_depth[0] and _pending:
        signum = _pending[0]
        _pending.clear()
        raise Interrupted(signum)


def take_pending() -> int | None:
    """The signal noted in a shielded block that ended with an error (so not raised), and forget it."""
    if not _pending:
        return None
    signum = _pending[0]
    _pending.clear()
    return signum
