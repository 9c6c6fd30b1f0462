"""SQLite: an online-backup snapshot streamed out; restored into a file beside the live one, swapped by rename."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dbbackup.db.sqlite import SqliteBackupConnector, SqliteCPConnector
from django.db import connections

from ..errors import BackupError, RestoreError
from ..ownership import Ownership, give_to_folder, take_over
from ..streams import RoomGuard, copy, file_system_of, pump
from ..testing import pause_at
from ..tools import owner_tag, scratch_gone
from .base import Engine, SiteLock, Staged, Strategy, holder, locked, released

if TYPE_CHECKING:
    from ..safety import SafetyRecord

MAGIC = b"SQLite format 3\x00"


class StagedFile(Staged):
    """The restored database in a private file next to the live one (same folder, so the swap is a rename)."""

    def __init__(self, strategy: Strategy, path: Path):
        super().__init__(strategy)
        self.path = path

    def describe(self) -> str:
        return f"file {self.path}"


class FileSwap(Strategy):
    """Write the dump to a file beside the live database, check it, rename it over the live file.

    The replaced file is kept in the safety folder as a hard link (a copy across file systems); entries:
    ``sqlite-file`` (the old file kept) or ``sqlite-new`` (there was no database file).
    """

    kinds = ("sqlite-file", "sqlite-new")

    def __init__(self, engine: SqliteEngine):
        self.engine = engine

    def stage(self, stream: BinaryIO) -> StagedFile:
        path = self.engine.path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.restore-{os.getpid()}-{owner_tag()}-", dir=path.parent)
        try:
            with open(fd, "wb") as fh:
                copy(RoomGuard(stream, path.parent), fh)
                fh.flush()
                os.fsync(fh.fileno())
            _check_file(Path(tmp_name))
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return StagedFile(self, Path(tmp_name))

    def commit(self, staged: StagedFile, safety: SafetyRecord) -> dict:
        path = self.engine.path
        # No connection may keep the old file (or its WAL) open across the swap.
        connections[self.engine.alias].close()
        replaced = Ownership.of(path, follow=True)
        if replaced is not None:
            kept = safety.folder / f"{self.engine.alias}.sqlite3"
            _checkpoint(path)
            try:
                os.link(path, kept)  # the old file, kept for free
            except OSError:
                shutil.copy2(path, kept)
            entry = {"kind": "sqlite-file", "file": kept.name, "path": str(path), "ownership": replaced.as_dict()}
        else:
            entry = {"kind": "sqlite-new", "path": str(path)}
        # The site's user must open the restored file as it opened the old one: same owner, group and mode.
        take_over(staged.path, replaced)
        safety.add_database(self.engine.alias, entry)
        pause_at(f"restore:db-swapping:{self.engine.alias}")  # the entry written, the file not yet swapped
        _swap(staged.path, path)
        return entry

    def abandon(self, staged: StagedFile) -> None:
        staged.path.unlink(missing_ok=True)

    def migrations(self, staged: StagedFile) -> set[tuple[str, str]]:
        conn = sqlite3.connect(f"file:{staged.path}?mode=ro", uri=True)
        try:
            kind = conn.execute("SELECT type FROM sqlite_master WHERE name = 'django_migrations'").fetchone()
            if kind is None:
                return set()
            if kind[0] != "table":
                raise RestoreError(f"its django_migrations is a {kind[0]}, not a table; database left unchanged")
            return {(str(app), str(name)) for app, name in conn.execute("SELECT app, name FROM django_migrations")}
        finally:
            conn.close()

    def count_tables(self, staged: StagedFile) -> int:
        conn = sqlite3.connect(staged.path)
        try:
            return conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            ).fetchone()[0]
        finally:
            conn.close()

    def undo(self, entry: dict, folder: Path) -> None:
        path = Path(entry["path"])
        connections[self.engine.alias].close()
        if entry["kind"] == "sqlite-new":
            for suffix in ("", "-wal", "-shm", "-journal"):
                with suppress(FileNotFoundError):
                    os.remove(f"{path}{suffix}")
            return
        kept = folder / entry["file"]
        tmp = Path(path.parent / f".{path.name}.rollback-{os.getpid()}-{owner_tag()}")
        tmp.unlink(missing_ok=True)
        shutil.copyfile(kept, tmp)  # a copy: the kept file stays whole until the record goes (an undo may rerun)
        # The file as it was: owner, group and mode recorded at the swap (a hard link has them too).
        take_over(tmp, Ownership.from_dict(entry.get("ownership")) or Ownership.of(kept))
        _swap(tmp, path)


class SqliteEngine(Engine):
    """SQLite: online backup API to a private snapshot; restore by atomic rename; the lock is ``flock``."""

    vendor = "sqlite"
    extension = SqliteBackupConnector.extension
    #: Both write the database file itself.  SqliteConnector's SQL text is refused: restored statement by
    #: statement into the live file (no atomic swap), and SQL can ATTACH and write other files.
    connectors = (SqliteBackupConnector, SqliteCPConnector)
    refused_why = (
        "backup_app writes SQLite backups as the database file itself (SqliteBackupConnector's format); "
        "a SQL text dump is restored statement by statement and can ATTACH other files"
    )

    @property
    def path(self) -> Path:
        return Path(self.settings["NAME"])

    def dump(self, out: BinaryIO, *, compressed: bool = True) -> None:
        path = self.path
        with tempfile.TemporaryDirectory(prefix="backup-sqlite-") as tmp:
            snapshot = Path(tmp) / "snapshot.sqlite3"
            if not path.is_file():
                raise BackupError(f"the SQLite database {path} does not exist; check the database NAME")
            # A URI with the path quoted: a '#' or '?' in a folder name is part of the name, not of the URI.
            src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                dst = sqlite3.connect(snapshot)
                try:
                    # The snapshot is a private temporary file, read once and removed: nothing needs it on the
                    # disk, so its commits are not synced (a connection setting: the file's header, hence its
                    # journal mode, is still the live file's).  A crash leaves no backup either way.
                    dst.execute("PRAGMA synchronous=OFF")
                    src.backup(dst)
                    tables = {r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                    for table in self.exclude:
                        if table in tables:
                            dst.execute(f'DELETE FROM "{table.replace(chr(34), chr(34) * 2)}"')
                    dst.commit()
                    # The snapshot keeps the live file's header (journal mode, page size, user_version,
                    # application_id): a WAL database comes back in WAL mode.  Closing it folds its WAL into
                    # the file, which alone is then the whole database (stock dbrestore can copy it).
                finally:
                    dst.close()
            except sqlite3.Error as err:
                raise BackupError(f"SQLite backup of {path} failed: {err}") from None
            finally:
                src.close()
            with open(snapshot, "rb", buffering=0) as fh:
                pump(fh, out)

    def check_dump(self, head: bytes, name: str) -> None:
        if not head.startswith(MAGIC):
            raise RestoreError(
                f"{name} is not a {self.vendor} dump (it starts with {head[:8]!r}); "
                "pick the database file of a backup set"
            )

    def strategies(self) -> list[Strategy]:
        return [FileSwap(self)]

    def staging_folder(self) -> Path:
        """Beside the live file (the swap is a rename)."""
        return self.path.parent

    def safety_bytes(self, safety_folder: Path) -> int:
        """The live file's size when the safety folder is on another file system (a copy); 0 on the same one,
        where the old file is kept as a hard link, or when there is no file yet."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return 0
        return 0 if file_system_of(safety_folder)[0] == file_system_of(self.path)[0] else size

    def cleanup(self) -> list[str]:
        """Remove staged and rollback files of runs whose process is gone (``.<db>.restore-<pid>-<tag>-...``);
        another host's stay (:func:`~backup_app.tools.scratch_gone`)."""
        path = self.path
        gone = []
        for pattern in (f".{path.name}.restore-*", f".{path.name}.rollback-*"):
            for stale in path.parent.glob(pattern):
                if not scratch_gone(stale.name.rsplit(".", 1)[-1].split("-", 1)[1], "-"):
                    continue  # a verify or restore still at work, or one of another host
                stale.unlink(missing_ok=True)
                gone.append(stale.name)
        return gone

    @contextmanager
    def lock(self, what: str) -> Iterator[SiteLock]:
        """``flock`` on a lock file next to the database file; it dies with its holder."""
        lock_file = Path(f"{self.settings['NAME']}.backup-lock")
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        # Made by root (sudo, Docker): the site's user, whose scheduled backups take the same lock, must open it.
        give_to_folder(lock_file, self.path if self.path.exists() else lock_file.parent)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise locked(os.pread(fd, 500, 0).decode(errors="replace").strip() or "another process") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what} by {holder()}\n".encode(), 0)
            yield from released(SiteLock(what, self.alias))
        finally:
            os.close(fd)


