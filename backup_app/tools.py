"""Run the external tools (pg_dump, pg_restore, mariadb-dump, mariadb, gpg) one way.

- the command is an argv list, never a shell line;
- stdin and stdout stream (:func:`run_to` copies the tool's output into a stream, :func:`run_from` feeds a
  stream to it, :func:`start` leaves both pipes to the caller);
- stderr is kept in an unnamed temporary file and, on failure, its last lines become a one-line error that
  names the tool, with every known secret masked;
- a secret the tool needs in a file (the ``[client]`` option file of MariaDB, a gpg passphrase) goes through
  a pipe the child inherits (:class:`SecretPipe`, read as ``/dev/fd/N``): never on the command line, never
  in a file a killed process could leave behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import BinaryIO

from .errors import BackupAppError
from .secrets import redact
from .streams import CHUNK, pump

#: A secret is written into its pipe before the tool starts; the pipe holds this much without a reader.
SECRET_MAX = 60 * 1024


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (another user's counts): whose leftovers are stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # A zombie has ended (only its exit status waits to be collected, e.g. under a container's PID 1 that is slow to
    # reap, or none): it writes nothing any more.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def boot_id() -> str:
    """This boot of this machine (Linux), or "" where it cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """This process's PID namespace (Linux: the inode of ``/proc/self/ns/pid``), or "" where it cannot be read.

    Containers on one machine share its boot id, and those started with one ``--hostname`` (compose
    ``hostname:``) its host name too; only this tells their pids apart: pid 1 of one is not pid 1 of another,
    and a pid missing here may run there."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except (OSError, ValueError):
        return ""


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, Linux), or None."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    try:
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def owner() -> dict:
    """Who this process is, for a marker a later run must judge: host, pid, boot id, PID namespace and start
    time."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "boot_id": boot_id(),
        "pid_ns": pid_namespace(),
        "start": start_ticks(pid),
    }


def owner_gone(found: dict | None) -> bool | None:
    """Whether the process a marker names has ended: True, False, or None (cannot tell: another host, or
    another PID namespace of this host and boot, such as a container beside this one with the same host name).

    The same pid after a reboot, or a pid reused by a newer process (another start time), counts as gone.
    A marker without a namespace (earlier versions, or no ``/proc``) is judged by host, boot and pid alone.
    """
    if not found or not isinstance(found.get("pid"), int):
        return None
    if found.get("host") and found["host"] != socket.gethostname():
        return None
    if found.get("boot_id") and boot_id() and found["boot_id"] != boot_id():
        return True
    if found.get("pid_ns") and pid_namespace() and found["pid_ns"] != pid_namespace():
        return None
    if not process_exists(found["pid"]):
        return True
    start = found.get("start")
    return start is not None and start_ticks(found["pid"]) not in (None, start)


#: A scratch name's owner (:func:`owner_tag`): ``h``, 4 hex of the host name, 3 hex of the boot id, then (where
#: the PID namespace can be read) ``n`` and 4 hex of it; earlier versions wrote the first 8 characters only.
OWNER_TAG = re.compile(r"h[0-9a-f]{7}(n[0-9a-f]{4})?")


