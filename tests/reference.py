"""Exact snapshots of what a restore must give back, beyond rows: catalogs, database properties, file stats.

Each function returns plain data (lists, dicts, strings) so that a test compares a snapshot taken after the
restore with one taken at the backup by ``==``, and pytest shows the first difference:

- :func:`postgres_catalog` — ``pg_dump --schema-only`` (owners, ACLs, default privileges, triggers,
  functions and procedures, views and materialized views, extensions, comments), every sequence's value,
  and the database's own properties: owner, encoding, locale provider, collation, ctype, ICU locale,
  connection limit, ACL, per-database (and per-role-in-database) settings, comment;
- :func:`mysql_catalog` — ``mariadb-dump --no-data --routines --triggers --events`` (tables with their
  AUTO_INCREMENT, triggers, routines and events with DEFINER and sql_mode, views with DEFINER and SQL
  SECURITY), the database's charset and collation, and ``SHOW GRANTS`` of the users named;
- :func:`sqlite_catalog` — the whole file's schema and contents (``iterdump``), the header fields
  (journal mode, page size, user_version, application_id, text encoding, auto_vacuum), and the stat of the
  file and of its ``-wal``/``-shm``/``-journal``/``.backup-lock`` companions;
- :func:`file_stats` — the stat of every entry under a folder, not following links: kind, mode, uid, gid,
  mtime (ns; folders' mtimes aside, which every file put into them changes), link targets, file contents.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
#: Tables every run writes to (the run history survives a restore by design; the task queue is django-q's):
#: their sequence values and AUTO_INCREMENT counters are not compared (their rows are not, in ``snapshot.py``).
RUN_TABLES = ("backup_app_backuprun", "django_q_")
MY = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


# --- PostgreSQL ---------------------------------------------------------------------------------


def _pg(dbname: str):
    import psycopg

    return psycopg.connect(dbname=dbname, autocommit=True, connect_timeout=5, **PG)


def postgres_catalog(database: str) -> dict:
    """Everything of ``database`` but its rows: schema with ACLs, sequence values, database properties."""
    out = subprocess.run(
        ["pg_dump", "--schema-only", "-h", PG["host"], "-p", str(PG["port"]), "-U", PG["user"], database],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # pg_dump 15.14+ brackets its output with \restrict / \unrestrict and a random key.
    schema = [line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]
    with _pg(database) as conn:
        sequences = {}
        for schema_name, name in conn.execute(
            "SELECT schemaname, sequencename FROM pg_sequences ORDER BY 1, 2"
        ).fetchall():
            if name.startswith(RUN_TABLES):
                continue
            row = conn.execute(f'SELECT last_value, is_called FROM "{schema_name}"."{name}"').fetchone()
            sequences[f"{schema_name}.{name}"] = list(row)
        props = conn.execute(
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datlocprovider, datcollate, datctype,"
            " daticulocale, datconnlimit, datallowconn,"
            " (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(datacl) a),"
            " shobj_description(oid, 'pg_database')"
            " FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        settings = conn.execute(
            "SELECT coalesce(r.rolname, ''), (SELECT array_agg(c ORDER BY c) FROM unnest(s.setconfig) c)"
            " FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
            " LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = current_database() ORDER BY 1"
        ).fetchall()
    keys = ("owner", "encoding", "locale_provider", "collate", "ctype", "icu_locale", "connlimit", "allowconn")
    database_props = dict(zip(keys, props[:8], strict=True))
    database_props.update(acl=props[8], comment=props[9], settings=[[role, list(conf)] for role, conf in settings])
    return {"schema": schema, "sequences": sequences, "database": database_props}


# --- MariaDB ------------------------------------------------------------------------------------


def _my():
    import pymysql

    return pymysql.connect(connect_timeout=5, autocommit=True, **MY)


def mysql_catalog(database: str, users: list[str] = ()) -> dict:
    """Everything of ``database`` but its rows, its charset and collation, and ``SHOW GRANTS`` of ``users``
    (``'name'@'host'``)."""
    out = subprocess.run(
        [
            "mariadb-dump",
            "-h",
            MY["host"],
            "-P",
            str(MY["port"]),
            "-u",
            MY["user"],
            "--no-data",
            "--routines",
            "--triggers",
            "--events",
            "--skip-comments",
            "--skip-dump-date",
            database,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    conn = _my()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                "WHERE SCHEMA_NAME = %s",
                [database],
            )
            charset = list(cur.fetchone())
            grants = {}
            for user in users:
                cur.execute(f"SHOW GRANTS FOR {user}")
                grants[user] = sorted(r[0] for r in cur.fetchall())
    finally:
        conn.close()
    return {"schema": _without_run_counters(out.splitlines()), "charset": charset, "grants": grants}


def _without_run_counters(lines: list[str]) -> list[str]:
    """The dump with the AUTO_INCREMENT counter of the run tables' ``CREATE TABLE`` taken out."""
    import re

    result, in_run_table = [], False
    for line in lines:
        if line.startswith("CREATE TABLE "):
            in_run_table = line.split("`")[1].startswith(RUN_TABLES)
        if in_run_table and line.startswith(") ENGINE="):
            line = re.sub(r" AUTO_INCREMENT=\d+", "", line)
            in_run_table = False
        result.append(line)
    return result


