"""backup_app.conf: environment > YAML > default, coerced, with sources, into Django settings.

Everything runs in-process with explicit ``environ`` dicts and YAML files under
``tmp_path``; the real ``os.environ`` is never read.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from backup_app.conf import (
    BACKUP_KEYS,
    STORAGE_DIR_OPTION,
    ConfigError,
    Key,
    apply_backup_settings,
    coerce,
    import_storage_class,
    load_config,
    redact_value,
)
from config.settings import SITE_KEYS, database_engine

ALL_KEYS = SITE_KEYS + BACKUP_KEYS

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "config" / "config_template.yaml"
FILESYSTEM = "django.core.files.storage.FileSystemStorage"
S3 = "storages.backends.s3.S3Storage"


# --- helpers -------------------------------------------------------------------


def nested(name: str, value) -> dict:
    """``{"a": {"B": value}}`` for YAML key ``a.B``."""
    head, _, rest = name.partition(".")
    return {head: nested(rest, value) if rest else value}


def write_yaml(tmp_path: Path, data) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def load(tmp_path: Path, env: dict | None = None, data=None, *, prefix: str = "INVENTREE_", keys=BACKUP_KEYS):
    """Resolve ``keys`` from ``env`` and (when given) a YAML file holding ``data``."""
    path = write_yaml(tmp_path, data) if data is not None else None
    return load_config(environ=env or {}, config_file=path, keys=keys, prefix=prefix)


def namespace(tmp_path: Path, aliases=("default",), **extra) -> dict:
    """A settings module's globals, as ``apply_backup_settings`` finds them."""
    ns = {
        "BASE_DIR": tmp_path,
        "MEDIA_ROOT": str(tmp_path / "media"),
        "DATABASES": {
            alias: {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / f"{alias}.sqlite3")}
            for alias in aliases
        },
    }
    ns.update(extra)
    return ns


def settings_for(tmp_path: Path, env: dict | None = None, data=None, *, aliases=("default",), **extra) -> dict:
    """The settings produced for a site with ``aliases`` from ``env`` and YAML ``data``."""
    ns = namespace(tmp_path, aliases, **extra)
    apply_backup_settings(ns, config=load(tmp_path, env, data), default_dir=tmp_path / "default-backup")
    return ns


def one_line_error(err: BaseException, *needles: str) -> str:
    text = str(err)
    assert "\n" not in text, f"not one line: {text!r}"
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    return text


def dbbackup_storage(ns: dict) -> dict:
    return ns["STORAGES"]["dbbackup"]


# --- the seed table: env and YAML -> Django / django-dbbackup settings ----------

# key, value in the environment, value in YAML, the setting it becomes, expected setting value
SEED_ROWS = [
    ("backup_storage", S3, S3, lambda ns: dbbackup_storage(ns)["BACKEND"], S3),
    (
        "backup_dir",
        "/srv/backups",
        "/srv/backups",
        lambda ns: dbbackup_storage(ns)["OPTIONS"]["location"],
        "/srv/backups",
    ),
    (
        "backup_options",
        '{"bucket_name": "site-backups", "file_overwrite": false}',
        {"bucket_name": "site-backups", "file_overwrite": False},
        lambda ns: {k: dbbackup_storage(ns)["OPTIONS"][k] for k in ("bucket_name", "file_overwrite")},
        {"bucket_name": "site-backups", "file_overwrite": False},
    ),
    (
        "backup_connector_options",
        '{"SINGLE_TRANSACTION": false}',
        {"SINGLE_TRANSACTION": False},
        lambda ns: ns["DBBACKUP_CONNECTORS"]["default"]["SINGLE_TRANSACTION"],
        False,
    ),
    ("backup_send_email", "true", True, lambda ns: ns["DBBACKUP_SEND_EMAIL"], True),
    (
        "backup_email_prefix",
        "[Shop Backup]",
        "[Shop Backup]",
        lambda ns: ns["DBBACKUP_EMAIL_SUBJECT_PREFIX"],
        "[Shop Backup] ",
    ),
    (
        "backup_gpg_recipient",
        "backup@example.com",
        "backup@example.com",
        lambda ns: ns["DBBACKUP_GPG_RECIPIENT"],
        "backup@example.com",
    ),
    ("backup_date_format", "%Y%m%dT%H%M%S", "%Y%m%dT%H%M%S", lambda ns: ns["DBBACKUP_DATE_FORMAT"], "%Y%m%dT%H%M%S"),
    (
        "backup_database_filename_template",
        "shop-{databasename}-{datetime}.{extension}",
        "shop-{databasename}-{datetime}.{extension}",
        lambda ns: ns["DBBACKUP_FILENAME_TEMPLATE"],
        "shop-{databasename}-{datetime}.{extension}",
    ),
    (
        "backup_media_filename_template",
        "shop-media-{datetime}.{extension}",
        "shop-media-{datetime}.{extension}",
        lambda ns: ns["DBBACKUP_MEDIA_FILENAME_TEMPLATE"],
        "shop-media-{datetime}.{extension}",
    ),
]
SEED_IDS = [row[0] for row in SEED_ROWS]


def env_name(key: str, prefix: str = "INVENTREE_") -> str:
    return prefix + next(k.env for k in ALL_KEYS if k.name == key)


@pytest.mark.parametrize(("key", "env_value", "yaml_value", "setting", "expected"), SEED_ROWS, ids=SEED_IDS)
def test_seed_key_from_env_sets_django_setting(tmp_path, key, env_value, yaml_value, setting, expected):
    ns = settings_for(tmp_path, {env_name(key): env_value})
    assert setting(ns) == expected


@pytest.mark.parametrize(("key", "env_value", "yaml_value", "setting", "expected"), SEED_ROWS, ids=SEED_IDS)
def test_seed_key_from_yaml_sets_django_setting(tmp_path, key, env_value, yaml_value, setting, expected):
    ns = settings_for(tmp_path, data={key: yaml_value})
    assert setting(ns) == expected


