"""System checks: every backup misconfiguration is reported by ``manage.py check``.

Ids are stable and each stands for one failure (the table is in docs/configuration.md); ``invoke backup``
refuses to start while an error is reported and shows the warnings.  Values of the wrong type are refused
earlier, when the settings load (:mod:`backup_app.conf`); what needs the environment (an import, a folder, a
program) or the semantics of django-dbbackup (its filename templates) is checked here.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import string
import tempfile
from datetime import datetime
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils.module_loading import import_string

from . import hints
from .conf import (
    APP_FIELDS,
    FILESYSTEM_STORAGES,
    STORAGE_DIR_OPTION,
    ConfigError,
    NotAStorage,
    import_storage_class,
)
from .engines import engine_class, unsupported_connector
from .sets import STAMP_SUFFIX_SEPARATOR
from .settings import app_settings

TAG = "backup_app"

#: The fields django-dbbackup fills in a filename template (``utils.filename_generate``).
TEMPLATE_FIELDS = ("datetime", "databasename", "servername", "extension", "content_type")


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


def _folder_setting(location: str) -> str:
    """The setting a local backup folder came from: ``backup_dir``'s variable, else ``backup_options``' location."""
    if app_settings.backup_dir is not None and str(app_settings.backup_dir) == str(location):
        return _env("backup_dir")
    return f"{_env('backup_options')} location"


def _creation_problem(path: Path) -> str | None:
    """Why the missing folder ``path`` cannot be created, or None.

    A folder is made and removed in the nearest existing parent: ``os.access`` says yes to root anywhere,
    even on ``/proc``.
    """
    existing = _nearest_existing(path)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".backup-app-probe-", dir=existing))
    except OSError as err:
        return f"nothing can be created in {existing}: {err.strerror}"
    return None


@register(TAG)
def check_storage(app_configs=None, **kwargs):
    """E006 storage does not import, E011 not a storage; local folder: E001 cannot be created, E019 not
    writable, E020 a file; E002 inside MEDIA_ROOT, W001 default folder; W008 an absolute backup_dir that a
    remote storage does not use."""
    messages = []
    backend = app_settings.storage_backend
    try:
        import_storage_class(backend, where=_env("backup_storage"))
    except NotAStorage as err:
        messages.append(Error(str(err), hint="Name a Django storage class in backup_storage.", id="backup_app.E011"))
        return messages
    except ConfigError as err:
        messages.append(Error(str(err), hint="Fix backup_storage or install the package.", id="backup_app.E006"))
        return messages
    if backend not in FILESYSTEM_STORAGES:
        if app_settings.backup_dir_unused:
            option = STORAGE_DIR_OPTION.get(backend, "location")
            messages.append(
                Warning(
                    f"{_env('backup_dir')} ({app_settings.backup_dir}) is a local folder and the backup storage is "
                    f"{backend.rsplit('.', 1)[-1]}: it is not used there (as in InvenTree, where backup_options "
                    "replace it).",
                    hint=f"To store backups under a prefix of the remote store, give backup_options a "
                    f'{option!r}, e.g. "backups"; or unset {_env("backup_dir")}.',
                    id="backup_app.W008",
                )
            )
        return messages
    location = app_settings.storage_options.get("location")
    if not location:
        return messages
    path = Path(location)
    setting = _folder_setting(location)
    if path.exists() and not path.is_dir():
        messages.append(
            Error(
                f"{setting} ({path}) is a file, not a folder.",
                hint=f"Set {setting} to a folder.",
                id="backup_app.E020",
            )
        )
    elif path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        messages.append(
            Error(
                f"{setting} ({path}): the backup folder is not writable by this user.",
                hint=f"Give this user write permission on {path}, or set {setting} to another folder.",
                id="backup_app.E019",
            )
        )
    elif not path.exists() and (problem := _creation_problem(path)):
        messages.append(
            Error(
                f"{setting} ({path}): the backup folder cannot be created ({problem}).",
                hint=f"Create it with write permission for this user, or set {setting} to another folder.",
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


def _template_problems(key: str, template: str) -> list[Error]:
    """E015 not a format string, E016 empty or numbered field, E014 unknown field, E003 no {datetime},
    E013 no {extension}, E008 a '/'."""
    where = f"{_env(key)} ({template!r})"
    fields = ", ".join("{" + name + "}" for name in TEMPLATE_FIELDS)
    try:
        parsed = [field for _text, field, _spec, _conv in string.Formatter().parse(template) if field is not None]
    except ValueError as err:
        return [
            Error(
                f"{where} is not a filename template: {err}.",
                hint="Write every field as {name} and no other brace, e.g. InvenTree-db-{datetime}.{extension}",
                id="backup_app.E015",
            )
        ]
    messages = []
    numbered = [field for field in parsed if field == "" or field[0].isdigit()]
    if numbered:
        messages.append(
            Error(
                f"{where} has the field {{{numbered[0]}}}, which has no name: django-dbbackup fills fields by name.",
                hint=f"Name the field: use {fields}.",
                id="backup_app.E016",
            )
        )
    unknown = [field for field in parsed if field and not field[0].isdigit() and field not in TEMPLATE_FIELDS]
    if unknown:
        messages.append(
            Error(
                f"{where} has the field {{{unknown[0]}}}, which django-dbbackup does not fill: every backup "
                "would fail.",
                hint=f"Use only {fields}.",
                id="backup_app.E014",
            )
        )
    if "datetime" not in parsed:
        messages.append(
            Error(
                f"{where} has no {{datetime}}: backups would overwrite each other and could not be ordered.",
                hint="Put {datetime} into the template, e.g. InvenTree-db-{datetime}.{extension}",
                id="backup_app.E003",
            )
        )
    if "extension" not in parsed:
        messages.append(
            Error(
                f"{where} has no {{extension}}: the files could not be told apart by kind, compression and encryption.",
                hint="End the template with .{extension}, e.g. InvenTree-db-{datetime}.{extension}",
                id="backup_app.E013",
            )
        )
    if "/" in template:
        messages.append(
            Error(
                f"{where} contains '/': a filename template names a file, not a folder.",
                hint="Use a plain file name such as InvenTree-db-{datetime}.{extension}; the folder is backup_dir.",
                id="backup_app.E008",
            )
        )
    return messages


@register(TAG)
def check_names(app_configs=None, **kwargs):
    """The filename templates (:func:`_template_problems`); E004 no {databasename} with several databases;
    E007 date format whose timestamps do not read back, W007 one that does not go down to the second (a
    suffix tells two backups apart), E012 one that gives other characters than letters, digits, '-' and
    '_'."""
    messages = []
    templates = (
        ("backup_database_filename_template", app_settings.filename_template),
        ("backup_media_filename_template", app_settings.media_filename_template),
    )
    for key, template in templates:
        if not callable(template):
            messages += _template_problems(key, template)
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
        stamp = sample.strftime(fmt)
        read_back = datetime.strptime(stamp, fmt)
    except ValueError:
        stamp, read_back = "", None
    if read_back is None:
        messages.append(
            Error(
                f"{_env('backup_date_format')} ({fmt!r}) gives timestamps that cannot be read back "
                "(Python's strptime refuses them): backups could not be listed or ordered.",
                hint="Use the default %Y-%m-%d-%H%M%S, or a format of %Y %m %d %H %M %S and the like.",
                id="backup_app.E007",
            )
        )
    elif read_back != sample:
        messages.append(
            Warning(
                f"{_env('backup_date_format')} ({fmt!r}) does not go down to the second: a second backup with "
                f"the same timestamp gets a suffix ({stamp}{STAMP_SUFFIX_SEPARATOR}2, ...{STAMP_SUFFIX_SEPARATOR}3) "
                "that listings and restores understand.",
                hint="Fine for one backup a day; add %H%M%S to tell every backup apart by its name.",
                id="backup_app.W007",
            )
        )
    if re.search(r"[^A-Za-z0-9_-]", stamp or fmt.replace("%", "")):
        messages.append(
            Error(
                f"{_env('backup_date_format')} ({fmt!r}) gives timestamps such as {stamp!r}, with characters other "
                "than letters, digits, '-' and '_': not every storage keeps such names as they are.",
                hint="Use the default %Y-%m-%d-%H%M%S",
                id="backup_app.E012",
            )
        )
    return messages


@register(TAG)
def check_connectors(app_configs=None, **kwargs):
    """E017: a database's django-dbbackup connector class does not import; E018: it is no connector; E021: it is
    not one whose dumps backup_app makes for that database (e.g. DjangoConnector, SqliteConnector); E022:
    PostgreSQL's IF_EXISTS is false while DROP is on (with DROP false there is no DROP for it to guard)."""
    from dbbackup.db.base import CONNECTOR_MAPPING, DEFAULT_CONNECTOR, BaseDBConnector
    from django.db import connections

    messages = []
    mapping = {**CONNECTOR_MAPPING, **app_settings.connector_mapping}
    for alias in app_settings.databases:
        if alias not in connections.settings:
            continue
        path = app_settings.connector_options(alias).get("CONNECTOR")
        if path:
            where = f"{_env('backup_connector_options')} CONNECTOR of database '{alias}'"
            fix = "Fix the dotted path, or remove CONNECTOR to use django-dbbackup's own connector."
        else:
            engine = connections.settings[alias]["ENGINE"]
            path = mapping.get(engine, DEFAULT_CONNECTOR)
            where = f"the connector mapping's class for {engine} (database '{alias}')"
            fix = "Fix the dotted path in the connector mapping setting."
        try:
            cls = import_string(path)
        except ImportError as err:
            messages.append(Error(f"{where}: {path!r} cannot be imported ({err}).", hint=fix, id="backup_app.E017"))
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseDBConnector)):
            messages.append(
                Error(
                    f"{where}: {path!r} is not a django-dbbackup connector class.",
                    hint="Name a subclass of dbbackup.db.base.BaseDBConnector, e.g. "
                    "dbbackup.db.postgresql.PgDumpBinaryConnector.",
                    id="backup_app.E018",
                )
            )
            continue
        engine = engine_class(connections[alias].vendor)
        if engine is not None and not issubclass(cls, engine.connectors):
            messages.append(
                Error(
                    f"{where}: {unsupported_connector(alias, engine, cls)}.",
                    hint="Remove CONNECTOR to use django-dbbackup's default for the engine.",
                    id="backup_app.E021",
                )
            )
        options = app_settings.connector_options(alias)
        if (
            connections[alias].vendor == "postgresql"
            and options.get("IF_EXISTS", True) is False
            and options.get("DROP", True) is not False  # DROP false: no DROP at all, nothing for IF EXISTS
        ):
            messages.append(
                Error(
                    f"{_env('backup_connector_options')} IF_EXISTS of database '{alias}' is false while DROP is on, "
                    "which cannot apply: a restore loads the dump into a new, empty database (or drops the live "
                    "objects itself), where a DROP without IF EXISTS fails; django-dbbackup itself adds --if-exists "
                    "whenever DROP is on.",
                    hint="Remove IF_EXISTS, or set DROP false too (the dump then holds no DROP statement at all).",
                    id="backup_app.E022",
                )
            )
    return messages


