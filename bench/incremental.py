"""The incremental media scenario (issue 20): nightly backups that cost what changed.

On the site's media folder (after the other steps, which it no longer needs), media only (``--skip-db``):

1. one full ``archive`` backup (the reference: wall time and bytes stored);
2. a first ``incremental`` backup into a folder of its own (everything is new);
3. nine nights: 1 % of the files rewritten with new bytes of the same size, then an incremental backup
   (the first night is the "second backup" of the targets);
4. restoring the archive set and the newest incremental set into an emptied media folder, twice each in the order
   archive, incremental, incremental, archive, each after the reset every restore step gets (the faster run counts).

Each command is timed with its peak RSS; stored bytes are counted on disk after each backup.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from .measure import run_measured
from .sites import Site, folder_stats

NIGHTS = 9  # after the first incremental backup: ten sets in all
CHANGED = 0.01


def _media_files(media: Path) -> list[Path]:
    return sorted(p for p in media.rglob("*") if p.is_file())


def _change(files: list[Path], rng: random.Random) -> int:
    """Rewrite 1 % of ``files`` (at least one) with new bytes of the same size; returns the bytes written."""
    written = 0
    for path in rng.sample(files, max(1, int(len(files) * CHANGED))):
        size = path.stat().st_size
        path.write_bytes(os.urandom(size))
        written += size
    return written


def _empty(media: Path) -> None:
    shutil.rmtree(media)
    media.mkdir()


def bench_incremental(site: Site, seed: int, interval: float, log: Callable[[str], None]) -> dict:
    """Run the scenario on ``site`` (its media folder is changed); returns the measurements."""
    rng = random.Random(seed)
    files = _media_files(site.media)
    media_files, media_bytes = folder_stats(site.media)
    archive_dir = site.root / "inc-archive"
    incremental_dir = site.root / "inc-incremental"
    result: dict = {"media_files": media_files, "media_bytes": media_bytes, "nights": []}

    def backup(label: str, folder: Path, mode: str):
        env = {**site.env(folder), "INVENTREE_BACKUP_MEDIA_MODE": mode}
        m = run_measured(label, site.invoke_argv("backup", "--skip-db"), env=env, cwd=site.source, interval=interval)
        m.extra["stored_bytes"] = folder_stats(folder)[1]
        return m

    archive = backup("invoke backup (archive)", archive_dir, "archive")
    result["archive_backup"] = archive.as_json()
    mib = archive.extra["stored_bytes"] / 2**20
    log(f"[incremental] archive backup      {archive.wall_s:7.2f} s  cpu {archive.cpu_s:6.2f} s  stored {mib:8.1f} MiB")
    first = backup("invoke backup (incremental, first)", incremental_dir, "incremental")
    result["first_backup"] = first.as_json()
    mib = first.extra["stored_bytes"] / 2**20
    log(f"[incremental] first incremental   {first.wall_s:7.2f} s  cpu {first.cpu_s:6.2f} s  stored {mib:8.1f} MiB")
    stored = first.extra["stored_bytes"]
    for night in range(1, NIGHTS + 1):
        changed = _change(files, rng)
        m = backup(f"invoke backup (incremental, night {night})", incremental_dir, "incremental")
        m.extra["changed_bytes"] = changed
        m.extra["growth_bytes"] = m.extra["stored_bytes"] - stored
        stored = m.extra["stored_bytes"]
        result["nights"].append(m.as_json())
        log(
            f"[incremental] night {night}: changed {changed / 2**20:6.1f} MiB, {m.wall_s:6.2f} s "
            f"(cpu {m.cpu_s:5.2f} s), "
            f"+{m.extra['growth_bytes'] / 2**20:6.1f} MiB stored, peak {m.peak_rss_tree / 2**20:5.0f} MiB"
        )
    result["total_stored_bytes"] = stored
    from .runner import _median, _prepare  # (here: runner imports this module)

    # Each restore twice, in the order archive, incremental, incremental, archive, each after the same reset as
    # every other restore step (sync, page cache dropped, the set's files read back in); the faster run of each
    # is reported.  One run each, the incremental one always second, measured the machine's load as much as the
    # code: 0.84x to 1.36x on the same code.
    folders = {"archive": archive_dir, "incremental": incremental_dir}
    runs: dict[str, list] = {"archive": [], "incremental": []}
    for label in ("archive", "incremental", "incremental", "archive"):
        _empty(site.media)
        m = run_measured(
            f"invoke restore (media, {label})",
            site.invoke_argv("restore", "--skip-db", "--no-safety-backup"),
            env=site.env(folders[label]),
            cwd=site.source,
            interval=interval,
            prepare=_prepare(site, folders[label]),
        )
        m.extra["restored_files"] = folder_stats(site.media)[0]
        runs[label].append(m)
        log(
            f"[incremental] restore {label:11} {m.wall_s:7.2f} s  cpu {m.cpu_s:6.2f} s  "
            f"{m.extra['restored_files']} files"
        )
    for label, ms in runs.items():
        result[f"restore_{label}"] = _median(ms).as_json()
    return result


def incremental_targets(inc: dict) -> list[tuple[str, float | None, bool | None, str]]:
    """(target, value, met, shown) for the issue's targets."""
    archive = inc["archive_backup"]
    second = inc["nights"][0]
    rows = []
    ratio = second["wall_s"] / archive["wall_s"] if archive["wall_s"] else None
    rows.append(
        (
            "second backup after changing 1 % of the files: at most 10 % of a full archive backup's wall time",
            ratio,
            None if ratio is None else ratio <= 0.10,
            f"{second['wall_s']:.2f} s / {archive['wall_s']:.2f} s = {ratio:.1%} (CPU {second['cpu_s']:.2f} s / "
            f"{archive['cpu_s']:.2f} s)"
            if ratio is not None
            else "–",
        )
    )
    growth = second["extra"]["growth_bytes"] / inc["media_bytes"]
    rows.append(
        (
            "…storage growth at most 2 % of the media size",
            growth,
            growth <= 0.02,
            f"{second['extra']['growth_bytes'] / 2**20:.1f} MiB = {growth:.2%}",
        )
    )
    total = inc["total_stored_bytes"] / archive["extra"]["stored_bytes"]
    rows.append(
        (
            "ten nightly backups with 1 % change each: total stored at most 1.3× one full archive set",
            total,
            total <= 1.3,
            f"{inc['total_stored_bytes'] / 2**20:.1f} MiB = {total:.2f}×",
        )
    )
    inc_s, arc_s = inc["restore_incremental"]["wall_s"], inc["restore_archive"]["wall_s"]
    restore = inc_s / arc_s
    rows.append(
        (
            "restoring an incremental set into an emptied media folder within 1.3× of the archive set",
            restore,
            restore <= 1.3,
            f"{inc_s:.2f} s vs {arc_s:.2f} s = {restore:.2f}×",
        )
    )
    peak = max(m["peak_rss_tree"] for m in [inc["first_backup"], *inc["nights"], inc["restore_incremental"]])
    rows.append(("peak RSS at most 150 MB", peak, peak <= 150e6, f"{peak / 1e6:.0f} MB"))
    return rows


