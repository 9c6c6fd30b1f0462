"""``manage.py check`` reports every backup misconfiguration with a stable id.

Each test runs the real ``manage.py check`` (or ``invoke backup``) of a
throwaway demo site in a subprocess.  Tests run as root, so an unwritable
backup folder is one below a regular file: it can never be created.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import Result, Site, make_site

CHECK_IDS = [
    "backup_app.E001",
    "backup_app.E002",
    "backup_app.E003",
    "backup_app.E004",
    "backup_app.E005",
    "backup_app.E006",
    "backup_app.E007",
    "backup_app.E008",
    "backup_app.E009",
    "backup_app.E010",
    "backup_app.E011",
    "backup_app.E012",
    "backup_app.E013",
    "backup_app.E014",
    "backup_app.E015",
    "backup_app.E016",
    "backup_app.E017",
    "backup_app.E018",
    "backup_app.E019",
    "backup_app.E020",
    "backup_app.E021",
    "backup_app.W001",
    "backup_app.W004",
    "backup_app.W005",
    "backup_app.W006",
    "backup_app.W007",
    "backup_app.W008",
    "backup_app.W009",
    "backup_app.W010",
]

TWO_DATABASE_SETTINGS = """\
from config.settings import *  # noqa: F403

from backup_app.conf import apply_backup_settings

