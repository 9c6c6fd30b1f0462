"""Optional profiles of this app's backup and restore (``--profile``), with py-spy.

py-spy (``pip install -e '.[bench]'``) samples the ``manage.py`` process and
its children from outside, so the profiled run is the real command.  Each
profile is written as collapsed stacks (``*.folded``, for flamegraph tools and
speedscope) and summarised in a ``*.txt``: the functions where the samples
were (self) and the backup_app functions they passed through (inclusive).
The profiled runs are extra runs; they are not part of the timings.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_PREFIX = re.compile(r"\((?:[^()]*/(?:site-packages|lib/python3\.\d+)/|" + re.escape(f"{ROOT}/") + ")")


def available() -> bool:
    return shutil.which("py-spy") is not None


def record(argv: list[str], env: dict, cwd: Path, folded: Path, rate: int = 200) -> subprocess.CompletedProcess:
    """Run ``argv`` under ``py-spy record`` writing collapsed stacks to ``folded``."""
    return subprocess.run(
        ["py-spy", "record", "--rate", str(rate), "--subprocesses", "--format", "raw", "-o", str(folded), "--", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def summarize(folded: Path, top: int = 25) -> str:
    """Self and inclusive shares of the sampled functions in a collapsed-stacks file."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_PREFIX.sub("(", f) for f in stack.split(";") if not f.startswith("process ")]
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            own[frames[-1]] += n
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "Self (where the time was spent):"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines += ["", "Inclusive, backup_app functions:"]
    ours = [(f, n) for f, n in inclusive.most_common() if "backup_app/" in f]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in ours[:top]]
    return "\n".join(lines) + "\n"
