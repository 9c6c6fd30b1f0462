"""Micro-benchmark of backup_app's gzip writer: ``python -m bench.gzip_writer [RUNS]``.

200 MiB of media-like input (files of 1 MiB, alternately random and text) written in 128 KiB pieces, as the
media tar writer does, into a sink that only counts: once with the random files in stored blocks (what a
backup does), once compressing everything, and once as two streams in two threads (a database dump and a
media archive written at the same time).  Prints the minimum wall time and the median CPU time of each.
"""

from __future__ import annotations

import random
import statistics
import sys
import threading
import time

from backup_app.pipeline import GzipWriter, incompressible
from backup_app.streams import CHUNK

FILE = 1024 * 1024
TOTAL = 200 * 1024 * 1024

_rnd = random.Random(1)
RANDOM = _rnd.randbytes(8 * FILE)
_WORDS = [b"resistor", b"capacitor", b"0603", b"10k", b"qty", b"part", b"supplier", b"stock", b"location", b"\n"]
TEXT = b" ".join(_rnd.choice(_WORDS) + str(_rnd.randrange(10000)).encode() for _ in range(2_000_000))[: 8 * FILE]


class Sink:
    def __init__(self):
        self.size = 0

    def write(self, data) -> int:
        self.size += len(data)
        return len(data)


def feed(total: int, stored: bool) -> int:
    sink = Sink()
    writer = GzipWriter(sink)
    for index in range(total // FILE):
        source = RANDOM if index % 2 else TEXT
        start = (index * FILE) % (len(source) - FILE)
        write = writer.write_stored if stored and incompressible(source[start : start + CHUNK]) else writer.write
        for offset in range(start, start + FILE, CHUNK):
            write(memoryview(source)[offset : offset + CHUNK])
    writer.close()
    return sink.size


def measure(label: str, stored: bool, threads: int, runs: int) -> None:
    walls, cpus, size = [], [], 0
    for _ in range(runs):
        sizes: list[int] = []
        t0, c0 = time.perf_counter(), time.process_time()
        workers = [
            threading.Thread(target=lambda out=sizes: out.append(feed(TOTAL // threads, stored)))
            for _ in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        size = sum(sizes)
    print(
        f"{label:32} wall min {min(walls):.3f} s  cpu median {statistics.median(cpus):.3f} s  "
        f"{TOTAL / min(walls) / 1e6:.0f} MB/s  output {size / 1e6:.1f} MB"
    )


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    measure("stored blocks for random files", True, 1, runs)
    measure("everything compressed", False, 1, runs)
    measure("two streams, two threads", True, 2, runs)


if __name__ == "__main__":
    main()
