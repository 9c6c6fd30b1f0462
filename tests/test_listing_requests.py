"""What listing a remote store costs: requests counted by the S3 server itself (moto's request log).

A listing is one list request per page of 1,000 names plus one read per manifest, in parallel; never a HEAD
per file.  The numbers for 300 sets are in docs/performance.md.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import boto3
from test_remote_storage import BUCKET, point_at, s3_server, workdir  # noqa: F401  (fixtures)

SETS = 300
REQUEST = re.compile(r'"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP')


def _admin_client(s3_server):  # noqa: F811
    options, _prefix = s3_server.configure("x", user="admin")
    return boto3.client(
        "s3",
        endpoint_url=options["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id=options["access_key"],
        aws_secret_access_key=options["secret_key"],
    )


def _copy_sets(client, prefix: str, names: list[str], stamp: str, count: int) -> None:
    """``count - 1`` more sets like the one in ``names`` (files copied, manifests rewritten to their stamp)."""
    base = time.mktime(time.strptime(stamp, "%Y-%m-%d-%H%M%S"))
    manifest = next(n for n in names if n.endswith(".manifest.metadata"))
    text = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{manifest}")["Body"].read().decode()
    for i in range(1, count):
        new = time.strftime("%Y-%m-%d-%H%M%S", time.localtime(base - 3600 * i))
        for name in names:
            key = f"{prefix}/{name.replace(stamp, new)}"
            if name == manifest:
                client.put_object(Bucket=BUCKET, Key=key, Body=text.replace(stamp, new).encode())
            else:
                client.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": f"{prefix}/{name}"})


def _requests_since(log, offset: int, prefix: str) -> list[tuple[str, str]]:
    with open(log, encoding="utf-8", errors="replace") as fh:
        fh.seek(offset)
        found = [m.groups() for m in map(REQUEST.search, fh) if m]
    return [(method, path) for method, path in found if prefix in path]


def test_listing_300_sets_is_one_list_and_one_manifest_read_per_set(sqlite_site, s3_server, workdir):  # noqa: F811
    prefix = f"list-{uuid.uuid4().hex[:10]}"
    point_at(sqlite_site, s3_server, prefix)
    (sqlite_site.media / "a.txt").write_text("a")
    sqlite_site.manage("backup_create", "--quiet")
    [first] = sqlite_site.sets()
    client = _admin_client(s3_server)
    _copy_sets(client, prefix, [f["name"] for f in first["files"]], first["name"], SETS)
    log = workdir / "moto S3 server.log"
    offset = log.stat().st_size

    t0 = time.monotonic()
    listed = json.loads(sqlite_site.manage("backup_list", "--json").stdout)
    seconds = time.monotonic() - t0

    requests = _requests_since(log, offset, prefix)
    heads = [r for r in requests if r[0] == "HEAD"]
    lists = [r for r in requests if r[0] == "GET" and "prefix=" in r[1]]
    reads = [r for r in requests if r[0] == "GET" and "prefix=" not in r[1]]
    print(
        f"listbackups over {len(listed)} sets: {len(requests)} requests ({len(lists)} list, {len(reads)} GET, "
        f"{len(heads)} HEAD) in {seconds:.1f} s"
    )
    assert len(listed) == SETS and all(s["complete"] for s in listed)
    assert heads == []
    assert len(lists) == 1  # 900 names: one page
    assert len(reads) == SETS  # one per manifest
