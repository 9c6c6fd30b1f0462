"""How each engine restores: into a side database when it may create one, else in place; both undone by
``invoke rollback``; and ``verify --restore-test`` restores every file of a set into scratch places."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(("fixture", "kind"), [("pg_password_site", "pg-dump"), ("mysql_password_site", "mysql-dump")])
def test_without_the_right_to_create_a_database_the_restore_is_in_place_and_can_be_undone(request, fixture, kind):
    site = request.getfixturevalue(fixture)
    site.invoke("backup", "--skip-media")
    backed_up = site.snapshot_db()
    site.sql("DELETE FROM demo_part WHERE quantity > 100")
    before = site.snapshot_db()

    result = site.invoke("restore", "--skip-media")

    assert "restoring in place" in result.stderr
    assert site.snapshot_db() == backed_up
    [record] = (site.root / "safety").iterdir()
    assert [e["kind"] for e in json.loads((record / "safety.json").read_text())["databases"].values()] == [kind]

    site.invoke("rollback")

    assert site.snapshot_db() == before


def test_verify_restore_test_restores_every_file_into_scratch_places(any_site):
    any_site.manage("demo_data")
    any_site.invoke("backup")
    [manifest] = [f["name"] for f in any_site.sets()[0]["files"] if f["kind"] == "manifest" and "sidecar_of" not in f]
    manifest = json.loads((any_site.backups / manifest).read_text())

    out = any_site.invoke("verify", "--restore-test").stdout

    assert out.startswith("OK")
    assert f"restored to a scratch database, {manifest['databases'][0]['tables']} tables" in out
    assert f"extracted to a scratch folder, {manifest['media']['files']} files" in out
    assert manifest["databases"][0]["tables"] > 10 and manifest["media"]["files"] > 0
