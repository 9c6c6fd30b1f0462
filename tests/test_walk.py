"""The local media walk (backup_app.media.walk_local, in process): what it yields, and that it gives back every
folder descriptor it opens, however the walk ends."""

from __future__ import annotations

import os
import stat

import django
import pytest

django.setup()

from backup_app.errors import BackupError  # noqa: E402
from backup_app.media import walk_local  # noqa: E402


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "media"
    for folder in ("a", "a/b", "c"):
        (root / folder).mkdir(parents=True)
    for name in ("z.txt", "a/1.txt", "a/b/2.txt", "c/3.txt"):
        (root / name).write_text(name)
    return root


def test_files_of_a_folder_come_before_its_subfolders_sorted_with_their_lstat(tree):
    walked = list(walk_local(tree))
    assert [name for name, _ in walked] == ["z.txt", "a", "a/1.txt", "a/b", "a/b/2.txt", "c", "c/3.txt"]
    for name, st in walked:
        assert (st.st_ino, st.st_mode, st.st_size) == (
            os.lstat(tree / name).st_ino,
            os.lstat(tree / name).st_mode,
            os.lstat(tree / name).st_size,
        )
    assert [stat.S_ISDIR(st.st_mode) for _, st in walked] == [False, True, False, True, False, True, False]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to count descriptors")
def test_no_descriptor_is_left_open_after_a_whole_walk_a_stopped_one_or_a_failed_one(tree):
    before = open_fds()
    assert len(list(walk_local(tree))) == 7
    assert open_fds() == before
    walk = walk_local(tree)
    assert next(walk)[0] == "z.txt"
    assert next(walk)[0] == "a"
    assert next(walk)[0] == "a/1.txt"  # a folder's descriptor is open while its entries are yielded
    walk.close()
    assert open_fds() == before
    (tree / "a" / "b" / "bad\\name").write_text("")
    with pytest.raises(BackupError, match="a name a restore refuses"):
        list(walk_local(tree))
    assert open_fds() == before
