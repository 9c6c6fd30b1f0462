"""``invoke listbackups --json`` over thousands of complete backup sets on local storage.

One real ``invoke backup`` of a small demo site makes the first set; it is
then copied ``n`` times with shifted timestamps (one set per hour, going back
from 2020-01-01): every file name gets the new stamp, and the manifest its new
``name``, ``created``, ``finished`` and file names (sizes and SHA-256 stay
right, the bytes are the same).  The listing is then timed, and its output
checked: ``n`` sets, all complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .measure import run_measured
from .sites import ROOT, Site

MANIFEST_SUFFIX = ".manifest.metadata"
DATE_FORMAT = "%Y-%m-%d-%H%M%S"  # the default backup_date_format, which the benchmark site uses


def _manifest_text(data: dict) -> bytes:
    # The exact layout of backup_app.sets.manifest_bytes.
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def replicate_sets(seed_dir: Path, target: Path, count: int) -> int:
    """Copy the one set in ``seed_dir`` ``count`` times into ``target`` with new stamps; returns files written."""
    manifests = [p for p in seed_dir.iterdir() if p.name.endswith(MANIFEST_SUFFIX)]
    if len(manifests) != 1:
        raise RuntimeError(f"expected one backup set in {seed_dir}, found {len(manifests)} manifests")
    manifest = json.loads(manifests[0].read_text())
    stamp = manifest["name"]
    files = {p.name: p.read_bytes() for p in seed_dir.iterdir() if p.is_file() and not p.name.endswith(MANIFEST_SUFFIX)}
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = datetime(2020, 1, 1, tzinfo=UTC)
    written = 0
    template = json.dumps(manifest)
    for i in range(count):
        when = base - timedelta(hours=i)
        new = when.strftime(DATE_FORMAT)
        data = json.loads(template.replace(stamp, new))
        data["name"] = new
        data["created"] = when.isoformat()
        data["finished"] = (when + timedelta(seconds=3)).isoformat()
        for name, content in files.items():
            path = target / name.replace(stamp, new)
            path.write_bytes(content)
            os.chmod(path, 0o600)
            written += 1
        path = target / manifests[0].name.replace(stamp, new)
        path.write_bytes(_manifest_text(data))
        os.chmod(path, 0o600)
        written += 1
    return written


def bench_listing(
    count: int, root: Path, workdir: Path, interval: float, log: Callable[[str], None], source: Path = ROOT
) -> dict:
    site = Site(root, "sqlite", workdir, source)
    try:
        log(f"[listing] making {count} backup sets")
        site.create(None)
        for i in range(3):
            (site.media / "parts" / f"file-{i}.txt").parent.mkdir(parents=True, exist_ok=True)
            (site.media / "parts" / f"file-{i}.txt").write_text(f"attachment {i}\n" * 100)
        seed_dir = root / "seed"
        site.run(site.invoke_argv("backup", "--quiet"), env=site.env(seed_dir))
        sets_dir = root / "sets"
        files = replicate_sets(seed_dir, sets_dir, count)
        empty = root / "empty"
        empty.mkdir()
        result: dict = {"sets": count, "files": files}
        for key, argv, folder in (
            ("invoke_listbackups_json", site.invoke_argv("listbackups", "--json"), sets_dir),
            ("manage_backup_list_json", site.manage_argv("backup_list", "--json"), sets_dir),
            ("invoke_listbackups_json_empty", site.invoke_argv("listbackups", "--json"), empty),
        ):
            m = run_measured(key, argv, env=site.env(folder), cwd=site.source, interval=interval)
            listed = json.loads(m.stdout)
            want = count if folder == sets_dir else 0
            if len(listed) != want or not all(s["complete"] for s in listed):
                raise RuntimeError(f"{key}: listed {len(listed)} sets (want {want}, all complete)")
            m.stdout = ""
            result[key] = m.as_json()
            log(
                f"[listing] {' '.join(argv[1:])} over {want} sets: {m.wall_s:.2f} s, "
                f"tree {m.peak_rss_tree / 2**20:.0f} MiB"
            )
        return result
    finally:
        site.drop()
        shutil.rmtree(root, ignore_errors=True)
