"""``python -m bench``: see :mod:`bench.runner`."""

from .runner import main

raise SystemExit(main())
