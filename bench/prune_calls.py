"""Storage calls of listing, backing up and pruning an incremental store of N sets and M media packs.

``python -m bench.prune_calls [--sets 5,20] [--packs 1000,10000]``

For each (N, M): a demo site (SQLite) with M media files of distinct contents, one real incremental backup
with one pack per file (``PACK_TARGET`` set to 1 byte in that one process), the set copied to N sets
(``tests/copy_sets.py``: the same index and packs), then, each in its own process and with every call of the
storage counted (``tests/counting_storage.py``: ``listdir``, ``open``, ``exists``, ``size``, ``delete``,
``save``, ``get_modified_time``), against the same folder:

- ``manage.py backup_list --json``;
- ``manage.py backup_create --skip-db --clean`` with ``backup_keep`` N (so the oldest set goes), once through
  a backend the app treats as remote (``CountingRemoteStorage``) and once through a local one
  (``CountingStorage``).

``backup_media_repack_percent`` is 0: a prune then repacks nothing (the packs here are all small and would be
merged), so what is counted is the listing and the reads, not a repack.  Counts only, nothing timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from counting_storage import read_log  # noqa: E402

POPULATE = (
    "import backup_app.incremental as i; i.PACK_TARGET = 1; "
    "from django.core.management import call_command; call_command('backup_create', '--quiet', '--skip-db')"
)


def site_env(root: Path, storage: str, log: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVENTREE_", "DJANGO_", "BACKUP_TEST_"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
            "INVENTREE_CONFIG_FILE": str(root / "config.yaml"),
            "INVENTREE_MEDIA_ROOT": str(root / "media"),
            "INVENTREE_STATIC_ROOT": str(root / "static"),
            "INVENTREE_BACKUP_SAFETY_DIR": str(root / "safety"),
            "INVENTREE_DB_ENGINE": "sqlite3",
            "INVENTREE_DB_NAME": str(root / "db.sqlite3"),
            "INVENTREE_BACKUP_MEDIA_MODE": "incremental",
            "INVENTREE_BACKUP_MEDIA_REPACK_PERCENT": "0",
            "INVENTREE_BACKUP_STORAGE": storage,
            "INVENTREE_BACKUP_OPTIONS": json.dumps({"location": str(root / "backup")}),
        }
    )
    if log is not None:
        env["BACKUP_TEST_CALL_LOG"] = str(log)
    return env


def manage(env: dict, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SystemExit(f"manage.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def kind(name: str) -> str:
    if name == "media-packs/repacked":
        return "repacked/"
    if name == "media-packs":
        return "media-packs/"
    if name.startswith("media-packs/repacked/"):
        return "record" if ".moves" in name else "repacked pack"
    if name.startswith("media-packs/"):
        return "pack"
    if name == "":
        return "top"
    for end, what in ((".manifest.metadata", "manifest"), (".pending", "pending"), (".metadata", "sidecar/marker")):
        if name.endswith(end):
            return what
    return "index" if "-media-" in name else "other"


def summary(calls: list[tuple[str, str]]) -> dict[str, int]:
    counts = Counter(call for call, _ in calls)
    detail = Counter(f"{call} {kind(name)}" for call, name in calls)
    return {"total": len(calls), **dict(counts), **{k: v for k, v in sorted(detail.items())}}


def measure(sets: int, packs: int, work: Path) -> dict[str, dict[str, int]]:
    root = work / f"n{sets}-m{packs}"
    (root / "media").mkdir(parents=True)
    (root / "config.yaml").write_text("")
    for i in range(packs):
        folder = root / "media" / f"d{i // 100:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:05d}.txt").write_text(f"file {i}\n")
    remote = site_env(root, "counting_storage.CountingRemoteStorage", None)
    manage(remote, "migrate", "--noinput", "-v0")
    manage(remote, "shell", "--no-imports", "-c", POPULATE)
    [first] = json.loads(manage(remote, "backup_list", "--json"))
    stored = len(list((root / "backup" / "media-packs").iterdir()))
    assert stored >= packs, (stored, packs)
    subprocess.run([sys.executable, "tests/copy_sets.py", first["name"], str(sets)], cwd=ROOT, env=remote, check=True)
    results = {}
    clean = ["backup_create", "--quiet", "--skip-db", "--clean"]
    for label, storage, args in [
        ("listbackups (remote)", "counting_storage.CountingRemoteStorage", ["backup_list", "--json"]),
        ("backup --clean (remote)", "counting_storage.CountingRemoteStorage", clean),
        ("backup --clean (local)", "counting_storage.CountingStorage", clean),
    ]:
        log = root / f"calls-{len(results)}.log"
        env = site_env(root, storage, log)
        env["INVENTREE_BACKUP_KEEP"] = str(sets)
        manage(env, *args)
        results[label] = summary(read_log(log))
    listed = json.loads(manage(remote, "backup_list", "--json"))
    assert len(listed) == sets and all(s["complete"] for s in listed), [s["status"] for s in listed]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="5,20")
    parser.add_argument("--packs", default="1000,10000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = {}
    with tempfile.TemporaryDirectory(prefix="prune-calls-") as work:
        for packs in map(int, args.packs.split(",")):
            for sets in map(int, args.sets.split(",")):
                table[f"N={sets} M={packs}"] = measure(sets, packs, Path(work))
                print(f"N={sets} M={packs}: " + json.dumps(table[f"N={sets} M={packs}"]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(table, indent=1))
        return
    for case, rows in table.items():
        for label, counts in rows.items():
            calls = ("listdir", "open", "exists", "size", "delete", "save")
            main_calls = " ".join(f"{k}={counts.get(k, 0)}" for k in calls)
            detail = ", ".join(f"{k}: {v}" for k, v in counts.items() if " " in k)
            print(f"| {case} | {label} | {counts['total']} | {main_calls} | {detail} |")


if __name__ == "__main__":
    main()
