"""Every configuration mistake is one line naming the key, the bad value (masked if secret) and the fix.

Each case runs the real ``manage.py check`` and ``invoke backup`` of a throwaway
demo site in a subprocess, configured through its environment or its YAML
file.  An error must stop both with a non-zero exit; ``invoke backup`` must say
it in exactly one line on stderr and write nothing.  A key that is not known
(a typo) is a system-check warning naming the key and the closest known key.
Every check id stands for one failure: two different failures never share one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, Result, Site, make_site

#: Words a fix starts with ("use 0o600", "set X to ...", "remove ...", "did you mean ...").
FIX = re.compile(
    r"\b(use|set|give|remove|rename|fix|choose|create|install|did you mean|put|add|replace|write|change|unset|"
    r"make|pick|name|list)\b",
    re.IGNORECASE,
)
CHECK_ID = re.compile(r"\((backup_app\.[EW]\d{3})\)")


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """A migrated SQLite database of the demo site, copied into each site (migrating each takes seconds)."""
    site = make_site(tmp_path_factory.mktemp("migrated") / "site")
    site.manage("migrate", "--noinput", "-v0")
    return site.root / "db.sqlite3"


def configured_site(tmp_path: Path, env: dict | None = None, data: dict | None = None, db: Path | None = None) -> Site:
    """A demo site (its database a copy of ``db`` when given) configured by ``env`` and the YAML ``data``."""
    site = make_site(tmp_path / "site", **(env or {}))
    if db is not None:
        shutil.copyfile(db, site.root / "db.sqlite3")
    if data is not None:
        site.config_file.write_text(yaml.safe_dump(data))
    return site


def problem_text(output: str, keys: tuple[str, ...], values: tuple[str, ...]) -> str:
    """The first line naming every one of ``keys`` and one of ``values``, with the check's HINT line below it."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if all(key in line for key in keys) and any(value in line for value in values):
            hint = lines[index + 1] if index + 1 < len(lines) and lines[index + 1].strip().startswith("HINT") else ""
            return line + " " + hint.strip()
    raise AssertionError(f"no line names {' and '.join(keys)} with the value {' or '.join(values)}:\n{output}")


def assert_names_problem(output: str, keys: tuple[str, ...], values: tuple[str, ...]) -> None:
    text = problem_text(output, keys, values)
    assert FIX.search(text), f"no fix is named: {text}"


def assert_one_line_error(result: Result, keys: tuple[str, ...], values: tuple[str, ...]) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert len(lines) == 1, result.output
    assert_names_problem(lines[0], keys, values)


# id -> (environment, YAML data, key names the message must hold, the bad value as it may be shown)
MISTAKES = {
    "exclude-a-number": (
        {"INVENTREE_BACKUP_CONNECTOR_OPTIONS": json.dumps({"EXCLUDE": 5})},
        None,
        ("INVENTREE_BACKUP_CONNECTOR_OPTIONS", "EXCLUDE"),
        ("5",),
    ),
    "exclude-a-mapping": (
        {"INVENTREE_BACKUP_CONNECTOR_OPTIONS": json.dumps({"EXCLUDE": {"audit_log": True}})},
        None,
        ("INVENTREE_BACKUP_CONNECTOR_OPTIONS", "EXCLUDE"),
        ("audit_log",),
    ),
    "db-template-unknown-field": (
        {"INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE": "InvenTree-db-{foo}-{datetime}.{extension}"},
        None,
        ("INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE",),
        ("{foo}",),
    ),
    "media-template-unknown-field": (
        {"INVENTREE_BACKUP_MEDIA_FILENAME_TEMPLATE": "InvenTree-media-{foo}-{datetime}.{extension}"},
        None,
        ("INVENTREE_BACKUP_MEDIA_FILENAME_TEMPLATE",),
        ("{foo}",),
    ),
    "db-template-stray-open-brace": (
        {"INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE": "InvenTree-db-{datetime}-{.{extension}"},
        None,
        ("INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE",),
        ("InvenTree-db-{datetime}-{.{extension}",),
    ),
    "db-template-stray-close-brace": (
        {"INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE": "InvenTree-db-}{datetime}.{extension}"},
        None,
        ("INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE",),
        ("InvenTree-db-}{datetime}.{extension}",),
    ),
    "db-template-positional-field": (
        {"INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE": "InvenTree-db-{}-{datetime}.{extension}"},
        None,
        ("INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE",),
        ("InvenTree-db-{}-{datetime}.{extension}",),
    ),
    "location-a-list": (
        {"INVENTREE_BACKUP_OPTIONS": json.dumps({"location": ["/srv/a", "/srv/b"]})},
        None,
        ("INVENTREE_BACKUP_OPTIONS", "location"),
        ("/srv/a",),
    ),
    "location-a-number": (
        {"INVENTREE_BACKUP_OPTIONS": json.dumps({"location": 5})},
        None,
        ("INVENTREE_BACKUP_OPTIONS", "location"),
        ("5",),
    ),
    "connector-that-does-not-import": (
        {"INVENTREE_BACKUP_CONNECTOR_OPTIONS": json.dumps({"CONNECTOR": "no.such.Connector"})},
        None,
        ("INVENTREE_BACKUP_CONNECTOR_OPTIONS", "CONNECTOR"),
        ("no.such.Connector",),
    ),
    "file-permissions-mode-not-a-number": (
        {"INVENTREE_BACKUP_OPTIONS": json.dumps({"file_permissions_mode": "abc"})},
        None,
        ("INVENTREE_BACKUP_OPTIONS", "file_permissions_mode"),
        ("abc",),
    ),
    "directory-permissions-mode-not-a-number": (
        {"INVENTREE_BACKUP_OPTIONS": json.dumps({"directory_permissions_mode": "rwx"})},
        None,
        ("INVENTREE_BACKUP_OPTIONS", "directory_permissions_mode"),
        ("rwx",),
    ),
    "backup-dir-that-cannot-be-created": (
        {"INVENTREE_BACKUP_DIR": "/proc/nope"},
        None,
        ("INVENTREE_BACKUP_DIR",),
        ("/proc/nope",),
    ),
    "yaml-database-a-list": (
        {},
        {"database": ["a", "b"]},
        ("database",),
        ("['a', 'b']", '["a", "b"]', "[a, b]"),
    ),
    "yaml-backup-dir-a-number": (
        {"INVENTREE_BACKUP_DIR": ""},
        {"backup_dir": 5},
        ("backup_dir",),
        ("5",),
    ),
}


