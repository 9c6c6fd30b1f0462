"""Shared plumbing of the backup commands: one-line errors, progress on stderr, and the process-wide
memory settings of a command-line run.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import os
import sys
import threading
from contextlib import suppress

from django.core.management.base import BaseCommand, CommandError, OutputWrapper

from backup_app import history, interrupts, streams
from backup_app.errors import BackupAppError
from backup_app.secrets import redact


class Trimmer:
    """Give freed heap pages back to the system after every 64 MiB streamed (``malloc_trim``).

    128 KiB stream buffers come from glibc's heaps, where they are reused without page faults; freed
    pieces between them are not returned on their own, so without this the resident memory of a
    backup grew with its size (0.5 -> 2 GB SQLite backup: 100 -> 124 MiB).
    """

    EVERY = 64 * 1024 * 1024

    def __init__(self):
        self._count = 0
        self._lock = threading.Lock()
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self._trim = None

    def add(self, n: int) -> None:
        if self._trim is None:
            return
        with self._lock:
            self._count += n
            if self._count < self.EVERY:
                return
            self._count = 0
        self._trim(0)


#: Exit status after Ctrl-C (128 + SIGINT), and when the reader of stdout went away (128 + SIGPIPE).
INTERRUPTED = 130
READER_GONE = 141


class ReaderGuard:
    """stdout or stderr of a ``manage.py`` run, for when its reader goes away (``| head``, a closed terminal).

    The first write that finds the pipe closed points the stream's descriptor at /dev/null, so that this and
    every later write (rich's, logging's, the interpreter's last flush) succeed and go nowhere, and marks the
    run :attr:`gone`.  The work goes on: a backup or a restore is a job, its lines are only a report of it, so
    a closed reader neither stops it half-way nor turns it into a failure; the command ends, once the work is
    done, with :data:`READER_GONE` (as a command ended by SIGPIPE would) unless it failed anyway.
    """

    gone = False

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._lost()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._lost()

    def _lost(self) -> None:
        ReaderGuard.gone = True
        with suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        with suppress(OSError, ValueError):
            self._stream.flush()  # what the buffer still held goes to /dev/null

    def __getattr__(self, name):
        return getattr(self._stream, name)

    @classmethod
    def install(cls) -> None:
        """Guard the process's stdout and stderr (once).  One closed before the start (``>&-``: Python gives
        None) is a reader already gone: the report goes to /dev/null, the work goes on."""
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is None:
                with suppress(OSError):
                    stream = open(os.devnull, "w")  # noqa: SIM115 - the stream of the whole run
                    cls.gone = True
            if stream is not None and not isinstance(stream, cls):
                setattr(sys, name, cls(stream))

    @classmethod
    def exit_status(cls, status):
        """The status to end with: a success whose reader went away is :data:`READER_GONE`."""
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        if cls.gone and status in (None, 0):
            return READER_GONE
        return status


def _interrupted(err: BaseException) -> bool:
    """``err`` was raised while handling a KeyboardInterrupt (an action turned Ctrl-C into its one line)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, KeyboardInterrupt):
            return True
        err = err.__cause__ or err.__context__
    return False


def _plain_line(message: str) -> bool:
    """A line that rich's Console (soft wrap, no markup, no highlighting) writes unchanged, then a newline:
    printable ASCII (no tab to expand, no control code to strip) and at most one ``:`` (an emoji code such as
    ``:smile:`` needs two)."""
    return message.isascii() and message.isprintable() and message.count(":") < 2


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def steady_memory() -> None:
    """Fix glibc's mmap threshold at 256 KiB, so that large buffers (a tar header block, a big read) are
    mapped and go back to the system when freed.

    glibc otherwise raises the threshold after the first such buffer is freed and serves the next ones
    from its per-thread arenas, which fragment: peak memory then grew with the size of the backup
    (measured with 1 MiB buffers: media-only backups of 0.5 and 2 GB peaked at 71 and 78 MB; with this,
    58 MB both).  The 128 KiB stream buffers stay below it and are reused; :class:`Trimmer` returns
    what they leave free.
    """
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 256 * 1024)  # -3 = M_MMAP_THRESHOLD


def backup_folder(path: str | None) -> str | None:
    """``--path`` of a command that reads backups: the folder as given; CommandError naming it when it is
    missing or not a folder (it is never created: an empty new folder would read as "no backups")."""
    if path and not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
        raise CommandError(f"--path {path} {what}; give the folder that holds the backup files")
    return path


