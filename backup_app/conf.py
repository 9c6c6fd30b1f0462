"""The loader of the configuration: environment and YAML file, once, when the settings module runs.

Run-time code does not read what this module produces directly: it goes through the typed accessor
:data:`backup_app.settings.app_settings`.

Every value is resolved environment variable > YAML key > default, coerced to
its type, and remembered together with where it came from.  A value that does
not parse is a :class:`ConfigError` naming the variable, the reason and the
fix; nothing is ever silently replaced by a default.

:func:`apply_backup_settings` turns the resolved values into the Django and
django-dbbackup settings of a project::

    # settings.py of any Django project
    from backup_app.conf import apply_backup_settings
    apply_backup_settings(globals())                      # INVENTREE_* / backup_*
    apply_backup_settings(globals(), prefix="MYSITE_")   # MYSITE_BACKUP_* instead

A site reads its own keys (database, media folder, mail: the demo site's are in ``config/settings.py``)
with the same :class:`Key` table and :func:`load_config`.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.core.exceptions import ImproperlyConfigured

from .errors import BackupAppError

DEFAULT_PREFIX = "INVENTREE_"

logger = logging.getLogger("backup_app")

# --- which values are secret --------------------------------------------------------------------
# The rules live here, at the bottom of the package, so that the loader's own messages follow them too;
# backup_app.secrets applies them to the settings in force (known_secrets, redact).

MASK = "********"
#: Names of settings and option keys whose values must never be shown.
SECRET_WORDS = re.compile(
    r"pass|pwd|secret|token|key|credential|auth|private|signature|connection_string", re.IGNORECASE
)
#: Connector options holding the environment of the dump and restore tools (``MYSQL_PWD``, ``PGPASSWORD``):
#: every value under them is masked, whatever the variable's name.
ENV_OPTIONS = re.compile(r"^((dump|restore)_)?env$", re.IGNORECASE)
#: Connector options that are command-line words (``DUMP_SUFFIX``, ``RESTORE_PREFIX``, ``DUMP_CMD``,
#: ``PG_OPTIONS``): a password given there as ``-pSECRET`` is masked too.
ARGUMENT_OPTIONS = re.compile(r"(prefix|suffix|cmd|options)$", re.IGNORECASE)
#: The password in a URL (``ftp://user:PASSWORD@host/``, ``redis://:PASSWORD@host``).
URL_PASSWORD = re.compile(r"(?<=://)([^:/@\s]*):([^@\s]+)@")
#: A secret written ``name=value`` inside a text: ``--password=X``, an Azure connection string's ``AccountKey=``,
#: a SAS token's ``sig=``.
INLINE_SECRET = re.compile(
    r"\b(accountkey|sharedaccesssignature|sig|password|passwd|pwd|secret|token)=([^;&\s'\"]+)", re.IGNORECASE
)


def is_secret_key(name: object) -> bool:
    """Whether a setting or option called ``name`` holds a secret (``PASSWORD``, ``secret_key``, ``MYSQL_PWD``)."""
    return bool(SECRET_WORDS.search(str(name)))


def secret_parts(text: str, *, arguments: bool = False) -> list[str]:
    """The secrets written inside ``text``: URL passwords, ``name=value`` secrets and, when ``text`` is
    command-line words (``arguments``), ``-pSECRET``.  A command line that cannot be split is a secret whole."""
    parts = [m.group(2) for m in URL_PASSWORD.finditer(text)]
    parts += [m.group(2) for m in INLINE_SECRET.finditer(text)]
    if arguments:
        try:
            words = shlex.split(text)
        except ValueError:
            return [text]
        for word in words:
            if word.startswith("--password="):
                parts.append(word.split("=", 1)[1])
            elif word.startswith("-p") and len(word) > 2:
                parts.append(word[2:])
    return [part for part in parts if part]


def _children(key: str, value: Any, secret: bool) -> Iterator[tuple[str, Any, bool]]:
    """``(key, value, secret)`` of each item of a mapping or list ``value``; secrecy passes down."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            # Under ENV / DUMP_ENV / RESTORE_ENV every value is a secret (MYSQL_PWD, PGPASSWORD...).
            inner = secret or is_secret_key(name) or bool(ENV_OPTIONS.match(str(key)))
            yield str(name), item, inner
    else:
        for item in value:
            yield key, item, secret


def redact_value(value: Any, secret: bool = False, *, key: str = "") -> Any:
    """``value`` (a setting, or an option tree) with every secret replaced by ``'********'``.

    ``secret``: the value is secret as a whole.  In mappings, keys are looked at by name (:func:`is_secret_key`),
    every value under ``ENV``/``DUMP_ENV``/``RESTORE_ENV`` is masked, and texts lose their
    :func:`secret_parts`.  ``key`` is the name ``value`` is held under.
    """
    if value is None or (isinstance(value, str) and value == ""):
        return value
    if isinstance(value, Mapping):
        return {name: redact_value(item, inner, key=name) for name, item, inner in _children(key, value, secret)}
    if isinstance(value, list | tuple):
        return [redact_value(item, inner, key=name) for name, item, inner in _children(key, value, secret)]
    if secret:
        return MASK
    if isinstance(value, str):
        for part in sorted(secret_parts(value, arguments=bool(ARGUMENT_OPTIONS.search(key))), key=len, reverse=True):
            value = value.replace(part, MASK)
    return value


def secret_values(value: Any, secret: bool = False, *, key: str = "") -> set[str]:
    """Every secret text held in ``value``, by the rules of :func:`redact_value` (what it would mask)."""
    if isinstance(value, Mapping | list | tuple):
        found: set[str] = set()
        for name, item, inner in _children(key, value, secret):
            found |= secret_values(item, inner, key=name)
        return found
    if value is None or isinstance(value, bool):
        return set()
    if secret:
        return {str(value)}
    if isinstance(value, str):
        return set(secret_parts(value, arguments=bool(ARGUMENT_OPTIONS.search(key))))
    return set()


