"""``manage.py backup_rollback``: undo a restore from its safety copy (``invoke rollback``)."""

from django.core.management.base import CommandError

from backup_app.engines import site_lock
from backup_app.restore import discard_record, undo_record
from backup_app.safety import list_records

from ._base import BackupCommand


class Command(BackupCommand):
    help = "Undo a restore: put back the databases and media files it replaced (default: the newest)."
    action = "restore"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--name", help="Safety copy to roll back to (see --list).")
        parser.add_argument("--list", action="store_true", help="List the safety copies, newest first.")

    def handle(self, *args, **options):
        # "restoring": a restore that was killed half way; its record says what it had replaced.
        records = [r for r in list_records() if r.data.get("state") in ("done", "restoring")]
        if options["list"]:
            for record in records:
                parts = [f"database '{a}'" for a in record.data["databases"]]
                if record.data.get("media") is not None:
                    parts.append("media files")
                self.stdout.write(
                    f"{record.name}  [{record.data['state']}]  created {record.data['created']}  before restoring "
                    f"{record.data.get('restoring') or 'named files'}: {', '.join(parts) or 'nothing'}"
                )
            return
        if not records:
            raise CommandError("there is no safety copy to roll back to (restores keep one for backup_safety_days)")
        record = next((r for r in records if r.name == options["name"]), None) if options["name"] else records[0]
        if record is None:
            raise CommandError(f"no safety copy named {options['name']!r}; see `invoke rollback --list`")
        with site_lock("rollback"):
            undone = undo_record(record)
            discard_record(record)
        self.progress(f"Rolled back to the state before restore {record.name}: {', '.join(undone) or 'nothing'}")
