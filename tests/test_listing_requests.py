"""What listing a remote store costs: requests counted by the S3 server itself (moto's request log), and on
every remote backend the connections counted by a proxy in front of its server.

A listing is one list request per page of 1,000 names plus one read per manifest, in parallel (a bounded
number at once, each thread on a connection it may use); never a HEAD per file.  The numbers for 300 sets are
in docs/performance.md.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from conftest import free_port
from tcp_proxy import CountingProxy
from test_remote_storage import (  # noqa: F401  (fixtures)
    BACKENDS,
    BUCKET,
    azure_server,
    ftp_server,
    gcs_server,
    point_at,
    s3_server,
    sftp_server,
    start_server,
    workdir,
)

from backup_app.incremental import PACK_FOLDER

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


def test_listing_300_sets_is_one_list_per_1000_names_and_one_manifest_read_per_set(sqlite_site, s3_server, workdir):  # noqa: F811
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
    names = SETS * len(first["files"])  # 1,200: each set's dump, its sidecar, archive and manifest
    assert len(lists) == -(-names // 1000)  # one list request per page of 1,000 names
    assert len(reads) == SETS  # one per manifest


def _put_unsigned(s3_server, keys: list[str]) -> None:  # noqa: F811
    """Empty objects ``keys`` put into the same moto server by plain HTTP, as fast as it takes them: its
    authentication is off for exactly that many requests (``/moto-api/reset-auth``), each is checked, and it is
    on again after."""
    import http.client
    import urllib.request

    url = s3_server.configure("x")[0]["endpoint_url"]
    endpoint = urlsplit(url)

    def reset_auth(count: int) -> None:
        request = urllib.request.Request(
            f"{url}/moto-api/reset-auth", data=str(count).encode(), method="POST",
            headers={"Content-Type": "text/plain"},
        )  # fmt: skip
        urllib.request.urlopen(request, timeout=10).read()

    def put(part: list[str]) -> None:
        conn = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=30)
        for key in part:
            conn.request("PUT", f"/{BUCKET}/{key}", body=b"", headers={"Content-Length": "0"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200, (key, response.status)
        conn.close()

    reset_auth(len(keys))
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(put, [keys[i::4] for i in range(4)]))
    finally:
        reset_auth(0)
    # Authentication is on again: an unsigned request is refused (moto answers 403, or 500 without a signature
    # at all) and puts nothing.
    conn = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=30)
    conn.request("PUT", f"/{BUCKET}/{keys[0]}.unsigned", body=b"", headers={"Content-Length": "0"})
    assert conn.getresponse().status in (403, 500)
    conn.close()
    listed = _admin_client(s3_server).list_objects_v2(Bucket=BUCKET, Prefix=f"{keys[0]}.unsigned")
    assert listed["KeyCount"] == 0


#: Objects put in the pack folder: more than one page of a listing.
EXTRA_PACKS = 1_000


def test_listing_incremental_sets_costs_the_same_however_many_packs_the_store_holds(sqlite_site, s3_server, workdir):  # noqa: F811
    # Issue 20: "listing cost on a remote store independent of the number of objects".  The packs live in a
    # folder of their own: listbackups never lists it, and a backup lists it once per 1,000 packs, with no
    # request per pack.
    prefix = f"list-{uuid.uuid4().hex[:10]}"
    point_at(sqlite_site, s3_server, prefix)
    sqlite_site.env["INVENTREE_BACKUP_MEDIA_MODE"] = "incremental"
    for i in range(20):
        (sqlite_site.media / f"f{i}.bin").write_bytes(bytes([i]) * 5000)
    sqlite_site.manage("backup_create", "--quiet", "--skip-db")
    log = workdir / "moto S3 server.log"

    def listbackups() -> list[tuple[str, str]]:
        offset = log.stat().st_size
        listed = json.loads(sqlite_site.manage("backup_list", "--json").stdout)
        assert [s["complete"] for s in listed] == [True]
        return _requests_since(log, offset, prefix)

    before = listbackups()
    # packs no set names (as a killed backup leaves them until the next prune)
    _put_unsigned(s3_server, [f"{prefix}/{PACK_FOLDER}/{i:064x}.pack.gz" for i in range(EXTRA_PACKS)])
    after = listbackups()
    offset = log.stat().st_size
    sqlite_site.manage("backup_create", "--quiet", "--skip-db")
    backup = _requests_since(log, offset, prefix)

    print(f"listbackups: {len(before)} requests with 1 pack, {len(after)} with {EXTRA_PACKS + 1}")
    print(
        "second backup:",
        *(f"{m} {p.split('?')[0]}{' (list)' if 'prefix=' in p else ''}" for m, p in backup),
        sep="\n  ",
    )
    assert sorted(after) == sorted(before)
    assert not [r for r in after if PACK_FOLDER in r[1]]
    pack_lists = [r for r in backup if r[0] == "GET" and "prefix=" in r[1] and PACK_FOLDER in r[1]]
    assert len(pack_lists) == -(-(EXTRA_PACKS + 1) // 1000)  # one list request per page of 1,000 packs
    per_pack = [r for r in backup if r[0] in ("HEAD", "GET") and "prefix=" not in r[1] and PACK_FOLDER in r[1]]
    assert per_pack == []


# --- every remote backend: manifests read in parallel, each thread on a connection it may use ---------------

PARALLEL_SETS = 24
#: The most reads at once (Adapter.read_workers).
READ_WORKERS = 8


def _through_proxy(site, remote_name: str, remote, prefix: str, proxy_port: int) -> tuple[str, int]:
    """Point ``site`` at ``remote`` through 127.0.0.1:``proxy_port``; the (host, port) the proxy forwards to."""
    options, backup_dir = remote.configure(prefix)
    if remote_name == "sftp":
        real = options["params"]["port"]
        home = Path(options["params"]["key_filename"]).parent
        known = home / f"known_hosts_{proxy_port}"  # the server's host key, at the proxy's port
        known.write_text((home / "known_hosts").read_text().replace(f"]:{real} ", f"]:{proxy_port} "))
        point_at(site, remote, prefix, ssh_port=proxy_port, known_hosts=known.name)
        return ("127.0.0.1", real)
    if remote_name == "ftp":
        real = urlsplit(options["location"]).port
        point_at(site, remote, prefix, ftp_port=proxy_port)
        return ("127.0.0.1", real)
    if remote_name == "gcs":
        real = urlsplit(remote.extra_env["STORAGE_EMULATOR_HOST"]).port
        point_at(site, remote, prefix)
        site.env["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{proxy_port}"
        return ("127.0.0.1", real)
    if remote_name == "s3":
        real = urlsplit(options["endpoint_url"]).port
        point_at(site, remote, prefix, url=f"http://127.0.0.1:{proxy_port}")
        return ("127.0.0.1", real)
    if remote_name == "azure":
        endpoint = next(p for p in options["connection_string"].split(";") if p.startswith("BlobEndpoint="))
        url = endpoint.removeprefix("BlobEndpoint=")
        real = urlsplit(url).port
        point_at(site, remote, prefix, url=url.replace(f":{real}/", f":{proxy_port}/"))
        return ("127.0.0.1", real)
    raise AssertionError(remote_name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_listing_reads_manifests_at_once_over_a_bounded_number_of_connections(request, sqlite_site, backend):
    remote = request.getfixturevalue(f"{backend}_server")
    prefix = f"par-{uuid.uuid4().hex[:10]}"
    proxy_port = free_port()
    upstream = _through_proxy(sqlite_site, backend, remote, prefix, proxy_port)
    proxy = CountingProxy(proxy_port, upstream)
    try:
        (sqlite_site.media / "a.txt").write_text("a")
        sqlite_site.manage("backup_create", "--quiet")
        [first] = sqlite_site.sets()
        sqlite_site.run(sys.executable, "tests/copy_sets.py", first["name"], str(PARALLEL_SETS))
        proxy.reset()

        listed = sqlite_site.sets()

        print(f"{backend}: {len(listed)} sets listed over {proxy.opened} connections, {proxy.peak} open at once")
        assert len(listed) == PARALLEL_SETS and all(s["complete"] for s in listed)
        # Manifests read at once: one after another, a client never has more than one connection open (FTP
        # two: the listing's and the reading one) ...
        assert proxy.peak >= 3
        # ... and no more at once than the workers and the listing's own.
        assert proxy.peak <= READ_WORKERS + 2
        if backend in ("sftp", "ftp"):
            # Each worker logs in once for all its reads: not a session (or a login) per manifest.
            assert proxy.opened <= READ_WORKERS + 2
        else:
            # The HTTP test servers close the connection after each reply (HTTP/1.0), so here a connection is a
            # request: one list and one GET per manifest, no HEAD (GCS: one more, for the bucket).
            assert proxy.opened <= PARALLEL_SETS + 2
    finally:
        proxy.close()


LIMITED_FTP_SERVER = """
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

