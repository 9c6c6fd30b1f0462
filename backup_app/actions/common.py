"""What several actions share: reading a stored file back, checked against what its manifest says."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import RestoreError
from ..pipeline import GpgSpec, ReadResult, open_stream
from ..sets import BackupFile
from ..settings import app_settings
from ..storage import RemoteStorage, describe

#: Content a media archive may have after its end (tar pads to a record of 10 KiB; GNU tar -b up to 10 MiB).
TAIL_MAX = 16 * 1024 * 1024


def media_index_folder() -> Path:
    """The host's private folder for media indexes: the plain copy of the last one a backup wrote (per storage)
    and the copies of a remote storage's stored indexes (:class:`~backup_app.incremental.StoredIndexes`)."""
    return app_settings.safety_dir / ".media-index"


def index_copies(storage, *, fill: bool = True):
    """The local copies of ``storage``'s stored media indexes (a :class:`~backup_app.incremental.StoredIndexes`);
    None for a local folder (read as cheaply)."""
    if not isinstance(storage, RemoteStorage):
        return None
    from ..incremental import StoredIndexes  # imported where incremental media are used

    return StoredIndexes(media_index_folder(), describe(storage), fill=fill)


@contextmanager
def read_checked(
    storage,
    f: BackupFile,
    gpg: GpgSpec,
    *,
    uncompress: bool = True,
    on_read: Callable[[int], None] | None = None,
    tail_max: int | None = None,
) -> Iterator[BinaryIO]:
    """Yield the decrypted, decompressed content of ``f``; afterwards check size and SHA-256 against the manifest.

    A stored size that already differs is refused before reading.  ``uncompress=False`` reads the bytes as
    they are, whatever the name says; ``on_read`` is told every chunk of stored bytes read.  RestoreError
    names the file and what is wrong with it.
    """
    if f.size is not None:
        try:
            stored = storage.size(f.name)
        except Exception:
            stored = None
        if stored is not None and stored != f.size:
            raise RestoreError(
                f"{f.name} is {stored} bytes but its manifest says {f.size}; the file is truncated or damaged"
            )
    result = ReadResult()
    compression = f.compression if uncompress else None
    with open_stream(
        storage,
        f.name,
        compression=compression,
        encrypted=f.encrypted,
        gpg=gpg,
        result=result,
        on_read=on_read,
        tail_max=tail_max,
    ) as stream:
        yield stream
    if f.size is not None and result.size != f.size:
        raise RestoreError(
            f"{f.name} is {result.size} bytes but its manifest says {f.size}; the file is truncated or damaged"
        )
    if f.sha256 and result.sha256 != f.sha256:
        raise RestoreError(f"{f.name} does not match its SHA-256 in the manifest; the file is damaged")


def read_and_check(
    storage,
    f: BackupFile,
    gpg: GpgSpec,
    consume: Callable[[BinaryIO], object],
    on_read: Callable[[int], None] | None = None,
    *,
    tail_max: int | None = None,
) -> None:
    """Read all of ``f`` through ``consume``, checking size and SHA-256 against the manifest."""
    with read_checked(storage, f, gpg, on_read=on_read, tail_max=tail_max) as stream:
        consume(stream)
