"""Settings of a demo site that uses django-dbbackup's hooks the way InvenTree does (tests/test_dbbackup_hooks.py).

``DJANGO_SETTINGS_MODULE=hooks_site`` (with ``tests/`` on ``PYTHONPATH``): the demo site's settings, plus

- ``DBBACKUP_BACKUP_METADATA_SETTER``: :func:`set_metadata` adds ``ivt_1_version_api`` (``$HOOKS_API_VERSION``,
  default 100) and ``ivt_1_backup_time``, InvenTree's keys;
- ``DBBACKUP_RESTORE_METADATA_VALIDATOR``: :func:`validate_restore` refuses a backup whose ``ivt_1_version_api``
  is above this site's, unless ``settings.BACKUP_RESTORE_ALLOW_NEWER_VERSION`` (InvenTree's rule, INVE-E16);
- a receiver on each of django-dbbackup's eight signals.

Every call is appended as one JSON line to ``$HOOKS_LOG``.
"""

import json
import os
from datetime import datetime

# Only django.dispatch: dbbackup.settings (which reads these settings) must not be imported from here.
from dbbackup import signals  # noqa: E402

from config.settings import *  # noqa: F403

DBBACKUP_BACKUP_METADATA_SETTER = "hooks_site.set_metadata"
DBBACKUP_RESTORE_METADATA_VALIDATOR = "hooks_site.validate_restore"


def _log(entry: dict) -> None:
    with open(os.environ["HOOKS_LOG"], "a") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")


def _api_version() -> int:
    return int(os.environ.get("HOOKS_API_VERSION", "100"))


def set_metadata(metadata):
    _log({"hook": "setter", "given": metadata})
    return {"ivt_1_version_api": _api_version(), "ivt_1_backup_time": datetime.now().isoformat()}


def validate_restore(metadata):
    from django.conf import settings

    allowed = bool(getattr(settings, "BACKUP_RESTORE_ALLOW_NEWER_VERSION", False))
    _log({"hook": "validator", "given": metadata, "allow_newer_setting": allowed})
    newer = int(metadata.get("ivt_1_version_api", 0)) > _api_version()
    return not newer or allowed


def _receiver(name):
    def receive(sender, **kwargs):
        from dbbackup.storage import Storage

        storage = kwargs.get("storage")
        _log(
            {
                "signal": name,
                "sender": f"{sender.__module__}.{sender.__qualname__}",
                "keys": sorted(kwargs),
                "filename": kwargs.get("filename"),
                "database_name": kwargs.get("database_name"),
                "database": (kwargs.get("database") or {}).get("NAME"),
                "connector": type(kwargs["connector"]).__name__ if "connector" in kwargs else None,
                "storage_is_stocks": isinstance(storage, Storage) if storage is not None else None,
                "storage_lists": storage.list_directory() if storage is not None else None,
                "storage_name": storage.name if storage is not None else None,
            }
        )

    return receive


SIGNALS = (
    "pre_backup",
    "post_backup",
    "pre_restore",
    "post_restore",
    "pre_media_backup",
    "post_media_backup",
    "pre_media_restore",
    "post_media_restore",
)
for _name in SIGNALS:
    getattr(signals, _name).connect(_receiver(_name), weak=False, dispatch_uid=f"hooks_site.{_name}")
