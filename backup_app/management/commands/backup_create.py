"""``manage.py backup_create``: write one complete backup set (``invoke backup``)."""

from django.core.management.base import CommandError

from backup_app.actions import backup

from ._base import BackupCommand, options_for


class Command(BackupCommand):
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
        self.add_json_argument(parser)
        self.add_dry_run_argument(parser, "what would be written, where, and what --clean would delete")

    action = "backup"

    def handle(self, *args, **options):
        opts = options_for(backup.BackupOptions, options)
        if options["dry_run"]:
            planned = backup.plan(opts)
            if options["json"]:
                self.emit(planned.as_json())
            else:
                self.stdout.write("\n".join(planned.lines()))
            if not planned.ok:
                raise CommandError(
                    "the backup would be refused: "
                    + "; ".join(f"{c['id']}: {c['message']}" for c in planned.checks if c["level"] == "error")
                )
            return
        result = backup.run(opts, progress=self)
        if options["json"]:
            self.emit(result.as_json())
        else:
            self.summary(result.summary())
