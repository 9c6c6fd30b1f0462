"""Streaming I/O between a producer, compression, GPG, SHA-256 and a Django storage.

Backup:  producer -> compressor -> [gpg --encrypt] -> sha256/size -> storage.save
Restore: storage.open -> sha256/size -> [gpg --decrypt] -> decompressor -> consumer

Nothing here holds a whole file in memory or writes a second copy to disk:
the producer runs in a thread writing into an OS pipe while the storage reads
the other end in chunks.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import gnupg

from . import hints
from .errors import BackupError, RestoreError
from .secrets import redact
from .settings import app_settings
from .streams import CHUNK, ChunkedFile, HashingReader, ShieldedWriter
from .tools import owner_tag, scratch_gone

#: Bytes of a file that :func:`incompressible` looks at.
PROBE = 16 * 1024

#: Compression name -> filename suffix.
SUFFIX = {"gzip": ".gz", "zstd": ".zst", "none": ""}
SUFFIX_TO_COMPRESSION = {".gz": "gzip", ".zst": "zstd"}


@dataclass(frozen=True)
class GpgSpec:
    """How to run gpg: its home (None = gpg's default) and, for decryption, a passphrase."""

    home: str | None = None
    recipient: str | None = None
    passphrase: str | None = None

    @classmethod
    def for_encryption(cls) -> GpgSpec:
        """The GnuPG home and recipient configured; BackupError without a recipient."""
        recipient = app_settings.gpg_recipient
        if not recipient:
            variable = app_settings.env_name("backup_gpg_recipient")
            raise BackupError(f"--encrypt needs a GPG recipient; set {variable} (backup_gpg_recipient)")
        return cls(home=app_settings.gpg_home, recipient=recipient)

    @classmethod
    def for_decryption(cls) -> GpgSpec:
        """The GnuPG home and the passphrase of ``backup_gpg_passphrase_file`` or ``backup_gpg_passphrase``."""
        passphrase = app_settings.gpg_passphrase
        passphrase_file = app_settings.gpg_passphrase_file
        if passphrase_file:
            try:
                passphrase = Path(passphrase_file).read_text().rstrip("\r\n")
            except OSError as err:
                raise RestoreError(
                    f"backup_gpg_passphrase_file {passphrase_file}: cannot read it ({err.strerror})"
                ) from None
        return cls(home=app_settings.gpg_home, passphrase=passphrase)


@dataclass
class StoredFile:
    """What was written: storage name, stored size and SHA-256 of the stored bytes."""

    name: str
    size: int
    sha256: str


class GzipWriter:
    """A single-member gzip stream (RFC 1952) over ISA-L's raw deflate, with stored passages.

    ISA-L writes standard deflate (stock ``-z`` restores it, GNU gzip reads it) several times faster than
    zlib -9.  Input goes through one ``isal_zlib.compressobj`` for the whole stream.

    :meth:`write_stored` puts bytes known not to compress (a JPEG, a ZIP) into stored blocks: a full flush
    first ends the compressed part on a byte boundary with nothing later referring back across it, then
    64 KiB blocks are copied as they are, which costs a CRC instead of a futile compression pass (measured
    on 100 MiB of random bytes in 200 MiB of mixed input: 0.15 CPU s less, and 1 % smaller output, than
    compressing them).  Closing does not close ``raw``.
    """

    _HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, OS unknown
    _STORED_MAX = 0xFFFF

    def __init__(self, raw: BinaryIO, level: int = 2):
        from isal import isal_zlib

        self._zlib = isal_zlib
        self._raw = raw
        self._deflate = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
        self._unflushed = False  # compressed input since the last flush
        self._crc = 0
        self._size = 0
        self.closed = False
        raw.write(self._HEADER)

    def write(self, data) -> int:
        n = len(data)
        if not n:
            return 0
        self._crc = self._zlib.crc32(data, self._crc)
        self._size += n
        out = self._deflate.compress(data)
        if out:
            self._raw.write(out)
        self._unflushed = True
        return n

    def write_stored(self, data) -> int:
        view = memoryview(data).cast("B")
        if not view:
            return 0
        if self._unflushed:
            # Byte-aligned, and the compressor's history reset: what follows may not refer back across stored bytes.
            self._raw.write(self._deflate.flush(self._zlib.Z_FULL_FLUSH))
            self._unflushed = False
        self._crc = self._zlib.crc32(view, self._crc)
        self._size += len(view)
        for offset in range(0, len(view), self._STORED_MAX):
            block = view[offset : offset + self._STORED_MAX]
            # BFINAL=0, BTYPE=00 in a byte of its own (the stream is byte-aligned here), then LEN and NLEN.
            self._raw.write(b"\x00" + struct.pack("<HH", len(block), len(block) ^ 0xFFFF))
            self._raw.write(block)
        return len(view)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._raw.write(self._deflate.flush(self._zlib.Z_FINISH))  # what is left, and the final block
        self._raw.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))


