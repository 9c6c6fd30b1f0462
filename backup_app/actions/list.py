"""List: the backup sets in the storage, newest first (complete, incomplete and legacy)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ..engines import engine_for
from ..progress import NO_PROGRESS, Progress, size_text
from ..safety import folder_bytes, list_records
from ..sets import BackupSet, list_sets
from ..settings import app_settings
from ..storage import backup_storage


@dataclass
class ListOptions:
    path: str | None = None  # a local folder instead of the backup storage


def run(options: ListOptions | None = None, progress: Progress = NO_PROGRESS) -> list[BackupSet]:
    """Every backup set of the storage, newest first (one listing, one read per manifest)."""
    options = options or ListOptions()
    return list_sets(backup_storage(options.path))


def kept_copies(root: Path | None = None, days: int | None = None, *, server_sizes: bool = True) -> list[dict]:
    """What the safety copies of restores hold and where, newest first: ``name``, ``created``, ``state``,
    ``folder``, ``bytes`` (of the folder), ``databases`` (where each replaced database is kept: a database on
    its server, with its size there, or a file in the folder), ``server_databases`` (``alias``, ``database``,
    ``bytes`` of each kept on its server; None where the server could not be asked), ``expires`` (after
    ``backup_safety_days``)."""

    days = app_settings.safety_days if days is None else days
    found = []
    for record in list_records(root):
        where = []
        on_servers = []
        for alias, entry in record.databases.items():
            if entry.get("database"):
                size = server_database_bytes(alias, entry["database"]) if server_sizes else None
                on_servers.append({"alias": alias, "database": entry["database"], "bytes": size})
                shown = f", {size_text(size)}" if size is not None else ""
                where.append(f"database '{alias}': {entry['database']} on its server{shown}")
            elif entry.get("file") or entry.get("path"):
                where.append(f"database '{alias}': {entry.get('file') or entry.get('path')}")
        found.append(
            {
                "name": record.name,
                "created": record.created,
                "state": record.state,
                "folder": str(record.folder),
                "bytes": folder_bytes(record.folder),
                "databases": where,
                "server_databases": on_servers,
                "expires": record.created + timedelta(days=days),
            }
        )
    return found


def server_database_bytes(alias: str, database: str) -> int | None:
    """Bytes the kept ``database`` takes on the server of ``alias`` (PostgreSQL's ``pg_database_size``,
    MariaDB's information_schema), or None when it is gone or the server cannot be asked."""
    try:
        engine = engine_for(alias)
        return engine.database_bytes(database)
    except Exception:  # noqa: BLE001 - a size is a courtesy of the listing; the server may be down
        return None
