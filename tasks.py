"""invoke tasks of the demo site: backup, restore, listbackups, update, and friends.

Each task is a thin wrapper around a ``manage.py`` command; the work lives in
``backup_app``.  A failing command makes invoke exit with its status.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit, UnexpectedExit
from invoke.runners import Local

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


class _Local(Local):
    """invoke's local runner, reading the command's output 64 KiB at a time instead of 1,000 bytes.

    ``listbackups --json`` over 2,000 sets prints 2.3 MB: at 1,000 bytes a read invoke spent a second on it.
    """

    read_chunk_size = 64 * 1024


def manage(c, command: str, **kwargs):
    """Run ``python manage.py <command>`` from the repository root."""
    c.config.runners.local = _Local
    with c.cd(str(ROOT)):
        return c.run(f"{shlex.quote(sys.executable)} manage.py {command}", pty=False, **kwargs)


def _flags(**flags) -> str:
    parts = []
    for name, value in flags.items():
        option = "--" + name.replace("_", "-")
        if value is True:
            parts.append(option)
        elif value not in (None, False, ""):
            parts.append(f"{option} {shlex.quote(str(value))}")
    return " ".join(parts)


@task(
    help={
        "clean": "Clean up old backup files",
        "compress": "Compress the backup files",
        "encrypt": "Encrypt the backup files",
        "path": "Specify path for generated backup files (leave blank for default path)",
        "quiet": "Suppress informational output (only show errors)",
        "skip_db": "Skip database backup step (only backup media files)",
        "skip_media": "Skip media backup step (only backup database files)",
    }
)
def backup(c, clean=False, compress=True, encrypt=False, path="", quiet=False, skip_db=False, skip_media=False):
    """Backup the database and media files."""
    manage(
        c,
        "backup_create "
        + _flags(clean=clean, encrypt=encrypt, path=path, quiet=quiet, skip_db=skip_db, skip_media=skip_media)
        + ("" if compress else " --no-compress"),
    )


@task(
    help={
        "path": "Specify path to locate backup files (leave blank for default path)",
        "db_file": "Specify filename of compressed database archive (leave blank to use most recent backup)",
        "media_file": "Specify filename of compressed media archive (leave blank to use most recent backup)",
        "decrypt": "Decrypt the backup files (automatic for .gpg files)",
        "skip_db": "Do not import database archive (media restore only)",
        "skip_media": "Do not import media archive (database restore only)",
        "uncompress": "Uncompress the backup files (automatic for .gz and .zst files)",
        "restore_allow_newer_version": "Allow restore from a backup made by a newer version",
        "mirror": "Delete media files that were not in the backup",
        "quiet": "Suppress informational output (only show errors)",
        "safety_backup": "Keep the replaced state so the restore can be undone (default: backup_safety)",
    }
)
def restore(
    c,
    path="",
    db_file="",
    media_file="",
    decrypt=False,
    skip_db=False,
    skip_media=False,
    uncompress=True,
    restore_allow_newer_version=False,
    mirror=False,
    quiet=False,
    safety_backup=True,
):
    """Restore the database and media files from a backup."""
    manage(
        c,
        "backup_restore "
        + _flags(
            path=path,
            db_file=db_file,
            media_file=media_file,
            decrypt=decrypt,
            skip_db=skip_db,
            skip_media=skip_media,
            restore_allow_newer_version=restore_allow_newer_version,
            mirror=mirror,
            quiet=quiet,
        )
        + ("" if uncompress else " --no-uncompress")
        + ("" if safety_backup else " --no-safety-backup"),
    )


@task(help={"json": "Print one JSON array instead of a table", "path": "List backups in this local folder"})
def listbackups(c, json=False, path=""):
    """List the available backup sets, newest first."""
    manage(c, "backup_list " + _flags(json=json, path=path))


@task(name="backup-config", help={"json": "Print JSON"})
def backup_config(c, json=False):
    """Show the backup configuration and where each value came from (secrets hidden)."""
    manage(c, "backup_config " + _flags(json=json))


@task
def migrate(c):
    """Apply database migrations."""
    manage(c, "migrate --noinput")


@task
def static(c):
    """Collect static files."""
    manage(c, "collectstatic --noinput --verbosity 0")


@task(help={"skip_backup": "Skip the database and media backup step"})
def update(c, skip_backup=False):
    """Update the site: backup (pruned like backup --clean), migrate, collect static files."""
    if not skip_backup:
        try:
            manage(c, "backup_create --clean --origin update")
        except UnexpectedExit as err:
            raise Exit(
                "Update stopped: the backup failed (see above); nothing was migrated. Fix the backup, "
                "or run `invoke update --skip-backup` to update without one.",
                code=err.result.exited or 1,
            ) from None
    migrate(c)
    static(c)


@task
def worker(c):
    """Run the background worker (django-q2 cluster)."""
    manage(c, "qcluster")


@task
def demo(c):
    """Create the demo site's database and a few parts with attachments (idempotent)."""
    migrate(c)
    manage(c, "demo_data")


@task(help={"name": "Safety copy to roll back to (default: the newest)", "list": "List the safety copies"})
def rollback(c, name="", list=False):  # noqa: A002 - invoke derives the option name from it
    """Undo the last restore (or a named one) from the safety copy it kept."""
    manage(c, "backup_rollback " + _flags(name=name, list=list))


@task(
    name="verify",
    help={
        "set": "Verify only this backup set (default: all)",
        "restore_test": "Also restore into a scratch database and folder and count tables and files",
        "path": "Verify the backups in this local folder",
    },
)
def verify(c, set="", restore_test=False, path=""):  # noqa: A002 - invoke derives the option name from it
    """Re-read every file of the backup sets and check it against its manifest."""
    manage(c, "backup_verify " + _flags(set=set, restore_test=restore_test, path=path))


@task(
    name="backup-check",
    help={
        "path": "Check this local folder instead of the configured storage",
        "quiet": "Print nothing but errors",
    },
)
def backup_check(c, path="", quiet=False):
    """Check the backup storage: list, write, read back, compare and delete a small object."""
    manage(c, "backup_check " + _flags(path=path, quiet=quiet))


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
    )
    with c.cd(str(ROOT)):
        c.run(f"{shlex.quote(sys.executable)} -m bench {args} --sets {int(sets)}", pty=False)
