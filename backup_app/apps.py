import logging
import re

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class StockFailureMail(logging.Handler):
    """Mail a failure of a stock django-dbbackup command (``dbbackup``, ``mediabackup``, ``dbrestore``...) as
    backup_app mails its own: one line, every known secret masked, to the admins of ``backup_send_email``.

    It takes the place of stock's ``DbbackupAdminEmailHandler``, whose mail holds the traceback's local
    variables (the ``mysqldump --password=...`` command line, ``PGPASSWORD``) and the site's settings.
    """

    def __init__(self):
        super().__init__(level=logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        from .notify import notify_failure

        try:
            text = record.getMessage()
            # Stock logs "<Type>: <message>\n<traceback>"; the command is named by its file in the traceback.
            command = re.search(r"commands[/\\](\w+)\.py", text)
            action = "restore" if command and "restore" in command.group(1) else "backup"
            origin = f"stock {command.group(1)}" if command else "stock"
            # The error (it may span lines: a tool's stderr) without the traceback, which starts at '  File "'.
            notify_failure(action, text.split('\n  File "', 1)[0], origin=origin)
        except Exception:
            self.handleError(record)


def replace_stock_failure_mail() -> bool:
    """Put :class:`StockFailureMail` in the place of stock's mail handler on the ``dbbackup`` logger (set up by
    django-dbbackup's ``ready()``, which must have run: list ``backup_app`` after ``dbbackup``)."""
    from dbbackup.log import DbbackupAdminEmailHandler

    logger = logging.getLogger("dbbackup")
    stock = [h for h in logger.handlers if isinstance(h, DbbackupAdminEmailHandler)]
    if not stock:
        return False
    logger.handlers = [h for h in logger.handlers if h not in stock] + [StockFailureMail()]
    return True


class BackupAppConfig(AppConfig):
    name = "backup_app"
    label = "backup_app"
    verbose_name = "Backups"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.apps import apps
        from django.conf import settings

        from . import checks  # noqa: F401  (registers the system checks)
        from .conf import install_mysql_driver

        # A site configured without apply_backup_settings: PyMySQL as MySQLdb before its first connection.
        install_mysql_driver(settings.DATABASES)
        from .schedule import register_schedule

        # The schedule row is written after migrate (its tables exist then), never at import.
        post_migrate.connect(register_schedule, sender=self, dispatch_uid="backup_app.register_schedule")
        if apps.is_installed("dbbackup"):
            replace_stock_failure_mail()