#: Extra of this package that brings in each django-storages backend's packages.
STORAGE_EXTRAS = {
    "storages.backends.s3": "s3",
    "storages.backends.s3boto3": "s3",
    "storages.backends.gcloud": "gcs",
    "storages.backends.azure_storage": "azure",
    "storages.backends.sftpstorage": "sftp",
    "storages.backends.dropbox": "dropbox",
}

#: Option of each known storage class that ``backup_dir`` fills in.
STORAGE_DIR_OPTION = {
    "django.core.files.storage.FileSystemStorage": "location",
    "django.core.files.storage.filesystem.FileSystemStorage": "location",
    "storages.backends.s3.S3Storage": "location",
    "storages.backends.s3boto3.S3Boto3Storage": "location",
    "storages.backends.gcloud.GoogleCloudStorage": "location",
    "storages.backends.azure_storage.AzureStorage": "location",
    "storages.backends.sftpstorage.SFTPStorage": "root_path",
    "storages.backends.dropbox.DropboxStorage": "root_path",
}

FILESYSTEM_STORAGES = {
    "django.core.files.storage.FileSystemStorage",
    "django.core.files.storage.filesystem.FileSystemStorage",
}

COMPRESSIONS = ("gzip", "zstd", "none")
MEDIA_MODES = ("archive", "incremental")

#: Safety copies go next to ``BASE_DIR`` (not inside the project) when ``backup_safety_dir`` is unset:
#: ``/srv/mysite`` -> ``/srv/mysite-backup-safety``.
DEFAULT_SAFETY_SUFFIX = "-backup-safety"

#: django-q2's settings for a site that has no ``Q_CLUSTER``: the database broker (no other service), one
#: worker, and ``retry`` above the backup tasks' own 6-hour timeout (``backup_app.schedule.TASK_TIMEOUT``; check
#: W002), so that the broker never hands a running backup out again.  ``catch_up`` off: after downtime the
#: hourly check runs once, not once per missed hour.
DEFAULT_Q_CLUSTER = {"name": "backup_app", "workers": 1, "timeout": 6 * 3600, "retry": 7 * 3600, "catch_up": False}


def safety_dir_beside(base_dir: str | os.PathLike) -> Path:
    """The folder next to ``base_dir`` named after it: ``/srv/mysite`` -> ``/srv/mysite-backup-safety``."""
    base = Path(base_dir).resolve()
    return base.parent / (base.name + DEFAULT_SAFETY_SUFFIX) if base.name else base / DEFAULT_SAFETY_SUFFIX[1:]


class ConfigError(ImproperlyConfigured):
    """A configuration value that cannot be used; the message is one line."""


class NotAStorage(ConfigError):
    """The storage class imports but is no Django storage."""


@dataclass(frozen=True)
class Key:
    """One configuration key.

    ``name`` is the YAML key (``a.B`` for key ``B`` of mapping ``a``), ``env``
    the environment variable without its prefix.
    """

    name: str
    env: str
    default: Any
    kind: str = "str"  # str, path, bool, int, dict, list
    help: str = ""
    secret: bool = False
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()


