"""The invoke tasks of backup_app, for any Django project.

A project's own ``tasks.py`` holds ``from backup_app.tasks import *``; then, from
the project's folder (or any folder below it), ``invoke backup``, ``invoke
restore``, ``invoke listbackups``, ``invoke update`` and the others act on that
project: each task runs ``<this Python> manage.py <command>`` in the nearest
folder, from the one invoke was run in upwards, that holds a ``manage.py``.  The
settings module is the project's own: these tasks never set
``DJANGO_SETTINGS_MODULE``, the project's ``manage.py`` does.

Each task is a thin wrapper around one ``manage.py`` command; the work lives in
``backup_app``.  A failing command makes invoke exit with its status.
"""

from __future__ import annotations

import gc
import importlib.util
import io
import os
import re
import shlex
import signal
import sys
import threading
import time
import types
from contextlib import suppress
from pathlib import Path
from typing import ClassVar

from invoke import task
from invoke.exceptions import Exit, UnexpectedExit
from invoke.executor import Executor
from invoke.runners import Local, Result

__all__ = [
    "backup",
    "restore",
    "listbackups",
    "update",
    "verify",
    "rollback",
    "backup_check",
    "backup_config",
    "backup_export",
    "worker",
    "migrate",
    "static",
]

MANAGE_PY = "manage.py"


class _Local(Local):
    """invoke's local runner, reading the command's output 64 KiB at a time instead of 1,000 bytes.

    ``listbackups --json`` over 2,000 sets prints 2.3 MB: at 1,000 bytes a read invoke spent a second on it.
    """

    read_chunk_size = 64 * 1024
    #: Our own streams whose reader went away (``invoke backup-config | head``): what the command writes to
    #: them is read on (it never blocks) and dropped; the other stream still gets its share (the error line).
    gone_streams: ClassVar[list] = []
    #: A task of several commands (``update``) ends with 141 itself, after its last step, not after the first.
    steps_left = False
    #: A run of several tasks (``invoke backup listbackups``) ends with 141 after its last task (:class:`_Run`).
    tasks_left = False
    #: A command run in this process (:func:`_run_here`) or one started with a stream closed lost its report.
    reader_gone = False

    @classmethod
    def gone(cls) -> bool:
        """Some of this run's report was lost: a reader went away, or a stream was closed at the start."""
        return bool(cls.gone_streams) or cls.reader_gone

    def write_our_output(self, stream, string):
        if any(stream is gone for gone in _Local.gone_streams):
            return
        try:
            super().write_our_output(stream, string)
        except BrokenPipeError:
            _Local.gone_streams.append(stream)

    # SIGTERM (``docker stop``, systemd, ``kill``) is passed on to the command, which finishes or undoes its
    # step and exits; invoke then exits with its status.  Without this invoke would die and leave it running.
    _previous_term = None

    def start(self, command, shell, env):
        super().start(command, shell, env)
        if threading.current_thread() is threading.main_thread():
            self._previous_term = signal.signal(signal.SIGTERM, self._pass_on)

    def _pass_on(self, signum, frame):
        with suppress(ProcessLookupError):
            os.kill(self.get_pid(), signum)

    def stop(self):
        super().stop()
        if self._previous_term is not None:
            signal.signal(signal.SIGTERM, self._previous_term)
            self._previous_term = None


def _end_if_gone() -> None:
    """Exit 141 (as a piped command ended by SIGPIPE) when some of the report was lost, unless a later step or
    task of this run still runs: that one ends the run so."""
    if _Local.gone() and not _Local.steps_left and not _Local.tasks_left:
        raise Exit(code=141)


class _Run(Executor):
    """invoke's executor, for a run of several tasks: a task whose reader went away does not end the run (the
    next task still does its work, into /dev/null); the run exits 141 after the last one.  A failure still
    ends the run with its own status."""

    def execute(self, *args, **kwargs):
        _Local.tasks_left = True
        try:
            results = super().execute(*args, **kwargs)
        finally:
            _Local.tasks_left = False
        _end_if_gone()
        return results


def _use_run_executor() -> None:
    """Make ``invoke`` (and ``python -m invoke``) run its tasks with :class:`_Run`, unless the project chose
    another executor (then a reader gone ends the run with the task it happened in)."""
    with suppress(ImportError, AttributeError):
        from invoke.main import program

        if program.executor_class is Executor:
            program.executor_class = _Run


_use_run_executor()


