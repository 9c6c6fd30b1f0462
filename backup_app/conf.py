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

import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.core.exceptions import ImproperlyConfigured

DEFAULT_PREFIX = "INVENTREE_"

#: Names of settings and option keys whose values must never be shown.
SECRET_WORDS = re.compile(r"pass|secret|token|key|credential|auth|private|signature|connection_string", re.IGNORECASE)
#: The password in a URL (ftp://user:PASSWORD@host/...), e.g. FTPStorage's location.
URL_PASSWORD = re.compile(r"(?<=://)([^:/@\s]+):([^@\s]+)@")

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

#: Folder next to ``BASE_DIR`` that holds safety copies when ``backup_safety_dir`` is unset.
DEFAULT_SAFETY_FOLDER = "backup-safety"


class ConfigError(ImproperlyConfigured):
    """A configuration value that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Key:
    """One configuration key.

    ``name`` is the YAML key (``a.B`` for key ``B`` of mapping ``a``), ``env``
    the environment variable without its prefix.
    """

    name: str
    env: str
    default: Any
    kind: str = "str"  # str, bool, int, dict, list
    help: str = ""
    secret: bool = False
    minimum: int | None = None
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
        help="GnuPG home directory holding the backup keys (default: gpg's own).",
    ),
    Key(
        "backup_gpg_passphrase_file",
        "BACKUP_GPG_PASSPHRASE_FILE",
        None,
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
        "backup_databases",
        "BACKUP_DATABASES",
        None,
        kind="list",
        help="Database aliases to back up (default: every alias in DATABASES).",
    ),
)

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


@dataclass(frozen=True)
class Resolved:
    """A resolved value and where it came from (``env``, ``yaml`` or ``default``)."""

    key: Key
    value: Any
    source: str
    origin: str


@dataclass
class Config:
    """Resolved configuration: ``config["backup_dir"]`` gives a value."""

    values: dict[str, Resolved]
    prefix: str = DEFAULT_PREFIX
    file: Path | None = None
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.values[name].value

    def get(self, name: str, default: Any = None) -> Any:
        return self.values[name].value if name in self.values else default

    def env_name(self, name: str) -> str:
        return self.prefix + self.values[name].key.env

    def source(self, name: str) -> str:
        return self.values[name].source

    def rows(self) -> list[tuple[str, str, str, str]]:
        """``(yaml key, env variable, shown value, origin)`` for every key, secrets redacted."""
        rows = []
        for name, res in self.values.items():
            value = redact_value(res.value, secret=res.key.secret)
            shown = json.dumps(value) if isinstance(value, dict | list) else str(value)
            rows.append((name, self.prefix + res.key.env, shown, res.origin))
        return rows


def redact_value(value: Any, secret: bool = False) -> Any:
    """Return ``value`` with secrets replaced by ``'********'`` (dict keys looked at by name)."""
    if value in (None, ""):
        return value
    if secret:
        return "********"
    if isinstance(value, Mapping):
        return {k: redact_value(v, secret=bool(SECRET_WORDS.search(str(k)))) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, str):
        return URL_PASSWORD.sub(r"\1:********@", value)
    return value


def coerce(key: Key, raw: Any, where: str) -> Any:
    """Convert ``raw`` (a string from the environment, or a YAML value) to ``key``'s type.

    Raises :class:`ConfigError` naming ``where`` (the variable or YAML key) and the fix.
    """
    from_env = isinstance(raw, str)
    if key.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str | int) and str(raw).strip().lower() in _TRUE | _FALSE:
            return str(raw).strip().lower() in _TRUE
        raise ConfigError(f"{where}: {raw!r} is not a boolean; use true or false")
    if key.kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ConfigError(f"{where}: {raw!r} is not a whole number; use e.g. {key.default}")
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{where}: {raw!r} is not a whole number; use e.g. {key.default}") from None
        if key.minimum is not None and value < key.minimum:
            raise ConfigError(f"{where}: {value} is too small; use a number of at least {key.minimum}")
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
                f"{where}: expected a mapping (a JSON object in the environment), got {type(raw).__name__}"
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
            raise ConfigError(f"{where}: expected a list of names, got {raw!r}")
        return raw
    # str
    if isinstance(raw, bool) or isinstance(raw, dict | list):
        raise ConfigError(f"{where}: expected text, got {type(raw).__name__} {raw!r}")
    value = str(raw)
    if key.choices and value not in key.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(key.choices)}")
    return value


def _yaml_lookup(data: Mapping, dotted: str) -> tuple[bool, Any]:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


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
    return Config(values=values, prefix=prefix, file=path)


def import_storage_class(path: str, where: str = "backup_storage") -> type:
    """Import a storage class by dotted path.

    Raises :class:`ConfigError` that names the pip extra for django-storages
    backends whose packages are missing, or says the class is not a Storage.
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
        raise ConfigError(
            f"{where}: {path!r} is not a Django Storage class; name a subclass of django.core.files.storage.Storage"
        )
    return cls