DATABASES = {{**DATABASES, "second": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {second!r}}}}}
apply_backup_settings(globals(), config=CONFIG, default_dir=DATA_DIR / "backup")
"""


def check(site: Site) -> Result:
    return site.manage("check", check=False)


def reported(result: Result) -> set[str]:
    return set(re.findall(r"\((backup_app\.[EW]\d{3})\)", result.output))


def assert_error(result: Result, check_id: str, *needles: str) -> None:
    assert result.returncode != 0, result.output
    assert check_id in reported(result), result.output
    line = next(line for line in result.stderr.splitlines() if f"({check_id})" in line)
    for needle in needles:
        assert needle in line, line


def two_database_site(tmp_path: Path, **env: str) -> Site:
    """A demo site whose DATABASES has a second SQLite alias, ``second``."""
    (tmp_path / "two_db_settings.py").write_text(TWO_DATABASE_SETTINGS.format(second=str(tmp_path / "second.sqlite3")))
    pythonpath = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    return make_site(tmp_path / "site", DJANGO_SETTINGS_MODULE="two_db_settings", PYTHONPATH=pythonpath, **env)


def gnupg_home(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o700)
    return path


# --- a configured site is quiet --------------------------------------------------


@pytest.fixture(scope="module")
def configured(tmp_path_factory) -> Result:
    return check(make_site(tmp_path_factory.mktemp("configured") / "site"))


def test_configured_site_passes_check(configured):
    assert configured.returncode == 0, configured.output


@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_configured_site_reports_nothing(configured, check_id):
    assert check_id not in reported(configured)


# --- E001: backup folder not writable ------------------------------------------


def test_e001_backup_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("a regular file")
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_DIR=str(tmp_path / "afile" / "backup"))
    assert_error(check(site), "backup_app.E001", str(tmp_path / "afile" / "backup"))


def test_e001_quiet_for_a_missing_folder_under_a_writable_one(tmp_path):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_DIR=str(tmp_path / "not" / "yet" / "backup"))
    assert "backup_app.E001" not in reported(check(site))


# --- E002: backup folder inside MEDIA_ROOT -----------------------------------------


def test_e002_backup_folder_inside_media_root(tmp_path):
    site = make_site(tmp_path / "site")
    site.env["INVENTREE_BACKUP_DIR"] = str(site.media / "backup")
    assert_error(check(site), "backup_app.E002", "MEDIA_ROOT")


def test_e002_quiet_for_a_sibling_whose_name_starts_like_media(tmp_path):
    site = make_site(tmp_path / "site")
    site.env["INVENTREE_BACKUP_DIR"] = str(site.media) + "-backup"
    assert "backup_app.E002" not in reported(check(site))


# --- E003: filename template without {datetime} -----------------------------------


@pytest.mark.parametrize(
    "variable", ["INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE", "INVENTREE_BACKUP_MEDIA_FILENAME_TEMPLATE"]
)
def test_e003_template_without_datetime(tmp_path, variable):
    site = make_site(tmp_path / "site", **{variable: "site.{extension}"})
    assert_error(check(site), "backup_app.E003", variable)


# --- E004: several databases, database template without {databasename} -----------------


def test_e004_two_databases_and_template_without_databasename(tmp_path):
    assert_error(check(two_database_site(tmp_path)), "backup_app.E004", "INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE")


def test_e004_quiet_with_databasename_in_template(tmp_path):
    site = two_database_site(
        tmp_path, INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE="site-db-{databasename}-{datetime}.{extension}"
    )
    result = check(site)
    assert (result.returncode, reported(result)) == (0, set()), result.output


def test_e004_quiet_when_one_database_is_backed_up(tmp_path):
    result = check(two_database_site(tmp_path, INVENTREE_BACKUP_DATABASES="default"))
    assert (result.returncode, reported(result)) == (0, set()), result.output


# --- E005: GPG recipient without a public key ------------------------------------


def test_e005_gpg_recipient_without_key(tmp_path):
    home = gnupg_home(tmp_path / "gnupg")
    site = make_site(
        tmp_path / "site",
        INVENTREE_BACKUP_GPG_RECIPIENT="backup@example.com",
        INVENTREE_BACKUP_GPG_HOME=str(home),
    )
    assert_error(check(site), "backup_app.E005", "INVENTREE_BACKUP_GPG_RECIPIENT", "'backup@example.com'")


def test_e005_quiet_when_the_key_is_in_the_keyring(tmp_path):
    home = gnupg_home(tmp_path / "gnupg")
    gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
    try:
        subprocess.run(
            [*gpg, "--passphrase", "", "--quick-gen-key", "Backup <backup@example.com>", "ed25519", "default", "never"],
            check=True,
            capture_output=True,
        )
        site = make_site(
            tmp_path / "site",
            INVENTREE_BACKUP_GPG_RECIPIENT="backup@example.com",
            INVENTREE_BACKUP_GPG_HOME=str(home),
        )
        result = check(site)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True)
    assert (result.returncode, reported(result)) == (0, set()), result.output


# --- E006: storage class that does not import ----------------------------------


def test_e006_storage_class_that_does_not_import(tmp_path):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_STORAGE="storages.backends.nothere.NoStorage")
    assert_error(check(site), "backup_app.E006", "INVENTREE_BACKUP_STORAGE", "storages.backends.nothere.NoStorage")


def test_e006_gcs_storage_without_its_packages(tmp_path):
    # A package named "google" first on the path that cannot be imported: as if google-cloud-storage were missing.
    blocker = tmp_path / "blocker" / "google"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('google-cloud-storage is not installed')\n")
    site = make_site(
        tmp_path / "site",
        INVENTREE_BACKUP_STORAGE="storages.backends.gcloud.GoogleCloudStorage",
        PYTHONPATH=str(tmp_path / "blocker"),
    )
    assert_error(check(site), "backup_app.E006", "INVENTREE_BACKUP_STORAGE", "backup_app[gcs]")


def test_e006_quiet_for_a_remote_storage_that_imports(tmp_path):
    site = make_site(
        tmp_path / "site",
        INVENTREE_BACKUP_STORAGE="storages.backends.s3.S3Storage",
        INVENTREE_BACKUP_OPTIONS='{"bucket_name": "site-backups"}',
    )
    result = check(site)
    # W008 (the site's local INVENTREE_BACKUP_DIR is not used by a remote storage) is right here; no error is.
    assert (result.returncode, reported(result)) == (0, {"backup_app.W008"}), result.output


# --- E007: date format ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["%s", "%G-%V"])
def test_e007_date_format_whose_stamps_do_not_read_back(tmp_path, fmt):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_DATE_FORMAT=fmt)
    assert_error(check(site), "backup_app.E007", "INVENTREE_BACKUP_DATE_FORMAT", repr(fmt))


@pytest.mark.parametrize("fmt", ["%Y-%m-%d", "%Y%m%d%H%M"])
def test_w007_date_format_not_to_the_second_is_a_warning(tmp_path, fmt):
    result = check(make_site(tmp_path / "site", INVENTREE_BACKUP_DATE_FORMAT=fmt))
    assert result.returncode == 0, result.output
    assert reported(result) == {"backup_app.W007"}, result.output


# --- E012: date format giving other characters than letters, digits, - and _ --------------


@pytest.mark.parametrize("fmt", ["%Y/%m/%d %H:%M:%S", "%c"])
def test_e012_date_format_with_characters_a_storage_may_not_keep(tmp_path, fmt):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_DATE_FORMAT=fmt)
    assert_error(check(site), "backup_app.E012", "INVENTREE_BACKUP_DATE_FORMAT", repr(fmt))


def test_e007_quiet_for_another_complete_format(tmp_path):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_DATE_FORMAT="%Y%m%dT%H%M%S")
    assert "backup_app.E007" not in reported(check(site))


# --- E008: template not a plain file name ending in {extension} ----------------------


def test_e008_template_with_a_folder(tmp_path):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_MEDIA_FILENAME_TEMPLATE="media/{datetime}.{extension}")
    assert_error(check(site), "backup_app.E008", "INVENTREE_BACKUP_MEDIA_FILENAME_TEMPLATE")


# --- E013-E016: filename templates django-dbbackup cannot fill ----------------------------------


@pytest.mark.parametrize(
    ("template", "check_id"),
    [
        ("InvenTree-db-{datetime}.dump", "backup_app.E013"),
        ("InvenTree-db-{foo}-{datetime}.{extension}", "backup_app.E014"),
        ("InvenTree-db-{datetime.year}-{datetime}.{extension}", "backup_app.E014"),
        ("InvenTree-db-{datetime}-{.{extension}", "backup_app.E015"),
        ("InvenTree-db-}{datetime}.{extension}", "backup_app.E015"),
        ("InvenTree-db-{}-{datetime}.{extension}", "backup_app.E016"),
        ("InvenTree-db-{0}-{datetime}.{extension}", "backup_app.E016"),
    ],
    ids=[
        "no-extension",
        "unknown-field",
        "attribute-of-a-field",
        "stray-open-brace",
        "stray-close-brace",
        "empty-field",
        "numbered-field",
    ],
)
def test_template_problem_has_its_own_id(tmp_path, template, check_id):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE=template)
    assert_error(check(site), check_id, "INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE", repr(template))


# --- E017 / E018: the connector class --------------------------------------------------------------


def test_e017_connector_that_does_not_import(tmp_path):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_CONNECTOR_OPTIONS='{"CONNECTOR": "no.such.Connector"}')
    assert_error(check(site), "backup_app.E017", "INVENTREE_BACKUP_CONNECTOR_OPTIONS", "'no.such.Connector'")


def test_e018_connector_that_is_not_a_connector(tmp_path):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_CONNECTOR_OPTIONS='{"CONNECTOR": "collections.OrderedDict"}')
    assert_error(check(site), "backup_app.E018", "INVENTREE_BACKUP_CONNECTOR_OPTIONS", "'collections.OrderedDict'")


@pytest.mark.parametrize("connector", ["dbbackup.db.sqlite.SqliteConnector", "dbbackup.db.django.DjangoConnector"])
def test_e021_connector_whose_dumps_backup_app_does_not_make(tmp_path, connector):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_CONNECTOR_OPTIONS=f'{{"CONNECTOR": "{connector}"}}')
    assert_error(check(site), "backup_app.E021", connector, "SqliteBackupConnector")


def test_e021_stops_the_backup_before_anything_is_written(tmp_path):
    site = make_site(tmp_path / "site")
    site.manage("migrate", "--noinput", "-v0")
    site.env["INVENTREE_BACKUP_CONNECTOR_OPTIONS"] = '{"CONNECTOR": "dbbackup.db.sqlite.SqliteConnector"}'
    result = site.invoke("backup", check=False)
    assert result.returncode != 0 and "backup_app.E021" in result.stderr
    assert not site.backups.exists() or not any(site.backups.iterdir())


# --- E020: the backup folder is a file -------------------------------------------------------------


def test_e020_backup_folder_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("a regular file")
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_DIR=str(tmp_path / "afile"))
    assert_error(check(site), "backup_app.E020", "INVENTREE_BACKUP_DIR", str(tmp_path / "afile"))


# --- W006: stock failure mail not replaced -----------------------------------------------------------

APPS_IN_THE_WRONG_ORDER = """\
from config.settings import *  # noqa: F403

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "dbbackup"]
INSTALLED_APPS.insert(INSTALLED_APPS.index("backup_app") + 1, "dbbackup")
"""


def test_w006_backup_app_listed_before_dbbackup_with_failure_mail_on(tmp_path):
    (tmp_path / "wrong_order_settings.py").write_text(APPS_IN_THE_WRONG_ORDER)
    pythonpath = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    env = {"DJANGO_SETTINGS_MODULE": "wrong_order_settings", "PYTHONPATH": pythonpath}
    wrong = make_site(tmp_path / "wrong", INVENTREE_BACKUP_SEND_EMAIL="true", **env)
    right = make_site(tmp_path / "right", INVENTREE_BACKUP_SEND_EMAIL="true")

    assert ("backup_app.W006" in reported(check(wrong)), "backup_app.W006" in reported(check(right))) == (True, False)


# --- E009: GnuPG home that is not a folder ----------------------------------------


def test_e009_gpg_home_that_is_not_a_folder(tmp_path):
    site = make_site(
        tmp_path / "site",
        INVENTREE_BACKUP_GPG_RECIPIENT="backup@example.com",
        INVENTREE_BACKUP_GPG_HOME=str(tmp_path / "no-gnupg"),
    )
    assert_error(check(site), "backup_app.E009", "INVENTREE_BACKUP_GPG_HOME")


# --- W001: backup_dir unset ------------------------------------------------------


def test_w001_backup_dir_unset_warns_but_passes(tmp_path):
    site = make_site(tmp_path / "site")
    del site.env["INVENTREE_BACKUP_DIR"]
    result = check(site)
    assert (result.returncode, "backup_app.W001" in reported(result)) == (0, True), result.output


# --- invoke backup refuses while an error-level check fails ---------------------------


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> tuple[Site, Result]:
    site = make_site(
        tmp_path_factory.mktemp("refused") / "site", INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE="db.{extension}"
    )
    return site, site.invoke("backup", check=False)


def test_invoke_backup_refuses_with_one_line_naming_the_check(refused):
    _, result = refused
    errors = [line for line in result.stderr.splitlines() if line.startswith("CommandError")]
    assert result.returncode != 0
    assert len(errors) == 1 and "backup_app.E003" in errors[0], result.output
    assert "Traceback" not in result.stderr


def test_invoke_backup_refused_writes_no_file(refused):
    site, _ = refused
    assert [path for path in site.backups.rglob("*") if path.is_file()] == []


# --- a value that does not parse stops manage.py with one line ----------------------


def test_malformed_backup_options_is_one_line_without_traceback(tmp_path):
    site = make_site(tmp_path / "site", INVENTREE_BACKUP_OPTIONS='{"bucket_name": ')
    result = check(site)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert len(lines) == 1 and "INVENTREE_BACKUP_OPTIONS" in lines[0], result.output
    assert "Traceback" not in result.output


def test_each_check_id_belongs_to_one_check_function():
    """Two checks never share an id (three helpers once each took W007): an id names one failure."""
    import ast

    tree = ast.parse((Path(__file__).parents[1] / "backup_app" / "checks.py").read_text())
    owners: dict[str, set[str]] = {}
    for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(func):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"backup_app\.[EW]\d{3}", node.value)
            ):
                owners.setdefault(node.value, set()).add(func.name)
    shared = {check_id: names for check_id, names in owners.items() if len(names) > 1}
    assert owners and not shared, shared


# --- E023: a BACKUP_APP field set in the settings themselves ------------------------------------------

DIRECT_SETTING = """\
from config.settings import *  # noqa: F403