def _closed_streams() -> None:
    """A stream closed before the start (``>&-``: Python gives None) is a reader already gone: /dev/null
    stands in for it (invoke and the command write to it), and the run ends with 141."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            with suppress(OSError):
                setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - the stream of the whole run
                _Local.reader_gone = True


def find_project(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder holding a ``manage.py``: ``start`` (default: the current folder), then its parents.

    Raises invoke's :class:`~invoke.exceptions.Exit` (one line, exit status 2) when there is none.
    """
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / MANAGE_PY).is_file():
            return folder
    raise Exit(
        f"No {MANAGE_PY} in {here} or any folder above it: run invoke in your Django project's folder "
        f"(the one with {MANAGE_PY}) or below it.",
        code=2,
    )


#: ``os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")``, as startproject writes it in manage.py.
_SETTINGS_DEFAULT = re.compile(r"""os\.environ\.setdefault\(\s*['"]DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([\w.]+)['"]""")


def settings_module(project: Path) -> tuple[str, str] | None:
    """``(module, where it comes from)``: ``$DJANGO_SETTINGS_MODULE``, else the default ``project``'s manage.py
    sets; None when neither names one (then Django says what is missing)."""
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        return os.environ["DJANGO_SETTINGS_MODULE"], "DJANGO_SETTINGS_MODULE"
    try:
        match = _SETTINGS_DEFAULT.search((project / MANAGE_PY).read_text(errors="replace"))
    except OSError:
        return None
    return (match.group(1), f"the default of {project / MANAGE_PY}") if match else None


def check_settings_module(project: Path) -> None:
    """Exit (one line, status 2) when the settings module the command would use cannot be found: in the
    project's folder (which ``manage.py`` puts first on ``sys.path``), else on this Python's path."""
    found = settings_module(project)
    if found is None:
        return
    name, source = found
    parts = name.split(".")
    base = project.joinpath(*parts)
    if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
        return
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise Exit(
            f"Settings module {name} ({source}) is not in {project} nor importable: set DJANGO_SETTINGS_MODULE "
            "to the project's settings module, or run invoke in the project it belongs to.",
            code=2,
        )


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def interactive() -> bool:
    """Both stdin and stdout are terminals: the command runs on a pty and may ask (confirmation, passphrase)."""
    return _is_terminal(sys.stdin) and _is_terminal(sys.stdout)


def manage(c, command: str, *, alone: bool = False, **kwargs):
    """Run ``<this Python> manage.py <command>`` in the project's folder (:func:`find_project`).

    On a terminal (stdin and stdout) the command gets a pty, so that it can ask; otherwise it runs without one,
    its stdin closed at once, so that it never waits for input, and its stdout and stderr stay apart.

    ``alone``: the task runs this one command and nothing after it.  Then, without a terminal, the project's
    ``manage.py`` runs in this process (:func:`_run_here`) rather than in a new interpreter: the same command,
    folder, arguments, environment, streams and exit status, without a second start-up.
    """
    project = find_project()
    check_settings_module(project)
    _closed_streams()
    if alone and not kwargs and not interactive() and _can_run_here(c):
        return _run_here(project, command)
    c.config.runners.local = _Local
    if interactive():
        kwargs.setdefault("pty", True)
    else:
        kwargs.setdefault("pty", False)
        # An empty stream: invoke closes the command's stdin as soon as it reads the end of it.
        kwargs.setdefault("in_stream", io.StringIO(""))
    # Tells the command (and a worker it starts) that the user drives the site through invoke: its hints then
    # name the tasks (``invoke listbackups``) rather than the commands (backup_app.hints.INVOKED).
    kwargs["env"] = {**kwargs.get("env", {}), "BACKUP_APP_INVOKED": "1"}
    try:
        with c.cd(str(project)):
            result = c.run(f"{shlex.quote(sys.executable)} {MANAGE_PY} {command}", **kwargs)
    finally:
        _quiet_gone_streams()
    if not result.failed:
        # A success whose reader went away ends as a piped command would (128 + SIGPIPE); a failure (invoke's
        # UnexpectedExit above, or a result under warn) keeps its own status.
        _end_if_gone()
    return result


#: Objects made (less those freed) between two runs of the collector while :func:`_run_here` runs (Python's
#: default: 700).
STARTUP_GC_THRESHOLD = 100_000

#: The status of a ``manage.py`` command whose reader went away (128 + SIGPIPE; the commands' READER_GONE).
READER_GONE = 141

#: A command already ran in this process (:func:`_run_here`): any later one gets a process of its own.
_ran_here: list[str] = []


