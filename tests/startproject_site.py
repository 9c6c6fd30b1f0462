"""A second Django project for in-checkout tests: ``startproject mysite`` in a temporary folder, the adoption
page's settings lines, prefix ``MYSITE_``, no ``tasks.py``; this checkout's backup_app on ``PYTHONPATH``.

(``test_stranger.py`` does the same from the built wheel in a fresh virtual environment; this one is for the
tests that need a foreign site, not an installed one.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT

#: Added to the startproject settings module: the adoption page's lines (no Q_CLUSTER, no safety folder).
SETTINGS = """
INSTALLED_APPS += ["django_q", "dbbackup", "backup_app"]
MEDIA_ROOT = BASE_DIR / "media"
from backup_app.conf import apply_backup_settings  # noqa: E402
apply_backup_settings(globals(), prefix="MYSITE_")
"""


@dataclass
class Project:
    root: Path
    env: dict

    def manage(self, *args: str, timeout: int = 300, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.root,
            env={**self.env, **extra},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )


def make_project(folder: Path, settings: str = SETTINGS, **env: str) -> Project:
    """``folder/mysite-project``, migrated; ``env`` adds to a shell environment without the demo's variables."""
    root = folder / "mysite-project"
    root.mkdir(parents=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INVENTREE_", "DJANGO_", "MYSITE_", "BACKUP_"))}
    project = Project(root, {**base, "PYTHONPATH": str(ROOT), **env})
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(root)], check=True, env=project.env)
    path = root / "mysite" / "settings.py"
    path.write_text(path.read_text() + settings)
    migrated = project.manage("migrate", "-v0")
    assert migrated.returncode == 0, migrated.stderr
    return project
