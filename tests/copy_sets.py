"""Make ``COUNT - 1`` more backup sets in the site's backup storage, copies of set ``STAMP`` an hour apart each.

Usage (from the repository root, with the site's environment): ``python tests/copy_sets.py STAMP COUNT``

Every file of the set (dumps, media archive, manifest, sidecars) is written again through the app's own storage,
whatever the backend, under the name with the stamp changed; in the manifest and the sidecars the stamp is
changed too, so each copy lists as a complete set of its own.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
sys.path.insert(0, os.getcwd())

import django  # noqa: E402

django.setup()

from django.core.files.base import ContentFile  # noqa: E402

from backup_app.sets import list_files, read_bytes  # noqa: E402
from backup_app.storage import backup_storage  # noqa: E402


def main(stamp: str, count: int) -> None:
    storage = backup_storage()
    names = [name for name in list_files(storage) if stamp in name]
    contents = {name: read_bytes(storage, name) for name in names}
    base = time.mktime(time.strptime(stamp, "%Y-%m-%d-%H%M%S"))
    for i in range(1, count):
        new = time.strftime("%Y-%m-%d-%H%M%S", time.localtime(base - 3600 * i))
        for name, data in contents.items():
            if name.endswith(".metadata"):
                data = data.replace(stamp.encode(), new.encode())
            storage.save(name.replace(stamp, new), ContentFile(data))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