# --- SQLite -------------------------------------------------------------------------------------

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal", ".backup-lock")


def _stat(path: Path) -> dict | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return {"mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid}


#: The run history (``backup_app.BackupRun``) is written by every run and survives a restore by design.
HISTORY = RUN_TABLES[0]


def _history(line: str) -> bool:
    return line.startswith(f'INSERT INTO "{HISTORY}"') or (
        line.startswith('INSERT INTO "sqlite_sequence"') and f"'{HISTORY}'" in line
    )


def sqlite_catalog(path: Path) -> dict:
    """Schema and contents of the file (the run history's rows aside), its header fields, and the stat of it
    and its companion files.

    Read through an ``immutable`` URI: the snapshot itself creates no ``-wal``/``-shm`` file.
    """
    head = path.read_bytes()[:100]
    header = {
        "page_size": int.from_bytes(head[16:18], "big") or 65536,
        "journal": {1: "rollback", 2: "wal"}[head[18]],
        "user_version": int.from_bytes(head[60:64], "big"),
        "application_id": int.from_bytes(head[68:72], "big"),
        "text_encoding": int.from_bytes(head[56:60], "big"),
        "auto_vacuum": int.from_bytes(head[52:56], "big"),
    }
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
    try:
        dump = [line for line in conn.iterdump() if not _history(line)]
    finally:
        conn.close()
    files = {suffix or "db": _stat(Path(f"{path}{suffix}")) for suffix in ("", *SQLITE_COMPANIONS)}
    return {"header": header, "dump": dump, "files": files}


# --- files --------------------------------------------------------------------------------------


def file_stats(root: Path) -> dict[str, dict]:
    """``{relative name: stat}`` of every entry under ``root`` (links not followed; ``.`` is ``root``)."""
    result = {".": _entry(root)}
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            result[path.relative_to(root).as_posix()] = _entry(path)
    return result


def _entry(path: Path) -> dict:
    st = os.lstat(path)
    entry = {"mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISLNK(st.st_mode):
        entry.update(kind="symlink", target=os.readlink(path))
    elif stat.S_ISDIR(st.st_mode):
        entry.update(kind="dir")
    elif stat.S_ISREG(st.st_mode):
        entry.update(kind="file", mtime_ns=st.st_mtime_ns, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    else:
        entry.update(kind=stat.filemode(st.st_mode)[0])
    return entry


def differences(expected: dict, found: dict, limit: int = 30) -> str:
    """The first ``limit`` lines of difference between two snapshots, for an assertion's message."""
    import difflib
    import json

    lines = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list) and all(isinstance(x, str) for x in a + b):
            lines += [f"{key}: {d}" for d in difflib.unified_diff(a, b, lineterm="", n=0)][2:]
        elif isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    lines.append(f"{key}.{sub}: expected {json.dumps(a.get(sub))}, found {json.dumps(b.get(sub))}")
        else:
            lines.append(f"{key}: expected {json.dumps(a)}, found {json.dumps(b)}")
    return "\n".join(lines[:limit])
