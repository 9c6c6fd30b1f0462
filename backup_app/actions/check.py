"""Check: the connection check a user runs before the first backup (``invoke backup-check``).

It does to the backup storage what a backup and a restore do, on one small
object: list the folder, stream an object in through the same pipeline as a
backup, read it back, compare its SHA-256, delete it and make sure it is gone.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import BackupAppError
from ..pipeline import ReadResult, open_stream, store_stream
from ..progress import NO_PROGRESS, Progress
from ..secrets import redact
from ..sets import Naming, list_files
from ..storage import backup_storage, describe

#: Size of the test object: big enough to cross a few buffers, small enough for any link.
CHECK_BYTES = 256 * 1024


@dataclass
class CheckOptions:
    path: str | None = None  # a local folder instead of the backup storage


class CheckFailed(BackupAppError):
    """A step of the connection check failed; the message names the step and the fix."""


@dataclass
class Step:
    name: str
    detail: str
    seconds: float


@dataclass
class CheckReport:
    """What the check did: its steps in order, the test object's name and size."""

    where: str
    object_name: str
    size: int
    steps: list[Step] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)


def check_name() -> str:
    """A name no backup file has (it never matches the filename templates)."""
    name = f"backup-check-{socket.gethostname()}-{uuid.uuid4().hex[:12]}.tmp"
    return name if Naming().parse(name) is None else f".{name}"


def check_storage(storage, where: str = "", progress: Callable[[Step], None] | None = None) -> CheckReport:
    """List, write, read back, compare and delete a small object in ``storage``.

    Returns a :class:`CheckReport`; raises :class:`CheckFailed` naming the step
    that failed and why.  The test object is removed whatever happens.
    """
    name = check_name()
    payload = os.urandom(CHECK_BYTES)
    report = CheckReport(where=where, object_name=name, size=len(payload))
    written = False

    def step(label: str, action: Callable[[], str]) -> None:
        t0 = time.monotonic()
        try:
            detail = action()
        except CheckFailed:
            raise
        except Exception as err:
            raise CheckFailed(f"connection check failed at '{label}': {redact(err)}") from None
        done = Step(label, detail, time.monotonic() - t0)
        report.steps.append(done)
        if progress is not None:
            progress(done)

    def do_list() -> str:
        names = list_files(storage)
        return f"{len(names)} files in the backup folder"

    def do_write() -> str:
        nonlocal written
        stored = store_stream(storage, name, lambda out: out.write(payload))
        written = True
        if stored.size != len(payload):
            raise CheckFailed(f"connection check failed at 'write': {stored.size} of {len(payload)} bytes were sent")
        return f"{stored.size:,} bytes streamed as {name}"

    def do_read() -> str:
        result = ReadResult()
        with open_stream(storage, name, compression=None, encrypted=False, result=result) as stream:
            data = stream.read()
        if data != payload:
            raise CheckFailed(
                f"connection check failed at 'read': read back {len(data):,} bytes that differ from the "
                f"{len(payload):,} written; the storage does not return what it was given"
            )
        return f"{result.size:,} bytes read back, identical (SHA-256 {result.sha256[:12]}…)"

    def do_delete() -> str:
        nonlocal written
        storage.delete(name)
        if storage.exists(name):
            raise CheckFailed(
                f"connection check failed at 'delete': {name} is still there after deleting it; "
                "the account needs delete rights (old backups could not be pruned)"
            )
        written = False
        return "deleted, and gone"

    try:
        step("list", do_list)
        step("write", do_write)
        step("read", do_read)
        step("delete", do_delete)
    finally:
        if written:
            try:
                storage.delete(name)
            except Exception:  # the original failure is the one to report
                pass
    return report


def run(options: CheckOptions | None = None, progress: Progress = NO_PROGRESS) -> CheckReport:
    """Check the backup storage (or ``options.path``); each step reported as it ends.

    Returns the :class:`CheckReport`; :class:`CheckFailed` names the step that failed.
    """
    options = options or CheckOptions()
    storage = backup_storage(options.path)
    where = describe(storage)
    progress.step(f"Checking {where}")
    return check_storage(
        storage,
        where,
        progress=lambda s: progress.step(f"  {s.name:<7} ok  {s.detail} ({s.seconds * 1000:.0f} ms)"),
    )
