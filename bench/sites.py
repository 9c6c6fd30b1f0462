"""Throwaway demo sites for the benchmark: own folder, own database, configured by ``INVENTREE_*``.

Like ``tests/conftest.py`` (``make_site`` / ``base_env``), every site is the
demo site (``config.settings``) of the code under test, pointed by environment variables
at its own database, media folder, backup folder and safety folder.  A site
is created, migrated, loaded with a :class:`bench.dataset.Dataset` and
dropped again: PostgreSQL / MariaDB databases are created and dropped (with
every ``<name>_...`` database a restore left beside them), SQLite is a file in
the site's folder.

Every database this module creates is written to ``<workdir>/databases.json``
first, so a run that was killed has its databases dropped by the next one
(:func:`drop_leftovers`).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from .dataset import TABLES, Dataset, read_copy_rows

ROOT = Path(__file__).resolve().parent.parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MY = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
ENGINES = ("sqlite", "postgresql", "mysql")

#: The extra table (not a Django model): many narrow rows, one secondary index.
STOCKITEM_DDL = {
    "postgresql": (
        "CREATE TABLE bench_stockitem (id bigint PRIMARY KEY, part_id bigint NOT NULL, serial varchar(64) NOT NULL, "
        "batch varchar(64) NOT NULL, location varchar(255) NOT NULL, quantity numeric(12,3) NOT NULL, "
        "status smallint NOT NULL, updated timestamptz NOT NULL, notes text NOT NULL, metadata text NULL)"
    ),
    "sqlite": (
        'CREATE TABLE "bench_stockitem" ("id" integer NOT NULL PRIMARY KEY, "part_id" bigint NOT NULL, '
        '"serial" varchar(64) NOT NULL, "batch" varchar(64) NOT NULL, "location" varchar(255) NOT NULL, '
        '"quantity" decimal NOT NULL, "status" smallint NOT NULL, "updated" datetime NOT NULL, '
        '"notes" text NOT NULL, "metadata" text NULL)'
    ),
    "mysql": (
        "CREATE TABLE bench_stockitem (id bigint PRIMARY KEY, part_id bigint NOT NULL, serial varchar(64) NOT NULL, "
        "batch varchar(64) NOT NULL, location varchar(255) NOT NULL, quantity decimal(12,3) NOT NULL, "
        "status smallint NOT NULL, updated datetime(6) NOT NULL, notes longtext NOT NULL, metadata longtext NULL) "
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    ),
}
STOCKITEM_INDEX = "CREATE INDEX bench_stockitem_part_id ON bench_stockitem (part_id)"


def _pg(dbname: str = "postgres"):
    import psycopg

    return psycopg.connect(dbname=dbname, autocommit=True, connect_timeout=5, **PG)


def _my(database: str | None = None):
    import pymysql

    return pymysql.connect(database=database, connect_timeout=5, autocommit=True, **MY)


def _mariadb_cli() -> str:
    return shutil.which("mariadb") or shutil.which("mysql") or "mariadb"


def _mariadb_dump_cli() -> str:
    return shutil.which("mariadb-dump") or shutil.which("mysqldump") or "mariadb-dump"


def mysql_args(database: str | None = None) -> list[str]:
    args = [f"--host={MY['host']}", f"--port={MY['port']}", f"--user={MY['user']}"]
    return args + ([database] if database else [])


def pg_args(database: str) -> list[str]:
    return [f"--host={PG['host']}", f"--port={PG['port']}", f"--username={PG['user']}", f"--dbname={database}"]


# --- bookkeeping of created databases ----------------------------------------------------------------------


def _ledger(workdir: Path) -> Path:
    return workdir / "databases.json"


def _remember(workdir: Path, engine: str, name: str) -> None:
    path = _ledger(workdir)
    data = json.loads(path.read_text()) if path.is_file() else []
    data.append({"engine": engine, "name": name, "pid": os.getpid()})
    path.write_text(json.dumps(data, indent=1))


def _forget(workdir: Path, name: str) -> None:
    path = _ledger(workdir)
    if path.is_file():
        data = [d for d in json.loads(path.read_text()) if d["name"] != name]
        path.write_text(json.dumps(data, indent=1))


def drop_database_family(engine: str, name: str, *, keep_main: bool = False) -> list[str]:
    """Drop ``name`` and every ``name_...`` database (restore, safety, raw copies); returns the names dropped."""
    dropped = []
    prefix = name + "_"
    if engine == "postgresql":
        from psycopg import sql

        with _pg() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname = %s OR starts_with(datname, %s)", (name, prefix)
            ).fetchall()
            for (db,) in rows:
                if keep_main and db == name:
                    continue
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
                dropped.append(db)
    elif engine == "mysql":
        conn = _my()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s "
                    "OR LEFT(SCHEMA_NAME, %s) = %s",
                    (name, len(prefix), prefix),
                )
                for (db,) in cur.fetchall():
                    if keep_main and db == name:
                        continue
                    cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
                    dropped.append(db)
        finally:
            conn.close()
    return dropped


def _running(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def drop_leftovers(workdir: Path, log: Callable[[str], None] = print) -> None:
    """Drop the databases of an earlier run that did not get to clean up (or was run with ``--keep``)."""
    path = _ledger(workdir)
    if not path.is_file():
        return
    for entry in json.loads(path.read_text()):
        if entry.get("pid") != os.getpid() and _running(entry.get("pid")):
            continue  # another benchmark run is using this work folder right now
        try:
            gone = drop_database_family(entry["engine"], entry["name"])
        except Exception as err:  # the server may be gone; try again next time
            log(f"  could not drop leftover {entry['engine']} database {entry['name']}: {err}")
            continue
        if gone:
            log(f"  dropped leftover databases of an earlier run: {', '.join(gone)}")
        _forget(workdir, entry["name"])


# --- sites ----------------------------------------------------------------------------------------------------


class Site:
    """A demo site in ``root`` on ``engine``; :meth:`env` gives the environment its commands run with."""

    def __init__(self, root: Path, engine: str, workdir: Path, source: Path = ROOT):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; use {', '.join(ENGINES)}")
        self.root = root
        #: The code under test: this repository, or a snapshot of a commit (``--source``).
        self.source = source
        self.engine = engine
        self.workdir = workdir
        self.db_name = f"bench_{engine[:2]}_{uuid.uuid4().hex[:8]}"
        self.created = False

    @property
    def media(self) -> Path:
        return self.root / "media"

    @property
    def sqlite_path(self) -> Path:
        return self.root / "db.sqlite3"

    @property
    def safety(self) -> Path:
        return self.root / "safety"

    def env(self, backup_dir: Path | None = None, compression: str | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INVENTREE_", "DJANGO_"))}
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "config.settings",
                "INVENTREE_CONFIG_FILE": str(self.root / "config.yaml"),
                "INVENTREE_MEDIA_ROOT": str(self.media),
                "INVENTREE_STATIC_ROOT": str(self.root / "static"),
                "INVENTREE_BACKUP_DIR": str(backup_dir or self.root / "backup"),
                "INVENTREE_BACKUP_SAFETY_DIR": str(self.safety),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if compression:
            env["INVENTREE_BACKUP_COMPRESSION"] = compression
        if self.engine == "sqlite":
            env.update({"INVENTREE_DB_ENGINE": "sqlite3", "INVENTREE_DB_NAME": str(self.sqlite_path)})
        elif self.engine == "postgresql":
            env.update(
                {
                    "INVENTREE_DB_ENGINE": "postgresql",
                    "INVENTREE_DB_NAME": self.db_name,
                    "INVENTREE_DB_HOST": PG["host"],
                    "INVENTREE_DB_PORT": str(PG["port"]),
                    "INVENTREE_DB_USER": PG["user"],
                }
            )
        else:
            env.update(
                {
                    "INVENTREE_DB_ENGINE": "mysql",
                    "INVENTREE_DB_NAME": self.db_name,
                    "INVENTREE_DB_HOST": MY["host"],
                    "INVENTREE_DB_PORT": str(MY["port"]),
                    "INVENTREE_DB_USER": MY["user"],
                }
            )
        return env

    @staticmethod
    def manage_argv(*args: str) -> list[str]:
        return [sys.executable, "manage.py", *args]

    @staticmethod
    def invoke_argv(*args: str) -> list[str]:
        return [sys.executable, "-m", "invoke", *args]

    def run(self, argv: list[str], env: dict | None = None) -> str:
        proc = subprocess.run(
            argv, cwd=self.source, env=env or self.env(), capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if proc.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        return proc.stdout

    # --- set-up ---------------------------------------------------------------------------------------------

    def create(self, dataset: Dataset | None) -> None:
        """Folders, database, migrations, then the dataset's rows and media files (if one is given)."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.yaml").write_text("")
        if self.engine == "postgresql":
            _remember(self.workdir, self.engine, self.db_name)
            with _pg() as conn:
                conn.execute(f'CREATE DATABASE "{self.db_name}"')
        elif self.engine == "mysql":
            _remember(self.workdir, self.engine, self.db_name)
            conn = _my()
            try:
                with conn.cursor() as cur:
                    cur.execute(f"CREATE DATABASE `{self.db_name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            finally:
                conn.close()
        self.created = True
        self.run(self.manage_argv("migrate", "--noinput", "-v0"))
        self.media.mkdir(exist_ok=True)
        if dataset is None:
            return
        getattr(self, f"_load_{self.engine}")(dataset)
        subprocess.run(["cp", "-a", f"{dataset.media}/.", str(self.media)], check=True)

    def _load_postgresql(self, dataset: Dataset) -> None:
        with _pg(self.db_name) as conn:
            conn.execute("SET TIME ZONE 'UTC'")
            conn.execute(STOCKITEM_DDL["postgresql"])
            for table, columns in TABLES.items():
                with conn.cursor() as cur:
                    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        with open(dataset.table_file(table), "rb") as fh:
                            while data := fh.read(1024 * 1024):
                                copy.write(data)
            conn.execute(STOCKITEM_INDEX)
            conn.execute("SELECT setval(pg_get_serial_sequence('demo_part', 'id'), (SELECT max(id) FROM demo_part))")
            # Set hint bits and statistics now, so the first timed dump does not pay for them.
            conn.execute("VACUUM (FREEZE, ANALYZE)")
            conn.execute("CHECKPOINT")

    def _load_sqlite(self, dataset: Dataset) -> None:
        conn = sqlite3.connect(self.sqlite_path)
        try:
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute(STOCKITEM_DDL["sqlite"])
            for table, columns in TABLES.items():
                binary = (columns.index("blob"),) if "blob" in columns else ()
                marks = ", ".join("?" * len(columns))
                cols = ", ".join(f'"{c}"' for c in columns)
                conn.executemany(
                    f'INSERT INTO "{table}" ({cols}) VALUES ({marks})',
                    read_copy_rows(dataset.table_file(table), binary),
                )
            conn.execute(STOCKITEM_INDEX)
            conn.commit()
            conn.execute("ANALYZE")
        finally:
            conn.close()

    def _load_mysql(self, dataset: Dataset) -> None:
        statements = [STOCKITEM_DDL["mysql"], "SET unique_checks=0", "SET foreign_key_checks=0"]
        for table, columns in TABLES.items():
            cols = ", ".join("@blob" if c == "blob" else f"`{c}`" for c in columns)
            extra = " SET `blob` = UNHEX(SUBSTRING(@blob, 3))" if "blob" in columns else ""
            path = str(dataset.table_file(table)).replace("\\", "\\\\").replace("'", "\\'")
            statements.append(
                f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE `{table}` CHARACTER SET utf8mb4 "
                f"FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({cols}){extra}"
            )
        statements += [STOCKITEM_INDEX, "ANALYZE TABLE demo_part, bench_stockitem"]
        subprocess.run(
            [_mariadb_cli(), "--local-infile=1", *mysql_args(self.db_name)],
            input=";\n".join(statements) + ";\n",
            text=True,
            check=True,
            capture_output=True,
        )

    def quiesce(self) -> None:
        """Let the database server write out what earlier steps left in its buffers (before a timed step)."""
        if self.engine == "postgresql":
            with _pg() as conn:
                conn.execute("CHECKPOINT")

    # --- checks ---------------------------------------------------------------------------------------------

    def row_counts(self, database: str | None = None, sqlite_path: Path | None = None) -> dict[str, int]:
        """Rows per dataset table in the live database (or in ``database`` / ``sqlite_path``)."""
        counts = {}
        if self.engine == "sqlite":
            conn = sqlite3.connect(sqlite_path or self.sqlite_path)
            try:
                for table in TABLES:
                    counts[table] = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            finally:
                conn.close()
        elif self.engine == "postgresql":
            with _pg(database or self.db_name) as conn:
                for table in TABLES:
                    counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        else:
            conn = _my(database or self.db_name)
            try:
                with conn.cursor() as cur:
                    for table in TABLES:
                        cur.execute(f"SELECT count(*) FROM `{table}`")
                        counts[table] = cur.fetchone()[0]
            finally:
                conn.close()
        return counts

    def check_restored(
        self,
        dataset: Dataset,
        *,
        database: str | None = None,
        sqlite_path: Path | None = None,
        media: Path | None = None,
    ) -> None:
        """RuntimeError unless every table has the dataset's rows and every media file its size."""
        counts = self.row_counts(database, sqlite_path)
        expected = {t: dataset.rows(t) for t in TABLES}
        if counts != expected:
            raise RuntimeError(f"restored rows {counts} differ from the dataset's {expected}")
        files, size = folder_stats(media or self.media)
        if files != dataset.info["media"]["files"] or size != dataset.info["media"]["bytes"]:
            raise RuntimeError(
                f"restored media has {files} files / {size} bytes; the dataset has "
                f"{dataset.info['media']['files']} / {dataset.info['media']['bytes']}"
            )

    # --- tear-down ------------------------------------------------------------------------------------------

    def drop_side_databases(self) -> list[str]:
        """Drop the ``<name>_...`` databases a restore kept (safety copies), keeping the live one."""
        if self.engine == "sqlite":
            return []
        return drop_database_family(self.engine, self.db_name, keep_main=True)

    def drop(self) -> None:
        if self.created and self.engine != "sqlite":
            drop_database_family(self.engine, self.db_name)
            _forget(self.workdir, self.db_name)
        shutil.rmtree(self.root, ignore_errors=True)


def folder_stats(folder: Path) -> tuple[int, int]:
    """(number of files, total bytes) under ``folder``."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size
