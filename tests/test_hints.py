"""Every message that says what to run names the command the way the user ran it, and the site's own prefix.

Two sites: the demo site (``config.settings``, ``INVENTREE_`` prefix, a ``tasks.py`` that imports
``backup_app.tasks``), run through ``invoke`` and through ``manage.py``; and a second project made with
``startproject`` in a temporary folder, prefix ``MYSITE_``, no ``tasks.py``, run through its ``manage.py``
with this checkout on ``PYTHONPATH``.
"""

from __future__ import annotations

import pytest
from startproject_site import make_project


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


# --- the demo site: invoke or manage.py ------------------------------------------------------------------------


def test_invoke_restore_with_no_backup_names_invoke_backup(sqlite_site):
    result = sqlite_site.invoke("restore", check=False)

    assert result.returncode != 0
    assert "run `invoke backup` first" in last_line(result), result.output


def test_manage_py_restore_with_no_backup_names_the_management_command(sqlite_site):
    result = sqlite_site.manage("backup_restore", check=False)

    assert result.returncode != 0
    assert "run `python manage.py backup_create` first" in last_line(result), result.output


def test_a_missing_file_names_the_listing_command_the_user_has(sqlite_site):
    by_invoke = sqlite_site.invoke("restore", "--db-file", "nope.sqlite3.gz", check=False)
    by_manage = sqlite_site.manage("backup_restore", "--db-file", "nope.sqlite3.gz", check=False)

    assert "run `invoke listbackups` to see the sets" in last_line(by_invoke), by_invoke.output
    assert "run `python manage.py backup_list` to see the sets" in last_line(by_manage), by_manage.output


def test_an_unknown_safety_copy_names_the_rollback_listing_the_user_has(sqlite_site):
    sqlite_site.invoke("backup")
    sqlite_site.invoke("restore")

    by_invoke = sqlite_site.invoke("rollback", "--name", "nope", check=False)
    by_manage = sqlite_site.manage("backup_rollback", "--name", "nope", check=False)

    assert last_line(by_invoke).endswith("see `invoke rollback --list`"), by_invoke.output
    assert last_line(by_manage).endswith("see `python manage.py backup_rollback --list`"), by_manage.output


def test_the_restore_names_the_rollback_the_user_has(sqlite_site):
    sqlite_site.invoke("backup")

    by_invoke = sqlite_site.invoke("restore")
    by_manage = sqlite_site.manage("backup_restore")

    assert "`invoke rollback --name " in by_invoke.output
    assert "`python manage.py backup_rollback --name " in by_manage.output
    assert "invoke" not in by_manage.output


def test_verify_of_an_unknown_set_names_the_listing_the_user_has(sqlite_site):
    sqlite_site.invoke("backup")

    by_invoke = sqlite_site.invoke("verify", "--set", "nope", check=False)
    by_manage = sqlite_site.manage("backup_verify", "--set", "nope", check=False)

    assert last_line(by_invoke).endswith("run `invoke listbackups`"), by_invoke.output
    assert last_line(by_manage).endswith("run `python manage.py backup_list`"), by_manage.output


# --- a second project, its prefix ------------------------------------------------------------------------------


@pytest.fixture
def mysite(tmp_path):
    """A startproject site with prefix MYSITE_, migrated: ``mysite(*manage_args, **env)``."""
    return make_project(
        tmp_path, MYSITE_BACKUP_DIR=str(tmp_path / "backups"), MYSITE_BACKUP_SAFETY_DIR=str(tmp_path / "safety")
    ).manage


def test_a_missing_gpg_recipient_names_the_sites_variable(mysite):
    result = mysite("backup_create", "--encrypt")

    assert result.returncode != 0
    assert "set MYSITE_BACKUP_GPG_RECIPIENT" in last_line(result), result.stderr
    assert "INVENTREE" not in result.stderr


def test_a_storage_error_names_the_sites_options_variable(mysite):
    result = mysite(
        "backup_check",
        MYSITE_BACKUP_STORAGE="storages.backends.ftp.FTPStorage",
        MYSITE_BACKUP_OPTIONS='{"location": "ftp://user:pw@127.0.0.1:9/"}',
    )

    assert result.returncode != 0
    assert "backup_options (MYSITE_BACKUP_OPTIONS)" in last_line(result), result.stderr
    assert "INVENTREE" not in result.stderr


def test_a_site_without_tasks_py_is_told_its_management_commands(mysite):
    result = mysite("backup_restore")

    assert "run `python manage.py backup_create` first" in last_line(result), result.stderr


def test_a_storage_that_cannot_be_set_up_names_the_sites_variables(mysite):
    result = mysite(
        "backup_check",
        MYSITE_BACKUP_STORAGE="storages.backends.ftp.FTPStorage",
        MYSITE_BACKUP_OPTIONS='{"location": "not-an-ftp-url"}',
    )

    assert result.returncode != 0
    line = last_line(result)
    assert "MYSITE_BACKUP_STORAGE storages.backends.ftp.FTPStorage: cannot be set up" in line, result.stderr
    assert line.endswith("check backup_options (MYSITE_BACKUP_OPTIONS)"), result.stderr


SHOW = "from backup_app import hints; print(hints.command('listbackups'))"


def test_outside_the_apps_commands_the_demo_with_its_tasks_py_is_told_invoke(sqlite_site):
    shown = sqlite_site.manage("shell", "--no-imports", "-c", SHOW)

    assert shown.stdout.strip() == "`invoke listbackups`"


def test_outside_the_apps_commands_a_site_without_tasks_py_is_told_manage_py(mysite):
    shown = mysite("shell", "--no-imports", "-c", SHOW)

    assert shown.stdout.strip() == "`python manage.py backup_list`", shown.stderr