BACKUP_KEYS: tuple[Key, ...] = (
    Key(
        "backup_storage",
        "BACKUP_STORAGE",
        "django.core.files.storage.FileSystemStorage",
        help="Backup storage backend (dotted path of a Django storage class).",
    ),
    Key(
        "backup_dir",
        "BACKUP_DIR",
        None,
        kind="path",
        help="Backup storage directory (local folder, or the prefix inside a remote store).",
    ),
    Key(
        "backup_options",
        "BACKUP_OPTIONS",
        None,
        kind="dict",
        help="Options passed to the storage backend (JSON object in env, mapping in YAML).",
    ),
    Key(
        "backup_connector_options",
        "BACKUP_CONNECTOR_OPTIONS",
        None,
        kind="dict",
        help="Options for django-dbbackup's database connector (dict).",
    ),
    Key(
        "backup_send_email",
        "BACKUP_SEND_EMAIL",
        False,
        kind="bool",
        help="Email the site admins when a backup or restore fails.",
    ),
    Key(
        "backup_email_prefix",
        "BACKUP_EMAIL_PREFIX",
        "[InvenTree Backup]",
        help="Prefix for the subject line of backup emails.",
    ),
    Key(
        "backup_gpg_recipient",
        "BACKUP_GPG_RECIPIENT",
        None,
        help="GPG recipient (key id, fingerprint or email) used by --encrypt.",
    ),
    Key(
        "backup_date_format",
        "BACKUP_DATE_FORMAT",
        "%Y-%m-%d-%H%M%S",
        help="strftime format of the timestamp in backup filenames.",
    ),
    Key(
        "backup_database_filename_template",
        "BACKUP_DATABASE_FILENAME_TEMPLATE",
        "InvenTree-db-{datetime}.{extension}",
        help="Filename template of database backups.",
    ),
    Key(
        "backup_media_filename_template",
        "BACKUP_MEDIA_FILENAME_TEMPLATE",
        "InvenTree-media-{datetime}.{extension}",
        help="Filename template of media backups.",
    ),
    Key(
        "backup_compression",
        "BACKUP_COMPRESSION",
        "gzip",
        choices=COMPRESSIONS,
        help="Compression of backup files: gzip, zstd or none.",
    ),
    Key(
        "backup_media_mode",
        "BACKUP_MEDIA_MODE",
        "archive",
        choices=MEDIA_MODES,
        help="Media in each set: archive (a full tar, read by stock mediarestore) or incremental (deduplicated).",
    ),
    Key(
        "backup_media_repack_percent",
        "BACKUP_MEDIA_REPACK_PERCENT",
        50,
        kind="int",
        minimum=0,
        maximum=100,
        help="Incremental media: a prune repacks a pack of which less than this percent is still needed (0: never).",
    ),
    Key(
        "backup_keep",
        "BACKUP_KEEP",
        10,
        kind="int",
        minimum=1,
        help="Number of complete backup sets kept by --clean.",
    ),
    Key(
        "backup_keep_daily",
        "BACKUP_KEEP_DAILY",
        0,
        kind="int",
        minimum=0,
        help="Also keep the newest set of each of the last N days (0 = unused).",
    ),
    Key(
        "backup_keep_weekly",
        "BACKUP_KEEP_WEEKLY",
        0,
        kind="int",
        minimum=0,
        help="Also keep the newest set of each of the last N weeks (0 = unused).",
    ),
    Key(
        "backup_keep_monthly",
        "BACKUP_KEEP_MONTHLY",
        0,
        kind="int",
        minimum=0,
        help="Also keep the newest set of each of the last N months (0 = unused).",
    ),
    Key(
        "backup_gpg_home",
        "BACKUP_GPG_HOME",
        None,
        kind="path",
        help="GnuPG home directory holding the backup keys (default: gpg's own).",
    ),
    Key(
        "backup_gpg_passphrase_file",
        "BACKUP_GPG_PASSPHRASE_FILE",
        None,
        kind="path",
        help="File holding the passphrase of the secret key used to decrypt backups.",
    ),
    Key(
        "backup_gpg_passphrase",
        "BACKUP_GPG_PASSPHRASE",
        None,
        secret=True,
        help="Passphrase of the secret key used to decrypt backups (prefer the file).",
    ),
    Key(
        "backup_restore_allow_newer_version",
        "BACKUP_RESTORE_ALLOW_NEWER_VERSION",
        False,
        kind="bool",
        help="Restore a backup that DBBACKUP_RESTORE_METADATA_VALIDATOR refuses (InvenTree: one from a newer "
        "version); like restore --restore-allow-newer-version.",
    ),
    Key(
        "backup_restore_warn_age_days",
        "BACKUP_RESTORE_WARN_AGE_DAYS",
        120,
        kind="int",
        minimum=0,
        help="A restore warns when the backup is older than this many days (0 = never), as InvenTree's does.",
    ),
    Key(
        "backup_site_id",
        "BACKUP_SITE_ID",
        None,
        help="Identity recorded in this site's backup sets (default: derived from its databases); restore and "
        "--clean use only this site's sets.",
    ),
    Key(
        "backup_storage_timeout",
        "BACKUP_STORAGE_TIMEOUT",
        60,
        kind="int",
        minimum=1,
        help="Seconds a remote backup storage may stay silent (connecting, or within one request) before the "
        "request fails.",
    ),
    Key(
        "backup_storage_retries",
        "BACKUP_STORAGE_RETRIES",
        3,
        kind="int",
        minimum=0,
        help="Times a remote storage request that timed out, lost its connection or failed on the server's side "
        "is tried again (S3, GCS, Azure, SFTP, FTP).",
    ),
    Key(
        "backup_db_lock_timeout",
        "BACKUP_DB_LOCK_TIMEOUT",
        10,
        kind="int",
        minimum=1,
        help="Seconds a MariaDB restore waits for live tables another connection holds before it stops, "
        "changing nothing.",
    ),
    Key(
        "backup_safety",
        "BACKUP_SAFETY",
        True,
        kind="bool",
        help="Keep the current state before a restore replaces it.",
    ),
    Key(
        "backup_safety_dir",
        "BACKUP_SAFETY_DIR",
        None,
        kind="path",
        help="Local folder for the safety copies restores keep (default: backup-safety next to the data).",
    ),
    Key(
        "backup_safety_days",
        "BACKUP_SAFETY_DAYS",
        7,
        kind="int",
        minimum=0,
        help="Days a restore's safety copy is kept before it expires.",
    ),
    Key(
        "backup_safety_warn_percent",
        "BACKUP_SAFETY_WARN_PERCENT",
        50,
        kind="int",
        minimum=1,
        help="Check W010 warns when the safety copies hold more than this percent of the free space where they are.",
    ),
    Key(
        "backup_databases",
        "BACKUP_DATABASES",
        None,
        kind="list",
        help="Database aliases to back up (default: every alias in DATABASES).",
    ),
    Key(
        "backup_notify_urls",
        "BACKUP_NOTIFY_URLS",
        None,
        kind="list",
        secret=True,
        help="Apprise URLs told when a backup or restore fails (chat, pager, mail...): a list, or commas in env.",
    ),
    Key(
        "backup_notify_on_success",
        "BACKUP_NOTIFY_ON_SUCCESS",
        False,
        kind="bool",
        help="Also tell backup_notify_urls when a backup or restore succeeds.",
    ),
    Key(
        "backup_ping_url",
        "BACKUP_PING_URL",
        None,
        secret=True,
        help="Dead-man's-switch URL (healthchecks.io style): URL/start, URL (success), URL/fail around every run.",
    ),
)

_KEYS_BY_NAME: dict[str, Key] = {key.name: key for key in BACKUP_KEYS}

