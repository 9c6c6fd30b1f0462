"""Database engines: one module per vendor behind the interface of :class:`~backup_app.engines.base.Engine`.

``engine_for(alias)`` gives the engine of a ``DATABASES`` alias; ``site_lock(what)`` holds the site's
backup/restore lock, taken on the ``default`` database: several worker processes or machines sharing that
database share the lock, and it dies with its holder (a killed process never leaves a stale lock).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from django.db import connections

from ..errors import BackupError
from .base import Engine, Locked, SiteLock, Staged, Strategy, build_connector


def engine_class(vendor: str) -> type[Engine] | None:
    """The engine class of a Django ``connection.vendor``, None for one backup_app has none for.

    Each vendor's module is imported when its class is first asked for, so that a site imports only the engines
    its databases use (a SQLite site never loads the MariaDB dump guard or the PostgreSQL owner filters)."""
    if vendor == "sqlite":
        from .sqlite import SqliteEngine

        return SqliteEngine
    if vendor == "postgresql":
        from .postgresql import PostgresEngine

        return PostgresEngine
    if vendor == "mysql":
        from .mysql import MysqlEngine

        return MysqlEngine
    return None


def engine_for(alias: str) -> Engine:
    """The :class:`Engine` of a ``DATABASES`` alias, on its connector; an unsupported vendor is a clear error."""
    if alias not in connections.settings:
        raise BackupError(f"database alias {alias!r} is not in DATABASES")
    vendor = connections[alias].vendor
    engine = engine_class(vendor)
    if engine is None:
        raise BackupError(
            f"database {alias!r} uses {vendor!r}, which backup_app cannot back up; "
            "use SQLite, PostgreSQL or MariaDB/MySQL"
        )
    connector = build_connector(alias)
    if not isinstance(connector, engine.connectors):
        raise BackupError(unsupported_connector(alias, engine, type(connector)))
    return engine(alias, connector)


def unsupported_connector(alias: str, engine: type[Engine], cls: type) -> str:
    """One line: ``cls`` is not a connector ``engine`` can run, why, and which ones it runs."""
    names = ", ".join(f"{c.__module__}.{c.__name__}" for c in engine.connectors)
    return (
        f"database {alias!r}: connector {cls.__module__}.{cls.__name__} is not one backup_app can run for "
        f"{engine.vendor} ({engine.refused_why}); use {names} or a subclass"
    )


def site_lock(what: str, alias: str = "default") -> AbstractContextManager[SiteLock]:
    """Hold the site's backup/restore lock for a ``with`` block (it yields the :class:`SiteLock`).

    :class:`Locked` when another process holds it.
    """
    return engine_for(alias).lock(what)


__all__ = [
    "Engine",
    "Locked",
    "SiteLock",
    "Staged",
    "Strategy",
    "engine_class",
    "engine_for",
    "site_lock",
    "unsupported_connector",
]