BACKUP_APP = {{**BACKUP_APP, {field!r}: {value}}}
"""


def direct_site(tmp_path: Path, field: str, value: str) -> Site:
    """A demo site whose settings set ``BACKUP_APP[field]`` to the Python expression ``value`` after the loader."""
    (tmp_path / "direct_settings.py").write_text(DIRECT_SETTING.format(field=field, value=value))
    pythonpath = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    return make_site(tmp_path / "site", DJANGO_SETTINGS_MODULE="direct_settings", PYTHONPATH=pythonpath)


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("MEDIA_REPACK_PERCENT", "150", "150 is too large; use a number of at most 100"),  # int range
        ("KEEP", "'5'", "text '5' is not a whole number; write a number such as 10"),  # an int written as text
        ("SAFETY", "'false'", "text 'false' is not a boolean; write True or False"),  # bool
        ("COMPRESSION", "'lz4'", "'lz4' is not one of gzip, zstd, none; use one of them"),  # choice
        ("SAFETY_DIR", "5", 'number 5 is not a path; write the path as text, e.g. "/srv/backups"'),  # path
        ("GPG_PASSPHRASE", "['x']", "a list (secret, not shown) is not text"),  # a secret is not shown
    ],
)
def test_a_backup_app_field_set_in_the_settings_is_refused_on_one_line_as_its_key_would_be(
    tmp_path, field, value, said
):
    """manage.py check says E023 (a field read as Django starts, SAFETY_DIR, already stops it there)."""
    result = check(direct_site(tmp_path, field, value))
    assert result.returncode != 0, result.output
    [line] = [line for line in result.stderr.splitlines() if f'BACKUP_APP["{field}"]: ' in line]
    assert said in line, line
    assert "(backup_app.E023)" in line or line.startswith("Configuration error: "), line


def test_e023_is_quiet_for_direct_values_of_the_right_type(tmp_path):
    site = direct_site(tmp_path, "SAFETY_DIR", f"__import__('pathlib').Path({str(tmp_path / 'safety')!r})")
    result = check(site)
    assert "backup_app.E023" not in reported(result), result.output


def test_a_backup_with_a_bad_direct_backup_app_field_is_refused_on_one_line(tmp_path):
    result = direct_site(tmp_path, "MEDIA_REPACK_PERCENT", "-1").manage("backup_create", "--skip-media", check=False)
    assert result.returncode == 1, result.output
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            'CommandError: backup refused: backup_app.E023: BACKUP_APP["MEDIA_REPACK_PERCENT"]: -1 is too small; '
            "use a number of at least 0"
        )
    ), result.output


@pytest.mark.parametrize(
    ("field", "value", "read"),
    [
        ("NOTIFY_URLS", ("json://localhost",), ["json://localhost"]),  # list() was taken of it
        ("SAFETY", 0, False),  # read by its truth
        ("NOTIFY_ON_SUCCESS", 1, True),
        ("STORAGE_TIMEOUT", 30.0, 30),  # a timeout in seconds
        ("SITE_ID", 7, "7"),  # as YAML's backup_site_id: 7 reads
    ],
)
def test_a_direct_backup_app_value_that_worked_before_is_read_in_the_keys_type(field, value, read):
    from backup_app.conf import app_value

    got = app_value(field, value)
    assert got == read and type(got) is type(read)


def test_e023_is_quiet_for_a_tuple_of_notify_urls(tmp_path):
    result = check(direct_site(tmp_path, "NOTIFY_URLS", "('json://localhost',)"))
    assert "backup_app.E023" not in reported(result), result.output
