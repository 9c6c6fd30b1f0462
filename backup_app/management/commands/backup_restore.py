"""``manage.py backup_restore``: restore a backup set (``invoke restore``)."""

import os

from backup_app.engines import site_lock
from backup_app.history import record_run
from backup_app.restore import RestoreOptions, restore
from backup_app.settings import app_settings
from backup_app.storage import backup_storage, describe

from ._base import BackupCommand


class Command(BackupCommand):
    action = "restore"
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
            action="store_true",
            help="Restore a backup made by a newer version (unknown migrations).",
        )
        parser.add_argument(
            "--mirror", action="store_true", help="Also delete media files that were not in the backup."
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

    def handle(self, *args, **options):
        with record_run("restore") as run:
            run.set_name = (self.run_restore(**options) or {}).get("set") or ""

    def run_restore(self, **options) -> dict:
        """Restore the chosen set; returns restore()'s report."""
        path = options["path"]
        db_file, media_file = options["db_file"], options["media_file"]
        # A file given as a path on disk is read from its own folder.
        for value in (db_file, media_file):
            if value and not path and os.path.isabs(value) and os.path.exists(value):
                path = os.path.dirname(value)
        if db_file and path and os.path.dirname(db_file) == path:
            db_file = os.path.basename(db_file)
        if media_file and path and os.path.dirname(media_file) == path:
            media_file = os.path.basename(media_file)
        storage = backup_storage(path)
        self.progress(f"Reading backups from {describe(storage)}")
        with site_lock("restore"):
            report = restore(
                storage,
                RestoreOptions(
                    db_file=db_file,
                    media_file=media_file,
                    skip_db=options["skip_db"],
                    skip_media=options["skip_media"],
                    mirror=options["mirror"],
                    allow_newer=options["restore_allow_newer_version"],
                    uncompress=options["uncompress"],
                    decrypt=options["decrypt"],
                    interactive=options["interactive"],
                    safety=app_settings.safety if options["safety"] is None else options["safety"],
                ),
                progress=self.progress,
                confirm=self.confirm if options["interactive"] else None,
            )
        return report
