"""Test fixtures: throwaway demo sites on SQLite, PostgreSQL and MariaDB.

End-to-end tests run the real commands (``invoke ...`` / ``manage.py ...``) in
subprocesses, each with its own folders, config file and database, because
django-dbbackup reads its settings once per process.

Services: PostgreSQL on 127.0.0.1:5432 and MariaDB on 127.0.0.1:3306.  A test
needing one that is absent is skipped with the reason, unless
``BACKUP_TEST_REQUIRE_SERVICES=1`` (set by ``.ci/run``), when it fails.

The suite runs in parallel (pytest-xdist, ``-n auto --dist loadgroup`` in
pyproject.toml): each worker is its own process with its own session.  The
rules a test keeps to be safe there are in ``tests/README.md``; in short: names
from :func:`unique_name`, ports from :func:`free_port`, folders under
``tmp_path``, nothing written into the repository, no process-wide change that
outlives the test.  ``-n 0`` runs the suite in this one process.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIRE = os.environ.get("BACKUP_TEST_REQUIRE_SERVICES") == "1"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MY = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
#: Password of the database roles that tests create with one (see ``pg_password_site``).
DB_PASSWORD = "Db-pa55word-" + uuid.uuid4().hex[:8]

# In-process imports of backup_app need configured settings: a private demo site.
_SESSION_DIR = Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / f"backup-app-tests-{os.getpid()}"
_SESSION_DIR.mkdir(parents=True, exist_ok=True)
(_SESSION_DIR / "config.yaml").write_text("")
for _key in [k for k in os.environ if k.startswith("INVENTREE_")]:
    del os.environ[_key]
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "INVENTREE_CONFIG_FILE": str(_SESSION_DIR / "config.yaml"),
        "INVENTREE_DB_NAME": str(_SESSION_DIR / "db.sqlite3"),
        "INVENTREE_MEDIA_ROOT": str(_SESSION_DIR / "media"),
        "INVENTREE_STATIC_ROOT": str(_SESSION_DIR / "static"),
        "INVENTREE_BACKUP_DIR": str(_SESSION_DIR / "backup"),
        "INVENTREE_BACKUP_SAFETY_DIR": str(_SESSION_DIR / "safety"),
    }
)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
    for (engine, _key), name in _templates.items():  # the migrated templates of server_site
        try:
            if engine == "postgresql":
                with _pg_connect() as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                conn = _my_connect()
                with conn.cursor() as cur:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                conn.close()
        except Exception:  # noqa: BLE001, S110 - a server gone at the end leaves nothing to drop
            pass


# --- running in parallel ---------------------------------------------------------------------------------------

#: This process's pytest-xdist worker ("gw0", "gw1", ...), "main" when the suite runs in one process.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


def unique_name(prefix: str = "backup_test") -> str:
    """A database, role, user or queue name no other test, worker or concurrent pytest run uses.

    ``<prefix>_<worker>_<8 hex>``: lower case, letters, digits and ``_`` only (valid unquoted in
    PostgreSQL and MariaDB), 26 characters with the default prefix, so that names the app derives
    from it (``<name>_safety_...``, ``<name>_restore_...``) stay under PostgreSQL's 63.
    """
    return f"{prefix}_{WORKER}_{uuid.uuid4().hex[:8]}"


#: Folder of the port reservations every pytest process of this machine shares (one lock file per port).
_PORT_LOCKS = Path("/tmp/backup-app-test-ports")
#: The reservations this process holds: each lock is released when the process ends.
_held_ports: list = []


def _port_range() -> range:
    """Ports below the kernel's ephemeral range: ``bind(("", 0))`` and outgoing connections never take them."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, max(low, 10001))


def free_port() -> int:
    """A loopback TCP port for a server a test starts (or one to leave closed, for "unreachable").

    Not ``bind(0)`` and close: the kernel may hand that port to another worker before the server binds
    it, and a test then talks to another test's server.  The port is reserved for the life of this
    process with an exclusive lock on ``/tmp/backup-app-test-ports/<port>.lock`` (so no other worker
    or pytest run on the machine picks it), and checked free with a bind; it is taken from below the
    ephemeral range, so no outgoing connection or ``bind(0)`` elsewhere lands on it.
    """
    _PORT_LOCKS.mkdir(mode=0o777, exist_ok=True)
    ports = _port_range()
    start = random.randrange(len(ports))
    for i in range(len(ports)):
        port = ports[(start + i) % len(ports)]
        lock = open(_PORT_LOCKS / f"{port}.lock", "a")  # noqa: SIM115 - held until the process ends
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                lock.close()
                continue
        _held_ports.append(lock)
        return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