def _connector_settings(options: dict | None, aliases: list[str], all_aliases: list[str]) -> dict[str, dict]:
    """Build ``DBBACKUP_CONNECTORS``: one dict per alias, ``django_session`` data excluded.

    ``options`` is either one dict applied to every alias, or a dict whose keys
    are all aliases and whose values are dicts (options per alias).
    """
    options = options or {}
    per_alias = bool(options) and all(k in all_aliases and isinstance(v, dict) for k, v in options.items())
    result = {}
    for alias in aliases:
        opts = dict(options.get(alias, {}) if per_alias else options)
        exclude = {"django_session"}
        for spelling in ("EXCLUDE", "exclude", "Exclude"):
            value = opts.pop(spelling, None) or []
            exclude.update([value] if isinstance(value, str) else value)
        opts["EXCLUDE"] = sorted(exclude)
        result[alias] = opts
    return result


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
    """
    if config is None:
        config = load_config(prefix=prefix, config_file=config_file, keys=BACKUP_KEYS)
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
    if backup_dir is not None and dir_option and dir_option not in options:
        options[dir_option] = str(backup_dir)
    if storage in FILESYSTEM_STORAGES:
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
        "DBBACKUP_CONNECTORS": _connector_settings(config["backup_connector_options"], databases, aliases),
        "DBBACKUP_DATE_FORMAT": config["backup_date_format"],
        "DBBACKUP_FILENAME_TEMPLATE": config["backup_database_filename_template"],
        "DBBACKUP_MEDIA_FILENAME_TEMPLATE": config["backup_media_filename_template"],
        "DBBACKUP_GPG_RECIPIENT": config["backup_gpg_recipient"],
        "DBBACKUP_GPG_ALWAYS_TRUST": True,
        "DBBACKUP_SEND_EMAIL": config["backup_send_email"],
        "DBBACKUP_EMAIL_SUBJECT_PREFIX": prefix_text if prefix_text.endswith(" ") else prefix_text + " ",
        "DBBACKUP_ADMIN": admin_recipients(namespace.get("ADMINS", ()), namespace.get("BACKUP_ADMIN_EMAIL")),
        "DBBACKUP_CLEANUP_KEEP": config["backup_keep"],
        "DBBACKUP_CLEANUP_KEEP_MEDIA": config["backup_keep"],
        "BACKUP_APP": {
            "COMPRESSION": config["backup_compression"],
            "KEEP": config["backup_keep"],
            "KEEP_DAILY": config["backup_keep_daily"],
            "KEEP_WEEKLY": config["backup_keep_weekly"],
            "KEEP_MONTHLY": config["backup_keep_monthly"],
            "GPG_HOME": config["backup_gpg_home"],
            "GPG_PASSPHRASE_FILE": config["backup_gpg_passphrase_file"],
            "GPG_PASSPHRASE": config["backup_gpg_passphrase"],
            "SAFETY": config["backup_safety"],
            "SAFETY_DIR": str(
                config["backup_safety_dir"]
                or default_safety_dir
                or Path(namespace.get("BASE_DIR", ".")) / DEFAULT_SAFETY_FOLDER
            ),
            "SAFETY_DAYS": config["backup_safety_days"],
            "DIR": str(backup_dir) if backup_dir is not None else None,
            "DIR_IS_DEFAULT": dir_used_default,
            "EMAIL_PREFIX": prefix_text,
        },
        "BACKUP_APP_CONFIG": config,
    }
    namespace.update(added)
    return added
