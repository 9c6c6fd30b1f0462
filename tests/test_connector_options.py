"""django-dbbackup's connector options under backup_app (issue 17): the class named by ``CONNECTOR`` picks the
dump format and is what the manifest and the sidecar record; PostgreSQL's ``SINGLE_TRANSACTION`` and ``DROP``
reach the restore tool; a plain SQL dump cannot run a psql meta-command; PostGIS through
``PgDumpGisConnector``'s ``ADMIN_USER``.

Real PostgreSQL, real pg_dump / pg_restore / psql; ``tests/argv_log.sh`` as a RESTORE_PREFIX records the
command line the connector's options produced, then runs it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import _pg_connect, service_missing

ARGV_LOG_SCRIPT = Path(__file__).resolve().parent / "argv_log.sh"
PLAIN = "dbbackup.db.postgresql.PgDumpConnector"
GIS = "dbbackup.db.postgresql.PgDumpGisConnector"


def with_options(site, **options) -> None:
    site.env["INVENTREE_BACKUP_CONNECTOR_OPTIONS"] = json.dumps(options)


def newest(site) -> dict:
    return next(s for s in site.sets() if s["complete"])


def db_entry(site) -> dict:
    manifest = next(p for p in site.backups.iterdir() if p.name.endswith(".manifest.metadata"))
    return json.loads(manifest.read_text())["databases"][0]


def parts(site) -> list:
    return site.snapshot_db()["demo_part"]


def logged(site) -> list[str]:
    path = Path(site.env["ARGV_LOG"])
    return path.read_text().splitlines() if path.exists() else []


def loads(site, tool: str) -> list[str]:
    """The logged runs of ``tool`` that load the dump (not ``pg_restore --list``, which reads its table of contents)."""
    return [x for x in logged(site) if f" {tool} " in f" {x} " and "--list" not in x.split()]


@pytest.fixture
def logging_site(postgres_site, tmp_path):
    postgres_site.env["ARGV_LOG"] = str(tmp_path / "argv.log")
    postgres_site.manage("demo_data")
    return postgres_site


# --------------------------------------------------------------------------- CONNECTOR picks the format


def test_pgdumpconnector_writes_a_plain_sql_dump(postgres_site):
    with_options(postgres_site, CONNECTOR=PLAIN)
    postgres_site.manage("demo_data")

    postgres_site.invoke("backup")

    name = next(f["name"] for f in newest(postgres_site)["files"] if f["kind"] == "db")
    assert name.endswith(".psql.gz")
    head = gzip.decompress((postgres_site.backups / name).read_bytes())[:200]
    assert head.startswith(b"--\n-- PostgreSQL database dump")


def test_the_manifest_and_the_sidecar_record_the_connector_used(postgres_site):
    with_options(postgres_site, CONNECTOR=PLAIN)

    postgres_site.invoke("backup")

    entry = db_entry(postgres_site)
    sidecar = json.loads((postgres_site.backups / f"{entry['file']}.metadata").read_text())
    assert entry["connector"] == sidecar["connector"] == PLAIN


def test_a_plain_dump_restores_every_row(postgres_site):
    with_options(postgres_site, CONNECTOR=PLAIN)
    postgres_site.manage("demo_data")
    postgres_site.invoke("backup")
    before = postgres_site.snapshot_db()
    postgres_site.sql("UPDATE demo_part SET quantity = quantity + 1000")
    postgres_site.sql("DELETE FROM demo_part WHERE id = (SELECT min(id) FROM demo_part)")

    postgres_site.invoke("restore")

    assert postgres_site.snapshot_db() == before


def test_stock_dbrestore_restores_our_plain_dump(postgres_site):
    with_options(postgres_site, CONNECTOR=PLAIN)
    postgres_site.manage("demo_data")
    postgres_site.invoke("backup")
    before = postgres_site.snapshot_db()
    postgres_site.sql("UPDATE demo_part SET quantity = quantity + 1000")
    name = next(f["name"] for f in newest(postgres_site)["files"] if f["kind"] == "db")

    postgres_site.manage("dbrestore", "--noinput", "-z", "-i", name)

    assert postgres_site.snapshot_db() == before


def test_a_custom_format_backup_still_restores_after_switching_to_plain(postgres_site):
    postgres_site.manage("demo_data")
    postgres_site.invoke("backup")
    before = postgres_site.snapshot_db()
    postgres_site.sql("UPDATE demo_part SET quantity = quantity + 1000")
    with_options(postgres_site, CONNECTOR=PLAIN)

    postgres_site.invoke("restore")

    assert postgres_site.snapshot_db() == before


def test_a_plain_dump_cannot_run_a_psql_meta_command(postgres_site, tmp_path):
    postgres_site.manage("demo_data")
    before = postgres_site.snapshot_db()
    ran = tmp_path / "ran"
    dump = f"--\n-- PostgreSQL database dump\n--\n\nSELECT 1;\n\\! touch {ran}\nSELECT 2;\n".encode()
    hostile = postgres_site.backups / "InvenTree-db-2024-01-02-030405.psql.gz"
    hostile.parent.mkdir(parents=True, exist_ok=True)
    hostile.write_bytes(gzip.compress(dump))

    refused = postgres_site.invoke("restore", "--db-file", hostile.name, "--skip-media", check=False)

    assert refused.returncode != 0
    assert not ran.exists()
    assert postgres_site.snapshot_db() == before


def test_pg_dumps_own_restrict_key_cannot_lift_ours(postgres_site, tmp_path):
    ran = tmp_path / "ran"
    dump = (
        f"--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\nSELECT 1;\n\\unrestrict abc\n\\! touch {ran}\n"
    ).encode()
    hostile = postgres_site.backups / "InvenTree-db-2024-01-02-030405.psql.gz"
    hostile.parent.mkdir(parents=True, exist_ok=True)
    hostile.write_bytes(gzip.compress(dump))

    refused = postgres_site.invoke("restore", "--db-file", hostile.name, "--skip-media", check=False)

    assert refused.returncode != 0
    assert not ran.exists()


@pytest.mark.parametrize("schemas", [None, ["public"]], ids=["swap", "in-place"])
def test_a_plain_inserts_dump_keeps_a_line_that_reads_like_a_key_line(postgres_site, schemas):
    """A row whose text holds lines ``\\restrict abc`` / ``\\unrestrict abc`` (in a ``--inserts`` dump: inside a
    multi-line string, data to psql) comes back whole; before, the filter took them out (restore exit 0)."""
    with_options(postgres_site, CONNECTOR=PLAIN, DUMP_SUFFIX="--inserts", **({"SCHEMAS": schemas} if schemas else {}))
    postgres_site.manage("demo_data")
    text = "first line\n\\restrict abc\n\\unrestrict abc\nlast line"
    postgres_site.sql(f"UPDATE demo_part SET description = '{text}' WHERE id = (SELECT min(id) FROM demo_part)")
    postgres_site.invoke("backup")
    name = next(f["name"] for f in newest(postgres_site)["files"] if f["kind"] == "db")
    assert "\n\\restrict abc\n" in gzip.decompress((postgres_site.backups / name).read_bytes()).decode()
    before = postgres_site.snapshot_db()
    postgres_site.sql("UPDATE demo_part SET description = 'changed'")

    postgres_site.invoke("restore")

    assert postgres_site.snapshot_db() == before
    assert postgres_site.query("SELECT description FROM demo_part ORDER BY id LIMIT 1") == [[text]]


# --------------------------------------------------------------------------- SINGLE_TRANSACTION, DROP, prefixes


def test_single_transaction_is_used_by_default(logging_site):
    with_options(logging_site, RESTORE_PREFIX=str(ARGV_LOG_SCRIPT))
    logging_site.invoke("backup")

    logging_site.invoke("restore")

    (line,) = loads(logging_site, "pg_restore")
    assert "--single-transaction" in line.split()


def test_single_transaction_false_reaches_pg_restore(logging_site):
    with_options(logging_site, RESTORE_PREFIX=str(ARGV_LOG_SCRIPT), SINGLE_TRANSACTION=False)
    logging_site.invoke("backup")
    before = logging_site.snapshot_db()
    logging_site.sql("UPDATE demo_part SET quantity = quantity + 1000")

    logging_site.invoke("restore")

    (line,) = loads(logging_site, "pg_restore")
    assert "--single-transaction" not in line.split()
    assert logging_site.snapshot_db() == before


def test_single_transaction_false_reaches_psql_for_a_plain_dump(logging_site):
    with_options(logging_site, CONNECTOR=PLAIN, RESTORE_PREFIX=str(ARGV_LOG_SCRIPT), SINGLE_TRANSACTION=False)
    logging_site.invoke("backup")

    logging_site.invoke("restore")

    (line,) = loads(logging_site, "psql")
    assert "--single-transaction" not in line.split()


def test_dump_prefix_and_suffix_reach_pg_dump(logging_site):
    with_options(logging_site, DUMP_PREFIX=str(ARGV_LOG_SCRIPT), DUMP_SUFFIX="--no-comments")

    logging_site.invoke("backup")

    (line,) = [x for x in logged(logging_site) if "pg_dump" in x]
    assert line.split()[0] == "pg_dump" and line.split()[-1] == "--no-comments"


def test_exclude_leaves_out_the_tables_data_but_not_the_table(logging_site):
    with_options(logging_site, EXCLUDE=["demo_part"])
    logging_site.invoke("backup")
    logging_site.sql("DELETE FROM demo_part")
    logging_site.sql(
        "INSERT INTO demo_part (name, description, quantity, created, attachment) VALUES ('after', 'x', 1, now(), '')"
    )

    logging_site.invoke("restore")

    assert parts(logging_site) == []


def test_drop_false_restores_in_place_without_clean(pg_password_site, tmp_path):
    site = pg_password_site
    site.env["ARGV_LOG"] = str(tmp_path / "argv.log")
    with_options(site, RESTORE_PREFIX=str(ARGV_LOG_SCRIPT), DROP=False)
    site.invoke("backup")
    before = site.snapshot_db()

    failed = site.invoke("restore", check=False)

    restore, *undo = [x.split() for x in logged(site) if "pg_restore" in x]
    assert "--clean" not in restore
    # Without --clean the dump's CREATE TABLE meets the live tables: refused in one transaction; putting the
    # kept dump back (the undo) always cleans first, whatever DROP says.
    assert failed.returncode != 0
    assert "ALSO failed" not in failed.stderr
    assert all("--clean" in line for line in undo)
    assert site.snapshot_db() == before


# --------------------------------------------------------------------------- PostGIS


@pytest.fixture
def postgis_site(postgres_site):
    with _pg_connect() as conn:
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'").fetchone()
    if not available:
        service_missing("PostGIS", LookupError("apt-get install postgresql-15-postgis-3"))
    postgres_site.sql("CREATE EXTENSION IF NOT EXISTS postgis")
    postgres_site.sql("CREATE TABLE place (id int PRIMARY KEY, spot geometry(Point, 4326))")
    postgres_site.sql("INSERT INTO place VALUES (1, ST_SetSRID(ST_MakePoint(13.4, 52.5), 4326))")
    with_options(postgres_site, CONNECTOR=GIS, ADMIN_USER="postgres")
    return postgres_site


def test_a_postgis_database_round_trips_through_pgdumpgisconnector(postgis_site):
    postgis_site.invoke("backup")
    before = postgis_site.snapshot_db()
    postgis_site.sql("UPDATE place SET spot = ST_SetSRID(ST_MakePoint(0, 0), 4326)")

    postgis_site.invoke("restore")

    assert postgis_site.snapshot_db() == before
    assert db_entry(postgis_site)["connector"] == GIS


# --------------------------------------------------------------------------- DUMP_CMD, RESTORE_CMD, ENV, USE_PARENT_ENV


def recording(tmp_path: Path, tool: str) -> tuple[str, Path]:
    """A program that records its argv and the ``BKT_*`` variables it was given, then runs the real ``tool``
    (a connector's ``DUMP_CMD`` / ``RESTORE_CMD``); returns its path and the log's."""
    import shutil

    real = shutil.which(tool)
    if real is None:
        service_missing(tool, FileNotFoundError(f"{tool} not on PATH"))
    log = tmp_path / f"{tool}.log"
    script = tmp_path / f"recorded-{tool}"
    seen = "BKT_MARK=%s BKT_PARENT=%s"
    script.write_text(
        "#!/bin/sh\n"
        f'printf \'%s | {seen}\\n\' "$*" "${{BKT_MARK-unset}}" "${{BKT_PARENT-unset}}" >> \'{log}\'\n'
        f"exec '{real}' \"$@\"\n"
    )
    script.chmod(0o755)
    return str(script), log


def runs(log: Path) -> list[str]:
    """The recorded runs that load or dump (not ``pg_restore --list``, which reads a dump's table of contents)."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [x for x in lines if "--list" not in x.split(" | ")[0].split()]


def test_dump_cmd_is_the_program_that_dumps(logging_site, tmp_path):
    dump_cmd, log = recording(tmp_path, "pg_dump")
    with_options(logging_site, DUMP_CMD=dump_cmd)

    logging_site.invoke("backup")

    (line,) = runs(log)
    assert "--format=custom" in line.split()


def test_restore_cmd_is_the_program_that_loads_a_custom_dump(logging_site, tmp_path):
    restore_cmd, log = recording(tmp_path, "pg_restore")
    with_options(logging_site, RESTORE_CMD=restore_cmd)
    logging_site.invoke("backup")
    before = parts(logging_site)
    logging_site.sql("DELETE FROM demo_part")

    logging_site.invoke("restore")

    assert len(runs(log)) == 1
    assert parts(logging_site) == before


def test_restore_cmd_is_the_program_that_loads_a_plain_dump(logging_site, tmp_path):
    restore_cmd, log = recording(tmp_path, "psql")
    with_options(logging_site, CONNECTOR=PLAIN, RESTORE_CMD=restore_cmd)
    logging_site.invoke("backup")
    before = parts(logging_site)
    logging_site.sql("DELETE FROM demo_part")

    logging_site.invoke("restore")

    assert [line.split()[:1] for line in runs(log)] != []
    assert parts(logging_site) == before


def test_env_reaches_the_dump_and_the_restore(logging_site, tmp_path):
    dump_cmd, dump_log = recording(tmp_path, "pg_dump")
    restore_cmd, restore_log = recording(tmp_path, "pg_restore")
    with_options(logging_site, DUMP_CMD=dump_cmd, RESTORE_CMD=restore_cmd, ENV={"BKT_MARK": "from-ENV"})
    logging_site.invoke("backup")

    logging_site.invoke("restore")

    assert [line.split(" | ")[1] for line in runs(dump_log) + runs(restore_log)] == [
        "BKT_MARK=from-ENV BKT_PARENT=unset"
    ] * 2


@pytest.mark.parametrize("use_parent_env", [True, False])
def test_use_parent_env_decides_whether_the_tools_see_the_sites_environment(logging_site, tmp_path, use_parent_env):
    dump_cmd, dump_log = recording(tmp_path, "pg_dump")
    restore_cmd, restore_log = recording(tmp_path, "pg_restore")
    with_options(logging_site, DUMP_CMD=dump_cmd, RESTORE_CMD=restore_cmd, USE_PARENT_ENV=use_parent_env)
    logging_site.env["BKT_PARENT"] = "from-the-site"
    logging_site.invoke("backup")
    before = parts(logging_site)
    logging_site.sql("DELETE FROM demo_part")

    logging_site.invoke("restore")

    seen = "from-the-site" if use_parent_env else "unset"
    assert [line.split(" | ")[1] for line in runs(dump_log) + runs(restore_log)] == [
        f"BKT_MARK=unset BKT_PARENT={seen}"
    ] * 2
    assert parts(logging_site) == before


# --------------------------------------------------------------------------- SCHEMAS, PG_OPTIONS, IF_EXISTS


def test_schemas_dumps_only_the_schemas_named(logging_site, tmp_path):
    import subprocess

    logging_site.sql(
        "CREATE SCHEMA bkt_other; CREATE TABLE bkt_other.notes (id int); INSERT INTO bkt_other.notes VALUES (7)"
    )
    with_options(logging_site, SCHEMAS=["public"])

    logging_site.invoke("backup")

    (dump,) = [p for p in logging_site.backups.iterdir() if p.name.endswith(".psql.bin.gz")]
    listing = subprocess.run(["pg_restore", "--list"], input=gzip.decompress(dump.read_bytes()), capture_output=True)
    tables = [line.split()[-2] for line in listing.stdout.decode().splitlines() if " TABLE " in line]
    assert "demo_part" in tables and "notes" not in tables


def test_pg_options_reach_pg_restore(logging_site):
    logging_site.sql("COMMENT ON TABLE demo_part IS 'kept by a plain restore'")
    with_options(logging_site, PG_OPTIONS="--no-comments")
    logging_site.invoke("backup")

    logging_site.invoke("restore")

    from conftest import _pg_connect

    with _pg_connect(logging_site.env["INVENTREE_DB_NAME"]) as conn:
        (comment,) = conn.execute("SELECT obj_description('demo_part'::regclass, 'pg_class')").fetchone()
    assert comment is None


def test_if_exists_false_is_refused_by_a_check(logging_site):
    with_options(logging_site, CONNECTOR=PLAIN, IF_EXISTS=False)

    check = logging_site.manage("check", check=False)
    backup = logging_site.invoke("backup", check=False)

    assert check.returncode != 0 and "backup_app.E022" in check.output and "IF_EXISTS" in check.output
    assert backup.returncode != 0 and not any(logging_site.backups.glob("*.psql*"))


@pytest.mark.parametrize("connector", [PLAIN, None], ids=["plain", "custom"])
def test_if_exists_false_with_drop_false_is_a_valid_configuration(logging_site, connector):
    """DROP false: the dump holds no DROP at all (a custom dump's restore in place drops nothing), so IF_EXISTS
    false asks for nothing that cannot apply; check, backup and restore all pass."""
    with_options(logging_site, **({"CONNECTOR": connector} if connector else {}), DROP=False, IF_EXISTS=False)
    before = parts(logging_site)

    check = logging_site.manage("check", check=False)
    logging_site.invoke("backup")
    logging_site.sql("DELETE FROM demo_part")
    logging_site.invoke("restore")

    assert check.returncode == 0 and "E022" not in check.output, check.output
    assert parts(logging_site) == before


def test_drop_false_makes_a_plain_dump_without_drop_statements(logging_site):
    with_options(logging_site, CONNECTOR=PLAIN, DROP=False)

    logging_site.invoke("backup")

    (dump,) = [p for p in logging_site.backups.iterdir() if p.name.endswith(".psql.gz")]
    text = gzip.decompress(dump.read_bytes()).decode()
    assert "CREATE TABLE public.demo_part" in text and "DROP TABLE" not in text


# --------------------------------------------------------------------------- MariaDB / MySQL


@pytest.fixture
def my_site(mysql_site):
    mysql_site.manage("demo_data")
    return mysql_site


def mysql_runs(log: Path) -> list[str]:
    return [x for x in runs(log) if "--help" not in x.split(" | ")[0].split()]  # (the --sandbox probe)


def test_mysql_dump_cmd_restore_cmd_and_env_are_what_runs(my_site, tmp_path):
    dump_cmd, dump_log = recording(tmp_path, "mysqldump")
    restore_cmd, restore_log = recording(tmp_path, "mysql")
    with_options(my_site, DUMP_CMD=dump_cmd, RESTORE_CMD=restore_cmd, ENV={"BKT_MARK": "from-ENV"})
    my_site.invoke("backup")
    before = parts(my_site)
    my_site.sql("DELETE FROM demo_part")

    my_site.invoke("restore")

    assert [line.split(" | ")[1] for line in mysql_runs(dump_log) + mysql_runs(restore_log)] == [
        "BKT_MARK=from-ENV BKT_PARENT=unset"
    ] * 2
    assert parts(my_site) == before


def test_mysql_use_parent_env_false_keeps_the_sites_environment_from_the_tools(my_site, tmp_path):
    dump_cmd, dump_log = recording(tmp_path, "mysqldump")
    restore_cmd, restore_log = recording(tmp_path, "mysql")
    with_options(my_site, DUMP_CMD=dump_cmd, RESTORE_CMD=restore_cmd, USE_PARENT_ENV=False)
    my_site.env["BKT_PARENT"] = "from-the-site"
    my_site.invoke("backup")
    before = parts(my_site)
    my_site.sql("DELETE FROM demo_part")

    my_site.invoke("restore")

    assert [line.split(" | ")[1] for line in mysql_runs(dump_log) + mysql_runs(restore_log)] == [
        "BKT_MARK=unset BKT_PARENT=unset"
    ] * 2
    assert parts(my_site) == before


def test_a_restore_with_schemas_replaces_those_schemas_and_leaves_the_others(logging_site):
    logging_site.sql(
        "CREATE SCHEMA bkt_other; CREATE TABLE bkt_other.notes (id int); INSERT INTO bkt_other.notes VALUES (7)"
    )
    with_options(logging_site, SCHEMAS=["public"])
    logging_site.invoke("backup")
    before = parts(logging_site)
    logging_site.sql("DELETE FROM demo_part; INSERT INTO bkt_other.notes VALUES (8)")

    logging_site.invoke("restore")

    from conftest import _pg_connect

    with _pg_connect(logging_site.env["INVENTREE_DB_NAME"]) as conn:
        notes = [row[0] for row in conn.execute("SELECT id FROM bkt_other.notes ORDER BY id")]
    assert parts(logging_site) == before
    assert notes == [7, 8]  # not in the dump: neither dropped nor rolled back


def test_rolling_back_a_restore_with_schemas_puts_those_schemas_back(logging_site):
    logging_site.sql(
        "CREATE SCHEMA bkt_other; CREATE TABLE bkt_other.notes (id int); INSERT INTO bkt_other.notes VALUES (7)"
    )
    with_options(logging_site, SCHEMAS=["public"])
    logging_site.invoke("backup")
    logging_site.sql("DELETE FROM demo_part WHERE id % 2 = 0")
    changed = parts(logging_site)
    logging_site.invoke("restore")

    logging_site.invoke("rollback")

    from conftest import _pg_connect

    with _pg_connect(logging_site.env["INVENTREE_DB_NAME"]) as conn:
        notes = [row[0] for row in conn.execute("SELECT id FROM bkt_other.notes ORDER BY id")]
    assert parts(logging_site) == changed
    assert notes == [7]
