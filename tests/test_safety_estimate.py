"""The estimate a restore in place weighs for its safety dump of the live database (``in_place_safety_estimate``)
against the dump it then writes: an estimate far above it refuses restores that have the room (a site whose
tables carry indexes: PostgreSQL's dump holds no index, and its custom format is compressed)."""

from __future__ import annotations

import json
import sys

import pytest

PROBE = """
import json, os, tempfile
import django
django.setup()
from backup_app.engines import engine_for
engine = engine_for("default")
with tempfile.TemporaryFile() as fh:
    engine.dump(fh, compressed=False)
    size = fh.tell()
print(json.dumps([engine.in_place_safety_estimate(0), size]))
"""


@pytest.mark.parametrize("site_fixture", ["postgres_site", "mysql_site"])
def test_the_safety_dump_estimate_of_a_site_with_indexed_tables_is_not_far_above_the_dump(request, site_fixture):
    site = request.getfixturevalue(site_fixture)
    site.manage("migrate", "--noinput", "-v0")
    site.sql(
        "CREATE TABLE review_part (id integer PRIMARY KEY, name varchar(100), description text, ipn varchar(50), "
        "qty integer)"
    )
    for column in ("name", "ipn", "description"):
        site.sql(
            f"CREATE INDEX review_part_{column} ON review_part ({column}(50))"
            if "mysql" in site_fixture
            else f"CREATE INDEX review_part_{column} ON review_part ({column})"
        )
    digits = "(SELECT 0 AS d UNION ALL " + " UNION ALL ".join(f"SELECT {d}" for d in range(1, 10)) + ")"
    site.sql(
        "INSERT INTO review_part SELECT n, CONCAT('Part ', n), CONCAT(MD5(CONCAT(n, '')), ' resistor 0603 ', "
        "MD5(CONCAT(n + 1, 'x'))), CONCAT('IPN-', n), n % 100 FROM (SELECT a.d + 10 * b.d + 100 * c.d + "
        f"1000 * e.d + 10000 * f.d + 1 AS n FROM {digits} a, {digits} b, {digits} c, {digits} e, {digits} f) g"
    )
    if "postgres" in site_fixture:
        site.sql("ANALYZE")
    else:
        site.sql("ANALYZE TABLE review_part")

    estimate, dumped = json.loads(site.run(sys.executable, "-c", PROBE).stdout.strip().splitlines()[-1])

    assert dumped <= estimate <= 3 * dumped + 2 * 1024 * 1024, (site_fixture, estimate, dumped)