SEED_DEFAULTS = [
    ("backup_storage", lambda ns: dbbackup_storage(ns)["BACKEND"], FILESYSTEM),
    ("backup_dir", lambda ns: ns["BACKUP_APP_CONFIG"]["backup_dir"], None),
    ("backup_options", lambda ns: ns["BACKUP_APP_CONFIG"]["backup_options"], None),
    ("backup_connector_options", lambda ns: ns["DBBACKUP_CONNECTORS"], {"default": {"EXCLUDE": ["django_session"]}}),
    ("backup_send_email", lambda ns: ns["DBBACKUP_SEND_EMAIL"], False),
    ("backup_email_prefix", lambda ns: ns["DBBACKUP_EMAIL_SUBJECT_PREFIX"], "[InvenTree Backup] "),
    ("backup_gpg_recipient", lambda ns: ns["DBBACKUP_GPG_RECIPIENT"], None),
    ("backup_date_format", lambda ns: ns["DBBACKUP_DATE_FORMAT"], "%Y-%m-%d-%H%M%S"),
    (
        "backup_database_filename_template",
        lambda ns: ns["DBBACKUP_FILENAME_TEMPLATE"],
        "InvenTree-db-{datetime}.{extension}",
    ),
    (
        "backup_media_filename_template",
        lambda ns: ns["DBBACKUP_MEDIA_FILENAME_TEMPLATE"],
        "InvenTree-media-{datetime}.{extension}",
    ),
]


@pytest.mark.parametrize(("key", "setting", "expected"), SEED_DEFAULTS, ids=[row[0] for row in SEED_DEFAULTS])
def test_seed_key_default(tmp_path, key, setting, expected):
    assert setting(settings_for(tmp_path)) == expected


def test_seed_defaults_cover_every_seed_row():
    assert [row[0] for row in SEED_DEFAULTS] == SEED_IDS


# --- the added keys of contract 5 -> settings.BACKUP_APP ------------------------

ADDED_ROWS = [
    ("backup_compression", "zstd", "zstd", "COMPRESSION", "zstd"),
    ("backup_media_mode", "incremental", "incremental", "MEDIA_MODE", "incremental"),
    ("backup_media_repack_percent", "20", 20, "MEDIA_REPACK_PERCENT", 20),
    ("backup_keep", "3", 3, "KEEP", 3),
    ("backup_keep_daily", "7", 7, "KEEP_DAILY", 7),
    ("backup_keep_weekly", "4", 4, "KEEP_WEEKLY", 4),
    ("backup_keep_monthly", "12", 12, "KEEP_MONTHLY", 12),
    ("backup_gpg_home", "/srv/gnupg", "/srv/gnupg", "GPG_HOME", "/srv/gnupg"),
    ("backup_safety", "false", False, "SAFETY", False),
    ("backup_restore_warn_age_days", "30", 30, "RESTORE_WARN_AGE_DAYS", 30),
]
ADDED_IDS = [row[0] for row in ADDED_ROWS]


@pytest.mark.parametrize(("key", "env_value", "yaml_value", "field", "expected"), ADDED_ROWS, ids=ADDED_IDS)
def test_added_key_from_env_sets_backup_app(tmp_path, key, env_value, yaml_value, field, expected):
    assert settings_for(tmp_path, {env_name(key): env_value})["BACKUP_APP"][field] == expected


@pytest.mark.parametrize(("key", "env_value", "yaml_value", "field", "expected"), ADDED_ROWS, ids=ADDED_IDS)
def test_added_key_from_yaml_sets_backup_app(tmp_path, key, env_value, yaml_value, field, expected):
    assert settings_for(tmp_path, data={key: yaml_value})["BACKUP_APP"][field] == expected


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("COMPRESSION", "gzip"),
        ("KEEP", 10),
        ("KEEP_DAILY", 0),
        ("KEEP_WEEKLY", 0),
        ("KEEP_MONTHLY", 0),
        ("GPG_HOME", None),
        ("SAFETY", True),
    ],
)
def test_added_key_default(tmp_path, field, expected):
    assert settings_for(tmp_path)["BACKUP_APP"][field] == expected


def test_compression_none_is_accepted(tmp_path):
    assert settings_for(tmp_path, {"INVENTREE_BACKUP_COMPRESSION": "none"})["BACKUP_APP"]["COMPRESSION"] == "none"


def test_backup_keep_is_dbbackup_cleanup_keep(tmp_path):
    ns = settings_for(tmp_path, {"INVENTREE_BACKUP_KEEP": "4"})
    assert (ns["DBBACKUP_CLEANUP_KEEP"], ns["DBBACKUP_CLEANUP_KEEP_MEDIA"]) == (4, 4)


# --- recorded source of every backup key ---------------------------------------

# a value for every backup key: (in the environment, in YAML)
SAMPLES = {row[0]: (row[1], row[2]) for row in SEED_ROWS} | {row[0]: (row[1], row[2]) for row in ADDED_ROWS}
SAMPLES |= {
    "backup_gpg_passphrase_file": ("/run/secrets/gpg", "/run/secrets/gpg"),
    "backup_gpg_passphrase": ("hunter2", "hunter2"),
    "backup_databases": ("default", ["default"]),
    "backup_safety_dir": ("/srv/safety", "/srv/safety"),
    "backup_safety_days": ("3", 3),
    "backup_notify_urls": ("json://127.0.0.1/hook", ["json://127.0.0.1/hook"]),
    "backup_notify_on_success": ("true", True),
    "backup_ping_url": ("https://hc-ping.example/abc", "https://hc-ping.example/abc"),
    "backup_safety_warn_percent": ("20", 20),
    "backup_restore_allow_newer_version": ("true", True),
    "backup_db_lock_timeout": ("3", 3),
    "backup_site_id": ("shop-eu", "shop-eu"),
    "backup_storage_timeout": ("5", 5),
    "backup_storage_retries": ("0", 0),
}
BACKUP_KEY_NAMES = [key.name for key in BACKUP_KEYS]


def test_samples_cover_every_backup_key():
    assert sorted(SAMPLES) == sorted(BACKUP_KEY_NAMES)