@register(TAG)
def check_gpg(app_configs=None, **kwargs):
    """E009 GnuPG home not a folder, E010 gpg cannot be run, E005 no public key for the recipient."""
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
                f"{_env('backup_gpg_recipient')} is set but gpg cannot be run ({err}).",
                hint="Install GnuPG (apt-get install gnupg), or put it on the PATH.",
                id="backup_app.E010",
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
def check_app_settings(app_configs=None, **kwargs):
    """E023: a ``BACKUP_APP`` field set in the Django settings that its key's env/YAML value could not be
    (:func:`~backup_app.conf.app_value`: type, range, choices); one error per field."""
    return [
        Error(
            str(err),
            hint=f"Fix BACKUP_APP[{field!r}] in the settings, or leave it out and set "
            f"{app_settings.env_name(APP_FIELDS[field])} (or {APP_FIELDS[field]} in the config file).",
            id="backup_app.E023",
        )
        for field, err in app_settings.app_field_errors()
    ]


@register(TAG)
def check_unknown_keys(app_configs=None, **kwargs):
    """W004: a ``backup_*`` key of the config file, W005 a ``<prefix>BACKUP_*`` variable, that is no setting."""
    config = app_settings.config
    if config is None:
        return []
    messages = []
    for unknown in config.unknown:
        in_file = unknown.where != "the environment"
        messages.append(
            Warning(
                unknown.message,
                hint=(
                    f"Rename it to {unknown.closest}."
                    if unknown.closest
                    else "Remove it, or see config_template.yaml for the known keys."
                ),
                id="backup_app.W004" if in_file else "backup_app.W005",
            )
        )
    return messages