#: The ``BACKUP_APP`` field each configuration key becomes as it is (``backup_keep`` -> ``BACKUP_APP["KEEP"]``).
#: A project may also set these fields in its Django settings itself: :func:`app_value` checks them there as
#: :func:`coerce` checks the key's environment variable or YAML value.
APP_FIELDS: dict[str, str] = {
    "COMPRESSION": "backup_compression",
    "MEDIA_MODE": "backup_media_mode",
    "MEDIA_REPACK_PERCENT": "backup_media_repack_percent",
    "KEEP": "backup_keep",
    "KEEP_DAILY": "backup_keep_daily",
    "KEEP_WEEKLY": "backup_keep_weekly",
    "KEEP_MONTHLY": "backup_keep_monthly",
    "GPG_HOME": "backup_gpg_home",
    "GPG_PASSPHRASE_FILE": "backup_gpg_passphrase_file",
    "GPG_PASSPHRASE": "backup_gpg_passphrase",
    "SAFETY": "backup_safety",
    "SAFETY_DIR": "backup_safety_dir",
    "SAFETY_DAYS": "backup_safety_days",
    "SAFETY_WARN_PERCENT": "backup_safety_warn_percent",
    "NOTIFY_URLS": "backup_notify_urls",
    "NOTIFY_ON_SUCCESS": "backup_notify_on_success",
    "PING_URL": "backup_ping_url",
    "RESTORE_WARN_AGE_DAYS": "backup_restore_warn_age_days",
    "DB_LOCK_TIMEOUT": "backup_db_lock_timeout",
    "SITE_ID": "backup_site_id",
    "STORAGE_TIMEOUT": "backup_storage_timeout",
    "STORAGE_RETRIES": "backup_storage_retries",
    "DIR": "backup_dir",
    "EMAIL_PREFIX": "backup_email_prefix",
}

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


@dataclass(frozen=True, repr=False)
class Resolved:
    """A resolved value and where it came from (``env``, ``yaml`` or ``default``)."""

    key: Key
    value: Any
    source: str
    origin: str

    @property
    def shown(self) -> Any:
        """The value as it may be shown: secrets masked."""
        return redact_value(self.value, secret=self.key.secret, key=self.key.name)

    def __repr__(self) -> str:
        return f"Resolved({self.key.name}={self.shown!r}, source={self.source!r}, origin={self.origin!r})"


@dataclass(frozen=True)
class Unknown:
    """A key of the config file (``backup_dri``) or a variable (``INVENTREE_BACKUP_DRI``) that is no known key."""

    name: str
    where: str  # the file, or "environment"
    closest: str | None  # the known key it most resembles

    @property
    def message(self) -> str:
        guess = f"; did you mean {self.closest}?" if self.closest else ""
        return f"{self.name} (in {self.where}) is not a backup setting and is ignored{guess}"


@dataclass(repr=False)
class Config:
    """Resolved configuration: ``config["backup_dir"]`` gives a value."""

    values: dict[str, Resolved]
    prefix: str = DEFAULT_PREFIX
    file: Path | None = None
    notes: list[str] = field(default_factory=list)
    #: Keys and variables that look like backup settings but are none (typos): system check warnings.
    unknown: list[Unknown] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.values[name].value

    def get(self, name: str, default: Any = None) -> Any:
        return self.values[name].value if name in self.values else default

    def env_name(self, name: str) -> str:
        return self.prefix + self.values[name].key.env

    def source(self, name: str) -> str:
        return self.values[name].source

    def origin(self, name: str) -> str:
        """Where ``name``'s value was set: its variable, ``<file>: <key>``, or the variable when it is a default."""
        res = self.values[name]
        return res.origin if res.source != "default" else self.env_name(name)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """``(yaml key, env variable, shown value, origin)`` for every key, secrets redacted."""
        rows = []
        for name, res in self.values.items():
            value = res.shown
            shown = json.dumps(value) if isinstance(value, dict | list) else str(value)
            rows.append((name, self.prefix + res.key.env, shown, res.origin))
        return rows

    def __repr__(self) -> str:
        # Shown in Django's error pages and mails (settings CONFIG, BACKUP_APP_CONFIG): never a secret.
        shown = {name: res.shown for name, res in self.values.items()}
        return f"Config(prefix={self.prefix!r}, file={str(self.file) if self.file else None!r}, values={shown!r})"


def _type_name(raw: Any) -> str:
    if isinstance(raw, bool):
        return "boolean"
    names = {dict: "mapping", list: "list", str: "text", int: "number", float: "number"}
    return names.get(type(raw), type(raw).__name__)


def _value(key: Key, raw: Any) -> str:
    """``raw`` as an error message may show it: a secret key's value never."""
    return "the value (secret, not shown)" if key.secret else repr(raw)


def _described(key: Key, raw: Any) -> str:
    """``list ['a', 'b']``, or ``a list (secret, not shown)`` for a secret key."""
    return f"a {_type_name(raw)} (secret, not shown)" if key.secret else f"{_type_name(raw)} {raw!r}"


