"""What the two server engines (PostgreSQL, MariaDB/MySQL) share: side databases and the restore in place.

A restore is staged in a *side database* (:class:`SideDatabase`): created next to the live one, loaded,
checked, then swapped in by the engine's atomic :meth:`ServerEngine.swap` (PostgreSQL renames databases,
MariaDB moves every table in one ``RENAME TABLE``); the live database is kept aside under a safety name
until the safety copy expires.

Without the right to create a database the restore happens *in place* (:class:`InPlace`): the dump is
spooled to a private folder of the safety folder (never ``$TMPDIR``; a killed run's folder is removed by the
next :meth:`ServerEngine.cleanup`), the live database is dumped into the safety record, then
:meth:`ServerEngine.replace` loads the dump over it (PostgreSQL in one transaction).

Each engine supplies the vendor's statements: :meth:`~ServerEngine.create_database`,
:meth:`~ServerEngine.drop_database`, :meth:`~ServerEngine.load`, :meth:`~ServerEngine.swap`,
:meth:`~ServerEngine.replace`, :meth:`~ServerEngine.side_databases`, :meth:`~ServerEngine.tables_in`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, ClassVar

from ..errors import BackupAppError, NothingChanged, RestoreError
from ..secrets import redact
from ..settings import app_settings
from ..streams import OutOfRoom, RoomGuard, RoomKeeper, spool
from ..testing import pause_at
from ..tools import owner_tag, scratch_gone
from .base import Engine, Staged, Strategy

if TYPE_CHECKING:
    from ..safety import SafetyRecord

logger = logging.getLogger("backup_app")


class NoSideDatabase(BackupAppError):
    """The server refused to create a side database (no CREATE DATABASE rights); the reason is the message."""


def connection_args(settings: dict) -> dict[str, str]:
    """``host``, ``port``, ``user``, ``password`` of a ``DATABASES`` entry, those that are set."""
    found = {key.lower(): settings.get(key) for key in ("HOST", "PORT", "USER", "PASSWORD")}
    return {key: str(value) for key, value in found.items() if value}


class StagedDatabase(Staged):
    def __init__(self, strategy: Strategy, database: str):
        super().__init__(strategy)
        self.database = database

    def describe(self) -> str:
        return f"database {self.database}"


class SpooledDump(Staged):
    def __init__(self, strategy: Strategy, path: str):
        super().__init__(strategy)
        self.path = path

    def describe(self) -> str:
        return f"spooled dump {self.path}"

    def remove(self, *, strict: bool = False) -> None:
        """Remove the dump and its private folder (``strict``: an OSError is raised, for the caller to report;
        what is left is a spool folder :func:`remove_stale_spools` removes once this run is gone)."""
        if not strict:
            shutil.rmtree(Path(self.path).parent, ignore_errors=True)
            return
        with suppress(FileNotFoundError):
            shutil.rmtree(Path(self.path).parent)


#: Folders of the safety folder that hold an incoming dump during a restore in place: ``.spool-<pid>-<random>``.
SPOOL_PREFIX = ".spool-"


def spool_folder() -> Path:
    """A new private folder (0700) for a dump on its way in: in the safety folder, where the undo dump goes too
    (same disk, same protection), never in ``$TMPDIR``; named after this process for :func:`remove_stale_spools`."""
    root = app_settings.safety_dir
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-{owner_tag()}-", dir=root))


def _base36(number: int) -> str:
    digits = ""
    while number:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
    return digits or "0"


def remove_stale_spools() -> list[str]:
    """Remove the spool folders of runs that are gone (killed half way); returns their names."""
    root = app_settings.safety_dir
    gone = []
    for folder in root.glob(f"{SPOOL_PREFIX}*") if root.is_dir() else ():
        if not scratch_gone(folder.name[len(SPOOL_PREFIX) :], "-"):
            continue  # not ours, that run is still going (a verify beside a restore), or another host's
        shutil.rmtree(folder, ignore_errors=True)
        gone.append(folder.name)
    return gone


class SideDatabase(Strategy):
    """Load into a new database beside the live one, then swap names (entries ``<prefix>-database``)."""

    def __init__(self, engine: ServerEngine):
        self.engine = engine
        self.kinds = (f"{engine.entry_prefix}-database",)

    def stage(self, stream: BinaryIO) -> StagedDatabase:
        engine = self.engine
        fresh = engine.side_name("restore")
        engine.create_database(fresh)  # NoSideDatabase before anything of the stream is read
        try:
            engine.load(fresh, stream)
        except BaseException:
            try:
                engine.drop_database(fresh)
            except Exception as err:  # noqa: BLE001 - the load's error is the one shown
                logger.warning(
                    "could not remove the staging database %s (%s); a later restore removes it, or drop it by hand",
                    fresh,
                    redact(err),
                )
            raise
        return StagedDatabase(self, fresh)

    def commit(self, staged: StagedDatabase, safety: SafetyRecord) -> dict:
        engine = self.engine
        name = engine.name
        kept = engine.side_name("safety", safety.name)
        # What moves with no table (MariaDB's triggers, routines, events, views) is kept as SQL in this file.
        objects = safety.folder / f"{engine.alias}.objects.json"
        engine.wait_for_tables([name, staged.database])  # a site transaction holding them: stop, nothing changed
        # Recorded before the swap: whatever ends this process, the next run finds the old database.
        entry = {"kind": self.kinds[0], "database": kept, "name": name, "incoming": staged.database}
        safety.add_database(engine.alias, {**entry, "state": "swapping", "objects": objects.name})
        pause_at(f"restore:db-swapping:{engine.alias}")  # the entry written, the databases not yet swapped
        try:
            engine.swap(name, aside=kept, incoming=staged.database, keep=objects)
        except NothingChanged:
            safety.remove_database(engine.alias)  # nothing for an undo to put back
            raise
        if objects.exists():
            entry["objects"] = objects.name
        safety.add_database(engine.alias, {**entry, "state": "swapped"})
        return entry

    def abandon(self, staged: StagedDatabase) -> None:
        self.engine.drop_database(staged.database)

    def count_tables(self, staged: StagedDatabase) -> int:
        return self.engine.tables_in(staged.database)

    def migrations(self, staged: StagedDatabase) -> set[tuple[str, str]]:
        return self.engine.migrations_in(staged.database)

    def undo(self, entry: dict, folder: Path) -> None:
        """Swap the kept database back in, if it holds the old one still (the swap happened and was not undone
        yet: an undo killed half way runs again safely); else only drop what the restore left beside it."""
        engine = self.engine
        trash = f"{entry['database'][:40]}_undone"
        objects = folder / entry["objects"] if entry.get("objects") else None
        if objects is not None and not objects.exists():
            objects = None
        if engine.holds_tables(entry["database"]):
            engine.swap(entry["name"], aside=trash, incoming=entry["database"], objects=objects, undo=True)
        if entry.get("state") == "swapping":  # stopped before or during the swap: what it had dropped goes back
            engine.put_back_objects(entry["name"], objects)
        engine.drop_database(trash)
        engine.drop_database(entry["database"])
        if entry.get("incoming"):
            engine.drop_database(entry["incoming"])

    def discard(self, entry: dict) -> None:
        self.engine.drop_database(entry["database"])


class InPlace(Strategy):
    """Without the right to create a database: keep a dump of the live one, then load over it.

    Entries ``<prefix>-dump`` name the kept dump in the safety folder; undoing loads it back.
    """

    def __init__(self, engine: ServerEngine):
        self.engine = engine
        self.kinds = (f"{engine.entry_prefix}-dump",)

    def stage(self, stream: BinaryIO) -> SpooledDump:
        folder = spool_folder()
        try:
            guarded = RoomGuard(stream, folder)  # a dump expanding without end stops before the disk is full
            return SpooledDump(self, spool(guarded, f"{self.engine.vendor}-restore-", folder=folder))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def commit(self, staged: SpooledDump, safety: SafetyRecord) -> dict:
        engine = self.engine
        kept = safety.folder / f"{engine.alias}.{engine.extension}"
        engine.wait_for_tables([engine.name])  # before the entry: nothing to undo when they stay held
        pause_at(f"restore:in-place-dump:{engine.alias}")
        try:
            with open(kept, "wb") as fh:
                engine.dump(RoomKeeper(fh, safety.folder), compressed=False)  # stops before the disk is full
        except OutOfRoom as err:
            raise RestoreError(
                f"the safety dump of database '{engine.alias}' (kept to undo the restore in place) {err}; free some "
                f"room there, or set backup_safety_dir to a folder with room"
            ) from None
        entry = {"kind": self.kinds[0], "file": kept.name}
        safety.add_database(engine.alias, entry)
        pause_at(f"restore:in-place-kept:{engine.alias}")  # the live database dumped and recorded, nothing loaded
        try:
            with open(staged.path, "rb") as fh:
                engine.replace(fh)
        except NothingChanged:
            safety.remove_database(engine.alias)  # the kept dump must not be loaded over later writes
            raise
        except RestoreError as err:
            if engine.replace_is_atomic and not getattr(err, "committed", False):
                raise RestoreError(f"{err}; the restore ran in one transaction, database left unchanged") from None
            raise
        finally:
            staged.remove()
        return entry

    def abandon(self, staged: SpooledDump) -> None:
        staged.remove(strict=True)

    def count_tables(self, staged: SpooledDump) -> int:
        raise RestoreError(f"counting tables needs the right to create a database on the {self.engine.server} server")

    def undo(self, entry: dict, folder: Path) -> None:
        with open(folder / entry["file"], "rb") as fh:
            self.engine.replace(fh, undo=True)


class ServerEngine(Engine):
    """An engine whose database lives on a server: side databases, else a restore in place."""

    #: ``kind`` prefix of the safety entries (``pg`` -> ``pg-database``, ``pg-dump``): kept for old records.
    entry_prefix: ClassVar[str] = ""
    #: Name of the server in messages.
    server: ClassVar[str] = ""
    #: Whether :meth:`replace` changes everything or nothing.
    replace_is_atomic: ClassVar[bool] = False

    @property
    def name(self) -> str:
        """The live database's name."""
        return self.settings["NAME"]

    def side_name(self, purpose: str, safety_name: str = "") -> str:
        """``<name>_restore_<pid>_<host+boot+namespace tag>_<time, base 36>`` for a staged restore (at most 62
        characters: the name's first 25), ``<name>_safety_<stamp>`` for a kept database (the name's first 30)."""
        if purpose == "restore":
            return f"{self.name[:25]}_restore_{os.getpid()}_{owner_tag()}_{_base36(int(time.time()))}"
        return f"{self.name[:30]}_safety_{safety_name.replace('-', '')[-20:]}"

    def connection_args(self) -> dict[str, str]:
        return connection_args(self.settings)

    def strategies(self) -> list[Strategy]:
        return [SideDatabase(self), InPlace(self)]

    def stage(self, stream: BinaryIO) -> Staged:
        """Load into a side database; if the server refuses to create one, spool for a restore in place."""
        side, in_place = self.strategies()
        try:
            return side.stage(stream)
        except NoSideDatabase as err:
            logger.warning("cannot stage the %s restore in a side database (%s); restoring in place", self.server, err)
            return in_place.stage(stream)

    def cleanup(self) -> list[str]:
        """Drop the staging databases of restores (and verifies) whose process is gone; a running one's stay, and
        so do another host's (:func:`~backup_app.tools.scratch_gone`: a container beside this one)."""
        names = []
        # Earlier versions kept 30 characters of the name (their tag had no namespace part).
        for prefix in dict.fromkeys((f"{self.name[:25]}_restore_", f"{self.name[:30]}_restore_")):
            for name in self.side_databases(prefix):
                if name in names or not scratch_gone(name[len(prefix) :], "_"):
                    continue  # a verify beside this restore, still at work, or a run of another host or container
                self.drop_database(name)
                names.append(name)
        return names + remove_stale_spools()

    # --- per vendor -----------------------------------------------------------------------------

    def create_database(self, name: str) -> None:
        """Create an empty database like the live one; :class:`NoSideDatabase` if the server refuses."""
        raise NotImplementedError

    def drop_database(self, name: str) -> None:
        raise NotImplementedError

    def load(self, database: str, stream: BinaryIO) -> None:
        """Restore the dump in ``stream`` into the (empty) ``database``."""
        raise NotImplementedError

    def swap(
        self,
        live: str,
        *,
        aside: str,
        incoming: str,
        keep: Path | None = None,
        objects: Path | None = None,
        undo: bool = False,
    ) -> None:
        """Atomically: ``live`` becomes ``aside``, ``incoming`` becomes ``live`` (``incoming`` is gone after).

        An engine whose swap leaves objects behind (MariaDB: triggers, routines, events and views do not move
        with the tables) writes ``live``'s to ``keep`` before the swap, and gives ``live`` those of ``objects``
        (a file an earlier swap kept) instead of ``incoming``'s.
        RestoreError ("...; database left unchanged") if it cannot be done (NothingChanged when it stopped before
        changing anything, PutBackPending when undoing what it did failed too).  ``undo``: this swap puts back
        a kept database (an undo or rollback), and may wait longer for the tables.
        """
        raise NotImplementedError

    def put_back_objects(self, live: str, objects: Path | None) -> None:
        """Make again in ``live`` what a swap stopped half way had dropped of the objects it kept in
        ``objects`` (MariaDB's triggers, routines, events and views); nothing for an engine whose swap moves
        everything at once."""

    def replace(self, stream: BinaryIO, *, undo: bool = False) -> None:
        """Load the dump in ``stream`` over the live database (the restore in place; ``undo``: putting back the
        dump kept of it, which always replaces everything, whatever the connector's options)."""
        raise NotImplementedError

    def wait_for_tables(self, databases: list[str]) -> None:
        """Return once the tables of ``databases`` could be taken for a swap or a ``DROP`` right now; RestoreError
        (nothing changed) when another connection holds them longer than ``backup_db_lock_timeout``."""

    def side_databases(self, prefix: str) -> list[str]:
        """Names of the databases on the server that start with ``prefix``."""
        raise NotImplementedError

    def database_bytes(self, database: str) -> int | None:
        """What ``database`` takes on the server's disk (a kept safety database), or None if it is not there."""
        raise NotImplementedError

    def live_table_bytes(self) -> int:
        """What the tables a dump of the live database holds take on the server's disk (data, indexes, TOAST)."""
        raise NotImplementedError

    #: How many times the bytes of the live tables on the server's disk its dump may take (see
    #: :meth:`in_place_safety_estimate`).
    dump_growth: ClassVar[int] = 1

    def in_place_safety_estimate(self, incoming: int) -> int:
        """The larger of the incoming dump and :attr:`dump_growth` times what the live tables take on the server's
        disk: a dump of the live database is about as large as one of the same site, and seldom larger than its
        tables on disk (PostgreSQL's custom dump is compressed; MariaDB's SQL text writes a blob as hex, twice
        its bytes)."""
        return max(incoming, self.dump_growth * self.live_table_bytes())

    def server_data_folder(self) -> str | None:
        """The server's data folder, when the server says where it is and it runs on this machine (so that
        its free space can be read here); else None."""
        return None

    def server_is_local(self) -> bool:
        """The server is reached over a socket or loopback: its data folder is on this machine."""
        host = str(self.settings.get("HOST") or "")
        return host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/")

    def server_free_bytes(self) -> tuple[str, int] | None:
        """(data folder, bytes free on its file system) of the server, when this machine can see them."""
        folder = self.server_data_folder() if self.server_is_local() else None
        if not folder or not os.path.isdir(folder):
            return None
        return folder, shutil.disk_usage(folder).free

    def holds_tables(self, database: str) -> bool:
        """Whether ``database`` exists with tables in it (a kept database the swap filled)."""
        return database in self.side_databases(database) and self.tables_in(database) > 0

    def tables_in(self, database: str) -> int:
        """Number of tables in ``database``."""
        raise NotImplementedError

    def migrations_in(self, database: str) -> set[tuple[str, str]]:
        """``(app, name)`` of the rows of ``database``'s ``django_migrations`` table (empty set without one).

        RestoreError when it is there but not a plain table of text columns: reading a view or a type of the
        dump's own could run code the dump defined, with this connection's rights.
        """
        raise NotImplementedError