def incompressible(sample) -> bool:
    """Whether bytes like ``sample`` are not worth compressing (already compressed, encrypted, random).

    ISA-L's level 0 (Huffman coding with a small match table) costs a few microseconds for 16 KiB and
    leaves such data at least as large as it was, while text and database pages shrink by a third or more.
    """
    from isal import isal_zlib

    probe = bytes(memoryview(sample)[:PROBE])
    return len(probe) >= 4096 and len(isal_zlib.compress(probe, 0, -15)) >= len(probe)


def compressor(kind: str, raw: BinaryIO):
    """A writable stream compressing into ``raw``; closing it does not close ``raw``.

    A gzip stream also has ``write_stored(data)`` for bytes that :func:`incompressible` says would not shrink.
    """
    if kind == "gzip":
        return GzipWriter(raw)
    if kind == "zstd":
        import zstandard

        # Single-threaded: zstd's worker threads doubled the peak memory (256 MiB on the 0.5 GB benchmark).
        return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
    if kind == "none":
        return ShieldedWriter(raw)
    raise BackupError(f"unknown compression {kind!r}; use gzip, zstd or none")


def decompressor(kind: str | None, raw: BinaryIO):
    """A readable stream giving the decompressed content of ``raw``."""
    if kind == "gzip":
        from isal import igzip

        return igzip.IGzipFile(fileobj=raw, mode="rb")
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
    return raw


#: Private GnuPG homes of decryptions are called ``bk-gpg-<pid>-<owner tag>-<random>``
#: (:func:`~backup_app.tools.owner_tag`: a ``/tmp`` shared by containers of one host name holds other pids too).
PRIVATE_HOME_PREFIX = "bk-gpg-"
#: The agent of a private home caches no passphrase, not even for a second.
_AGENT_CONF = "default-cache-ttl 0\nmax-cache-ttl 0\nallow-loopback-pinentry\n"
#: What a private home borrows from the real one (those that exist), as symbolic links: the keys, not the agent.
_BORROWED = ("pubring.kbx", "pubring.gpg", "trustdb.gpg", "private-keys-v1.d", "secring.gpg")
#: A gpg-agent socket path (``<base>/bk-gpg-<pid>-<tag>-<random>/S.gpg-agent.browser``, at most 61 bytes after
#: the base) must fit in 107 bytes.
_BASE_MAX = 46


def _private_base() -> Path:
    base = Path(tempfile.gettempdir())
    return base if len(str(base)) <= _BASE_MAX else Path("/tmp")


def _stop_home(path: Path) -> None:
    """Stop the gpg-agent of a private home (if one runs) and remove the home."""
    with suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["gpgconf", "--homedir", str(path), "--kill", "gpg-agent"], capture_output=True, timeout=30)
    shutil.rmtree(path, ignore_errors=True)


def remove_stale_homes() -> list[Path]:
    """Stop and remove the private homes of runs that ended without cleaning up (killed); returns them."""
    gone = []
    for path in _private_base().glob(f"{PRIVATE_HOME_PREFIX}*"):
        try:
            mine = path.is_dir() and path.lstat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and scratch_gone(path.name[len(PRIVATE_HOME_PREFIX) :], "-"):
            _stop_home(path)
            gone.append(path)
    return gone


