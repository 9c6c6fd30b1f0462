"""No secret left behind: killed runs, the process table, GnuPG's agent, odd passwords, stock mail, shown values.

Everything runs the real commands of a throwaway demo site (``invoke ...`` /
``manage.py ...``) against the real MariaDB and PostgreSQL servers and real
``gpg``.  Runs are stopped at a real blocking point, never by a mock:

- a MariaDB/PostgreSQL dump waits on a table lock the test holds (``LOCK TABLES
  ... WRITE`` / ``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE``), so the dump tool is
  running, connected, with its credentials in hand;
- a restore's (or ``verify --restore-test``'s) ``mysql`` client is frozen with
  ``SIGSTOP`` the moment it shows in the process tree;

then the whole process group gets ``SIGKILL`` or ``SIGTERM`` (what ``docker
stop`` and systemd send).  Every file left in ``$TMPDIR`` (a private folder per
test) and under the site is searched for the password bytes and for a marker
that only the site's rows hold (a full dump).
"""

from __future__ import annotations

import email
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import (
    PG,
    ROOT,
    Site,
    _my_connect,
    _pg_connect,
    drop_gpg_home,
    free_port,
    make_gpg_home,
    make_site,
    server_site,
    service_missing,
)

DB_PASSWORD = "Kept-0ut-" + uuid.uuid4().hex[:12]
#: Held by every row the tests insert: a file holding it holds (part of) a dump of the site.
MARKER = "dump-marker-" + uuid.uuid4().hex[:12]
ROWS = {
    "mysql": "INSERT INTO demo_part (name, description, quantity, created, attachment) "
    f"SELECT '{MARKER}', REPEAT(MD5(seq), 40), seq, NOW(), '' FROM seq_1_to_4000",
    "postgresql": "INSERT INTO demo_part (name, description, quantity, created, attachment) "
    f"SELECT '{MARKER}', repeat(md5(g::text), 40), g, now(), '' FROM generate_series(1, 4000) g",
}
DUMP_TOOLS = {"mysqldump", "mariadb-dump"}
MYSQL_CLIENTS = {"mysql", "mariadb"}


# --- processes and files --------------------------------------------------------


