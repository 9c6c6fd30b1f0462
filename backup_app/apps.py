from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BackupAppConfig(AppConfig):
    name = "backup_app"
    label = "backup_app"
    verbose_name = "Backups"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .schedule import register_schedule

        # The schedule row is written after migrate (its tables exist then), never at import.
        post_migrate.connect(register_schedule, sender=self, dispatch_uid="backup_app.register_schedule")