class PrivateHome:
    """A short-lived GnuPG home for one decryption: the keys of ``home`` (linked), an agent of its own that
    caches no passphrase (TTL 0), stopped and removed by :meth:`close`.

    gpg hands secret-key work to the agent of its home, which otherwise keeps the passphrase it was given:
    after one restore with the passphrase, the next would succeed without it; the admin's own agent would
    serve a restore too.  In a private home neither happens.  A killed run's home is removed by the next
    decryption (:func:`remove_stale_homes`).  Encryption needs only the public key and no agent: it runs in
    ``home`` itself.
    """

    def __init__(self, home: str | None):
        remove_stale_homes()
        real = Path(home) if home else Path(os.environ.get("GNUPGHOME") or Path.home() / ".gnupg")
        prefix = f"{PRIVATE_HOME_PREFIX}{os.getpid()}-{owner_tag()}-"
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=_private_base()))
        try:
            for name in _BORROWED:
                if (real / name).exists():
                    (self.path / name).symlink_to((real / name).absolute())
            (self.path / "gpg-agent.conf").write_text(_AGENT_CONF)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        _stop_home(self.path)


class _Outcome(gnupg.Crypt):
    """python-gnupg's result of an encryption or decryption, also left on the :class:`_GPG` that made it: when
    gpg stops reading its input early (a wrong key), ``encrypt_file``/``decrypt_file`` raise the broken pipe
    instead of returning it, and its status and stderr are what explain the failure."""

    def __init__(self, gpg):
        super().__init__(gpg)
        gpg.outcome = self


#: python-gnupg's own log lines about a failed run: the error this module raises says it in one line with the fix,
#: so on a site whose root logger has a console handler they would only stand next to it (a traceback, too).
_REPORTED_BY_US = (
    "gpg returned a non-zero error code: %d",
    "Error sending data",
    "Exception occurred while reading",
)


def _not_reported_by_us(record: logging.LogRecord) -> bool:
    return record.msg not in _REPORTED_BY_US


logging.getLogger("gnupg").addFilter(_not_reported_by_us)


class _GPG(gnupg.GPG):
    """python-gnupg's ``GPG`` that streams: input read :data:`CHUNK` bytes at a time, output handed to
    ``on_data`` chunk by chunk and not kept (bounded memory), the gpg process kept so that a run cut short
    can stop it."""

    buffer_size = CHUNK
    result_map = {**gnupg.GPG.result_map, "crypt": _Outcome}
    outcome: _Outcome | None = None
    process = None

    def _open_subprocess(self, args, passphrase=False):
        self.process = super()._open_subprocess(args, passphrase)
        return self.process


class _Aborted(Exception):
    """Raised into python-gnupg's input thread when a run is cut short, so that it closes gpg's input."""


class GpgRun:
    """One python-gnupg ``encrypt_file`` or ``decrypt_file`` in a thread of its own: it reads ``source``, and
    its output comes out of :attr:`stdout` (a pipe), so that gpg sits in the stream like any filter.

    python-gnupg passes a passphrase on gpg's stdin (``--passphrase-fd 0``, before the data): never on the
    command line, in the environment or in a file.  :meth:`close` stops a run cut short (gpg killed) and
    waits for the thread.
    """

    def __init__(self, gpg: _GPG, call: Callable[[BinaryIO], object], source: BinaryIO, name: str):
        self.gpg = gpg
        self.error: BaseException | None = None
        self.output_ended = False
        self._aborted = threading.Event()
        self._source = source
        read_fd, write_fd = os.pipe()
        with suppress(OSError, AttributeError):
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1024 * 1024)
        self.stdout = open(read_fd, "rb", buffering=0)  # noqa: SIM115 - closed by the reader
        self._sink = open(write_fd, "wb", buffering=0)  # noqa: SIM115 - closed at gpg's end of output
        gpg.on_data = self._on_data
        self._thread = threading.Thread(target=self._run, args=(call,), name=f"gpg:{name}", daemon=True)
        self._thread.start()

    def _on_data(self, data: bytes) -> bool:
        if not data:  # gpg's output ended
            self.output_ended = True
            with suppress(OSError):
                self._sink.close()
        elif not self._aborted.is_set():
            try:
                view = memoryview(data)
                while view:
                    view = view[self._sink.write(view) :]
            except OSError:  # the reader went away: drop the rest and let gpg end
                self._aborted.set()
        return False  # python-gnupg keeps nothing

    def read(self, size: int = CHUNK) -> bytes:
        """What python-gnupg's input thread reads: ``source``, unless the run was cut short."""
        if self._aborted.is_set():
            raise _Aborted()
        return self._source.read(size)

    def _run(self, call) -> None:
        try:
            call(self)
        except BaseException as err:  # judged by the caller, with gpg's own status
            self.error = err
        finally:
            with suppress(OSError):
                self._sink.close()

    def abort(self) -> None:
        self._aborted.set()
        process = self.gpg.process
        if process is not None and process.poll() is None:
            with suppress(OSError):
                process.kill()

    def join(self) -> None:
        self._thread.join()

    @property
    def failed(self) -> bool:
        outcome = self.gpg.outcome
        return self.error is not None or outcome is None or not outcome.ok or outcome.returncode != 0

    def reason(self) -> str:
        """gpg's own words for the failure, one line, secrets masked."""
        outcome = self.gpg.outcome
        lines = (getattr(outcome, "stderr", "") or "").splitlines()
        # gpg's own lines, not the status lines nor what only describes the key ("encrypted with ... ID ...").
        said = [ln[5:].strip() for ln in lines if ln.startswith("gpg: ") and not ln.startswith("gpg: encrypted with")]
        if said:
            return redact("; ".join(said[-2:]))
        if outcome is not None and outcome.status:
            return outcome.status
        return redact(self.error) if self.error is not None else "gpg failed"

    @property
    def status(self) -> str:
        """python-gnupg's status of the run (``no secret key``, ``bad passphrase``, ``decryption failed`` …)."""
        return getattr(self.gpg.outcome, "status", "") or ""


