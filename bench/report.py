"""Markdown tables and the targets of issue 6, from a results dict (see :mod:`bench.runner`)."""

from __future__ import annotations

MiB = 1024**2
RSS_LIMIT = 150 * MiB

ENGINE_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MariaDB"}

TOOLS = {
    "backup": {
        "raw": {
            "sqlite": "raw: `sqlite3 .backup` + `tar -c` piped to `zstd -3`",
            "postgresql": "raw: `pg_dump -Fc -Z0` + `tar -c` piped to `zstd -3`",
            "mysql": "raw: `mariadb-dump` + `tar -c` piped to `zstd -3`",
        },
        "ours": "ours: `invoke backup` (gzip)",
        "ours-zstd": "ours: `invoke backup` (zstd)",
        "stock": "stock: `dbbackup --compress` + `mediabackup --compress`",
    },
    "restore": {
        "raw": {
            "sqlite": "raw: `cp` + `zstd -d` piped to `tar -x`",
            "postgresql": "raw: `pg_restore` + `zstd -d` piped to `tar -x`",
            "mysql": "raw: `mariadb < dump` + `zstd -d` piped to `tar -x`",
        },
        "ours": "ours: `invoke restore` (gzip set)",
        "ours-zstd": "ours: `invoke restore` (zstd set)",
        "stock": "stock: `dbrestore -z` + `mediarestore -z --replace`",
    },
}


def _tool(op: str, variant: str, engine: str) -> str:
    tool = TOOLS[op][variant]
    return tool[engine] if isinstance(tool, dict) else tool


def _mib(n: float | None) -> str:
    return "–" if n is None else f"{n / MiB:,.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def _x(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}×"


def _get(results: dict, engine: str, op: str, variant: str, key: str):
    m = results.get("engines", {}).get(engine, {}).get(op, {}).get(variant)
    if m is None:
        return None
    if key == "output_bytes":
        return m.get("extra", {}).get("output_bytes")
    return m.get(key)


def evaluate_targets(results: dict, other: dict | None = None) -> list[dict]:
    """Each target of issue 6 with the measured value per engine and whether it is met (None: not measured)."""
    rows: list[dict] = []
    engines = list(results.get("engines", {}))

    def add(target: str, engine: str | None, value: float | None, met: bool | None, shown: str, zstd: str = ""):
        rows.append({"target": target, "engine": engine, "value": value, "met": met, "shown": shown, "zstd": zstd})

    for e in engines:
        for variant in ("ours", "ours-zstd"):
            if _get(results, e, "backup", variant, "wall_s") is None:
                continue
            tag = "" if variant == "ours" else " (zstd)"
            speedup = _ratio(
                _get(results, e, "backup", "stock", "wall_s"), _get(results, e, "backup", variant, "wall_s")
            )
            add(
                "backup at least 8× faster than stock" + tag,
                e,
                speedup,
                None if speedup is None else speedup >= 8,
                f"{speedup:.1f}× faster" if speedup else "–",
            )
            r = _ratio(_get(results, e, "restore", variant, "wall_s"), _get(results, e, "restore", "stock", "wall_s"))
            add(
                "restore (with its checks and safety copy) no slower than stock" + tag,
                e,
                r,
                None if r is None else r <= 1.0,
                f"{_x(r)} stock's time",
            )
            r = _ratio(_get(results, e, "restore", variant, "wall_s"), _get(results, e, "restore", "raw", "wall_s"))
            add(
                "restore within 1.3× of raw restore + `tar -x`" + tag,
                e,
                r,
                None if r is None else r <= 1.3,
                f"{_x(r)} raw",
            )
            if variant == "ours":
                r = _ratio(
                    _get(results, e, "backup", "ours", "output_bytes"),
                    _get(results, e, "backup", "stock", "output_bytes"),
                )
                add(
                    "gzip output at most 5% larger than stock's",
                    e,
                    r,
                    None if r is None else r <= 1.05,
                    f"{_x(r)} stock's size",
                )
            peak = max((_get(results, e, op, variant, "peak_rss_tree") or 0) for op in ("backup", "restore")) or None
            add(
                "peak RSS (whole process tree) at most 150 MiB" + tag,
                e,
                peak,
                None if peak is None else peak <= RSS_LIMIT,
                f"{_mib(peak)} MiB",
            )
            if other is not None:
                other_peak = (
                    max((_get(other, e, op, variant, "peak_rss_tree") or 0) for op in ("backup", "restore")) or None
                )
                r = _ratio(peak, other_peak)
                label = f"vs {other['meta']['label']}"
                add(
                    "same peak RSS at 2 GB as at 0.5 GB (within 10%)" + tag,
                    e,
                    r,
                    None if r is None else max(r, 1 / r) <= 1.1,
                    f"{_x(r)} {label}",
                )
            else:
                add(
                    "same peak RSS at 2 GB as at 0.5 GB (within 10%)" + tag,
                    e,
                    None,
                    None,
                    "needs a run of the other size of the same code in the same results folder",
                )
            r = _ratio(_get(results, e, "backup", variant, "wall_s"), _get(results, e, "backup", "raw", "wall_s"))
            add(
                "backup within 1.5× of raw dump + `tar -c` piped to `zstd`" + tag,
                e,
                r,
                None if r is None else r <= 1.5,
                f"{_x(r)} raw",
            )
    listing = results.get("listing")
    if listing:
        wall = listing["invoke_listbackups_json"]["wall_s"]
        add(f"`invoke listbackups` over {listing['sets']} sets under 2 s", None, wall, wall < 2.0, f"{wall:.2f} s")
    add(
        "remote listing without one request per file",
        None,
        None,
        None,
        "not timed (local storage only): one listing plus one manifest read per complete set, "
        "sizes from the manifest (see docs/performance.md)",
    )
    return rows


