"""Readers and prunes beside a prune that repacks (docs/incremental.md, "Repacking").

A verify or an export takes no site lock, and a restore takes only its own site's: a prune (of this site, or of
another site sharing the storage) may repack a pack such a reader has listed and not read yet.  Each reader is
held with ``BACKUP_APP_PAUSE_AT=media:packs-located`` (its packs listed, none read), a real prune repacks the
oldest pack and deletes it, then the reader goes on and must end as it would have alone.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import sys
import tarfile
import uuid

import pytest
from reference import file_stats
from test_incremental import (
    PRUNE,
    churned,
    empty,
    incremental,
    manifests,
    needed_on_disk,
    packs_on_disk,
    prune,
    repacked_on_disk,
    restores_exactly,
)
from test_interrupted import Held
from test_pid_namespaces import UNSHARE, needs_namespaces
from test_remote_storage import point_at, s3_server, workdir  # noqa: F401 - fixtures

HERE = "media:packs-located"


@pytest.fixture
def site(sqlite_site):
    return incremental(sqlite_site)


def repack(site, first_pack: str, env: dict | None = None) -> None:
    """Prune to the two newest sets: the oldest goes, and the first pack (a quarter of it still needed) is
    repacked and deleted."""
    result = site.manage("shell", "--no-imports", "-c", PRUNE.format(keep=2), extra_env=env or {})
    assert first_pack not in packs_on_disk(site), result.stderr


def first_pack(site) -> str:
    [pack] = manifests(site)[-1]["media"]["packs"]
    return pack


def untimed(report: str) -> str:
    return re.sub(r" read in [0-9.]+ s ", " read in T s ", report)


def resumed(held: Held) -> tuple[int, str, str]:
    held.go_on()
    code, stderr = held.finish()
    return code, held.proc.stdout.read(), stderr


@pytest.mark.parametrize("read_data", [True, False], ids=["read-data", "quick"])
def test_a_verify_whose_pack_a_prune_repacks_after_it_listed_it_follows_the_move_record(site, read_data):
    churned(site)
    pack = first_pack(site)
    kept = site.sets()[1]["name"]  # the older of the two sets the prune keeps: it needs the first pack
    args = ["backup_verify", "--set", kept, *(["--read-data"] if read_data else [])]
    held = Held(site, HERE, *args).paused(HERE)

    repack(site, pack)
    code, stdout, stderr = resumed(held)

    assert code == 0, stderr
    # The same report as a verify run after the prune, but for the time it took.
    assert untimed(stdout) == untimed(site.manage(*args).stdout), stdout


#: The packs and move records in the backup storage, whatever it is.
STORED = (
    "import json; from backup_app.incremental import list_store; from backup_app.storage import backup_storage; "
    "listing = list_store(backup_storage()); print(json.dumps([sorted(listing.packs), sorted(listing.records)]))"
)


def test_on_s3_a_verify_read_data_follows_a_pack_a_prune_repacks_after_it_listed_it(sqlite_site, s3_server):  # noqa: F811
    """A remote store (moto's S3 server): listings, reads and deletes through the S3 API, sizes from the listing."""
    site = incremental(sqlite_site)
    point_at(site, s3_server, f"lock-s3-{uuid.uuid4().hex[:8]}")
    churned(site)
    kept = site.sets()[1]["name"]
    args = ["backup_verify", "--set", kept, "--read-data"]
    [before, _records] = json.loads(site.manage("shell", "--no-imports", "-c", STORED).stdout)
    held = Held(site, HERE, *args).paused(HERE)

    site.manage("shell", "--no-imports", "-c", PRUNE.format(keep=2))
    [after, records] = json.loads(site.manage("shell", "--no-imports", "-c", STORED).stdout)
    assert records and set(before) - set(after), (before, after)  # a pack was repacked and deleted
    code, stdout, stderr = resumed(held)

    assert code == 0, stderr
    assert untimed(stdout) == untimed(site.manage(*args).stdout), stdout


def test_an_export_whose_pack_a_prune_repacks_after_it_listed_it_writes_every_file(site, tmp_path):
    states = churned(site)
    pack = first_pack(site)
    kept = site.sets()[1]["name"]
    output = tmp_path / "media.tar"
    held = Held(site, HERE, "backup_export", "--set", kept, "--output", str(output)).paused(HERE)

    repack(site, pack)
    code, _stdout, stderr = resumed(held)

    assert code == 0, stderr
    with tarfile.open(output) as tar:
        found = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar if m.isfile()}
    assert found == {name: e["sha256"] for name, e in states[kept].items() if e["kind"] == "file"}


def test_a_restore_whose_pack_another_sites_prune_repacks_after_it_listed_it_restores_exactly(site):
    """The restore holds this site's lock; a site sharing the storage holds a lock of its own and prunes."""
    states = churned(site)
    pack = first_pack(site)
    newest, oldest = site.sets()[0]["name"], site.sets()[-1]["name"]
    site.manage("shell", "--no-imports", "-c", f"from backup_app.actions import delete; delete.run({oldest!r})")
    empty(site.media)
    held = Held(site, HERE, "backup_restore", "--noinput", "--skip-db").paused(HERE)

    repack(site, pack, other_site(site))
    code, _stdout, stderr = resumed(held)

    assert code == 0, stderr
    assert file_stats(site.media) == states[newest]


