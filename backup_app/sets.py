"""Backup sets: naming, manifests, listing and retention.

A *set* is everything one ``invoke backup`` run wrote: one dump per database,
one media archive, and a manifest written last.  All its files carry the same
``{datetime}`` stamp, which is the set's name.  Sets are found by their
manifests first, whatever templates named them; files no manifest names are
parsed exactly against the configured filename templates (never by substring).

Files without a manifest form *legacy* sets when they were written by stock
django-dbbackup, and *incomplete* sets when a run of ours left a pending
marker and never finished.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.utils import timezone

from .errors import BackupError
from .pipeline import SUFFIX_TO_COMPRESSION
from .secrets import redact
from .settings import app_settings
from .storage.base import RemoteStorage
from .tools import owner_gone

MANIFEST_EXT = "manifest.metadata"
PENDING_EXT = "pending.metadata"
#: django-dbbackup's metadata sidecar of a database file: ``<file>.metadata``.
SIDECAR_EXT = ".metadata"
#: With a date format that does not go down to the second, the second set of a stamp is ``<stamp>_2``...
STAMP_SUFFIX_SEPARATOR = "_"
MANIFEST_FORMAT = "backup_app/1"
#: Base extension of an incremental set's media index (``….mediaindex.gz``); see ``incremental.py``.
INDEX_BASE = "mediaindex"

#: strftime directive -> regex, for parsing stamps back out of names.
_DIRECTIVES = {
    "Y": r"\d{4}",
    "m": r"\d{2}",
    "d": r"\d{2}",
    "H": r"\d{2}",
    "M": r"\d{2}",
    "S": r"\d{2}",
    "y": r"\d{2}",
    "j": r"\d{3}",
    "f": r"\d{6}",
    "I": r"\d{2}",
    "p": r"(?:AM|PM|am|pm)",
    "b": r"[A-Za-z]{3}",
    "a": r"[A-Za-z]{3}",
    "U": r"\d{2}",
    "W": r"\d{2}",
    "z": r"[+-]\d{4}",
    "%": "%",
}


def date_regex(fmt: str) -> str:
    out, i = [], 0
    while i < len(fmt):
        if fmt[i] == "%" and i + 1 < len(fmt):
            out.append(_DIRECTIVES.get(fmt[i + 1], ".+?"))
            i += 2
        else:
            out.append(re.escape(fmt[i]))
            i += 1
    return "".join(out)


def template_regex(template: str, date_format: str) -> re.Pattern:
    """Compile a filename template (``{datetime}``, ``{databasename}``...) to an exact regex."""
    groups = {
        "datetime": f"(?P<datetime>{date_regex(date_format)}(?:{STAMP_SUFFIX_SEPARATOR}\\d+)?)",
        "databasename": r"(?P<databasename>[^/]*?)",
        "servername": r"(?P<servername>[^/]*?)",
        "content_type": r"(?P<content_type>db|media)",
        "extension": r"(?P<extension>[^/]+)",
    }
    pattern, pos, seen = [], 0, set()
    for match in re.finditer(r"\{(\w+)\}", template):
        key = match.group(1)
        pattern.append(re.escape(template[pos : match.start()]))
        if key in seen:
            pattern.append(f"(?P={key})")
        else:
            seen.add(key)
            pattern.append(groups.get(key, r"[^/]*?"))
        pos = match.end()
    pattern.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(pattern) + "$")


@dataclass
class BackupFile:
    """One stored file, as its name tells it."""

    name: str
    kind: str  # db, media, manifest, pending, metadata
    stamp: str
    database: str | None = None
    base_extension: str = ""
    compression: str | None = None
    encrypted: bool = False
    size: int | None = None
    sha256: str | None = None
    of: str | None = None  # a sidecar (kind metadata): the name of the file it describes

    @property
    def is_data(self) -> bool:
        """A database dump or the media (archive or index): what a restore reads, not a file about them."""
        return self.kind in ("db", "media")

    @property
    def is_media_index(self) -> bool:
        """The media index of an incremental set (``….mediaindex[.gz][.gpg]``), not a tar."""
        return self.kind == "media" and split_extension(self.name)[0].endswith("." + INDEX_BASE)

    def as_json(self) -> dict:
        data = {
            "name": self.name,
            # The contract's kinds are db, media and manifest: a sidecar describes a file as the manifest
            # describes the set (no restore reads it as data); ``sidecar_of`` tells it from the manifest.
            "kind": "manifest" if self.kind == "metadata" else self.kind,
            "size": self.size,
            "compressed": self.compression is not None,
            "compression": self.compression,
            "encrypted": self.encrypted,
            "sha256": self.sha256,
            "database": self.database,
        }
        if self.kind == "metadata":
            data["sidecar_of"] = self.of
        return data


def split_extension(extension: str) -> tuple[str, str | None, bool]:
    """``'psql.bin.gz.gpg'`` -> ``('psql.bin', 'gzip', True)``."""
    encrypted = extension.endswith(".gpg")
    if encrypted:
        extension = extension[: -len(".gpg")]
    compression = None
    for suffix, kind in SUFFIX_TO_COMPRESSION.items():
        if extension.endswith(suffix):
            compression = kind
            extension = extension[: -len(suffix)]
            break
    return extension, compression, encrypted


class Naming:
    """Renders and parses the names of backup files from the configured templates."""

    def __init__(
        self,
        db_template: str | None = None,
        media_template: str | None = None,
        date_format: str | None = None,
    ):
        self.db_template = db_template or app_settings.filename_template
        self.media_template = media_template or app_settings.media_filename_template
        self.date_format = date_format or app_settings.date_format
        self.hostname = app_settings.hostname
        self._db_re = template_regex(self.db_template, self.date_format)
        self._media_re = template_regex(self.media_template, self.date_format)

    def stamp(self, when: datetime) -> str:
        return (
            timezone.localtime(when).strftime(self.date_format)
            if timezone.is_aware(when)
            else when.strftime(self.date_format)
        )

    def stamp_to_datetime(self, stamp: str) -> datetime | None:
        """The time of a stamp (``<stamp>_<n>`` is the n-th set of that stamp), or None if it is none."""
        for text in (stamp, re.sub(rf"{STAMP_SUFFIX_SEPARATOR}\d+$", "", stamp)):
            try:
                value = datetime.strptime(text, self.date_format)
            except ValueError:
                continue
            return timezone.make_aware(value) if timezone.is_naive(value) else value
        return None

    @property
    def to_the_second(self) -> bool:
        """Whether two stamps of this date format a second apart differ."""
        sample = datetime(2024, 12, 31, 23, 59, 58)
        try:
            return datetime.strptime(sample.strftime(self.date_format), self.date_format) == sample
        except ValueError:
            return False

    @staticmethod
    def nth(stamp: str, n: int) -> str:
        """The stamp of the n-th set (n >= 2) written with the same timestamp."""
        return f"{stamp}{STAMP_SUFFIX_SEPARATOR}{n}"

    def _render(self, template: str, stamp: str, extension: str, database: str = "", content_type: str = "db") -> str:
        name = template.format(
            servername=self.hostname,
            datetime=stamp,
            databasename=database,
            extension=extension,
            content_type=content_type,
        )
        return re.sub(r"-+", "-", name).removeprefix("-")

    def db_name(self, stamp: str, alias: str, extension: str) -> str:
        return self._render(self.db_template, stamp, extension, database=alias)

    def media_name(self, stamp: str, extension: str) -> str:
        return self._render(self.media_template, stamp, extension, content_type="media")

    def manifest_name(self, stamp: str) -> str:
        return self.media_name(stamp, MANIFEST_EXT)

    def pending_name(self, stamp: str) -> str:
        return self.media_name(stamp, PENDING_EXT)

    def parse(self, name: str) -> BackupFile | None:
        """What a stored name is, or None if it is not a backup file of these templates."""
        for regex, is_media_template in ((self._media_re, True), (self._db_re, False)):
            match = regex.match(name)
            if not match:
                continue
            stamp = match.group("datetime")
            if self.stamp_to_datetime(stamp) is None:
                continue
            ext = match.group("extension")
            if ext == MANIFEST_EXT or ext == PENDING_EXT:
                if not is_media_template:
                    continue
                return BackupFile(name, "manifest" if ext == MANIFEST_EXT else "pending", stamp)
            if ext.endswith(SIDECAR_EXT):
                return BackupFile(name, "metadata", stamp, base_extension=ext)
            base, compression, encrypted = split_extension(ext)
            if base in ("tar", INDEX_BASE):
                if not is_media_template:
                    continue
                kind, database = "media", None
            else:
                if is_media_template and self._db_re.match(name):
                    continue  # the database template knows it better
                groups = match.groupdict()
                kind, database = "db", groups.get("databasename") or None
            return BackupFile(
                name,
                kind,
                stamp,
                database=database,
                base_extension=base,
                compression=compression,
                encrypted=encrypted,
            )
        return None


@dataclass
class BackupSet:
    """All the files sharing one stamp, with their manifest if there is one."""

    name: str
    created: datetime
    status: str  # complete, incomplete, legacy, unreadable (its manifest cannot be used: never pruned)
    #: every file of the set: data (db, media), the manifest, and the .metadata sidecars of the data files
    files: list[BackupFile] = field(default_factory=list)
    manifest: dict | None = None
    problems: list[str] = field(default_factory=list)
    extra: list[BackupFile] = field(default_factory=list)  # the pending marker; a sidecar of no file of the set
    unreadable: bool = False  # its manifest is there but cannot be read (damaged, or a newer format)
    writer: dict | None = None  # an unfinished set's pending marker: who was writing it (host, pid, ...)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def data_files(self) -> list[BackupFile]:
        return [f for f in self.files if f.is_data]

    @property
    def sidecars(self) -> list[BackupFile]:
        return [f for f in self.files if f.kind == "metadata"]

    def sidecar_of(self, name: str) -> BackupFile | None:
        return next((f for f in self.sidecars if f.of == name), None)

    @property
    def db_files(self) -> list[BackupFile]:
        return [f for f in self.files if f.kind == "db"]

    @property
    def media_file(self) -> BackupFile | None:
        return next((f for f in self.files if f.kind == "media"), None)

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def packs(self) -> dict[str, dict]:
        """The media packs an incremental set needs (name -> stored size, SHA-256), from its manifest."""
        return dict(((self.manifest or {}).get("media") or {}).get("packs") or {})

    def file(self, name: str) -> BackupFile | None:
        return next((f for f in self.files if f.name == name), None)

    def all_names(self) -> list[str]:
        return [f.name for f in self.files] + [f.name for f in self.extra]

    def as_json(self) -> dict:
        data = {
            "name": self.name,
            "created": self.created.isoformat(),
            "complete": self.complete,
            "status": self.status,
            "size": self.size,
            "compressed": any(f.compression for f in self.files if f.kind != "manifest"),
            "encrypted": any(f.encrypted for f in self.files),
            # data files, the manifest, then the sidecars: the first file of kind manifest is the set's manifest
            "files": [
                f.as_json() for f in sorted(self.files, key=lambda f: (f.kind == "metadata", f.kind == "manifest"))
            ],
            "site": set_site(self),
        }
        packs = self.packs
        if packs:  # incremental media: the shared packs it needs (not counted in ``size``)
            data["media_packs"] = len(packs)
            data["media_packs_size"] = sum(p.get("size") or 0 for p in packs.values())
        if self.problems:
            data["problems"] = self.problems
        return data


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def manifest_size(manifest: dict) -> int:
    """Bytes stored for a set: the files its manifest names."""
    return sum(entry.get("size") or 0 for entry in manifest.get("files", []))


def write_json(storage, name: str, data: dict) -> None:
    saved = storage.save(name, ContentFile(manifest_bytes(data), name=name))
    if saved != name:
        storage.delete(saved)
        raise BackupError(f"the storage renamed {name} to {saved}; refusing an inexact name")


#: A manifest larger than this is not one this app wrote (a set of ten databases takes a few KiB).
MANIFEST_MAX = 4 * 1024 * 1024


class BadManifest(ValueError):
    """A manifest that cannot be used; the message says why (it names no file: the caller does)."""


def read_manifest(storage, name: str) -> tuple[dict, int]:
    """The manifest's data and its size in bytes (one GET on a remote store); :class:`BadManifest` when it is
    not a usable manifest."""
    raw = read_bytes(storage, name)
    if len(raw) > MANIFEST_MAX:
        raise BadManifest(f"larger than {MANIFEST_MAX} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise BadManifest(f"not JSON ({err})") from None
    check_manifest(data)
    return data, len(raw)


def _kind_of(value, kinds, what: str, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
        raise BadManifest(f"{what} is {type(value).__name__} {str(value)[:40]!r}")


def _plain_name(value, what: str) -> None:
    _kind_of(value, str, what, optional=False)
    if not value or "/" in value or "\\" in value or "\0" in value or value in (".", ".."):
        raise BadManifest(f"{what} {value[:60]!r} is not a file name of the backup storage")


def check_manifest(data) -> None:
    """Raise :class:`BadManifest` unless ``data`` has the shape :func:`write_set` gives a manifest.

    Only the shape: whether the files have the sizes and SHA-256 it says is found when they are read.
    """
    if not isinstance(data, dict):
        raise BadManifest("not a JSON object")
    if data.get("format") != MANIFEST_FORMAT:
        raise BadManifest(f"format {str(data.get('format'))[:40]!r} is not {MANIFEST_FORMAT!r}")
    _kind_of(data.get("name"), str, "name")
    created = data.get("created")
    _kind_of(created, str, "created")
    if created:
        try:
            datetime.fromisoformat(created)
        except ValueError:
            raise BadManifest(f"created {created[:40]!r} is not an ISO 8601 time") from None
    files = data.get("files", [])
    _kind_of(files, list, "files", optional=False)
    for entry in files:
        _kind_of(entry, dict, "an entry of files", optional=False)
        _plain_name(entry.get("name"), "a file name")
        if entry.get("kind") not in (None, "db", "media"):
            raise BadManifest(f"file {entry['name']!r} has kind {str(entry.get('kind'))[:20]!r}")
        _kind_of(entry.get("size"), int, f"the size of {entry['name']}")
        if entry.get("size") is not None and entry["size"] < 0:
            raise BadManifest(f"the size of {entry['name']} is negative")
        sha = entry.get("sha256")
        _kind_of(sha, str, f"the sha256 of {entry['name']}")
        if sha and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise BadManifest(f"the sha256 of {entry['name']} is not 64 hex digits")
        _kind_of(entry.get("database"), str, f"the database of {entry['name']}")
    databases = data.get("databases", [])
    _kind_of(databases, list, "databases", optional=False)
    for entry in databases:
        _kind_of(entry, dict, "an entry of databases", optional=False)
        _kind_of(entry.get("alias"), str, "a database alias", optional=False)
        _plain_name(entry.get("file"), f"the file of database {entry['alias']!r}")
        for key in ("vendor", "engine"):
            _kind_of(entry.get(key), str, f"the {key} of database {entry['alias']!r}")
        _kind_of(entry.get("tables"), int, f"the table count of database {entry['alias']!r}")
        _kind_of(entry.get("source_bytes"), int, f"the dumped bytes of database {entry['alias']!r}")
        if (entry.get("source_bytes") or 0) < 0:
            raise BadManifest(f"the dumped bytes of database {entry['alias']!r} are negative")
        if entry.get("metadata") is not None:
            _plain_name(entry["metadata"], f"the metadata file of database {entry['alias']!r}")
        _kind_of(entry.get("metadata_size"), int, f"the metadata size of database {entry['alias']!r}")
        if (entry.get("metadata_size") or 0) < 0:
            raise BadManifest(f"the metadata size of database {entry['alias']!r} is negative")
        sha = entry.get("metadata_sha256")
        _kind_of(sha, str, f"the metadata sha256 of database {entry['alias']!r}")
        if sha and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise BadManifest(f"the metadata sha256 of database {entry['alias']!r} is not 64 hex digits")
        migrations = entry.get("migrations")
        _kind_of(migrations, list, f"the migrations of database {entry['alias']!r}")
        for item in migrations or []:
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise BadManifest(f"a migration of database {entry['alias']!r} is not [app, name]")
    site = data.get("site")
    _kind_of(site, dict, "site")
    if site:
        _kind_of(site.get("id"), str, "the site id", optional=False)
    media = data.get("media")
    _kind_of(media, dict, "media")
    if media:
        _plain_name(media.get("file"), "the media file")
        for key in ("files", "bytes"):
            _kind_of(media.get(key), int, f"media {key}")
            if (media.get(key) or 0) < 0:
                raise BadManifest(f"media {key} is negative")


def list_files(storage) -> list[str]:
    """Every name in the top folder of the backup storage (one listing request)."""
    return sorted(list_sizes(storage))


def list_sizes(storage) -> dict[str, int | None]:
    """Every name in the top folder with its size where the listing gives it (S3: one request per 1,000)."""
    try:
        if isinstance(storage, RemoteStorage):
            return storage.list_sizes("")
        return dict.fromkeys(storage.listdir("")[1])
    except FileNotFoundError:
        return {}


def read_bytes(storage, name: str) -> bytes:
    """All of a small file: one GET on a remote store (no HEAD first)."""
    if isinstance(storage, RemoteStorage):
        return storage.read_bytes(name)
    with storage.open(name, "rb") as fh:
        return fh.read()


def read_manifests(storage, names: list[str]) -> dict[str, tuple[dict, int] | Exception]:
    """Each manifest of ``names`` read (:func:`read_manifest`) or the error it gave; on a remote store several at
    once, each thread over a connection it may use (:meth:`RemoteStorage.read_all`)."""
    if isinstance(storage, RemoteStorage):
        return dict(zip(names, storage.read_all(read_manifest, names), strict=True))
    found = {}
    for name in names:
        try:
            found[name] = read_manifest(storage, name)
        except Exception as err:
            found[name] = err
    return found


def list_sets(storage, naming: Naming | None = None, names: list[str] | None = None) -> list[BackupSet]:
    """All backup sets in ``storage``, newest first.

    Sets are found by their manifests first, whatever templates and date format named them: every
    ``*.manifest.metadata`` that reads as a manifest of this app makes a set of the files it names.  Only the
    files no manifest names (stock dbbackup's, a run that never finished) are grouped by the current templates.

    Costs one listing (sizes included where the backend's listing has them) and one read per manifest, in
    parallel where the backend allows; a size is asked for only for files of sets without a manifest and only
    when the listing did not give it.
    """
    naming = naming or Naming()
    sizes = list_sizes(storage) if names is None else dict.fromkeys(names)
    names = sorted(sizes)
    stored = set(names)
    sets: dict[str, BackupSet] = {}
    claimed: set[str] = set()
    manifests = read_manifests(storage, [name for name in names if name.endswith(MANIFEST_EXT)])
    for name in names:
        if name.endswith(MANIFEST_EXT):
            bset = _manifest_set(storage, naming, name, stored, manifests[name])
            if bset is not None and bset.name not in sets:
                sets[bset.name] = bset
                claimed.update(f.name for f in bset.files)

    by_stamp: dict[str, list[BackupFile]] = {}
    for name in names:
        parsed = None if name in claimed else naming.parse(name)
        if parsed is not None and parsed.kind != "manifest":
            by_stamp.setdefault(parsed.stamp, []).append(parsed)
    for bset in sets.values():
        # A sidecar the manifest does not name (a set written before it named them; stock's own) of a file it
        # names is the set's too: listed, verified, pruned and deleted with it.
        data = {f.name for f in bset.data_files}
        for n in names:
            if n in claimed or not n.endswith(SIDECAR_EXT):
                continue
            if n.removesuffix(SIDECAR_EXT) in data:
                bset.files.append(sidecar_file(n, bset.name, sizes.get(n), bset.file(n.removesuffix(SIDECAR_EXT))))
            elif any(n.startswith(name + ".") for name in data):
                bset.extra.append(BackupFile(n, "metadata", bset.name))
        for f in by_stamp.pop(bset.name, []):
            if f.name in bset.all_names():
                continue
            if f.kind in ("metadata", "pending"):
                bset.extra.append(f)
            elif bset.manifest is None:
                bset.files.append(f)  # the manifest is unreadable: the set's files by their names
            else:
                bset.problems.append(f"{f.name} is not named in the manifest")

    for stamp, files in by_stamp.items():
        pending = [f for f in files if f.kind == "pending"]
        data_files = {f.name: f for f in files if f.is_data}
        sidecars = [
            sidecar_file(f.name, stamp, sizes.get(f.name), data_files[f.name.removesuffix(SIDECAR_EXT)])
            for f in files
            if f.kind == "metadata" and f.name.removesuffix(SIDECAR_EXT) in data_files
        ]
        taken = {f.name for f in sidecars}
        extra = [f for f in files if f.kind in ("metadata", "pending") and f.name not in taken]
        bset = BackupSet(
            name=stamp,
            created=naming.stamp_to_datetime(stamp),
            status="legacy",
            files=[*data_files.values(), *sidecars],
            extra=extra,
        )
        if pending:
            bset.status = "incomplete"
            bset.problems.append("the run that wrote this set did not finish")
            bset.writer = _read_marker(storage, pending[0].name)
        sets[stamp] = bset

    for bset in sets.values():
        for f in bset.sidecars:
            if f.size is None:
                f.size = sizes.get(f.name)  # a sidecar its manifest gives no size: the listing's, if it has one
        if bset.status != "complete":
            for f in bset.files:
                if f.size is None and f.kind != "manifest":
                    f.size = sizes.get(f.name)
                if f.size is None and f.kind != "manifest":
                    try:
                        f.size = storage.size(f.name)
                    except Exception:
                        f.size = None
    found = [s for s in sets.values() if s.files or s.extra]
    found.sort(key=lambda s: (s.created, s.name), reverse=True)
    return found


def sidecar_file(name: str, stamp: str, size: int | None, of: BackupFile | None) -> BackupFile:
    """The ``.metadata`` sidecar ``name`` of the set's file ``of``."""
    return BackupFile(
        name, "metadata", stamp, database=of.database if of else None, size=size, of=of.name if of else None
    )


def _read_marker(storage, name: str) -> dict | None:
    """A pending marker's data (who writes the set), or None when it cannot be read."""
    try:
        data = json.loads(read_bytes(storage, name).decode("utf-8"))
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def _manifest_set(
    storage, naming: Naming, name: str, stored: set[str], read_back: tuple[dict, int] | Exception
) -> BackupSet | None:
    """The set manifest ``name`` describes (``read_back``: what :func:`read_manifest` gave for it); None when it
    is no manifest of this app and no name of the templates.

    An unreadable manifest whose name the current templates parse makes an incomplete set of that stamp.
    """
    parsed = naming.parse(name)
    if parsed is not None and parsed.kind != "manifest":
        parsed = None
    manifest_file = BackupFile(name, "manifest", parsed.stamp if parsed else "")
    if isinstance(read_back, Exception):
        # This set alone: every other set still lists, restores and verifies; retention never deletes it.
        if parsed is None:
            return None  # no manifest of this app, and no name of the templates: not a manifest at all
        stamp = parsed.stamp
        return BackupSet(
            name=stamp,
            created=naming.stamp_to_datetime(stamp) or _modified(storage, name),
            status="unreadable",
            files=[manifest_file],
            problems=[f"{name}: {redact(read_back)}"],
            unreadable=True,
        )
    manifest, manifest_file.size = read_back
    stamp = manifest.get("name") if isinstance(manifest.get("name"), str) else manifest_file.stamp
    if not stamp or stamp not in name:
        # Every name of a set carries its stamp ({datetime} is required): a manifest that claims another's
        # set is not believed.
        if parsed is None:
            return None
        return BackupSet(
            name=parsed.stamp,
            created=naming.stamp_to_datetime(parsed.stamp),
            status="incomplete",
            files=[manifest_file],
            problems=[f"manifest {name} names set {stamp!r}, not its own"],
        )
    manifest_file.stamp = stamp
    created = _manifest_created(manifest) or naming.stamp_to_datetime(stamp) or _modified(storage, name)
    bset = BackupSet(name=stamp, created=created, status="complete", manifest=manifest)
    missing: list[str] = []
    foreign: list[str] = []
    for entry in manifest.get("files", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        if stamp not in entry["name"]:
            foreign.append(entry["name"])
            continue
        if entry["name"] not in stored:
            missing.append(entry["name"])
            continue
        base, compression, encrypted = split_extension(entry["name"])
        bset.files.append(
            BackupFile(
                entry["name"],
                entry.get("kind") if entry.get("kind") in ("db", "media") else "db",
                stamp,
                database=entry.get("database"),
                compression=entry.get("compression", compression),
                encrypted=bool(entry.get("encrypted", encrypted)),
                size=entry.get("size"),
                sha256=entry.get("sha256"),
            )
        )
    for entry in manifest.get("databases", []):
        sidecar = entry.get("metadata") if isinstance(entry, dict) else None
        if not isinstance(sidecar, str):
            continue  # a set written before sidecars were named: found by its name in list_sets
        if stamp not in sidecar:
            foreign.append(sidecar)
        elif sidecar not in stored:
            missing.append(sidecar)
        else:
            of = bset.file(entry.get("file"))
            bset.files.append(
                BackupFile(
                    sidecar,
                    "metadata",
                    stamp,
                    database=entry.get("alias"),
                    size=entry.get("metadata_size"),
                    sha256=entry.get("metadata_sha256"),
                    of=of.name if of else entry.get("file"),
                )
            )
    bset.files.append(manifest_file)
    if missing:
        bset.status = "incomplete"
        bset.problems.append("missing: " + ", ".join(missing))
    if foreign:
        bset.status = "incomplete"
        bset.problems.append("names files without the set's stamp (not taken as its own): " + ", ".join(foreign))
    return bset


def _manifest_created(manifest: dict) -> datetime | None:
    try:
        created = datetime.fromisoformat(manifest["created"])
    except (KeyError, TypeError, ValueError):
        return None
    return timezone.make_aware(created) if timezone.is_naive(created) else created


def _modified(storage, name: str) -> datetime:
    try:
        return storage.get_modified_time(name)
    except Exception:
        return datetime.fromtimestamp(0, tz=UTC)


@dataclass(frozen=True)
class Retention:
    """Which complete sets are kept: the newest ``keep``, plus the newest of each of the last ``daily`` days,
    ``weekly`` ISO weeks and ``monthly`` months (0: that bucket unused)."""

    keep: int
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    @classmethod
    def configured(cls) -> Retention:
        """``backup_keep``, ``backup_keep_daily``, ``backup_keep_weekly``, ``backup_keep_monthly``."""
        return cls(app_settings.keep, app_settings.keep_daily, app_settings.keep_weekly, app_settings.keep_monthly)


def retained(sets: list[BackupSet], retention: Retention) -> set[str]:
    """Names of the complete sets ``retention`` keeps (days, weeks and months in the server time zone)."""
    complete = sorted((s for s in sets if s.complete), key=lambda s: s.created, reverse=True)
    keep_names = {s.name for s in complete[: max(retention.keep, 1)]}  # never the last good one
    for count, bucket in (
        (retention.daily, lambda d: d.date()),
        (retention.weekly, lambda d: d.isocalendar()[:2]),
        (retention.monthly, lambda d: (d.year, d.month)),
    ):
        if count <= 0:
            continue
        seen: list[Any] = []
        for s in complete:
            key = bucket(timezone.localtime(s.created))
            if key not in seen:
                seen.append(key)
                if len(seen) > count:
                    break
                keep_names.add(s.name)
    return keep_names


def doomed(
    sets: list[BackupSet],
    retention: Retention,
    *,
    include_legacy: bool = False,
    protect: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    """The file names retention deletes, in the order to delete them (nothing is deleted here).

    Complete sets beyond ``retention`` go whole, each manifest first (so a set is never listed complete
    with files missing); the newest complete set always stays.  An unfinished set goes only when its pending
    marker shows that the process writing it is gone (:func:`writer_gone`); a set whose manifest cannot be
    read, or whose manifest names files that are missing, is never deleted (:func:`held_back` says which).
    Legacy files only with ``include_legacy``: all but the newest ``retention.keep`` of each kind (dumps per
    database, media archives), with their ``.metadata`` sidecars, like stock ``--clean``.  Sets named in
    ``protect`` stay.
    """
    own = [s for s in sets if of_this_site(s)]  # another site's sets are its own retention's to delete
    keep_names = retained(own, retention) | set(protect)
    names: list[str] = []
    going = [s for s in own if (s.complete and s.name not in keep_names) or (s.name not in protect and abandoned(s))]
    # A file that a kept set names too (two manifests claiming it) stays.
    kept = {n for s in sets if s not in going and s.status != "legacy" for n in s.all_names()}
    for s in going:
        names += sorted((n for n in s.all_names() if n not in kept), key=lambda n: (not n.endswith(MANIFEST_EXT), n))
    if include_legacy:  # stock dbbackup's files carry no site: every site sharing the folder counts them
        seen: dict[tuple[str, str | None], int] = {}
        for s in (s for s in sets if s.status == "legacy"):  # newest first
            for f in s.data_files:
                kind = (f.kind, f.database)
                seen[kind] = seen.get(kind, 0) + 1
                if seen[kind] > retention.keep:
                    # with its sidecar (and any stock file named after it)
                    names += [f.name, *(x.name for x in [*s.sidecars, *s.extra] if x.name.startswith(f.name + "."))]
    return names


def site_identity() -> dict:
    """This site's identity as sets record it: ``{"id": ..., "source": "configured" | "derived"}``.

    ``backup_site_id`` when set; else derived from the databases backed up: each alias with its vendor and
    database name (``default=postgresql:inventree``; SQLite: the file's name, not its folder).  Neither host nor
    folder counts, so that the same site moved to a new machine or folder is still itself; two sites with
    different databases are not (two sites whose databases have the same names set ``backup_site_id``).
    """
    configured = app_settings.site_id
    if configured:
        return {"id": configured, "source": "configured"}
    parts = []
    for alias in app_settings.databases:
        db = settings.DATABASES.get(alias, {})
        vendor = str(db.get("ENGINE", "")).rsplit(".", 1)[-1]
        name = str(db.get("NAME", ""))
        parts.append(f"{alias}={vendor}:{Path(name).name if vendor == 'sqlite3' else name}")
    return {"id": ",".join(parts)[:300], "source": "derived"}


def set_site(bset: BackupSet) -> str | None:
    """The identity of the site that wrote ``bset`` (its manifest, else its pending marker); None when it does
    not say (stock dbbackup's files, sets written before sets recorded it)."""
    for source in (bset.manifest, bset.writer):
        site = (source or {}).get("site")
        if isinstance(site, dict) and isinstance(site.get("id"), str):
            return site["id"]
    return None


def of_this_site(bset: BackupSet, site: str | None = None) -> bool:
    """Whether ``bset`` is this site's (or says of no site)."""
    other = set_site(bset)
    return other is None or other == (site or site_identity()["id"])


def writer_gone(bset: BackupSet) -> bool:
    """Whether the run that was writing the unfinished ``bset`` has ended (its marker names a process of this
    machine that is gone); False when the marker cannot tell (no pid, another machine)."""
    return owner_gone(bset.writer) is True


def abandoned(bset: BackupSet) -> bool:
    """An incomplete set retention may delete: an unfinished one (a pending marker, no manifest) whose writer
    is gone, or a readable manifest with no data file of its own (one that names another set's files)."""
    if bset.status != "incomplete" or bset.unreadable:
        return False
    pending = any(f.kind == "pending" for f in bset.extra)
    if not pending and not any(f.kind in ("db", "media") for f in bset.files):
        return True  # nothing of its own but the manifest: no data to lose
    return bset.manifest is None and pending and writer_gone(bset)


def held_back(sets: list[BackupSet], protect: frozenset[str] | set[str] = frozenset()) -> list[tuple[str, str]]:
    """``(name, why)`` of the sets that are not complete and that retention leaves alone."""
    out = []
    for s in sets:
        if s.status not in ("incomplete", "unreadable") or s.name in protect or abandoned(s):
            continue
        if s.unreadable:
            why = "its manifest cannot be read"
        elif s.manifest is not None:
            why = "files its manifest names are missing"
        elif s.writer and s.writer.get("pid"):
            why = f"its writer (pid {s.writer['pid']} on {s.writer.get('host', '?')}) may still be running"
        else:
            why = "its pending marker does not say who writes it"
        out.append((s.name, why))
    return out


def age_text(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"
