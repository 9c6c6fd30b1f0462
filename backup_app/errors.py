"""Exceptions whose message is one line a user can act on."""


class BackupAppError(Exception):
    """Base class: ``str(err)`` names the thing that failed and the fix."""


class BackupError(BackupAppError):
    """Creating a backup set failed; no complete set was left behind."""


class RestoreError(BackupAppError):
    """A restore was refused or failed; the message says what state is left."""


class StorageUnavailable(BackupAppError):
    """The backup storage cannot be reached or used."""