def _module_fixture_groups(items) -> dict:
    """``{item: group}`` for the tests that share an expensive fixture of module (or class) scope.

    pytest-xdist's ``load`` distribution hands tests to whichever worker is free, so tests sharing one
    module-scoped fixture (a built wheel, a killed restore inspected by four tests) would each build
    it again on another worker.  Tests that share one instance of such a fixture (same parameter) go
    into one ``xdist_group``; a test using two joins their groups.  Session-scoped fixtures (the S3,
    SFTP, FTP, GCS and Azurite servers) are left alone: each worker starts its own.
    """
    parent: dict = {}

    def find(key):
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    keys_of = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        callspec = getattr(item, "callspec", None)
        keys = []
        for name in item.fixturenames:
            defs = info.name2fixturedefs.get(name)
            if not defs or defs[-1].scope not in ("module", "class", "package"):
                continue
            param = callspec.params.get(name, None) if callspec is not None and name in callspec.params else None
            keys.append((item.module.__name__ if item.module else "", name, re.sub(r"[^\w.-]+", "-", str(param))))
        if keys:
            keys_of[item] = keys
            for key in keys[1:]:
                parent[find(key)] = find(keys[0])
    # No "]" at the end: pytest-xdist takes a node id's last "@" for a group only after its last "]".
    return {item: "{}::{}({})".format(*find(keys[0])) for item, keys in keys_of.items()}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Under pytest-xdist: group the tests of one module-scoped fixture, and hand out the groups first.

    Runs before pytest-xdist reads the ``xdist_group`` marks (its own hook of the same name, under
    ``--dist loadgroup``).  A group runs on one worker from start to end, so the groups (the longest units)
    are put first and the single tests fill in around them, instead of one group starting last and
    running alone while the other worker idles.

    Collection runs in the workers, where pytest-xdist has set ``dist`` to ``no`` and ``loadgroup`` to whether
    the run's ``--dist`` is ``loadgroup`` (``xdist.remote``): that is the option read here.
    """
    if not config.pluginmanager.hasplugin("xdist") or not config.getoption("loadgroup", False):
        return
    groups = _module_fixture_groups(items)
    for item, group in groups.items():
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)  # stable: order kept within each


def service_missing(what: str, err: Exception):
    """Skip (or fail, when services are required) a test whose service is unreachable."""
    message = f"{what} is not reachable ({err})"
    if REQUIRE:
        pytest.fail(message + " and BACKUP_TEST_REQUIRE_SERVICES=1")
    pytest.skip(message)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Site:
    """A demo site in its own folder: database, media, backup folder and config file."""

    root: Path
    env: dict = field(default_factory=dict)

    @property
    def media(self) -> Path:
        return self.root / "media"

    @property
    def backups(self) -> Path:
        return self.root / "backup"

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    def run(self, *args: str, check: bool = True, extra_env: dict | None = None, timeout: int = 600) -> Result:
        """Run a command (``invoke ...``, ``python manage.py ...``) from the repository root."""
        env = {**self.env, **(extra_env or {})}
        argv = list(args)
        if argv[0] == "manage.py":
            argv = [sys.executable, "manage.py", *argv[1:]]
        elif argv[0] == "invoke":
            argv = [sys.executable, "-m", "invoke", *argv[1:]]
        proc = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{result.output}")
        return result

    def manage(self, *args: str, **kwargs) -> Result:
        return self.run("manage.py", *args, **kwargs)

    def invoke(self, *args: str, **kwargs) -> Result:
        return self.run("invoke", *args, **kwargs)

    def sets(self, *extra: str) -> list[dict]:
        return json.loads(self.manage("backup_list", "--json", *extra).stdout)

    def snapshot_db(self, alias: str = "default") -> dict:
        """``{table: [rows...]}`` of every table, rows sorted, values made comparable."""
        out = self.run(sys.executable, str(ROOT / "tests" / "snapshot.py"), alias).stdout
        return json.loads(out)

    def snapshot_media(self) -> dict:
        return media_hashes(self.media)

    def sql(self, statement: str, alias: str = "default") -> None:
        self.run(sys.executable, str(ROOT / "tests" / "snapshot.py"), alias, "--execute", statement)

    def query(self, statement: str, alias: str = "default") -> list[list]:
        """The rows ``statement`` selects (a count, where a whole :meth:`snapshot_db` would be large)."""
        return json.loads(
            self.run(sys.executable, str(ROOT / "tests" / "snapshot.py"), alias, "--query", statement).stdout
        )


def media_hashes(folder: Path) -> dict[str, str]:
    import hashlib

    result = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            result[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def base_env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVENTREE_", "DJANGO_"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "INVENTREE_CONFIG_FILE": str(root / "config.yaml"),
            "INVENTREE_MEDIA_ROOT": str(root / "media"),
            "INVENTREE_STATIC_ROOT": str(root / "static"),
            "INVENTREE_BACKUP_DIR": str(root / "backup"),
            "INVENTREE_BACKUP_SAFETY_DIR": str(root / "safety"),
            "INVENTREE_DB_ENGINE": "sqlite3",
            "INVENTREE_DB_NAME": str(root / "db.sqlite3"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def make_site(root: Path, **env: str) -> Site:
    root.mkdir(parents=True, exist_ok=True)
    (root / "media").mkdir(exist_ok=True)
    (root / "config.yaml").write_text("")
    site = Site(root=root, env=base_env(root))
    site.env.update(env)
    return site


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> Path:
    """The demo site's SQLite database, migrated once per test process (a migrate takes seconds)."""
    site = make_site(tmp_path_factory.mktemp("migrated") / "site")
    site.manage("migrate", "--noinput", "-v0")
    db = site.root / "db.sqlite3"
    assert sorted(p.name for p in site.root.iterdir()) == ["config.yaml", "db.sqlite3", "media"]  # no -wal
    return db


