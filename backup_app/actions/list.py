"""List: the backup sets in the storage, newest first (complete, incomplete and legacy)."""

from __future__ import annotations

from dataclasses import dataclass

from ..progress import NO_PROGRESS, Progress
from ..sets import BackupSet, list_sets
from ..storage import backup_storage


@dataclass
class ListOptions:
    path: str | None = None  # a local folder instead of the backup storage


def run(options: ListOptions | None = None, progress: Progress = NO_PROGRESS) -> list[BackupSet]:
    """Every backup set of the storage, newest first (one listing, one read per manifest)."""
    options = options or ListOptions()
    return list_sets(backup_storage(options.path))