def _can_run_here(c) -> bool:
    """No command ran in this process yet, no Django settings are loaded or site set up in it (a ``tasks.py`` may
    do either), and invoke would run the command line as it is: not ``--dry`` (only shown) or ``--echo`` (shown
    first), and no ``c.prefix()`` of a caller's task in front of it."""
    if _ran_here or c.config.run.dry or c.config.run.echo or c.command_prefixes:
        return False
    if sys.stdin is None:  # started with fd 0 closed (``<&-``): a process of its own gets a stdin at its end
        return False
    conf = sys.modules.get("django.conf")  # settings a tasks.py loaded (or set up): manage.py would run with those
    if conf is not None and conf.settings.configured:
        return False
    registry = sys.modules.get("django.apps.registry")
    return registry is None or not registry.apps.ready


def _run_here(project: Path, command: str) -> None:
    """``python manage.py <command>`` in this process: the project's ``manage.py`` is run as ``__main__`` in its
    folder, that folder first on ``sys.path``, with ``BACKUP_APP_INVOKED=1`` and stdin at its end (/dev/null),
    as the command's own process would have them; all of that is put back afterwards.  The command handles
    SIGTERM and SIGINT itself, as it does in a process of its own; its exit status becomes invoke's.

    A backup that changed little spends most of its time starting: a second interpreter (and invoke relaying
    its output) cost about 0.2 s of CPU, a sixth of such a backup (docs/performance.md).
    """
    _ran_here.append(command)
    saved = (sys.argv[:], sys.path[:], os.getcwd(), dict(os.environ))
    streams = (sys.stdout, sys.stderr)  # the command wraps them (ReaderGuard): a later task gets them back
    try:
        stdin = os.dup(0)
    except OSError:  # no stdin at all
        stdin = None
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.environ["BACKUP_APP_INVOKED"] = "1"
    os.chdir(project)
    sys.path.insert(0, str(project))
    sys.argv = [MANAGE_PY, *shlex.split(command)]
    script = project / MANAGE_PY
    main = types.ModuleType("__main__")
    main.__file__ = str(script)  # absolute, as Python gives a script; sys.argv[0] stays "manage.py"
    caller = sys.modules["__main__"]
    sys.modules["__main__"] = main
    # While manage.py imports and sets Django up, every few hundred new objects made the collector walk the
    # young ones and, once, every object loaded so far (0.06 s of CPU): it runs after 100,000 instead, until
    # the command ends (the command freezes the loaded site when it starts, BackupCommand.run_from_argv).
    thresholds = gc.get_threshold()
    gc.set_threshold(STARTUP_GC_THRESHOLD, *thresholds[1:])
    try:
        with io.open_code(str(script)) as fh:
            code = compile(fh.read(), str(script), "exec")
        exec(code, main.__dict__)
        status = 0
    except SystemExit as end:
        status = end.code
    except KeyboardInterrupt:
        # Ctrl-C before the command's own handler is in place (manage.py's imports, Django's set-up): one line
        # and 128 + SIGINT, as the command says outside its steps; invoke itself would exit 1 without a word.
        print("Interrupted (Ctrl-C).", file=sys.stderr)
        status = 130
    finally:
        gc.set_threshold(*thresholds)
        sys.stdout, sys.stderr = streams
        sys.modules["__main__"] = caller
        sys.argv, sys.path[:] = saved[0], saved[1]
        os.chdir(saved[2])
        os.environ.clear()
        os.environ.update(saved[3])
        if hasattr(time, "tzset"):  # Django set TZ to TIME_ZONE and applied it: the caller's zone again
            time.tzset()
        if stdin is not None:
            os.dup2(stdin, 0)
            os.close(stdin)
    if status is None or status == 0:
        _end_if_gone()
        return
    if status == READER_GONE:  # done, its report lost (its guard pointed the stream at /dev/null)
        _Local.reader_gone = True
        _end_if_gone()
        return
    if not isinstance(status, int):  # sys.exit("message"): the message on stderr, status 1, as Python does
        print(status, file=sys.stderr)
        status = 1
    # What c.run raises for a failed command (a caller's task may handle it, as update does for its backup);
    # nothing is hidden, so invoke prints no more than the command did.
    raise UnexpectedExit(Result(command=f"{MANAGE_PY} {command}", exited=status))


def _quiet_gone_streams() -> None:
    """Point each of our streams whose reader went away at /dev/null, so that the last flush says nothing."""
    for stream in _Local.gone_streams:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


