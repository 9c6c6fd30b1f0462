"""One benchmark run: dataset, sites, timed backups and restores, listing, report (``python -m bench``).

For each engine a fresh demo site is loaded with the dataset, the caches are
warmed (media read, database dumped to /dev/null, untimed), then:

backups, each into its own folder:
  ``raw``        floor: ``pg_dump -Fc -Z0`` / ``sqlite3 .backup`` / ``mariadb-dump``, plus
                 ``tar -cf - . | zstd -3`` of the media folder
  ``ours``       ``invoke backup`` (gzip, the default ``backup_compression``)
  ``ours-zstd``  ``invoke backup`` with ``INVENTREE_BACKUP_COMPRESSION=zstd``
  ``stock``      ``manage.py dbbackup --noinput --compress`` + ``manage.py mediabackup --noinput --compress``

restores, each onto the live site (database and media as backed up), except ``raw``:
  ``raw``        ``pg_restore --no-owner`` into a new empty database / ``cp`` of the SQLite file /
                 ``mariadb < dump``, plus ``zstd -dc | tar -x`` into an empty folder
  ``ours``       ``invoke restore`` (newest complete set: checks every file first, keeps the safety copy)
  ``ours-zstd``  the same from the zstd set
  ``stock``      ``manage.py dbrestore --noinput -z -i NAME`` +
                 ``manage.py mediarestore --noinput -z --replace -i NAME``

After every restore the rows of each table and the media files are counted
against the dataset (untimed); safety copies are dropped before the next one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .dataset import Dataset, ensure_dataset, parse_size, size_label
from .measure import Measurement, combine, run_measured
from .report import evaluate_targets, markdown_report
from .sites import (
    ENGINES,
    PG,
    ROOT,
    Site,
    _mariadb_cli,
    _mariadb_dump_cli,
    drop_leftovers,
    folder_stats,
    mysql_args,
    pg_args,
)

VARIANTS = ("raw", "ours", "ours-zstd", "stock")
DEFAULT_WORKDIR = Path("/tmp/backup-app-bench")


@dataclass
class Config:
    size: int
    seed: int = 1
    engines: list[str] = field(default_factory=lambda: ["sqlite", "postgresql"])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    workdir: Path = DEFAULT_WORKDIR
    output: Path | None = None
    repeat: int = 1
    sets: int = 2000
    keep: bool = False
    interval: float = 0.02
    note: str = ""
    command: str = ""
    profile_dir: Path | None = None  # set: profile ours with py-spy (extra runs) into this folder
    source: str = "HEAD"  # a commit to snapshot, or "." for the working tree as it is
    source_dir: Path = ROOT
    source_label: str = ""
    #: "live": restores replace a media folder holding the backed-up files (every file already matches);
    #: "empty": the site's media folder is emptied (untimed) before each restore, so every file is written.
    restore_media: str = "live"
    #: The incremental media scenario (issue 20), on the first engine's site after its other steps.
    incremental: bool = True
    #: Media bytes (default: half of ``size``) and about how many media files (default: the generator's mix).
    media_size: int | None = None
    media_files: int | None = None

    @property
    def label(self) -> str:
        return size_label(self.size)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- one engine ---------------------------------------------------------------------------------------------


def _warm_up(site: Site) -> None:
    """Read the media files and the database once (untimed), so every variant starts with warm caches."""
    subprocess.run(["bash", "-c", f"tar -cf - -C {shlex.quote(str(site.media))} . | cat > /dev/null"], check=True)
    if site.engine == "sqlite":
        subprocess.run(["cat", str(site.sqlite_path)], stdout=subprocess.DEVNULL, check=True)
    elif site.engine == "postgresql":
        subprocess.run(["pg_dump", *pg_args(site.db_name), "-Fc", "-Z0"], stdout=subprocess.DEVNULL, check=True)
    else:
        subprocess.run(
            [_mariadb_dump_cli(), *mysql_args(), "--single-transaction", "--quick", site.db_name],
            stdout=subprocess.DEVNULL,
            check=True,
        )


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def page_cache_reset_available() -> bool:
    return os.access(DROP_CACHES, os.W_OK)


def _prepare(site: Site, inputs: Path) -> Callable[[], None]:
    """What runs before every timed step (untimed): the same starting state for every variant.

    The database server writes out its buffers; then, where this process may (root), the page cache is
    dropped and the site and the step's input files are read back in.  Without that reset, creating files
    on this machine's ext4 right after thousands were deleted costs up to 1 ms per file in the kernel
    (``tar -x`` of the 0.5 GB media took 6-10 s of system time instead of 0.5-1 s), so a step's time
    depended on what the step before it had deleted.
    """

    def prepare() -> None:
        site.quiesce()
        if not page_cache_reset_available():
            return
        os.sync()
        DROP_CACHES.write_text("1\n")
        _warm_up(site)
        for path in sorted(p for p in inputs.rglob("*") if p.is_file()):
            with open(path, "rb") as fh:
                while fh.read(1 << 20):
                    pass

    return prepare


def _backup(site: Site, variant: str, out: Path, interval: float) -> Measurement:
    out.mkdir(parents=True)
    prep = _prepare(site, out)
    if variant == "raw":
        if site.engine == "sqlite":
            db = run_measured(
                "sqlite3 .backup",
                ["sqlite3", str(site.sqlite_path), f".backup '{out / 'db.sqlite3'}'"],
                interval=interval,
                prepare=prep,
            )
        elif site.engine == "postgresql":
            db = run_measured(
                "pg_dump -Fc -Z0",
                ["pg_dump", *pg_args(site.db_name), "-Fc", "-Z0", "-f", str(out / "db.psql.bin")],
                interval=interval,
                prepare=prep,
            )
        else:
            db = run_measured(
                "mariadb-dump",
                [
                    _mariadb_dump_cli(),
                    *mysql_args(),
                    "--single-transaction",
                    "--quick",
                    f"--result-file={out / 'db.sql'}",
                    site.db_name,
                ],
                interval=interval,
                prepare=prep,
            )
        media = run_measured(
            "tar | zstd -3",
            [
                "bash",
                "-c",
                f"set -o pipefail; tar -cf - -C {shlex.quote(str(site.media))} . "
                f"| zstd -q -3 -o {shlex.quote(str(out / 'media.tar.zst'))}",
            ],
            interval=interval,
            prepare=prep,
        )
        return combine("raw", [db, media])
    if variant in ("ours", "ours-zstd"):
        compression = "zstd" if variant == "ours-zstd" else None
        return run_measured(
            "invoke backup",
            site.invoke_argv("backup"),
            env=site.env(out, compression),
            cwd=site.source,
            interval=interval,
            prepare=prep,
        )
    env = site.env(out)
    db = run_measured(
        "dbbackup",
        site.manage_argv("dbbackup", "--noinput", "--compress"),
        env=env,
        cwd=site.source,
        interval=interval,
        prepare=prep,
    )
    media = run_measured(
        "mediabackup",
        site.manage_argv("mediabackup", "--noinput", "--compress"),
        env=env,
        cwd=site.source,
        interval=interval,
        prepare=prep,
    )
    return combine("stock", [db, media])


def _empty_media(site: Site) -> None:
    shutil.rmtree(site.media)
    site.media.mkdir()


def _restore(
    site: Site, variant: str, out: Path, dataset: Dataset, interval: float, restore_media: str = "live"
) -> Measurement:
    prep = _prepare(site, out)
    if restore_media == "empty" and variant != "raw":
        _empty_media(site)
    if variant == "raw":
        target = site.root / "raw-restore"
        (target / "media").mkdir(parents=True)
        check: dict = {"media": target / "media"}
        if site.engine == "sqlite":
            db = run_measured(
                "cp",
                ["cp", str(out / "db.sqlite3"), str(target / "db.sqlite3")],
                interval=interval,
                prepare=prep,
            )
            check["sqlite_path"] = target / "db.sqlite3"
        elif site.engine == "postgresql":
            fresh = f"{site.db_name}_raw"
            subprocess.run(
                ["createdb", f"--host={PG['host']}", f"--port={PG['port']}", f"--username={PG['user']}", fresh],
                check=True,
            )
            db = run_measured(
                "pg_restore",
                ["pg_restore", *pg_args(fresh), "--no-owner", str(out / "db.psql.bin")],
                interval=interval,
                prepare=prep,
            )
            check["database"] = fresh
        else:
            fresh = f"{site.db_name}_raw"
            subprocess.run(
                [_mariadb_cli(), *mysql_args(), "-e", f"CREATE DATABASE `{fresh}` CHARACTER SET utf8mb4"], check=True
            )
            command = " ".join(shlex.quote(a) for a in [_mariadb_cli(), *mysql_args(fresh)])
            db = run_measured(
                "mariadb < dump",
                ["bash", "-c", f"{command} < {shlex.quote(str(out / 'db.sql'))}"],
                interval=interval,
                prepare=prep,
            )
            check["database"] = fresh
        media = run_measured(
            "zstd -dc | tar -x",
            [
                "bash",
                "-c",
                f"set -o pipefail; zstd -q -dc {shlex.quote(str(out / 'media.tar.zst'))} "
                f"| tar -xf - -C {shlex.quote(str(target / 'media'))}",
            ],
            interval=interval,
            prepare=prep,
        )
        m = combine("raw", [db, media])
        try:
            site.check_restored(dataset, **check)
        finally:
            site.drop_side_databases()
            shutil.rmtree(target, ignore_errors=True)
        return m
    if variant in ("ours", "ours-zstd"):
        m = run_measured(
            "invoke restore",
            site.invoke_argv("restore"),
            env=site.env(out),
            cwd=site.source,
            interval=interval,
            prepare=prep,
        )
        site.check_restored(dataset)
        site.drop_side_databases()
        shutil.rmtree(site.safety, ignore_errors=True)
        return m
    names = sorted(n for n in os.listdir(out) if not n.endswith(".metadata"))
    db_file = next(n for n in names if "-db-" in n)
    media_file = next(n for n in names if "-media-" in n)
    env = site.env(out)
    db = run_measured(
        "dbrestore",
        site.manage_argv("dbrestore", "--noinput", "-z", "-i", db_file),
        env=env,
        cwd=site.source,
        interval=interval,
        prepare=prep,
    )
    media = run_measured(
        "mediarestore",
        site.manage_argv("mediarestore", "--noinput", "-z", "--replace", "-i", media_file),
        env=env,
        cwd=site.source,
        interval=interval,
        prepare=prep,
    )
    m = combine("stock", [db, media])
    site.check_restored(dataset)
    return m


def _median(runs: list[Measurement]) -> Measurement:
    """The run with the median wall time; every run's figures are kept in ``extra['runs']``."""
    ordered = sorted(runs, key=lambda m: m.wall_s)
    chosen = ordered[(len(ordered) - 1) // 2]
    if len(runs) > 1:
        chosen.extra["runs"] = [
            {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "peak_rss_tree": m.peak_rss_tree, "max_rss_single": m.max_rss_single}
            for m in runs
        ]
        chosen.extra["wall_s_stdev"] = statistics.pstdev(m.wall_s for m in runs)
    return chosen


def _profile(site: Site, dataset: Dataset, cfg: Config) -> dict:
    """Extra, untimed runs of ``manage.py backup_create`` / ``backup_restore`` under py-spy."""
    from . import profile

    folder = cfg.profile_dir
    folder.mkdir(parents=True, exist_ok=True)
    out = site.root / "out-profile"
    written = {}
    for op, argv in (
        ("backup", site.manage_argv("backup_create")),
        ("restore", site.manage_argv("backup_restore", "--noinput")),
    ):
        folded = folder / f"profile-{cfg.label}-{site.engine}-{op}.folded"
        proc = profile.record(argv, site.env(out), site.source, folded)
        if proc.returncode or not folded.is_file():
            log(f"[{site.engine}] py-spy {op} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
            continue
        summary = folded.with_suffix(".txt")
        summary.write_text(profile.summarize(folded))
        written[op] = {"folded": str(folded), "summary": str(summary)}
        log(f"[{site.engine}] profile of {op}: {summary}")
        if op == "restore":
            site.check_restored(dataset)
            site.drop_side_databases()
            shutil.rmtree(site.safety, ignore_errors=True)
    return written


def bench_engine(engine: str, dataset: Dataset, cfg: Config, run_dir: Path) -> dict:
    site = Site(run_dir / engine, engine, cfg.workdir, cfg.source_dir)
    result: dict = {"backup": {}, "restore": {}}
    try:
        t0 = time.monotonic()
        log(f"[{engine}] setting up the site ({site.db_name if engine != 'sqlite' else site.sqlite_path})")
        site.create(dataset)
        result["setup_s"] = round(time.monotonic() - t0, 1)
        result["database"] = site.db_name if engine != "sqlite" else str(site.sqlite_path)
        if engine == "sqlite":
            result["database_file_bytes"] = site.sqlite_path.stat().st_size
        log(f"[{engine}] site ready in {result['setup_s']} s; warming caches")
        _warm_up(site)
        outs: dict[str, list[Path]] = {}
        for variant in cfg.variants:
            runs = []
            for i in range(cfg.repeat):
                out = site.root / f"out-{variant}-{i}"
                m = _backup(site, variant, out, cfg.interval)
                m.extra["output_bytes"] = folder_stats(out)[1]
                m.extra["output_files"] = sorted(os.listdir(out))
                runs.append(m)
                outs.setdefault(variant, []).append(out)
                log(
                    f"[{engine}] backup  {variant:9} {m.wall_s:7.2f} s  cpu {m.cpu_s:6.2f} s  "
                    f"tree {m.peak_rss_tree / 2**20:6.0f} MiB  "
                    f"single {m.max_rss_single / 2**20:6.0f} MiB  out {m.extra['output_bytes'] / 2**20:7.1f} MiB"
                )
            chosen = _median(runs)
            result["backup"][variant] = chosen.as_json()
        for variant in cfg.variants:
            runs = []
            for _ in range(cfg.repeat):
                m = _restore(site, variant, outs[variant][0], dataset, cfg.interval, cfg.restore_media)
                runs.append(m)
                log(
                    f"[{engine}] restore {variant:9} {m.wall_s:7.2f} s  cpu {m.cpu_s:6.2f} s  "
                    f"tree {m.peak_rss_tree / 2**20:6.0f} MiB  "
                    f"single {m.max_rss_single / 2**20:6.0f} MiB  (rows and files checked)"
                )
            result["restore"][variant] = _median(runs).as_json()
        if cfg.profile_dir is not None:
            result["profiles"] = _profile(site, dataset, cfg)
        if cfg.incremental and engine == cfg.engines[0]:
            from .incremental import bench_incremental

            result["incremental"] = bench_incremental(site, cfg.seed, cfg.interval, log)
    finally:
        if cfg.keep:
            log(f"[{engine}] kept the site in {site.root} (database {site.db_name})")
        else:
            site.drop()
    return result


# --- the whole run ------------------------------------------------------------------------------------------


def _version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def machine_info() -> dict:
    import importlib.metadata as md

    def pkg(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "-"

    mem = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {n: pkg(n) for n in ("django", "django-dbbackup", "isal", "zstandard", "psycopg", "PyMySQL")},
        "tools": {
            "pg_dump": _version(["pg_dump", "--version"]),
            "zstd": _version(["zstd", "--version"]),
            "sqlite3": _version(["sqlite3", "--version"]),
            "tar": _version(["tar", "--version"]),
        },
        "loadavg_start": os.getloadavg(),
    }


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"benchmark: git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def prepare_source(cfg: Config) -> None:
    """Fix the code under test: a snapshot of ``cfg.source`` (cached), or this working tree for ``.``.

    Other developers may be editing the working tree during a run; a snapshot
    of a commit (``git archive``, no git metadata) is what a run measures by
    default, so every step of it runs the same code.
    """
    if cfg.source == ".":
        head = _git("rev-parse", "--short=12", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--", "backup_app", "config", "tasks.py", "manage.py"))
        cfg.source_dir = ROOT
        cfg.source_label = f"working tree at {head}" + (" with uncommitted changes" if dirty else "")
        return
    sha = _git("rev-parse", "--verify", f"{cfg.source}^{{commit}}")
    folder = cfg.workdir / f"src-{sha[:12]}"
    if not (folder / "manage.py").is_file():
        tmp = cfg.workdir / f"src-{sha[:12]}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.Popen(["git", "archive", "--format=tar", sha], cwd=ROOT, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-xf", "-", "-C", str(tmp)], stdin=archive.stdout, check=True)
        archive.stdout.close()
        if archive.wait():
            raise SystemExit(f"benchmark: git archive {sha} failed")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    if not (folder / "backup_app" / "__pycache__").is_dir():
        # Byte-compiled, as an installed site runs it (pip compiles on install): with PYTHONDONTWRITEBYTECODE
        # set, a snapshot without bytecode is compiled again by every command the benchmark times.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(folder)], check=True, stdout=subprocess.DEVNULL)
    cfg.source_dir = folder
    cfg.source_label = f"commit {sha[:12]}" + (f" ({cfg.source})" if not sha.startswith(cfg.source) else "")


def preflight(cfg: Config) -> None:
    """Stop early, with the reason, when a tool, a server or disk space is missing."""
    need = ["tar", "zstd", "bash", "cp"]
    if "sqlite" in cfg.engines:
        need.append("sqlite3")
    if "postgresql" in cfg.engines:
        need += ["pg_dump", "pg_restore", "createdb"]
    if "mysql" in cfg.engines:
        need += [_mariadb_cli(), _mariadb_dump_cli()]
    missing = [t for t in need if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"benchmark: missing tools: {', '.join(missing)}")
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    # Dataset (media + COPY files) + site media + database + four backups + a restored copy: about 5x the size.
    free = shutil.disk_usage(cfg.workdir).free
    total = cfg.size // 2 + (cfg.media_size if cfg.media_size is not None else cfg.size // 2)
    if free < total * 5 + 2 * 1024**3:
        raise SystemExit(
            f"benchmark: {free / 1024**3:.1f} GiB free in {cfg.workdir}; a {cfg.label} run needs about "
            f"{(total * 5 + 2 * 1024**3) / 1024**3:.1f} GiB (use --workdir on a larger disk)"
        )
    if "postgresql" in cfg.engines:
        from .sites import _pg

        try:
            _pg().close()
        except Exception as err:
            raise SystemExit(f"benchmark: PostgreSQL on {PG['host']}:{PG['port']} is not reachable ({err})") from None
    if "mysql" in cfg.engines:
        from .sites import _my

        try:
            _my().close()
        except Exception as err:
            raise SystemExit(f"benchmark: MariaDB is not reachable ({err})") from None


def run(cfg: Config) -> dict:
    preflight(cfg)
    prepare_source(cfg)
    log(f"Code under test: {cfg.source_label} ({cfg.source_dir})")
    drop_leftovers(cfg.workdir, log)
    started = datetime.now(UTC)
    results: dict = {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "command": cfg.command,
            "size": cfg.size,
            "label": cfg.label,
            "seed": cfg.seed,
            "media_size": cfg.media_size,
            "media_files": cfg.media_files,
            "engines": cfg.engines,
            "variants": cfg.variants,
            "repeat": cfg.repeat,
            "sample_interval_s": cfg.interval,
            "page_cache_reset": page_cache_reset_available(),
            "restore_media": cfg.restore_media,
            "note": cfg.note,
            "source": cfg.source_label,
            "source_dir": str(cfg.source_dir),
            "machine": machine_info(),
        }
    }
    dataset = ensure_dataset(cfg.workdir, cfg.size, cfg.seed, log, cfg.media_size, cfg.media_files)
    results["dataset"] = dataset.info
    run_dir = cfg.workdir / f"run-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        results["engines"] = {}
        for engine in cfg.engines:
            results["engines"][engine] = bench_engine(engine, dataset, cfg, run_dir)
        if cfg.sets:
            from .listing import bench_listing

            results["listing"] = bench_listing(
                cfg.sets, run_dir / "listing", cfg.workdir, cfg.interval, log, cfg.source_dir
            )
    finally:
        if not cfg.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    results["meta"]["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["meta"]["machine"]["loadavg_end"] = os.getloadavg()
    results["meta"]["duration_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    return results


def _other_size_results(results_dir: Path, label: str, source: str) -> dict | None:
    """The newest results JSON of another size of the same code in ``results_dir`` (for "same RSS at 2 GB")."""
    if not results_dir.is_dir():
        return None
    for path in sorted(results_dir.glob("benchmark-*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        meta = data.get("meta", {})
        if meta.get("label") != label and meta.get("source") == source:
            return data
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="0.5G", help="dataset size, half database, half media (50M, 0.5G, 2G)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the dataset generator")
    parser.add_argument("--engines", default="sqlite,postgresql", help="comma list of sqlite, postgresql, mysql")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="cache and scratch folder (not the repo)")
    parser.add_argument(
        "--output", default="", help="results file stem (default <workdir>/results/benchmark-SIZE-TIME)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="time each step N times and report the median")
    parser.add_argument("--sets", type=int, default=2000, help="backup sets for the listbackups timing (0 = skip)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the sites and databases for inspection (until the next run in the same workdir)",
    )
    parser.add_argument("--interval", type=float, default=0.02, help="RSS sampling interval in seconds")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'shared machine')")
    parser.add_argument(
        "--source",
        default="HEAD",
        help="code to measure: a commit (snapshot with git archive; default HEAD) or . for the working tree",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile this app's backup and restore with py-spy (extra runs)"
    )
    parser.add_argument(
        "--restore-media",
        choices=["live", "empty"],
        default="live",
        help="restores replace a media folder that holds the backed-up files (live) or an emptied one (empty)",
    )
    parser.add_argument(
        "--no-incremental", action="store_true", help="skip the incremental media scenario (ten nightly backups)"
    )
    parser.add_argument(
        "--media-size", default="", help="media bytes instead of half of --size (the database keeps its half)"
    )
    parser.add_argument(
        "--media-files", type=int, default=0, help="about this many media files (each file's size scaled to fit)"
    )
    args = parser.parse_args(argv)

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for e in engines:
        if e not in ENGINES:
            parser.error(f"unknown engine {e!r}; use {', '.join(ENGINES)}")
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; use {', '.join(VARIANTS)}")
    try:
        size = parse_size(args.size)
        media_size = parse_size(args.media_size) if args.media_size else None
    except ValueError as err:
        parser.error(str(err))
    if args.media_files < 0:
        parser.error("--media-files must be a positive number of files")
    cfg = Config(
        size=size,
        seed=args.seed,
        engines=engines,
        variants=[v for v in VARIANTS if v in variants],
        workdir=Path(args.workdir).resolve(),
        repeat=max(1, args.repeat),
        sets=max(0, args.sets),
        keep=args.keep,
        interval=args.interval,
        note=args.note,
        source=args.source,
        restore_media=args.restore_media,
        incremental=not args.no_incremental,
        media_size=media_size,
        media_files=args.media_files or None,
        command="invoke benchmark " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
    )
    stem = (
        Path(args.output)
        if args.output
        else (cfg.workdir / "results" / f"benchmark-{cfg.label}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}")
    )
    if args.profile:
        from . import profile

        if not profile.available():
            parser.error("--profile needs py-spy: pip install -e '.[bench]'")
        cfg.profile_dir = stem.parent
    results = run(cfg)
    other = _other_size_results(stem.parent, cfg.label, cfg.source_label)
    results["targets"] = evaluate_targets(results, other)
    text = markdown_report(results)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md_path, json_path = Path(f"{stem}.md"), Path(f"{stem}.json")
    md_path.write_text(text)
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(text)
    log(f"Results: {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
