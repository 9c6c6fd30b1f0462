"""Print every table of a demo site's database as JSON (rows sorted), or run one SQL statement.

Run in a site's environment: ``python tests/snapshot.py ALIAS [--execute SQL | --query SQL]`` (``--query``
prints the rows as JSON).
"""

import base64
import datetime
import decimal
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.db import connections  # noqa: E402


def plain(value):
    if isinstance(value, bytes | memoryview | bytearray):
        return "b64:" + base64.b64encode(bytes(value)).decode()
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return f"dec:{value.normalize()}"
    return value


def main() -> None:
    alias = sys.argv[1]
    connection = connections[alias]
    if len(sys.argv) > 3 and sys.argv[2] == "--execute":
        with connection.cursor() as cursor:
            cursor.execute(sys.argv[3])
        return
    if len(sys.argv) > 3 and sys.argv[2] == "--query":
        with connection.cursor() as cursor:
            cursor.execute(sys.argv[3])
            print(json.dumps([[plain(v) for v in row] for row in cursor.fetchall()], default=str))
        return
    result = {}
    with connection.cursor() as cursor:
        for table in sorted(connection.introspection.table_names(cursor)):
            # Sessions are excluded from backups; the run history and the task queue change with every run.
            if table == "django_session" or table.startswith(("backup_app_backuprun", "django_q_")):
                continue
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            rows = [[plain(v) for v in row] for row in cursor.fetchall()]
            result[table] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
    print(json.dumps(result, default=str))


main()
