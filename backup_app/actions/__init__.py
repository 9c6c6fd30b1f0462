"""One module per verb: ``backup``, ``restore``, ``rollback``, ``verify``, ``prune``, ``check``, ``list``,
``export``.

Each takes its options (a dataclass) and a :class:`~backup_app.progress.Progress`, does the checks, takes
the site lock, does the work (and, for a backup, the retention under the same lock), records the history
and mails the failure, and returns a result object.  The management commands, the scheduler and the admin
call these, never each other.
"""
