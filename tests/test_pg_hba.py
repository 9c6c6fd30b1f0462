"""A superuser site's restore on a PostgreSQL server whose pg_hba.conf asks for SCRAM passwords (issue 15).

The shared server of the tests trusts every loopback login, so the throwaway role that loads a superuser site's
dump (a SCRAM verifier computed client-side, the password handed to the tools in their environment) is never
asked for its password there.  The tests here share a throwaway PostgreSQL 15 cluster of their own (initdb and
pg_ctl of /usr/lib/postgresql/15/bin, run as the ``postgres`` user, on a free port, removed after the module),
each with a database of its own, with ``scram-sha-256`` for every TCP login, or for the site's role only (each
test starts from the first pg_hba.conf).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import REQUIRE, free_port, make_site, unique_name

BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "Scram-" + uuid.uuid4().hex[:12]


def as_postgres(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, **kwargs)


@pytest.fixture(scope="module")
def scram_server():
    """``(port, hba)``: a running PostgreSQL 15 cluster whose superuser ``postgres`` logs in over TCP with
    PASSWORD by SCRAM; ``hba(lines)`` rewrites its pg_hba.conf (``None``: the one initdb wrote) and reloads it."""
    missing = [tool for tool in ("initdb", "pg_ctl") if not (BIN / tool).exists()]
    if missing or shutil.which("runuser") is None:
        why = f"PostgreSQL 15 server binaries ({', '.join(missing) or 'runuser'}) are not installed"
        if REQUIRE:
            pytest.fail(why + " and BACKUP_TEST_REQUIRE_SERVICES=1")
        pytest.skip(why)
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user to run a PostgreSQL cluster as")
    # Not under pytest's own temp folder: the postgres user may not pass through root's private folders.
    root = Path(tempfile.mkdtemp(prefix="backup-test-pg-scram-"))
    data, socket = root / "data", root / "socket"
    socket.mkdir()
    secret = root / "pw"
    secret.write_text(PASSWORD + "\n")
    os.chown(root, pwd.getpwnam("postgres").pw_uid, -1)
    os.chown(socket, pwd.getpwnam("postgres").pw_uid, -1)
    os.chown(secret, pwd.getpwnam("postgres").pw_uid, -1)
    as_postgres(
        str(BIN / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={secret}", "--auth-local=trust",
        "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8",
    )  # fmt: skip
    port = free_port()
    options = f"-p {port} -k {socket} -c listen_addresses=127.0.0.1 -c fsync=off"
    as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")

    first = (data / "pg_hba.conf").read_text()

    def hba(lines: list[str] | None) -> None:
        text = first if lines is None else "local all all trust\n" + "".join(f"{line}\n" for line in lines)
        (data / "pg_hba.conf").write_text(text)
        as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "reload")

    try:
        yield port, hba
    finally:
        as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scram_cluster(scram_server):
    """The module's cluster, with the pg_hba.conf initdb wrote, put back after the test."""
    port, hba = scram_server
    yield port, hba
    hba(None)


def scram_site(root: Path, port: int):
    """A demo site with demo data in a new database of the cluster on ``port``."""
    import psycopg

    name = unique_name("site15")
    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", password=PASSWORD, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    site = make_site(
        root,
        INVENTREE_DB_ENGINE="postgresql",
        INVENTREE_DB_NAME=name,
        INVENTREE_DB_HOST="127.0.0.1",
        INVENTREE_DB_PORT=str(port),
        INVENTREE_DB_USER="postgres",
        INVENTREE_DB_PASSWORD=PASSWORD,
    )
    site.manage("migrate", "--noinput", "-v0")
    site.manage("demo_data")
    return site


def test_a_superuser_site_restores_where_every_login_needs_a_scram_password(tmp_path, scram_cluster):
    port, _hba = scram_cluster
    site = scram_site(tmp_path / "site", port)
    site.invoke("backup", "--skip-media")
    rows = site.snapshot_db()
    site.sql("DELETE FROM demo_part")

    result = site.invoke("restore", "--skip-media")

    assert "Restore complete" in result.stderr
    assert site.snapshot_db() == rows


def test_where_only_the_sites_role_may_log_in_the_restore_names_the_pg_hba_line_and_changes_nothing(
    tmp_path, scram_cluster
):
    port, hba = scram_cluster
    site = scram_site(tmp_path / "site", port)
    site.invoke("backup", "--skip-media")
    site.sql("DELETE FROM demo_part WHERE id % 2 = 0")
    before = site.snapshot_db()
    hba(["host all postgres 127.0.0.1/32 scram-sha-256"])

    result = site.invoke("restore", "--skip-media", check=False)

    line = [x for x in result.stderr.splitlines() if x.strip()][-1]
    assert result.returncode != 0
    assert "could not log in" in line and "host all all 127.0.0.1/32 scram-sha-256" in line, result.stderr
    assert "nothing was changed" in line, line
    assert site.snapshot_db() == before


def test_where_socket_logins_are_by_peer_the_restore_names_the_local_line_and_changes_nothing(tmp_path, scram_cluster):
    import psycopg

    port, _hba = scram_cluster
    user = pwd.getpwuid(os.geteuid()).pw_name  # peer: the role of the OS user the site runs as
    name = "peer" + uuid.uuid4().hex[:8]
    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", password=PASSWORD, dbname="postgres", autocommit=True
    ) as conn:
        socket = conn.execute("SHOW unix_socket_directories").fetchone()[0]
        hba_file = Path(conn.execute("SHOW hba_file").fetchone()[0])
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [user]).fetchone():
            conn.execute(f'CREATE ROLE "{user}" LOGIN SUPERUSER')
        conn.execute(f'CREATE DATABASE {name} OWNER "{user}"')
        hba_file.write_text("local all all peer\nhost all postgres 127.0.0.1/32 scram-sha-256\n")
        conn.execute("SELECT pg_reload_conf()")
    site = make_site(
        tmp_path / "site",
        INVENTREE_DB_ENGINE="postgresql",
        INVENTREE_DB_NAME=name,
        INVENTREE_DB_HOST=socket,
        INVENTREE_DB_PORT=str(port),
        INVENTREE_DB_USER=user,
    )
    site.manage("migrate", "--noinput", "-v0")
    site.manage("demo_data")
    site.invoke("backup", "--skip-media")
    site.sql("DELETE FROM demo_part WHERE id % 2 = 0")
    before = site.snapshot_db()

    result = site.invoke("restore", "--skip-media", check=False)

    line = [x for x in result.stderr.splitlines() if x.strip()][-1]
    assert result.returncode != 0
    assert "Peer authentication failed" in line and f"'local all {user} peer'" in line, line
    assert "'local all all scram-sha-256'" in line and "nothing was changed" in line, line
    assert site.snapshot_db() == before