def _short(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def owner_tag() -> str:
    """Which host, boot and PID namespace this process runs in, short enough for a PostgreSQL name (13
    characters; 8 without a namespace).

    Scratch names carry it after their pid (``..._<pid>_<tag>_...``): containers over one database or one data
    volume have PID namespaces of their own, and may have one host name, so a pid alone cannot tell a running run
    of another container from a dead one of this one (:func:`scratch_gone`)."""
    namespace = pid_namespace()
    tag = f"h{_short(socket.gethostname(), 4)}{_short(boot_id(), 3)}"
    return tag + f"n{_short(namespace, 4)}" if namespace else tag


def scratch_gone(rest: str, sep: str) -> bool:
    """Whether the run that made a scratch name has ended; ``rest`` is the name after its prefix
    (``<pid><sep><tag><sep>...``, or ``<pid><sep>...`` as earlier versions named it).

    Another host's name (another tag's host part): False, its own host cleans it.  This host's from an older
    boot: True.  This boot's from another PID namespace (a container beside this one, or this container before
    it was started again): False, that pid cannot be looked at from here; the next boot's runs clean it.  This
    host, boot and namespace, or a name without a tag or without a namespace: whether the pid is gone here."""
    parts = rest.split(sep)
    if not parts[0].isdigit():
        return False
    if len(parts) > 1 and OWNER_TAG.fullmatch(parts[1]):
        tag, mine = parts[1], owner_tag()
        if tag[:5] != mine[:5]:
            return False
        if tag[5:8] != mine[5:8] and boot_id():
            return True
        if len(tag) > 8 and len(mine) > 8 and tag[8:] != mine[8:]:
            return False
    return not process_exists(int(parts[0]))


class SecretPipe:
    """``text`` in a pipe, for a child process to read as the file :attr:`path` (``/dev/fd/N``) or from
    descriptor :attr:`fd`.  The text is written and the write end closed at once; nothing touches a disk.
    """

    def __init__(self, text: str):
        data = text.encode()
        if len(data) > SECRET_MAX:
            raise ValueError(f"a secret of {len(data)} bytes does not fit in a pipe")
        self.fd, write_end = os.pipe()
        try:
            os.write(write_end, data)
        finally:
            os.close(write_end)

    @property
    def path(self) -> str:
        return f"/dev/fd/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            with suppress(OSError):
                os.close(self.fd)
            self.fd = -1


@dataclass
class Tool:
    """One run of an external program.

    ``name`` is what errors call it (``pg_dump``, not a prefix such as ``nice``); ``missing_hint`` says
    what to install when ``argv[0]`` is not found; ``error`` is the exception class raised (a
    :class:`~backup_app.errors.BackupAppError`: BackupError for a backup, RestoreError for a restore; or
    django-dbbackup's ``CommandConnectorError`` under its own commands).
    ``secrets`` are inherited by the child and closed here once it has started.
    """

    argv: list[str]
    name: str
    env: dict[str, str] | None = None
    secrets: Sequence[SecretPipe] = field(default_factory=tuple)
    error: type[Exception] = BackupAppError
    missing_hint: str = ""


class Running:
    """A started :class:`Tool`: ``stdin`` / ``stdout`` are its pipes (where asked for), ``proc`` the process."""

    def __init__(self, tool: Tool, *, stdin, stdout):
        self.tool = tool
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                tool.argv,
                stdin=stdin,
                stdout=stdout,
                stderr=self._stderr,
                env=tool.env,
                pass_fds=tuple(s.fd for s in tool.secrets),
            )
        except FileNotFoundError:
            self._stderr.close()
            hint = f"; {tool.missing_hint}" if tool.missing_hint else ""
            raise tool.error(f"{tool.argv[0]} is not installed{hint}") from None
        finally:
            for secret in tool.secrets:
                secret.close()
        self.stdin: BinaryIO | None = self.proc.stdin
        self.stdout: BinaryIO | None = self.proc.stdout

    def wait(self) -> int:
        return self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def error_text(self) -> str:
        """The first error line of stderr and the two after it (else its last three lines) on one line, secrets
        masked (or the exit status): the SQL a tool quotes after its error does not push the error out."""
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        first = next((i for i, ln in enumerate(lines) if "ERROR" in ln or "error:" in ln), None)
        shown = lines[first : first + 3] if first is not None else lines[-3:]
        return redact("; ".join(shown)) or f"exit status {self.proc.returncode}"

    def check(self, *, broken: bool = False) -> None:
        """Raise the tool's error if it failed (non-zero exit, or ``broken``: it stopped reading its input)."""
        try:
            if self.proc.returncode or broken:
                raise self.tool.error(f"{self.tool.name} failed (exit {self.proc.returncode}): {self.error_text()}")
        finally:
            self._stderr.close()


def start(tool: Tool, *, stdin=subprocess.PIPE, stdout=subprocess.PIPE) -> Running:
    """Start ``tool``; the caller reads and writes its pipes, then calls ``wait()`` and ``check()``."""
    return Running(tool, stdin=stdin, stdout=stdout)


def run_to(tool: Tool, out: BinaryIO) -> None:
    """Run ``tool``, copying its stdout into ``out`` as it comes; raises ``tool.error`` if it fails."""
    running = Running(tool, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        pump(running.stdout, out)
    except BaseException:
        running.kill()  # cut short (a full disk, SIGTERM): the tool must not run on
        raise
    finally:
        running.stdout.close()
        running.wait()
    running.check()


def run_chain(first: Tool, stream: BinaryIO, second: Tool, *, after: bytes, insert: bytes, through=None) -> None:
    """``first < stream | second``, with ``insert`` put into the pipe after the first line that is ``after``;
    ``through``: a function wrapping the rest of ``first``'s output in a reader (a filter) on its way to ``second``.

    ``stream`` is a file.  ``second`` gets ``first``'s output only as far as ``first`` wrote it: if ``first``
    fails, ``second``'s input just ends (a script whose COMMIT never came is rolled back).  Raises the error
    of ``second`` if it stopped reading, else ``first``'s if it failed or never wrote the line ``after``, else
    ``second``'s if it failed.
    """
    head = Running(first, stdin=stream, stdout=subprocess.PIPE)
    try:
        tail = Running(second, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    except BaseException:
        head.kill()
        raise
    found = broken = False
    try:
        try:
            while line := head.stdout.readline():
                tail.stdin.write(line)
                if line.rstrip(b"\r\n") == after:
                    tail.stdin.write(insert)
                    found = True
                    break
            if found:
                pump(through(head.stdout) if through else head.stdout, tail.stdin)
        except BrokenPipeError:
            broken = True
            head.kill()
    finally:
        head.stdout.close()
        head.wait()
        with suppress(BrokenPipeError):
            tail.stdin.close()  # only now: a failed first's script ends short of its COMMIT
        tail.wait()
    errors = []
    for running, stopped in ((tail, True), (head, False)) if broken else ((head, False), (tail, False)):
        try:
            running.check(broken=stopped)
        except Exception as err:  # the tool's own error class
            errors.append(err)
    if errors:
        raise errors[0]
    if not found:
        raise first.error(f"{first.name} wrote no {after.decode()!r} line; nothing was loaded")


def run_from(tool: Tool, stream: BinaryIO) -> None:
    """Run ``tool``, feeding ``stream`` to its stdin; raises ``tool.error`` if it fails or stops reading."""
    running = Running(tool, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    broken = False
    try:
        while data := stream.read(CHUNK):
            running.stdin.write(data)
    except BrokenPipeError:
        broken = True
    except BaseException:
        running.kill()  # cut short: a tool given half a dump must not go on to commit it
        raise
    finally:
        with suppress(BrokenPipeError):
            running.stdin.close()
        running.wait()
    running.check(broken=broken)