def start(site: Site, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``invoke ARGS`` in its own process group (so the whole run can be signalled); ``env`` added to the site's."""
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        env={**site.env, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def argv_of(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def tool_pid(proc: subprocess.Popen, names: set[str]) -> int | None:
    """The pid of a process below ``proc`` whose program is one of ``names``."""
    for pid in descendants(proc.pid):
        argv = argv_of(pid)
        if argv and os.path.basename(argv[0].decode(errors="replace")) in names:
            return pid
    return None


def wait_until(what: str, predicate, proc: subprocess.Popen, *, interval: float = 0.002, timeout: float = 120):
    """Poll ``predicate`` every ``interval`` seconds until it returns something true; fail if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the command ended (exit {proc.returncode}) before {what}:\n{out}{err}")
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def stop_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the run's whole process group (stopped members are woken so that SIGTERM lands)."""
    os.killpg(proc.pid, sig)
    if sig != signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGCONT)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    # Whatever the signal, nothing of the run may go on after this point.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)


def holding(needle: str, *roots: Path) -> list[str]:
    """Regular files under ``roots`` whose bytes contain ``needle`` (each with its size)."""
    data = needle.encode()
    found = []
    for root in roots:
        for folder, _dirs, files in os.walk(root):
            for name in files:
                path = Path(folder) / name
                try:
                    if not stat.S_ISREG(path.lstat().st_mode):
                        continue
                    with open(path, "rb") as fh:
                        if data in fh.read():
                            found.append(f"{path} ({path.stat().st_size} bytes)")
                except OSError:
                    continue
    return found


def private_tmp(site: Site, tmp_path: Path) -> Path:
    """Point the site's ``TMPDIR`` at a folder of its own."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir(mode=0o700)
    site.env["TMPDIR"] = str(tmp)
    return tmp


# --- MariaDB: a user with a password, rights on its own database (and its side databases) -------


@contextmanager
def mysql_user(database: str, *, own_database_only: bool, password: str = DB_PASSWORD):
    """A MariaDB user with ``password``; ALL on ``database`` only, or also on ``database%`` (side databases)."""
    user = f"bk_{uuid.uuid4().hex[:8]}"
    # (the query is %-formatted by the driver: a literal % is written %%)
    target = f"`{database}`.*" if own_database_only else f"`{database}%%`.*"
    conn = _my_connect()
    try:
        with conn.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (user, host, password))
                cur.execute(f"GRANT ALL ON {target} TO %s@%s", (user, host))
    finally:
        conn.close()
    try:
        yield user
    finally:
        conn = _my_connect()
        with conn.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute("DROP USER IF EXISTS %s@%s", (user, host))
        conn.close()


@contextmanager
def module_mysql_database():
    """A fresh MariaDB database for a module-scoped fixture (conftest's ``mysql_database`` is per test)."""
    try:
        conn = _my_connect()
    except Exception as err:
        service_missing("MariaDB on 127.0.0.1:3306", err)
    name = f"backup_test_{uuid.uuid4().hex[:10]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    conn.close()
    try:
        yield name
    finally:
        conn = _my_connect()
        with conn.cursor() as cur:
            cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s", (name + "%",))
            for (database,) in cur.fetchall():
                cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        conn.close()


@pytest.fixture
def mysql_side_db_site(tmp_path, mysql_database):
    """A MariaDB site whose user may create side databases: restores stage in a new database."""
    with mysql_user(mysql_database, own_database_only=False) as user:
        site = server_site(tmp_path / "site", "mysql", mysql_database, user, DB_PASSWORD)
        site.sql(ROWS["mysql"])
        site.user = user
        site.database = mysql_database
        yield site


@contextmanager
def mysql_table_locked(database: str, table: str = "demo_part"):
    """Hold ``LOCK TABLES table WRITE``: every reader of the table (a dump) waits until the block ends."""
    conn = _my_connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(f"LOCK TABLES `{table}` WRITE")
        yield conn
    finally:
        with conn.cursor() as cur:
            cur.execute("UNLOCK TABLES")
        conn.close()


#: How the dump tool reads a table's rows (``mysqldump``/``mariadb-dump``): what waits on the table lock.
DUMP_SELECT = "SELECT /*!40001 SQL_NO_CACHE */%"


def mysql_dump_waits_on_lock(user: str) -> bool:
    """Whether a connection of ``user`` reading rows as the dump tool does waits for a table's metadata lock (not
    another of the run's connections, e.g. the in-place restore's ``LOCK TABLES`` probe)."""
    conn = _my_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                " WHERE USER = %s AND STATE LIKE %s AND INFO LIKE %s",
                (user, "Waiting for table metadata lock%", DUMP_SELECT),
            )
            return cur.fetchone()[0] > 0
    finally:
        conn.close()


def wait_dump_blocked(site: Site, proc: subprocess.Popen) -> subprocess.Popen:
    """Return ``proc`` once its MariaDB dump waits on the table lock the caller holds."""
    wait_until("the dump waits on the table lock", lambda: mysql_dump_waits_on_lock(site.user), proc, interval=0.02)
    assert tool_pid(proc, DUMP_TOOLS), "the waiting connection is not a dump tool of this run"
    return proc


def run_dump_blocked(site: Site, *args: str) -> subprocess.Popen:
    """Start ``invoke ARGS`` and return once its MariaDB dump waits on the table lock the caller holds."""
    return wait_dump_blocked(site, start(site, *args))


def wait_paused(proc: subprocess.Popen, step: str) -> None:
    """Read the run's stderr until it says it is paused at ``step`` (see backup_app.testing)."""
    seen = []
    for line in proc.stderr:
        if line.strip() == f"paused at {step}":
            return
        seen.append(line)
    raise AssertionError(f"the command ended (exit {proc.wait()}) before pausing at {step}:\n{''.join(seen)}")


SIGNALS = [pytest.param(signal.SIGKILL, id="SIGKILL"), pytest.param(signal.SIGTERM, id="SIGTERM")]


# --- killed MariaDB backups and restores leave no password and no dump in $TMPDIR --------------


@pytest.mark.parametrize("sig", SIGNALS)
def test_killed_mariadb_backup_leaves_no_password_in_tmpdir_or_the_site(mysql_side_db_site, tmp_path, sig):
    site = mysql_side_db_site
    tmp = private_tmp(site, tmp_path)
    with mysql_table_locked(site.database):
        proc = run_dump_blocked(site, "backup")
        stop_group(proc, sig)

    assert holding(DB_PASSWORD, tmp, site.root) == []


LOADING_COMMANDS = [
    pytest.param(("restore", "--skip-media"), id="restore"),
    pytest.param(("verify", "--restore-test"), id="verify-restore-test"),
]


@pytest.mark.parametrize("command", LOADING_COMMANDS)
@pytest.mark.parametrize("sig", SIGNALS)
def test_killed_mariadb_restore_leaves_no_password_in_tmpdir_or_the_site(mysql_side_db_site, tmp_path, sig, command):
    site = mysql_side_db_site
    site.invoke("backup", "--skip-media")
    tmp = private_tmp(site, tmp_path)
    proc = start(site, *command)
    client = wait_until("the mysql client runs", lambda: tool_pid(proc, MYSQL_CLIENTS), proc)
    os.kill(client, signal.SIGSTOP)  # frozen mid-restore, credentials in hand

    stop_group(proc, sig)

    assert holding(DB_PASSWORD, tmp, site.root) == []


@pytest.fixture(scope="module", params=[signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def killed_in_place_mariadb_restore(request, tmp_path_factory):
    """An in-place MariaDB restore (the user may not create databases) killed while it dumps the live tables.

    In place, the live tables are dumped (kept for undo) before they are replaced: that dump waits on the lock.
    The lock is taken once the run has found the tables free (it stops, nothing changed, when they stay held), paused
    before the dump. Yields ``(site, tmpdir)`` after the kill.
    """
    root = tmp_path_factory.mktemp("in-place")
    with module_mysql_database() as database, mysql_user(database, own_database_only=True) as user:
        site = server_site(root / "site", "mysql", database, user, DB_PASSWORD)
        site.sql(ROWS["mysql"])
        site.user = user
        site.killed_by = request.param
        site.invoke("backup", "--skip-media")
        tmp = private_tmp(site, root)
        step = "restore:in-place-dump:default"
        resume = root / "resume"
        pause = {"BACKUP_APP_PAUSE_AT": step, "BACKUP_APP_RESUME_FILE": str(resume)}
        proc = start(site, "restore", "--skip-media", env=pause)
        try:
            wait_paused(proc, step)
            with mysql_table_locked(database):
                resume.touch()
                wait_dump_blocked(site, proc)
                stop_group(proc, request.param)
        finally:
            if proc.poll() is None:
                stop_group(proc, signal.SIGKILL)
        yield site, tmp


def test_killed_mariadb_in_place_restore_leaves_no_password_in_tmpdir_or_the_site(killed_in_place_mariadb_restore):
    site, tmp = killed_in_place_mariadb_restore

    assert holding(DB_PASSWORD, tmp, site.root) == []


def test_killed_mariadb_in_place_restore_leaves_no_dump_in_tmpdir(killed_in_place_mariadb_restore):
    _site, tmp = killed_in_place_mariadb_restore

    assert holding(MARKER, tmp) == []


def spools(site: Site) -> list[Path]:
    return sorted(Path(site.env["INVENTREE_BACKUP_SAFETY_DIR"]).glob(".spool-*"))


def test_killed_in_place_restore_left_its_incoming_dump_only_in_a_private_folder_of_the_safety_folder(
    killed_in_place_mariadb_restore,
):
    # SIGKILL leaves the spool (0700, holding the incoming dump); SIGTERM is handled like a failure: the run undoes
    # itself and removes its spool, so nothing is left anywhere.
    site, _tmp = killed_in_place_mariadb_restore
    left = [(0o700, True)] if site.killed_by == signal.SIGKILL else []

    assert [(stat.S_IMODE(p.stat().st_mode), bool(holding(MARKER, p))) for p in spools(site)] == left


def test_next_restore_removes_the_folder_a_killed_restore_left(killed_in_place_mariadb_restore):
    site, _tmp = killed_in_place_mariadb_restore

    result = site.invoke("restore", "--skip-media", check=False)

    assert spools(site) == [], result.output
    # Only a SIGKILL leaves a folder for the next restore to remove (a SIGTERM'd run removed its own).
    said = "left behind by an interrupted restore" in result.stderr
    assert said == (site.killed_by == signal.SIGKILL), result.output


# --- PostgreSQL: a role without CREATEDB restores in place --------------------------------------


@pytest.fixture
def pg_no_createdb_site(tmp_path, postgres_database):
    role = f"bk_{uuid.uuid4().hex[:8]}"
    with _pg_connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN NOCREATEDB PASSWORD '{DB_PASSWORD}'")
        conn.execute(f'ALTER DATABASE "{postgres_database}" OWNER TO {role}')
    site = server_site(tmp_path / "site", "postgresql", postgres_database, role, DB_PASSWORD)
    site.sql(ROWS["postgresql"])
    site.role = role
    site.database = postgres_database
    yield site
    with _pg_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{postgres_database}" WITH (FORCE)')
        conn.execute(f"DROP ROLE IF EXISTS {role}")


@contextmanager
def pg_table_locked(database: str, table: str = "demo_part"):
    """Hold ``LOCK TABLE table IN ACCESS EXCLUSIVE MODE`` in an open transaction: pg_dump waits on it."""
    import psycopg

    conn = psycopg.connect(dbname=database, **PG)
    try:
        conn.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        yield conn
    finally:
        conn.rollback()
        conn.close()


def pg_role_waits_on_lock(role: str) -> bool:
    with _pg_connect() as conn:
        return bool(
            conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE NOT l.granted AND a.usename = %s",
                (role,),
            ).fetchone()[0]
        )


@pytest.mark.parametrize("sig", SIGNALS)
def test_killed_postgres_in_place_restore_leaves_no_dump_in_tmpdir(pg_no_createdb_site, tmp_path, sig):
    site = pg_no_createdb_site
    site.invoke("backup", "--skip-media")
    tmp = private_tmp(site, tmp_path)
    with pg_table_locked(site.database):
        proc = start(site, "restore", "--skip-media")
        wait_until("pg_dump waits on the table lock", lambda: pg_role_waits_on_lock(site.role), proc, interval=0.02)
        stop_group(proc, sig)

    assert holding(MARKER, tmp) == []


# --- while a MariaDB dump runs: not on a command line, not in a file it has open in $TMPDIR ------


@pytest.fixture(scope="module")
def running_mariadb_dump(tmp_path_factory):
    """A backup whose mariadb-dump is running (waiting on a table lock); yields (site, proc, tmpdir)."""
    root = tmp_path_factory.mktemp("running-dump")
    with module_mysql_database() as database, mysql_user(database, own_database_only=False) as user:
        site = server_site(root / "site", "mysql", database, user, DB_PASSWORD)
        site.sql(ROWS["mysql"])
        site.user = user
        tmp = private_tmp(site, root)
        with mysql_table_locked(database):
            proc = run_dump_blocked(site, "backup")
            try:
                yield site, proc, tmp
            finally:
                stop_group(proc, signal.SIGKILL)


def test_running_mariadb_dump_has_no_password_on_any_command_line(running_mariadb_dump):
    _site, proc, _tmp = running_mariadb_dump

    lines = [b" ".join(argv_of(pid)).decode(errors="replace") for pid in descendants(proc.pid)]

    assert any(os.path.basename(line.split(" ")[0]) in DUMP_TOOLS for line in lines), lines
    assert [line for line in lines if DB_PASSWORD in line] == []


def test_running_mariadb_dump_has_no_file_open_in_tmpdir_holding_the_password(running_mariadb_dump):
    _site, proc, tmp = running_mariadb_dump
    found = []
    for pid in descendants(proc.pid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            link = f"/proc/{pid}/fd/{fd}"
            try:
                target = os.readlink(link)
                if target.startswith(str(tmp)) and stat.S_ISREG(os.stat(link).st_mode):
                    with open(link, "rb") as fh:
                        if DB_PASSWORD.encode() in fh.read():
                            found.append(f"{pid} {argv_of(pid)[0]!r} fd {fd} -> {target}")
            except OSError:
                continue

    assert found == []


def test_running_mariadb_dump_keeps_no_file_in_tmpdir_holding_the_password(running_mariadb_dump):
    _site, _proc, tmp = running_mariadb_dump

    assert holding(DB_PASSWORD, tmp) == []


# --- GnuPG: no passphrase cached, no agent left ---------------------------------------------------


GPG_PASSPHRASE = "gpg-" + uuid.uuid4().hex[:12]


@pytest.fixture
def protected_key():
    home = make_gpg_home("cache@example.com", passphrase=GPG_PASSPHRASE)
    # Generating the key started an agent for the home; a user's site starts with none.
    subprocess.run(["gpgconf", "--homedir", str(home.path), "--kill", "gpg-agent"], capture_output=True)
    yield home
    drop_gpg_home(home)


@pytest.fixture
def encrypted_site(sqlite_site, protected_key, tmp_path):
    """A site with one encrypted set (passphrase-protected key), TMPDIR private."""
    site = sqlite_site
    site.env.update(
        {"INVENTREE_BACKUP_GPG_RECIPIENT": protected_key.email, "INVENTREE_BACKUP_GPG_HOME": str(protected_key.path)}
    )
    (site.media / "doc.txt").write_text("backed up")
    site.invoke("backup", "--encrypt")
    private_tmp(site, tmp_path)
    return site


def agents_for(home: Path, tmp: Path) -> list[str]:
    """gpg-agent processes serving ``home`` or a home inside the run's ``TMPDIR``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = [a.decode(errors="replace") for a in argv_of(int(entry))]
            if argv and os.path.basename(argv[0]).lstrip("[").startswith("gpg-agent"):
                line = " ".join(argv)
                if str(home) in line or str(tmp) in line:
                    found.append(f"{entry}: {line}")
    return found


def agent_answers(home: Path) -> bool:
    """Whether a gpg-agent listens on the socket gpg would use for ``home``."""
    path = subprocess.run(
        ["gpgconf", "--homedir", str(home), "--list-dirs", "agent-socket"], capture_output=True, text=True, check=True
    ).stdout.strip()
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


@pytest.fixture(scope="module", params=["restore", "verify"], ids=["after-restore", "after-verify"])
def after_a_run_with_the_passphrase(request, tmp_path_factory):
    """``invoke restore``/``verify`` with the passphrase file, then ``invoke restore`` without it.

    Returns what was seen: the gpg-agents left after the first run, whether one answers on the home's socket,
    the second restore's result and the media file afterwards.
    """
    root = tmp_path_factory.mktemp("gpg-cache")
    home = make_gpg_home("cache@example.com", passphrase=GPG_PASSPHRASE)
    try:
        # Generating the key started an agent for the home; a user's site starts with none.
        subprocess.run(["gpgconf", "--homedir", str(home.path), "--kill", "gpg-agent"], capture_output=True)
        site = make_site(
            root / "site", INVENTREE_BACKUP_GPG_RECIPIENT=home.email, INVENTREE_BACKUP_GPG_HOME=str(home.path)
        )
        site.manage("migrate", "--noinput", "-v0")
        (site.media / "doc.txt").write_text("backed up")
        site.invoke("backup", "--encrypt")
        tmp = private_tmp(site, root)
        secret = root / "passphrase"
        secret.write_text(GPG_PASSPHRASE + "\n")
        secret.chmod(0o600)

        site.invoke(request.param, extra_env={"INVENTREE_BACKUP_GPG_PASSPHRASE_FILE": str(secret)})
        seen = {"agents": agents_for(home.path, tmp), "agent answers": agent_answers(home.path)}
        (site.media / "doc.txt").write_text("current")
        seen["second restore"] = site.invoke("restore", check=False)
        seen["doc.txt"] = (site.media / "doc.txt").read_text()
        yield seen
    finally:
        drop_gpg_home(home)


def test_restore_without_passphrase_fails_after_a_run_with_it(after_a_run_with_the_passphrase):
    seen = after_a_run_with_the_passphrase

    assert (seen["second restore"].returncode != 0, seen["doc.txt"]) == (True, "current"), seen["second restore"]


def test_restore_without_passphrase_says_which_setting_gives_it(after_a_run_with_the_passphrase):
    last = after_a_run_with_the_passphrase["second restore"].stderr.strip().splitlines()[-1]

    assert "needs its passphrase" in last and "set INVENTREE_BACKUP_GPG_PASSPHRASE_FILE" in last, last


def test_no_gpg_agent_is_left_running_after_a_run_with_the_passphrase(after_a_run_with_the_passphrase):
    seen = after_a_run_with_the_passphrase

    assert (seen["agents"], seen["agent answers"]) == ([], False)


def test_no_gpg_agent_is_left_running_after_an_encrypted_backup(encrypted_site, protected_key):
    encrypted_site.invoke("backup", "--encrypt")

    assert agents_for(protected_key.path, Path(encrypted_site.env["TMPDIR"])) == []


def gpg_decrypt(home: Path, path: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", *extra, "--decrypt", str(path)]
    return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)


def test_restore_without_passphrase_is_not_served_by_the_admins_own_agent(encrypted_site, protected_key):
    site = encrypted_site
    encrypted = next(site.backups.glob("*.gpg"))
    # The admin decrypted a file by hand: the agent of the home now holds the passphrase (gpg's default cache).
    gpg_decrypt(protected_key.path, encrypted, "--passphrase", GPG_PASSPHRASE)
    assert gpg_decrypt(protected_key.path, encrypted).returncode == 0, "the admin's agent does not cache"
    (site.media / "doc.txt").write_text("current")

    result = site.invoke("restore", check=False)

    assert (result.returncode != 0, (site.media / "doc.txt").read_text()) == (True, "current"), result.output


def test_a_private_gpg_home_a_killed_run_left_is_stopped_and_removed_by_the_next_decryption(
    encrypted_site, protected_key, tmp_path, tmp_path_factory
):
    site = encrypted_site
    # Private homes go to TMPDIR when it is short enough for gpg-agent's socket path (else to /tmp).
    tmp = tmp_path_factory.mktemp("g")
    site.env["TMPDIR"] = str(tmp)
    dead = subprocess.Popen(["true"])  # its pid is one no process has now
    dead.wait()
    stale = tmp / f"bk-gpg-{dead.pid}-killed"
    stale.mkdir(mode=0o700)
    subprocess.run(["gpgconf", "--homedir", str(stale), "--launch", "gpg-agent"], check=True, capture_output=True)
    assert agents_for(stale, tmp), "no agent was started for the stale home"
    secret = tmp_path / "passphrase"
    secret.write_text(GPG_PASSPHRASE)

    site.invoke("verify", extra_env={"INVENTREE_BACKUP_GPG_PASSPHRASE_FILE": str(secret)})

    assert (stale.exists(), agents_for(stale, tmp)) == (False, [])


# --- MariaDB passwords with characters an option file treats specially ---------------------------

ODD_PASSWORDS = {
    "newline": "Head7qXw\nTail9zWk",
    "double-quote": 'Head7qXw"Tail9zWk',
    "backslash": "Head7qXw\\Tail9zWk",
    "backslash-n": "Head7qXw\\nTail9zWk",
    "hash": "Head7qXw#Tail9zWk",
    "semicolon": "Head7qXw;Tail9zWk",
    "leading-space": " Head7qXwTail9zWk",
    "single-quote": "Head7qXw'Tail9zWk",
}


def password_parts(password: str) -> list[str]:
    """The password and every piece of it a broken parser could show (split at the special characters)."""
    pieces = {password, password.strip()}
    for sep in ("\n", '"', "\\", "#", ";", "'", "\\n"):
        pieces.update(p for p in password.split(sep) if len(p) >= 6)
    return sorted(pieces)


@pytest.fixture(scope="module", params=sorted(ODD_PASSWORDS), ids=sorted(ODD_PASSWORDS))
def odd_password_run(request, tmp_path_factory):
    """A backup and a restore of a MariaDB site whose password is ODD_PASSWORDS[param]; rows changed in between.

    Returns ``(password, backup result, restore result or None, rows backed up, rows after the restore)``.
    """
    password = ODD_PASSWORDS[request.param]
    root = tmp_path_factory.mktemp("odd-password")
    with module_mysql_database() as database, mysql_user(database, own_database_only=False, password=password) as user:
        site = server_site(root / "site", "mysql", database, user, password)
        site.manage("demo_data")
        rows = site.snapshot_db()
        backup = site.invoke("backup", "--skip-media", check=False)
        restore, after = None, None
        if backup.returncode == 0:
            site.sql("DELETE FROM demo_part")
            restore = site.invoke("restore", "--skip-media", check=False)
            after = site.snapshot_db()
        yield password, backup, restore, rows, after


def test_mariadb_password_with_special_characters_backs_up_and_restores_or_is_refused_in_one_line(odd_password_run):
    _password, backup, restore, rows, after = odd_password_run

    if backup.returncode != 0:
        # Refused: the last line is the error, it names what is wrong (the password), and no traceback precedes it.
        error = [line for line in backup.stderr.splitlines() if line.strip()][-1]
        assert "password" in error.lower() and "Traceback" not in backup.stderr, backup.output
        return
    assert restore.returncode == 0, restore.output
    assert after == rows


def test_mariadb_password_with_special_characters_never_shows_in_output(odd_password_run):
    password, backup, restore, _rows, _after = odd_password_run

    text = backup.output + (restore.output if restore else "")

    assert [part for part in password_parts(password) if part in text] == []


# --- stock dbbackup's failure mail under this app's configuration ---------------------------------


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller

    port = free_port()
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    inbox.port = port
    yield inbox
    controller.stop()


def decoded(raw: bytes) -> str:
    """Every header and every part of a mail, transfer encodings (base64, quoted-printable) undone."""
    message = email.message_from_bytes(raw)
    texts = [str(value) for value in message.values()]
    for part in message.walk():
        payload = part.get_payload(decode=True)
        if payload is not None:
            texts.append(payload.decode(errors="replace"))
    return "\n".join(texts)


def closed_port() -> int:
    """A port nothing listens on, reserved so that no other test's server takes it."""
    return free_port()


def unreachable_site(tmp_path: Path, engine: str, smtp) -> Site:
    """A site whose database server does not answer and whose media folder holds a dangling link (stock
    ``mediabackup`` fails on it), failure mail on, an admin address set."""
    site = make_site(
        tmp_path / "site",
        INVENTREE_DB_ENGINE=engine,
        INVENTREE_DB_NAME="shop",
        INVENTREE_DB_HOST="127.0.0.1",
        INVENTREE_DB_PORT=str(closed_port()),
        INVENTREE_DB_USER="shop",
        INVENTREE_DB_PASSWORD=DB_PASSWORD,
        INVENTREE_EMAIL_HOST="127.0.0.1",
        INVENTREE_EMAIL_PORT=str(smtp.port),
        INVENTREE_EMAIL_SENDER="site@example.com",
        INVENTREE_ADMIN_EMAIL="admin@example.com",
        INVENTREE_BACKUP_SEND_EMAIL="true",
    )
    (site.media / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    return site


STOCK_FAILURES = [
    pytest.param("mysql", ("dbbackup", "--noinput"), {}, id="dbbackup-mariadb-unreachable"),
    pytest.param("postgresql", ("dbbackup", "--noinput"), {}, id="dbbackup-postgresql-unreachable"),
    pytest.param(
        "mysql",
        ("dbbackup", "--noinput"),
        {"INVENTREE_BACKUP_CONNECTOR_OPTIONS": json.dumps({"DUMP_CMD": "false"})},
        id="dbbackup-broken-connector",
    ),
    pytest.param("mysql", ("mediabackup", "--noinput"), {}, id="mediabackup-media-unreadable"),
]


@pytest.mark.parametrize(("engine", "command", "env"), STOCK_FAILURES)
def test_failing_stock_command_mails_no_database_password(tmp_path, smtp, engine, command, env):
    site = unreachable_site(tmp_path, engine, smtp)
    site.env.update(env)

    result = site.manage(*command, check=False)

    assert result.returncode != 0, result.output
    assert [DB_PASSWORD in decoded(raw) for raw in smtp.messages] == [False] * len(smtp.messages)


def test_failing_stock_dbbackup_mails_no_password_given_in_connector_options(tmp_path, smtp):
    site = unreachable_site(tmp_path, "mysql", smtp)
    site.env["INVENTREE_DB_PASSWORD"] = ""
    site.env["INVENTREE_BACKUP_CONNECTOR_OPTIONS"] = json.dumps({"DUMP_ENV": {"MYSQL_PWD": DB_PASSWORD}})

    result = site.manage("dbbackup", "--noinput", check=False)

    assert result.returncode != 0, result.output
    assert [DB_PASSWORD in decoded(raw) for raw in smtp.messages] == [False] * len(smtp.messages)


def test_failing_stock_dbbackup_output_shows_no_database_password(tmp_path, smtp):
    site = unreachable_site(tmp_path, "mysql", smtp)

    result = site.manage("dbbackup", "--noinput", check=False)

    assert result.returncode != 0
    assert DB_PASSWORD not in result.output


def test_failing_stock_dbbackup_mails_the_admins_one_masked_line(tmp_path, smtp):
    site = unreachable_site(tmp_path, "mysql", smtp)

    site.manage("dbbackup", "--noinput", check=False)

    [raw] = smtp.messages
    message, text = email.message_from_bytes(raw), decoded(raw)
    error = [line for line in text.splitlines() if line.startswith("Error: ")]
    assert (message["To"], message["Subject"].startswith("[InvenTree Backup] Backup failed on ")) == (
        "admin@example.com",
        True,
    )
    assert [line.startswith("Error: CommandConnectorError: mysqldump failed") for line in error] == [True], text
    assert ("Traceback" in text, "INSTALLED_APPS" in text, DB_PASSWORD in text) == (False, False, False)


def test_stock_dbbackup_and_dbrestore_work_with_the_mariadb_password_in_a_pipe(mysql_side_db_site):
    site = mysql_side_db_site
    rows = site.snapshot_db()
    site.manage("dbbackup", "--noinput", "--compress")
    site.sql("DELETE FROM demo_part")

    site.manage("dbrestore", "--noinput", "--uncompress")

    assert site.snapshot_db() == rows


# --- every value that can hold a secret is masked wherever it is shown ----------------------------

S3 = "storages.backends.s3.S3Storage"
AZURE = "storages.backends.azure_storage.AzureStorage"

# One site per storage backend, each holding several secrets (the commands run once per site).
SHOWING_SITES = {
    "s3": {
        "INVENTREE_BACKUP_STORAGE": S3,
        "INVENTREE_BACKUP_OPTIONS": json.dumps(
            {
                "bucket_name": "b",
                "access_key": "AKIAEXAMPLE",
                "secret_key": "Sx-s3-secret-06",
                "endpoint_url": "https://minio:Sx-url-pw-07@127.0.0.1:9000",
            }
        ),
        "INVENTREE_BACKUP_CONNECTOR_OPTIONS": json.dumps(
            {
                "DUMP_ENV": {"MYSQL_PWD": "Sx-dump-env-01"},
                "RESTORE_ENV": {"MYSQL_PWD": "Sx-restore-env-02"},
                "ENV": {"PGPASSWORD": "Sx-env-pg-03"},
                "DUMP_SUFFIX": "--password=Sx-suffix-05",
            }
        ),
        "INVENTREE_BACKUP_REDIS_URL": "redis://:Sx-redis-16@127.0.0.1:6379/0",
        "INVENTREE_DB_PASSWORD": "Sx-db-17",
        "INVENTREE_BACKUP_GPG_PASSPHRASE": "Sx-gpg-18",
        "INVENTREE_EMAIL_PASSWORD": "Sx-mail-19",
    },
    "azure": {
        "INVENTREE_BACKUP_STORAGE": AZURE,
        "INVENTREE_BACKUP_OPTIONS": json.dumps(
            {
                "account_name": "site",
                "azure_container": "c",
                "account_key": "Sx-azure-key-08",
                "sas_token": "sv=2022&sig=Sx-sas-09",
                "connection_string": "DefaultEndpointsProtocol=https;AccountName=site;AccountKey=Sx-conn-10;",
            }
        ),
        "INVENTREE_BACKUP_CONNECTOR_OPTIONS": json.dumps({"default": {"DUMP_ENV": {"MYSQL_PWD": "Sx-alias-04"}}}),
    },
    "dropbox": {
        "INVENTREE_BACKUP_STORAGE": "storages.backends.dropbox.DropboxStorage",
        "INVENTREE_BACKUP_OPTIONS": json.dumps(
            {
                "oauth2_access_token": "Sx-dropbox-12",
                "app_key": "k",
                "app_secret": "Sx-app-secret-13",
                "oauth2_refresh_token": "Sx-refresh-14",
            }
        ),
    },
    "sftp": {
        "INVENTREE_BACKUP_STORAGE": "storages.backends.sftpstorage.SFTPStorage",
        "INVENTREE_BACKUP_OPTIONS": json.dumps(
            {"host": "127.0.0.1", "params": {"username": "u", "password": "Sx-sftp-15"}}
        ),
    },
    "ftp": {
        "INVENTREE_BACKUP_STORAGE": "storages.backends.ftp.FTPStorage",
        "INVENTREE_BACKUP_OPTIONS": json.dumps({"location": "ftp://backup:Sx-ftp-20@127.0.0.1:2121/"}),
    },
}

# where the secret is given -> (the site holding it, the secret)
SHOWN_SECRETS = {
    "connector DUMP_ENV MYSQL_PWD": ("s3", "Sx-dump-env-01"),
    "connector RESTORE_ENV MYSQL_PWD": ("s3", "Sx-restore-env-02"),
    "connector ENV PGPASSWORD": ("s3", "Sx-env-pg-03"),
    "connector per-alias DUMP_ENV": ("azure", "Sx-alias-04"),
    "connector DUMP_SUFFIX --password=": ("s3", "Sx-suffix-05"),
    "s3 secret_key": ("s3", "Sx-s3-secret-06"),
    "s3 endpoint_url with a password": ("s3", "Sx-url-pw-07"),
    "azure account_key": ("azure", "Sx-azure-key-08"),
    "azure sas_token": ("azure", "Sx-sas-09"),
    "azure connection_string": ("azure", "Sx-conn-10"),
    "dropbox oauth2_access_token": ("dropbox", "Sx-dropbox-12"),
    "dropbox app_secret": ("dropbox", "Sx-app-secret-13"),
    "dropbox oauth2_refresh_token": ("dropbox", "Sx-refresh-14"),
    "sftp params password": ("sftp", "Sx-sftp-15"),
    "ftp location url": ("ftp", "Sx-ftp-20"),
    "redis url password": ("s3", "Sx-redis-16"),
    "database password": ("s3", "Sx-db-17"),
    "gpg passphrase": ("s3", "Sx-gpg-18"),
    "email password": ("s3", "Sx-mail-19"),
}


@pytest.fixture(scope="module")
def shown(tmp_path_factory):
    """``shown(site, command)``: the output of ``command`` on the site configured as SHOWING_SITES[site]."""
    cache: dict = {}

    def run(name: str, command: tuple[str, ...]):
        if name not in cache:
            cache[name] = make_site(tmp_path_factory.mktemp("shown") / "site", **SHOWING_SITES[name])
        if (name, command) not in cache:
            cache[(name, command)] = cache[name].run(*command, check=False)
        return cache[(name, command)]

    return run


SHOWING_COMMANDS = [
    pytest.param(("invoke", "backup-config"), id="backup-config"),
    pytest.param(("invoke", "backup-config", "--json"), id="backup-config-json"),
]


@pytest.mark.parametrize("command", SHOWING_COMMANDS)
@pytest.mark.parametrize("case", list(SHOWN_SECRETS))
def test_secret_value_is_never_shown(shown, case, command):
    name, secret = SHOWN_SECRETS[case]

    result = shown(name, command)

    assert secret not in result.output