@pytest.mark.parametrize("key", BACKUP_KEY_NAMES)
def test_source_is_env_when_set_in_env(tmp_path, key):
    config = load(tmp_path, {env_name(key): SAMPLES[key][0]}, {key: SAMPLES[key][1]})
    assert (config.source(key), config.values[key].origin) == ("env", env_name(key))


@pytest.mark.parametrize("key", BACKUP_KEY_NAMES)
def test_source_is_yaml_when_set_in_yaml(tmp_path, key):
    config = load(tmp_path, {}, {key: SAMPLES[key][1]})
    assert config.source(key) == "yaml"


@pytest.mark.parametrize("key", BACKUP_KEY_NAMES)
def test_source_is_default_when_set_nowhere(tmp_path, key):
    config = load(tmp_path, {}, {})
    assert config.source(key) == "default"


@pytest.mark.parametrize("key", BACKUP_KEY_NAMES)
def test_env_and_yaml_give_the_same_value(tmp_path, key):
    from_env = load(tmp_path, {env_name(key): SAMPLES[key][0]})[key]
    from_yaml = load(tmp_path, {}, {key: SAMPLES[key][1]})[key]
    assert from_env == from_yaml


# --- precedence -----------------------------------------------------------------


def test_env_wins_over_yaml(tmp_path):
    config = load(tmp_path, {"INVENTREE_BACKUP_COMPRESSION": "zstd"}, {"backup_compression": "none"})
    assert config["backup_compression"] == "zstd"


def test_yaml_wins_over_default(tmp_path):
    assert load(tmp_path, {}, {"backup_compression": "none"})["backup_compression"] == "none"


def test_empty_env_variable_falls_through_to_yaml(tmp_path):
    config = load(tmp_path, {"INVENTREE_BACKUP_COMPRESSION": ""}, {"backup_compression": "none"})
    assert (config["backup_compression"], config.source("backup_compression")) == ("none", "yaml")


def test_empty_env_variable_falls_through_to_default(tmp_path):
    config = load(tmp_path, {"INVENTREE_BACKUP_KEEP": ""})
    assert (config["backup_keep"], config.source("backup_keep")) == (10, "default")


def test_yaml_key_without_value_falls_through_to_default(tmp_path):
    config = load(tmp_path, {}, "backup_keep:\n")
    assert (config["backup_keep"], config.source("backup_keep")) == (10, "default")


def test_empty_backup_dir_in_yaml_counts_as_unset_like_an_empty_variable(tmp_path):
    # An empty location would make FileSystemStorage write into the current directory.
    ns = settings_for(tmp_path, data={"backup_dir": ""})
    assert dbbackup_storage(ns)["OPTIONS"]["location"] == str(tmp_path / "default-backup")


def test_custom_prefix_reads_its_own_variables(tmp_path):
    config = load(tmp_path, {"MYSITE_BACKUP_KEEP": "4"}, prefix="MYSITE_")
    assert (config["backup_keep"], config.values["backup_keep"].origin) == (4, "MYSITE_BACKUP_KEEP")


def test_custom_prefix_ignores_inventree_variables(tmp_path):
    assert load(tmp_path, {"INVENTREE_BACKUP_KEEP": "4"}, prefix="MYSITE_")["backup_keep"] == 10


def test_custom_prefix_config_file_variable_names_the_yaml_file(tmp_path):
    path = write_yaml(tmp_path, {"backup_keep": 6})
    config = load_config(environ={"MYSITE_CONFIG_FILE": str(path)}, prefix="MYSITE_", keys=BACKUP_KEYS)
    assert (config["backup_keep"], config.file) == (6, path)


def test_custom_prefix_names_its_variable_in_errors(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {"MYSITE_BACKUP_KEEP": "ten"}, prefix="MYSITE_")
    one_line_error(err.value, "MYSITE_BACKUP_KEEP")


def test_config_file_variable_wins_over_config_file_argument(tmp_path):
    chosen = tmp_path / "chosen.yaml"
    chosen.write_text("backup_keep: 7\n")
    other = tmp_path / "other.yaml"
    other.write_text("backup_keep: 3\n")
    config = load_config(environ={"INVENTREE_CONFIG_FILE": str(chosen)}, config_file=other, keys=BACKUP_KEYS)
    assert config["backup_keep"] == 7


def test_missing_config_file_is_created_from_template(tmp_path):
    path = tmp_path / "config" / "config.yaml"
    load_config(environ={}, config_file=path, template=TEMPLATE, keys=BACKUP_KEYS)
    assert path.read_text() == TEMPLATE.read_text()


def test_template_sets_nothing(tmp_path):
    config = load_config(environ={}, config_file=TEMPLATE, keys=ALL_KEYS)
    assert {name for name, res in config.values.items() if res.source != "default"} == set()


# --- DBBACKUP_CONNECTORS ------------------------------------------------------


def test_session_data_is_excluded_by_default(tmp_path):
    assert settings_for(tmp_path)["DBBACKUP_CONNECTORS"]["default"]["EXCLUDE"] == ["django_session"]


def test_user_exclude_adds_to_session_exclusion(tmp_path):
    ns = settings_for(tmp_path, {"INVENTREE_BACKUP_CONNECTOR_OPTIONS": '{"EXCLUDE": ["audit_log"]}'})
    assert ns["DBBACKUP_CONNECTORS"]["default"]["EXCLUDE"] == ["audit_log", "django_session"]


def test_user_exclude_may_be_one_table_name(tmp_path):
    ns = settings_for(tmp_path, data={"backup_connector_options": {"EXCLUDE": "audit_log"}})
    assert ns["DBBACKUP_CONNECTORS"]["default"]["EXCLUDE"] == ["audit_log", "django_session"]


def test_one_options_dict_applies_to_every_alias(tmp_path):
    ns = settings_for(
        tmp_path, data={"backup_connector_options": {"SINGLE_TRANSACTION": False}}, aliases=("default", "reports")
    )
    assert ns["DBBACKUP_CONNECTORS"] == {
        "default": {"SINGLE_TRANSACTION": False, "EXCLUDE": ["django_session"]},
        "reports": {"SINGLE_TRANSACTION": False, "EXCLUDE": ["django_session"]},
    }


