"""Storage under churn (issue 20, repacking): nightly incremental backups with ``--clean``, stored bytes vs one
archive set.

A media folder of many small files (thumbnails) and a few large ones (photos), all incompressible; each night
``--change`` of the files is rewritten in place and ``--churn`` of them replaced by new files (deleted, and as
many new ones written), then ``backup_create --skip-db --clean`` keeps ``--keep`` sets.  The stored bytes of
the backup folder are counted after every night.  Run it once with the code before repacking and once with
the code after (``--source``) to compare::

    python -m bench.churn --source /path/to/old/tree --workdir /tmp/churn-old
    python -m bench.churn --source . --workdir /tmp/churn-new
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path


def _stored(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _objects(folder: Path) -> int:
    """Files in the backup folder: the objects a remote store would hold (packs, move records, set files)."""
    return sum(1 for p in folder.rglob("*") if p.is_file())


def _new_file(media: Path, rng: random.Random, number: int) -> None:
    photo = rng.random() < 0.1
    size = rng.randint(512 * 1024, 2 * 1024 * 1024) if photo else rng.randint(8 * 1024, 64 * 1024)
    folder = media / ("photos" if photo else "thumbs") / f"{number % 50:02}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"f{number:06}.bin").write_bytes(rng.randbytes(size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--nights", type=int, default=10)
    parser.add_argument("--keep", type=int, default=5)
    parser.add_argument("--change", type=float, default=0.01)
    parser.add_argument("--churn", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(args.workdir)
    shutil.rmtree(root, ignore_errors=True)
    media = root / "media"
    media.mkdir(parents=True)
    (root / "config.yaml").write_text("")
    for number in range(args.files):
        _new_file(media, rng, number)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVENTREE_", "DJANGO_"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "INVENTREE_CONFIG_FILE": str(root / "config.yaml"),
            "INVENTREE_MEDIA_ROOT": str(media),
            "INVENTREE_STATIC_ROOT": str(root / "static"),
            "INVENTREE_DB_ENGINE": "sqlite3",
            "INVENTREE_DB_NAME": str(root / "db.sqlite3"),
            "INVENTREE_BACKUP_SAFETY_DIR": str(root / "safety"),
            "INVENTREE_BACKUP_KEEP": str(args.keep),
        }
    )

    def manage(*argv: str, **extra: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=args.source,
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise SystemExit(f"manage.py {' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout + done.stderr

    manage("migrate", "--noinput")
    archive = root / "archive"
    manage("backup_create", "--skip-db", INVENTREE_BACKUP_DIR=str(archive), INVENTREE_BACKUP_MEDIA_MODE="archive")
    media_bytes = sum(p.stat().st_size for p in media.rglob("*") if p.is_file())
    archive_bytes = _stored(archive)
    incremental = root / "incremental"
    next_number = args.files
    rows = []
    for night in range(args.nights):
        if night:
            files = sorted(p for p in media.rglob("*") if p.is_file())
            for path in rng.sample(files, max(1, int(len(files) * args.change))):
                path.write_bytes(rng.randbytes(path.stat().st_size))
            for path in rng.sample(files, int(len(files) * args.churn)):
                path.unlink()
                _new_file(media, rng, next_number)
                next_number += 1
        said = manage(
            "backup_create",
            "--skip-db",
            "--clean",
            INVENTREE_BACKUP_DIR=str(incremental),
            INVENTREE_BACKUP_MEDIA_MODE="incremental",
        )
        repacked = next((line.strip() for line in said.splitlines() if line.strip().startswith("Repacked")), "")
        rows.append(
            {"night": night + 1, "stored": _stored(incremental), "objects": _objects(incremental), "repacked": repacked}
        )
        print(
            f"night {night + 1:2}: stored {rows[-1]['stored'] / 2**20:7.1f} MiB in {rows[-1]['objects']:4} objects  "
            f"{repacked}",
            flush=True,
        )
    result = {
        "source": args.source,
        "files": args.files,
        "media_bytes": media_bytes,
        "archive_bytes": archive_bytes,
        "keep": args.keep,
        "change": args.change,
        "churn": args.churn,
        "nights": rows,
        "ratio": rows[-1]["stored"] / archive_bytes,
    }
    (root / "result.json").write_text(json.dumps(result, indent=1))
    print(
        f"media {media_bytes / 2**20:.1f} MiB, one archive set {archive_bytes / 2**20:.1f} MiB; after "
        f"{args.nights} nights (keep {args.keep}): {rows[-1]['stored'] / 2**20:.1f} MiB = {result['ratio']:.2f}x, "
        f"{rows[-1]['objects']} objects"
    )


if __name__ == "__main__":
    main()
