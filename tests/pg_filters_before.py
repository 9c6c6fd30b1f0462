"""The plain-dump filters as they were before they read COPY rows and plain lines by the block (``6e805b8``):
the reference ``test_pg_filters.py`` compares the fast ones with, line by line, on random and hostile input.

Copied as they were (only renamed); not used by the product.
"""

from __future__ import annotations

import io
import re
import secrets

from backup_app.engines.postgresql_owners import Held


class FilteredReader(io.RawIOBase):
    BLOCK = 1 << 20

    def __init__(self, stream, out: bytes = b""):
        self._stream = stream
        self._out = bytearray(out)
        self._eof = False

    def readable(self) -> bool:
        return True

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._out) < size):
            data = self._stream.read(self.BLOCK)
            if not data:
                self._eof = True
                self._finish()
                break
            self._feed(data)
        if size < 0 or size >= len(self._out):
            data, self._out = bytes(self._out), bytearray()
        else:
            data, self._out = bytes(self._out[:size]), self._out[size:]
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class RestrictedSqlBefore(FilteredReader):
    """A plain SQL dump for ``psql``, which runs any meta-command it meets (``\\! cmd`` is a shell command).

    It starts with ``\\restrict KEY`` (psql 15.14 and later), KEY random to this run: from there psql refuses
    every meta-command but ``\\unrestrict KEY``, which no file can know.  pg_dump writes its own
    ``\\restrict K`` at the top and ``\\unrestrict K`` at the end: those lines are left out (they would be
    refused); every other byte passes unchanged, in bounded memory.
    """

    _LINE = re.compile(rb"\\(restrict|unrestrict) ([A-Za-z0-9]+)\r?\n?")
    _LONGEST = 256  # a line starting with a backslash is held back this far to be judged

    def __init__(self, stream):
        super().__init__(stream, b"\\restrict " + secrets.token_hex(24).encode() + b"\n")
        self._keys: set[bytes] = set()
        self._held: bytearray | None = None
        self._line_start = True

    def _judge(self, line: bytes) -> bytes:
        match = self._LINE.fullmatch(line)
        if match is None:
            return line
        if match.group(1) == b"restrict":
            self._keys.add(match.group(2))
            return b""
        return b"" if match.group(2) in self._keys else line

    def _feed(self, data: bytes) -> None:
        out, pos = self._out, 0
        while pos < len(data):
            if self._held is not None:
                nl = data.find(b"\n", pos)
                end = len(data) if nl < 0 else nl + 1
                self._held += data[pos:end]
                pos = end
                if nl >= 0:
                    out += self._judge(bytes(self._held))
                    self._held, self._line_start = None, True
                elif len(self._held) > self._LONGEST:
                    out += self._held
                    self._held, self._line_start = None, False
                continue
            if self._line_start and data[pos : pos + 1] == b"\\":
                self._held = bytearray()
                continue
            nl = data.find(b"\n", pos)
            end = len(data) if nl < 0 else nl + 1
            out += data[pos:end]
            pos, self._line_start = end, nl >= 0

    def _finish(self) -> None:
        if self._held is not None:
            self._out += self._judge(bytes(self._held))
            self._held = None


class HeldStatementsBefore(FilteredReader):
    """A plain SQL dump with its ``ALTER ... OWNER TO``, ``ALTER DEFAULT PRIVILEGES`` and ``COMMENT ON
    EXTENSION`` statements taken out (into :class:`Held`), every other byte passed on as it came.

    A statement is taken only where pg_dump writes one: a whole line at the start of a statement, outside
    strings, quoted names, dollar quotes, comments and ``COPY ... FROM stdin`` data, so a row or a function
    body holding such text passes unchanged.  Nothing taken runs as it is written (:func:`give_back`).
    """

    _LONGEST = 8192
    _TOKENS = re.compile(rb"'|\"|\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$|--|/\*|;|[^\s'\"$;/-]")

    def __init__(self, stream, held: Held):
        super().__init__(stream)
        self.held = held
        self._buf = b""
        self._copy = False
        self._state: bytes | None = None  # b"'", b'"', a dollar quote, b"/*"
        self._depth = 0  # nested /* */
        self._start = True  # at the start of a statement

    def _scan(self, line: bytes) -> None:
        """Follow ``line``'s quotes and comments; note where statements end."""
        pos, n = 0, len(line)
        while pos < n:
            state = self._state
            if state is None:
                match = self._TOKENS.search(line, pos)
                if match is None:
                    return
                token, pos = match.group(), match.end()
                if token == b"--":
                    return
                if token == b";":
                    self._start = True
                    continue
                self._start = False
                if token in (b"'", b'"') or token.startswith(b"$"):
                    self._state = token
                elif token == b"/*":
                    self._state, self._depth = b"/*", 1
            elif state == b"/*":
                opens, closes = line.find(b"/*", pos), line.find(b"*/", pos)
                if closes < 0:
                    return
                if 0 <= opens < closes:
                    self._depth += 1
                    pos = opens + 2
                    continue
                self._depth -= 1
                pos = closes + 2
                if self._depth == 0:
                    self._state = None
            else:
                end = line.find(state, pos)
                if end < 0:
                    return
                if state in (b"'", b'"') and line[end + 1 : end + 2] == state:
                    pos = end + 2  # a doubled quote
                    continue
                pos = end + len(state)
                self._state = None

    def _line(self, line: bytes) -> None:
        if self._copy:
            if line.rstrip(b"\r\n") == b"\\.":
                self._copy = False
            self._out += line
            return
        if self._start and self._state is None and len(line) <= self._LONGEST:
            if line.startswith((b"ALTER ", b"COMMENT ON EXTENSION ", b"DROP EXTENSION IF EXISTS ")):
                text = line.decode("utf-8", errors="replace")
                if self.held.take(text):
                    return
        was_start = self._start and self._state is None
        self._scan(line)
        self._out += line
        if was_start and self._start and re.fullmatch(rb"COPY .* FROM stdin;\r?\n?", line, re.IGNORECASE):
            self._copy = True

    def _feed(self, data: bytes) -> None:
        data, pos = self._buf + data, 0
        while True:
            if self._copy and not data.startswith(b"\\.", pos):
                # Rows: straight on to the line that ends them (pos is at the start of a line).
                end = data.find(b"\n\\.", pos)
                if end < 0:
                    last = data.rfind(b"\n", pos) + 1
                    if last > pos:
                        self._out += data[pos:last]
                        pos = last
                    self._buf = data[pos:]
                    return
                self._out += data[pos : end + 1]
                pos = end + 1
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._buf = data[pos:]
                return
            self._line(data[pos : nl + 1])
            pos = nl + 1

    def _finish(self) -> None:
        if self._buf:
            buf, self._buf = self._buf, b""
            if self._copy:
                self._out += buf
            else:
                self._line(buf)