def test_options_keyed_by_alias_apply_per_alias(tmp_path):
    options = {"default": {"EXCLUDE": ["audit_log"]}, "reports": {"SINGLE_TRANSACTION": False}}
    ns = settings_for(tmp_path, data={"backup_connector_options": options}, aliases=("default", "reports"))
    assert ns["DBBACKUP_CONNECTORS"] == {
        "default": {"EXCLUDE": ["audit_log", "django_session"]},
        "reports": {"SINGLE_TRANSACTION": False, "EXCLUDE": ["django_session"]},
    }


def test_options_keyed_by_alias_apply_when_backup_databases_selects_some(tmp_path):
    options = {"default": {"EXCLUDE": ["audit_log"]}, "reports": {"SINGLE_TRANSACTION": False}}
    data = {"backup_connector_options": options, "backup_databases": ["reports"]}
    ns = settings_for(tmp_path, data=data, aliases=("default", "reports"))
    assert ns["DBBACKUP_CONNECTORS"] == {"reports": {"SINGLE_TRANSACTION": False, "EXCLUDE": ["django_session"]}}


def test_backup_databases_limits_the_aliases(tmp_path):
    ns = settings_for(tmp_path, {"INVENTREE_BACKUP_DATABASES": "reports"}, aliases=("default", "reports"))
    assert (ns["DBBACKUP_DATABASES"], list(ns["DBBACKUP_CONNECTORS"])) == (["reports"], ["reports"])


def test_backup_databases_defaults_to_every_alias(tmp_path):
    assert settings_for(tmp_path, aliases=("default", "reports"))["DBBACKUP_DATABASES"] == ["default", "reports"]


# --- failure mail recipients ------------------------------------------------------
# They are backup_app's (BACKUP_APP["ADMINS"]); stock dbbackup's DBBACKUP_ADMIN stays empty, so that its own
# failure mail (traceback locals, settings: the database password) has no recipient.


def test_failure_mail_goes_to_admins_plus_backup_admin_email(tmp_path):
    ns = settings_for(tmp_path, ADMINS=[("Ann", "ann@example.com")], BACKUP_ADMIN_EMAIL="ops@example.com")
    assert ns["BACKUP_APP"]["ADMINS"] == [("Ann", "ann@example.com"), ("Backup admin", "ops@example.com")]


def test_failure_mail_lists_an_address_once(tmp_path):
    ns = settings_for(tmp_path, ADMINS=[("Ann", "ann@example.com")], BACKUP_ADMIN_EMAIL="ann@example.com")
    assert ns["BACKUP_APP"]["ADMINS"] == [("Ann", "ann@example.com")]


def test_failure_mail_has_no_recipient_without_admins(tmp_path):
    assert settings_for(tmp_path)["BACKUP_APP"]["ADMINS"] == []


def test_stock_failure_mail_gets_no_recipient_even_with_admins(tmp_path):
    ns = settings_for(tmp_path, ADMINS=[("Ann", "ann@example.com")], BACKUP_ADMIN_EMAIL="ops@example.com")
    assert ns["DBBACKUP_ADMIN"] == []


# --- backup_dir and the storage -----------------------------------------------


def test_default_dir_used_when_backup_dir_unset(tmp_path):
    ns = settings_for(tmp_path)
    assert dbbackup_storage(ns)["OPTIONS"]["location"] == str(tmp_path / "default-backup")


def test_default_dir_is_recorded_as_default(tmp_path):
    app = settings_for(tmp_path)["BACKUP_APP"]
    assert (app["DIR"], app["DIR_IS_DEFAULT"]) == (str(tmp_path / "default-backup"), True)


def test_default_dir_without_default_dir_argument_is_base_dir_backup(tmp_path):
    ns = namespace(tmp_path)
    apply_backup_settings(ns, config=load(tmp_path))
    assert dbbackup_storage(ns)["OPTIONS"]["location"] == str(tmp_path / "backup")


def test_set_backup_dir_is_not_marked_default(tmp_path):
    assert settings_for(tmp_path, {"INVENTREE_BACKUP_DIR": "/srv/backups"})["BACKUP_APP"]["DIR_IS_DEFAULT"] is False


def test_no_default_dir_for_remote_storage(tmp_path):
    ns = settings_for(tmp_path, {"INVENTREE_BACKUP_STORAGE": S3, "INVENTREE_BACKUP_OPTIONS": '{"bucket_name": "b"}'})
    assert dbbackup_storage(ns)["OPTIONS"] == {"bucket_name": "b"}


def test_remote_storage_without_backup_dir_is_not_marked_default(tmp_path):
    app = settings_for(tmp_path, {"INVENTREE_BACKUP_STORAGE": S3})["BACKUP_APP"]
    assert (app["DIR"], app["DIR_IS_DEFAULT"]) == (None, False)


@pytest.mark.parametrize(("storage", "option"), sorted(STORAGE_DIR_OPTION.items()))
def test_backup_dir_fills_the_storage_dir_option(tmp_path, storage, option):
    ns = settings_for(tmp_path, {"INVENTREE_BACKUP_STORAGE": storage, "INVENTREE_BACKUP_DIR": "site/backups"})
    assert dbbackup_storage(ns)["OPTIONS"][option] == "site/backups"


def test_storage_option_given_in_backup_options_wins_over_backup_dir(tmp_path):
    env = {"INVENTREE_BACKUP_DIR": "/srv/a", "INVENTREE_BACKUP_OPTIONS": '{"location": "/srv/b"}'}
    assert dbbackup_storage(settings_for(tmp_path, env))["OPTIONS"]["location"] == "/srv/b"


def test_local_backups_are_owner_only(tmp_path):
    options = dbbackup_storage(settings_for(tmp_path))["OPTIONS"]
    assert (options["file_permissions_mode"], options["directory_permissions_mode"]) == (0o600, 0o700)


def test_other_storages_are_kept(tmp_path):
    default = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {"bucket_name": "media"}}
    ns = settings_for(tmp_path, STORAGES={"default": default})
    assert ns["STORAGES"]["default"] == default


