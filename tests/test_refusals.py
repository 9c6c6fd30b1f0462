"""A refused restore leaves nothing new behind: for each way a restore is refused (or fails and is undone)
after it has begun to write — its safety record made, its databases and media staged, a restore in place's
incoming dump spooled and the live database dumped — every path under the site's folder (safety folder,
staging files and folders, spool folders, temp files: ``TMPDIR`` points into it), every row, every media file,
and the databases and throwaway roles on the server are as they were before it.
"""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from conftest import _my_connect, _pg_connect
from test_interrupted import db_rows


def paths(site) -> list[tuple[str, str]]:
    """Every path under the site's folder with its type (the database file's bytes change with the run history;
    its rows are compared apart)."""
    found = []
    for path in sorted(site.root.rglob("*")):
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        found.append((path.relative_to(site.root).as_posix(), kind))
    return found


def media(site) -> dict:
    return {
        p.relative_to(site.media).as_posix(): (p.lstat().st_mode, p.read_bytes() if p.is_file() else None)
        for p in sorted(site.media.rglob("*"))
    }


def server_objects(site) -> list[str]:
    """Databases beside the site's on its server (none for SQLite), and the throwaway PostgreSQL roles of runs
    that have ended (a role of a running process may be another test's, on the same server)."""
    engine, name = site.env["INVENTREE_DB_ENGINE"], site.env["INVENTREE_DB_NAME"]
    if engine == "postgresql":
        with _pg_connect() as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (name + "_",))
            found = [r[0] for r in rows.fetchall()]
            rows = conn.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'bk_restore_')").fetchall()
        return sorted(found + [f"role of a gone run: {r}" for (r,) in rows if not alive(int(r.split("_")[2]))])
    if engine == "mysql":
        conn = _my_connect()
        with conn.cursor() as cur:
            cur.execute(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s", (name + "\\_%",)
            )
            found = sorted(r[0] for r in cur.fetchall())
        conn.close()
        return found
    return []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def everything(site) -> dict:
    return {"paths": paths(site), "rows": db_rows(site), "media": media(site), "server": server_objects(site)}


def same(now: dict, before: dict) -> bool:
    """``now`` is ``before``, but for roles of gone runs that went since (another test's cleanup removed them)."""
    gone = {k: v for k, v in before.items() if k != "server"}
    return {k: v for k, v in now.items() if k != "server"} == gone and set(now["server"]) <= set(before["server"])


def watch_temp(site) -> None:
    """Temp files of the runs go into the site's folder, where :func:`paths` sees them."""
    (site.root / "tmp").mkdir(exist_ok=True)
    site.env["TMPDIR"] = str(site.root / "tmp")


def refuse(site, *args: str) -> str:
    """Run a restore that must fail; check it left everything as it was; return its stderr."""
    before = everything(site)

    result = site.manage("backup_restore", "--noinput", *args, check=False)

    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    now = everything(site)
    assert same(now, before), (now, before)
    return result.stderr


def last(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def set_file(site, kind: str):
    return site.backups / next(f["name"] for f in site.sets()[0]["files"] if f["kind"] == kind)


@pytest.fixture
def backed_up(sqlite_site):
    """A SQLite site with a backup set, then changes; its safety folder not made yet."""
    watch_temp(sqlite_site)
    (sqlite_site.media / "doc.txt").write_text("backed up")
    sqlite_site.manage("backup_create")
    (sqlite_site.media / "doc.txt").write_text("changed since")
    sqlite_site.sql(
        "INSERT INTO demo_part (name, description, quantity, created, attachment, price, blob) "
        "VALUES ('after', 'made after the backup', 99, '2026-01-01 00:00:00', '', 1, '')"
    )
    return sqlite_site


def test_a_database_file_that_fails_its_checksum_leaves_nothing(backed_up):
    dump = set_file(backed_up, "db")
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))

    assert dump.name in last(refuse(backed_up))


def test_a_file_that_is_no_dump_leaves_nothing(backed_up):
    junk = backed_up.root / "from-elsewhere" / "db.sqlite3"
    junk.parent.mkdir()
    junk.write_bytes(b"not a database\n" * 10)

    assert "is not a sqlite dump" in last(refuse(backed_up, "--db-file", str(junk), "--skip-media"))


def test_a_media_archive_with_a_member_outside_the_media_folder_leaves_nothing(backed_up):
    archive = backed_up.root / "from-elsewhere" / "media.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        for name in ("kept.txt", "../escaped.txt"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"data"))

    assert "escaped.txt" in last(refuse(backed_up, "--media-file", str(archive), "--skip-db"))


def test_a_dump_from_a_newer_version_refused_once_staged_leaves_nothing(backed_up):
    backed_up.sql("INSERT INTO django_migrations (app, name, applied) VALUES ('demo', '0099_future', '2030-01-01')")
    backed_up.manage("backup_create", "--skip-media")
    backed_up.sql("DELETE FROM django_migrations WHERE name = '0099_future'")
    for path in backed_up.backups.glob("*.manifest*"):
        path.unlink()  # as stock dbbackup writes it: only the staged database tells

    assert "demo.0099_future" in last(refuse(backed_up, "--skip-media"))


#: A dump a restore in place refuses once the incoming dump is spooled and the live one is dumped.
REFUSED_IN_PLACE = {
    "postgres": b"--\n-- PostgreSQL database dump\n--\n\nCREATE TABLE refused (id int);\nCOMMIT;\n",
    "mysql": b"-- MariaDB dump\nDROP DATABASE `{name}`;\nCREATE TABLE refused (id int);\n",
}


def test_a_refused_restore_in_place_leaves_nothing(in_place_site, request):
    site = in_place_site
    watch_temp(site)
    site.manage("demo_data")
    engine = request.node.callspec.params["in_place_site"]
    dump = site.root / "from-elsewhere" / ("db.psql" if engine == "postgres" else "db.mysql")
    dump.parent.mkdir()
    dump.write_bytes(REFUSED_IN_PLACE[engine].replace(b"{name}", site.env["INVENTREE_DB_NAME"].encode()))

    err = refuse(site, "--db-file", str(dump), "--skip-media")

    assert "restoring in place" in err, err  # spooled, then the live database dumped into the safety folder
    assert dump.name in last(err) and ("COMMIT" if engine == "postgres" else "drops database") in last(err), err
