"""django-dbbackup's hooks, used as its own commands use them.

- The ``.metadata`` *sidecar* of each database file: what stock ``dbbackup`` writes (``engine``,
  ``connector``) plus the keys of ``DBBACKUP_BACKUP_METADATA_SETTER``, as JSON in ``<file>.metadata``, so that
  stock ``dbrestore`` and a site's validator read it.
- ``DBBACKUP_RESTORE_METADATA_VALIDATOR``, called with a file's sidecar (ours or stock's) before a restore
  changes anything.  A refusal (``False``) stops the restore unless newer versions are allowed
  (``--restore-allow-newer-version`` / ``backup_restore_allow_newer_version``); while the validator runs with
  that allowance, ``settings.BACKUP_RESTORE_ALLOW_NEWER_VERSION`` is True, which InvenTree's validator reads.
- django-dbbackup's eight signals, sent with the sender and the arguments stock's commands send
  (``storage`` is a :class:`dbbackup.storage.Storage` over the backup storage in use).

Unlike stock, a setter or validator that raises or returns the wrong type stops the run with one line: a
version check that silently did not run is a restore nobody guarded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from collections.abc import Callable
from datetime import datetime

from dbbackup.signals import (
    post_backup,
    post_media_backup,
    post_media_restore,
    post_restore,
    pre_backup,
    pre_media_backup,
    pre_media_restore,
    pre_restore,
)
from dbbackup.storage import Storage as StockStorage
from django.db import connections
from django.utils import timezone
from django.utils.module_loading import import_string

from ..errors import BackupError, RestoreError
from ..secrets import redact
from ..sets import SIDECAR_EXT, age_text, manifest_bytes, write_json
from ..settings import METADATA_SETTER, METADATA_VALIDATOR, app_settings

logger = logging.getLogger("backup_app")

#: django-dbbackup's connector that restores into any engine (stock skips its engine check for it).
DJANGO_CONNECTOR = "dbbackup.db.django.DjangoConnector"


def connector_path(connector) -> str:
    """Dotted path of a connector's class, as stock writes it in the sidecar."""
    return f"{type(connector).__module__}.{type(connector).__name__}"


def _hook(value, setting: str, error: type[Exception]) -> tuple[Callable, str]:
    """The callable of a hook setting (a dotted path or a callable) and how to name it."""
    if callable(value):
        return value, f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', value)}"
    try:
        found = import_string(str(value))
    except ImportError as err:
        raise error(f"{setting} {value!r} cannot be imported ({err}); fix the dotted path") from None
    if not callable(found):
        raise error(f"{setting} {value!r} is not callable; name a function")
    return found, str(value)


# --------------------------------------------------------------------------- the sidecar


def sidecar_name(name: str) -> str:
    return name + SIDECAR_EXT


def sidecar_for(connector) -> dict:
    """The sidecar of a dump made by ``connector``: stock's keys, then the setter's."""
    metadata = {"engine": connector.connection.settings_dict["ENGINE"], "connector": connector_path(connector)}
    setting = app_settings.metadata_setter
    if not setting:
        return metadata
    setter, shown = _hook(setting, METADATA_SETTER, BackupError)
    try:
        extra = setter(copy.deepcopy(metadata))
    except Exception as err:
        raise BackupError(f"{METADATA_SETTER} {shown} failed: {redact(err)}") from None
    if extra is None:
        return metadata
    if not isinstance(extra, dict):
        raise BackupError(f"{METADATA_SETTER} {shown} returned {type(extra).__name__}, not a dict; return a dict")
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as err:
        raise BackupError(f"{METADATA_SETTER} {shown} returned data that is not JSON ({err})") from None
    return {**metadata, **extra}


def write_sidecar(storage, name: str, metadata: dict) -> dict:
    """Store ``metadata`` as the sidecar of file ``name``; returns its manifest fields: ``metadata`` (its
    name), ``metadata_size`` and ``metadata_sha256`` (so that listing and verify know it as the set's)."""
    target = sidecar_name(name)
    write_json(storage, target, metadata)
    raw = manifest_bytes(metadata)
    return {"metadata": target, "metadata_size": len(raw), "metadata_sha256": hashlib.sha256(raw).hexdigest()}


