"""Safety copies: what a restore replaced, kept so the restore can be undone.

Every restore keeps the state it replaces, by the cheapest atomic means each
engine has: the old SQLite file (a hard link), the old PostgreSQL database
(renamed, not dropped), the old MariaDB tables (moved to a side database), the
replaced and removed media files (moved aside).  If the restore fails half
way, everything is put back.  When it succeeds the copy is kept for
``backup_safety_days`` (``backup_safety`` on), or dropped at once.

A record lives in ``<backup_safety_dir>/<name>/safety.json``; roll back with
``invoke rollback`` (newest) or ``invoke rollback --name NAME``.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

from django.utils import timezone

from .errors import RestoreError
from .settings import app_settings


class SafetyRecord:
    """One restore's safety copy: a folder and a JSON file saying what it holds."""

    def __init__(self, folder: Path, data: dict):
        self.folder = folder
        self.data = data

    @classmethod
    def create(cls, root: Path, restoring: str | None) -> SafetyRecord:
        now = timezone.localtime()
        name = now.strftime("%Y-%m-%d-%H%M%S-%f")
        folder = root / name
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
            },
        )
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

    @property
    def media_folder(self) -> Path:
        return self.folder / "media"

    def set_media(self, created: list[str]) -> None:
        self.data["media"] = {"originals": "media", "created": created}
        self.save()

    def mark(self, state: str) -> None:
        self.data["state"] = state
        self.save()

    def rollback(self) -> list[str]:
        """Put back everything this record kept; returns what was rolled back."""
        from .databases import engine_for
        from .media import media_storage, undo_media

        done = []
        if self.data.get("media") is not None or self.media_folder.exists():
            undo_media(media_storage(), self.media_folder, (self.data.get("media") or {}).get("created", []))
            done.append("media files")
        for alias, entry in self.data["databases"].items():
            engine_for(alias).rollback(entry, self.folder)
            done.append(f"database '{alias}'")
        self.data["databases"] = {}
        self.data["media"] = None
        self.mark("rolled back")
        return done

    def discard(self) -> None:
        """Delete the kept state (old databases, moved-aside files) and the record."""
        from .databases import engine_for

        for alias, entry in self.data["databases"].items():
            try:
                engine_for(alias).discard(entry)
            except Exception:
                continue
        shutil.rmtree(self.folder, ignore_errors=True)


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


def expire(days: int, root: Path | None = None) -> list[str]:
    """Discard safety records older than ``days``; returns their names."""
    limit = timezone.now() - timedelta(days=days)
    gone = []
    for record in list_records(root):
        from datetime import datetime

        if datetime.fromisoformat(record.data["created"]) < limit:
            record.discard()
            gone.append(record.name)
    return gone
