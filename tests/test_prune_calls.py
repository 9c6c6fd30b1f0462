"""What a prune asks of the storage: each folder listed once per run, each move record read once, nothing asked
per media pack (issue 20: "listing cost on a remote store independent of the number of objects").

Counted by a storage over real files that logs every call (tests/counting_storage.py); the app takes it for a
remote backend, as any third-party one.  The numbers for 5 and 20 sets of 1,000 and 10,000 packs, before and
after, are in docs/performance.md (``python -m bench.prune_calls``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT
from counting_storage import read_log
from test_incremental import PRUNE, incremental, packs_on_disk
from test_repack_concurrent import other_site

from backup_app.incremental import PACK_FOLDER, REPACK_FOLDER

#: One backup with one pack per media file (``PACK_TARGET`` 1 byte in that process alone).
ONE_PACK_PER_FILE = (
    "import backup_app.incremental as i; i.PACK_TARGET = 1; "
    "from django.core.management import call_command; call_command('backup_create', '--quiet', '--skip-db')"
)


def counted(site, tmp_path):
    site.env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
            "INVENTREE_BACKUP_STORAGE": "counting_storage.CountingRemoteStorage",
            "INVENTREE_BACKUP_OPTIONS": json.dumps({"location": str(site.backups)}),
            "INVENTREE_BACKUP_MEDIA_MODE": "incremental",
        }
    )
    return site


def calls_of(site, tmp_path, *args: str, env: dict | None = None) -> list[tuple[str, str]]:
    log = tmp_path / f"calls-{len(list(tmp_path.glob('calls-*')))}.log"
    site.manage(*args, extra_env={"BACKUP_TEST_CALL_LOG": str(log), **(env or {})})
    return read_log(log)


def folder_calls(calls: list[tuple[str, str]]) -> Counter:
    """Calls by (call, what): a folder listed by its name, a file by its kind."""

    def what(name: str) -> str:
        if call in ("listdir",):
            return name or "top"
        if name.startswith(f"{REPACK_FOLDER}/"):
            return "record" if ".moves" in name else "repacked pack"
        if name.startswith(f"{PACK_FOLDER}/"):
            return "pack"
        return "manifest" if name.endswith(".manifest.metadata") else "other"

    found = Counter()
    for call, name in calls:
        found[(call, what(name))] += 1
    return found


def nightly_clean(sqlite_site, tmp_path, files: int, sets: int) -> Counter:
    """Calls of a backup --clean of unchanged media over ``sets`` sets of ``files`` packs, one set deleted."""
    site = counted(sqlite_site, tmp_path)
    for i in range(files):
        (site.media / f"f{i:04d}.txt").write_text(f"file {i}\n")
    site.manage("shell", "--no-imports", "-c", ONE_PACK_PER_FILE)
    [first] = site.sets()
    site.run(sys.executable, "tests/copy_sets.py", first["name"], str(sets))
    assert len(list((site.backups / PACK_FOLDER).glob("*.pack*"))) == files
    env = {"INVENTREE_BACKUP_KEEP": str(sets), "INVENTREE_BACKUP_MEDIA_REPACK_PERCENT": "0"}
    calls = calls_of(site, tmp_path, "backup_create", "--quiet", "--skip-db", "--clean", env=env)
    assert len(site.sets()) == sets  # the new set in, the oldest out
    return folder_calls(calls)


#: The same counts with 4 packs and with 40: none of them grows with the packs.
@pytest.mark.parametrize("files", [4, 40])
def test_a_backup_with_clean_lists_each_folder_a_fixed_number_of_times_whatever_the_packs(sqlite_site, tmp_path, files):
    found = nightly_clean(sqlite_site, tmp_path, files, sets=3)
    # The backup lists the pack folder once (which packs it can reuse) and the prune once; the prune lists the
    # repacked folder once.  Before, the prune listed each twice (once to delete, once to repack).
    assert found[("listdir", PACK_FOLDER)] == 2, found
    assert found[("listdir", REPACK_FOLDER)] == 1, found
    # The top folder: the backup twice (a free stamp, the set it builds on), the prune once (before: three times).
    assert found[("listdir", "top")] == 3, found
    # Each listing of the top folder reads each manifest once (3 sets, then 4 once the new one is written).
    assert found[("open", "manifest")] <= 2 * 3 + 4 + 1, found
    # Nothing per pack: no pack opened, sized or looked up.
    per_pack = {k: v for k, v in found.items() if k[1] in ("pack", "repacked pack")}
    assert per_pack == {}, per_pack


def test_a_prune_reads_each_move_record_once_however_many_sets_name_the_moved_pack(sqlite_site, tmp_path):
    site = counted(sqlite_site, tmp_path)
    for i in range(10):
        (site.media / f"p{i}.bin").write_bytes(os.urandom(100 * 1024))
    site.manage("backup_create", "--quiet", "--skip-db")
    for i in range(1, 10):
        (site.media / f"p{i}.bin").unlink()
    site.manage("backup_create", "--quiet", "--skip-db")
    result = site.manage("backup_create", "--skip-db", "--clean", extra_env={"INVENTREE_BACKUP_KEEP": "2"})
    assert "Repacked 1 media packs into 1" in result.stderr, result.stderr  # the first pack, a tenth needed
    sets = site.sets()
    base = sets[-1]["name"]  # the second set: its index names the pack that was repacked
    site.run(sys.executable, "tests/copy_sets.py", base, "5")  # and four copies of it: six sets name the old pack
    assert len(site.sets()) == 2 + 4

    calls = calls_of(
        site, tmp_path, "backup_create", "--quiet", "--skip-db", "--clean", env={"INVENTREE_BACKUP_KEEP": "8"}
    )

    records = [name for call, name in calls if call == "open" and ".moves" in name]
    # One read by the backup (the set it builds on names the old pack: where are its blobs now) and one by
    # the prune (the six sets that name the old pack).  Before, the prune read it once per such set (7).
    assert len(records) <= 2 and len(set(records)) == 1, records


def test_a_pack_another_site_stores_once_a_prune_listed_its_packs_is_kept(sqlite_site, tmp_path):
    """The prune lists the packs before the sets and keeps both listings for the whole run: a set another site
    (its own lock) completes in between is in the sets listing, and its new pack, stored after the packs were
    listed, is in neither.  Listed the other way round, the pack would be seen with no set naming it, and
    deleted."""
    site = incremental(sqlite_site)
    site.env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
            "INVENTREE_BACKUP_STORAGE": "pausing_storage.PausingStorage",
            "INVENTREE_BACKUP_OPTIONS": json.dumps({"location": str(site.backups)}),
        }
    )
    (site.media / "a.txt").write_text("a")
    site.manage("backup_create", "--quiet", "--skip-db")
    before = packs_on_disk(site)
    [ours] = [s["name"] for s in site.sets()]
    site_b = other_site(site)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    pruning = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", PRUNE.format(keep=1)],
        cwd=ROOT,
        env={**site.env, "BACKUP_TEST_LIST_GATE": str(gate)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reached = Path(f"{gate}.reached")
        deadline = time.monotonic() + 120
        while not reached.exists() and pruning.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reached.exists(), pruning.communicate(timeout=30)
        # Held once it has listed the sets: another site backs up new media into a pack of its own.
        (site.media / "b.bin").write_bytes(os.urandom(64 * 1024))
        site.manage("backup_create", "--quiet", "--skip-db", extra_env=site_b)
        new = packs_on_disk(site) - before
        assert len(new) == 1
    finally:
        with open(gate, "wb"):
            pass
    out, err = pruning.communicate(timeout=300)
    assert pruning.returncode == 0, err

    assert new <= packs_on_disk(site), out + err
    [theirs] = [s["name"] for s in site.sets() if s["name"] != ours]
    assert "blobs match" in site.invoke("verify", "--read-data", "--set", theirs, extra_env=site_b).stdout