@dataclass
class Run:
    site: Site
    result: Result
    #: What the command created in its working directory (the repository root), removed again by the fixture.
    strays: list[str]


@pytest.fixture(scope="module")
def mistake(tmp_path_factory, migrated_db):
    """``mistake(case, *command)``: the :class:`Run` of ``command`` on a site configured with MISTAKES[case]."""
    sites: dict[str, Site] = {}
    runs: dict[tuple, Run] = {}

    def run(case: str, *command: str) -> Run:
        if case not in sites:
            env, data, _keys, _values = MISTAKES[case]
            sites[case] = configured_site(tmp_path_factory.mktemp("mistake"), env, data, migrated_db)
        if (case, command) not in runs:
            before = set(os.listdir(ROOT))
            result = sites[case].run(*command, check=False)
            strays = sorted(set(os.listdir(ROOT)) - before)
            for name in strays:  # e.g. ./5 for backup_dir: 5
                shutil.rmtree(ROOT / name) if (ROOT / name).is_dir() else (ROOT / name).unlink()
            runs[(case, command)] = Run(sites[case], result, strays)
        return runs[(case, command)]

    return run


@pytest.mark.parametrize("case", list(MISTAKES))
def test_mistake_fails_manage_py_check_naming_key_value_and_fix(mistake, case):
    result = mistake(case, "manage.py", "check").result
    _env, _data, keys, values = MISTAKES[case]

    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert_names_problem(result.output, keys, values)


@pytest.mark.parametrize("case", list(MISTAKES))
def test_mistake_stops_invoke_backup_with_one_line_naming_key_value_and_fix(mistake, case):
    result = mistake(case, "invoke", "backup").result
    _env, _data, keys, values = MISTAKES[case]

    assert_one_line_error(result, keys, values)


@pytest.mark.parametrize("case", list(MISTAKES))
def test_mistake_stops_invoke_backup_before_it_writes_a_file(mistake, case):
    run = mistake(case, "invoke", "backup")

    written = [p for p in run.site.backups.rglob("*") if p.is_file()] if run.site.backups.exists() else []
    assert (written, run.strays) == ([], [])


# --- a bad value of a secret key is named, never shown -----------------------------------------

SECRET_VALUE = "Sx-yaml-secret-741"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"database": {"ENGINE": "sqlite3", "PASSWORD": [SECRET_VALUE]}}, "PASSWORD"),
        ({"email": {"password": {"value": SECRET_VALUE}}}, "password"),
        ({"backup_gpg_passphrase": [SECRET_VALUE]}, "backup_gpg_passphrase"),
    ],
    ids=["database-password-a-list", "email-password-a-mapping", "gpg-passphrase-a-list"],
)
def test_bad_secret_value_is_named_without_showing_it(tmp_path, migrated_db, data, key):
    site = configured_site(tmp_path, {}, data, migrated_db)

    result = site.manage("check", check=False)

    assert result.returncode != 0 and key in result.output, result.output
    assert SECRET_VALUE not in result.output


# --- unknown keys: a warning naming the key and the closest known one ----------------------------