def _check_file(path: Path) -> None:
    try:
        check = sqlite3.connect(path)
        try:
            # quick_check reads every page and checks the b-trees (integrity_check also cross-checks every index
            # against its table, 3x slower); the bytes themselves are proven by the manifest's SHA-256.
            result = check.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            check.close()
    except sqlite3.DatabaseError as err:
        raise RestoreError(f"the restored SQLite file fails to open ({err}); database left unchanged") from None
    if result != "ok":
        raise RestoreError(f"the restored SQLite file fails its integrity check ({result}); database left unchanged")
    _check_schema(path)


#: Functions no schema of a Django site calls, which would reach outside the file were they enabled: extension
#: loading, the FTS3 tokenizer pointer, the CLI's file functions.
_FOREIGN = re.compile(r"\b(load_extension|fts3_tokenizer|readfile|writefile)\s*\(", re.IGNORECASE)


def _check_schema(path: Path) -> None:
    """Refuse a file whose schema (triggers, views, defaults, checks) calls what reaches outside the database."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    finally:
        conn.close()
    for kind, name, sql in rows:
        found = _FOREIGN.search(sql)
        if found:
            raise RestoreError(
                f"its {kind} {name!r} calls {found.group(1)}, which reaches outside the database; refusing the "
                "file, database left unchanged"
            )


def _checkpoint(path: Path) -> None:
    """Fold a WAL into the main file so the file alone is the whole database."""
    with suppress(sqlite3.Error):
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()


def _swap(new: Path, path: Path) -> None:
    """Atomically put ``new`` at ``path``; a stale WAL/SHM/journal of the old file is removed first."""
    for suffix in ("-wal", "-shm", "-journal"):
        with suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")
    os.replace(new, path)
