"""What an action tells whoever runs it: the steps it takes and the bytes it moves.

Every action takes a :class:`Progress`; the default, :data:`NO_PROGRESS`, says nothing (the scheduler, the
admin's "Back up now").  The commands print the steps; on a terminal they also draw each file's bytes, files,
rate and time left (``management/commands/_base.py``).

A file's life: ``start(name, total=...)``, then ``advance(name, nbytes)`` as its bytes go by (from any
thread: a dump is read in its own), then ``finish(name)``.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    #: Someone watches the bytes go by (a terminal): worth a little work for totals (a ``stat`` per media file).
    live: bool

    def step(self, message: str) -> None:
        """A sentence about what happens now (``Backing up database 'default' (sqlite) to ...``)."""

    def start(self, name: str, *, label: str = "", total: int | None = None) -> None:
        """A file begins: ``label`` says what it is (``database 'default'``), ``total`` its bytes if known."""

    def advance(self, name: str, nbytes: int, *, files: int = 0) -> None:
        """``nbytes`` more bytes (and ``files`` more media files) of ``name`` were written or read."""

    def finish(self, name: str) -> None:
        """The file is done (or abandoned)."""


class NoProgress:
    """A :class:`Progress` that says nothing."""

    live = False

    def step(self, message: str) -> None:
        pass

    def start(self, name: str, *, label: str = "", total: int | None = None) -> None:
        pass

    def advance(self, name: str, nbytes: int, *, files: int = 0) -> None:
        pass

    def finish(self, name: str) -> None:
        pass


NO_PROGRESS = NoProgress()


def size_text(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``, ``12`` -> ``'12 bytes'`` (binary units, one decimal)."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


def seconds_text(seconds: float) -> str:
    """``75.3`` -> ``'1 min 15 s'``; under a minute with one decimal."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def safety_lines(copies: list[dict]) -> list[str]:
    """The safety copies restores kept (``actions.list.kept_copies()``), one line each, for the commands."""
    if not copies:
        return []
    lines = [f"{len(copies)} safety cop{'y' if len(copies) == 1 else 'ies'} kept by restores (invoke rollback):"]
    for c in copies:
        where = "; ".join(c["databases"]) or "no database"
        lines.append(
            f"  {c['name']} ({c['state']}): {size_text(c['bytes'])} in {c['folder']}; {where}; "
            f"expires {c['expires']:%Y-%m-%d %H:%M}"
        )
    return lines
