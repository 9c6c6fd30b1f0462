"""``manage.py backup_list``: the backup sets, newest first (``invoke listbackups``)."""

import json

from backup_app.actions import list as list_action
from backup_app.actions.list import kept_copies
from backup_app.progress import safety_lines

from ._base import BackupCommand, backup_folder, options_for


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Command(BackupCommand):
    help = "List the backup sets, newest first."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--json", action="store_true", help="Print one JSON array (for scripts).")
        parser.add_argument("--path", help="List backups in this local folder instead of the storage.")

    def handle(self, *args, **options):
        backup_folder(options["path"])
        sets = list_action.run(options_for(list_action.ListOptions, options))
        if options["json"]:
            self.stdout.write(json.dumps([s.as_json() for s in sets], indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(sets)} backup sets", title_justify="left")
        for column in ("Set", "Created", "Size", "Parts", "Compressed", "Encrypted", "Status"):
            table.add_column(column)
        for s in sets:
            parts = ", ".join(
                (f"db:{f.database}" if f.database else "db") if f.kind == "db" else f.kind for f in s.data_files
            )
            data = s.data_files
            compressions = {f.compression or "none" for f in data}
            table.add_row(
                s.name,
                s.created.strftime("%Y-%m-%d %H:%M:%S %z"),
                _size(s.size),
                parts,
                ", ".join(sorted(compressions)) or "-",
                "yes" if any(f.encrypted for f in data) else "no",
                s.status + (f" ({'; '.join(s.problems)})" if s.problems else ""),
            )
        Console(file=self.stdout, soft_wrap=False, width=160).print(table)
        for line in safety_lines(kept_copies()):
            self.stdout.write(line)
