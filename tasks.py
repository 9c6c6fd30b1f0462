"""invoke tasks of the demo site: backup_app's tasks (backup, restore, listbackups, update, ...) and the demo's own.

The backup tasks come from :mod:`backup_app.tasks`, as in any project that uses the
app; they run this folder's ``manage.py``.  ``demo`` and ``benchmark`` belong to
this repository only.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from invoke import task

from backup_app.tasks import *  # noqa: F403 - the tasks, registered in this collection by name
from backup_app.tasks import _flags, manage, migrate

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


@task
def demo(c):
    """Create the demo site's database and a few parts with attachments (idempotent)."""
    migrate(c)
    manage(c, "demo_data")


@task(
    help={
        "size": "Dataset size, about half database and half media: 50M, 0.5G, 2G (default 0.5G)",
        "engines": "Comma list of sqlite, postgresql, mysql (default sqlite,postgresql)",
        "variants": "Comma list of raw, ours, ours-zstd, stock (default: all four)",
        "workdir": "Cache and scratch folder outside the repository (default /tmp/backup-app-bench)",
        "output": "Results file stem: writes STEM.md and STEM.json (default WORKDIR/results/benchmark-SIZE-TIME)",
        "seed": "Seed of the dataset generator (default 1)",
        "repeat": "Time each step N times and report the median (default 1)",
        "sets": "Backup sets for the listbackups timing (default 2000; 0 skips it)",
        "keep": "Keep the demo sites and databases for inspection (the next run drops them)",
        "note": "Free text stored with the results, e.g. 'shared machine'",
        "profile": "Also profile this app's backup and restore with py-spy (extra, untimed runs)",
        "source": "Code to measure: a commit, snapshotted with git archive (default HEAD), or . for the working tree",
        "restore_media": "live (default): restores replace media holding the backed-up files; empty: an emptied folder",
        "no_incremental": "Skip the incremental media scenario (ten nightly backups with 1 % of the files changed)",
        "media_size": "Media bytes instead of half of --size, e.g. 2G (the database keeps its half of --size)",
        "media_files": "About this many media files (each file's size scaled to fit), e.g. 27000",
    }
)
def benchmark(
    c,
    size="0.5G",
    engines="",
    variants="",
    workdir="",
    output="",
    seed=1,
    repeat=1,
    sets=2000,
    keep=False,
    note="",
    profile=False,
    source="",
    restore_media="",
    no_incremental=False,
    media_size="",
    media_files=0,
):
    """Time backup and restore against stock django-dbbackup and raw tools (see docs/performance.md)."""
    args = _flags(
        size=size,
        engines=engines,
        variants=variants,
        workdir=workdir,
        output=output,
        seed=seed,
        repeat=repeat,
        keep=keep,
        note=note,
        profile=profile,
        source=source,
        restore_media=restore_media,
        no_incremental=no_incremental,
        media_size=media_size,
        media_files=int(media_files) or None,
    )
    with c.cd(str(ROOT)):
        c.run(f"{shlex.quote(sys.executable)} -m bench {args} --sets {int(sets)}", pty=False)
