"""Safety records: what a restore replaced and where it is kept (plain data; the rollback is an action).

Every restore keeps the state it replaces, by the cheapest atomic means each
engine has: the old SQLite file (a hard link), the old PostgreSQL database
(renamed, not dropped), the old MariaDB tables (moved to a side database), the
replaced and removed media files (moved aside).  Each engine describes what it
kept in an *entry* (JSON data) of the restore's record.  If the restore fails
half way, everything is put back (:mod:`backup_app.actions.rollback`).  When it
succeeds the copy is kept for ``backup_safety_days`` (``backup_safety`` on), or
dropped at once.

A record lives in ``<backup_safety_dir>/<name>/safety.json``; roll back with
``invoke rollback`` (newest) or ``invoke rollback --name NAME``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

from django.utils import timezone

from .errors import RestoreError
from .settings import app_settings
from .tools import owner, owner_gone


class SafetyRecord:
    """One restore's safety copy: a folder and a JSON file saying what it holds."""

    def __init__(self, folder: Path, data: dict):
        self.folder = folder
        self.data = data
        #: The folders above ``folder`` that :meth:`create` made (the safety folder itself, when it was not
        #: there), deepest first: a restore that is refused or undone removes them again when they are empty.
        self.made: list[Path] = []

    @classmethod
    def create(cls, root: Path, restoring: str | None) -> SafetyRecord:
        now = timezone.localtime()
        name = now.strftime("%Y-%m-%d-%H%M%S-%f")
        folder = root / name
        made = []
        above = root
        while not os.path.lexists(above) and above != above.parent:
            made.append(above)
            above = above.parent
        folder.mkdir(parents=True, mode=0o700)
        record = cls(
            folder,
            {
                "name": name,
                "created": now.isoformat(),
                "restoring": restoring,
                "state": "restoring",
                "databases": {},
                "media": None,
                "owner": owner(),
            },
        )
        record.made = made
        record.save()
        return record

    @classmethod
    def load(cls, folder: Path) -> SafetyRecord:
        try:
            return cls(folder, json.loads((folder / "safety.json").read_text()))
        except (OSError, ValueError) as err:
            raise RestoreError(f"safety copy {folder} is unreadable ({err})") from None

    @property
    def name(self) -> str:
        return self.data["name"]

    def save(self) -> None:
        tmp = self.folder / "safety.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.replace(self.folder / "safety.json")

    def add_database(self, alias: str, entry: dict) -> None:
        self.data["databases"][alias] = entry
        self.save()

    def remove_database(self, alias: str) -> None:
        """Forget the entry of ``alias`` (its step changed nothing)."""
        self.data["databases"].pop(alias, None)
        self.save()

    @property
    def media_folder(self) -> Path:
        return self.folder / "media"

    @property
    def media_journal(self) -> Path:
        """Every step of the media swap, written before the step (see :func:`backup_app.media.commit_archive`)."""
        return self.folder / "media.journal"

    @property
    def owner(self) -> dict | None:
        """The process that made the record (host, pid, boot id, start time)."""
        return self.data.get("owner")

    def abandoned(self) -> bool:
        """A restore that never finished and whose process is gone (killed): the next run must resolve it."""
        return self.state == "restoring" and owner_gone(self.owner) is not False

    def set_media(self, created: list[str], folders: dict | None = None) -> None:
        """``created``: files the restore added; ``folders``: ``{"made": [...], "modes": {name: old mode}}``."""
        self.data["media"] = {"originals": "media", "created": created, "folders": folders or {}}
        self.save()

    def mark(self, state: str) -> None:
        self.data["state"] = state
        self.save()

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.data["created"])

    @property
    def state(self) -> str:
        """``restoring`` (the restore was killed half way), ``done``, ``rolled back``."""
        return self.data["state"]

    @property
    def databases(self) -> dict[str, dict]:
        """Alias -> the safety entry its engine recorded (what it replaced and where that is kept)."""
        return self.data["databases"]

    @property
    def media(self) -> dict | None:
        return self.data.get("media")

    def clear(self) -> None:
        """Forget what was kept (after it was put back)."""
        self.data["databases"] = {}
        self.data["media"] = None
        self.save()


def safety_root() -> Path:
    return app_settings.safety_dir


def list_records(root: Path | None = None) -> list[SafetyRecord]:
    """Safety records, newest first."""
    root = root or safety_root()
    if not root.is_dir():
        return []
    records = []
    for folder in sorted(root.iterdir(), reverse=True):
        if (folder / "safety.json").is_file():
            records.append(SafetyRecord.load(folder))
    return records


def expired(records: list[SafetyRecord], days: int, now: datetime | None = None) -> list[SafetyRecord]:
    """The records older than ``days`` at ``now`` (default: now)."""
    limit = (now or timezone.now()) - timedelta(days=days)
    return [record for record in records if record.created < limit]


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (not following links)."""
    total = 0
    for base, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                continue
    return total