def _here(path: str) -> str:
    """A local folder or file named relative to the folder invoke was run in, made absolute.

    The command runs in the project's folder, which need not be the folder the user is in.
    """
    return str(Path(os.getcwd(), path).resolve()) if path and not os.path.isabs(path) else path


def _local_file(name: str) -> str:
    """``--db-file`` / ``--media-file``: a storage name as it is; a file that exists here, as its absolute path."""
    if name and not os.path.isabs(name) and os.path.isfile(name):
        return _here(name)
    return name


def _flags(**flags) -> str:
    parts = []
    for name, value in flags.items():
        option = "--" + name.replace("_", "-")
        if value is True:
            parts.append(option)
        elif value not in (None, False, ""):
            parts.append(f"{option} {shlex.quote(str(value))}")
    return " ".join(parts)


@task(
    help={
        "clean": "Clean up old backup files",
        "compress": "Compress the backup files",
        "encrypt": "Encrypt the backup files",
        "path": "Specify path for generated backup files (leave blank for default path)",
        "quiet": "Suppress informational output (only show errors)",
        "skip_db": "Skip database backup step (only backup media files)",
        "skip_media": "Skip media backup step (only backup database files)",
        "dry_run": "Say what would be written, where, and what --clean would delete; change nothing",
        "json": "Print the result as one JSON object (docs/results.schema.json)",
    }
)
def backup(
    c,
    clean=False,
    compress=True,
    encrypt=False,
    path="",
    quiet=False,
    skip_db=False,
    skip_media=False,
    dry_run=False,
    json=False,
):
    """Backup the database and media files."""
    manage(
        c,
        "backup_create "
        + _flags(
            clean=clean,
            encrypt=encrypt,
            path=_here(path),
            quiet=quiet,
            skip_db=skip_db,
            skip_media=skip_media,
            dry_run=dry_run,
            json=json,
        )
        + ("" if compress else " --no-compress"),
        alone=True,
    )


@task(
    help={
        "path": "Specify path to locate backup files (leave blank for default path)",
        "db_file": "Specify filename of compressed database archive (leave blank to use most recent backup)",
        "media_file": "Specify filename of compressed media archive (leave blank to use most recent backup)",
        "decrypt": "Decrypt the backup files (automatic for .gpg files)",
        "skip_db": "Do not import database archive (media restore only)",
        "skip_media": "Do not import media archive (database restore only)",
        "uncompress": "Uncompress the backup files (automatic for .gz and .zst files)",
        "restore_allow_newer_version": "Allow restore from a backup made by a newer version",
        "mirror": "Delete media files that were not in the backup",
        "allow_other_site": "Restore a set another site wrote (see backup_site_id)",
        "quiet": "Suppress informational output (only show errors)",
        "safety_backup": "Keep the replaced state so the restore can be undone (default: backup_safety)",
        "noinput": "Do not ask for confirmation",
        "dry_run": "Say which set and files would be restored, what they replace, whether they pass the checks",
        "json": "Print the result as one JSON object (docs/results.schema.json)",
    }
)
def restore(
    c,
    path="",
    db_file="",
    media_file="",
    decrypt=False,
    skip_db=False,
    skip_media=False,
    uncompress=True,
    restore_allow_newer_version=False,
    mirror=False,
    allow_other_site=False,
    quiet=False,
    safety_backup=True,
    noinput=False,
    dry_run=False,
    json=False,
):
    """Restore the database and media files from a backup."""
    manage(
        c,
        "backup_restore "
        + _flags(
            path=_here(path),
            db_file=_local_file(db_file),
            media_file=_local_file(media_file),
            decrypt=decrypt,
            skip_db=skip_db,
            skip_media=skip_media,
            restore_allow_newer_version=restore_allow_newer_version,
            mirror=mirror,
            allow_other_site=allow_other_site,
            quiet=quiet,
            noinput=noinput,
            dry_run=dry_run,
            json=json,
        )
        + ("" if uncompress else " --no-uncompress")
        + ("" if safety_backup else " --no-safety-backup"),
        alone=True,
    )


@task(help={"json": "Print one JSON array instead of a table", "path": "List backups in this local folder"})
def listbackups(c, json=False, path=""):
    """List the available backup sets, newest first."""
    manage(c, "backup_list " + _flags(json=json, path=_here(path)))


@task(name="backup-config", help={"json": "Print JSON"})
def backup_config(c, json=False):
    """Show the backup configuration and where each value came from (secrets hidden)."""
    manage(c, "backup_config " + _flags(json=json))


