"""In a real browser: an admin switches automatic backups on, presses "Back up now", sees the run.

Playwright (the ``playwright`` package from PyPI) drives Debian's chromium
(``apt-get install chromium``), headless, against ``manage.py runserver`` on a
free loopback port; the queued backup is run by a real ``manage.py qcluster``.

Screenshots go to ``$BACKUP_TEST_SCREENSHOTS`` when set (``docs/img`` to
refresh the ones in the documentation), else to the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, free_port, service_missing
from test_schedule import runs, start_cluster, stop_cluster, wait_for

PASSWORD = "correct-horse-battery"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        service_missing("Debian's chromium (apt-get install chromium)", FileNotFoundError(path))
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        service_missing("the playwright package (pip install -e '.[test]')", err)
    return path


@pytest.fixture
def server(sqlite_site, tmp_path):
    """``manage.py runserver`` of the site (static files served, as with DEBUG) on a free port."""
    port = free_port()
    log = open(tmp_path / "runserver.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", "--insecure"],
        cwd=ROOT,
        env=sqlite_site.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )

    def accepting() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(accepting, 30, "runserver", [tmp_path / "runserver.log"])
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def admin_runs(site) -> list[dict]:
    """Finished runs that the admin asked for."""
    return [r for r in runs(site) if r["requested_by"] == "admin" and r["outcome"] != "running"]


def test_admin_switches_on_automatic_backups_and_backs_up_now(sqlite_site, server, chromium, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("BACKUP_TEST_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    sqlite_site.manage(
        "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com",
        extra_env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD},
    )  # fmt: skip
    (sqlite_site.media / "manual.pdf").write_bytes(b"%PDF-1.4 demo\n" * 100)
    sqlite_site.manage("backup_create", "--quiet")  # an earlier backup, from the command line

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 800})
            page.set_default_timeout(15_000)
            page.goto(f"{server}/admin/login/?next=/admin/backup_app/backupsettings/")
            page.fill("#id_username", "admin")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/backup_app/backupsettings/1/change/")
            status = page.locator("#backup-status")
            expect(status).to_contain_text("Automatic backups are off.")

            page.check("#id_enabled")
            page.fill("#id_preferred_hour", "2")
            page.click("input[name=_save]")
            expect(page.locator(".messagelist")).to_contain_text("Settings saved")
            expect(page.locator("#id_enabled")).to_be_checked()
            expect(status).to_contain_text("Next automatic backup: in ")
            page.screenshot(path=str(shots / "admin-backup-settings.png"), full_page=True)

            page.click("#backup-now")
            page.wait_for_url("**/admin/backup_app/backuprun/")
            expect(page.locator(".messagelist")).to_contain_text("Backup queued")
            assert [r["requested_by"] for r in runs(sqlite_site)] == [""]  # queued, not run by the request

            log = tmp_path / "qcluster.log"
            cluster = start_cluster(sqlite_site, log)
            try:
                [run] = wait_for(lambda: admin_runs(sqlite_site), 45, "the queued backup", [log])
            finally:
                stop_cluster(cluster)
            assert run["outcome"] == "success", run

            page.reload()
            first = page.locator("#result_list tbody tr").first
            expect(first).to_contain_text("manual")
            expect(first).to_contain_text("✔ success")
            expect(first).to_contain_text(run["set_name"])
            expect(first).to_contain_text("admin")
            expect(page.locator("#result_list tbody tr")).to_have_count(2)
            expect(status).to_contain_text("Last successful backup: ")
            page.screenshot(path=str(shots / "admin-backups.png"), full_page=True)
        finally:
            browser.close()
    assert len(sqlite_site.sets()) == 2


def test_admin_lists_the_sets_verifies_one_and_deletes_one_after_confirming(sqlite_site, server, chromium, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("BACKUP_TEST_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    sqlite_site.manage(
        "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com",
        extra_env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD},
    )  # fmt: skip
    (sqlite_site.media / "manual.pdf").write_bytes(b"%PDF-1.4 demo\n" * 1000)
    sqlite_site.manage("backup_create", "--quiet")
    sqlite_site.manage("backup_create", "--quiet", "--skip-media")
    newest, oldest = sqlite_site.sets()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 700})
            page.set_default_timeout(15_000)
            page.goto(f"{server}/admin/login/?next=/admin/backup_app/backuprun/sets/")
            page.fill("#id_username", "admin")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/backup_app/backuprun/sets/")
            rows = page.locator("#backup-sets tbody tr")
            expect(rows).to_have_count(2)
            expect(rows.nth(0)).to_contain_text(newest["name"])
            expect(rows.nth(0)).to_contain_text("database default")
            expect(rows.nth(1)).to_contain_text("media")
            expect(rows.nth(1)).to_contain_text("✔ complete")
            expect(page.locator("#worker-missing")).to_contain_text("No worker seems to be running")

            rows.nth(1).locator(".verify-set").click()
            expect(page.locator(".messagelist")).to_contain_text(f"Verification of set {oldest['name']} queued")
            log = tmp_path / "qcluster.log"
            cluster = start_cluster(sqlite_site, log)
            try:
                wait_for(
                    lambda: [r for r in runs(sqlite_site) if r["kind"] == "verify" and r["outcome"] != "running"],
                    45,
                    "the queued verification",
                    [log],
                )
            finally:
                stop_cluster(cluster)
            page.reload()
            expect(rows.nth(1).locator("td").nth(7)).to_contain_text("✔")
            expect(rows.nth(0).locator("td").nth(7)).to_contain_text("never")
            page.screenshot(path=str(shots / "admin-sets.png"), full_page=True)

            rows.nth(1).locator(".delete-set").click()
            doomed = page.locator("#doomed-files li")
            on_disk = [p.name for p in sqlite_site.backups.iterdir() if oldest["name"] in p.name]  # sidecars too
            expect(doomed).to_have_count(len(on_disk))
            assert sqlite_site.sets() == [newest, oldest]  # asking deleted nothing
            page.click("#confirm-delete")
            expect(page.locator(".messagelist")).to_contain_text(f"Deleted set {oldest['name']}: {len(on_disk)} files")
            expect(rows).to_have_count(1)
        finally:
            browser.close()
    assert [s["name"] for s in sqlite_site.sets()] == [newest["name"]]
    [deleted] = [r for r in runs(sqlite_site) if r["kind"] == "delete"]
    assert deleted["outcome"] == "success" and deleted["set_name"] == oldest["name"]
