"""What to tell the user to run, the way this site runs it.

Every message that names a command or a setting renders it here, so that a site that runs the app through
``python manage.py`` and its own prefix (``apply_backup_settings(globals(), prefix="MYSITE_")``) reads
``python manage.py backup_list`` and ``MYSITE_BACKUP_GPG_RECIPIENT``, and a site driven by invoke reads
``invoke listbackups``.

Which form a message takes:

- under the invoke tasks of :mod:`backup_app.tasks` (they set ``BACKUP_APP_INVOKED=1`` for the command they
  run, and for the worker ``invoke worker`` starts): ``invoke <task>``;
- under one of the app's commands run by hand (``python manage.py backup_restore``, ``django-admin ...``):
  ``python manage.py <command>``;
- elsewhere (the admin under ``runserver`` or a web server, a worker started with ``manage.py qcluster``, a
  script): ``invoke <task>`` when the project's ``tasks.py``, next to ``BASE_DIR``'s ``manage.py``, imports
  ``backup_app.tasks``; else ``python manage.py <command>``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .conf import DEFAULT_PREFIX, _under_management_command
from .settings import app_settings

#: Set to ``1`` by the invoke tasks for the commands they run.
INVOKED = "BACKUP_APP_INVOKED"

#: invoke task -> the management command it runs (the options are the same).
COMMANDS = {
    "backup": "backup_create",
    "restore": "backup_restore",
    "listbackups": "backup_list",
    "rollback": "backup_rollback",
    "verify": "backup_verify",
    "backup-check": "backup_check",
    "backup-config": "backup_config",
    "backup-export": "backup_export",
    "worker": "qcluster",
    "migrate": "migrate",
}


def _project_uses_invoke() -> bool:
    from django.conf import settings

    base = getattr(settings, "BASE_DIR", None)
    if not base:
        return False
    try:
        return "backup_app.tasks" in (Path(base) / "tasks.py").read_text()
    except (OSError, ValueError):
        return False


def _backup_command_run() -> bool:
    """Whether this process is ``manage.py <one of the app's commands>`` (or ``django-admin ...``)."""
    return _under_management_command() and len(sys.argv) > 1 and sys.argv[1] in COMMANDS.values()


def invoked() -> bool:
    """Whether the user drives this site through the invoke tasks (see the module's rules)."""
    if os.environ.get(INVOKED) == "1":
        return True
    if _backup_command_run():
        return False
    return _project_uses_invoke()


def command(task: str, *args: str) -> str:
    """The command line to run, in backquotes: `` `invoke rollback --name X` `` or
    `` `python manage.py backup_rollback --name X` ``.  ``task`` is the invoke task's name."""
    line = f"invoke {task}" if invoked() else f"python manage.py {COMMANDS[task]}"
    return "`" + " ".join([line, *args]) + "`"


def variable(key: str) -> str:
    """The environment variable of configuration key ``key`` with the site's prefix (``MYSITE_BACKUP_DIR``)."""
    config = app_settings.config
    if config is not None and key in config.values:
        return config.env_name(key)
    return DEFAULT_PREFIX + key.upper()


def setting(key: str) -> str:
    """A configuration key as a message names it: ``backup_options (MYSITE_BACKUP_OPTIONS)``."""
    return f"{key} ({variable(key)})"


class Setting:
    """:func:`setting` rendered when the message is formatted (for module-level constants)."""

    def __init__(self, key: str):
        self.key = key

    def __str__(self) -> str:
        return setting(self.key)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)