@task
def migrate(c):
    """Apply database migrations."""
    manage(c, "migrate --noinput")


@task
def static(c):
    """Collect static files."""
    manage(c, "collectstatic --noinput --verbosity 0")


# InvenTree's ``invoke update`` options for steps this update does not have: accepted, so that a command line
# written for InvenTree works, and ignored with a note.
_NOT_HERE = {
    "backend": "backend translations",
    "no_backend": "backend translations",
    "frontend": "frontend build",
    "no_frontend": "frontend build",
    "uv": "package installation",
    "verbose": "package installation",
}


@task(
    help={
        "skip_backup": "Skip the database and media backup step",
        "skip_static": "Skip static file collection step",
        "backend": "InvenTree's option (backend translations step); accepted and ignored",
        "no_backend": "InvenTree's option (backend translations step); accepted and ignored",
        "frontend": "InvenTree's option (frontend build step); accepted and ignored",
        "no_frontend": "InvenTree's option (frontend build step); accepted and ignored",
        "uv": "InvenTree's option (package installation step); accepted and ignored",
        "verbose": "InvenTree's option (package installation step); accepted and ignored",
    }
)
def update(
    c,
    skip_backup=False,
    backend=False,
    no_backend=False,
    frontend=False,
    no_frontend=False,
    skip_static=False,
    uv=False,
    verbose=False,
):
    """Update the site: backup (pruned like backup --clean), migrate, collect static files."""
    given = {"backend": backend, "no_backend": no_backend, "frontend": frontend, "no_frontend": no_frontend, "uv": uv}
    ignored = [name for name, value in {**given, "verbose": verbose}.items() if value]
    if ignored:
        options = ", ".join("--" + name.replace("_", "-") for name in ignored)
        steps = ", ".join(dict.fromkeys(_NOT_HERE[name] for name in ignored))
        print(
            f"Note: {options} ignored: this update has no {steps} step (it runs backup, migrate, collectstatic).",
            file=sys.stderr,
        )
    _Local.steps_left = True  # a reader gone during the backup loses its report, not the migrate
    try:
        if not skip_backup:
            try:
                manage(c, "backup_create --clean --origin update")
            except UnexpectedExit as err:
                raise Exit(
                    "Update stopped: the backup failed (see above); nothing was migrated. Fix the backup, "
                    "or run `invoke update --skip-backup` to update without one.",
                    code=err.result.exited or 1,
                ) from None
        migrate(c)
        if not skip_static:
            static(c)
    finally:
        _Local.steps_left = False
    _end_if_gone()


@task
def worker(c):
    """Run the background worker (django-q2 cluster)."""
    manage(c, "qcluster")


@task(help={"name": "Safety copy to roll back to (default: the newest)", "list": "List the safety copies"})
def rollback(c, name="", list=False):  # noqa: A002 - invoke derives the option name from it
    """Undo the last restore (or a named one) from the safety copy it kept."""
    manage(c, "backup_rollback " + _flags(name=name, list=list))


@task(
    name="verify",
    help={
        "set": "Verify only this backup set (default: all)",
        "restore_test": "Also restore into a scratch database and folder and count tables and files",
        "read_data": "Incremental sets: read every media pack and check every blob",
        "path": "Verify the backups in this local folder",
        "json": "Print the result as one JSON object (docs/results.schema.json)",
    },
)
def verify(c, set="", restore_test=False, read_data=False, path="", json=False):  # noqa: A002 - invoke's option name
    """Re-read every file of the backup sets and check it against its manifest."""
    flags = _flags(set=set, restore_test=restore_test, read_data=read_data, path=_here(path), json=json)
    manage(c, "backup_verify " + flags)


@task(
    name="backup-export",
    help={
        "output": "A new local file: .tar, .tar.gz or .tar.zst",
        "set": "The set to export (default: the newest complete set)",
        "path": "Read the backups in this local folder",
    },
)
def backup_export(c, output, set="", path=""):  # noqa: A002 - invoke derives the option name from it
    """Write a set's media files as one plain tar (for moving a site, or for stock mediarestore)."""
    manage(c, "backup_export " + _flags(output=_here(output), set=set, path=_here(path)))


@task(
    name="backup-check",
    help={
        "path": "Check this local folder instead of the configured storage",
        "quiet": "Print nothing but errors",
    },
)
def backup_check(c, path="", quiet=False):
    """Check the backup storage: list, write, read back, compare and delete a small object."""
    manage(c, "backup_check " + _flags(path=_here(path), quiet=quiet))