def test_never_produces_deprecated_dbbackup_storage_settings(tmp_path):
    env = {"INVENTREE_BACKUP_STORAGE": S3, "INVENTREE_BACKUP_OPTIONS": '{"bucket_name": "b"}'}
    ns = settings_for(tmp_path, env)
    assert {"DBBACKUP_STORAGE", "DBBACKUP_STORAGE_OPTIONS"} & set(ns) == set()


def test_returned_settings_are_the_ones_added(tmp_path):
    ns = namespace(tmp_path)
    added = apply_backup_settings(ns, config=load(tmp_path))
    assert {k: ns[k] for k in added} == added


# --- bad values: one line naming the variable and the fix ---------------------


@pytest.mark.parametrize("key", ["backup_options", "backup_connector_options"])
def test_malformed_json_in_env_is_an_error(tmp_path, key):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {env_name(key): '{"bucket_name": '})
    one_line_error(err.value, env_name(key), "not valid JSON", '{"key": "value"}')


def test_json_list_for_a_dict_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {"INVENTREE_BACKUP_OPTIONS": '["bucket_name"]'})
    one_line_error(err.value, "INVENTREE_BACKUP_OPTIONS", "expected a mapping", "JSON object", "list")


def test_yaml_list_for_a_dict_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {}, {"backup_options": ["bucket_name"]})
    one_line_error(err.value, str(tmp_path / "config.yaml"), "backup_options", "expected a mapping")


@pytest.mark.parametrize("key", ["backup_send_email", "backup_safety"])
def test_non_boolean_word_is_an_error(tmp_path, key):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {env_name(key): "maybe"})
    one_line_error(err.value, env_name(key), "'maybe'", "use true or false")


@pytest.mark.parametrize("key", ["backup_keep", "backup_keep_daily", "backup_keep_weekly", "backup_keep_monthly"])
def test_non_integer_is_an_error(tmp_path, key):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {env_name(key): "ten"})
    one_line_error(err.value, env_name(key), "'ten'", "not a whole number")


@pytest.mark.parametrize(
    ("key", "value", "minimum"),
    [("backup_keep", "0", 1), ("backup_keep_daily", "-1", 0), ("backup_keep_weekly", "-1", 0)],
)
def test_integer_below_minimum_is_an_error(tmp_path, key, value, minimum):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {env_name(key): value})
    one_line_error(err.value, env_name(key), f"at least {minimum}")


@pytest.mark.parametrize(("value", "fix"), [("101", "at most 100"), ("-1", "at least 0"), ("half", "whole number")])
def test_a_repack_percent_outside_0_to_100_is_an_error(tmp_path, value, fix):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {env_name("backup_media_repack_percent"): value})
    one_line_error(err.value, env_name("backup_media_repack_percent"), fix)


def test_yaml_boolean_for_a_number_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {}, {"backup_keep": True})
    one_line_error(err.value, "backup_keep", "not a whole number")


def test_unknown_compression_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {"INVENTREE_BACKUP_COMPRESSION": "bzip2"})
    one_line_error(err.value, "INVENTREE_BACKUP_COMPRESSION", "'bzip2'", "gzip, zstd, none")


def test_yaml_mapping_for_a_text_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {}, {"backup_dir": {"path": "/srv"}})
    one_line_error(err.value, "backup_dir", "expected text")


def test_invalid_yaml_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {}, "backup_keep: 3\nbackup_dir: [unclosed\n")
    one_line_error(err.value, str(tmp_path / "config.yaml"), "not valid YAML", "fix the file")


def test_yaml_file_that_is_not_a_mapping_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {}, "- backup_keep\n")
    one_line_error(err.value, str(tmp_path / "config.yaml"), "must be a YAML mapping")


def test_missing_config_file_variable_target_is_an_error(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(environ={"INVENTREE_CONFIG_FILE": str(missing)}, keys=BACKUP_KEYS)
    one_line_error(err.value, "INVENTREE_CONFIG_FILE", str(missing), "does not exist", "unset the variable")


@pytest.mark.parametrize("value", ["oracle", "django.db.backends.oracle"])
def test_unknown_database_engine_is_an_error(value):
    with pytest.raises(ConfigError) as err:
        database_engine(value)
    one_line_error(err.value, "INVENTREE_DB_ENGINE", repr(value), "use sqlite3, postgresql or mysql")


def test_unknown_alias_in_backup_databases_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        settings_for(tmp_path, {"INVENTREE_BACKUP_DATABASES": "default,reports"})
    one_line_error(err.value, "INVENTREE_BACKUP_DATABASES", "'reports'", "use one of default")


def test_malformed_json_list_in_backup_databases_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {"INVENTREE_BACKUP_DATABASES": '["default",'})
    one_line_error(err.value, "INVENTREE_BACKUP_DATABASES", "not valid JSON")