@register(TAG)
def check_stock_mail(app_configs=None, **kwargs):
    """W006: failures of stock dbbackup commands are not mailed (backup_app is listed before dbbackup)."""
    if not (app_settings.send_email and apps.is_installed("dbbackup")):
        return []
    from dbbackup.log import DbbackupAdminEmailHandler

    # backup_app's ready() replaces stock's handler; it is still there when dbbackup's ready() ran later.
    if not any(isinstance(handler, DbbackupAdminEmailHandler) for handler in logging.getLogger("dbbackup").handlers):
        return []
    return [
        Warning(
            "backup_send_email is on but failures of stock dbbackup/mediabackup commands are not mailed: "
            "django-dbbackup set up its logger after backup_app.",
            hint="List 'backup_app' after 'dbbackup' in INSTALLED_APPS.",
            id="backup_app.W006",
        )
    ]


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


@register(TAG)
def check_safety_space(app_configs=None, **kwargs):
    """W010: the safety copies of restores hold more than ``backup_safety_warn_percent`` of the free space where
    they are: the safety folder's file system for the files, the database server's data folder for the
    databases kept on a PostgreSQL or MariaDB server (``SITE_safety_...``), when this machine can see that
    folder (the server runs here and says where its data is); else the warning says it could not compare."""
    from .actions.list import kept_copies
    from .engines import engine_for

    folder = app_settings.safety_dir
    try:
        copies = kept_copies()
    except Exception:
        return []
    limit = app_settings.safety_warn_percent
    hint = (
        f"Roll back or let them expire: {hints.command('rollback', '--list')} lists them; lower "
        f"backup_safety_days ({hints.variable('backup_safety_days')}), or raise "
        f"backup_safety_warn_percent ({hints.variable('backup_safety_warn_percent')})."
    )
    found = []
    held = sum(c["bytes"] for c in copies)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if held and free is not None and held * 100 > free * limit:
        names = ", ".join(c["name"] for c in copies)
        found.append(
            Warning(
                f"the safety copies of restores in {folder} hold {held:,} bytes, more than {limit} % of the "
                f"{free:,} bytes free there ({names})",
                hint=hint,
                id="backup_app.W010",
            )
        )
    by_alias: dict[str, list[dict]] = {}
    for copy in copies:
        for kept in copy["server_databases"]:
            if kept["bytes"]:
                by_alias.setdefault(kept["alias"], []).append(kept)
    for alias, kept in by_alias.items():
        held = sum(k["bytes"] for k in kept)
        names = ", ".join(k["database"] for k in kept)
        try:
            engine = engine_for(alias)
            seen = engine.server_free_bytes()
            server = engine.server
        except Exception:
            seen, server = None, "database"
        if seen is None:
            # Nothing to compare with: say what is kept there, and that its disk could not be weighed.
            found.append(
                Warning(
                    f"safety databases of restores kept on the {server} server of database '{alias}' hold "
                    f"{held:,} bytes ({names}); the free space of that server's disk cannot be read from here "
                    "(the server runs elsewhere, or does not say where its data is), so it was not compared "
                    "with backup_safety_warn_percent",
                    hint=hint,
                    id="backup_app.W010",
                )
            )
        elif held * 100 > seen[1] * limit:
            found.append(
                Warning(
                    f"safety databases of restores kept on the {server} server of database '{alias}' hold "
                    f"{held:,} bytes ({names}), more than {limit} % of the {seen[1]:,} bytes free in its data "
                    f"folder {seen[0]}",
                    hint=hint,
                    id="backup_app.W010",
                )
            )
    return found


@register(TAG, Tags.database)
def check_superuser(app_configs=None, databases=None, **kwargs):
    """W009: the site's PostgreSQL role is a superuser (run by ``check --database ALIAS`` and by ``migrate``)."""
    from django.db import connections

    found = []
    for alias in databases or []:
        connection = connections[alias]
        if connection.vendor != "postgresql":
            continue
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
                user, superuser = cursor.fetchone()
        except Exception:  # unreachable: other checks and the commands say so
            continue
        if superuser:
            found.append(
                Warning(
                    f"database '{alias}' is reached as the PostgreSQL superuser {user!r}: whatever runs as the site "
                    "(a bug, a crafted request) can act on every database of the server, read its files and run "
                    "programs. Restores load dumps as a throwaway role without those rights.",
                    hint="Give the site a role of its own that owns its database and is no superuser.",
                    id="backup_app.W009",
                )
            )
    return found
