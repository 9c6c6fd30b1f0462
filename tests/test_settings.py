"""backup_app.settings: every value is read from Django's settings when it is asked for, with one set of defaults."""

from __future__ import annotations

from contextlib import contextmanager

import django
import pytest

django.setup()

from django.conf import settings  # noqa: E402
from django.test import override_settings  # noqa: E402

from backup_app.conf import BACKUP_KEYS  # noqa: E402
from backup_app.sets import Naming, Retention  # noqa: E402
from backup_app.settings import DBBACKUP_DEFAULTS, app_settings  # noqa: E402


@contextmanager
def without(*names: str):
    """The settings with ``names`` removed, as in a project that never set them."""
    with override_settings():
        for name in names:
            delattr(settings, name)
        yield


def backup_app_with(**fields) -> dict:
    return {**settings.BACKUP_APP, **fields}


def test_a_changed_backup_app_value_is_seen_at_once():
    with override_settings(BACKUP_APP=backup_app_with(COMPRESSION="zstd", KEEP=3)):
        assert (app_settings.compression, app_settings.keep) == ("zstd", 3)
    assert app_settings.compression == settings.BACKUP_APP["COMPRESSION"]


@pytest.mark.parametrize(
    ("prop", "key"),
    [
        ("compression", "backup_compression"),
        ("keep", "backup_keep"),
        ("keep_daily", "backup_keep_daily"),
        ("keep_weekly", "backup_keep_weekly"),
        ("keep_monthly", "backup_keep_monthly"),
        ("gpg_home", "backup_gpg_home"),
        ("gpg_passphrase", "backup_gpg_passphrase"),
        ("safety", "backup_safety"),
        ("safety_days", "backup_safety_days"),
        ("email_prefix", "backup_email_prefix"),
    ],
)
def test_without_backup_app_each_value_is_its_keys_default(prop, key):
    default = next(k.default for k in BACKUP_KEYS if k.name == key)
    with override_settings(BACKUP_APP={}):
        assert getattr(app_settings, prop) == default


def test_without_backup_app_safety_copies_go_next_to_base_dir(tmp_path):
    with override_settings(BACKUP_APP={}, BASE_DIR=tmp_path):
        assert app_settings.safety_dir == tmp_path.parent / f"{tmp_path.name}-backup-safety"


def test_file_name_settings_default_to_django_dbbackups_own():
    with without("DBBACKUP_FILENAME_TEMPLATE", "DBBACKUP_MEDIA_FILENAME_TEMPLATE", "DBBACKUP_DATE_FORMAT"):
        assert app_settings.filename_template == DBBACKUP_DEFAULTS["FILENAME_TEMPLATE"]
        assert app_settings.media_filename_template == DBBACKUP_DEFAULTS["MEDIA_FILENAME_TEMPLATE"]
        assert app_settings.date_format == DBBACKUP_DEFAULTS["DATE_FORMAT"]


def test_databases_default_to_every_alias():
    with without("DBBACKUP_DATABASES"):
        assert app_settings.databases == list(settings.DATABASES)


def test_connector_options_are_a_copy():
    app_settings.connector_options("default")["EXCLUDE"] = ["changed"]

    assert app_settings.connector_options("default")["EXCLUDE"] == ["django_session"]


def test_storage_follows_storages_dbbackup(tmp_path):
    options = {"location": str(tmp_path)}
    with override_settings(STORAGES={**settings.STORAGES, "dbbackup": {"BACKEND": "x.Storage", "OPTIONS": options}}):
        assert (app_settings.storage_backend, app_settings.storage_options) == ("x.Storage", options)


def test_naming_renders_with_the_templates_in_force_now():
    with override_settings(
        DBBACKUP_FILENAME_TEMPLATE="shop-{databasename}-{datetime}.{extension}",
        DBBACKUP_DATE_FORMAT="%Y%m%dT%H%M%S",
        DBBACKUP_HOSTNAME="box",
    ):
        naming = Naming()
        assert naming.db_name("20260101T020304", "default", "sqlite3.gz") == "shop-default-20260101T020304.sqlite3.gz"
        assert naming.parse("shop-default-20260101T020304.sqlite3.gz").database == "default"


def test_configured_retention_is_the_backup_keep_keys():
    with override_settings(BACKUP_APP=backup_app_with(KEEP=4, KEEP_DAILY=7, KEEP_WEEKLY=0, KEEP_MONTHLY=12)):
        assert Retention.configured() == Retention(keep=4, daily=7, weekly=0, monthly=12)


def test_env_name_names_the_variable_of_a_key():
    assert app_settings.env_name("backup_dir") == "INVENTREE_BACKUP_DIR"
    with override_settings(BACKUP_APP_CONFIG=None):
        assert app_settings.env_name("backup_dir") == "backup_dir"
