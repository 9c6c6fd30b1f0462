"""``manage.py backup_check``: write, read back, compare and delete a small object (``invoke backup-check``)."""

from backup_app.actions import check

from ._base import BackupCommand, options_for


class Command(BackupCommand):
    help = "Check the backup storage: list, write, read back, compare and delete a small object."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--path", help="Check this local folder instead of the configured storage.")

    def handle(self, *args, **options):
        report = check.run(options_for(check.CheckOptions, options), progress=self)
        if not self.quiet:
            self.stdout.write(
                f"Backup storage OK: {report.where}: wrote, read back, compared and deleted {report.size // 1024} KiB "
                f"in {report.seconds * 1000:.0f} ms"
            )