port, home = int(sys.argv[1]), sys.argv[2]
authorizer = DummyAuthorizer()
authorizer.add_user("backup", "pw", home, perm="elradfmw")
FTPHandler.authorizer = authorizer
server = FTPServer(("127.0.0.1", port), FTPHandler)
server.max_cons_per_ip = 2  # a third login at once is refused: 421
server.serve_forever()
"""


def test_a_server_that_refuses_more_logins_still_lists_every_set(sqlite_site, tmp_path, ftp_server):  # noqa: F811
    home = tmp_path / "ftp"
    home.mkdir()
    port = free_port()
    server = start_server(
        "FTP server with 2 connections",
        [sys.executable, "-c", LIMITED_FTP_SERVER, str(port), str(home)],
        port,
        tmp_path,
    )
    try:
        sqlite_site.env["INVENTREE_BACKUP_STORAGE"] = "storages.backends.ftp.FTPStorage"
        sqlite_site.env["INVENTREE_BACKUP_OPTIONS"] = json.dumps({"location": f"ftp://backup:pw@127.0.0.1:{port}/b"})
        sqlite_site.env.pop("INVENTREE_BACKUP_DIR")
        (sqlite_site.media / "a.txt").write_text("a")
        sqlite_site.manage("backup_create", "--quiet")
        [first] = sqlite_site.sets()
        sqlite_site.run(sys.executable, "tests/copy_sets.py", first["name"], str(PARALLEL_SETS))

        result = sqlite_site.manage("backup_list", "--json")
        listed = json.loads(result.stdout)

        assert [s["status"] for s in listed] == ["complete"] * PARALLEL_SETS
        assert "Too many connections" in server.log.read_text()  # the server did refuse logins (421)
        # A refused extra login is not waited for (its reads are done over the listing's connection): no retry.
        assert "retrying" not in result.stderr, result.stderr
    finally:
        server.stop()
