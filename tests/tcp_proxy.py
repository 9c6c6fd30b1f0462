"""A TCP proxy on loopback that counts the connections a client opens through it.

Put between the app and a test server (SFTP, FTP's control connection, an HTTP endpoint), it tells how many
connections were opened in all and how many were open at once: a client that reads one file after another
over one connection never has more than one open; one that reads in parallel has several.  Each reply from
the server is held ``delay`` seconds, as over a real network, so that reads that overlap do overlap here too.
The first ``drop`` connections are closed as soon as they are accepted, before a byte is passed on (a server
restarting, a NAT or firewall cutting the connection): ``dropped`` counts them.
With ``stall_after=N``, once N bytes in all have gone from clients to the server, nothing more is passed on
either way, on any connection, old or new, until :meth:`close` (an endpoint that hangs mid-upload and stays
hung): each connection stays open and nothing is read from it, so a client's writes block once the
socket buffers are full.  ``stalled`` is set when that happens.  ``stall_down_after=N`` does the same once N
bytes in all have gone from the server to clients (a download that hangs half way).
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress


class CountingProxy:
    def __init__(
        self,
        port: int,
        upstream: tuple[str, int],
        delay: float = 0.02,
        drop: int = 0,
        stall_after: int | None = None,
        stall_down_after: int | None = None,
    ):
        self.upstream = upstream
        self.stall_after = stall_after
        self.stall_down_after = stall_down_after
        self.sent = 0  # bytes passed from clients to the server
        self.received = 0  # bytes passed from the server to clients
        self.stalled = threading.Event()
        self._released = threading.Event()
        self.delay = delay
        self.drop = drop
        self.dropped = 0
        self.opened = 0
        self.open_now = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = port
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def reset(self) -> None:
        with self._lock:
            self.opened = 0
            self.peak = self.open_now

    def close(self) -> None:
        self._closed = True
        self._released.set()
        with suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.dropped < self.drop:
                self.dropped += 1
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self.opened += 1
                self.open_now += 1
                self.peak = max(self.peak, self.open_now)
            ends = [client, server]
            done = threading.Event()
            threading.Thread(target=self._pipe, args=(client, server, 0, ends, done, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self.delay, ends, done), daemon=True).start()

    def _hold(self, upstream: bool, size: int) -> bool:
        """Whether this piece is held for good (``stall_after`` reached); counts what goes to the server."""
        if self.stall_after is None and self.stall_down_after is None:
            return False
        with self._lock:
            if not self.stalled.is_set():
                if upstream and (self.stall_after is None or self.sent + size <= self.stall_after):
                    self.sent += size
                    return False
                if not upstream and (self.stall_down_after is None or self.received + size <= self.stall_down_after):
                    self.received += size
                    return False
                self.stalled.set()
        if not self.stalled.is_set():
            return False
        self._released.wait()
        return True

    def _pipe(self, source, sink, delay: float, ends: list, done: threading.Event, upstream: bool = False) -> None:
        try:
            while True:
                if self.stalled.is_set() and self._hold(upstream, 0):
                    break
                data = source.recv(65536)
                if not data:
                    break
                if self._hold(upstream, len(data)):
                    break
                if delay:
                    time.sleep(delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            if not done.is_set():
                done.set()
                with self._lock:
                    self.open_now -= 1
            for end in ends:
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                with suppress(OSError):
                    end.close()
