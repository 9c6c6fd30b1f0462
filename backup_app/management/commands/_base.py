"""Shared plumbing of the backup commands: one-line errors, progress on stderr."""

from __future__ import annotations

import gc
import sys

from django.core.management.base import BaseCommand, CommandError

from backup_app.errors import BackupAppError
from backup_app.pipeline import steady_memory
from backup_app.secrets import redact


class BackupCommand(BaseCommand):
    """A command whose failures are one line on stderr (a traceback only with --traceback)."""

    # backup_create runs the backup checks itself; the others must work on a half-configured site.
    requires_system_checks: list[str] = []
    #: "backup" or "restore": failures of these are mailed to the admins (backup_send_email).
    action: str | None = None

    def add_arguments(self, parser):
        parser.add_argument("--quiet", action="store_true", help="Print nothing but errors.")

    def run_from_argv(self, argv):
        # Only for ``manage.py <command>``, whose process ends with it (call_command, as a django-q2 worker
        # does, never comes here): the loaded site (Django, the apps, the modules: some 70,000 objects)
        # lives until the exit, so take it out of the collector's sight, or every full collection and the
        # ones at exit walk it again (0.2 s at the end of a backup).
        gc.freeze()
        return super().run_from_argv(argv)

    def execute(self, *args, **options):
        steady_memory()
        self.quiet = options.get("quiet", False)
        self._console = None
        try:
            return super().execute(*args, **options)
        except KeyboardInterrupt:
            raise
        except Exception as err:
            if self.action:
                from backup_app.notify import notify_failure

                notify_failure(self.action, err, origin=options.get("origin") or "manual")
            self._translate(err, options)

    def _translate(self, err: Exception, options: dict):
        """Re-raise ``err`` as a one-line CommandError (or as it is, with --traceback)."""
        if isinstance(err, CommandError) or options.get("traceback"):
            raise err
        if isinstance(err, BackupAppError):
            raise CommandError(redact(err)) from None
        raise CommandError(f"{type(err).__name__}: {redact(err)} (run with --traceback for details)") from None

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._console

    def progress(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False)

    def confirm(self, question: str) -> bool:
        """Ask on a terminal only; without one the answer is yes (never waits for input)."""
        if not sys.stdin.isatty():
            return True
        from rich.prompt import Confirm

        return Confirm.ask(question, console=self.console, default=False)