def _make_gpg(home: str | None, options: list[str], error: type[Exception]) -> _GPG:
    if home and not os.path.isdir(home):
        raise error(f"{hints.setting('backup_gpg_home')} is {home}, which is not a folder; create it or fix the path")
    try:
        return _GPG(gnupghome=home, options=["--yes", *options])
    except (OSError, ValueError) as err:
        raise error(f"gpg cannot be run ({redact(err)}); install GnuPG (e.g. apt-get install gnupg)") from None


def _encrypting(spec: GpgSpec, source: BinaryIO, name: str, *, compressed: bool) -> GpgRun:
    """``source`` encrypted to ``spec.recipient`` (binary OpenPGP), in ``spec.home``: only the public key is
    needed, so no agent and no private home.

    ``compressed``: the bytes are gzip or zstd already, and gpg's own zlib pass is left out
    (``--compress-algo none``): it cost 2.0 of the 2.4 CPU seconds of encrypting 200 MiB and saved nothing.
    """
    gpg = _make_gpg(spec.home, [], BackupError)
    extra = ["--compress-algo", "none"] if compressed else None
    return GpgRun(
        gpg,
        lambda src: gpg.encrypt_file(src, [spec.recipient or ""], always_trust=True, armor=False, extra_args=extra),
        source,
        name,
    )


def _decrypting(spec: GpgSpec, source: BinaryIO, name: str, home: PrivateHome) -> GpgRun:
    """``source`` decrypted in the private ``home``, with ``spec.passphrase`` if there is one; without one,
    gpg fails at once (loopback pinentry, batch) rather than wait for a pinentry."""
    passphrase = spec.passphrase or None
    if passphrase is not None:
        if not gnupg.GPG.is_valid_passphrase(None, passphrase):
            raise RestoreError(
                "the GPG passphrase holds a line break or NUL, which gpg cannot read; check "
                f"{hints.setting('backup_gpg_passphrase_file')}"
            )
        # python-gnupg encodes the passphrase as latin-1; the bytes gpg gets must be its UTF-8.
        passphrase = passphrase.encode().decode("latin-1")
    gpg = _make_gpg(str(home.path), ["--pinentry-mode", "loopback"], RestoreError)
    return GpgRun(gpg, lambda src: gpg.decrypt_file(src, passphrase=passphrase), source, name)


