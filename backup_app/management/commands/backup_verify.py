"""``manage.py backup_verify``: re-read and check backup sets (``invoke verify``)."""

from django.core.management.base import CommandError

from backup_app import hints
from backup_app.actions import verify

from ._base import BackupCommand, backup_folder, options_for


class Command(BackupCommand):
    help = "Check backup sets: sizes, SHA-256, decryption, decompression, archive members; optionally restore them."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--set", dest="name", help="Verify only this set (default: all).")
        parser.add_argument(
            "--restore-test",
            action="store_true",
            help="Also restore into a scratch database and folder and count tables and files.",
        )
        parser.add_argument(
            "--read-data",
            action="store_true",
            help="Incremental sets: read every media pack and check every blob (default: present, with its size).",
        )
        parser.add_argument("--path", help="Verify the backups in this local folder instead of the storage.")
        self.add_json_argument(parser)

    action = "verify"

    def handle(self, *args, **options):
        backup_folder(options["path"])
        result = verify.run(options_for(verify.VerifyOptions, options), progress=self)
        if options["json"]:
            self.emit(result.as_json())
        else:
            self._print(result)
        if not result.reports:
            raise CommandError(f"there are no backup sets to verify; run {hints.command('backup')} first")
        if result.bad:
            raise CommandError(
                f"{len(result.bad)} of {len(result.reports)} backup sets have problems: "
                + "; ".join(f"{r.name}: {r.problems[0]}" for r in result.bad)
            )

    def _print(self, result) -> None:
        for r in result.reports:
            state = "OK" if r.ok else "PROBLEM"
            self.stdout.write(f"{state:8} {r.name} ({r.status})")
            for line in r.checked:
                self.stdout.write(f"         {line}")
            for line in r.problems:
                self.stdout.write(f"         ! {line}")
        if result.reports:
            self.summary(result.summary())
