"""``manage.py backup_create``: write one complete backup set (``invoke backup``)."""

from django.core.checks import ERROR, run_checks
from django.core.management.base import CommandError

from backup_app.backup import BackupOptions, create_backup
from backup_app.engines import site_lock
from backup_app.history import note_manifest, record_run
from backup_app.sets import Retention, prune
from backup_app.settings import app_settings
from backup_app.storage import backup_storage, describe

from ._base import BackupCommand


class Command(BackupCommand):
    action = "backup"
    help = "Back up the databases and media files as one backup set."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--clean", action="store_true", help="Remove old backup sets (keeps backup_keep).")
        parser.add_argument(
            "--compress",
            dest="compress",
            action="store_true",
            default=True,
            help="Compress the backup files (backup_compression, default gzip).",
        )
        parser.add_argument(
            "--no-compress", dest="compress", action="store_false", help="Do not compress the backup files."
        )
        parser.add_argument("--encrypt", action="store_true", help="Encrypt to backup_gpg_recipient.")
        parser.add_argument("--path", help="Write the set into this local folder instead of the storage.")
        parser.add_argument("--skip-db", action="store_true", help="Do not back up the databases.")
        parser.add_argument("--skip-media", action="store_true", help="Do not back up the media files.")
        parser.add_argument(
            "--clean-legacy",
            action="store_true",
            help="With --clean, also prune files written by stock django-dbbackup.",
        )
        parser.add_argument(
            "--origin",
            default="manual",
            choices=["manual", "update", "scheduled"],
            help="Recorded in the manifest.",
        )
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_true",
            help="Accepted for stock dbbackup's command lines; a backup never asks anything.",
        )

    def handle(self, *args, **options):
        with record_run(options["origin"]) as run:
            run.partial = bool(options["path"] or options["skip_db"] or options["skip_media"])
            note_manifest(run, self.backup(**options))

    def backup(self, **options) -> dict:
        """Write the set (and prune with --clean); returns its manifest."""
        if options["skip_db"] and options["skip_media"]:
            raise CommandError("--skip-db and --skip-media together leave nothing to back up")
        problems = [m for m in run_checks(tags=["backup_app"]) if m.level >= ERROR]
        if problems:
            raise CommandError(
                "backup refused: "
                + "; ".join(f"{m.id}: {m.msg}" + (f" ({m.hint})" if m.hint else "") for m in problems)
            )
        storage = backup_storage(options["path"])
        self.progress(f"Backing up to {describe(storage)}")
        with site_lock("backup"):
            manifest = create_backup(
                storage,
                BackupOptions(
                    compression=app_settings.compression if options["compress"] else "none",
                    encrypt=options["encrypt"],
                    databases=[] if options["skip_db"] else None,
                    media=not options["skip_media"],
                    origin=options["origin"],
                ),
                progress=self.progress,
            )
            if options["clean"]:
                retention = Retention.configured()
                deleted = prune(storage, retention, include_legacy=options["clean_legacy"])
                if deleted:
                    self.progress(f"Removed {len(deleted)} old files: " + ", ".join(deleted))
                else:
                    self.progress(f"Nothing to remove (keeping {retention.keep} sets)")
        return manifest
