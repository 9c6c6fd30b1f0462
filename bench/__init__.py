"""``invoke benchmark``: backup/restore timings of backup_app against stock django-dbbackup and raw tools.

Modules:

- :mod:`bench.dataset` — a deterministic dataset (database rows + media files) of a chosen size, cached;
- :mod:`bench.sites` — throwaway demo sites (own folders, own database) configured by ``INVENTREE_*``;
- :mod:`bench.measure` — wall time and peak RSS of a process tree (sampled from ``/proc``);
- :mod:`bench.listing` — ``invoke listbackups`` over thousands of backup sets;
- :mod:`bench.report` — Markdown tables, targets of issue 6, JSON;
- :mod:`bench.runner` — the whole run (``python -m bench``).
"""