UNKNOWN_KEYS = {
    "yaml-backup_dri": ({}, {"backup_dri": "/srv/backups"}, "backup_dri", "backup_dir"),
    "yaml-backup_stoage-seed-example": (
        {},
        {
            "backup_stoage": "storages.backends.gcloud.GoogleCloudStorage",
            "backup_options": {"bucket_name": "your_bucket_name", "project_id": "your_project_id"},
        },
        "backup_stoage",
        "backup_storage",
    ),
    "yaml-backup_keep_dialy": ({}, {"backup_keep_dialy": 7}, "backup_keep_dialy", "backup_keep_daily"),
    "env-INVENTREE_BACKUP_DRI": (
        {"INVENTREE_BACKUP_DRI": "/srv/backups"},
        None,
        "INVENTREE_BACKUP_DRI",
        "INVENTREE_BACKUP_DIR",
    ),
    "env-INVENTREE_BACKUP_KEEP_DIALY": (
        {"INVENTREE_BACKUP_KEEP_DIALY": "7"},
        None,
        "INVENTREE_BACKUP_KEEP_DIALY",
        "INVENTREE_BACKUP_KEEP_DAILY",
    ),
}


@pytest.mark.parametrize("case", list(UNKNOWN_KEYS))
def test_unknown_key_is_a_check_warning_naming_the_closest_known_key(tmp_path, migrated_db, case):
    env, data, unknown, closest = UNKNOWN_KEYS[case]
    site = configured_site(tmp_path, env, data, migrated_db)

    result = site.manage("check", check=False)

    warnings = result.output.split("WARNINGS:", 1)[1] if "WARNINGS:" in result.output else ""
    line = next((line for line in warnings.splitlines() if unknown in line), "")
    assert closest in line.replace(unknown, ""), result.output


def test_seed_example_with_backup_stoage_is_named_when_the_backup_fails(tmp_path, migrated_db):
    env, data, unknown, closest = UNKNOWN_KEYS["yaml-backup_stoage-seed-example"]
    site = configured_site(tmp_path, env, data, migrated_db)

    result = site.invoke("backup", check=False)

    assert result.returncode != 0
    assert unknown in result.stderr and closest in result.stderr.replace(unknown, ""), result.output


def test_backup_with_a_misspelt_key_names_it(tmp_path, migrated_db):
    env, data, unknown, closest = UNKNOWN_KEYS["yaml-backup_dri"]
    site = configured_site(tmp_path, env, data, migrated_db)

    result = site.invoke("backup", check=False)

    assert unknown in result.stderr and closest in result.stderr.replace(unknown, ""), result.output


def test_known_keys_give_no_warning(tmp_path, migrated_db):
    data = {"backup_keep": 4, "backup_compression": "zstd", "backup_dir": str(tmp_path / "b"), "backup_safety": True}
    site = configured_site(tmp_path, {"INVENTREE_BACKUP_KEEP_DAILY": "3"}, data, migrated_db)

    result = site.manage("check", check=False)

    assert (result.returncode, "WARNINGS" in result.output) == (0, False), result.output


# --- one id, one failure -----------------------------------------------------------------------


def reported(result: Result) -> set[str]:
    return set(CHECK_ID.findall(result.output))