def other_site(site) -> dict:
    """The environment of a second site whose backups share this site's storage: its own database (so a site
    lock of its own) and its own site id."""
    shutil.copyfile(site.root / "db.sqlite3", site.root / "other.sqlite3")
    return {"INVENTREE_DB_NAME": str(site.root / "other.sqlite3"), "INVENTREE_BACKUP_SITE_ID": "other-site"}


#: A prune that prints what it says (its progress steps), one line each.
PRUNE_SAYING = """
from backup_app.actions import prune
from backup_app.progress import NoProgress
from backup_app.sets import Retention
class Say(NoProgress):
    def step(self, message):
        print(message)
prune.run(prune.PruneOptions(retention=Retention(keep=2)), Say())
"""


def test_another_sites_prune_leaves_alone_the_new_pack_of_a_repack_under_way(site):
    """Site A's prune has written and read back its new pack, no move record yet; site B's prune (its own lock)
    must not take that pack for one a killed prune left, or A's move would point at a deleted pack."""
    states = churned(site)
    pack = first_pack(site)
    step = "prune:repack-verified"
    held = Held(site, step, "shell", "--no-imports", "-c", PRUNE.format(keep=2)).paused(step)
    [new] = [n for n in repacked_on_disk(site) if ".pack" in n]

    result = site.manage("shell", "--no-imports", "-c", PRUNE_SAYING, extra_env=other_site(site))
    assert new in repacked_on_disk(site), result.stdout
    said = [line for line in result.stdout.splitlines() if "under way" in line]
    marker = new.split(".", 1)[0] + ".repacking"
    assert said == [
        f"Media packs left alone: a repack by pid {held.proc.pid} on {socket.gethostname()} is under way ({marker}); "
        "a later prune finishes or removes it"
    ], result.stdout
    code, _stdout, stderr = resumed(held)

    assert code == 0, stderr
    assert pack not in packs_on_disk(site)
    restores_exactly(site, states)
    prune(site, keep=2)  # once A's prune ended, the next one leaves exactly what the sets need
    assert packs_on_disk(site) | repacked_on_disk(site) == needed_on_disk(site)


def test_of_two_move_records_of_one_pack_readers_follow_the_one_whose_new_pack_is_there(tmp_path):
    """Two sites' prunes that repacked one pack at once leave two records of it; a later prune keeps one and
    deletes the other's new pack (packs before records): meanwhile a reader must take the record left whole."""
    from django.core.files.storage import FileSystemStorage

    from backup_app.incremental import REPACK_FOLDER, list_store

    old, there, gone = "a" * 32, "1" * 32, "f" * 32  # the whole one sorts first, the broken one last
    folder = tmp_path / REPACK_FOLDER
    folder.mkdir(parents=True)
    (folder / f"{there}.pack.gz").write_bytes(b"blobs")
    for new in (there, gone):
        (folder / f"{old}-to-{new}.moves.gz").write_bytes(b"record")

    listing = list_store(FileSystemStorage(location=str(tmp_path)))

    assert listing.moves == {old: f"{REPACK_FOLDER}/{old}-to-{there}.moves.gz"}


@needs_namespaces
def test_a_prune_in_another_pid_namespace_leaves_alone_a_repack_under_way_whose_pid_it_has_too(site):
    """Two containers of one host name: site A's prune runs as pid 1 of its PID namespace, site B's as pid 1 of
    another.  B must not take A's marker for one of its own pid that is gone (another start time) and delete A's new
    pack; it cannot look at A's pid, so it leaves the repack alone and says whose it is."""
    states = churned(site)
    pack = first_pack(site)
    step = "prune:repack-verified"
    held = Held(site, step, "shell", "--no-imports", "-c", PRUNE.format(keep=2), prefix=UNSHARE).paused(step)
    [new] = [n for n in repacked_on_disk(site) if ".pack" in n]
    marker = new.split(".", 1)[0] + ".repacking"
    owner = json.loads((site.backups / marker).read_text())
    assert owner["pid"] == 1

    prune_b = (*UNSHARE, sys.executable, "manage.py", "shell", "--no-imports", "-c", PRUNE_SAYING)
    result = site.run(*prune_b, extra_env=other_site(site))
    assert new in repacked_on_disk(site), result.stdout
    said = [line for line in result.stdout.splitlines() if "under way" in line]
    assert said == [
        f"Media packs left alone: a repack by pid 1 on {socket.gethostname()} (PID namespace {owner['pid_ns']}: "
        f"another container) is under way ({marker}); if no prune runs there now, delete {marker} by hand"
    ], result.stdout
    code, _stdout, stderr = resumed(held)

    assert code == 0, stderr
    assert pack not in packs_on_disk(site)
    restores_exactly(site, states)
