"""A test hook: hold a run at a named step so that a test can kill it there (inert unless asked for).

With ``BACKUP_APP_PAUSE_AT=<step>`` in the environment, a run that reaches ``<step>`` prints
``paused at <step>`` on stderr and waits until the file named by ``BACKUP_APP_RESUME_FILE`` exists; a signal
ends the wait as it would end any other.  Steps: ``backup:db-dumped:<alias>``, ``backup:media-written``,
``restore:staged``, ``restore:db-swapping:<alias>`` (its safety entry written, the swap not begun),
``restore:db-swapped:<alias>``, ``restore:media-half``, ``restore:media-swapped``,
``rollback:media-half``, ``verify:staged:<alias>`` (a ``verify --restore-test`` with its scratch database
staged), ``restore:loading:<alias>`` (PostgreSQL: the staging database made and given to the throwaway role,
nothing loaded yet), ``restore:in-place-dump:<alias>`` (a restore in place: the live tables found free by
MariaDB's lock probe, their safety dump not started), ``restore:in-place-kept:<alias>`` (a restore in
place: the live database's safety dump written and recorded, the load over it not begun),
``restore:swap-renaming:<alias>`` (MariaDB's swap: the live and staged triggers, routines, events and
views dropped, the tables unlocked, the ``RENAME TABLE`` not run yet), ``prune:sets-deleted`` (the sets
retention drops are deleted, no pack yet),
``prune:repack-written``, ``prune:repack-verified``, ``prune:repack-recorded`` and ``prune:repack-deleted`` (a
repack's new pack written; read back; its move records written; the first old pack deleted:
docs/incremental.md), ``media:packs-located`` (a verify, restore or export of an incremental set has listed
the packs its index needs, none read yet); several steps may be named, separated by commas.
Without the variable :func:`pause_at` only reads the environment.
"""

from __future__ import annotations

import os
import sys
import time

PAUSE_VARIABLE = "BACKUP_APP_PAUSE_AT"
RESUME_VARIABLE = "BACKUP_APP_RESUME_FILE"


def pause_at(step: str) -> None:
    """Wait here if ``BACKUP_APP_PAUSE_AT`` names ``step`` (see the module docstring)."""
    wanted = os.environ.get(PAUSE_VARIABLE)
    if not wanted or step not in wanted.split(","):
        return
    resume = os.environ.get(RESUME_VARIABLE, "")
    sys.stderr.write(f"paused at {step}\n")
    sys.stderr.flush()
    while not (resume and os.path.exists(resume)):
        time.sleep(0.05)
