"""Wall time and peak memory of a command and every process it starts.

Two memory figures per command:

- ``peak_rss_tree``: the largest *sum* of the resident set sizes of the
  command's whole process tree (the command, its threads' children, their
  children...), sampled from ``/proc`` every ``interval`` seconds (20 ms).
  This is "peak RSS including child processes".  Shared pages (the Python
  interpreter's libraries) are counted once per process, so the sum is an
  upper bound; a child living less than one interval can be missed, and a
  fork that has not yet called exec is not counted (see :func:`tree_rss`).
- ``max_rss_single``: the largest RSS any single process of the tree reached,
  from the kernel: GNU time's ``%M`` (``ru_maxrss`` of the command and the
  children it waited for): exact, but blind to several processes being large
  at once.  The command runs under ``/usr/bin/time`` (not forked from this
  process, whose own size a forked child's ``ru_maxrss`` would inherit); the
  ``time`` process itself is left out of the tree sum.

Server processes (the PostgreSQL or MariaDB backend serving ``pg_dump``) are
not children of the command and are counted in neither.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
GNU_TIME = "/usr/bin/time"


@dataclass
class Measurement:
    """One timed command."""

    label: str
    argv: list[str]
    wall_s: float = 0.0
    peak_rss_tree: int = 0  # bytes
    max_rss_single: int = 0  # bytes
    cpu_s: float = 0.0  # user + system time of the command and every process it waited for
    samples: int = 0
    max_processes: int = 0
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    extra: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        data = asdict(self)
        data["stdout"] = data["stdout"][-2000:]
        data["stderr"] = data["stderr"][-2000:]
        return data


def _children(pid: int) -> list[int]:
    """Direct children of every thread of ``pid`` (``/proc/PID/task/TID/children``)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(x) for x in fh.read().split())
        except OSError:
            continue
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def tree_rss(root: int, include_root: bool = True) -> tuple[int, int]:
    """(sum of RSS over the process tree of ``root``, number of processes).

    A child still running its parent's command line is a fork that has not
    called exec yet: it shares its parent's pages (copy-on-write, or the same
    memory after vfork) and is not counted, or every fork of a big process
    would look like a second copy of it.
    """
    total, count, seen = 0, 0, set()
    stack: list[tuple[int, bytes | None]] = [(root, None)]
    while stack:
        pid, parent_cmdline = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        cmdline = _cmdline(pid)
        if parent_cmdline is not None and cmdline == parent_cmdline:
            continue
        rss = _rss(pid) if (include_root or pid != root) else 0
        if rss:
            total += rss
            count += 1
        stack.extend((child, cmdline) for child in _children(pid))
    return total, count


class _Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True, name=f"rss-sampler-{pid}")
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.max_processes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            total, count = tree_rss(self.pid, include_root=False)
            self.samples += 1
            self.peak = max(self.peak, total)
            self.max_processes = max(self.max_processes, count)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_measured(
    label: str,
    argv: list[str],
    *,
    env: dict | None = None,
    cwd: str | Path | None = None,
    interval: float = 0.02,
    stdout_file: Path | None = None,
    check: bool = True,
    timeout: float = 3600,
    sync: bool = True,
    prepare: Callable[[], None] | None = None,
) -> Measurement:
    """Run ``argv`` to the end with no standard input; time it and sample its memory.

    ``prepare`` runs first (untimed; e.g. a database checkpoint); then, with
    ``sync`` (the default), dirty pages of earlier steps are written out, so
    their write-back does not run during this step.

    ``stdout_file``: send standard output there (a dump) instead of capturing it.
    A non-zero exit raises :class:`RuntimeError` with the end of stderr when ``check``.
    """
    m = Measurement(label=label, argv=[str(a) for a in argv])
    out_handle = open(stdout_file, "wb") if stdout_file else subprocess.PIPE  # noqa: SIM115
    rss_file = tempfile.NamedTemporaryFile(prefix="bench-time-", suffix=".txt", delete=False)  # noqa: SIM115
    rss_file.close()
    if prepare is not None:
        prepare()
    if sync:
        os.sync()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [GNU_TIME, "-q", "-f", "%M", "-o", rss_file.name, *m.argv],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=out_handle,
        stderr=subprocess.PIPE,
    )
    sampler = _Sampler(proc.pid, interval)
    sampler.start()
    # Read the pipes in threads so a chatty command never blocks; reap with wait4 for ru_maxrss.
    captured: dict[str, bytes] = {}

    def drain(name: str, pipe) -> None:
        captured[name] = pipe.read() if pipe is not None else b""

    readers = [threading.Thread(target=drain, args=("stderr", proc.stderr), daemon=True)]
    if stdout_file is None:
        readers.append(threading.Thread(target=drain, args=("stdout", proc.stdout), daemon=True))
    for r in readers:
        r.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    _pid, status, rusage = os.wait4(proc.pid, 0)
    killer.cancel()
    m.wall_s = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop()
    for r in readers:
        r.join()
    if stdout_file:
        out_handle.close()
    m.returncode = proc.returncode
    # GNU time waits for the command, which waits for its children: the rusage of `time` covers the whole tree.
    m.cpu_s = rusage.ru_utime + rusage.ru_stime
    m.peak_rss_tree = sampler.peak
    m.samples = sampler.samples
    m.max_processes = sampler.max_processes
    try:
        m.max_rss_single = int(Path(rss_file.name).read_text().split()[-1]) * 1024
    except (OSError, ValueError, IndexError):
        m.max_rss_single = 0
    finally:
        os.unlink(rss_file.name)
    m.stdout = captured.get("stdout", b"").decode(errors="replace")
    m.stderr = captured.get("stderr", b"").decode(errors="replace")
    if check and m.returncode != 0:
        raise RuntimeError(f"{label}: {' '.join(m.argv)} exited {m.returncode}:\n{m.stderr[-3000:]}")
    return m


def combine(label: str, parts: list[Measurement]) -> Measurement:
    """Several commands run one after the other, as one step: times add, memory peaks take the max."""
    m = Measurement(label=label, argv=[" ; ".join(" ".join(p.argv) for p in parts)])
    m.wall_s = sum(p.wall_s for p in parts)
    m.cpu_s = sum(p.cpu_s for p in parts)
    m.peak_rss_tree = max((p.peak_rss_tree for p in parts), default=0)
    m.max_rss_single = max((p.max_rss_single for p in parts), default=0)
    m.samples = sum(p.samples for p in parts)
    m.max_processes = max((p.max_processes for p in parts), default=0)
    m.extra["steps"] = [
        {
            "label": p.label,
            "wall_s": p.wall_s,
            "cpu_s": p.cpu_s,
            "peak_rss_tree": p.peak_rss_tree,
            "max_rss_single": p.max_rss_single,
        }
        for p in parts
    ]
    return m
