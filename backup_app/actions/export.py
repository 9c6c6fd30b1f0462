"""Export: a set's media as one plain tar file on local disk, for moving a site or for stock tools.

An archive set's tar is copied out (decrypted, re-compressed as the output name says); an incremental set's
files are rebuilt from their packs first.  Reads only; no lock is taken.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackupAppError
from ..incremental import export_tar, parse_index
from ..pipeline import SUFFIX_TO_COMPRESSION, GpgSpec, compressor
from ..progress import NO_PROGRESS, Progress
from ..sets import list_sets
from ..storage import backup_storage
from ..streams import copy
from .common import read_checked


@dataclass
class ExportOptions:
    output: str  # a new local file: .tar, .tar.gz or .tar.zst
    name: str | None = None  # the set; None: the newest complete set
    path: str | None = None  # a local folder instead of the backup storage


@dataclass
class ExportResult:
    set_name: str
    output: str
    files: int | None  # None: an archive copied as it is (not counted)


def _compression(output: str) -> str:
    for suffix, kind in SUFFIX_TO_COMPRESSION.items():
        if output.endswith(".tar" + suffix):
            return kind
    if output.endswith(".tar"):
        return "none"
    raise BackupAppError(f"--output {output}: name it .tar, .tar.gz or .tar.zst")


def run(options: ExportOptions, progress: Progress = NO_PROGRESS) -> ExportResult:
    """Write the media of set ``options.name`` (or the newest complete set) to ``options.output``.

    BackupAppError when the set does not exist, has no media, or the output exists; a half-written output
    is removed.
    """
    kind = _compression(options.output)
    output = Path(options.output)
    if output.exists():
        raise BackupAppError(f"--output {output} already exists; name a new file")
    storage = backup_storage(options.path)
    sets = [s for s in list_sets(storage) if s.complete]
    chosen = next((s for s in sets if s.name == options.name), None) if options.name else (sets or [None])[0]
    if chosen is None:
        raise BackupAppError(f"no complete backup set named {options.name!r}; run `invoke listbackups`")
    media = chosen.media_file
    if media is None:
        raise BackupAppError(f"set {chosen.name} has no media")
    gpg = GpgSpec.for_decryption()
    progress.step(f"Exporting the media of set {chosen.name} to {output}")
    files = None
    try:
        with open(output, "xb") as raw:
            out = compressor(kind, raw)
            if media.is_media_index:
                with read_checked(storage, media, gpg) as stream:
                    index = parse_index(stream, chosen.packs)
                files = export_tar(storage, index, chosen.packs, gpg, out)
            else:
                with read_checked(storage, media, gpg) as stream:
                    copy(stream, out)
            out.close()
    except BaseException:
        if output.exists():
            os.unlink(output)
        raise
    return ExportResult(chosen.name, str(output), files)