def without_package(monkeypatch, package: str, backend_module: str) -> None:
    """Make ``package`` impossible to import (as if not installed) and forget the backend module."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)
    monkeypatch.delitem(sys.modules, backend_module, raising=False)


def test_gcs_storage_without_its_packages_names_the_gcs_extra(monkeypatch):
    # storages.backends.gcloud raises ImproperlyConfigured (not ImportError) when google-cloud-storage is missing.
    without_package(monkeypatch, "google", "storages.backends.gcloud")
    with pytest.raises(ConfigError) as err:
        import_storage_class("storages.backends.gcloud.GoogleCloudStorage", where="INVENTREE_BACKUP_STORAGE")
    one_line_error(err.value, "INVENTREE_BACKUP_STORAGE", "pip install 'backup_app[gcs]'")


def test_azure_storage_without_its_packages_names_the_azure_extra(monkeypatch):
    without_package(monkeypatch, "azure", "storages.backends.azure_storage")
    with pytest.raises(ConfigError) as err:
        import_storage_class("storages.backends.azure_storage.AzureStorage", where="INVENTREE_BACKUP_STORAGE")
    one_line_error(err.value, "INVENTREE_BACKUP_STORAGE", "pip install 'backup_app[azure]'")


def test_storage_that_does_not_import_gives_the_generic_hint():
    with pytest.raises(ConfigError) as err:
        import_storage_class("storages.backends.nothere.NoStorage", where="INVENTREE_BACKUP_STORAGE")
    one_line_error(
        err.value,
        "INVENTREE_BACKUP_STORAGE",
        "'storages.backends.nothere.NoStorage'",
        "check the dotted path and that its package is installed",
    )


def test_class_that_is_not_a_storage_is_an_error():
    with pytest.raises(ConfigError) as err:
        import_storage_class("collections.OrderedDict", where="INVENTREE_BACKUP_STORAGE")
    one_line_error(err.value, "INVENTREE_BACKUP_STORAGE", "is not a Django Storage class", "subclass of")


def test_storage_class_that_imports_is_returned():
    from django.core.files.storage import FileSystemStorage

    assert import_storage_class(FILESYSTEM) is FileSystemStorage


# --- coerce ---------------------------------------------------------------------

BOOL = Key("flag", "FLAG", False, kind="bool")
LIST = Key("names", "NAMES", None, kind="list")


@pytest.mark.parametrize("word", ["1", "true", "True", "YES", "on", "y", "t", " true "])
def test_true_words(word):
    assert coerce(BOOL, word, "X") is True


@pytest.mark.parametrize("word", ["0", "false", "False", "NO", "off", "n", "f"])
def test_false_words(word):
    assert coerce(BOOL, word, "X") is False


def test_comma_list_in_env():
    assert coerce(LIST, "default, reports", "X") == ["default", "reports"]


def test_json_list_in_env():
    assert coerce(LIST, '["default", "reports"]', "X") == ["default", "reports"]


def test_integer_text_is_stripped():
    assert coerce(Key("n", "N", 1, kind="int"), " 12 ", "X") == 12


def test_yaml_number_for_a_text_key_is_text():
    assert coerce(Key("s", "S", ""), 5432, "X") == "5432"


# --- redaction ----------------------------------------------------------------


def test_redact_secret_value():
    assert redact_value("hunter2", secret=True) == "********"


def test_redact_leaves_unset_secret_visible_as_unset():
    assert redact_value(None, secret=True) is None


def test_redact_dict_values_by_key_name():
    options = {"access_key": "AKIA", "secret_key": "s3cr3t", "password": "pw", "bucket_name": "site-backups"}
    assert redact_value(options) == {
        "access_key": "********",
        "secret_key": "********",
        "password": "********",
        "bucket_name": "site-backups",
    }


@pytest.mark.parametrize(
    ("options", "secret"),
    [
        ({"DUMP_ENV": {"MYSQL_PWD": "Sx-1"}}, "Sx-1"),
        ({"RESTORE_ENV": {"LANG": "Sx-2"}}, "Sx-2"),  # every value of an *_ENV, whatever its name
        ({"ENV": {"PGPASSWORD": "Sx-3"}}, "Sx-3"),
        ({"default": {"DUMP_ENV": {"MYSQL_PWD": "Sx-4"}}}, "Sx-4"),  # per alias
        ({"DUMP_SUFFIX": "--single-transaction --password=Sx-5"}, "Sx-5"),
        ({"RESTORE_PREFIX": "env -pSx-6"}, "Sx-6"),
        ({"DUMP_PREFIX": ["sudo", "--password=Sx-7"]}, "Sx-7"),
        ({"endpoint_url": "https://user:Sx-8@minio:9000"}, "Sx-8"),
        ({"location": "redis://:Sx-9@127.0.0.1:6379/0"}, "Sx-9"),  # a URL without a user name
        ({"connection": "DefaultEndpointsProtocol=https;AccountKey=Sx-10;"}, "Sx-10"),
        ({"custom": "sv=2022&sig=Sx-11"}, "Sx-11"),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else value,
)
def test_secret_in_options_is_masked_and_known(options, secret):
    from backup_app.conf import secret_values

    assert secret not in repr(redact_value(options))
    assert secret in secret_values(options)


def test_values_that_are_no_secret_stay_visible():
    options = {"DUMP_CMD": "mariadb-dump", "EXCLUDE": ["audit_log"], "location": "/srv/backups", "bucket_name": "b"}
    assert redact_value(options) == options


def test_config_repr_shows_no_secret(tmp_path):
    config = load(
        tmp_path,
        {
            "INVENTREE_BACKUP_GPG_PASSPHRASE": "Sx-gpg",
            "INVENTREE_BACKUP_CONNECTOR_OPTIONS": '{"DUMP_ENV": {"A": "Sx-env"}}',
        },
    )
    text = repr(config) + repr(config.values["backup_gpg_passphrase"])
    assert ("Sx-gpg" in text, "Sx-env" in text, "backup_gpg_passphrase" in text) == (False, False, True)


def test_config_rows_hide_secret_keys(tmp_path):
    config = load(tmp_path, {"INVENTREE_BACKUP_GPG_PASSPHRASE": "hunter2"})
    row = next(r for r in config.rows() if r[0] == "backup_gpg_passphrase")
    assert row == (
        "backup_gpg_passphrase",
        "INVENTREE_BACKUP_GPG_PASSPHRASE",
        "********",
        "INVENTREE_BACKUP_GPG_PASSPHRASE",
    )


# --- the demo site's keys (contract 4), declared in config/settings.py ----------------

# key, value in the environment, value in YAML, resolved value
SITE_ROWS = [
    ("database.ENGINE", "postgresql", "postgresql", "postgresql"),
    ("database.NAME", "shop", "shop", "shop"),
    ("database.HOST", "db.example.com", "db.example.com", "db.example.com"),
    ("database.PORT", "5432", 5432, "5432"),
    ("database.USER", "shop", "shop", "shop"),
    ("database.PASSWORD", "pw", "pw", "pw"),
    ("media_root", "/srv/media", "/srv/media", "/srv/media"),
    ("static_root", "/srv/static", "/srv/static", "/srv/static"),
    ("email.host", "smtp.example.com", "smtp.example.com", "smtp.example.com"),
    ("email.port", "587", 587, 587),
    ("email.username", "mailer", "mailer", "mailer"),
    ("email.password", "pw", "pw", "pw"),
    ("email.tls", "true", True, True),
    ("email.ssl", "yes", True, True),
    ("email.sender", "shop@example.com", "shop@example.com", "shop@example.com"),
    ("admin_email", "ops@example.com", "ops@example.com", "ops@example.com"),
    ("debug", "true", True, True),
    ("secret_key", "not-so-secret", "not-so-secret", "not-so-secret"),
    ("backup_redis_url", "redis://127.0.0.1:6379/1", "redis://127.0.0.1:6379/1", "redis://127.0.0.1:6379/1"),
]
SITE_IDS = [row[0] for row in SITE_ROWS]


def test_site_rows_cover_every_site_key():
    assert SITE_IDS == [key.name for key in SITE_KEYS]


@pytest.mark.parametrize(("key", "env_value", "yaml_value", "expected"), SITE_ROWS, ids=SITE_IDS)
def test_site_key_from_env(tmp_path, key, env_value, yaml_value, expected):
    config = load(tmp_path, {env_name(key): env_value}, keys=ALL_KEYS)
    assert (config[key], config.source(key)) == (expected, "env")


@pytest.mark.parametrize(("key", "env_value", "yaml_value", "expected"), SITE_ROWS, ids=SITE_IDS)
def test_site_key_from_yaml(tmp_path, key, env_value, yaml_value, expected):
    config = load(tmp_path, {}, nested(key, yaml_value), keys=ALL_KEYS)
    assert (config[key], config.source(key)) == (expected, "yaml")


def test_yaml_database_mapping(tmp_path):
    database = {"ENGINE": "mysql", "NAME": "shop", "HOST": "db", "PORT": 3306, "USER": "u", "PASSWORD": "p"}
    config = load(tmp_path, {}, {"database": database}, keys=ALL_KEYS)
    assert {k: config[f"database.{k}"] for k in database} == {**database, "PORT": "3306"}


def test_env_overrides_one_key_of_the_yaml_database_mapping(tmp_path):
    data = {"database": {"ENGINE": "postgresql", "HOST": "db"}}
    config = load(tmp_path, {"INVENTREE_DB_HOST": "replica"}, data, keys=ALL_KEYS)
    assert (config["database.ENGINE"], config["database.HOST"]) == ("postgresql", "replica")


def test_database_engine_default_is_sqlite(tmp_path):
    config = load(tmp_path, {}, keys=ALL_KEYS)
    assert database_engine(config["database.ENGINE"]) == "django.db.backends.sqlite3"


@pytest.mark.parametrize(
    ("value", "engine"),
    [
        ("sqlite3", "django.db.backends.sqlite3"),
        ("postgresql", "django.db.backends.postgresql"),
        ("mysql", "django.db.backends.mysql"),
        ("MySQL", "django.db.backends.mysql"),
        ("django.db.backends.sqlite3", "django.db.backends.sqlite3"),
        ("django.db.backends.postgresql", "django.db.backends.postgresql"),
        ("django.db.backends.mysql", "django.db.backends.mysql"),
    ],
)
def test_database_engine_names(value, engine):
    assert database_engine(value) == engine


def test_invalid_site_value_names_its_variable(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {"INVENTREE_EMAIL_PORT": "smtp"}, keys=ALL_KEYS)
    one_line_error(err.value, "INVENTREE_EMAIL_PORT", "not a whole number")


# --- config/config_template.yaml documents every key ------------------------------

TEMPLATE_TEXT = TEMPLATE.read_text()


def yaml_key_in_template(name: str, text: str) -> bool:
    """``name`` appears as a (commented) YAML key; ``a.B`` as ``B:`` indented under ``a:``."""
    head, _, child = name.partition(".")
    lines = text.splitlines()
    key_line = re.compile(rf"^#?\s*{re.escape(head)}:")
    for index, line in enumerate(lines):
        if not key_line.match(line):
            continue
        if not child:
            return True
        for below in lines[index + 1 :]:
            if not re.match(r"^#?\s{2,}\S", below):
                break
            if re.match(rf"^#?\s{{2,}}{re.escape(child)}:", below):
                return True
    return False


@pytest.mark.parametrize("key", ALL_KEYS, ids=[k.name for k in ALL_KEYS])
def test_template_has_yaml_key(key):
    assert yaml_key_in_template(key.name, TEMPLATE_TEXT)


@pytest.mark.parametrize("key", ALL_KEYS, ids=[k.name for k in ALL_KEYS])
def test_template_has_env_name(key):
    assert re.search(rf"\bINVENTREE_{re.escape(key.env)}\b", TEMPLATE_TEXT)


# --- values of the wrong type: one line naming the key, the value (never a secret one) and the fix --------


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ({"backup_dir": 5}, ("backup_dir", "5", "write the path as text")),
        ({"backup_safety_dir": ["/a"]}, ("backup_safety_dir", "['/a']", "write the path as text")),
        ({"backup_gpg_home": True}, ("backup_gpg_home", "True", "write the path as text")),
    ],
    ids=["backup_dir-a-number", "safety_dir-a-list", "gpg_home-a-boolean"],
)
def test_yaml_path_that_is_not_text_is_an_error(tmp_path, data, needles):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {}, data)
    one_line_error(err.value, *needles)


def test_path_from_the_environment_is_any_text(tmp_path):
    assert load(tmp_path, {"INVENTREE_BACKUP_DIR": "5"})["backup_dir"] == "5"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"database": {"PASSWORD": ["Sx-secret"]}}, "database.PASSWORD"),
        ({"email": {"password": {"v": "Sx-secret"}}}, "email.password"),
        ({"backup_gpg_passphrase": ["Sx-secret"]}, "backup_gpg_passphrase"),
        ({"secret_key": True}, "secret_key"),
    ],
    ids=["db-password-list", "mail-password-mapping", "passphrase-list", "secret-key-boolean"],
)
def test_bad_value_of_a_secret_key_is_named_not_shown(tmp_path, data, key):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {}, data, keys=ALL_KEYS)
    assert "Sx-secret" not in one_line_error(err.value, key, "secret, not shown")


def test_mapping_written_as_a_list_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {}, {"database": ["a", "b"]}, keys=ALL_KEYS)
    one_line_error(err.value, "database", "['a', 'b']", "expected a mapping of ENGINE", "write its keys under it")


def test_mapping_written_as_text_does_not_show_it(tmp_path):
    # A lone text under "database:" may be the password meant to go under it.
    with pytest.raises(ConfigError) as err:
        load(tmp_path, {}, {"database": "Sx-secret"}, keys=ALL_KEYS)
    assert "Sx-secret" not in one_line_error(err.value, "database", "secret, not shown")


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        ({"EXCLUDE": 5}, ("EXCLUDE", "5", "a table name or a list")),
        ({"EXCLUDE": {"audit_log": True}}, ("EXCLUDE", "audit_log", "a table name or a list")),
        ({"EXCLUDE": ["a", 1]}, ("EXCLUDE", "a table name or a list")),
        ({"CONNECTOR": ["x"]}, ("CONNECTOR", "a dotted path")),
        ({"DUMP_ENV": ["MYSQL_PWD=x"]}, ("DUMP_ENV", "a mapping of variable names")),
        ({"DUMP_SUFFIX": 5}, ("DUMP_SUFFIX", "a command line")),
        ({"SINGLE_TRANSACTION": "no"}, ("SINGLE_TRANSACTION", "true or false")),
        ({"default": {"EXCLUDE": 5}}, ("INVENTREE_BACKUP_CONNECTOR_OPTIONS: default: EXCLUDE", "5")),
    ],
    ids=[
        "exclude-number",
        "exclude-mapping",
        "exclude-mixed-list",
        "connector-list",
        "env-list",
        "suffix-number",
        "bool-text",
        "per-alias",
    ],
)
def test_connector_option_of_the_wrong_type_is_an_error(tmp_path, options, needles):
    import json

    with pytest.raises(ConfigError) as err:
        settings_for(tmp_path, {"INVENTREE_BACKUP_CONNECTOR_OPTIONS": json.dumps(options)})
    one_line_error(err.value, "INVENTREE_BACKUP_CONNECTOR_OPTIONS", *needles)


def test_connector_env_of_the_wrong_type_shows_no_value(tmp_path):
    import json

    with pytest.raises(ConfigError) as err:
        settings_for(tmp_path, {"INVENTREE_BACKUP_CONNECTOR_OPTIONS": json.dumps({"DUMP_ENV": {"MYSQL_PWD": ["Sx"]}})})
    assert "Sx" not in one_line_error(err.value, "DUMP_ENV")


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        ({"location": ["/srv/a", "/srv/b"]}, ("location", "/srv/a", "give one folder as text")),
        ({"location": 5}, ("location", "5", "give one folder as text")),
        ({"file_permissions_mode": "abc"}, ("file_permissions_mode", "abc", 'use octal text such as "600"')),
        ({"directory_permissions_mode": "rwx"}, ("directory_permissions_mode", "rwx", "use octal text")),
        ({"file_permissions_mode": "999"}, ("file_permissions_mode", "999", "use octal text")),
    ],
    ids=["location-list", "location-number", "file-mode-word", "dir-mode-word", "mode-not-octal"],
)
def test_local_storage_option_of_the_wrong_type_is_an_error(tmp_path, options, needles):
    import json

    with pytest.raises(ConfigError) as err:
        settings_for(tmp_path, {"INVENTREE_BACKUP_OPTIONS": json.dumps(options)})
    one_line_error(err.value, "INVENTREE_BACKUP_OPTIONS", *needles)


@pytest.mark.parametrize(("given", "mode"), [("600", 0o600), ("0o640", 0o640), ("0750", 0o750), (384, 0o600)])
def test_permission_mode_as_octal_text_or_number(tmp_path, given, mode):
    import json

    ns = settings_for(tmp_path, {"INVENTREE_BACKUP_OPTIONS": json.dumps({"file_permissions_mode": given})})
    assert dbbackup_storage(ns)["OPTIONS"]["file_permissions_mode"] == mode


# --- unknown keys: recorded with the closest known key ------------------------------------------------


@pytest.mark.parametrize(
    ("env", "data", "unknown", "closest"),
    [
        ({}, {"backup_dri": "/srv"}, "backup_dri", "backup_dir"),
        ({}, {"backup_stoage": "x"}, "backup_stoage", "backup_storage"),
        ({}, {"backup_gpg_recipent": "x"}, "backup_gpg_recipent", "backup_gpg_recipient"),
        ({}, {"backup_zzz": "x"}, "backup_zzz", None),  # not backup_dir: the common backup_ does not count
        ({"INVENTREE_BACKUP_KEEP_DIALY": "7"}, None, "INVENTREE_BACKUP_KEEP_DIALY", "INVENTREE_BACKUP_KEEP_DAILY"),
    ],
    ids=["dri", "stoage", "recipent", "nothing-close", "env"],
)
def test_unknown_key_is_recorded_with_the_closest_known_key(tmp_path, env, data, unknown, closest):
    config = load(tmp_path, env, data, keys=ALL_KEYS)
    assert [(u.name, u.closest) for u in config.unknown] == [(unknown, closest)]


def test_known_keys_and_other_names_are_not_unknown(tmp_path):
    data = {"backup_keep": 3, "backup_redis_url": "redis://x", "database": {"ENGINE": "sqlite3"}, "site_name": "x"}
    env = {"INVENTREE_BACKUP_KEEP_DAILY": "2", "INVENTREE_DEBUG": "1", "INVENTREE_BACKUP_DRI": ""}
    assert load(tmp_path, env, data, keys=ALL_KEYS).unknown == []


def test_unknown_variables_of_another_prefix_are_not_ours(tmp_path):
    assert load(tmp_path, {"INVENTREE_BACKUP_DRI": "/srv"}, prefix="MYSITE_").unknown == []