def options_for(cls: type, options: dict):
    """The action's options dataclass ``cls``, filled from the parsed command options of the same names."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in options.items() if name in names})


class BackupCommand(BaseCommand):
    """A command that calls one action: failures are one line on stderr (a traceback only with --traceback).

    It is the action's :class:`~backup_app.progress.Progress`: steps go to stderr unless ``--quiet``.
    """

    # The backup action runs the backup checks itself; the others must work on a half-configured site.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("--quiet", action="store_true", help="Print nothing but errors.")

    def add_json_argument(self, parser) -> None:
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print the result as one JSON object on stdout (docs/results.schema.json); steps stay on stderr.",
        )

    def add_dry_run_argument(self, parser, what: str) -> None:
        parser.add_argument("--dry-run", action="store_true", help=f"Say {what}; change nothing.")

    def run_from_argv(self, argv):
        # Only for ``manage.py <command>``, whose process ends with it (call_command, as a django-q2 worker
        # does, never comes here), the process-wide settings: glibc's allocator tuned for streaming and
        # trimmed as bytes go by, and the loaded site (Django, the apps, the modules: some 70,000 objects),
        # which lives until the exit, taken out of the collector's sight, or every full collection and the
        # ones at exit walk it again (0.2 s at the end of a backup).
        steady_memory()
        streams.set_streamed_hook(Trimmer().add)
        gc.freeze()
        # A reader that goes away (``| head``) loses the rest of the report, not the work (ReaderGuard).
        ReaderGuard.install()
        self.stdout = OutputWrapper(sys.stdout)
        self.stderr = OutputWrapper(sys.stderr)
        try:
            super().run_from_argv(argv)
            status = 0
        except SystemExit as end:  # a CommandError's status (Django's run_from_argv), or one of ours below
            status = end.code
        except KeyboardInterrupt:
            # Ctrl-C outside the steps that turn it into a sentence of what was left (the action's own errors).
            sys.stderr.write("Interrupted (Ctrl-C).\n")
            status = INTERRUPTED
        status = ReaderGuard.exit_status(status)
        if status:
            sys.exit(status)

    def execute(self, *args, **options):
        self.quiet = options.get("quiet", False)
        self._console = None
        self._bars = None
        self._emitted = False
        self._tasks: dict[str, object] = {}
        self.live = not self.quiet and _is_terminal(sys.stderr)
        with suppress(Exception):  # a site not migrated yet, or without a database: nothing to close
            history.close_dead_runs(quiet=True)
        try:
            with interrupts.handled():
                return super().execute(*args, **options)
        except interrupts.Interrupted as err:
            # Outside any step that changes something (each step says itself what it finished or undid).
            raise CommandError(str(err), returncode=err.exit_status) from None
        except KeyboardInterrupt:
            raise
        except Exception as err:
            if _interrupted(err) and not options.get("traceback"):
                # The action said what state it left; the status is the shell's for Ctrl-C.
                if options.get("json") and self.action:
                    self.emit({"action": self.action, "ok": False, "error": redact(err)})
                sys.stderr.write(f"Interrupted: {redact(err)}\n")
                sys.exit(getattr(err, "exit_status", INTERRUPTED))  # 143 for SIGTERM, 130 for SIGINT
            self._translate(err, options)
        finally:
            if self._bars is not None:
                self._bars.stop()

    #: The ``action`` of this command's ``--json`` results (docs/results.schema.json).
    action = ""

    def _translate(self, err: Exception, options: dict):
        """Re-raise ``err`` as a one-line CommandError (or as it is, with --traceback); with ``--json`` the
        same line also goes to stdout as ``{"action": ..., "ok": false, "error": ...}``."""
        if isinstance(err, CommandError):
            line = str(err)
        elif isinstance(err, BackupAppError):
            line = redact(err)
        else:
            line = f"{type(err).__name__}: {redact(err)} (run with --traceback for details)"
        if options.get("json") and self.action and not self._emitted:
            self.emit({"action": self.action, "ok": False, "error": line})
        if isinstance(err, CommandError) or options.get("traceback"):
            raise err
        # An action cut short by SIGTERM/SIGINT exits 128 + the signal, after saying what it put back.
        raise CommandError(line, returncode=getattr(err, "exit_status", 1)) from None

    def emit(self, data) -> None:
        """One JSON document on stdout (the bars, if any, stopped first)."""
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
        self.stdout.write(json.dumps(data, indent=2))
        self._emitted = True

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._console

    # --- the Progress of the action (backup_app.progress) --------------------------------------------

    def step(self, message: str) -> None:
        if self.quiet:
            return
        if not self.live and sys.stderr is not None and _plain_line(message):
            # Without a terminal, rich's Console prints such a line as it is, so rich is not imported for it
            # (about 25 ms of CPU, most of it rich.console's imports: 2 % of a backup that changed little).
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
            return
        self.console.print(message, markup=False)

    def start(self, name: str, *, label: str = "", total: int | None = None) -> None:
        """On a terminal, a bar for ``name``: bytes, rate, time left (with a total), media files counted."""
        if not self.live:
            return
        if self._bars is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bars = Progress(
                TextColumn("{task.description:<22}"),
                BarColumn(bar_width=30),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TextColumn("{task.fields[files]}"),
                TimeRemainingColumn(compact=True, elapsed_when_finished=True),
                console=self.console,
            )
            self._bars.start()
        self._tasks[name] = self._bars.add_task(label or name, total=total, files="")

    def advance(self, name: str, nbytes: int, *, files: int = 0) -> None:
        task = self._tasks.get(name)
        if task is None:
            return
        if files:
            counted = self._bars.tasks[task].fields.get("count", 0) + files
            self._bars.update(task, advance=nbytes, count=counted, files=f"{counted:,} files")
        else:
            self._bars.update(task, advance=nbytes)

    def finish(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            done = self._bars.tasks[task].completed
            self._bars.update(task, total=done, completed=done)
            self._bars.stop_task(task)

    def summary(self, line: str) -> None:
        """The result in one line on stdout (after the bars), unless --quiet."""
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
        if not self.quiet:
            self.stdout.write(line)

    def confirm(self, question: str) -> bool:
        """Ask on a terminal only; without one the answer is yes (never waits for input)."""
        if not sys.stdin.isatty():
            return True
        from rich.prompt import Confirm

        return Confirm.ask(question, console=self.console, default=False)
