"""``manage.py backup_export``: a set's media as one plain tar file (``invoke backup-export``)."""

from backup_app.actions import export

from ._base import BackupCommand, backup_folder, options_for


class Command(BackupCommand):
    help = "Write a set's media files as a plain tar (.tar, .tar.gz, .tar.zst), e.g. for stock mediarestore."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--set", dest="name", help="The set to export (default: the newest complete set).")
        parser.add_argument("--output", required=True, help="A new local file: .tar, .tar.gz or .tar.zst.")
        parser.add_argument("--path", help="Read the backups in this local folder instead of the storage.")

    def handle(self, *args, **options):
        backup_folder(options["path"])
        result = export.run(options_for(export.ExportOptions, options), progress=self)
        counted = f" ({result.files} files)" if result.files is not None else ""
        self.step(f"Exported the media of set {result.set_name} to {result.output}{counted}")
