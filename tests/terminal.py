"""Run a command on a real pseudo-terminal and read its screen through a terminal emulator (pyte).

``run_on_pty`` gives the exit status and every screen the command drew (a snapshot each time output arrived),
so tests can check what an operator watching the terminal saw mid-run, not only the final text.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from dataclasses import dataclass, field

import pyte


@dataclass
class PtyRun:
    returncode: int
    screens: list[list[str]] = field(default_factory=list)  # each: the lines of the screen, right-stripped
    offsets: list[int] = field(default_factory=list)  # of each screen: bytes of output drawn so far
    raw: bytes = b""
    columns: int = 80
    lines: int = 24

    @property
    def final(self) -> str:
        return "\n".join(line for line in self.screens[-1] if line) if self.screens else ""

    def any_screen(self, predicate) -> list[str] | None:
        return next((s for s in self.screens if predicate("\n".join(s))), None)


def run_on_pty(
    argv: list[str],
    *,
    env: dict,
    cwd: str,
    columns: int = 110,
    lines: int = 30,
    answers: list[tuple] | None = None,
    timeout: float = 300,
) -> PtyRun:
    """Run ``argv`` with stdin, stdout and stderr on one pty of ``columns`` x ``lines``.

    ``answers``: (text, reply) pairs; when ``text`` shows on the screen, ``reply`` is typed (once each, in order).
    ``text`` may be a predicate of the screen's text instead, ``reply`` a function to call instead of typing.
    """
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    env = {**env, "COLUMNS": str(columns), "LINES": str(lines), "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)

    def controlling_terminal():  # a session of its own with the pty as its terminal, as a login shell has
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(  # noqa: PLW1509 - preexec_fn: the child must own the terminal before exec
        argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, preexec_fn=controlling_terminal
    )
    os.close(slave)
    screen = pyte.Screen(columns, lines)
    stream = pyte.ByteStream(screen)
    result = PtyRun(returncode=-1, columns=columns, lines=lines)
    drawn = 0
    pending = list(answers or [])
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the other side closed
                    data = b""
                if not data:
                    if proc.poll() is not None:
                        break
                    time.sleep(0.05)
                    continue
                chunks.append(data)
                drawn += len(data)
                stream.feed(data)
                result.screens.append([line.rstrip() for line in screen.display])
                result.offsets.append(drawn)
                text = "\n".join(screen.display)
                if pending and (pending[0][0](text) if callable(pending[0][0]) else pending[0][0] in text):
                    reply = pending.pop(0)[1]
                    if callable(reply):
                        reply()
                    else:
                        os.write(master, reply.encode())
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
    finally:
        result.returncode = proc.wait()
        os.close(master)
    result.raw = b"".join(chunks)
    return result


def screen_html(run: PtyRun, index: int, title: str = "") -> str:
    """Screen ``index`` of ``run`` as an HTML page (a dark terminal, the colours the command drew)."""
    import html

    screen = pyte.Screen(run.columns, run.lines)
    pyte.ByteStream(screen).feed(run.raw[: run.offsets[index]])
    named = {
        "default": "#d0d0d0",
        "black": "#1e1e1e",
        "red": "#e06c75",
        "green": "#98c379",
        "brown": "#e5c07b",
        "blue": "#61afef",
        "magenta": "#c678dd",
        "cyan": "#56b6c2",
        "white": "#e0e0e0",
    }
    rows = []
    used = max((y for y in range(run.lines) if screen.display[y].strip()), default=0) + 1
    for y in range(used):
        line = screen.buffer[y]
        cells = []
        for x in range(run.columns):
            char = line[x]
            fg = named.get(char.fg, f"#{char.fg}" if len(char.fg) == 6 else "#d0d0d0")
            weight = "bold" if char.bold else "normal"
            cells.append(f'<span style="color:{fg};font-weight:{weight}">{html.escape(char.data)}</span>')
        rows.append("".join(cells).rstrip())
    body = "\n".join(rows)
    return (
        "<!doctype html><meta charset=utf-8><body style='margin:0;background:#1e1e1e'>"
        f"<div style='padding:6px 12px;background:#333;color:#ccc;font:13px sans-serif'>{html.escape(title)}</div>"
        "<pre style='margin:0;padding:12px;font:14px/1.35 \"DejaVu Sans Mono\",monospace;color:#d0d0d0'>"
        f"{body}</pre></body>"
    )