def read_sidecar(storage, name: str) -> dict | None:
    """The sidecar of file ``name`` (ours or stock's), or None when it has none."""
    target = sidecar_name(name)
    try:
        if not storage.exists(target):
            return None
        with storage.open(target, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        data = None
    except Exception as err:
        raise RestoreError(f"{target} cannot be read ({redact(err)}); nothing was changed") from None
    if not isinstance(data, dict):
        raise RestoreError(
            f"{target} is not django-dbbackup metadata (a JSON object); remove it or put the right file back"
        )
    return data


# --------------------------------------------------------------------------- before a restore


def check_sidecar(name: str, metadata: dict, engine: str, *, allow_newer: bool) -> list[str]:
    """Stock's engine check, then the validator; returns notes to show.  RestoreError on a refusal."""
    notes = []
    made_by = metadata.get("engine")
    if made_by and made_by != engine and metadata.get("connector") != DJANGO_CONNECTOR:
        raise RestoreError(
            f"{name} was made from a {made_by} database but this site's is {engine}; "
            "restoring into another database engine is not supported"
        )
    setting = app_settings.metadata_validator
    if not setting:
        return notes
    validator, shown = _hook(setting, METADATA_VALIDATOR, RestoreError)
    try:
        with app_settings.allowing_newer_version(allow_newer):
            verdict = validator(copy.deepcopy(metadata))
    except Exception as err:
        raise RestoreError(
            f"{name}: {METADATA_VALIDATOR} {shown} failed ({redact(err)}); nothing was changed"
        ) from None
    if verdict is not None and not isinstance(verdict, bool):
        raise RestoreError(
            f"{METADATA_VALIDATOR} {shown} returned {type(verdict).__name__}; it must return True, False or None"
        )
    if verdict is False:
        if not allow_newer:
            raise RestoreError(
                f"{name}: {METADATA_VALIDATOR} {shown} refused this backup (InvenTree refuses one "
                "made by a newer version); install that version, or pass --restore-allow-newer-version"
            )
        notes.append(f"{name}: {shown} refused this backup; restoring anyway (--restore-allow-newer-version)")
    return notes


#: The key of InvenTree's metadata setter that says when the backup was made (ISO 8601).
BACKUP_TIME_KEY = "ivt_1_backup_time"


def backup_time(metadata: dict | None) -> datetime | None:
    """When the sidecar ``metadata`` says its file was made (InvenTree's ``ivt_1_backup_time``), else None.

    A time without an offset is in the site's time zone, as InvenTree writes it."""
    value = (metadata or {}).get(BACKUP_TIME_KEY)
    if not isinstance(value, str):
        return None
    try:
        made = datetime.fromisoformat(value)
    except ValueError:
        return None
    return timezone.make_aware(made) if timezone.is_naive(made) else made


def age_note(name: str, created: datetime | None) -> str | None:
    """A warning when a backup made at ``created`` is older than ``backup_restore_warn_age_days``."""
    days = app_settings.restore_warn_age_days
    if not days or created is None:
        return None
    age = timezone.now() - created
    if age.days <= days:
        return None
    made = timezone.localtime(created) if timezone.is_aware(created) else created
    return (
        f"warning: {name} is {age_text(age)} old (made {made:%Y-%m-%d %H:%M}, over {days} days): "
        "what changed since then is lost"
    )


# --------------------------------------------------------------------------- signals


class StockStorageView(StockStorage):
    """A :class:`dbbackup.storage.Storage` over a storage already made (``.storage`` is that storage).

    Stock's constructor would build a second storage from the settings django-dbbackup copied at import; the
    receivers of its signals get the same kind of object from this one.
    """

    def __init__(self, storage):  # no super().__init__(): it builds its own storage
        self.storage = storage
        from ..storage import configured_class

        self.storageCls = type(storage)
        shown = configured_class(storage)  # FileSystemStorage, not the LocalStorage standing in for it
        self._storage_path = f"{shown.__module__}.{shown.__qualname__}"
        self.name = shown.__name__


def _commands():
    from dbbackup.management.commands import dbbackup, dbrestore, mediabackup, mediarestore

    return dbbackup.Command, dbrestore.Command, mediabackup.Command, mediarestore.Command


def _decoded(name: str) -> str:
    """The name stock's ``post_*restore`` signals carry: without ``.gpg`` and the compression suffix."""
    return re.sub(r"\.(gz|zst)$", "", name.removesuffix(".gpg"))


def send_pre_backup(connector) -> None:
    pre_backup.send(sender=_commands()[0], database=connector.settings, connector=connector, servername=None)


def send_post_backup(connector, filename: str, storage) -> None:
    post_backup.send(
        sender=_commands()[0],
        database=connector.settings,
        connector=connector,
        servername=None,
        filename=filename,
        storage=StockStorageView(storage),
    )


def send_pre_media_backup(storage) -> None:
    pre_media_backup.send(sender=_commands()[2], servername=None, storage=StockStorageView(storage))


def send_post_media_backup(filename: str, storage) -> None:
    post_media_backup.send(sender=_commands()[2], filename=filename, servername=None, storage=StockStorageView(storage))


def send_pre_restore(alias: str, filename: str, storage) -> None:
    pre_restore.send(
        sender=_commands()[1],
        database=connections.settings[alias],
        database_name=alias,
        filename=filename,
        servername=None,
        storage=StockStorageView(storage),
    )


def send_post_restore(alias: str, filename: str, connector, storage) -> None:
    post_restore.send(
        sender=_commands()[1],
        database=connections.settings[alias],
        database_name=alias,
        filename=_decoded(filename),
        servername=None,
        connector=connector,
        storage=StockStorageView(storage),
    )


def send_pre_media_restore(filename: str, storage) -> None:
    pre_media_restore.send(sender=_commands()[3], filename=filename, servername=None, storage=StockStorageView(storage))


def send_post_media_restore(filename: str, storage) -> None:
    post_media_restore.send(
        sender=_commands()[3], filename=_decoded(filename), servername=None, storage=StockStorageView(storage)
    )
