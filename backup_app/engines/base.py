"""The interface every database engine offers, and what they share.

An :class:`Engine` backs up and restores one ``DATABASES`` alias, on the django-dbbackup connector built for
it (:func:`build_connector`), so that every connector option applies: ``dump_cmd``, ``restore_cmd``,
prefixes and suffixes, ``env`` / ``dump_env`` / ``restore_env``, ``use_parent_env``, ``exclude``,
``schemas``, ``drop``, ``pg_options``...

Backup: :meth:`Engine.dump` writes the dump into a stream; :meth:`Engine.check_dump` refuses a file whose
first bytes are not this engine's dump.

Restore, in three steps, so that nothing live changes until everything is checked:

1. :meth:`Engine.stage` loads a dump somewhere the live database is not and returns a :class:`Staged`;
2. :meth:`Engine.commit` swaps it in; what it replaced is kept, described by a *safety entry* (plain JSON
   data) that it records in the restore's :class:`~backup_app.safety.SafetyRecord` before the point of no
   return, and returns;
3. or :meth:`Engine.abandon` throws it away.

The staged object knows its :class:`Strategy` (how it was staged: a side database, a file, a spooled dump
for a restore in place), and the strategy does the commit, the count of tables and the abandon.  A safety
entry names its strategy by ``kind``; :meth:`Engine.undo` (rollback) and :meth:`Engine.discard` find the
strategy by that kind.

:meth:`Engine.lock` holds the site's backup/restore lock; :meth:`Engine.cleanup` removes what a killed
restore left behind.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, ClassVar

from django.db import connections
from django.utils import timezone
from django.utils.module_loading import import_string

from ..errors import BackupAppError, RestoreError, removed_after
from ..settings import app_settings
from ..testing import pause_at

if TYPE_CHECKING:
    from ..safety import SafetyRecord


class Locked(BackupAppError):
    """Another backup or restore of this site is running."""


@dataclass
class SiteLock:
    """The site's lock while it is held (``held`` turns False when the ``with`` block ends)."""

    what: str
    alias: str
    held: bool = True


class Staged:
    """What :meth:`Engine.stage` made, not yet live: handed back to :meth:`Engine.commit` or :meth:`Engine.abandon`."""

    def __init__(self, strategy: Strategy):
        self.strategy = strategy

    def describe(self) -> str:
        """What was made, for a message (``database site_restore_123_1``)."""
        return "staged copy"


class Strategy:
    """One way of staging and swapping in a database; ``kinds`` are the ``kind`` of the safety entries it writes."""

    kinds: tuple[str, ...] = ()

    def stage(self, stream: BinaryIO) -> Staged:
        """Load ``stream`` (a whole dump) where the live database is not; returns what was made."""
        raise NotImplementedError

    def commit(self, staged: Staged, safety: SafetyRecord) -> dict:
        """Make ``staged`` the live database; record what it replaced in ``safety`` (before the point of no
        return) and return that entry."""
        raise NotImplementedError

    def abandon(self, staged: Staged) -> None:
        """Remove ``staged``; the live database is untouched."""
        raise NotImplementedError

    def count_tables(self, staged: Staged) -> int:
        """Tables in ``staged`` (RestoreError where a strategy cannot look inside before the swap)."""
        raise NotImplementedError

    def migrations(self, staged: Staged) -> set[tuple[str, str]] | None:
        """``(app, name)`` of the rows of ``django_migrations`` in ``staged`` (empty without that table), read
        without running anything the dump defined; None where a strategy cannot look inside before the swap."""
        return None

    def undo(self, entry: dict, folder: Path) -> None:
        """Put back the state a safety entry of this strategy kept (its files are in ``folder``)."""
        raise NotImplementedError

    def discard(self, entry: dict) -> None:
        """Drop what a safety entry kept outside its folder (the folder goes with the record)."""


