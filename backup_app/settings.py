"""The one place run-time code reads its settings from: ``from backup_app.settings import app_settings``.

Every property reads ``django.conf.settings`` when it is called, so ``override_settings`` works and nothing
is frozen at import.  (django-dbbackup's ``dbbackup.settings`` is a copy taken when it is first imported;
nothing here or elsewhere in the app reads it at run time.)

The values are the ones :func:`backup_app.conf.apply_backup_settings` writes: ``BACKUP_APP`` (the keys
django-dbbackup has no setting for), the ``DBBACKUP_*`` settings and ``STORAGES["dbbackup"]``.  A setting a
project left out has the default of its key in :data:`backup_app.conf.BACKUP_KEYS`; the file-name settings
default to django-dbbackup's own, so that names render and parse as its commands write them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings

from .conf import APP_FIELDS, BACKUP_KEYS, Config, ConfigError, app_value, safety_dir_beside

#: Default of every configuration key, by key name (``backup_keep`` -> 10).
KEY_DEFAULTS: dict[str, Any] = {key.name: key.default for key in BACKUP_KEYS}

#: django-dbbackup 5.4's defaults of the ``DBBACKUP_*`` settings read here that no key of ours fills when a
#: project sets them itself (``dbbackup/settings.py``).
DBBACKUP_DEFAULTS: dict[str, Any] = {
    "DATE_FORMAT": "%Y-%m-%d-%H%M%S",
    "FILENAME_TEMPLATE": "{databasename}-{servername}-{datetime}.{extension}",
    "MEDIA_FILENAME_TEMPLATE": "{servername}-{datetime}.{extension}",
}

DEFAULT_STORAGE = "django.core.files.storage.FileSystemStorage"

#: Names of django-dbbackup's metadata hook settings, for messages.
METADATA_SETTER = "DBBACKUP_BACKUP_METADATA_SETTER"
METADATA_VALIDATOR = "DBBACKUP_RESTORE_METADATA_VALIDATOR"


class AppSettings:
    """Typed, read-at-call-time view of the backup settings (django-cors-headers' ``conf.py`` style)."""

    # --- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _app(field: str, key: str) -> Any:
        """``BACKUP_APP[field]``, checked as the env/YAML value of key ``key`` is (:func:`~.conf.app_value`: a
        project may set the field in its settings itself), else the default of that key."""
        app = getattr(settings, "BACKUP_APP", None) or {}
        return app_value(field, app[field]) if field in app else KEY_DEFAULTS[key]

    @staticmethod
    def app_field_errors() -> list[tuple[str, ConfigError]]:
        """``(field, error)`` of each ``BACKUP_APP`` field set in the settings that its key would refuse
        (:func:`~.conf.app_value`), for check E023."""
        app = getattr(settings, "BACKUP_APP", None) or {}
        found = []
        for field in APP_FIELDS:
            if field in app:
                try:
                    app_value(field, app[field])
                except ConfigError as err:
                    found.append((field, err))
        return found

    @staticmethod
    def _dbbackup(name: str, default: Any) -> Any:
        return getattr(settings, f"DBBACKUP_{name}", default)

    # --- where the configuration came from -----------------------------------------------------

    @property
    def config(self) -> Config | None:
        """The resolved configuration with the source of each value, when ``apply_backup_settings`` made it."""
        return getattr(settings, "BACKUP_APP_CONFIG", None)

    def env_name(self, key: str) -> str:
        """The environment variable of configuration key ``key`` (``backup_dir`` -> ``INVENTREE_BACKUP_DIR``)."""
        config = self.config
        return config.env_name(key) if config is not None and key in config.values else key

    # --- the backup storage --------------------------------------------------------------------

    @property
    def storage_backend(self) -> str:
        """Dotted path of the backup storage class (``STORAGES["dbbackup"]["BACKEND"]``)."""
        return (getattr(settings, "STORAGES", {}) or {}).get("dbbackup", {}).get("BACKEND", DEFAULT_STORAGE)

    @property
    def storage_options(self) -> dict:
        """Keyword arguments of the backup storage class (a copy of ``STORAGES["dbbackup"]["OPTIONS"]``)."""
        return dict((getattr(settings, "STORAGES", {}) or {}).get("dbbackup", {}).get("OPTIONS", {}) or {})

    @property
    def backup_dir(self) -> str | None:
        return self._app("DIR", "backup_dir")

    @property
    def backup_dir_unused(self) -> bool:
        """Whether ``backup_dir`` is an absolute local path that a remote backup storage does not use."""
        return bool((getattr(settings, "BACKUP_APP", None) or {}).get("DIR_UNUSED", False))

    @property
    def backup_dir_is_default(self) -> bool:
        """Whether ``backup_dir`` was unset and the site's default folder is used."""
        return bool((getattr(settings, "BACKUP_APP", None) or {}).get("DIR_IS_DEFAULT", False))

    # --- names of backup files -----------------------------------------------------------------

    @property
    def date_format(self) -> str:
        return self._dbbackup("DATE_FORMAT", DBBACKUP_DEFAULTS["DATE_FORMAT"])

    @property
    def filename_template(self) -> str:
        """Template of database dump names (``DBBACKUP_FILENAME_TEMPLATE``)."""
        return self._dbbackup("FILENAME_TEMPLATE", DBBACKUP_DEFAULTS["FILENAME_TEMPLATE"])

    @property
    def media_filename_template(self) -> str:
        return self._dbbackup("MEDIA_FILENAME_TEMPLATE", DBBACKUP_DEFAULTS["MEDIA_FILENAME_TEMPLATE"])

    @property
    def hostname(self) -> str:
        """``{servername}`` of the templates."""
        return self._dbbackup("HOSTNAME", None) or socket.gethostname()

    @property
    def storage_timeout(self) -> int:
        """Seconds a remote storage may stay silent before a request fails (``backup_storage_timeout``)."""
        return self._app("STORAGE_TIMEOUT", "backup_storage_timeout")

    @property
    def storage_retries(self) -> int:
        """Retries of a remote storage request that timed out or failed on the server (``backup_storage_retries``)."""
        return self._app("STORAGE_RETRIES", "backup_storage_retries")

    @property
    def site_id(self) -> str | None:
        """``backup_site_id``: the identity the sets of this site record (None: derived, see
        :func:`backup_app.sets.site_identity`)."""
        return self._app("SITE_ID", "backup_site_id")

    # --- databases -----------------------------------------------------------------------------

    @property
    def databases(self) -> list[str]:
        """Aliases backed up (``DBBACKUP_DATABASES``, else every alias of ``DATABASES``)."""
        aliases = self._dbbackup("DATABASES", None)
        return list(aliases) if aliases is not None else list(settings.DATABASES)

    def connector_options(self, alias: str) -> dict:
        """django-dbbackup connector options of ``alias`` (a copy of ``DBBACKUP_CONNECTORS[alias]``)."""
        return dict((self._dbbackup("CONNECTORS", None) or {}).get(alias, {}))

    @property
    def connector_mapping(self) -> dict[str, str]:
        """``DBBACKUP_CONNECTOR_MAPPING``: Django ENGINE -> connector class path, added to dbbackup's own."""
        return dict(self._dbbackup("CONNECTOR_MAPPING", None) or {})

    # --- django-dbbackup's metadata hooks --------------------------------------------------------

    @property
    def metadata_setter(self):
        """``DBBACKUP_BACKUP_METADATA_SETTER`` (a dotted path or a callable), or None."""
        return self._dbbackup("BACKUP_METADATA_SETTER", None)

    @property
    def metadata_validator(self):
        """``DBBACKUP_RESTORE_METADATA_VALIDATOR`` (a dotted path or a callable), or None."""
        return self._dbbackup("RESTORE_METADATA_VALIDATOR", None)

    @property
    def restore_allow_newer_version(self) -> bool:
        """``BACKUP_RESTORE_ALLOW_NEWER_VERSION``: InvenTree's switch, which its own validator reads too."""
        return bool(getattr(settings, "BACKUP_RESTORE_ALLOW_NEWER_VERSION", False))

    @contextmanager
    def allowing_newer_version(self, allow: bool) -> Iterator[None]:
        """With ``allow``, ``BACKUP_RESTORE_ALLOW_NEWER_VERSION`` is True for the ``with`` block (a restore's
        ``--restore-allow-newer-version`` while the site's validator runs), then as it was."""
        if not allow:
            yield
            return
        missing = object()
        before = getattr(settings, "BACKUP_RESTORE_ALLOW_NEWER_VERSION", missing)
        settings.BACKUP_RESTORE_ALLOW_NEWER_VERSION = True
        try:
            yield
        finally:
            if before is missing:
                del settings.BACKUP_RESTORE_ALLOW_NEWER_VERSION
            else:
                settings.BACKUP_RESTORE_ALLOW_NEWER_VERSION = before

    @property
    def restore_warn_age_days(self) -> int:
        """A restore warns when the backup is older than this many days (0: never)."""
        return self._app("RESTORE_WARN_AGE_DAYS", "backup_restore_warn_age_days")

    @property
    def db_lock_timeout(self) -> int:
        """Seconds a restore waits for the live tables held by another connection (MariaDB)."""
        return self._app("DB_LOCK_TIMEOUT", "backup_db_lock_timeout")

    # --- compression and encryption ------------------------------------------------------------

    @property
    def compression(self) -> str:
        """``gzip``, ``zstd`` or ``none``."""
        return self._app("COMPRESSION", "backup_compression")

    @property
    def media_mode(self) -> str:
        """``archive`` (a tar per set) or ``incremental`` (content-addressed packs shared by the sets)."""
        return self._app("MEDIA_MODE", "backup_media_mode")

    @property
    def media_repack_percent(self) -> int:
        """Incremental media: a prune repacks a pack of which less than this percent is still needed (0: never)."""
        return self._app("MEDIA_REPACK_PERCENT", "backup_media_repack_percent")

    @property
    def gpg_recipient(self) -> str | None:
        return self._dbbackup("GPG_RECIPIENT", KEY_DEFAULTS["backup_gpg_recipient"])

    @property
    def gpg_home(self) -> str | None:
        return self._app("GPG_HOME", "backup_gpg_home")

    @property
    def gpg_passphrase_file(self) -> str | None:
        return self._app("GPG_PASSPHRASE_FILE", "backup_gpg_passphrase_file")

    @property
    def gpg_passphrase(self) -> str | None:
        return self._app("GPG_PASSPHRASE", "backup_gpg_passphrase")

    # --- retention -----------------------------------------------------------------------------

    @property
    def keep(self) -> int:
        return self._app("KEEP", "backup_keep")

    @property
    def keep_daily(self) -> int:
        return self._app("KEEP_DAILY", "backup_keep_daily")

    @property
    def keep_weekly(self) -> int:
        return self._app("KEEP_WEEKLY", "backup_keep_weekly")

    @property
    def keep_monthly(self) -> int:
        return self._app("KEEP_MONTHLY", "backup_keep_monthly")

    # --- safety copies -------------------------------------------------------------------------

    @property
    def safety(self) -> bool:
        """Keep the replaced state after a successful restore."""
        return self._app("SAFETY", "backup_safety")

    @property
    def safety_dir(self) -> Path:
        folder = self._app("SAFETY_DIR", "backup_safety_dir")
        if folder:
            return Path(folder)
        return safety_dir_beside(getattr(settings, "BASE_DIR", "."))

    @property
    def safety_days(self) -> int:
        return self._app("SAFETY_DAYS", "backup_safety_days")

    @property
    def safety_warn_percent(self) -> int:
        return self._app("SAFETY_WARN_PERCENT", "backup_safety_warn_percent")

    # --- pushes to monitors -----------------------------------------------------------------------

    @property
    def notify_urls(self) -> list[str]:
        """Apprise URLs told of failures (``backup_notify_urls``)."""
        return list(self._app("NOTIFY_URLS", "backup_notify_urls") or [])

    @property
    def notify_on_success(self) -> bool:
        return bool(self._app("NOTIFY_ON_SUCCESS", "backup_notify_on_success"))

    @property
    def ping_url(self) -> str | None:
        """The dead-man's-switch URL (``backup_ping_url``), without a trailing slash."""
        url = self._app("PING_URL", "backup_ping_url")
        return url.rstrip("/") if url else None

    # --- failure mail --------------------------------------------------------------------------

    @property
    def send_email(self) -> bool:
        return bool(self._dbbackup("SEND_EMAIL", KEY_DEFAULTS["backup_send_email"]))

    @property
    def admins(self) -> list[tuple[str, str]]:
        """``(name, address)`` pairs of the failure mail: ``BACKUP_APP["ADMINS"]`` (``ADMINS`` plus the admin
        address), else a project's own ``DBBACKUP_ADMIN``.

        ``apply_backup_settings`` leaves ``DBBACKUP_ADMIN`` empty, so that stock dbbackup's own failure mail
        (traceback locals, settings) has no recipient.
        """
        app = getattr(settings, "BACKUP_APP", None) or {}
        entries = app["ADMINS"] if "ADMINS" in app else self._dbbackup("ADMIN", None)
        return [tuple(entry) for entry in entries or []]

    @property
    def email_prefix(self) -> str:
        return self._app("EMAIL_PREFIX", "backup_email_prefix")

    @property
    def server_email(self) -> str:
        return settings.SERVER_EMAIL

    # --- what backup_config shows -----------------------------------------------------------------

    def produced(self) -> dict[str, Any]:
        """The django-dbbackup settings as Django has them: ``STORAGES['dbbackup']`` and every ``DBBACKUP_*``."""
        found: dict[str, Any] = {"STORAGES['dbbackup']": (getattr(settings, "STORAGES", {}) or {}).get("dbbackup")}
        for name in sorted(dir(settings)):
            if name.startswith("DBBACKUP_"):
                found[name] = getattr(settings, name)
        return found


app_settings = AppSettings()
