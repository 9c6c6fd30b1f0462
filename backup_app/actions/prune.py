"""Prune: delete the backup sets retention no longer keeps, only while the site lock is held.

A backup that runs writes files (a pending marker, dumps) that look like an incomplete set; pruning
deletes incomplete sets.  So pruning and backing up must never overlap: :func:`prune` refuses to run
without the held :class:`~backup_app.engines.SiteLock`, and :func:`run` takes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engines import SiteLock, site_lock
from ..errors import BackupAppError, BackupError
from ..incremental import (
    CHUNK_SIZE,
    REPACK_FOLDER,
    SMALL_PACK,
    Listing,
    RepackStats,
    find_moves,
    list_store,
    move_source_id,
    move_target_id,
    pack_id,
    pack_kind,
    parse_index,
    read_move,
    relocated,
    repack,
)
from ..pipeline import GpgSpec
from ..progress import NO_PROGRESS, Progress
from ..secrets import redact
from ..sets import BackupSet, Naming, Retention, doomed, held_back, list_sets, list_sizes, writer_gone
from ..settings import app_settings
from ..storage import backup_storage
from ..testing import pause_at
from ..tools import owner_gone, pid_namespace
from .common import index_copies, read_checked

# SMALL_PACK (incremental.py): small packs of one kind that a backup wrote are merged once, with what the sparse
# packs of that kind keep, they fill at least that much.  A pack a repack wrote (in REPACK_FOLDER) is never merged,
# small or not (only repacked once sparse), so merging moves a blob at most once.


@dataclass
class PruneOptions:
    retention: Retention | None = None  # None: backup_keep, backup_keep_daily/_weekly/_monthly
    include_legacy: bool = False  # also files written by stock django-dbbackup
    path: str | None = None  # a local folder instead of the backup storage


@dataclass
class PruneResult:
    deleted: list[str] = field(default_factory=list)
    repacked: RepackStats | None = None


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
    # One listing of the packs, then one of the sets, for the whole prune (issue 20: the cost of listing a remote
    # store must not grow with its objects).  The packs first: a pack this listing holds was stored after its
    # set's pending marker, so the sets listed next show that set complete or still being written.
    listing = list_store(storage)
    protect = set()
    if new_set is not None:
        sets = confirm_complete(storage, new_set)
        protect.add(new_set)
    else:
        sets = list_sets(storage)
    names: list[str] = []
    delete_files(storage, doomed(sets, retention, include_legacy=include_legacy, protect=protect), names, sets, new_set)
    pause_at("prune:sets-deleted")
    gpg = _decryption()
    after = sets_left(sets, names)
    moves: dict[str, dict] = {}  # the move records read by this prune, each read once
    gone = unreferenced_packs(
        storage, sets, progress, gpg, done=names, new_set=new_set, listing=listing, after=after, moves=moves
    )
    listing.forget(gone)
    repacked = repack_sparse(storage, progress, gpg, listing=listing, sets=after, moves=moves)
    aborted = abort_uploads(storage, sets, progress)
    if aborted:
        progress.step(f"Aborted {len(aborted)} unfinished uploads of killed or cut-off backups: " + ", ".join(aborted))
    if names:
        progress.step(f"Removed {len(names)} old files: " + ", ".join(names))
    else:
        progress.step(f"Nothing to remove (keeping {retention.keep} sets)")
    for name, why in held_back(sets, protect):
        progress.step(f"Kept set {name}, which is not complete: {why}; check it and delete its files by hand")
    return PruneResult(deleted=names, repacked=repacked)


def sets_left(sets: list[BackupSet], deleted: list[str]) -> list[BackupSet]:
    """The sets of ``sets`` still in the storage once ``deleted`` are: those whose manifest (and, for a set
    without one, some file) was not deleted.  What a listing after the deletes would show of them, without
    that listing."""
    gone = set(deleted)
    left = []
    for bset in sets:
        names = bset.all_names()
        manifest = next((f.name for f in bset.files if f.kind == "manifest"), None)
        if (manifest is not None and manifest in gone) or (names and all(n in gone for n in names)):
            continue
        left.append(bset)
    return left


def delete_files(storage, names: list[str], done: list[str], sets: list[BackupSet], new_set: str | None = None) -> None:
    """Delete ``names`` in order, each added to ``done`` once deleted; the first that cannot be deleted stops
    the prune with a BackupError whose one line says what was removed, the file and what to fix.

    A delete the storage refuses is never taken for done: every backend here raises for it (the adapters of
    SFTP and FTP do not let their classes' silent ``delete`` pass it, docs/storage/index.md).
    """
    for name in names:
        try:
            storage.delete(name)
        except Exception as err:
            raise BackupError(_stopped(storage, name, err, done, sets, new_set)) from err
        done.append(name)


def _stopped(storage, name: str, err: Exception, done: list[str], sets: list[BackupSet], new_set: str | None) -> str:
    head = f"set {new_set} is complete; " if new_set else ""
    if isinstance(err, BackupAppError):
        why = redact(err)
    elif isinstance(err, OSError):
        folder = getattr(storage, "location", "") or "the backup folder"
        why = (
            f"cannot delete {name} ({err.strerror or err}); the user running the backup needs the right to delete "
            f"files in {folder} (and the file must not be immutable: lsattr)"
        )
    else:
        why = f"cannot delete {name} ({type(err).__name__}: {redact(err)})"
    owner = next((s.name for s in sets if name in s.all_names()), None)
    gone = [n for n in done if owner is not None and any(n in s.all_names() for s in sets if s.name == owner)]
    left = (
        f" (set {owner} is left incomplete: {len(gone)} of its files were removed; delete the others by hand)"
        if gone
        else ""
    )
    return f"{head}--clean removed {len(done)} files, then stopped{left}: {why}"


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


def unreferenced_packs(
    storage,
    before: list[BackupSet],
    progress: Progress = NO_PROGRESS,
    gpg: GpgSpec | None = None,
    done: list[str] | None = None,
    new_set: str | None = None,
    *,
    listing: Listing | None = None,
    after: list[BackupSet] | None = None,
    moves: dict[str, dict] | None = None,
) -> list[str]:
    """Delete the media packs and move records no manifest needs (the caller holds the site lock); returns them,
    and adds each to ``done`` once deleted (the prune's count, for the line that says where it stopped).

    Every set with a readable manifest keeps its packs, complete or not, and the packs its repacked ones moved
    into.  If any manifest cannot be read, now or in ``before`` (the sets as they were when pruning began),
    nothing is deleted (its set might need any pack): pruning says so and leaves the packs.

    ``listing`` (of the packs) must have been made before ``before`` was listed, and ``after`` is ``before``
    less the sets deleted since (:func:`sets_left`); without them both are listed here, the packs first.
    ``moves`` keeps the move records read (:func:`packs_to_delete`).
    """
    if listing is None:
        listing = list_store(storage)
        after = None
    if not listing.packs and not listing.records:
        return []
    after = after if after is not None else list_sets(storage)
    gone = packs_to_delete(storage, listing, before, after, progress, gpg, moves=moves)
    done = [] if done is None else done
    delete_files(storage, gone, done, before, new_set)
    return gone


def packs_to_delete(
    storage,
    listing: Listing,
    before: list[BackupSet],
    after: list[BackupSet],
    progress: Progress = NO_PROGRESS,
    gpg: GpgSpec | None = None,
    *,
    moves: dict[str, dict] | None = None,
) -> list[str]:
    """The packs and move records of ``listing`` that no set of ``after`` needs; none if a manifest of
    ``before`` or ``after`` cannot be read (said through ``progress``).  Deletes nothing: pruning and its dry
    run share it.

    A set needs the packs its manifest names and, for each of them that was repacked, the move record and the
    pack it moved into (and so on).  An old pack that is still there beside its move record is a repack
    stopped before its last step: if the record reads back and the new pack is there, the old pack is no longer
    needed (deleting it finishes the repack); otherwise the record is.
    """
    if _unreadable(before, after, progress) or _being_written(before, after, progress):
        return []
    present = {pack_id(name): name for name in listing.packs}
    needed: set[str] = set()
    frontier = [pack_id(pack) for bset in after for pack in bset.packs]
    seen: set[str] = set()
    while frontier:
        ident = frontier.pop()
        if ident in seen:
            continue
        seen.add(ident)
        record = listing.moves.get(ident)
        name = present.get(ident)
        if record is None:
            if name is not None:
                needed.add(name)
            continue
        if name is not None and not _finished_move(storage, record, present, gpg, moves):
            needed.add(name)  # the move did not get that far: its record goes, the old pack stays
            continue
        needed.add(record)
        frontier.append(move_target_id(record))
    _under_way(storage, listing, needed, progress)
    gone = [name for name in [*listing.packs, *listing.records, *listing.markers.values()] if name not in needed]
    return _unnamed_on_second_look(storage, listing, gone)


def _unnamed_on_second_look(storage, listing: Listing, gone: list[str]) -> list[str]:
    """``gone`` less the new packs of :data:`REPACK_FOLDER` that ``listing`` saw with no record and no marker but
    that a second listing names (a record into them, or a marker).  A repack writes its records before it
    deletes its marker: a listing may miss both only while it runs across those two steps, and the second
    one, begun after it, then sees the record.  (A new pack with a marker is judged by its marker.)"""
    leftovers = {
        name
        for name in gone
        if name in listing.packs and name.startswith(f"{REPACK_FOLDER}/") and pack_id(name) not in listing.markers
    }
    if not leftovers:
        return gone
    again = Listing()
    again.add_repacked(storage)
    named = {move_target_id(record) for record in again.records} | set(again.markers)
    return [name for name in gone if name not in leftovers or pack_id(name) not in named]


def _under_way(storage, listing: Listing, needed: set[str], progress: Progress) -> None:
    """Add to ``needed`` what the repacks under way need (their markers, new packs, records and old packs): a
    prune of another site sharing the storage, under a lock of its own, may be between writing its new pack
    and writing its records, when nothing names the new pack yet.  A marker whose writer is gone goes."""
    live = listing.repacking(storage) if listing.markers else {}
    present = {pack_id(name): name for name in listing.packs}
    for ident, data in sorted(live.items()):
        kept = {listing.markers[ident], *([present[ident]] if ident in present else [])}
        kept |= {r for r in listing.records if move_target_id(r) == ident}
        kept |= {present[move_source_id(r)] for r in kept & set(listing.records) if move_source_id(r) in present}
        kept |= {p for p in data.get("from") or [] if isinstance(p, str) and p in listing.packs}
        if kept - needed:
            marker = listing.markers[ident]
            who = f"pid {data['pid']} on {data.get('host', '?')}" if data.get("pid") else "a writer that may still run"
            if data.get("pid") and data.get("pid_ns") and data["pid_ns"] != pid_namespace():
                who += f" (PID namespace {data['pid_ns']}: another container)"
            fix = (
                "a later prune finishes or removes it"
                if owner_gone(data) is False
                else f"if no prune runs there now, delete {marker} by hand"
            )
            progress.step(f"Media packs left alone: a repack by {who} is under way ({marker}); {fix}")
        needed |= kept


def _finished_move(
    storage, record: str, present: dict[str, str], gpg: GpgSpec | None, moves: dict[str, dict] | None = None
) -> bool:
    """Whether the move ``record`` got as far as its record: the new pack is there and the record reads back
    (kept in ``moves``, the records read by this prune)."""
    if move_target_id(record) not in present:
        return False
    if moves is not None and record in moves:
        return True
    try:
        body = read_move(storage, record, gpg)
    except Exception:
        return False
    if moves is not None:
        moves[record] = body
    return True


def _unreadable(before: list[BackupSet], after: list[BackupSet], progress: Progress) -> bool:
    for bset in [*before, *after]:
        unreadable = [p for p in bset.problems if p.startswith("manifest ")]
        if bset.unreadable or bset.status == "unreadable":
            unreadable = unreadable or [f"manifest of set {bset.name} cannot be read"]
        if unreadable:
            progress.step(f"Media packs left alone: {unreadable[0]}")
            return True
    return False


def _being_written(before: list[BackupSet], after: list[BackupSet], progress: Progress) -> bool:
    """Whether a set (of any site sharing the storage) is being written: an incremental backup uploads its packs
    before its manifest, which alone names them, so no pack is unreferenced for sure until it ends."""
    for bset in [*after, *before]:
        if bset.status != "incomplete" or bset.manifest is not None or writer_gone(bset):
            continue
        if any(f.kind == "pending" for f in bset.extra):
            writer = bset.writer or {}
            who = f" (pid {writer['pid']} on {writer.get('host', '?')})" if writer.get("pid") else ""
            progress.step(
                f"Media packs left alone: set {bset.name} is being written{who}, and the packs it has stored are "
                "named by no manifest yet; a later prune removes those no set needs"
            )
            return True
    return False


def _decryption() -> GpgSpec | None:
    try:
        return GpgSpec.for_decryption()
    except Exception:
        return None


@dataclass
class RepackPlan:
    """The packs a prune would repack: each with the blobs still needed (offset, length, SHA-256)."""

    packs: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    table: dict[str, dict] = field(default_factory=dict)  # stored size, SHA-256 (and bytes) of every pack known
    merged: list[str] = field(default_factory=list)  # those of ``packs`` repacked as small, not as sparse
    needed_bytes: int = 0  # blob bytes of ``packs`` still needed
    total_bytes: int = 0  # all the bytes of ``packs``
    reason: str | None = None  # why some or all packs cannot be considered


def plan_repack(
    storage,
    sets: list[BackupSet],
    gpg: GpgSpec | None,
    listing: Listing | None = None,
    *,
    copies=None,
    moves: dict[str, dict] | None = None,
) -> RepackPlan:
    """The packs of which less than ``backup_media_repack_percent`` of the bytes is still needed by ``sets``
    (*sparse*), and the small packs to merge (:data:`SMALL_PACK`); none with that setting at 0.

    Reads the media index of every incremental set (and the move records of packs it needs that were
    repacked), from its checked local copy where ``copies`` (:func:`~.common.index_copies`) has or gets one.
    A set whose index cannot be read here (an encrypted one without the secret key) keeps every pack it
    names whole; a set whose manifest cannot be read stops all repacking.  Writes nothing to the storage, and
    with that setting at 0 reads nothing either.  ``moves`` keeps the move records read: each is read once,
    however many sets' indexes name the packs it moved.
    """
    plan = RepackPlan()
    percent = app_settings.media_repack_percent
    if not percent:
        return plan
    moves = {} if moves is None else moves
    listing = listing if listing is not None else list_store(storage)
    busy = {p for data in listing.repacking(storage).values() for p in data.get("from") or []}  # another prune's
    if _unreadable(sets, [], NO_PROGRESS):
        plan.reason = "a manifest cannot be read"
        return plan
    needed: dict[str, set[tuple[int, int, str]]] = {}
    frozen: set[str] = set()
    for bset in sets:
        packs = bset.packs
        if not packs:
            continue
        for name, info in packs.items():
            if "bytes" in info or name not in plan.table:
                plan.table[name] = info
        try:
            if bset.media_file is None:
                raise BackupError(f"set {bset.name} has no media index")
            source = copies.source(storage, bset.media_file) if copies is not None else storage
            with read_checked(source, bset.media_file, gpg or GpgSpec()) as stream:
                index = parse_index(stream, packs)
            index, table = relocated(index, packs, find_moves(storage, index.packs(), gpg, listing, moves))
        except Exception as err:
            frozen |= set(packs)
            plan.reason = plan.reason or f"the media index of set {bset.name} cannot be read ({redact(err)})"
            continue
        for name, info in table.items():
            plan.table.setdefault(name, info)
        for entry in index.files:
            for sha, pack, offset, length in entry.chunks:
                needed.setdefault(pack, set()).add((offset, length, sha))
    # A pack a frozen set names may have moved: what it moved into is frozen too (its needed blobs unknown).
    present = {pack_id(name): name for name in listing.packs}
    idents = [pack_id(p) for p in frozen]
    while idents:
        record = listing.moves.get(idents.pop())
        if record is not None and move_target_id(record) in present:
            frozen.add(present[move_target_id(record)])
            idents.append(move_target_id(record))
    small: dict[str, list[tuple[str, int, int]]] = {}  # kind -> small packs: (pack, bytes needed, bytes)
    moving: dict[str, int] = {}  # kind -> bytes the sparse packs of that kind keep
    for pack, blobs in sorted(needed.items()):
        if pack not in listing.packs or pack in frozen or pack_id(pack) in listing.moves or pack in busy:
            continue  # gone, kept whole, a repack of it stopped half way (the next prune finishes it) or under way
        if any(length > CHUNK_SIZE for _o, length, _s in blobs):
            continue
        used = sum(length for _o, length, _s in blobs)
        info = plan.table.get(pack) or {}
        total = info.get("bytes") or max(offset + length for offset, length, _s in blobs)
        kind = pack_kind(pack)
        if used * 100 < percent * total:
            plan.packs[pack] = sorted(blobs)
            plan.needed_bytes += used
            plan.total_bytes += total
            moving[kind] = moving.get(kind, 0) + used
        elif total < SMALL_PACK and not pack.startswith(f"{REPACK_FOLDER}/"):
            small.setdefault(kind, []).append((pack, used, total))
    for kind, packs in small.items():
        merged = moving.get(kind, 0) + sum(used for _p, used, _t in packs)
        if merged >= SMALL_PACK and len(packs) + (kind in moving) >= 2:
            for pack, used, total in packs:
                plan.packs[pack] = sorted(needed[pack])
                plan.needed_bytes += used
                plan.total_bytes += total
                plan.merged.append(pack)
    return plan


def repack_sparse(
    storage,
    progress: Progress = NO_PROGRESS,
    gpg: GpgSpec | None = None,
    *,
    listing: Listing | None = None,
    sets: list[BackupSet] | None = None,
    moves: dict[str, dict] | None = None,
) -> RepackStats | None:
    """Repack the packs the sets left need little of, and merge small ones (:func:`plan_repack`; the caller holds
    the site lock).

    ``listing`` and ``sets``: the prune's own (packs listed before the sets, less what it deleted); without
    them both are listed here.  With them, a plan that finds something to repack is made again from a new
    listing of both (a repack reads and writes packs anyway): what it moves and deletes is judged on what the
    storage holds then, as another site's repack or set may have begun meanwhile.  A plan that finds nothing
    needs no second look.

    Says what was done, or on one line why it was not; a failed repack leaves every pack as it was and does not
    fail the prune.  A signal stops it the same way (and is raised again).
    """
    copies = index_copies(storage)
    moves = {} if moves is None else moves
    try:
        fresh = listing is None or sets is None
        listing = list_store(storage) if fresh else listing
        if not listing.packs:
            if copies is not None:
                copies.keep_only(set())  # no incremental set is left
            return None
        sets = list_sets(storage) if fresh else sets
        plan = plan_repack(storage, sets, gpg, listing, copies=copies, moves=moves)
        if plan.packs and not fresh:
            listing = list_store(storage)
            sets = list_sets(storage)
            plan = plan_repack(storage, sets, gpg, listing, copies=copies, moves=moves)
        if copies is not None:  # the copies of indexes no set has any more go with their sets
            copies.keep_only({b.media_file.sha256 for b in sets if b.packs and b.media_file and b.media_file.sha256})
        if plan.reason:
            progress.step(f"Media packs kept whole where needed: {plan.reason}")
        if not plan.packs:
            return None
        encrypted = any(name.endswith(".gpg") for name in plan.packs)
        write_gpg = GpgSpec.for_encryption() if encrypted else None  # the new packs: to the same recipient
        done = repack(storage, plan.packs, plan.table, read_gpg=gpg, write_gpg=write_gpg)
    except Exception as err:
        progress.step(f"Media packs not repacked: {redact(err)}; every pack is kept as it was")
        return None
    progress.step(
        f"Repacked {len(done.repacked)} media packs into {len(done.new)}"
        + (f" ({len(plan.merged)} of them small ones merged)" if plan.merged else "")
        + f": {_mib(done.moved_bytes)} still needed moved, {_mib(done.freed - done.stored)} freed"
    )
    return done


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


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
