"""Owner, group and mode of the files a run puts in place (a database file, media files, a lock file).

A restore runs as whoever runs it — root under Docker or sudo — but the files it puts in place must stay the
site's: a file that replaces another takes the replaced one's owner, group and mode (:func:`take_over`); a file
new to the site takes the owner and group of the folder it goes into when root makes it (:func:`give_to_folder`),
the way the site's own user would have made it.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger("backup_app")


@dataclass(frozen=True)
class Ownership:
    """Permission bits (``stat.S_IMODE``), owner and group of a file."""

    mode: int
    uid: int
    gid: int

    @classmethod
    def of(cls, path: str | os.PathLike, *, follow: bool = False) -> Ownership | None:
        """The ownership of ``path`` (a link itself unless ``follow``), None when there is nothing there."""
        try:
            st = os.stat(path, follow_symlinks=follow)
        except FileNotFoundError:
            return None
        return cls(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)

    @classmethod
    def from_dict(cls, data: dict | None) -> Ownership | None:
        return cls(int(data["mode"]), int(data["uid"]), int(data["gid"])) if data else None

    def as_dict(self) -> dict:
        return asdict(self)

    def apply(self, path: str | os.PathLike, *, mode: bool = True) -> None:
        """Give ``path`` this owner and group (as far as this process may) and, with ``mode``, these bits."""
        chown(path, self.uid, self.gid)
        if mode:
            os.chmod(path, self.mode)


def chown(path: str | os.PathLike, uid: int, gid: int) -> None:
    """``chown`` unless it is so already; a process that may not (not root) leaves it and logs it once."""
    st = os.stat(path, follow_symlinks=False)
    if (st.st_uid, st.st_gid) == (uid, gid):
        return
    try:
        os.chown(path, uid, gid, follow_symlinks=False)
    except PermissionError:
        logger.warning("cannot give %s to uid %s gid %s (run as root to keep owners); left as it is", path, uid, gid)


def folder_owner(folder: str | os.PathLike) -> tuple[int, int] | None:
    """``(uid, gid)`` of ``folder`` when this process is root and the folder is someone else's, else None."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return None
    return None if (st.st_uid, st.st_gid) == (0, 0) else (st.st_uid, st.st_gid)


def give_to_folder(path: str | os.PathLike, folder: str | os.PathLike | None = None) -> None:
    """Run as root, give the new ``path`` the owner and group of ``folder`` (default: the folder it is in)."""
    owner = folder_owner(folder if folder is not None else Path(path).parent)
    if owner is not None:
        chown(path, *owner)


def take_over(path: str | os.PathLike, replaced: Ownership | None, folder: str | os.PathLike | None = None) -> None:
    """``path`` is about to replace a file that had ``replaced``: give it the same owner, group and mode.

    With nothing replaced, the mode a new file of this process gets (0666 less the umask) and, run as root,
    the owner and group of ``folder`` (default: the folder ``path`` is in).
    """
    if replaced is not None:
        replaced.apply(path)
        return
    os.chmod(path, 0o666 & ~umask())
    give_to_folder(path, folder)


def umask() -> int:
    """This process's umask: from ``/proc`` (setting and putting it back races other threads' new files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