class Engine:
    """Dump and restore for one database alias (see the module docstring for the order of the calls)."""

    vendor: ClassVar[str] = ""
    #: Stock dbbackup's extension for this engine's dumps, so that stock ``dbrestore`` reads our files.
    extension: ClassVar[str] = "dump"
    #: django-dbbackup connector classes (and their subclasses) whose dumps and options this engine makes.
    connectors: ClassVar[tuple[type, ...]] = ()
    #: Why another connector class cannot be used (shown by check E021 and by ``engine_for``).
    refused_why: ClassVar[str] = "backup_app runs only the connectors of its database's command-line tools"

    def __init__(self, alias: str, connector):
        self.alias = alias
        self.connector = connector
        self.settings: dict = connector.settings
        self.exclude: list[str] = list(connector.exclude or [])

    # --- what each engine provides --------------------------------------------------------------

    def dump(self, out: BinaryIO, *, compressed: bool = True) -> None:
        """Write a dump of the live database into ``out`` (``compressed``: the pipeline compresses it)."""
        raise NotImplementedError

    def check_dump(self, head: bytes, name: str) -> None:
        """Raise RestoreError when ``head`` (the first 64 bytes of file ``name``) is not this engine's dump."""
        raise NotImplementedError

    def strategies(self) -> list[Strategy]:
        """Every strategy this engine stages with, the preferred one first."""
        raise NotImplementedError

    def stage(self, stream: BinaryIO) -> Staged:
        """Load the dump in ``stream`` where the live database is not; the live database is untouched."""
        return self.strategies()[0].stage(stream)

    def staging_folder(self) -> Path | None:
        """The folder on this machine where :meth:`stage` writes the whole dump as it comes (the decompressed
        bytes the manifest's ``source_bytes`` counts), so that a restore can weigh it before it starts; None when
        the dump goes elsewhere (a database server)."""
        return None

    def spools_in_place(self) -> bool:
        """Whether a restore of this database surely spools the incoming dump (its decompressed bytes) into the
        safety folder and loads it in place (no right to make a side database): a restore weighs that spool
        before it starts."""
        return False

    def in_place_safety_estimate(self, incoming: int) -> int:
        """About the bytes the safety dump of the live database takes, for a restore in place (:meth:`spools_in_place`)
        that writes it into the safety folder before it loads; ``incoming``: the dump being restored
        (``source_bytes``, 0 if unknown).  Its exact size is known only once written: this is an estimate, and
        the dump is bounded again while written (0: nothing to weigh)."""
        return 0

    def safety_bytes(self, safety_folder: Path) -> int:
        """Bytes :meth:`commit` surely writes into ``safety_folder`` to keep the live database (0: it keeps it
        elsewhere, or at no cost)."""
        return 0

    def lock(self, what: str) -> AbstractContextManager[SiteLock]:
        """Hold the site's backup/restore lock for a ``with`` block; :class:`Locked` when another holds it."""
        raise NotImplementedError

    def cleanup(self) -> list[str]:
        """Remove what a restore killed half way left behind (never the live database); returns names."""
        return []

    # --- the same for every engine ------------------------------------------------------------

    def commit(self, staged: Staged, safety: SafetyRecord) -> dict:
        """Swap ``staged`` in; the replaced state is kept and its entry recorded in ``safety`` and returned."""
        return staged.strategy.commit(staged, safety)

    def abandon(self, staged: Staged) -> None:
        """Throw a staged database away."""
        staged.strategy.abandon(staged)

    def count_tables(self, staged: Staged) -> int:
        """Number of tables in a staged database (``verify --restore-test``)."""
        return staged.strategy.count_tables(staged)

    def staged_migrations(self, staged: Staged) -> set[tuple[str, str]] | None:
        """The migrations the staged database records (None: cannot be known before the swap)."""
        return staged.strategy.migrations(staged)

    def undo(self, entry: dict, folder: Path) -> None:
        """Roll back: put back the state safety ``entry`` kept (its files in ``folder``)."""
        self._strategy_of(entry).undo(entry, folder)

    def discard(self, entry: dict) -> None:
        """Drop the state safety ``entry`` kept (the files in the record's folder go with the folder)."""
        self._strategy_of(entry).discard(entry)

    def scratch_restore(self, stream: BinaryIO, check: Callable[[int], object] | None = None) -> int:
        """Stage ``stream``, count its tables (``check`` is given the count while the copy is there), throw it
        away; returns the count.  A failure to throw it away never hides a failed count or check: it is added to
        that error as a note naming what was left (:func:`~backup_app.errors.removed_after`)."""
        staged = self.stage(stream)
        with removed_after(lambda: self.abandon(staged), f"the scratch copy ({staged.describe()})"):
            pause_at(f"verify:staged:{self.alias}")
            tables = self.count_tables(staged)
            if check is not None:
                check(tables)
        return tables

    def table_count(self) -> int:
        """Number of tables in the live database."""
        connection = connections[self.alias]
        with connection.cursor() as cursor:
            return len(connection.introspection.table_names(cursor))

    def applied_migrations(self) -> list[list[str]]:
        """``[app, name]`` of every migration recorded in the live database, sorted."""
        from django.db.migrations.recorder import MigrationRecorder

        recorder = MigrationRecorder(connections[self.alias])
        if not recorder.has_table():
            return []
        return sorted([app, name] for app, name in recorder.applied_migrations())

    def tool_env(self, extra: dict | None = None) -> dict[str, str]:
        """Environment of a dump or restore tool: the connector's ``use_parent_env`` and ``env``, then ``extra``."""
        return tool_env(self.connector, extra)

    def _strategy_of(self, entry: dict) -> Strategy:
        for strategy in self.strategies():
            if entry.get("kind") in strategy.kinds:
                return strategy
        raise RestoreError(f"safety entry of kind {entry.get('kind')!r} is not one of the {self.vendor} engine's")