@pytest.fixture
def sqlite_site(tmp_path, migrated_sqlite) -> Site:
    """A fresh demo site on SQLite, migrated: a copy of :func:`migrated_sqlite`'s database."""
    site = make_site(tmp_path / "site")
    shutil.copyfile(migrated_sqlite, site.root / "db.sqlite3")
    return site


def _pg_connect(dbname: str = "postgres"):
    import psycopg

    return psycopg.connect(dbname=dbname, autocommit=True, connect_timeout=3, **PG)


@pytest.fixture
def postgres_database():
    """A fresh, empty PostgreSQL database name; dropped afterwards."""
    try:
        conn = _pg_connect()
    except Exception as err:
        service_missing("PostgreSQL on 127.0.0.1:5432", err)
    name = f"backup_test_{uuid.uuid4().hex[:10]}"
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with _pg_connect() as conn:
        # The database and those restores kept beside it (<name>_safety_..., <name>_restore_...).
        rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (name,)).fetchall()
        for (database,) in rows:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def server_site(root: Path, engine: str, database: str, user: str | None = None, password: str = "") -> Site:
    """A migrated demo site on the PostgreSQL (``postgresql``) or MariaDB (``mysql``) server of the tests.

    The empty ``database`` gets the tables of a template this process migrated once (:func:`_migrated_copy`),
    as :func:`sqlite_site` copies :func:`migrated_sqlite`: a migrate takes 2-10 s, a copy under one.  Where a
    copy would not be what ``migrate`` as ``user`` makes (a PostgreSQL role other than ``postgres`` owns what
    it creates), ``migrate`` runs."""
    server = PG if engine == "postgresql" else MY
    site = make_site(
        root,
        INVENTREE_DB_ENGINE=engine,
        INVENTREE_DB_NAME=database,
        INVENTREE_DB_HOST=server["host"],
        INVENTREE_DB_PORT=str(server["port"]),
        INVENTREE_DB_USER=user or server["user"],
        INVENTREE_DB_PASSWORD=password,
    )
    if not _migrated_copy(engine, database, user or server["user"]):
        site.manage("migrate", "--noinput", "-v0")
    return site


#: ``{(engine, key): template database}``: the demo site migrated once in this process (see _migrated_copy).
_templates: dict = {}


def _template(engine: str, key: tuple, create) -> str:
    """The template database of ``engine`` for ``key``, made by ``create(name)`` and migrated on first use."""
    if (engine, key) not in _templates:
        import tempfile

        name = unique_name("bk_tmpl")
        create(name)
        _templates[engine, key] = name  # dropped at the end of the session, also when the migrate fails
        folder = Path(tempfile.mkdtemp(prefix="bk-tmpl-"))
        try:
            server = PG if engine == "postgresql" else MY
            make_site(
                folder / "site",
                INVENTREE_DB_ENGINE=engine,
                INVENTREE_DB_NAME=name,
                INVENTREE_DB_HOST=server["host"],
                INVENTREE_DB_PORT=str(server["port"]),
                INVENTREE_DB_USER=server["user"],
                INVENTREE_DB_PASSWORD=server.get("password", ""),
            ).manage("migrate", "--noinput", "-v0")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return _templates[engine, key]