def store_stream(
    storage,
    name: str,
    produce: Callable[[BinaryIO], None],
    *,
    compression: str = "none",
    gpg: GpgSpec | None = None,
    copy=None,
) -> StoredFile:
    """Run ``produce(writable)`` and store what it writes under ``name``, streaming.

    The bytes go through ``compression`` and, when ``gpg`` names a recipient,
    python-gnupg's ``encrypt_file``; size and SHA-256 are of the stored bytes (``copy``, when given, is
    written every stored byte too: see :class:`~backup_app.incremental.StoredIndexes`).  If anything
    fails, the partly written file is deleted and :class:`BackupError` raised.
    """
    if storage.exists(name):
        raise BackupError(f"{name} already exists in the backup storage; refusing to overwrite it")
    read_fd, write_fd = os.pipe()
    with suppress(OSError, AttributeError):
        # A 1 MiB pipe lets producer and storage work in larger steps (Linux only).
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1024 * 1024)
    sink_raw = open(write_fd, "wb", buffering=CHUNK)  # noqa: SIM115 - closed by the producer
    plain = open(read_fd, "rb", buffering=0)  # noqa: SIM115 - closed below
    encryptor = None
    source = plain
    if gpg is not None:
        try:
            encryptor = _encrypting(gpg, plain, name, compressed=compression != "none")
        except BaseException:
            sink_raw.close()
            plain.close()
            raise
        source = encryptor.stdout

    errors: list[BaseException] = []

    def run_producer() -> None:
        try:
            try:
                out = compressor(compression, sink_raw)
                produce(out)
                out.close()
            finally:
                sink_raw.close()
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    thread = threading.Thread(target=run_producer, name=f"backup-producer:{name}", daemon=True)
    thread.start()
    reader = HashingReader(source, copy=copy)
    stored_name = None
    storage_error: BaseException | None = None
    try:
        stored_name = storage.save(name, ChunkedFile(reader, name=name))
    except BaseException as err:
        storage_error = err
    finally:
        with suppress(OSError):
            source.close()
        if encryptor is not None:
            if storage_error is not None:
                encryptor.abort()  # gpg must not go on encrypting a dump nobody stores
            encryptor.join()
            with suppress(OSError):
                plain.close()  # unblock a producer still writing (it then gets a broken pipe)
        thread.join()

    def discard() -> None:
        with suppress(Exception):
            if storage.exists(stored_name or name):
                storage.delete(stored_name or name)

    if storage_error is not None:
        discard()
        if isinstance(storage_error, BackupError | KeyboardInterrupt):
            raise storage_error  # Ctrl-C: the caller says what it leaves
        raise BackupError(f"writing {name} to the backup storage failed: {redact(storage_error)}") from None
    if errors:
        discard()
        err = errors[0]
        if isinstance(err, BackupError):
            raise err
        if encryptor is not None and encryptor.failed:
            raise BackupError(f"gpg could not encrypt {name}: {encryptor.reason()}") from None
        raise BackupError(f"creating {name} failed: {redact(err)}") from None
    if encryptor is not None and encryptor.failed:
        discard()
        raise BackupError(
            f"gpg could not encrypt {name}: {encryptor.reason()}; check {hints.setting('backup_gpg_recipient')} "
            f"and {hints.setting('backup_gpg_home')}"
        )
    if stored_name != name:
        discard()
        raise BackupError(f"the storage renamed {name} to {stored_name}; refusing an inexact name")
    return StoredFile(name=name, size=reader.size, sha256=reader.sha256)


def _storage_failure(storage, err: BaseException, name: str) -> str | None:
    """The remote storage's one line for ``err`` when reading ``name`` failed in the storage (a download that
    stopped answering half way, a connection it dropped), else None.  requests' and botocore's time-outs are
    OSErrors without an errno, which :func:`_is_decoding_error` would call damage: the file is not damaged,
    the storage did not answer."""
    import gzip
    import zlib

    from isal import isal_zlib

    if isinstance(err, RestoreError | EOFError | gzip.BadGzipFile | zlib.error | isal_zlib.error):
        return None
    explain = getattr(storage, "_explanation", None)  # a RemoteStorage's adapter
    problem = explain(err, "read", name) if callable(explain) else None
    return None if problem is None else str(problem)


def _is_decoding_error(err: BaseException) -> bool:
    """An error of the decompressor (bad or truncated data), as opposed to a disk or tool error."""
    import gzip
    import zlib

    import zstandard
    from isal import isal_zlib

    if isinstance(err, EOFError | gzip.BadGzipFile | zlib.error | isal_zlib.error | zstandard.ZstdError):
        return True
    return isinstance(err, OSError) and err.errno is None


@dataclass
class ReadResult:
    """Filled in once the stored bytes have been read to the end."""

    size: int = 0
    sha256: str = ""


