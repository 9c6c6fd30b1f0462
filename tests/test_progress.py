"""What an operator sees while a command runs: live bars on a terminal, plain lines otherwise, one summary."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from conftest import ROOT
from terminal import run_on_pty, screen_html
from test_admin_browser import CHROMIUM_ARGS, chromium  # noqa: F401  (fixture)


def write_media(site, files: int = 300, size: int = 64 * 1024) -> None:
    for i in range(files):
        folder = site.media / f"part-{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file-{i}.bin").write_bytes(os.urandom(size))


def test_backup_on_a_terminal_draws_bars_per_database_and_for_media(sqlite_site):
    write_media(sqlite_site)

    run = run_on_pty([sys.executable, "manage.py", "backup_create"], env=sqlite_site.env, cwd=str(ROOT), columns=200)

    assert run.returncode == 0, run.final
    screen = run.final
    assert re.search(r"database 'default'\s+━+\s+[\d.]+/[\d.]+ KiB", screen), screen
    assert re.search(r"media files\s+━+\s+18\.8/18\.8 MiB\s+.*/s\s+300 files", screen), screen
    assert re.search(
        r"Backup \S+: 1 database and 300 media files, 18\.\d MiB -> 18\.\d MiB stored \(\d+%\) in ", screen
    )


def test_an_incremental_backup_on_a_terminal_draws_the_media_bar_too(sqlite_site):
    sqlite_site.env["INVENTREE_BACKUP_MEDIA_MODE"] = "incremental"
    write_media(sqlite_site, files=30)

    run = run_on_pty([sys.executable, "manage.py", "backup_create"], env=sqlite_site.env, cwd=str(ROOT), columns=200)

    assert run.returncode == 0, run.final
    assert re.search(r"media files\s+━+\s+1\.9/1\.9 MiB\s+.*/s\s+30 files", run.final), run.final


def test_backup_without_a_terminal_prints_plain_lines_and_one_summary(sqlite_site):
    write_media(sqlite_site, files=20)

    result = sqlite_site.manage("backup_create")

    assert "\x1b[" not in result.output
    assert "━" not in result.output
    assert "media: 20 files, 1.2 MiB read" in result.stderr
    [summary] = result.stdout.splitlines()
    assert re.fullmatch(
        r"Backup \S+: 1 database and 20 media files, 1\.\d MiB -> 1\.\d MiB stored \(\d+%\) in [\d.]+ s, "
        r"to FileSystemStorage\(.*\)",
        summary,
    ), summary


# Prints the lines of argv[1] (JSON) as a command's steps without a terminal, then on stdout whether rich was
# imported for them and what rich's Console prints for the same lines.
STEPS = """\
import io, json, sys
import django
django.setup()
from backup_app.management.commands._base import BackupCommand
command = BackupCommand()  # with the attributes its execute() sets, no terminal:
command.quiet, command.live, command._console, command._bars = False, False, None, None
lines = json.loads(sys.argv[1])
for line in lines:
    command.step(line)
sys.stderr.flush()
imported = "rich" in sys.modules
from rich.console import Console
shown = io.StringIO()
console = Console(file=shown, highlight=False, soft_wrap=True)
for line in lines:
    console.print(line, markup=False)
print(json.dumps({"rich": imported, "rich_prints": shown.getvalue()}))
"""


def steps_without_a_terminal(site, lines: list[str]) -> tuple[str, dict]:
    result = site.run(sys.executable, "-c", STEPS, json.dumps(lines))
    return result.stderr, json.loads(result.stdout)


def test_step_lines_without_a_terminal_are_what_rich_prints_and_plain_ones_need_no_rich(sqlite_site):
    plain = [
        "Backing up to FileSystemStorage(/srv/backup)",
        "  media: 27,543 files (27,268 unchanged, not read), 26.9 MiB read, 2 new packs of 27.1 MiB, in 0.9 s",
        "Removed 3 old files: a [b] c, [bold]x[/bold] " + "z" * 200,
        "",
    ]
    shown, seen = steps_without_a_terminal(sqlite_site, plain)
    assert (shown, seen["rich"]) == (seen["rich_prints"], False)

    others = ["a\ttab", "an emoji code :smile: in a name", "a bell\a, a return\r", "caf\u00e9 12:30:45", *plain]
    shown, seen = steps_without_a_terminal(sqlite_site, others)
    assert shown == seen["rich_prints"]
    assert shown.splitlines()[:2] == ["a       tab", "an emoji code \U0001f604 in a name"]


def test_quiet_backup_prints_nothing(sqlite_site):
    result = sqlite_site.manage("backup_create", "--quiet")

    assert result.stdout == "" and result.stderr == ""


def test_the_media_bar_moves_inside_one_large_file(sqlite_site):
    # One 32 MiB file; the backup is held (tests/pausing_storage.py) once the first chunk of its media archive
    # is stored, so the archive stops part-way through the file, however fast the machine: the bar drawn
    # meanwhile must show part of the file read, not 0 until the whole file is done.
    (sqlite_site.media / "video.bin").write_bytes(os.urandom(32 * 1024 * 1024))
    gate = sqlite_site.root / "gate"
    os.mkfifo(gate)
    reached = Path(f"{gate}.reached")
    env = {
        **sqlite_site.env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), sqlite_site.env.get("PYTHONPATH")])),
        "INVENTREE_BACKUP_STORAGE": "pausing_storage.PausingStorage",
        "INVENTREE_BACKUP_OPTIONS": json.dumps({"location": str(sqlite_site.backups)}),
        "BACKUP_TEST_SAVE_GATE": str(gate),
    }
    held_screens = []

    def held_a_while(text: str) -> bool:
        if reached.exists():
            held_screens.append(text)
        return len(held_screens) >= 5  # five redraws while the archive waits

    def let_it_go() -> None:
        os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))

    run = run_on_pty(
        [sys.executable, "manage.py", "backup_create"],
        env=env,
        cwd=str(ROOT),
        columns=140,
        lines=20,
        answers=[(held_a_while, let_it_go)],
        timeout=120,
    )

    assert run.returncode == 0, run.final
    read = [
        float(m.group(1)) for text in held_screens if (m := re.search(r"media files\s+\S*\s+([\d.]+)/32\.0 MiB", text))
    ]
    assert read and 0 < read[-1] < 32, held_screens[-1:]


def test_backup_progress_moves_while_it_runs(sqlite_site, chromium, tmp_path):  # noqa: F811
    """A screen drawn mid-run shows part of the media counted, with a rate; it is docs/img/backup-progress.png."""
    write_media(sqlite_site, files=800, size=96 * 1024)

    run = run_on_pty(
        [sys.executable, "manage.py", "backup_create"], env=sqlite_site.env, cwd=str(ROOT), columns=118, lines=14
    )

    assert run.returncode == 0, run.final
    counted = [
        (i, int(m.group(1).replace(",", "")))
        for i, s in enumerate(run.screens)
        if (m := re.search(r"media files .* MB/s\s+([\d,]+) files", "\n".join(s)))
    ]
    midway = [(i, n) for i, n in counted if 0 < n < 800]
    assert midway, run.final
    index = midway[len(midway) // 2][0]
    page_html = screen_html(run, index, title="invoke backup")
    folder = Path(os.environ.get("BACKUP_TEST_SCREENSHOTS") or tmp_path)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 300})
        page.set_content(page_html)
        page.locator("body").screenshot(path=str(folder / "backup-progress.png"))
        browser.close()