def build_connector(alias: str):
    """django-dbbackup's connector for ``alias``, with the connector options in force now.

    Like :func:`dbbackup.db.base.get_connector`, but from ``DBBACKUP_CONNECTORS`` and
    ``DBBACKUP_CONNECTOR_MAPPING`` as Django has them now, not as django-dbbackup copied them at import.
    """
    from dbbackup.db.base import CONNECTOR_MAPPING, DEFAULT_CONNECTOR

    options = app_settings.connector_options(alias)
    database = connections[alias].settings_dict
    mapping = {**CONNECTOR_MAPPING, **app_settings.connector_mapping}
    path = options.get("CONNECTOR") or mapping.get(database["ENGINE"], DEFAULT_CONNECTOR)
    connector = import_string(path)(alias, **options)
    # BaseDBConnector.settings merges the connection with the import-time copy of DBBACKUP_CONNECTORS and caches
    # the result in _settings (tests/test_engines.py checks that it still does): give it the current options.
    connector._settings = {**database, **options}
    return connector


def tool_env(connector, extra: dict | None = None) -> dict[str, str]:
    """Environment of ``connector``'s dump or restore tool: its ``use_parent_env`` and ``env``, then ``extra``."""
    env = dict(os.environ) if getattr(connector, "use_parent_env", True) else {}
    env.update(getattr(connector, "env", None) or {})
    env.update(extra or {})
    return {k: str(v) for k, v in env.items()}


def words(value) -> list[str]:
    """A connector option given as a list of arguments or as one shell-quoted string -> a list."""
    if not value:
        return []
    return list(value) if isinstance(value, list | tuple) else shlex.split(str(value))


def holder() -> str:
    """Who holds a lock: this process, its host and since when."""
    return f"pid {os.getpid()} on {socket.gethostname()} since {timezone.localtime().strftime('%H:%M:%S')}"


def lock_key(name: str) -> int:
    """A signed 64-bit number for ``name`` (PostgreSQL advisory locks take one)."""
    return int.from_bytes(hashlib.sha256(f"backup_app:{name}".encode()).digest()[:8], "big", signed=True)


def locked(by: str) -> Locked:
    return Locked(f"another backup or restore is running ({by}); wait for it to finish")


def released(lock: SiteLock) -> Iterator[SiteLock]:
    """Yield ``lock`` for a ``with`` block and mark it released afterwards."""
    try:
        yield lock
    finally:
        lock.held = False
