#!/usr/bin/env python
"""Django's command-line utility for the demo site."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    from backup_app.conf import ConfigError

    try:
        execute_from_command_line(sys.argv)
    except ConfigError as err:
        # A bad setting is the user's to fix: one line, no traceback unless asked for.
        if "--traceback" in sys.argv:
            raise
        print(f"Configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    except ImproperlyConfigured as err:
        if "--traceback" in sys.argv:
            raise
        print(f"Configuration error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