def _mark(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "–"}[met]


def markdown_report(results: dict) -> str:
    meta = results["meta"]
    ds = results["dataset"]
    machine = meta["machine"]
    media = ds["media"]
    lines = [
        f"## Benchmark: {meta['label']} dataset (seed {meta['seed']})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Run: {meta['started']} → {meta.get('finished', '?')} ({meta.get('duration_s', '?')} s), "
        f"code: {meta.get('source', '?')}.  ",
        f"Machine: {machine['cpus']} CPUs, {machine['memory_bytes'] / 1024**3:.1f} GiB RAM, "
        f"Python {machine['python']}, "
        f"{machine['tools']['pg_dump']}, django-dbbackup {machine['packages']['django-dbbackup']}; "
        f"load average {machine['loadavg_start'][0]:.2f} at the start, "
        f"{machine.get('loadavg_end', [0])[0]:.2f} at the end.",
    ]
    if meta.get("note"):
        lines += ["", f"**Note:** {meta['note']}"]
    lines += [
        "",
        f"Dataset: database {ds['db_bytes'] / MiB:,.0f} MiB of row data (`demo_part` "
        f"{ds['tables']['demo_part']['rows']:,} rows, `bench_stockitem` {ds['tables']['bench_stockitem']['rows']:,} "
        f"rows), media {media['files']:,} files, {media['bytes'] / MiB:,.0f} MiB "
        f"({media['binary_bytes'] / max(1, media['bytes']):.0%} incompressible binaries, the rest text).",
        "",
        "Wall: elapsed time of the command(s). Peak RSS, tree: the largest sum of the resident memory of the "
        "command and all its child processes, sampled every "
        f"{meta['sample_interval_s'] * 1000:.0f} ms from /proc. Max RSS, one process: the largest single "
        "process (kernel `ru_maxrss`, as GNU time `%M`). Database server processes are not counted. "
        "Output: bytes written. Caches are warm; before every step (untimed) PostgreSQL checkpoints and "
        "dirty pages are flushed (`sync`)"
        + (
            ", then the page cache is dropped and the site and the step's input files are read back in."
            if meta.get("page_cache_reset")
            else "."
        )
        + (
            " Restores other than raw start from an emptied media folder (every file is written)."
            if meta.get("restore_media") == "empty"
            else " Restores other than raw replace a media folder that still holds the backed-up files."
        ),
    ]
    for engine, data in results.get("engines", {}).items():
        name = ENGINE_NAMES.get(engine, engine)
        lines += [
            "",
            f"### {name}",
            "",
            "| Step | Tool | Wall (s) | Peak RSS, tree (MiB) | Max RSS, one process (MiB) | Output (MiB) |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for op in ("backup", "restore"):
            for variant, m in data[op].items():
                out = _mib(m.get("extra", {}).get("output_bytes")) if op == "backup" else ""
                lines.append(
                    f"| {op} | {_tool(op, variant, engine)} | {m['wall_s']:.2f} | {_mib(m['peak_rss_tree'])} | "
                    f"{_mib(m['max_rss_single'])} | {out} |"
                )
        steps = []
        for op in ("backup", "restore"):
            for variant, m in data[op].items():
                for step in m.get("extra", {}).get("steps", []):
                    steps.append(f"{op} {variant} `{step['label']}` {step['wall_s']:.2f} s")
        if steps:
            lines += ["", "Steps of the two-command variants: " + "; ".join(steps) + "."]
        lines += [
            "",
            "| Ratio | backup, ours (gzip) | backup, ours (zstd) | restore, ours (gzip) | restore, ours (zstd) |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for label, base, key in (
            ("time ours/stock", "stock", "wall_s"),
            ("time ours/raw", "raw", "wall_s"),
            ("peak RSS ours/stock", "stock", "peak_rss_tree"),
            ("output ours/stock", "stock", "output_bytes"),
            ("output ours/raw", "raw", "output_bytes"),
        ):
            cells = []
            for op in ("backup", "restore"):
                for variant in ("ours", "ours-zstd"):
                    if key == "output_bytes" and op == "restore":
                        cells.append("")
                        continue
                    cells.append(
                        _x(_ratio(_get(results, engine, op, variant, key), _get(results, engine, op, base, key)))
                    )
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    listing = results.get("listing")
    if listing:
        lines += [
            "",
            f"### `invoke listbackups` over {listing['sets']:,} complete sets "
            f"({listing['files']:,} files, local folder)",
            "",
            "| Command | Sets | Wall (s) | Peak RSS, tree (MiB) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for key, label, n in (
            ("invoke_listbackups_json", "`invoke listbackups --json`", listing["sets"]),
            ("manage_backup_list_json", "`manage.py backup_list --json`", listing["sets"]),
            ("invoke_listbackups_json_empty", "`invoke listbackups --json` (empty folder: start-up cost)", 0),
        ):
            m = listing[key]
            lines.append(f"| {label} | {n:,} | {m['wall_s']:.2f} | {_mib(m['peak_rss_tree'])} |")
    for engine_result in results.get("engines", {}).values():
        if "incremental" in engine_result:
            from .incremental import markdown

            lines += markdown(engine_result["incremental"])
    targets = results.get("targets") or []
    if targets:
        lines += ["", "### Targets of issue 6", "", "| Target | Engine | Measured | Met |", "| --- | --- | --- | --- |"]
        for t in targets:
            engine = ENGINE_NAMES.get(t["engine"], t["engine"] or "all")
            lines.append(f"| {t['target']} | {engine} | {t['shown']} | {_mark(t['met'])} |")
    return "\n".join(lines) + "\n"