def _migrated_copy(engine: str, database: str, user: str) -> bool:
    """Give the empty ``database`` the demo site's migrated tables and rows from this process's template;
    False (nothing done) where ``migrate`` as ``user`` would make something else or the database is not empty.

    PostgreSQL: ``CREATE DATABASE ... TEMPLATE`` (the database dropped and made again with its owner, encoding
    and locale), for a site of the ``postgres`` role (the owner of what the copy holds).  MariaDB: each table's
    ``SHOW CREATE TABLE`` (keys, foreign keys, AUTO_INCREMENT) and rows, from a template of the same default
    character set and collation (so every column's is what ``migrate`` gives it); tables have no owner."""
    if engine == "postgresql":
        if user != PG["user"]:
            return False
        with _pg_connect() as conn:
            row = conn.execute(
                "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype"
                " FROM pg_database WHERE datname = %s",
                (database,),
            ).fetchone()
        if row is None or row[0] != PG["user"]:
            return False
        with _pg_connect(database) as conn:
            if conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace").fetchone()[0]:
                return False

        def create(name):
            from psycopg import sql

            with _pg_connect() as conn:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} ENCODING {} LC_COLLATE {} LC_CTYPE {} TEMPLATE template0").format(
                        sql.Identifier(name), *map(sql.Literal, row[1:])
                    )
                )

        template = _template(engine, row[1:], create)
        with _pg_connect() as conn:
            conn.execute(f'DROP DATABASE "{database}"')
            conn.execute(f'CREATE DATABASE "{database}" TEMPLATE "{template}"')
        return True
    conn = _my_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA"
                " WHERE SCHEMA_NAME = %s",
                (database,),
            )
            key = cur.fetchone()
            if key is None:
                return False
            cur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (database,))
            if cur.fetchone()[0]:
                return False

            def create(name):
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET {key[0]} COLLATE {key[1]}")

            template = _template(engine, key, create)
            cur.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
                (template,),
            )
            tables = [name for (name,) in cur.fetchall()]
            statements = []
            for table in tables:
                cur.execute(f"SHOW CREATE TABLE `{template}`.`{table}`")
                statements.append(cur.fetchone()[1])
            cur.execute(f"USE `{database}`")
            cur.execute("SET SESSION foreign_key_checks = 0")
            for statement in statements:
                cur.execute(statement)
            for table in tables:
                cur.execute(f"INSERT INTO `{table}` SELECT * FROM `{template}`.`{table}`")
    finally:
        conn.close()
    return True


@pytest.fixture
def postgres_site(tmp_path, postgres_database) -> Site:
    return server_site(tmp_path / "site", "postgresql", postgres_database)


def _my_connect(database: str | None = None):
    import pymysql

    return pymysql.connect(database=database, connect_timeout=3, autocommit=True, **MY)


@pytest.fixture
def mysql_database():
    """A fresh, empty MariaDB database name; dropped afterwards."""
    try:
        conn = _my_connect()
    except Exception as err:
        service_missing("MariaDB on 127.0.0.1:3306", err)
    name = f"backup_test_{uuid.uuid4().hex[:10]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    conn.close()
    yield name
    conn = _my_connect()
    with conn.cursor() as cur:
        # The database and those restores kept beside it (<name>_safety_..., <name>_restore_...).
        cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s", (name + "%",))
        for (database,) in cur.fetchall():
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
    conn.close()


@pytest.fixture
def mysql_site(tmp_path, mysql_database) -> Site:
    return server_site(tmp_path / "site", "mysql", mysql_database)


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def any_site(request) -> Site:
    """The same test on each engine."""
    return request.getfixturevalue(f"{request.param}_site")


def _pg_role_site(tmp_path, database: str):
    """A PostgreSQL site whose role logs in with DB_PASSWORD and owns its database, but may not create one."""
    role = f"bk_{uuid.uuid4().hex[:8]}"
    with _pg_connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{DB_PASSWORD}'")
        conn.execute(f'ALTER DATABASE "{database}" OWNER TO {role}')
    try:
        yield server_site(tmp_path / "site", "postgresql", database, role, DB_PASSWORD)
    finally:
        with _pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def pg_password_site(tmp_path, postgres_database):
    """A PostgreSQL site whose role logs in with DB_PASSWORD and owns its database, but may not create one."""
    for site in _pg_role_site(tmp_path, postgres_database):
        site.sql(
            "INSERT INTO demo_part (name, description, quantity, created, attachment) "
            "SELECT 'p', repeat(md5(g::text), 200), g, now(), '' FROM generate_series(1, 20000) g"
        )
        yield site


