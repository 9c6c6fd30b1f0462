"""``manage.py backup_restore``: restore a backup set (``invoke restore``)."""

from django.core.management.base import CommandError

from backup_app.actions import restore

from ._base import BackupCommand, backup_folder, options_for


class Command(BackupCommand):
    help = "Restore the databases and media files from a backup set (default: the newest complete one)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--path", help="Read the backup from this local folder instead of the storage.")
        parser.add_argument("--db-file", help="Database backup file to restore (name in the storage, or a path).")
        parser.add_argument("--media-file", help="Media backup file to restore (name in the storage, or a path).")
        parser.add_argument(
            "--decrypt",
            action="store_true",
            help="Decrypt the files (automatic when their names end in .gpg).",
        )
        parser.add_argument("--skip-db", action="store_true", help="Do not restore the databases.")
        parser.add_argument("--skip-media", action="store_true", help="Do not restore the media files.")
        parser.add_argument(
            "--uncompress",
            dest="uncompress",
            action="store_true",
            default=True,
            help="Decompress files whose names say they are compressed (default).",
        )
        parser.add_argument(
            "--no-uncompress",
            dest="uncompress",
            action="store_false",
            help="Read the files as they are, whatever their names say.",
        )
        parser.add_argument(
            "--restore-allow-newer-version",
            dest="allow_newer",
            action="store_true",
            help="Restore a backup made by a newer version (unknown migrations).",
        )
        parser.add_argument(
            "--mirror", action="store_true", help="Also delete media files that were not in the backup."
        )
        parser.add_argument(
            "--allow-other-site",
            action="store_true",
            help="Restore a set another site wrote (its manifest names another site id; see backup_site_id).",
        )
        parser.add_argument(
            "--no-safety-backup",
            dest="safety",
            action="store_false",
            default=None,
            help="Do not keep the replaced state after a successful restore (backup_safety).",
        )
        parser.add_argument(
            "--noinput",
            "--no-input",
            dest="interactive",
            action="store_false",
            default=True,
            help="Never ask for confirmation.",
        )
        self.add_json_argument(parser)
        self.add_dry_run_argument(
            parser, "which set and files would be restored, what they would replace, and whether they pass the checks"
        )

    action = "restore"

    def handle(self, *args, **options):
        backup_folder(options["path"])
        opts = options_for(restore.RestoreOptions, options)
        if options["dry_run"]:
            planned = restore.plan(opts, progress=self)
            if options["json"]:
                self.emit(planned.as_json())
            else:
                self.stdout.write("\n".join(planned.lines()))
            if not planned.ok:
                raise CommandError("the restore would be refused: " + "; ".join(planned.problems))
            return
        result = restore.run(opts, progress=self, confirm=self.confirm if options["interactive"] else None)
        if options["json"]:
            self.emit(result.as_json())
        else:
            self.summary(result.summary())
