"""The history of backup and restore runs: ``with record_run(kind) as run: ...``.

Every run leaves one :class:`~backup_app.models.BackupRun` row: created
``running`` when the run starts, closed ``success`` or ``failed`` (with a
one-line error, secrets masked) when it ends.  Recording never changes the
outcome of a run: if the history table cannot be written (migrations not
applied yet, as during ``invoke update`` before ``migrate``), the run goes on
unrecorded and a warning is logged.

The history is a log of what happened on this site, not site data: a restore
that replaces the database puts back the rows it knew before, so the log
survives restores.  Runs that the restored database shows as ``running``
were in progress when that backup was taken; they are closed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.management.base import CommandError
from django.db import DatabaseError, IntegrityError, connections, router
from django.db.models import Q
from django.utils import timezone

from . import hints
from .errors import BackupAppError
from .models import ERROR_LENGTH, BackupRun
from .secrets import redact
from .sets import manifest_size
from .tools import pid_namespace, process_exists, process_started

logger = logging.getLogger("backup_app")

#: Fields written when a run is saved (``token`` identifies the row, even across restores).
FIELDS = (
    "kind",
    "started",
    "finished",
    "outcome",
    "set_name",
    "size",
    "error",
    "partial",
    "requested_by",
    "claim",
    "host",
    "pid",
    "pid_ns",
)


class AlreadyRunning(BackupAppError):
    """Another queued backup holds the claim; this one did not start."""


def same_pid_namespace() -> Q:
    """The runs whose pid can be looked at here: of this PID namespace, or of no known one (earlier versions).

    A run of another container with this host name is not (its pid means another process here); if it was
    killed, the scheduler closes it once it is older than any run can be."""
    return Q(pid_ns=pid_namespace()) | Q(pid_ns="")


def close_dead_runs(*, quiet: bool = False) -> int:
    """Close as failed the ``running`` rows of this host whose process is gone (killed manual runs, a cron job
    that died); returns how many.  A pid now used by a process that started after the run counts as gone.

    Every command of this app calls it, so a site that backs up from cron sees the failure without a worker.
    """
    host = socket.gethostname()[:255]
    closed = 0
    database = connections[_db()]
    if database.vendor == "sqlite" and not os.path.exists(database.settings_dict["NAME"]):
        return 0  # no database yet (a new machine before its restore): asking would create an empty file
    try:
        rows = list(
            BackupRun.objects.using(_db())
            .filter(same_pid_namespace(), outcome=BackupRun.RUNNING, host=host, pid__isnull=False)
            .exclude(pid=os.getpid())
        )
        for run in rows:
            started = process_started(run.pid) if process_exists(run.pid) else None
            if started is not None and started <= run.started.timestamp() + 1:
                continue  # that process is still at work
            closed += (
                BackupRun.objects.using(_db())
                .filter(pk=run.pk, outcome=BackupRun.RUNNING)
                .update(
                    outcome=BackupRun.FAILED,
                    finished=timezone.now(),
                    claim=None,
                    error=f"did not finish: its process (pid {run.pid} on {host}) ended without closing it (killed?)",
                )
            )
    except DatabaseError as err:
        if not quiet:
            logger.warning("backup history: could not close the runs of ended processes: %s", redact(err))
    return closed


def one_line(err: BaseException) -> str:
    """The error as one line for the history: secrets masked, at most ``ERROR_LENGTH`` characters."""
    if isinstance(err, KeyboardInterrupt | SystemExit):
        text = "interrupted"
    elif isinstance(err, BackupAppError | CommandError):
        text = redact(err)
    else:
        text = f"{type(err).__name__}: {redact(err)}"
    return text if len(text) <= ERROR_LENGTH else text[: ERROR_LENGTH - 1] + "…"


def note_manifest(run: BackupRun, manifest: dict | None) -> None:
    """Put the set name and size of a finished backup on ``run``."""
    if manifest:
        run.set_name = manifest.get("name", "")
        run.size = manifest_size(manifest)


def _db() -> str:
    return router.db_for_write(BackupRun)


def _save(run: BackupRun) -> None:
    """Insert or update ``run`` by its token (its primary key may be gone after a restore)."""
    values = {name: getattr(run, name) for name in FIELDS}
    if not BackupRun.objects.using(_db()).filter(token=run.token).update(**values):
        run.pk = BackupRun.objects.using(_db()).create(token=run.token, **values).pk


def start_run(kind: str, *, claim: str | None = None, requested_by: str = "") -> BackupRun:
    """Create the ``running`` row of a new run and return it.

    With ``claim``, the row holds that unique name while the run lasts: if
    another run holds it, :class:`AlreadyRunning` is raised and nothing is
    written.  Without a claim a database error is logged and an unsaved row
    returned, so the run itself goes on.
    """
    run = BackupRun(
        kind=kind,
        claim=claim,
        requested_by=requested_by[:150],
        started=timezone.now(),
        host=socket.gethostname()[:255],
        pid=os.getpid(),
        pid_ns=pid_namespace(),
    )
    try:
        _save(run)
    except IntegrityError:
        if claim is None:
            raise
        raise AlreadyRunning(f"another backup is running (it holds the claim {claim!r})") from None
    except DatabaseError as err:
        if claim is not None:
            raise
        logger.warning("backup history not recorded (run %s?): %s", hints.command("migrate"), redact(err))
        run.pk = None
    return run


def finish_run(run: BackupRun, error: BaseException | None = None) -> None:
    """Close ``run``: ``success``, or ``failed`` with the one-line ``error``; frees its claim."""
    run.finished = timezone.now()
    run.outcome = BackupRun.FAILED if error is not None else BackupRun.SUCCESS
    run.error = one_line(error) if error is not None else ""
    run.claim = None
    if run.pk is None:
        return
    try:
        _save(run)
    except DatabaseError as err:
        logger.warning("backup history: could not record the end of the run: %s", redact(err))


def discard_run(run: BackupRun) -> None:
    """Remove a run that turned out to have nothing to do (frees its claim)."""
    if run.pk is not None:
        BackupRun.objects.using(_db()).filter(token=run.token).delete()


@contextmanager
def record_run(kind: str, *, run: BackupRun | None = None, requested_by: str = "") -> Iterator[BackupRun]:
    """Record the run of the block: yields its row, closes it when the block ends.

    ``run`` adopts a row made by :func:`start_run` (a claimed, queued run: the
    scheduler hands it to the backup action).  Exceptions pass through
    unchanged after being recorded.
    """
    close_dead_runs()
    snapshot = _snapshot() if kind == BackupRun.RESTORE else None
    if run is None:
        run = start_run(kind, requested_by=requested_by)
    error: BaseException | None = None
    try:
        yield run
    except BaseException as err:
        error = err
        raise
    finally:
        if snapshot is not None:
            # The restore may have swapped the database under this connection.
            connections[_db()].close()
        finish_run(run, error)
        if snapshot is not None:
            _put_back(snapshot, run)


def _snapshot() -> list[dict] | None:
    try:
        return list(BackupRun.objects.using(_db()).values("token", *FIELDS))
    except DatabaseError as err:
        logger.warning("backup history not read before the restore: %s", redact(err))
        return None


def _put_back(snapshot: list[dict], restore_run: BackupRun) -> None:
    """After a restore: rows known before come back as they were; restored ``running`` rows are closed."""
    try:
        known = {row["token"]: row for row in snapshot if row["token"] != restore_run.token}
        current = {row["token"]: row for row in BackupRun.objects.using(_db()).values("token", *FIELDS)}
        for token, row in known.items():
            if current.get(token) != row:
                values = {k: v for k, v in row.items() if k != "token"}
                BackupRun.objects.using(_db()).update_or_create(token=token, defaults=values)
        stale = [
            row
            for token, row in current.items()
            if token not in known and token != restore_run.token and row["outcome"] == BackupRun.RUNNING
        ]
        # The backup that wrote the restored set was running when its dump was taken.
        writers = [r for r in stale if r["kind"] in BackupRun.BACKUP_KINDS and not r["partial"]]
        writer = max(writers, key=lambda r: r["started"]) if restore_run.set_name and writers else None
        for row in stale:
            values = {"finished": row["finished"] or row["started"], "claim": None}
            if row is writer:
                values.update(outcome=BackupRun.SUCCESS, set_name=restore_run.set_name)
            else:
                values.update(
                    outcome=BackupRun.FAILED,
                    error="outcome unknown: it was running when the restored backup was taken",
                )
            BackupRun.objects.using(_db()).filter(token=row["token"]).update(**values)
    except DatabaseError as err:
        logger.warning("backup history: could not put the history back after the restore: %s", redact(err))