def coerce(key: Key, raw: Any, where: str) -> Any:
    """Convert ``raw`` (a string from the environment, or a YAML value) to ``key``'s type.

    Raises :class:`ConfigError` naming ``where`` (the variable or YAML key), the value (never a secret one)
    and the fix.
    """
    from_env = isinstance(raw, str)
    if key.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str | int) and str(raw).strip().lower() in _TRUE | _FALSE:
            return str(raw).strip().lower() in _TRUE
        raise ConfigError(f"{where}: {_value(key, raw)} is not a boolean; use true or false")
    if key.kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ConfigError(f"{where}: {_value(key, raw)} is not a whole number; use e.g. {key.default}")
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{where}: {_value(key, raw)} is not a whole number; use e.g. {key.default}") from None
        if key.minimum is not None and value < key.minimum:
            raise ConfigError(f"{where}: {value} is too small; use a number of at least {key.minimum}")
        if key.maximum is not None and value > key.maximum:
            raise ConfigError(f"{where}: {value} is too large; use a number of at most {key.maximum}")
        return value
    if key.kind == "dict":
        if from_env:
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as err:
                raise ConfigError(
                    f"{where}: not valid JSON ({err.msg} at column {err.colno}); "
                    'give a JSON object such as {"key": "value"}'
                ) from None
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{where}: expected a mapping (a JSON object in the environment), got {_described(key, raw)}; "
                'give a mapping such as {"key": "value"}'
            )
        return raw
    if key.kind == "list":
        if from_env:
            text = raw.strip()
            if text.startswith("["):
                try:
                    raw = json.loads(text)
                except json.JSONDecodeError as err:
                    raise ConfigError(
                        f"{where}: not valid JSON ({err.msg}); give a JSON list or a comma list"
                    ) from None
            else:
                raw = [part.strip() for part in text.split(",") if part.strip()]
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            raise ConfigError(
                f"{where}: expected a list of names, got {_described(key, raw)}; give a list such as [default]"
            )
        return raw
    if key.kind == "path":
        # A YAML number (backup_dir: 5) is a mistake, not a folder "5" in whatever folder the command runs in.
        if not isinstance(raw, str):
            raise ConfigError(
                f"{where}: expected text (a path), got {_described(key, raw)}; "
                "write the path as text, e.g. /srv/backups"
            )
        return raw
    # str
    if isinstance(raw, bool) or isinstance(raw, dict | list):
        raise ConfigError(f"{where}: expected text, got {_described(key, raw)}; write it as text")
    value = str(raw)
    if key.choices and value not in key.choices:
        raise ConfigError(f"{where}: {_value(key, value)} is not one of {', '.join(key.choices)}; use one of them")
    return value


class SettingError(ConfigError, BackupAppError):
    """A ``BACKUP_APP`` field set in the Django settings that cannot be used (one line: the field and the fix)."""


#: The Python type a ``BACKUP_APP`` field of each kind of key must have, and how to write one.
_APP_TYPES: dict[str, tuple[tuple[type, ...], str, str]] = {
    "bool": ((bool,), "a boolean", "write True or False"),
    "int": ((int,), "a whole number", "write a number such as {default}"),
    "dict": ((dict,), "a mapping", 'write a dict such as {{"key": "value"}}'),
    "list": ((list,), "a list of names", 'write a list such as ["default"]'),
    "path": ((str, os.PathLike), "a path", 'write the path as text, e.g. "/srv/backups"'),
    "str": ((str,), "text", "write it as text"),
}


def app_value(field: str, value: Any) -> Any:
    """``BACKUP_APP[field]`` as a project's settings give it, checked as the environment or YAML value of its key
    is (:func:`coerce`: type, range, choices), and of the type the key's value has there: ``"false"`` is no
    boolean here (it would read as true), ``"5"`` no number.  Raises :class:`SettingError` naming the field, the
    value (never a secret one) and the fix.  A field of no key is returned as it is."""
    name = APP_FIELDS.get(field)
    if name is None:
        return value
    key = _KEYS_BY_NAME[name]
    where = f'BACKUP_APP["{field}"]'
    if value is None:
        if key.default is None:
            return None
        raise SettingError(f"{where}: None is no value; {_example(key)}, or leave the field out for the default")
    types, noun, _how = _APP_TYPES[key.kind]
    value = _as_before(key, value)
    if not isinstance(value, types) or (key.kind == "int" and isinstance(value, bool)):
        raise SettingError(f"{where}: {_described(key, value)} is not {noun}; {_example(key)}")
    try:
        coerced = coerce(key, os.fspath(value) if key.kind == "path" else value, where)
    except ConfigError as err:
        raise SettingError(str(err)) from None
    return value if key.kind == "path" else coerced


def _as_before(key: Key, value: Any) -> Any:
    """A direct value that was used as meant before fields were checked, in the key's type: a tuple of names
    (``list()`` was taken of it), 0 or 1 for a bool (read by its truth), a whole float for an int (30.0), a
    number for text (``SITE_ID = 1``, as YAML's ``backup_site_id: 1`` reads).  Text for a bool or an int stays
    refused: ``"false"`` read as true."""
    if key.kind == "list" and isinstance(value, tuple):
        return list(value)
    if key.kind == "bool" and type(value) is int and value in (0, 1):
        return bool(value)
    if key.kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if key.kind == "str" and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _example(key: Key) -> str:
    return _APP_TYPES[key.kind][2].format(default=key.default)


def _yaml_lookup(data: Mapping, dotted: str) -> tuple[bool, Any]:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_parents(data: Mapping, keys: Iterable[Key], path: Path | None) -> None:
    """A mapping of keys written as something else (``database: [a, b]``) is an error, not "nothing set"."""
    under: dict[str, list[Key]] = {}
    for key in keys:
        parts = key.name.split(".")
        for depth in range(1, len(parts)):
            under.setdefault(".".join(parts[:depth]), []).append(key)
    for parent in sorted(under, key=lambda name: name.count(".")):
        found, node = _yaml_lookup(data, parent)
        if not found or node is None or isinstance(node, Mapping):
            continue
        children = [key.name[len(parent) + 1 :] for key in under[parent]]
        # A lone text or number there may be one of the secrets meant to go under it: not shown then.
        hidden = any(key.secret for key in under[parent]) and not isinstance(node, list)
        shown = _described(Key(parent, "", None, secret=hidden), node)
        raise ConfigError(
            f"{path}: {parent}: expected a mapping of {', '.join(children)}, got {shown}; "
            f"write its keys under it, e.g. {parent}: {{{children[0]}: ...}}"
        )


def _closest(name: str, known: Iterable[str], head: str) -> str | None:
    """The known name most like ``name``, compared after their common ``head`` (``backup_``), which would
    otherwise make every name look alike."""
    tails = {k[len(head) :].lower(): k for k in known}
    match = difflib.get_close_matches(name[len(head) :].lower(), list(tails), n=1, cutoff=0.6)
    return tails[match[0]] if match else None


