"""``python -m bench.pg_filters DUMP [--before]``: MB/s of the plain-dump filters of a PostgreSQL restore.

Reads the plain SQL file ``DUMP`` through ``RestrictedSql`` (psql meta-commands), ``HeldStatements`` (owner and
default-privilege statements) and both stacked as a superuser site's restore stacks them, and (not with
``--before``) guarded as a load in place reads them (a statement ending its transaction refused), ``read(128 KiB)`` as
``tools.run_from`` reads, and prints the MB/s of process CPU time (best of ``--repeat``).  ``--before``: the
implementation they replaced (``tests/pg_filters_before.py``).  See docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_filters")
    parser.add_argument("dump")
    parser.add_argument("--before", action="store_true")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(root), str(root / "tests")]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from backup_app.engines.postgresql_owners import Held
    from backup_app.streams import CHUNK

    if args.before:
        from pg_filters_before import HeldStatementsBefore as held_statements
        from pg_filters_before import RestrictedSqlBefore as restricted
    else:
        from backup_app.engines.postgresql import RestrictedSql as restricted
        from backup_app.engines.postgresql_owners import HeldStatements as held_statements

    filters = {
        "RestrictedSql": lambda fh, held: restricted(fh),
        "HeldStatements": lambda fh, held: held_statements(fh, held),
        "both": lambda fh, held: restricted(held_statements(fh, held)),
    }
    if not args.before:  # a load in place: its own COMMIT refused (a site whose role is no superuser; both)
        filters["guarded"] = lambda fh, held: restricted(held_statements(fh, None, guard=True))
        filters["both guarded"] = lambda fh, held: restricted(held_statements(fh, held, guard=True))
    size = os.path.getsize(args.dump)
    for name, make in filters.items():
        best = None
        for _ in range(args.repeat):
            with open(args.dump, "rb", buffering=0) as fh:
                stream = make(fh, Held())
                start = time.process_time()
                while stream.read(CHUNK):
                    pass
                cpu = time.process_time() - start
            best = cpu if best is None else min(best, cpu)
        print(f"{name:15} {size / 1e6:8.1f} MB  cpu {best:7.3f} s  {size / 1e6 / best:7.1f} MB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
