"""``manage.py backup_check``: write, read back, compare and delete a small object (``invoke backup-check``)."""

from backup_app.remote import check_storage
from backup_app.storage import backup_storage, describe

from ._base import BackupCommand


class Command(BackupCommand):
    help = "Check the backup storage: list, write, read back, compare and delete a small object."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--path", help="Check this local folder instead of the configured storage.")

    def handle(self, *args, **options):
        storage = backup_storage(options["path"])
        where = describe(storage)
        self.progress(f"Checking {where}")
        report = check_storage(
            storage,
            where,
            progress=lambda s: self.progress(f"  {s.name:<7} ok  {s.detail} ({s.seconds * 1000:.0f} ms)"),
        )
        if not self.quiet:
            self.stdout.write(
                f"Backup storage OK: {where}: wrote, read back, compared and deleted {report.size // 1024} KiB "
                f"in {report.seconds * 1000:.0f} ms"
            )