def _unknown_keys(data: Mapping, environ: Mapping[str, str], keys: list[Key], prefix: str, path) -> list[Unknown]:
    """``backup_*`` keys of the file and ``<prefix>BACKUP_*`` variables that are no key of ``keys``."""
    found = []
    top = {key.name.split(".")[0] for key in keys}
    yaml_known = sorted(name for name in top if name.startswith("backup_"))
    for name in data:
        if isinstance(name, str) and name.startswith("backup_") and name not in top:
            found.append(Unknown(name, str(path), _closest(name, yaml_known, "backup_")))
    head = prefix + "BACKUP_"
    env_known = {prefix + key.env for key in keys}
    for name in sorted(environ):
        if name.startswith(head) and name not in env_known and environ[name] != "":
            found.append(Unknown(name, "the environment", _closest(name, sorted(env_known), head)))
    return found


def read_yaml(path: Path) -> dict:
    """Read the YAML config file; an empty file is an empty mapping."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)}); fix the file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config file must be a YAML mapping of keys to values")
    return data


def load_config(
    *,
    prefix: str = DEFAULT_PREFIX,
    config_file: str | os.PathLike | None = None,
    template: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    keys: Iterable[Key] = BACKUP_KEYS,
) -> Config:
    """Resolve ``keys`` from the environment, the YAML file and the defaults.

    The file is ``$<prefix>CONFIG_FILE`` if set, else ``config_file``; when that
    file is missing and ``template`` is given, the template is copied there
    first.  An environment variable set to the empty string counts as unset.
    """
    environ = os.environ if environ is None else environ
    path: Path | None = None
    if environ.get(prefix + "CONFIG_FILE"):
        path = Path(environ[prefix + "CONFIG_FILE"])
        if not path.exists():
            raise ConfigError(f"{prefix}CONFIG_FILE: {path} does not exist; create it or unset the variable")
    elif config_file is not None:
        path = Path(config_file)
        if not path.exists() and template is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(template, path)
    data = read_yaml(path) if path is not None and path.exists() else {}
    keys = list(keys)
    _check_parents(data, keys, path)

    values: dict[str, Resolved] = {}
    for key in keys:
        env_name = prefix + key.env
        if environ.get(env_name, "") != "":
            value = coerce(key, environ[env_name], env_name)
            values[key.name] = Resolved(key, value, "env", env_name)
            continue
        found, raw = _yaml_lookup(data, key.name)
        if found and raw is not None and raw != "":
            value = coerce(key, raw, f"{path}: {key.name}")
            values[key.name] = Resolved(key, value, "yaml", f"{path}: {key.name}")
            continue
        values[key.name] = Resolved(key, key.default, "default", "default")
    return Config(values=values, prefix=prefix, file=path, unknown=_unknown_keys(data, environ, keys, prefix, path))


def import_storage_class(path: str, where: str = "backup_storage") -> type:
    """Import a storage class by dotted path.

    Raises :class:`ConfigError` that names the pip extra for django-storages
    backends whose packages are missing, or :class:`NotAStorage` when the class is not a Storage.
    """
    from django.core.files.storage import Storage
    from django.utils.module_loading import import_string

    try:
        cls = import_string(path)
    except (ImportError, ImproperlyConfigured) as err:
        # django-storages backends raise ImproperlyConfigured when their packages are missing.
        module = path.rsplit(".", 1)[0]
        extra = STORAGE_EXTRAS.get(module)
        fix = (
            f"install it with: pip install 'backup_app[{extra}]'"
            if extra
            else "check the dotted path and that its package is installed"
        )
        reason = " ".join(str(err).split()[:12])
        raise ConfigError(f"{where}: cannot import {path!r} ({reason}); {fix}") from None
    if not (isinstance(cls, type) and issubclass(cls, Storage)):
        raise NotAStorage(
            f"{where}: {path!r} is not a Django Storage class; name a subclass of django.core.files.storage.Storage"
        )
    return cls


#: django-dbbackup connector options whose values are command-line words: text, or a list of texts.
_WORD_OPTIONS = ("DUMP_CMD", "RESTORE_CMD", "DUMP_PREFIX", "DUMP_SUFFIX", "RESTORE_PREFIX", "RESTORE_SUFFIX")
_BOOL_OPTIONS = ("SINGLE_TRANSACTION", "DROP", "USE_PARENT_ENV", "IF_EXISTS", "NO_OWNER")


def _check_connector_options(opts: Mapping, where: str) -> None:
    """Raise ConfigError for a django-dbbackup connector option of the wrong type (``where``: e.g.
    ``INVENTREE_BACKUP_CONNECTOR_OPTIONS`` or ``...: default``); the value is shown masked."""

    def fail(name: str, value: Any, expected: str, fix: str) -> None:
        shown = redact_value(value, key=name)
        raise ConfigError(f"{where}: {name}: {json.dumps(shown, default=str)} is not {expected}; {fix}")

    for name, value in opts.items():
        upper = str(name).upper()
        if upper == "EXCLUDE" and not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            fail(name, value, "a table name or a list of table names", 'give a list such as ["audit_log"]')
        elif upper in ("SCHEMAS",) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            fail(name, value, "a list of schema names", 'give a list such as ["public"]')
        elif upper == "CONNECTOR" and not isinstance(value, str):
            fail(name, value, "a dotted path", 'give the connector class, e.g. "dbbackup.db.mysql.MysqlDumpConnector"')
        elif ENV_OPTIONS.match(upper) and not (
            isinstance(value, Mapping) and all(isinstance(v, str | int) for v in value.values())
        ):
            fail(name, value, "a mapping of variable names to text", 'give e.g. {"LANG": "C.UTF-8"}')
        elif upper in _WORD_OPTIONS and not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            fail(name, value, "a command line", 'give it as text such as "nice -n 10", or a list of words')
        elif upper in _BOOL_OPTIONS and not isinstance(value, bool):
            fail(name, value, "true or false", "use true or false")


def _connector_settings(
    options: dict | None, aliases: list[str], all_aliases: list[str], where: str = "backup_connector_options"
) -> dict[str, dict]:
    """Build ``DBBACKUP_CONNECTORS``: one dict per alias, ``django_session`` data excluded.

    ``options`` is either one dict applied to every alias, or a dict whose keys
    are all aliases and whose values are dicts (options per alias).  An option of the wrong type is a
    :class:`ConfigError` naming ``where`` (the variable or YAML key the options came from).
    """
    options = options or {}
    per_alias = bool(options) and all(k in all_aliases and isinstance(v, dict) for k, v in options.items())
    result = {}
    for alias in aliases:
        opts = dict(options.get(alias, {}) if per_alias else options)
        _check_connector_options(opts, f"{where}: {alias}" if per_alias else where)
        exclude = {"django_session"}
        for spelling in ("EXCLUDE", "exclude", "Exclude"):
            value = opts.pop(spelling, None) or []
            exclude.update([value] if isinstance(value, str) else value)
        opts["EXCLUDE"] = sorted(exclude)
        result[alias] = opts
    return result


def file_mode(value: Any) -> int | None:
    """A file mode given as a number (``384``, YAML ``0o600``) or as octal text (``"600"``, ``"0o600"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= 0o7777 else None
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if text and len(text) <= 4 and all(c in "01234567" for c in text):
            return int(text, 8)
    return None


def _local_storage_options(options: dict, where: str) -> dict:
    """``options`` of a FileSystemStorage, checked; permission modes given as octal text become numbers."""
    checked = dict(options)
    location = checked.get("location")
    if location is not None and not isinstance(location, str | os.PathLike):
        shown = json.dumps(redact_value(location, key="location"), default=str)
        raise ConfigError(f'{where}: location: {shown} is not a folder; give one folder as text, e.g. "/srv/backups"')
    for name in ("file_permissions_mode", "directory_permissions_mode"):
        if checked.get(name) is None:
            continue
        mode = file_mode(checked[name])
        if mode is None:
            raise ConfigError(
                f"{where}: {name}: {json.dumps(checked[name], default=str)} is not a permission mode; "
                'use octal text such as "600" ("700" for folders), or the number 384'
            )
        checked[name] = mode
    return checked


#: Django database engines served by django-dbbackup's MySQL connector.
MYSQL_ENGINES = (
    "django.db.backends.mysql",
    "django.contrib.gis.db.backends.mysql",
    "django_prometheus.db.backends.mysql",
)
#: That connector with the credentials in an option file read from a pipe (never ``--password=`` on a command line).
OPTION_FILE_CONNECTOR = "backup_app.engines.mysql.OptionFileConnector"


def install_mysql_driver(databases: dict) -> bool:
    """Make ``MySQLdb`` importable for Django's MySQL backend when the site has PyMySQL but not mysqlclient.

    Only when a database of ``databases`` uses a MySQL engine (``MYSQL_ENGINES``) and ``import MySQLdb`` fails;
    mysqlclient, where installed, is kept.  Returns whether PyMySQL was installed under that name.
    """
    if not any((entry or {}).get("ENGINE") in MYSQL_ENGINES for entry in (databases or {}).values()):
        return False
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        try:
            import pymysql
        except ImportError:
            return False  # Django's own error says what to install
        pymysql.install_as_MySQLdb()
        return True
    return False


def _under_management_command() -> bool:
    """Whether this code runs inside ``manage.py``/``django-admin`` (``ManagementUtility.execute`` is on the stack)."""
    management = sys.modules.get("django.core.management")
    if management is None:
        return False
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_filename == management.__file__ and code.co_name in ("execute", "execute_from_command_line"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def reporting_config_errors() -> Iterator[None]:
    """Make a :class:`ConfigError` raised in the block fail its host cleanly, in one line.

    Under a management command (any site's ``manage.py``, ``django-admin``), unless ``--traceback`` is given:
    ``Configuration error: ...`` on stderr and exit status 2, instead of Django's traceback of the settings
    import.  In any other host (gunicorn, uwsgi, an ASGI server, a test run, a script calling
    ``django.setup()``) the error is logged as that one line on the ``backup_app`` logger and raised: the
    host refuses to start as it does for any broken settings module.
    """
    try:
        yield
    except ConfigError as err:
        line = f"Configuration error: {err}"
        if _under_management_command() and "--traceback" not in sys.argv:
            print(line, file=sys.stderr)
            raise SystemExit(2) from None
        logger.error("%s", line)
        raise


def admin_recipients(admins: Iterable, admin_email: str | None) -> list[tuple[str, str]]:
    """``ADMINS`` plus the configured admin address, as ``(name, address)`` pairs, no duplicates."""
    result: list[tuple[str, str]] = []
    for entry in admins or ():
        pair = (entry[0], entry[1]) if isinstance(entry, list | tuple) else (str(entry), str(entry))
        if pair[1] not in {a for _, a in result}:
            result.append(pair)
    if admin_email and admin_email not in {a for _, a in result}:
        result.append(("Backup admin", admin_email))
    return result


def apply_backup_settings(
    namespace: dict,
    *,
    config: Config | None = None,
    prefix: str = DEFAULT_PREFIX,
    config_file: str | os.PathLike | None = None,
    default_dir: str | os.PathLike | None = None,
    default_safety_dir: str | os.PathLike | None = None,
) -> dict:
    """Add the backup settings to a settings module's ``namespace`` (its ``globals()``).

    Reads ``DATABASES``, ``MEDIA_ROOT``, ``ADMINS``, ``STORAGES`` and ``BASE_DIR``
    from the namespace.  Adds ``STORAGES["dbbackup"]``, the ``DBBACKUP_*``
    settings, ``BACKUP_APP`` (the keys django-dbbackup has no name for) and
    ``BACKUP_APP_CONFIG`` (the :class:`Config`, with sources).  Returns the
    added settings.

    A value that cannot be used is a :class:`ConfigError`; under a management command it ends the command with
    one line and exit status 2 (see :func:`reporting_config_errors`).
    """
    with reporting_config_errors():
        return _apply(namespace, config, prefix, config_file, default_dir, default_safety_dir)


def _apply(namespace, config, prefix, config_file, default_dir, default_safety_dir) -> dict:
    if config is None:
        config = load_config(prefix=prefix, config_file=config_file, keys=BACKUP_KEYS)
    install_mysql_driver(namespace.get("DATABASES", {}))
    aliases = list(namespace.get("DATABASES", {}))
    databases = config["backup_databases"] or aliases
    unknown = [a for a in databases if a not in aliases]
    if unknown:
        raise ConfigError(
            f"{config.env_name('backup_databases')}: unknown database alias {unknown[0]!r}; "
            f"use one of {', '.join(aliases)}"
        )

    storage = config["backup_storage"]
    options = dict(config["backup_options"] or {})
    dir_used_default = False
    backup_dir = config["backup_dir"]
    if backup_dir is None and storage in FILESYSTEM_STORAGES and "location" not in options:
        base = namespace.get("BASE_DIR", ".")
        backup_dir = str(default_dir if default_dir is not None else Path(base) / "backup")
        dir_used_default = True
    dir_option = STORAGE_DIR_OPTION.get(storage)
    # InvenTree's Docker image always sets an absolute local INVENTREE_BACKUP_DIR; on a remote store that is no
    # key prefix (S3 refuses a leading '/'): unused there, and check W008 says so.  A relative one is the prefix.
    dir_unused = backup_dir is not None and storage not in FILESYSTEM_STORAGES and os.path.isabs(str(backup_dir))
    if backup_dir is not None and dir_option and dir_option not in options and not dir_unused:
        options[dir_option] = str(backup_dir)
    if storage in FILESYSTEM_STORAGES:
        options = _local_storage_options(options, config.origin("backup_options"))
        # Backups are the most sensitive copy of a site's data: owner-only by default.
        options.setdefault("file_permissions_mode", 0o600)
        options.setdefault("directory_permissions_mode", 0o700)

    storages = dict(namespace.get("STORAGES") or {})
    storages.setdefault("default", {"BACKEND": "django.core.files.storage.FileSystemStorage"})
    storages.setdefault("staticfiles", {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"})
    storages["dbbackup"] = {"BACKEND": storage, "OPTIONS": options}

    prefix_text = config["backup_email_prefix"]
    added = {
        "STORAGES": storages,
        "DBBACKUP_DATABASES": databases,
        "DBBACKUP_CONNECTORS": _connector_settings(
            config["backup_connector_options"], databases, aliases, config.origin("backup_connector_options")
        ),
        # Stock dbbackup/dbrestore use the MySQL connector that takes the password from a pipe, not --password.
        "DBBACKUP_CONNECTOR_MAPPING": {
            **dict.fromkeys(MYSQL_ENGINES, OPTION_FILE_CONNECTOR),
            **(namespace.get("DBBACKUP_CONNECTOR_MAPPING") or {}),
        },
        "DBBACKUP_DATE_FORMAT": config["backup_date_format"],
        "DBBACKUP_FILENAME_TEMPLATE": config["backup_database_filename_template"],
        "DBBACKUP_MEDIA_FILENAME_TEMPLATE": config["backup_media_filename_template"],
        "DBBACKUP_GPG_RECIPIENT": config["backup_gpg_recipient"],
        "DBBACKUP_GPG_ALWAYS_TRUST": True,
        "DBBACKUP_SEND_EMAIL": config["backup_send_email"],
        "DBBACKUP_EMAIL_SUBJECT_PREFIX": prefix_text if prefix_text.endswith(" ") else prefix_text + " ",
        # Stock dbbackup's own failure mail carries traceback locals and the settings (the database password):
        # it gets no recipients.  Its failures are mailed by backup_app instead, as one masked line (apps.py).
        "DBBACKUP_ADMIN": [],
        "DBBACKUP_CLEANUP_KEEP": config["backup_keep"],
        "DBBACKUP_CLEANUP_KEEP_MEDIA": config["backup_keep"],
        # InvenTree's restore validator reads this setting (INVE-E16); restore --restore-allow-newer-version sets it.
        "BACKUP_RESTORE_ALLOW_NEWER_VERSION": config["backup_restore_allow_newer_version"],
        "BACKUP_APP": {
            **{field: config[key] for field, key in APP_FIELDS.items()},
            "SAFETY_DIR": str(
                config["backup_safety_dir"] or default_safety_dir or safety_dir_beside(namespace.get("BASE_DIR", "."))
            ),
            "NOTIFY_URLS": config["backup_notify_urls"] or [],
            "DIR": str(backup_dir) if backup_dir is not None else None,
            "DIR_IS_DEFAULT": dir_used_default,
            "DIR_UNUSED": dir_unused,
            "ADMINS": admin_recipients(namespace.get("ADMINS", ()), namespace.get("BACKUP_ADMIN_EMAIL")),
        },
        "BACKUP_APP_CONFIG": config,
    }
    if "Q_CLUSTER" not in namespace:
        added["Q_CLUSTER"] = {**DEFAULT_Q_CLUSTER, "orm": aliases[0] if aliases else "default"}
    namespace.update(added)
    return added