@pytest.fixture
def pg_role_site(tmp_path, postgres_database):
    """:func:`pg_password_site` without its 20,000 wide rows: for a test whose restore is refused or undone
    before any row moves, or that looks at the database's properties, not at its rows."""
    yield from _pg_role_site(tmp_path, postgres_database)


def _mysql_user_site(tmp_path, database: str):
    """A MariaDB site whose user logs in with DB_PASSWORD and has rights on its own database only."""
    user = f"bk_{uuid.uuid4().hex[:8]}"
    conn = _my_connect()
    with conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{DB_PASSWORD}'")
        cur.execute(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{DB_PASSWORD}'")
        cur.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'%'")
        cur.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'localhost'")
    conn.close()
    try:
        yield server_site(tmp_path / "site", "mysql", database, user, DB_PASSWORD)
    finally:
        conn = _my_connect()
        with conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
            cur.execute(f"DROP USER IF EXISTS '{user}'@'localhost'")
        conn.close()


@pytest.fixture
def mysql_password_site(tmp_path, mysql_database):
    """A MariaDB site whose user logs in with DB_PASSWORD and has rights on its own database only."""
    for site in _mysql_user_site(tmp_path, mysql_database):
        site.sql(
            "INSERT INTO demo_part (name, description, quantity, created, attachment) "
            "SELECT 'p', REPEAT(MD5(seq), 200), seq, NOW(), '' FROM seq_1_to_20000"
        )
        yield site


@pytest.fixture(params=["postgres", "mysql"])
def in_place_site(request, tmp_path):
    """A PostgreSQL or MariaDB site that may not create a database, so that its restores are in place; with the
    demo's few rows only (:func:`pg_password_site` and :func:`mysql_password_site` add 20,000 wide ones)."""
    if request.param == "postgres":
        yield from _pg_role_site(tmp_path, request.getfixturevalue("postgres_database"))
    else:
        yield from _mysql_user_site(tmp_path, request.getfixturevalue("mysql_database"))


@dataclass
class GpgHome:
    path: Path
    email: str
    passphrase: str | None


def make_gpg_home(email: str, passphrase: str | None = None) -> GpgHome:
    """A throwaway GnuPG home with one key pair (ed25519 + cv25519), optionally passphrase-protected."""
    import tempfile

    if shutil.which("gpg") is None:
        service_missing("gpg", FileNotFoundError("gpg not on PATH"))
    home = Path(tempfile.mkdtemp(prefix="gpg-", dir="/tmp"))
    home.chmod(0o700)
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--homedir",
            str(home),
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            passphrase or "",
            "--quick-gen-key",
            f"Backup Test <{email}>",
            "future-default",
            "default",
            "never",
        ],
        check=True,
        capture_output=True,
    )
    return GpgHome(home, email, passphrase)


def drop_gpg_home(home: GpgHome) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home.path), "--kill", "all"], capture_output=True)
    shutil.rmtree(home.path, ignore_errors=True)


@pytest.fixture
def gpg_home():
    home = make_gpg_home("backup@example.com")
    yield home
    drop_gpg_home(home)


@pytest.fixture
def other_gpg_home():
    home = make_gpg_home("someone-else@example.com")
    yield home
    drop_gpg_home(home)


def export_public(src: GpgHome, dst: Path) -> None:
    """Copy ``src``'s public key into the (new) home ``dst``: it can encrypt but not decrypt.

    ``--no-autostart``: a plain ``gpg --import`` starts a gpg-agent in ``dst`` (it asks the agent about secret
    keys), which nothing stops; a public key needs none."""
    dst.mkdir(mode=0o700, exist_ok=True)
    key = subprocess.run(
        ["gpg", "--homedir", str(src.path), "--export", src.email], check=True, capture_output=True
    ).stdout
    subprocess.run(
        ["gpg", "--batch", "--no-autostart", "--homedir", str(dst), "--import"],
        input=key,
        check=True,
        capture_output=True,
    )


def gpg_agents(home: Path) -> list[str]:
    """The gpg-agent processes started for the GnuPG home ``home`` (``pid: argv``), read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == "gpg-agent" and str(home) in argv:
            found.append(f"{entry}: {' '.join(argv).strip()}")
    return found
