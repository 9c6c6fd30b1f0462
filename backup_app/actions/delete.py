"""Delete: remove one backup set from the storage, under the site lock, recorded in the history.

The admin's sets page calls it after the user confirmed.  The manifest goes first, so that a set is never
listed complete with files missing; a file that cannot be deleted stops it with one line naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engines import site_lock
from ..errors import BackupAppError
from ..history import record_run
from ..models import BackupRun
from ..sets import MANIFEST_EXT, list_sets
from ..storage import backup_storage


@dataclass
class DeleteResult:
    name: str
    deleted: list[str] = field(default_factory=list)
    size: int = 0


def run(name: str, *, requested_by: str = "") -> DeleteResult:
    """Delete every file of set ``name`` (and its stock ``.metadata`` sidecars); BackupAppError when there is
    no such set, or :class:`~backup_app.engines.Locked` while a backup or restore runs."""
    with record_run(BackupRun.DELETE, requested_by=requested_by) as row:
        row.set_name = name[:100]
        storage = backup_storage()
        with site_lock("delete"):
            found = next((s for s in list_sets(storage) if s.name == name), None)
            if found is None:
                raise BackupAppError(f"there is no backup set {name!r} in the storage (deleted already?)")
            row.size = found.size
            result = DeleteResult(name=name, size=found.size)
            for file_name in sorted(found.all_names(), key=lambda n: (not n.endswith(MANIFEST_EXT), n)):
                try:
                    storage.delete(file_name)
                except Exception as err:
                    raise BackupAppError(
                        f"{file_name} could not be deleted ({err}); {len(result.deleted)} files of set {name} "
                        "were deleted before it"
                    ) from None
                result.deleted.append(file_name)
    return result
