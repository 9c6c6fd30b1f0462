"""backup_app.engines in process, on the session's SQLite site: connectors from the settings in force now,
dump type checks, a scratch restore, and the site lock against another real process."""

from __future__ import annotations

import io
import subprocess
import sys

import django
import pytest
from conftest import ROOT

django.setup()

from django.core.management import call_command  # noqa: E402
from django.test import override_settings  # noqa: E402

from backup_app.engines import Locked, engine_for, site_lock  # noqa: E402
from backup_app.engines.base import build_connector  # noqa: E402
from backup_app.errors import RestoreError  # noqa: E402

TRY_LOCK = """
import django
django.setup()
from backup_app.engines import Locked, site_lock
try:
    with site_lock("backup"):
        print("acquired")
except Locked as err:
    print(err)
"""


@pytest.fixture(scope="module")
def session_db():
    call_command("migrate", interactive=False, verbosity=0)


def test_connector_options_in_force_now_reach_the_engine():
    with override_settings(DBBACKUP_CONNECTORS={"default": {"EXCLUDE": ["audit_log"], "DUMP_CMD": "my-dump"}}):
        engine = engine_for("default")

    assert engine.exclude == ["audit_log"]
    assert (engine.connector.dump_cmd, engine.settings["DUMP_CMD"]) == ("my-dump", "my-dump")


def test_dbbackups_connector_settings_are_the_cached_dict_we_give():
    # build_connector relies on BaseDBConnector.settings returning its _settings cache once that is set.
    connector = build_connector("default")
    connector._settings = {"NAME": "given"}

    assert connector.settings == {"NAME": "given"}


def test_a_file_that_is_not_a_sqlite_dump_is_refused():
    with pytest.raises(RestoreError, match="x.sqlite3 is not a sqlite dump"):
        engine_for("default").check_dump(b"\x1f\x8b\x08\x00 gzip bytes", "x.sqlite3")


def test_a_dump_restores_into_a_scratch_copy_with_every_table(session_db):
    engine = engine_for("default")
    dump = io.BytesIO()

    engine.dump(dump, compressed=False)
    engine.check_dump(dump.getvalue()[:64], "dump")
    tables = engine.scratch_restore(io.BytesIO(dump.getvalue()))

    assert tables == engine.table_count()
    assert engine.cleanup() == []  # the scratch copy is gone


def test_the_lock_refuses_another_process_while_held_and_is_released_after(session_db):
    def other_process() -> str:
        return subprocess.run([sys.executable, "-c", TRY_LOCK], cwd=ROOT, capture_output=True, text=True).stdout

    with site_lock("backup") as lock:
        assert lock.held
        refused = other_process()
        with pytest.raises(Locked):
            with site_lock("restore"):
                pass

    assert "another backup or restore is running (backup by pid" in refused
    assert not lock.held
    assert other_process().strip() == "acquired"


ENGINE_MODULES_AFTER_A_BACKUP = """
import sys
import django
django.setup()
from django.core.management import call_command
call_command("check")
call_command("backup_create", "--skip-media")
print(" ".join(sorted(m for m in sys.modules if m.startswith("backup_app.engines"))))
"""


def test_a_sqlite_site_imports_only_the_sqlite_engine(sqlite_site):
    """Engines are imported by vendor when first used: a SQLite site's check and backup never load the MariaDB
    or PostgreSQL engines (nor the dump guard and owner filters they carry, ~0.15 s of imports)."""
    out = sqlite_site.run(sys.executable, "-c", ENGINE_MODULES_AFTER_A_BACKUP).stdout

    assert out.splitlines()[-1].split() == [
        "backup_app.engines",
        "backup_app.engines.base",
        "backup_app.engines.sqlite",
    ], out
