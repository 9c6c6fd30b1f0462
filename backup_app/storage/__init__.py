"""The backup storage: the configured django-storages backend, or a local folder for ``--path``.

A remote backend comes wrapped in :class:`~backup_app.storage.base.RemoteStorage` with the
:class:`~backup_app.storage.base.Adapter` of its module here (``s3``, ``sftp``, ``ftp``, ``gcs``, ``azure``,
``dropbox``); a storage class of another kind gets the default adapter (its own ``save`` and ``open``).
"""

from __future__ import annotations

import os
from importlib import import_module

from django.core.files.storage import FileSystemStorage

from .. import hints
from ..conf import FILESYSTEM_STORAGES, import_storage_class
from ..errors import StorageUnavailable
from ..secrets import redact
from ..settings import app_settings
from .base import OPTIONS_HINT, Adapter, RemoteStorage, RemoteStorageError

#: django-storages module -> (module of this package, adapter class); other classes get :class:`Adapter`.
ADAPTERS: dict[str, tuple[str, str]] = {
    "storages.backends.s3": ("s3", "S3Adapter"),
    "storages.backends.s3boto3": ("s3", "S3Adapter"),
    "storages.backends.sftpstorage": ("sftp", "SFTPAdapter"),
    "storages.backends.ftp": ("ftp", "FTPAdapter"),
    "storages.backends.gcloud": ("gcs", "GCSAdapter"),
    "storages.backends.azure_storage": ("azure", "AzureAdapter"),
    "storages.backends.dropbox": ("dropbox", "DropboxAdapter"),
}


class LocalStorage(FileSystemStorage):
    """Django's FileSystemStorage whose ``exists`` tells absent from an error: the stock one is
    ``os.path.lexists``, which answers False for any error (EIO or ESTALE of a dead network mount, ELOOP,
    EACCES), so a check read "not there" where the folder could not be read."""

    def exists(self, name: str) -> bool:
        try:
            os.lstat(self.path(name))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as err:
            raise StorageUnavailable(
                f"the backup folder {self.location}: cannot check {name} ({err.strerror or err}); check the folder "
                f"({hints.setting('backup_dir')}) and the disk or mount it is on"
            ) from None
        return True

    @property
    def configured_class(self) -> type:
        """The class the site configured (``FileSystemStorage``): what output and stock's signals name."""
        return FileSystemStorage


def configured_class(storage) -> type:
    """The storage class the site configured, for names shown or handed on (LocalStorage stands in for it)."""
    return getattr(storage, "configured_class", None) or type(storage)


def backup_storage(path: str | None = None):
    """A Django storage for backup files.

    ``path`` (``--path DIR``) is a local folder used instead of the configured
    storage; files keep their template names inside it.  A remote backend comes
    wrapped in :class:`RemoteStorage`.  Raises :class:`StorageUnavailable` when
    the backend cannot be built from its options.
    """
    if path:
        return LocalStorage(location=str(path), file_permissions_mode=0o600, directory_permissions_mode=0o700)
    return build_storage(app_settings.storage_backend, app_settings.storage_options)


def build_storage(path: str, options: dict):
    """Instantiate the storage class ``path`` with ``options`` (keys as in ``backup_options``)."""
    cls = import_storage_class(path)
    options = {str(k).lower(): v for k, v in options.items()}
    if path in FILESYSTEM_STORAGES or issubclass(cls, FileSystemStorage):
        if path in FILESYSTEM_STORAGES:
            cls = LocalStorage  # the same class, with an exists() that says an error (a subclass keeps its own)
        try:
            return cls(**options)
        except Exception as err:
            raise StorageUnavailable(
                f"{hints.variable('backup_storage')} {path}: cannot be set up ({redact(err)}); check {OPTIONS_HINT}"
            ) from None
    adapter = adapter_for(cls)
    try:
        prepared = adapter.prepare(options)
        backend = cls(**prepared)
    except RemoteStorageError:
        raise
    except Exception as err:
        raise StorageUnavailable(
            f"{hints.variable('backup_storage')} {path}: cannot be set up ({redact(err)}); check {OPTIONS_HINT}"
        ) from None
    return RemoteStorage(backend, adapter, factory=lambda: cls(**prepared))


def describe(storage) -> str:
    """A short, password-free description of where backups go, for progress output."""
    if isinstance(storage, RemoteStorage):
        return storage.description
    location = getattr(storage, "location", None) or getattr(storage, "bucket_name", None) or ""
    name = configured_class(storage).__name__
    return f"{name}({location})" if location else name


def adapter_for(cls: type) -> Adapter:
    """The adapter of a storage class (by the module of the class or of a django-storages base)."""
    for klass in cls.__mro__:
        found = ADAPTERS.get(klass.__module__)
        if found is not None:
            module, name = found
            return getattr(import_module(f"{__name__}.{module}"), name)()
    return Adapter()


__all__ = [
    "LocalStorage",
    "configured_class",
    "RemoteStorage",
    "RemoteStorageError",
    "adapter_for",
    "backup_storage",
    "build_storage",
    "describe",
]
