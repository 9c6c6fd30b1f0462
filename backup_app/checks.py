"""System checks: every backup misconfiguration is reported by ``manage.py check``.

Ids are stable; ``invoke backup`` refuses to start while an error is reported.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.core.checks import Error, Warning, register

from .conf import FILESYSTEM_STORAGES, ConfigError, import_storage_class
from .settings import app_settings

TAG = "backup_app"


def _env(name: str) -> str:
    return app_settings.env_name(name)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _is_inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


@register(TAG)
def check_storage(app_configs=None, **kwargs):
    """E001 not writable, E002 inside MEDIA_ROOT, E006 storage class, W001 default folder."""
    messages = []
    backend = app_settings.storage_backend
    try:
        import_storage_class(backend, where=_env("backup_storage"))
    except ConfigError as err:
        messages.append(Error(str(err), hint="Fix backup_storage or install the package.", id="backup_app.E006"))
        return messages
    if backend not in FILESYSTEM_STORAGES:
        return messages
    location = app_settings.storage_options.get("location")
    if not location:
        return messages
    path = Path(location)
    existing = _nearest_existing(path)
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        messages.append(
            Error(
                f"The backup folder {path} is not writable.",
                hint=f"Create it with write permission for this user, or set {_env('backup_dir')} to another folder.",
                id="backup_app.E001",
            )
        )
    media_root = getattr(settings, "MEDIA_ROOT", "")
    if media_root and _is_inside(path, Path(media_root)):
        messages.append(
            Error(
                f"The backup folder {path} is inside MEDIA_ROOT ({media_root}): every backup would archive the "
                "previous ones.",
                hint=f"Set {_env('backup_dir')} to a folder outside the media folder.",
                id="backup_app.E002",
            )
        )
    if app_settings.backup_dir_is_default:
        messages.append(
            Warning(
                f"{_env('backup_dir')} is not set; backups go to the default folder {path}.",
                hint=f"Set {_env('backup_dir')} (or backup_dir in the config file) to choose the folder; "
                "ideally on another disk or machine.",
                id="backup_app.W001",
            )
        )
    return messages


@register(TAG)
def check_names(app_configs=None, **kwargs):
    """E003 template lacks {datetime}; E004 lacks {databasename} with several databases; E007 date format."""
    messages = []
    templates = (
        ("backup_database_filename_template", app_settings.filename_template),
        ("backup_media_filename_template", app_settings.media_filename_template),
    )
    for key, template in templates:
        if callable(template):
            continue
        if "{datetime}" not in template:
            messages.append(
                Error(
                    f"{_env(key)} ({template!r}) has no {{datetime}}: backups would overwrite each other and "
                    "could not be ordered.",
                    hint="Put {datetime} into the template, e.g. InvenTree-db-{datetime}.{extension}",
                    id="backup_app.E003",
                )
            )
        if "{extension}" not in template or "/" in template:
            messages.append(
                Error(
                    f"{_env(key)} ({template!r}) must end with {{extension}} and contain no '/'.",
                    hint="Use a plain file name such as InvenTree-db-{datetime}.{extension}",
                    id="backup_app.E008",
                )
            )
    databases = app_settings.databases
    db_template = app_settings.filename_template
    if len(databases) > 1 and not callable(db_template) and "{databasename}" not in db_template:
        messages.append(
            Error(
                f"{_env('backup_database_filename_template')} has no {{databasename}} but {len(databases)} databases "
                f"are backed up ({', '.join(databases)}): their files would get the same name.",
                hint="Add {databasename}, e.g. InvenTree-db-{databasename}-{datetime}.{extension}",
                id="backup_app.E004",
            )
        )
    fmt = app_settings.date_format
    sample = datetime(2024, 12, 31, 23, 59, 58)
    try:
        round_trip = datetime.strptime(sample.strftime(fmt), fmt) == sample
    except ValueError:
        round_trip = False
    if not round_trip or re.search(r"[^A-Za-z0-9%_-]", fmt):
        messages.append(
            Error(
                f"{_env('backup_date_format')} ({fmt!r}) does not give a timestamp that reads back to the second "
                "using only letters, digits, '-' and '_'.",
                hint="Use the default %Y-%m-%d-%H%M%S",
                id="backup_app.E007",
            )
        )
    return messages


@register(TAG)
def check_gpg(app_configs=None, **kwargs):
    """E005: a GPG recipient is configured but its public key is not in the keyring."""
    recipient = app_settings.gpg_recipient
    if not recipient:
        return []
    home = app_settings.gpg_home
    if home and not Path(home).is_dir():
        return [
            Error(
                f"{_env('backup_gpg_home')} ({home}) is not a folder.",
                hint="Create the GnuPG home or fix the path.",
                id="backup_app.E009",
            )
        ]
    try:
        import gnupg

        keys = (
            gnupg.GPG(gnupghome=home).list_keys(keys=[recipient]) if home else gnupg.GPG().list_keys(keys=[recipient])
        )
    except (OSError, ValueError) as err:
        return [
            Error(
                f"gpg cannot be run ({err}).",
                hint="Install GnuPG (apt-get install gnupg).",
                id="backup_app.E005",
            )
        ]
    if not keys:
        return [
            Error(
                f"{_env('backup_gpg_recipient')} is {recipient!r} but the keyring {home or '(gpg default)'} has no "
                "public key for it.",
                hint=f"Import it: gpg {'--homedir ' + home + ' ' if home else ''}--import recipient-public-key.asc",
                id="backup_app.E005",
            )
        ]
    return []


@register(TAG)
def check_worker(app_configs=None, **kwargs):
    """W002: the ORM broker would hand a still-running backup to another worker."""
    from .schedule import TASK_TIMEOUT

    q = getattr(settings, "Q_CLUSTER", {}) or {}
    if q.get("orm") and q.get("retry", 60) <= TASK_TIMEOUT:
        return [
            Warning(
                f"Q_CLUSTER['retry'] ({q.get('retry', 60)} s) is not above the backup task timeout ({TASK_TIMEOUT} s): "
                "the database broker could hand a running backup to a second worker.",
                hint=f"Set Q_CLUSTER['retry'] above {TASK_TIMEOUT}.",
                id="backup_app.W002",
            )
        ]
    return []


@register(TAG)
def check_sftp_host_key(app_configs=None, **kwargs):
    """W003: SFTP without known_host_file accepts any host key."""
    if app_settings.storage_backend != "storages.backends.sftpstorage.SFTPStorage":
        return []
    if app_settings.storage_options.get("known_host_file"):
        return []
    return [
        Warning(
            f"{_env('backup_options')} has no known_host_file: the SFTP backup storage accepts any host key, so a "
            "machine in the middle could receive your backups.",
            hint='Add "known_host_file": "/path/to/known_hosts" holding the server\'s key (ssh-keyscan HOST).',
            id="backup_app.W003",
        )
    ]
