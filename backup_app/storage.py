"""The backup storage: the configured django-storages backend, or a local folder for ``--path``."""

from __future__ import annotations

from dbbackup import settings as dbsettings
from dbbackup.storage import get_storage
from django.core.files.storage import FileSystemStorage

from .conf import import_storage_class
from .errors import StorageUnavailable
from .secrets import redact


def backup_storage(path: str | None = None):
    """A Django storage for backup files.

    ``path`` (``--path DIR``) is a local folder used instead of the configured
    storage; files keep their template names inside it.
    """
    if path:
        return FileSystemStorage(location=str(path), file_permissions_mode=0o600, directory_permissions_mode=0o700)
    import_storage_class(dbsettings.STORAGE)
    try:
        return get_storage().storage
    except Exception as err:
        raise StorageUnavailable(
            f"backup_storage {dbsettings.STORAGE}: cannot be set up ({redact(err)}); check backup_options"
        ) from None


def describe(storage) -> str:
    location = getattr(storage, "location", None) or getattr(storage, "bucket_name", None) or ""
    return f"{type(storage).__name__}({location})" if location else type(storage).__name__
