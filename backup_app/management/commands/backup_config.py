"""``manage.py backup_config``: the resolved configuration and where each value came from."""

import json

from django.core.management.base import CommandError

from backup_app.actions.list import kept_copies
from backup_app.conf import redact_value
from backup_app.progress import safety_lines
from backup_app.settings import app_settings

from ._base import BackupCommand


class Command(BackupCommand):
    help = "Show the backup configuration, where each value came from, and the settings it produced."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--json", action="store_true", help="Print JSON.")

    def handle(self, *args, **options):
        config = app_settings.config
        if config is None:
            raise CommandError(
                "the backup settings were not made by backup_app.conf.apply_backup_settings; call it in settings.py"
            )
        rows = config.rows()
        produced = {name: redact_value(value, key=name) for name, value in app_settings.produced().items()}
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "file": str(config.file) if config.file else None,
                        "keys": [dict(zip(("key", "env", "value", "source"), r, strict=True)) for r in rows],
                        "settings": produced,
                        "safety_copies": kept_copies(),
                    },
                    indent=2,
                    default=str,
                )
            )
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Configuration (file: {config.file or 'none'})", title_justify="left")
        for column in ("Key", "Environment variable", "Value", "From"):
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        out = Console(file=self.stdout, soft_wrap=False, width=200)
        out.print(table)
        settings_table = Table(title="django-dbbackup settings", title_justify="left")
        settings_table.add_column("Setting")
        settings_table.add_column("Value")
        for key, value in produced.items():
            settings_table.add_row(key, json.dumps(value, default=str))
        out.print(settings_table)
        for line in safety_lines(kept_copies()) or ["No safety copies kept by restores."]:
            self.stdout.write(line)
