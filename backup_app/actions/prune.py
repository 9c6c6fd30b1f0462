"""Prune: delete the backup sets retention no longer keeps, only while the site lock is held.

A backup that runs writes files (a pending marker, dumps) that look like an incomplete set; pruning
deletes incomplete sets.  So pruning and backing up must never overlap: :func:`prune` refuses to run
without the held :class:`~backup_app.engines.SiteLock`, and :func:`run` takes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engines import SiteLock, site_lock
from ..errors import BackupAppError, BackupError
from ..incremental import list_packs
from ..progress import NO_PROGRESS, Progress
from ..secrets import redact
from ..sets import BackupSet, Naming, Retention, doomed, held_back, list_sets, list_sizes, writer_gone
from ..storage import backup_storage


@dataclass
class PruneOptions:
    retention: Retention | None = None  # None: backup_keep, backup_keep_daily/_weekly/_monthly
    include_legacy: bool = False  # also files written by stock django-dbbackup
    path: str | None = None  # a local folder instead of the backup storage


@dataclass
class PruneResult:
    deleted: list[str] = field(default_factory=list)


def prune(
    storage,
    retention: Retention,
    *,
    lock: SiteLock,
    include_legacy: bool = False,
    new_set: str | None = None,
    progress: Progress = NO_PROGRESS,
) -> PruneResult:
    """Delete the sets ``retention`` does not keep from ``storage``; ``lock`` must be the held site lock.

    ``new_set`` (the set the caller has just written) must be listed complete, or nothing is deleted
    and BackupError raised; it is never deleted.  Returns the deleted names.
    """
    if not lock.held:
        raise BackupAppError("pruning needs the site lock held: take it with engines.site_lock()")
    protect = set()
    if new_set is not None:
        sets = confirm_complete(storage, new_set)
        protect.add(new_set)
    else:
        sets = list_sets(storage)
    names = doomed(sets, retention, include_legacy=include_legacy, protect=protect)
    for name in names:
        storage.delete(name)
    names += unreferenced_packs(storage, sets, progress)
    aborted = abort_uploads(storage, sets, progress)
    if aborted:
        progress.step(f"Aborted {len(aborted)} unfinished uploads of killed or cut-off backups: " + ", ".join(aborted))
    if names:
        progress.step(f"Removed {len(names)} old files: " + ", ".join(names))
    else:
        progress.step(f"Nothing to remove (keeping {retention.keep} sets)")
    for name, why in held_back(sets, protect):
        progress.step(f"Kept set {name}, which is not complete: {why}; check it and delete its files by hand")
    return PruneResult(deleted=names)


def abort_uploads(storage, sets: list[BackupSet], progress: Progress = NO_PROGRESS) -> list[str]:
    """Abort the unfinished uploads a killed or cut-off backup left (S3 multipart: parts billed for good) but
    those of sets whose writer may still be running; returns the names they were for.  A storage that does not
    let this user list or abort them is said on one line, and pruning goes on."""
    abort = getattr(storage, "abort_uploads", None)
    if abort is None:
        return []
    live = {s.name for s in sets if s.status == "incomplete" and s.manifest is None and not writer_gone(s)}
    try:
        return abort(live)
    except Exception as err:
        progress.step(f"Unfinished uploads left alone: {redact(err)}")
        return []


def unreferenced_packs(storage, before: list[BackupSet], progress: Progress = NO_PROGRESS) -> list[str]:
    """Delete the media packs no manifest in ``storage`` names (the caller holds the site lock); returns them.

    Every set with a readable manifest keeps its packs, complete or not.  If any manifest cannot be read,
    now or in ``before`` (the sets as they were when pruning began), nothing is deleted (its set might need
    any pack): pruning says so and leaves the packs.
    """
    packs = list_packs(storage)
    if not packs:
        return []
    gone = packs_to_delete(packs, before, list_sets(storage), progress)
    for name in gone:
        storage.delete(name)
    return gone


def packs_to_delete(packs, before: list[BackupSet], after: list[BackupSet], progress: Progress = NO_PROGRESS):
    """The packs of ``packs`` (names) that no set of ``after`` names; none if a manifest of ``before`` or
    ``after`` cannot be read (said through ``progress``).  Deletes nothing: pruning and its dry run share it."""
    for bset in [*before, *after]:
        unreadable = [p for p in bset.problems if p.startswith("manifest ")]
        if bset.unreadable or bset.status == "unreadable":
            unreadable = unreadable or [f"manifest of set {bset.name} cannot be read"]
        if unreadable:
            progress.step(f"Media packs left alone: {unreadable[0]}")
            return []
    needed = {pack for bset in after for pack in bset.packs}
    return [name for name in packs if name not in needed]


def confirm_complete(storage, name: str):
    """Read the storage back: the set ``name`` just written must be listed complete (all its files there), or
    BackupError says what is wrong.  Returns every set listed."""
    sets = list_sets(storage)
    new = next((s for s in sets if s.name == name), None)
    if new is None or not new.complete:
        problem = "; ".join(new.problems) if new is not None else "it is not in the storage"
        raise BackupError(f"the backup was written but set {name!r} does not read back complete: {problem}")
    return sets


def confirm_stored(storage, manifest: dict) -> None:
    """One listing of the storage: every file of the set just written (the sidecars too), and its manifest, must
    be there with the size the manifest says (where the listing gives sizes), or BackupError names what is
    missing."""
    sizes = list_sizes(storage)
    problems = []
    sidecars = [
        {"name": db["metadata"], "size": db.get("metadata_size")}
        for db in manifest.get("databases", [])
        if db.get("metadata")
    ]
    for entry in [*manifest.get("files", []), *sidecars, {"name": Naming().manifest_name(manifest["name"])}]:
        if entry["name"] not in sizes:
            problems.append(f"{entry['name']} is missing")
        elif entry.get("size") is not None and sizes[entry["name"]] not in (None, entry["size"]):
            problems.append(f"{entry['name']} is {sizes[entry['name']]} bytes, not {entry['size']}")
    if problems:
        raise BackupError(
            f"the backup was written but set {manifest['name']!r} does not read back whole: " + "; ".join(problems)
        )


def run(options: PruneOptions | None = None, progress: Progress = NO_PROGRESS) -> PruneResult:
    """Take the site lock and prune; :class:`~backup_app.engines.Locked` while a backup or restore runs."""
    options = options or PruneOptions()
    storage = backup_storage(options.path)
    with site_lock("prune") as lock:
        return prune(
            storage,
            options.retention or Retention.configured(),
            lock=lock,
            include_legacy=options.include_legacy,
            progress=progress,
        )