def _decrypt_error(name: str, decryptor: GpgRun, spec: GpgSpec) -> RestoreError:
    """gpg's failure to decrypt ``name``, in one line with the fix."""
    status, reason = decryptor.status, decryptor.reason()
    passphrase_file = hints.setting("backup_gpg_passphrase_file")
    home = spec.home or "gpg's default home"
    if status == "bad passphrase" or "Bad passphrase" in reason:
        return RestoreError(
            f"gpg could not decrypt {name}: wrong passphrase for its secret key; check {passphrase_file}"
        )
    if status == "no secret key" or "No secret key" in reason:
        return RestoreError(
            f"gpg could not decrypt {name}: its secret key is not in {home} ({reason}); import the key the "
            f"backup was encrypted to, or set {hints.setting('backup_gpg_home')} to the home holding it"
        )
    if not spec.passphrase and ("can't get input" in reason or status in ("missing passphrase", "need passphrase")):
        # The key has a passphrase, none was given and (rightly) no agent had one.
        variable = app_settings.env_name("backup_gpg_passphrase_file")
        return RestoreError(
            f"gpg could not decrypt {name}: the secret key needs its passphrase and none was given; "
            f"set {variable} (backup_gpg_passphrase_file)"
        )
    return RestoreError(
        f"gpg could not decrypt {name}: {reason}; the file is damaged or not an OpenPGP message (check it with "
        f"{hints.command('listbackups')} and the manifest's checksum)"
    )


@contextmanager
def open_stream(
    storage,
    name: str,
    *,
    compression: str | None,
    encrypted: bool,
    gpg: GpgSpec | None = None,
    result: ReadResult | None = None,
    on_read: Callable[[int], None] | None = None,
    tail_max: int | None = None,
) -> Iterator[BinaryIO]:
    """Yield a readable stream of the decrypted, decompressed content of ``name``.

    When the block ends, the rest of the stored file is read so that
    ``result`` holds the size and SHA-256 of all its stored bytes; more than ``tail_max`` bytes of content
    left unread by the block (an archive that goes on expanding after its end) is refused.  Decryption
    and decompression failures raise :class:`RestoreError`.  ``on_read`` is told the size of every chunk
    of stored bytes read (for progress).
    """
    try:
        raw = storage.open(name, "rb")
    except FileNotFoundError:
        raise RestoreError(f"{name} is not in the backup storage; run {hints.command('listbackups')}") from None
    except Exception as err:
        raise RestoreError(f"cannot open {name} in the backup storage: {redact(err)}") from None
    hashed = HashingReader(raw, on_read)
    decryptor: GpgRun | None = None
    private: PrivateHome | None = None
    try:
        source: BinaryIO = hashed
        if encrypted:
            spec = gpg or GpgSpec()
            private = PrivateHome(spec.home)
            decryptor = _decrypting(spec, hashed, name, private)
            source = decryptor.stdout
        stream = decompressor(compression, source)
        try:
            yield stream
            # Read to the end so that damage after the part a consumer needed is found too.
            tail = 0
            while data := stream.read(CHUNK):
                tail += len(data)
                if tail_max is not None and tail > tail_max:
                    raise RestoreError(
                        f"{name} goes on for more than {tail_max:,} bytes after the end of its content; "
                        "refusing it (a file made to expand without end?)"
                    )
        except Exception as err:
            if decryptor is not None:
                if decryptor.output_ended:
                    # gpg's own failure (wrong key, damaged ciphertext) explains whatever the consumer saw.
                    decryptor.join()
                    if decryptor.failed:
                        raise _decrypt_error(name, decryptor, spec) from None
                else:
                    decryptor.abort()  # the consumer gave up on its own: gpg need not read on
                    decryptor.join()
            problem = _storage_failure(storage, err, name)
            if problem is not None:
                raise RestoreError(f"reading {name} from the backup storage failed: {problem}") from None
            if _is_decoding_error(err):
                what = compression + " " if compression else ""
                raise RestoreError(f"{name} is damaged or not a {what}backup file ({redact(err)})") from None
            raise
        if decryptor is not None:
            decryptor.join()
            if decryptor.failed:
                raise _decrypt_error(name, decryptor, spec)
        else:
            hashed.drain()  # (gpg reads its input to the end itself)
        if result is not None:
            result.size = hashed.size
            result.sha256 = hashed.sha256
    finally:
        if decryptor is not None:
            decryptor.abort()  # cut short (Ctrl-C, an error above): gpg is stopped, its thread joined
            decryptor.join()
            with suppress(OSError):
                decryptor.stdout.close()
        if private is not None:
            private.close()
        with suppress(Exception):
            raw.close()
