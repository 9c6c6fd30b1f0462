"""--encrypt / restore of encrypted sets with real gpg and throwaway keyrings."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, drop_gpg_home, export_public, gpg_agents, make_gpg_home


def encrypting(site, home) -> dict:
    return {"INVENTREE_BACKUP_GPG_RECIPIENT": home.email, "INVENTREE_BACKUP_GPG_HOME": str(home.path)}


def test_encrypted_round_trip(any_site, gpg_home):
    env = encrypting(any_site, gpg_home)
    (any_site.media / "secret.txt").write_text("confidential")
    any_site.manage("demo_data")
    rows = any_site.snapshot_db()
    any_site.invoke("backup", "--encrypt", extra_env=env)
    any_site.sql("DELETE FROM demo_part")
    (any_site.media / "secret.txt").write_text("changed")

    any_site.invoke("restore", extra_env=env)

    assert any_site.snapshot_db() == rows
    assert (any_site.media / "secret.txt").read_text() == "confidential"


def test_encrypted_files_are_openpgp_messages_gpg_alone_can_read(sqlite_site, gpg_home):
    (sqlite_site.media / "doc.txt").write_text("plain words")
    sqlite_site.invoke("backup", "--encrypt", extra_env=encrypting(sqlite_site, gpg_home))
    media = next(f for f in sqlite_site.sets()[0]["files"] if f["kind"] == "media")
    stored = (sqlite_site.backups / media["name"]).read_bytes()

    plain = subprocess.run(
        ["gpg", "--batch", "--homedir", str(gpg_home.path), "--decrypt"], input=stored, capture_output=True, check=True
    ).stdout

    assert media["name"].endswith(".tar.gz.gpg") and media["encrypted"]
    assert b"plain words" not in stored
    assert subprocess.run(["tar", "-tzf", "-"], input=plain, capture_output=True, check=True).stdout == b"doc.txt\n"


def test_restore_without_the_secret_key_changes_nothing(sqlite_site, gpg_home, tmp_path):
    (sqlite_site.media / "doc.txt").write_text("backed up")
    public_only = tmp_path / "public-only"
    export_public(gpg_home, public_only)
    env = {"INVENTREE_BACKUP_GPG_RECIPIENT": gpg_home.email, "INVENTREE_BACKUP_GPG_HOME": str(public_only)}
    sqlite_site.invoke("backup", "--encrypt", extra_env=env)
    (sqlite_site.media / "doc.txt").write_text("current")
    rows = sqlite_site.snapshot_db()

    result = sqlite_site.invoke("restore", check=False, extra_env=env)

    assert result.returncode != 0
    assert "gpg could not decrypt" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("CommandError: ")
    assert "Traceback" not in result.stderr
    assert (sqlite_site.media / "doc.txt").read_text() == "current"
    assert sqlite_site.snapshot_db() == rows
    assert gpg_agents(public_only) == []  # the refused decryption ran in a private home of its own


def test_restore_with_another_key_changes_nothing(sqlite_site, gpg_home, other_gpg_home):
    (sqlite_site.media / "doc.txt").write_text("backed up")
    sqlite_site.invoke("backup", "--encrypt", extra_env=encrypting(sqlite_site, gpg_home))
    (sqlite_site.media / "doc.txt").write_text("current")

    result = sqlite_site.invoke(
        "restore", check=False, extra_env={"INVENTREE_BACKUP_GPG_HOME": str(other_gpg_home.path)}
    )

    assert result.returncode != 0
    assert "gpg could not decrypt" in result.stderr
    assert (sqlite_site.media / "doc.txt").read_text() == "current"


def test_damaged_ciphertext_without_manifest_is_refused_by_gpg(sqlite_site, gpg_home):
    (sqlite_site.media / "doc.txt").write_text("backed up " * 1000)
    env = encrypting(sqlite_site, gpg_home)
    sqlite_site.invoke("backup", "--encrypt", extra_env=env)
    files = sqlite_site.sets()[0]["files"]
    for f in files:  # no manifest: only gpg's own integrity check stands guard
        if f["kind"] == "manifest":
            (sqlite_site.backups / f["name"]).unlink()
    media = next(f["name"] for f in files if f["kind"] == "media")
    data = bytearray((sqlite_site.backups / media).read_bytes())
    data[len(data) // 2] ^= 0x01
    (sqlite_site.backups / media).write_bytes(bytes(data))
    (sqlite_site.media / "doc.txt").write_text("current")

    result = sqlite_site.invoke("restore", "--skip-db", check=False, extra_env=env)

    assert result.returncode != 0
    assert f"gpg could not decrypt {media}" in result.stderr
    assert (sqlite_site.media / "doc.txt").read_text() == "current"


@pytest.fixture
def protected_home():
    home = make_gpg_home("protected@example.com", passphrase="correct horse battery")
    yield home
    drop_gpg_home(home)


@pytest.mark.parametrize("via", ["file", "env"])
def test_passphrase_protected_key_reads_passphrase_from_config(sqlite_site, protected_home, tmp_path, via):
    env = encrypting(sqlite_site, protected_home)
    (sqlite_site.media / "doc.txt").write_text("backed up")
    sqlite_site.invoke("backup", "--encrypt", extra_env=env)
    (sqlite_site.media / "doc.txt").write_text("current")
    if via == "file":
        secret = tmp_path / "passphrase"
        secret.write_text(protected_home.passphrase + "\n")
        env["INVENTREE_BACKUP_GPG_PASSPHRASE_FILE"] = str(secret)
    else:
        env["INVENTREE_BACKUP_GPG_PASSPHRASE"] = protected_home.passphrase

    sqlite_site.invoke("restore", extra_env=env)

    assert (sqlite_site.media / "doc.txt").read_text() == "backed up"


def test_passphrase_protected_key_without_passphrase_is_refused(sqlite_site, protected_home):
    env = encrypting(sqlite_site, protected_home)
    (sqlite_site.media / "doc.txt").write_text("backed up")
    sqlite_site.invoke("backup", "--encrypt", extra_env=env)
    (sqlite_site.media / "doc.txt").write_text("current")

    result = sqlite_site.invoke("restore", check=False, extra_env=env)

    assert result.returncode != 0
    assert "gpg could not decrypt" in result.stderr
    assert (sqlite_site.media / "doc.txt").read_text() == "current"


def test_encrypt_without_recipient_is_refused(sqlite_site):
    result = sqlite_site.invoke("backup", "--encrypt", check=False)

    assert result.returncode != 0
    assert "INVENTREE_BACKUP_GPG_RECIPIENT" in result.stderr
    assert not sqlite_site.backups.exists() or not any(sqlite_site.backups.iterdir())


def test_invoke_restore_on_a_terminal_asks_for_the_passphrase_then_confirms(sqlite_site, protected_home):
    from terminal import run_on_pty

    env = encrypting(sqlite_site, protected_home)
    (sqlite_site.media / "doc.txt").write_text("backed up")
    sqlite_site.invoke("backup", "--encrypt", extra_env=env)
    (sqlite_site.media / "doc.txt").write_text("current")

    run = run_on_pty(
        [sys.executable, "-m", "invoke", "restore"],
        env={**sqlite_site.env, **env},
        cwd=str(ROOT),
        columns=200,
        answers=[("GPG passphrase", protected_home.passphrase + "\r"), ("Continue?", "y\r")],
        timeout=90,
    )

    assert run.returncode == 0, run.final
    assert protected_home.passphrase not in run.final  # typed without echo
    assert "This replaces database 'default'" in run.final
    assert (sqlite_site.media / "doc.txt").read_text() == "backed up"


def test_restore_with_a_wrong_passphrase_says_so_and_changes_nothing(sqlite_site, protected_home):
    env = encrypting(sqlite_site, protected_home)
    (sqlite_site.media / "doc.txt").write_text("backed up")
    sqlite_site.invoke("backup", "--encrypt", extra_env=env)
    (sqlite_site.media / "doc.txt").write_text("current")

    result = sqlite_site.invoke(
        "restore", check=False, extra_env={**env, "INVENTREE_BACKUP_GPG_PASSPHRASE": "Sx-not-the-passphrase"}
    )

    assert result.returncode != 0
    assert "wrong passphrase for its secret key; check backup_gpg_passphrase_file" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert (sqlite_site.media / "doc.txt").read_text() == "current"


def test_a_passphrase_with_a_line_break_is_refused_not_cut_at_it(sqlite_site, protected_home):
    env = encrypting(sqlite_site, protected_home)
    sqlite_site.invoke("backup", "--encrypt", "--skip-db", extra_env=env)
    # gpg reads one line: the key's own passphrase, then more, must not pass for the passphrase.
    passphrase = protected_home.passphrase + "\nmore"

    result = sqlite_site.invoke(
        "restore", "--skip-db", check=False, extra_env={**env, "INVENTREE_BACKUP_GPG_PASSPHRASE": passphrase}
    )

    assert result.returncode != 0
    assert "the GPG passphrase holds a line break or NUL" in " ".join(result.stderr.split())


def test_restore_with_another_key_names_the_home_without_it(sqlite_site, gpg_home, other_gpg_home):
    sqlite_site.invoke("backup", "--encrypt", "--skip-db", extra_env=encrypting(sqlite_site, gpg_home))

    result = sqlite_site.invoke(
        "restore", "--skip-db", check=False, extra_env={"INVENTREE_BACKUP_GPG_HOME": str(other_gpg_home.path)}
    )

    assert f"its secret key is not in {other_gpg_home.path}" in " ".join(result.stderr.split())


def test_a_damaged_ciphertext_is_named_as_damaged(sqlite_site, gpg_home):
    (sqlite_site.media / "doc.txt").write_text("backed up " * 1000)
    env = encrypting(sqlite_site, gpg_home)
    sqlite_site.invoke("backup", "--encrypt", "--skip-db", extra_env=env)
    files = sqlite_site.sets()[0]["files"]
    for f in files:
        if f["kind"] == "manifest":
            (sqlite_site.backups / f["name"]).unlink()
    media = next(f["name"] for f in files if f["kind"] == "media")
    data = bytearray((sqlite_site.backups / media).read_bytes())
    data[len(data) // 2] ^= 0x01
    (sqlite_site.backups / media).write_bytes(bytes(data))

    result = sqlite_site.invoke("restore", "--skip-db", check=False, extra_env=env)

    line = next(ln for ln in result.stderr.splitlines() if "gpg could not decrypt" in ln)
    assert "the file is damaged or not an OpenPGP message" in line


def test_encrypted_files_are_not_compressed_twice(sqlite_site, gpg_home):
    (sqlite_site.media / "doc.txt").write_text("plain words " * 1000)
    sqlite_site.invoke("backup", "--encrypt", "--skip-db", extra_env=encrypting(sqlite_site, gpg_home))
    media = next(f for f in sqlite_site.sets()[0]["files"] if f["kind"] == "media")

    packets = subprocess.run(
        ["gpg", "--batch", "--homedir", str(gpg_home.path), "--list-packets"],
        input=(sqlite_site.backups / media["name"]).read_bytes(),
        capture_output=True,
        check=True,
    ).stdout.decode()

    assert ":literal data packet:" in packets
    assert ":compressed packet:" not in packets  # already gzip: gpg's zlib pass only costs time


def test_a_refused_decryption_is_one_line_on_a_site_that_logs_everything_to_the_console(
    sqlite_site, gpg_home, other_gpg_home, tmp_path
):
    # InvenTree (like many sites) gives the root logger a console handler: python-gnupg's own warnings
    # ("gpg returned a non-zero error code: 2", a broken pipe's traceback) must not reach it next to our error.
    (tmp_path / "root_logging_settings.py").write_text(
        "from config.settings import *  # noqa: F403\n"
        'LOGGING = {"version": 1, "disable_existing_loggers": False,\n'
        '           "handlers": {"console": {"class": "logging.StreamHandler"}},\n'
        '           "root": {"handlers": ["console"], "level": "WARNING"}}\n'
    )
    (sqlite_site.media / "doc.txt").write_text("backed up")
    sqlite_site.invoke("backup", "--encrypt", extra_env=encrypting(sqlite_site, gpg_home))
    env = {
        "INVENTREE_BACKUP_GPG_HOME": str(other_gpg_home.path),
        "DJANGO_SETTINGS_MODULE": "root_logging_settings",
        "PYTHONPATH": f"{tmp_path}:{ROOT}",
    }

    result = sqlite_site.manage("backup_restore", "--noinput", check=False, extra_env=env)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("CommandError: gpg could not decrypt")
    assert "gpg returned" not in result.stderr and "Traceback" not in result.stderr, result.stderr