def markdown(inc: dict) -> list[str]:
    """The scenario's table for the report."""
    lines = [
        "",
        f"### Incremental media ({inc['media_files']:,} files, {inc['media_bytes'] / 2**20:,.0f} MiB, media only)",
        "",
        "| Step | Wall (s) | CPU (s) | Stored after (MiB) | Growth (MiB) | Peak RSS, tree (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(label: str, m: dict, growth: float | None = None) -> None:
        shown = f"{growth / 2**20:.1f}" if growth is not None else ""
        stored = m["extra"].get("stored_bytes")
        stored_text = f"{stored / 2**20:.1f}" if stored is not None else ""
        lines.append(
            f"| {label} | {m['wall_s']:.2f} | {m['cpu_s']:.2f} | {stored_text} | {shown} | "
            f"{m['peak_rss_tree'] / 2**20:.0f} |"
        )

    row("archive backup (reference)", inc["archive_backup"])
    row("first incremental backup", inc["first_backup"])
    for night, m in enumerate(inc["nights"], start=1):
        row(f"night {night}: 1 % changed", m, m["extra"]["growth_bytes"])
    row("restore archive set, emptied media (faster of 2)", inc["restore_archive"])
    row("restore incremental set, emptied media (faster of 2)", inc["restore_incremental"])
    lines += ["", "| Target | Measured | Met |", "| --- | --- | --- |"]
    for target, _value, met, shown in incremental_targets(inc):
        lines.append(f"| {target} | {shown} | {'yes' if met else ('–' if met is None else '**no**')} |")
    return lines
