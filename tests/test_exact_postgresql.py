"""PostgreSQL: a restore gives back the catalog exactly — owners, grants to a second role, default privileges,
triggers, functions, procedures, views, materialized views, extensions, comments, sequence values — and keeps
the database's own properties (owner, ICU locale, connection limit, ACL with CONNECT revoked from PUBLIC,
per-database and per-role settings, comment), by either strategy: into a side database swapped in (a role that
may create databases) or in place (one that may not, or one that may not copy a per-role setting to a new
database); objects made after the backup are gone."""

from __future__ import annotations

import os
import uuid

import pytest
from conftest import DB_PASSWORD, _pg_connect, server_site, service_missing
from reference import differences, postgres_catalog

#: strategy -> (the site's role may create databases, the reporting role has a setting in the database).
STRATEGIES = {"swap": (True, False), "in-place": (False, True), "in-place-for-a-role-setting": (True, True)}


@pytest.fixture(params=list(STRATEGIES))
def site(request, tmp_path):
    """A site whose role owns its database (and may create databases, but not set another role's settings),
    with a reporting role."""
    try:
        conn = _pg_connect()
    except Exception as err:
        service_missing("PostgreSQL on 127.0.0.1:5432", err)
    tag = f"i14_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    owner, reporting, database = f"{tag}_owner", f"{tag}_report", f"{tag}_db"
    may_create, role_setting = STRATEGIES[request.param]
    createdb = "CREATEDB" if may_create else "NOCREATEDB"
    with conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN {createdb} PASSWORD '{DB_PASSWORD}'")
        conn.execute(f"CREATE ROLE {reporting} LOGIN")
        conn.execute(
            f"CREATE DATABASE {database} OWNER {owner} TEMPLATE template0 ENCODING 'UTF8' "
            "LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' LOCALE 'C.UTF-8' CONNECTION LIMIT 50"
        )
    site = server_site(tmp_path / "site", "postgresql", database, owner, DB_PASSWORD)
    site.database, site.owner, site.reporting, site.strategy = database, owner, reporting, request.param
    build(site, role_setting)
    yield site
    with _pg_connect() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (database,))
        for (name,) in rows.fetchall():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for role in (reporting, owner):
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def build(site, role_setting: bool) -> None:
    """What the operators of a production site set up around the tables."""
    db, owner, reporting = site.database, site.owner, site.reporting
    with _pg_connect() as conn:
        conn.execute(f"ALTER DATABASE {db} SET work_mem = '8MB'")
        conn.execute(f'ALTER DATABASE {db} SET search_path = "$user", public')
        if role_setting:
            conn.execute(f"ALTER ROLE {reporting} IN DATABASE {db} SET statement_timeout = '5s'")
        conn.execute(f"COMMENT ON DATABASE {db} IS 'the site''s data'")
        conn.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC")
        conn.execute(f"GRANT CONNECT ON DATABASE {db} TO {reporting}")
    with _pg_connect(db) as conn:
        conn.execute(f"SET ROLE {owner}")
        conn.execute("CREATE EXTENSION citext")
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {reporting}")
        conn.execute(f"GRANT SELECT ON demo_part TO {reporting}")
        conn.execute(f"GRANT SELECT (id, username), UPDATE (email) ON auth_user TO {reporting}")
        conn.execute(f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {reporting}")
        conn.execute("CREATE TABLE audit (id serial PRIMARY KEY, part integer, what citext)")
        conn.execute(
            "CREATE FUNCTION audit_part() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN INSERT INTO audit (part, what) VALUES (NEW.id, 'created'); RETURN NEW; END$$"
        )
        conn.execute("CREATE TRIGGER part_audit AFTER INSERT ON demo_part FOR EACH ROW EXECUTE FUNCTION audit_part()")
        conn.execute(
            "CREATE PROCEDURE restock(n integer) LANGUAGE sql AS $$UPDATE demo_part SET quantity = quantity + n$$"
        )
        conn.execute("REVOKE EXECUTE ON FUNCTION audit_part() FROM PUBLIC")
        conn.execute(f"GRANT EXECUTE ON PROCEDURE restock TO {reporting}")
        conn.execute("CREATE VIEW big_parts AS SELECT name, quantity FROM demo_part WHERE quantity > 10")
        conn.execute("CREATE MATERIALIZED VIEW part_count AS SELECT count(*) AS n FROM demo_part")
        conn.execute("COMMENT ON TABLE demo_part IS 'parts in stock'")
        conn.execute(
            "INSERT INTO demo_part (name, description, quantity, created, attachment) "
            "SELECT 'p' || g, 'd', g, now(), '' FROM generate_series(1, 30) g"
        )
        conn.execute("SELECT setval('audit_id_seq', 1000)")


def damage(site) -> None:
    """What a bad day does inside the database: objects dropped, grants revoked, rows and tables added."""
    with _pg_connect(site.database) as conn:
        conn.execute(f"SET ROLE {site.owner}")
        conn.execute("DROP TRIGGER part_audit ON demo_part")
        conn.execute("DROP VIEW big_parts")
        conn.execute("DROP PROCEDURE restock")
        conn.execute(f"REVOKE SELECT ON demo_part FROM {site.reporting}")
        conn.execute("CREATE TABLE made_after_the_backup (id int)")
        conn.execute("CREATE SEQUENCE demo_part_id_seq_new")
        conn.execute("SELECT setval('audit_id_seq', 5000)")
        conn.execute("DELETE FROM demo_part WHERE quantity < 10")


def test_restore_gives_back_the_catalog_and_keeps_the_database_properties(site):
    site.invoke("backup", "--skip-media")
    backed_up = postgres_catalog(site.database)
    rows = site.snapshot_db()
    damage(site)
    assert postgres_catalog(site.database) != backed_up

    result = site.invoke("restore", "--skip-media")

    assert ("restoring in place" in result.stderr) == site.strategy.startswith("in-place")
    found = postgres_catalog(site.database)
    assert found == backed_up, differences(backed_up, found)
    assert site.snapshot_db() == rows


def test_rollback_gives_back_the_replaced_catalog(site):
    site.invoke("backup", "--skip-media")
    damage(site)
    replaced = postgres_catalog(site.database)

    site.invoke("restore", "--skip-media")
    site.invoke("rollback")

    found = postgres_catalog(site.database)
    assert found == replaced, differences(replaced, found)


@pytest.mark.parametrize("site", ["swap", "in-place"], indirect=True)
def test_a_dump_naming_a_role_the_server_lacks_changes_nothing_and_says_what_to_do(site):
    with _pg_connect() as conn:
        conn.execute(f"CREATE ROLE {site.database}_gone")
    with _pg_connect(site.database) as conn:
        conn.execute(f"GRANT SELECT ON demo_part TO {site.database}_gone")
    site.invoke("backup", "--skip-media")
    with _pg_connect(site.database) as conn:
        conn.execute(f"REVOKE SELECT ON demo_part FROM {site.database}_gone")
    with _pg_connect() as conn:
        conn.execute(f"DROP ROLE {site.database}_gone")
    damage(site)
    before = postgres_catalog(site.database)

    result = site.invoke("restore", "--skip-media", check=False)

    assert result.returncode != 0
    assert f'role "{site.database}_gone" does not exist' in result.stderr
    assert "NO_OWNER: True" in result.stderr
    # Staging into a side database failed before the swap; in place, the one transaction was rolled back.
    assert "nothing was changed" in result.stderr or "database left unchanged" in result.stderr
    found = postgres_catalog(site.database)
    assert found == before, differences(before, found)
