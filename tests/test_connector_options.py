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
