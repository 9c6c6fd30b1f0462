"""``manage.py backup_rollback``: undo a restore from its safety copy (``invoke rollback``)."""

from backup_app.actions import rollback

from ._base import BackupCommand, options_for


class Command(BackupCommand):
    help = "Undo a restore: put back the databases and media files it replaced (default: the newest)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--name", help="Safety copy to roll back to (see --list).")
        parser.add_argument("--list", action="store_true", help="List the safety copies, newest first.")

    def handle(self, *args, **options):
        if options["list"]:
            for record in rollback.candidates():
                parts = [f"database '{a}'" for a in record.databases]
                if record.media is not None:
                    parts.append("media files")
                self.stdout.write(
                    f"{record.name}  [{record.state}]  created {record.data['created']}  before restoring "
                    f"{record.data.get('restoring') or 'named files'}: {', '.join(parts) or 'nothing'}"
                )
            return
        rollback.run(options_for(rollback.RollbackOptions, options), progress=self)