def no_gpg_on_path(tmp_path: Path) -> dict:
    """A PATH on which no gpg can be found, and an existing (empty) GnuPG home."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(parents=True)
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    return {
        "PATH": str(empty),
        "INVENTREE_BACKUP_GPG_RECIPIENT": "backup@example.com",
        "INVENTREE_BACKUP_GPG_HOME": str(home),
    }


def key_missing(tmp_path: Path) -> dict:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700, parents=True)
    return {"INVENTREE_BACKUP_GPG_RECIPIENT": "backup@example.com", "INVENTREE_BACKUP_GPG_HOME": str(home)}


# id -> (first failure's environment, second failure's environment): both must be reported, under different ids
TWO_FAILURES = {
    "gpg-not-installed-vs-key-not-in-keyring": (no_gpg_on_path, key_missing),
    "storage-does-not-import-vs-not-a-storage": (
        lambda _t: {"INVENTREE_BACKUP_STORAGE": "storages.backends.nothere.NoStorage"},
        lambda _t: {"INVENTREE_BACKUP_STORAGE": "collections.OrderedDict"},
    ),
    "date-format-loses-seconds-vs-has-a-space": (
        lambda _t: {"INVENTREE_BACKUP_DATE_FORMAT": "%Y-%m-%d"},
        lambda _t: {"INVENTREE_BACKUP_DATE_FORMAT": "%Y-%m-%d %H%M%S"},
    ),
    "template-without-extension-vs-with-a-folder": (
        lambda _t: {"INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE": "InvenTree-db-{datetime}.dump"},
        lambda _t: {"INVENTREE_BACKUP_DATABASE_FILENAME_TEMPLATE": "db/InvenTree-db-{datetime}.{extension}"},
    ),
}


@pytest.mark.parametrize("case", list(TWO_FAILURES))
def test_two_different_failures_get_two_different_check_ids(tmp_path, case):
    first_env, second_env = TWO_FAILURES[case]
    first = make_site(tmp_path / "first", **first_env(tmp_path / "first-extra"))
    second = make_site(tmp_path / "second", **second_env(tmp_path / "second-extra"))

    first_ids, second_ids = reported(first.manage("check", check=False)), reported(second.manage("check", check=False))

    assert first_ids and second_ids, (first_ids, second_ids)
    assert first_ids.isdisjoint(second_ids), (first_ids, second_ids)


# --- --path to a folder that is not there ---------------------------------------------------------

PATH_COMMANDS = [
    pytest.param(("listbackups",), id="listbackups"),
    pytest.param(("listbackups", "--json"), id="listbackups-json"),
    pytest.param(("verify",), id="verify"),
    pytest.param(("restore",), id="restore"),
]


@pytest.fixture(scope="module")
def path_site(tmp_path_factory, migrated_db) -> Site:
    return configured_site(tmp_path_factory.mktemp("path"), db=migrated_db)


@pytest.mark.parametrize("command", PATH_COMMANDS)
def test_path_to_a_missing_folder_fails_with_one_line_naming_it(path_site, tmp_path, command):
    missing = tmp_path / "no-such-folder"

    result = path_site.invoke(*command, "--path", str(missing), check=False)

    last = [line for line in result.stderr.splitlines() if line.strip()][-1:] or [""]
    assert result.returncode != 0, result.output
    assert str(missing) in last[0] and "Traceback" not in result.output, result.output
    assert FIX.search(last[0]), last[0]


@pytest.mark.parametrize("command", PATH_COMMANDS)
def test_path_to_a_missing_folder_is_not_created(path_site, tmp_path, command):
    missing = tmp_path / "no-such-folder"

    path_site.invoke(*command, "--path", str(missing), check=False)

    assert not missing.exists()


@pytest.mark.parametrize("command", PATH_COMMANDS)
def test_path_to_a_regular_file_fails_with_one_line_naming_it(path_site, tmp_path, command):
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")

    result = path_site.invoke(*command, "--path", str(afile), check=False)

    last = [line for line in result.stderr.splitlines() if line.strip()][-1:] or [""]
    assert result.returncode != 0, result.output
    assert str(afile) in last[0] and "Traceback" not in result.output, result.output
    assert FIX.search(last[0]), last[0]


# --- any site's manage.py, not only the demo's: a configuration error is one line, exit status 2 ------------

STRANGER_SETTINGS = """
from backup_app.conf import apply_backup_settings

INSTALLED_APPS += ["dbbackup", "backup_app"]
apply_backup_settings(globals(), prefix="MYSITE_")
"""
BAD_KEEP = "Configuration error: MYSITE_BACKUP_KEEP: 'abc' is not a whole number; use e.g. 10"


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> tuple[Path, dict]:
    """A project made by Django's own ``startproject`` (its stock manage.py), backup_app added to its settings,
    ``MYSITE_BACKUP_KEEP=abc``; returns its folder and environment."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("stranger") / "project"
    root.mkdir()
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(root)], check=True)
    settings = root / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + STRANGER_SETTINGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVENTREE_", "DJANGO_", "MYSITE_"))}
    env.update(PYTHONPATH=str(ROOT), MYSITE_BACKUP_KEEP="abc", MYSITE_BACKUP_DIR=str(root / "backup"))
    return root, env


def run_in(root: Path, env: dict, *argv: str) -> Result:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("command", ["check", "migrate", "backup_create"])
def test_configuration_error_stops_any_sites_manage_py_with_one_line(stranger, command):
    result = run_in(*stranger, "manage.py", command)

    assert (result.returncode, result.stdout, result.stderr.splitlines()) == (2, "", [BAD_KEEP])


def test_configuration_error_shows_its_traceback_when_asked(stranger):
    result = run_in(*stranger, "manage.py", "check", "--traceback")

    assert result.returncode != 0 and "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].endswith(BAD_KEEP.removeprefix("Configuration error: "))


def test_configuration_error_fails_a_wsgi_server_start_with_the_error_logged_in_one_line(stranger):
    # What gunicorn or uwsgi do when they load the application: the exception reaches them, the line is logged.
    result = run_in(*stranger, "-c", "import mysite.wsgi")

    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == BAD_KEEP
    assert result.stderr.splitlines()[-1] == "backup_app.conf.ConfigError: " + BAD_KEEP.removeprefix(
        "Configuration error: "
    )
