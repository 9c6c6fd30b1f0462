"""Interrupted runs: a real ``manage.py`` process is held at a named step (``backup_app.testing``), then sent
SIGKILL or SIGTERM; the site must be wholly old or wholly new, and the next run must finish or undo the rest
and say so in one line.

The whole matrix of steps runs on SQLite; PostgreSQL and MariaDB get the database swap step, the one that
differs per engine.  "Old" and "new" are exact: every row of every table, and the ``lstat`` (type, mode,
owner, size, mtime) and bytes of every media file and folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, make_site
from reference import differences as reference_differences
from reference import file_stats, sqlite_catalog

from backup_app.streams import room_margin

# --- instruments ------------------------------------------------------------------------------


def tree(folder: Path) -> dict:
    """Every path under ``folder``: files with type, mode, owner, size, mtime and SHA-256; folders; links."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            out[name] = ("link", os.readlink(path))
        elif path.is_dir():
            out[name] = ("dir", st.st_mode, st.st_uid, st.st_gid)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[name] = ("file", st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, digest)
    return out


def db_rows(site) -> dict:
    """Every table's rows, sorted, read straight from the database (SQLite: with each table's schema)."""
    engine = site.env["INVENTREE_DB_ENGINE"]
    name = site.env["INVENTREE_DB_NAME"]
    skip = ("django_session", "backup_app_backuprun", "django_q_")
    if engine == "sqlite3":
        import sqlite3

        conn = sqlite3.connect(f"file:{name}?mode=ro", uri=True)
        try:
            tables = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
            out = {
                table: (sql, sorted(map(repr, conn.execute(f'SELECT * FROM "{table}"'))))
                for table, sql in tables
                if not table.startswith(skip)
            }
            if "sqlite_sequence" in out:  # the run history's counters move with every run
                sql, rows = out["sqlite_sequence"]
                out["sqlite_sequence"] = (sql, [r for r in rows if not r.strip("(").strip("'").startswith(skip)])
            return out
        finally:
            conn.close()
    if engine == "postgresql":
        import psycopg

        with psycopg.connect(dbname=name, host="127.0.0.1", user="postgres") as conn:
            tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
            return {
                t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"').fetchall()))
                for (t,) in tables
                if not t.startswith(skip)
            }
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", user="root", password="", database=name)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            out = {}
            for (t,) in cur.fetchall():
                if not t.startswith(skip):
                    cur.execute(f"SELECT * FROM `{t}`")
                    out[t] = sorted(map(repr, cur.fetchall()))
            return out
    finally:
        conn.close()


def state(site) -> tuple[dict, dict]:
    """The site as a user sees it: every row of the database and every media path."""
    return db_rows(site), tree(site.media)


def differences(a: tuple[dict, dict], b: tuple[dict, dict]) -> list[str]:
    """What differs between two states: table names and media paths (empty: the same)."""
    out = []
    for label, x, y in (("table", a[0], b[0]), ("media", a[1], b[1])):
        out += [
            f"{label} {key}: {x.get(key)} != {y.get(key)}"
            for key in sorted(x.keys() | y.keys())
            if x.get(key) != y.get(key)
        ]
    return out


class Held:
    """A ``manage.py`` command held at ``step`` (several may be named, separated by commas)."""

    def __init__(self, site, step: str, *args: str, prefix: tuple[str, ...] = ()):
        self.site = site
        self.resume = site.root / f"resume-{os.getpid()}-{time.monotonic_ns()}"
        env = {**site.env, "BACKUP_APP_PAUSE_AT": step, "BACKUP_APP_RESUME_FILE": str(self.resume)}
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "manage.py", *args],  # prefix: e.g. unshare (a PID namespace of its own)
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for line in self.proc.stderr:
            self.lines.append(line)
            if text in line:
                return
            assert time.monotonic() < deadline, "".join(self.lines)
        self.proc.wait()
        raise AssertionError(f"{text!r} never came; the command ended ({self.proc.returncode}):\n{''.join(self.lines)}")

    def paused(self, step: str) -> Held:
        self.wait_for(f"paused at {step}")
        return self

    def signal(self, signum: int) -> None:
        if signum == signal.SIGKILL:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the tools it runs die with it
        else:
            os.kill(self.proc.pid, signum)  # as docker stop / systemd send it: to the main process

    def go_on(self) -> None:
        self.resume.write_text("")

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        rest = self.proc.stderr.read()
        self.proc.wait(timeout=timeout)
        return self.proc.returncode, "".join(self.lines) + rest


def leftovers(site) -> list[str]:
    """Staging files, staging folders and unresolved safety records a run left behind."""
    found = [p.name for p in site.root.glob(".db.sqlite3.*")]
    found += [p.name for p in site.media.glob(".backup-restore-*")]
    for record in (site.root / "safety").glob("*/safety.json"):
        if json.loads(record.read_text())["state"] == "restoring":
            found.append(record.parent.name)
    return found


# --- a site with a backup and changes since ---------------------------------------------------


def prepare(site) -> None:
    """Back up a site with rows and 20 media files, then change both: 10 files edited, 10 deleted, 3 added,
    a file where the backup has a folder and a folder where it has a file; other owners and modes too."""
    site.manage("demo_data")
    media = site.media
    (media / "docs").mkdir()
    for i in range(10):
        (media / "docs" / f"d{i}.txt").write_text(f"backed up {i}\n" * 40)
        (media / f"gone{i}.txt").write_text(f"deleted later {i}\n")
    (media / "was-a-file").write_text("a file in the backup")
    (media / "was-a-folder").mkdir()
    (media / "was-a-folder" / "inner.txt").write_text("in a folder in the backup")
    site.manage("backup_create")
    for i in range(10):
        (media / "docs" / f"d{i}.txt").write_text(f"edited after the backup {i}\n")
        (media / f"gone{i}.txt").unlink()
    for i in range(3):
        (media / f"new{i}.txt").write_text("made after the backup")
    os.chown(media / "new0.txt", 1000, 1000)
    os.chmod(media / "docs" / "d3.txt", 0o600)
    (media / "was-a-file").unlink()
    (media / "was-a-file").mkdir()
    (media / "was-a-file" / "now.txt").write_text("a folder now")
    (media / "was-a-folder" / "inner.txt").unlink()
    (media / "was-a-folder").rmdir()
    (media / "was-a-folder").write_text("a file now")
    site.sql("DELETE FROM demo_part WHERE quantity > 20")
    site.sql(
        "INSERT INTO demo_part (name, description, quantity, created, attachment, price, blob) "
        "VALUES ('after', 'made after the backup', 99, '2026-01-01 00:00:00', '', 1, '')"
    )


@pytest.fixture(scope="module")
def template_site(tmp_path_factory):
    site = make_site(tmp_path_factory.mktemp("template") / "site")
    site.manage("migrate", "--noinput", "-v0")
    prepare(site)
    return site


def copy_site(template, root: Path):
    """A copy of ``template`` at ``root``: same files with the same owners, modes and times."""
    shutil.copytree(template.root, root, symlinks=True)
    for path in [root, *root.rglob("*")]:
        st = (template.root / path.relative_to(root)).lstat()
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    for path in sorted(root.rglob("*"), reverse=True):  # copytree set the folders' times before their files
        st = (template.root / path.relative_to(root)).lstat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    site = make_site(root)
    return site


@pytest.fixture
def changed_site(template_site, tmp_path):
    """A site with a backup and changes since, copied from one prepared per module."""
    return copy_site(template_site, tmp_path / "site")


# --- SQLite: every step of a restore ----------------------------------------------------------


RESTORE_STEPS = [
    "restore:staged",
    "restore:db-swapping:default",
    "restore:db-swapped:default",
    "restore:media-half",
    "restore:media-swapped",
]


@pytest.mark.parametrize("step", RESTORE_STEPS)
def test_sigterm_at_each_restore_step_undoes_it_and_says_so(changed_site, step):
    old = state(changed_site)

    held = Held(changed_site, step, "backup_restore", "--noinput").paused(step)
    held.signal(signal.SIGTERM)
    code, err = held.finish()

    assert code == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err
    assert "the restore was undone (" + ("nothing had been changed" if step == "restore:staged" else "") in err
    assert differences(state(changed_site), old) == []
    assert leftovers(changed_site) == []


@pytest.mark.parametrize(
    ("step", "next_run"),
    [
        ("restore:staged", ("backup_restore", "--noinput")),
        ("restore:db-swapping:default", ("backup_rollback",)),
        ("restore:db-swapped:default", ("backup_rollback",)),
        ("restore:media-half", ("backup_create",)),
        ("restore:media-half", ("backup_rollback",)),  # the case found: files the restore created stayed
        ("restore:media-swapped", ("backup_restore", "--noinput")),
    ],
)
def test_sigkill_at_each_restore_step_is_undone_by_the_next_run(changed_site, step, next_run):
    old = state(changed_site)

    held = Held(changed_site, step, "backup_restore", "--noinput").paused(step)
    held.signal(signal.SIGKILL)
    held.finish()
    result = changed_site.manage(*next_run)

    if step != "restore:staged":  # killed before the swap: there was nothing to undo, the next restore just runs
        assert "interrupted (pid" in result.stderr and "undid it" in result.stderr, result.stderr
    if next_run[0] == "backup_restore":
        new = state(changed_site)
        changed_site.manage("backup_rollback")  # the completed restore, undone by hand, gives the old state
    assert differences(state(changed_site), old) == []
    assert leftovers(changed_site) == []
    if next_run[0] == "backup_restore":
        assert new != old


def test_a_second_signal_during_the_undo_does_not_stop_it(changed_site):
    old = state(changed_site)
    held = Held(changed_site, "restore:media-half,rollback:media-half", "backup_restore", "--noinput")
    held.paused("restore:media-half")

    held.signal(signal.SIGTERM)
    held.paused("rollback:media-half")  # the undo has begun
    held.signal(signal.SIGINT)
    held.signal(signal.SIGTERM)
    held.go_on()
    code, err = held.finish()

    assert code == 128 + signal.SIGTERM, err
    assert "the restore was undone (media files and database 'default' put back as they were)" in err
    assert differences(state(changed_site), old) == []
    assert leftovers(changed_site) == []


def test_a_rollback_killed_half_way_finishes_when_run_again(changed_site):
    old = state(changed_site)
    changed_site.manage("backup_restore", "--noinput")

    held = Held(changed_site, "rollback:media-half", "backup_rollback").paused("rollback:media-half")
    held.signal(signal.SIGKILL)
    held.finish()
    changed_site.manage("backup_rollback")

    assert differences(state(changed_site), old) == []


def test_rollback_brings_back_the_exact_tree_files_and_folders_swapped(changed_site):
    old = state(changed_site)

    changed_site.manage("backup_restore", "--noinput", "--mirror")
    media = changed_site.media
    assert (media / "was-a-file").is_file() and (media / "was-a-folder" / "inner.txt").is_file()
    assert not (media / "new0.txt").exists()
    changed_site.manage("backup_rollback")

    assert differences(state(changed_site), old) == []


# --- SQLite: a backup cut short ---------------------------------------------------------------


@pytest.mark.parametrize("step", ["backup:db-dumped:default", "backup:media-written"])
def test_sigterm_during_a_backup_removes_its_files_and_says_so(changed_site, step):
    before = sorted(p.name for p in changed_site.backups.iterdir())

    held = Held(changed_site, step, "backup_create").paused(step)
    held.signal(signal.SIGTERM)
    code, err = held.finish()

    assert code == 128 + signal.SIGTERM, err
    assert "backup interrupted by SIGTERM; the partial set was removed" in err
    assert sorted(p.name for p in changed_site.backups.iterdir()) == before


@pytest.mark.parametrize("clean", [False, True])
def test_a_backup_whose_file_vanishes_before_it_ends_fails_instead_of_reporting_success(changed_site, clean):
    # What another site's --clean on a shared folder did to a set being written: its dump deleted under it.
    held = Held(changed_site, "backup:media-written", "backup_create", *(["--clean"] if clean else []))
    held.paused("backup:media-written")
    dumps = [p for p in changed_site.backups.glob("*.sqlite3*") if not p.name.endswith(".metadata")]
    newest = max(dumps, key=lambda p: p.stat().st_mtime_ns)  # this run's
    newest.unlink()
    held.go_on()
    code, err = held.finish()

    assert code != 0, err
    last = err.strip().splitlines()[-1]
    assert "the backup was written but set" in last and "does not read back" in last, err
    assert newest.name in last
    assert [s["status"] for s in changed_site.sets()][0] == "incomplete"


def test_sigterm_to_invoke_reaches_the_command(changed_site):
    before = sorted(p.name for p in changed_site.backups.iterdir())
    resume = changed_site.root / "resume"
    env = {**changed_site.env, "BACKUP_APP_PAUSE_AT": "backup:media-written", "BACKUP_APP_RESUME_FILE": str(resume)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "backup"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if "paused at backup:media-written" in line:
            break

    proc.send_signal(signal.SIGTERM)  # to invoke, as docker stop sends it to the container's first process
    rest = proc.stderr.read()
    proc.wait(timeout=120)

    assert proc.returncode == 128 + signal.SIGTERM, rest
    assert "backup interrupted by SIGTERM" in rest
    assert sorted(p.name for p in changed_site.backups.iterdir()) == before


def test_sigterm_to_invoke_restore_reaches_the_command_which_undoes_the_restore(changed_site):
    # Without a terminal the restore runs in invoke's own process: the signal meets the command's own handler.
    old = state(changed_site)
    resume = changed_site.root / "resume"
    step = "restore:db-swapped:default"
    env = {**changed_site.env, "BACKUP_APP_PAUSE_AT": step, "BACKUP_APP_RESUME_FILE": str(resume)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "restore"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if f"paused at {step}" in line:
            break

    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    proc.wait(timeout=120)

    assert proc.returncode == 128 + signal.SIGTERM, rest
    assert "interrupted by SIGTERM" in rest and "the restore was undone (" in rest, rest
    assert differences(state(changed_site), old) == []
    assert leftovers(changed_site) == []


def test_sigkill_during_a_backup_leaves_an_unfinished_set_the_next_clean_removes(changed_site):
    held = Held(changed_site, "backup:media-written", "backup_create").paused("backup:media-written")
    held.signal(signal.SIGKILL)
    held.finish()

    assert [s["status"] for s in changed_site.sets()] == ["incomplete", "complete"]
    changed_site.manage("backup_create", "--clean")
    assert [s["status"] for s in changed_site.sets()] == ["complete", "complete"]


# --- PostgreSQL and MariaDB: the database swap ------------------------------------------------


def server_prepare(site) -> None:
    site.manage("demo_data")
    site.manage("backup_create", "--skip-media")
    site.sql("DELETE FROM demo_part WHERE quantity > 20")


def side_databases(site) -> list[str]:
    """Databases beside the site's (``<name>_safety_...``, ``<name>_restore_...``) on its server."""
    name = site.env["INVENTREE_DB_NAME"]
    if site.env["INVENTREE_DB_ENGINE"] == "postgresql":
        import psycopg

        with psycopg.connect(dbname="postgres", host="127.0.0.1", user="postgres", autocommit=True) as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (name + "_",))
            return sorted(r[0] for r in rows)
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", user="root", password="")
    with conn.cursor() as cur:
        cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s", (name + "\\_%",))
        found = sorted(r[0] for r in cur.fetchall())
    conn.close()
    return found


@pytest.mark.parametrize("step", ["restore:db-swapping:default", "restore:db-swapped:default"])
@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_server_database_killed_at_the_swap_is_rolled_back(request, engine, step):
    site = request.getfixturevalue(f"{engine}_site")
    server_prepare(site)
    old = db_rows(site)

    held = Held(site, step, "backup_restore", "--noinput", "--skip-media")
    held.paused(step)
    held.signal(signal.SIGKILL)
    held.finish()
    if step == "restore:db-swapped:default":
        assert db_rows(site) != old  # the new data is live: the kill came after the swap
    result = site.manage("backup_rollback")

    assert "undid it, database 'default' put back as they were" in result.stderr
    assert db_rows(site) == old
    assert side_databases(site) == []


@pytest.mark.parametrize("step", ["restore:staged", "restore:db-swapping:default", "restore:db-swapped:default"])
@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_server_database_sigterm_at_the_swap_undoes_it(request, engine, step):
    site = request.getfixturevalue(f"{engine}_site")
    server_prepare(site)
    old = db_rows(site)

    held = Held(site, step, "backup_restore", "--noinput", "--skip-media")
    held.paused(step)
    if step != "restore:db-swapped:default":
        assert [name for name in side_databases(site) if "_restore_" in name]  # staged beside the live database
    held.signal(signal.SIGTERM)
    code, err = held.finish()

    assert code == 128 + signal.SIGTERM, err
    undone = "nothing had been changed" if step == "restore:staged" else "database 'default' put back as they were"
    assert f"interrupted by SIGTERM; the restore was undone ({undone})" in err
    assert db_rows(site) == old
    assert side_databases(site) == []  # the staging database too


#: The steps of a restore in place (a site that may not create a database), in order: the incoming dump spooled;
#: the live tables found free, not dumped yet; the live database dumped and recorded, nothing loaded; loaded.
IN_PLACE_STEPS = [
    "restore:staged",
    "restore:in-place-dump:default",
    "restore:in-place-kept:default",
    "restore:db-swapped:default",
]


def sigterm_at_each_step(site, steps: list[str]) -> None:
    """Back ``site`` up, change it, then SIGTERM a restore in place at each of ``steps`` in turn: exit 143, the
    live database exactly as before (put back from the dump the restore kept, once it had one), nothing left
    behind (spool, safety record or folder, temp files, databases or roles on the server); then the next restore
    has nothing to clean up and restores exactly."""
    from test_refusals import everything, same, watch_temp

    watch_temp(site)
    site.manage("demo_data")
    site.manage("backup_create", "--skip-media")
    backed_up = db_rows(site)
    site.sql("DELETE FROM demo_part WHERE quantity > 20")
    old = everything(site)
    assert old["rows"] != backed_up

    for step in steps:
        held = Held(site, step, "backup_restore", "--noinput", "--skip-media").paused(step)
        held.signal(signal.SIGTERM)
        held.go_on()  # the undo loads the kept dump the same way: it passes the same step, and must not wait there
        code, err = held.finish(timeout=120)
        held.resume.unlink()

        assert code == 128 + signal.SIGTERM, err
        changed = step not in ("restore:staged", "restore:in-place-dump:default")
        undone = "database 'default' put back as they were" if changed else "nothing had been changed"
        assert f"interrupted by SIGTERM; the restore was undone ({undone})" in err, (step, err)
        now = everything(site)
        assert sorted(set(now["paths"]) ^ set(old["paths"])) == [], step
        assert same(now, old), (step, now["server"], err)

    result = site.manage("backup_restore", "--noinput", "--skip-media")

    assert "left behind" not in result.stderr and "Found restore" not in result.stderr, result.stderr
    assert db_rows(site) == backed_up


def test_sigterm_at_each_step_of_a_restore_in_place_leaves_the_live_database_as_it_was(in_place_site):
    sigterm_at_each_step(in_place_site, IN_PLACE_STEPS)


def test_sigterm_at_each_step_of_a_superuser_sites_restore_in_place_leaves_it_as_it_was(postgres_site):
    # A superuser site restores in place with SCHEMAS; its load runs as a throwaway role that owns what it
    # loaded until the owners are given back (restore:in-place-loaded: committed, not given back yet).
    postgres_site.env["INVENTREE_BACKUP_CONNECTOR_OPTIONS"] = json.dumps({"SCHEMAS": ["public"]})
    steps = ["restore:in-place-kept:default", "restore:in-place-loaded:default", "restore:db-swapped:default"]
    sigterm_at_each_step(postgres_site, steps)


def group_members(pgid: int) -> list[str]:
    """Command lines of the processes still in process group ``pgid``."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat_file.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(cmdline)
    return found


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_server_database_sigterm_during_its_dump_removes_the_partial_set_and_ends_the_dump_tool(request, engine):
    from test_faults import BIG_ROWS, engine_of

    site = request.getfixturevalue(f"{engine}_site")
    site.sql(BIG_ROWS[engine_of(site)])  # 40,000 rows: the dump runs for a while
    site.backups.mkdir(exist_ok=True)
    before = sorted(p.name for p in site.backups.iterdir())
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "backup_create", "--skip-media"],
        cwd=ROOT,
        env=site.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "Backing up database 'default'" in line:
            break
    deadline = time.monotonic() + 60
    while not any(("dump" in c) for c in group_members(proc.pid) if "manage.py" not in c):
        assert time.monotonic() < deadline, "".join(seen)
        time.sleep(0.05)

    os.kill(proc.pid, signal.SIGTERM)  # to the main process, as docker stop sends it
    rest = proc.stderr.read()
    proc.wait(timeout=120)

    assert proc.returncode == 128 + signal.SIGTERM, rest
    assert "dumped," not in "".join(seen) + rest  # it came while the dump ran
    assert "backup interrupted by SIGTERM; the partial set was removed" in rest
    assert sorted(p.name for p in site.backups.iterdir()) == before
    assert group_members(proc.pid) == []  # no pg_dump / mariadb-dump left running


def test_sigint_half_way_through_the_media_undoes_the_restore(changed_site):
    # Ctrl-C on a terminal: the same undo as SIGTERM, exit 130, the line says "interrupted" alone.  A first Ctrl-C
    # alone cannot tell whether this app's handler is installed (Python's KeyboardInterrupt takes the same undo
    # path), so Ctrl-C is pressed again each time the undo is half way: the media swap's own undo (which the
    # restore's undo runs again whole), then the restore's undo, which only the handler keeps going (without it a
    # KeyboardInterrupt stops it half way and the site is left half old).
    old = state(changed_site)
    held = Held(changed_site, "restore:media-half,rollback:media-half", "backup_restore", "--noinput")
    held.paused("restore:media-half")

    held.signal(signal.SIGINT)
    for _undo in ("the media swap's", "the restore's"):
        held.paused("rollback:media-half")
        held.signal(signal.SIGINT)
    held.go_on()
    code, err = held.finish()

    assert code == 128 + signal.SIGINT, err
    assert "interrupted; the restore was undone (media files and database 'default' put back as they were)" in err
    assert differences(state(changed_site), old) == []
    assert leftovers(changed_site) == []


def test_sigint_during_a_backup_removes_its_files_and_says_so(changed_site):
    before = sorted(p.name for p in changed_site.backups.iterdir())

    held = Held(changed_site, "backup:media-written", "backup_create").paused("backup:media-written")
    held.signal(signal.SIGINT)
    code, err = held.finish()

    assert code == 128 + signal.SIGINT, err
    assert "backup interrupted; the partial set was removed" in err
    assert sorted(p.name for p in changed_site.backups.iterdir()) == before


# --- full disks, a safety folder that is no folder, sets retention must not touch ---------------


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs."""
    mount = tmp_path / f"small-disk-{os.getpid()}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def big_rows(site, count: int = 4000) -> None:
    """About 8 MB of rows that do not compress, written straight into the SQLite file."""
    import sqlite3

    conn = sqlite3.connect(site.env["INVENTREE_DB_NAME"])
    with conn:
        conn.execute(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?) "
            "INSERT INTO demo_part (name, description, quantity, created, attachment) "
            "SELECT 'big', hex(randomblob(1000)), n, '2024-01-01 00:00:00', '' FROM g",
            (count,),
        )
    conn.close()


def test_disk_full_during_the_dump_removes_the_finished_media_archive_too(changed_site, small_disk):
    big_rows(changed_site)  # the dump fills the disk; the small media archive is written (and done) beside it
    folder = small_disk / "backup"

    result = changed_site.manage("backup_create", check=False, extra_env={"INVENTREE_BACKUP_DIR": str(folder)})

    assert result.returncode != 0
    assert "No space left on device" in result.stderr and "the partial set was removed" in result.stderr
    assert list(folder.iterdir()) == []


def test_a_backup_to_a_folder_without_room_for_another_set_is_refused_before_anything_is_written(
    changed_site, small_disk
):
    import re

    folder = small_disk / "backup"
    env = {"INVENTREE_BACKUP_DIR": str(folder)}
    (changed_site.media / "photo.bin").write_bytes(os.urandom(1536 * 1024))  # does not compress
    changed_site.manage("backup_create", extra_env=env)  # the first set fits: about 1.6 MB of the 4 MiB
    (small_disk / "filler").write_bytes(os.urandom(1536 * 1024))
    before = sorted(p.name for p in folder.iterdir())

    result = changed_site.manage("backup_create", check=False, extra_env=env)

    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    found = re.search(r"the backup folder (\S+) has ([\d,]+) bytes free and this backup needs about ([\d,]+) ", last)
    assert found, result.stderr
    free, needed = (int(found.group(i).replace(",", "")) for i in (2, 3))
    assert (found.group(1), free) == (str(folder), shutil.disk_usage(small_disk).free)
    assert needed > free and "nothing was written" in last
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize("media_mode", ["archive", "incremental"])
def test_a_restore_whose_media_cannot_fit_in_the_staging_folder_is_refused_before_anything_is_written(
    tmp_path, small_disk, media_mode
):
    media = small_disk / "media"
    site = make_site(tmp_path / "site", INVENTREE_MEDIA_ROOT=str(media), INVENTREE_BACKUP_MEDIA_MODE=media_mode)
    media.mkdir()
    site.manage("migrate", "--noinput", "-v0")
    (media / "photo.bin").write_bytes(os.urandom(2560 * 1024))  # does not compress
    (media / "note.txt").write_text("kept")
    site.manage("backup_create")
    (media / "photo.bin").unlink()
    (small_disk / "filler").write_bytes(os.urandom(1536 * 1024))  # 4 MiB less 1.5: the photo no longer fits
    old = state(site)

    needed, what = refused_for_room(site, small_disk)

    assert needed == 2560 * 1024
    assert f"the media staging folder {media} ({needed:,} bytes: the backup's {needed + 4:,} bytes" in what
    assert differences(state(site), old) == []
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "media"]
    assert list((site.root / "safety").glob("*/safety.json")) == []


@pytest.mark.parametrize("kind", ["file", "dangling-link"])
def test_a_safety_folder_that_is_a_file_stops_the_restore_before_anything_is_staged(changed_site, kind):
    old = state(changed_site)
    not_a_folder = changed_site.root / f"safety-{kind}"
    if kind == "file":
        not_a_folder.write_text("a file")
    else:  # a link to a folder that is gone (an unmounted disk): the room check must not stop on it first
        not_a_folder.symlink_to(changed_site.root / "unmounted" / "safety")

    result = changed_site.manage(
        "backup_restore", "--noinput", check=False, extra_env={"INVENTREE_BACKUP_SAFETY_DIR": str(not_a_folder)}
    )

    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert f"the safety folder {not_a_folder} cannot be written" in last and "nothing was changed" in last, last
    assert differences(state(changed_site), old) == []
    assert leftovers(changed_site) == []


def test_a_full_safety_folder_undoes_the_swap_and_leaves_no_partial_copy(changed_site, small_disk):
    # The safety folder has room when the restore checks it; a file written while it waits at restore:staged
    # then fills it, so the copy of a removed file meets a full disk half way through the swap.
    big = changed_site.media / "docs" / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))  # not in the backup: kept aside only with --mirror
    old = state(changed_site)
    safety = small_disk / "safety"
    changed_site.env["INVENTREE_BACKUP_SAFETY_DIR"] = str(safety)

    held = Held(changed_site, "restore:staged", "backup_restore", "--noinput", "--mirror").paused("restore:staged")
    (small_disk / "filler").write_bytes(b"\0" * (2 * 1024 * 1024))
    held.go_on()
    code, err = held.finish()

    assert code != 0
    assert "No space left on device" in err and "the restore was undone" in err
    assert "ALSO failed" not in err
    assert differences(state(changed_site), old) == []
    assert [p.name for p in safety.rglob("*.part")] == []
    assert leftovers(changed_site) == []


# --- the room a restore needs, weighed before it writes anything ------------------------------------------

ROOM_LINE = re.compile(
    r"not enough room on the file system at (\S+) for this restore: it has ([\d,]+) bytes free \(a margin of "
    r"([\d,]+) kept\) and needs at least ([\d,]+) there for (.+); nothing was changed$"
)


def fill(disk: Path, leave: int) -> None:
    """Write a file on ``disk`` so that ``leave`` bytes stay free there."""
    (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - leave))


def exact(site) -> dict:
    """The live site as reference.py sees it: the SQLite file's schema, rows, header and stats, every media
    entry's stat and bytes."""
    return {"db": sqlite_catalog(Path(site.env["INVENTREE_DB_NAME"])), "media": file_stats(site.media)}


def refused_for_room(site, disk: Path, *args: str) -> tuple[int, str]:
    """Run a restore that must be refused for lack of room on ``disk`` before anything is written; returns the
    bytes it said it needs and what for.  The live site, the disk and the safety folder are checked unchanged."""
    before, listing, free = (
        exact(site),
        sorted(p.relative_to(disk) for p in disk.rglob("*")),
        shutil.disk_usage(disk).free,
    )
    safety = Path(site.env["INVENTREE_BACKUP_SAFETY_DIR"])
    records = sorted(p.name for p in safety.rglob("*")) if safety.exists() else []

    result = site.manage("backup_restore", "--noinput", *args, check=False)

    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    found = ROOM_LINE.search(last)
    assert found, result.stderr
    assert found.group(1) == str(disk)
    said_free, margin, needed = (int(found.group(i).replace(",", "")) for i in (2, 3, 4))
    assert abs(said_free - free) <= 64 * 1024  # the run's history row may take a page of a database on the disk
    assert margin == room_margin(shutil.disk_usage(disk).total) and needed > said_free - margin
    difference = reference_differences(before, exact(site))
    assert not difference, difference
    # Nothing new, also after staging (where the media files the swap replaces are known): no safety folder made.
    assert sorted(p.relative_to(disk) for p in disk.rglob("*")) == listing
    assert (sorted(p.name for p in safety.rglob("*")) if safety.exists() else []) == records
    assert leftovers(site) == []
    return needed, found.group(5)


def manifest_of(site) -> tuple[Path, dict]:
    [path] = site.backups.glob("*.manifest.metadata")
    return path, json.loads(path.read_text())


def test_a_restore_whose_sqlite_file_cannot_be_staged_beside_the_live_one_is_refused_before_anything_is_written(
    tmp_path, small_disk, migrated_sqlite
):
    db = small_disk / "db.sqlite3"
    shutil.copyfile(migrated_sqlite, db)
    site = make_site(tmp_path / "site", INVENTREE_DB_NAME=str(db))
    big_rows(site, 1000)  # about 2.3 MB
    site.manage("backup_create")
    [entry] = manifest_of(site)[1]["databases"]
    fill(small_disk, entry["source_bytes"] // 2 + room_margin(shutil.disk_usage(small_disk).total))

    needed, what = refused_for_room(site, small_disk)

    assert needed == entry["source_bytes"]
    assert f"the staging file of database 'default' ({needed:,} bytes, beside {db})" in what
    assert "free some room there" in what


def test_a_restore_whose_safety_copy_of_the_database_cannot_fit_is_refused_before_anything_is_written(
    sqlite_site, small_disk
):
    sqlite_site.env["INVENTREE_BACKUP_SAFETY_DIR"] = str(small_disk / "safety")
    big_rows(sqlite_site, 1000)
    sqlite_site.manage("backup_create")
    live = Path(sqlite_site.env["INVENTREE_DB_NAME"]).stat().st_size
    fill(small_disk, live // 2 + room_margin(shutil.disk_usage(small_disk).total))

    needed, what = refused_for_room(sqlite_site, small_disk)

    assert needed == live
    assert f"the safety copy of database 'default' ({live:,} bytes, copied from another file system)" in what
    assert "backup_safety_dir (INVENTREE_BACKUP_SAFETY_DIR)" in what


def test_a_safety_copy_on_the_databases_own_file_system_costs_no_room(tmp_path, small_disk, migrated_sqlite):
    # The old file is kept as a hard link: only the staging file needs room, though there is not enough for a
    # copy of the live file besides.
    db = small_disk / "db.sqlite3"
    shutil.copyfile(migrated_sqlite, db)
    site = make_site(tmp_path / "site", INVENTREE_DB_NAME=str(db), INVENTREE_BACKUP_SAFETY_DIR=str(small_disk / "s"))
    big_rows(site, 600)  # about 1.4 MB: the live file and a staged one fit
    site.manage("backup_create")
    site.sql("UPDATE demo_part SET quantity = -1 WHERE id = (SELECT max(id) FROM demo_part)")  # one page
    size = manifest_of(site)[1]["databases"][0]["source_bytes"]
    fill(small_disk, size + size // 2 + room_margin(shutil.disk_usage(small_disk).total))

    site.manage("backup_restore", "--noinput")

    assert site.query("SELECT count(*), max(quantity) FROM demo_part WHERE name = 'big'") == [[600, 600]]


@pytest.mark.parametrize("media_mode", ["archive", "incremental"])
def test_a_restore_whose_safety_copy_of_media_files_cannot_fit_is_refused_before_the_swap(
    sqlite_site, small_disk, media_mode
):
    sqlite_site.env["INVENTREE_BACKUP_MEDIA_MODE"] = media_mode
    sqlite_site.env["INVENTREE_BACKUP_SAFETY_DIR"] = str(small_disk / "safety")
    photo = sqlite_site.media / "photo.bin"
    photo.write_bytes(os.urandom(2560 * 1024))  # does not compress
    sqlite_site.manage("backup_create")
    photo.write_bytes(os.urandom(2560 * 1024))  # replaced by the restore: its old bytes go to the safety folder
    fill(small_disk, 1536 * 1024)

    needed, what = refused_for_room(sqlite_site, small_disk, "--skip-db")

    assert needed == 2560 * 1024
    assert f"the safety copy of 1 media file ({needed:,} bytes, copied from another file system)" in what


#: The estimate of a restore in place's safety dump of the live database, in its refusal.
SAFETY_DUMP = re.compile(r"the safety dump of the live database 'default' \(about ([\d,]+) bytes, estimated")


def in_place_backed_up(site, disk: Path) -> int:
    """Back the site up (database only) with its safety folder on ``disk``, change it; returns the dump's
    ``source_bytes``."""
    from test_refusals import watch_temp

    watch_temp(site)
    site.env["INVENTREE_BACKUP_SAFETY_DIR"] = str(disk / "safety")
    site.manage("demo_data")
    site.manage("backup_create", "--skip-media")
    site.sql("DELETE FROM demo_part WHERE quantity > 20")
    return manifest_of(site)[1]["databases"][0]["source_bytes"]


def refused_in_place(site, disk: Path) -> tuple[int, int, str]:
    """A restore in place refused for lack of room on ``disk`` before anything is written: the live database,
    the server, the temp folder and the disk unchanged; returns the bytes needed, the safety dump's estimate
    and what for."""
    from test_refusals import everything, same

    before, listing = everything(site), sorted(p.name for p in disk.iterdir())
    result = site.manage("backup_restore", "--noinput", "--skip-media", check=False)

    assert result.returncode != 0
    found = ROOM_LINE.search(result.stderr.strip().splitlines()[-1])
    assert found, result.stderr
    assert found.group(1) == str(disk)
    estimate = SAFETY_DUMP.search(found.group(5))
    assert estimate, found.group(5)
    assert sorted(p.name for p in disk.iterdir()) == listing
    assert same(everything(site), before)
    return int(found.group(4).replace(",", "")), int(estimate.group(1).replace(",", "")), found.group(5)


@pytest.mark.parametrize("in_place_site", ["postgres", "mysql"], indirect=True)
def test_a_restore_in_place_whose_spool_cannot_fit_in_the_safety_folder_is_refused_before_anything_is_written(
    in_place_site, small_disk
):
    size = in_place_backed_up(in_place_site, small_disk)
    fill(small_disk, size // 2 + room_margin(shutil.disk_usage(small_disk).total))

    needed, estimate, what = refused_in_place(in_place_site, small_disk)

    assert needed == size + estimate
    assert f"the spooled dump of database 'default' ({size:,} bytes: it is restored in place)" in what
    assert "backup_safety_dir" in what


@pytest.mark.parametrize("in_place_site", ["postgres", "mysql"], indirect=True)
def test_a_restore_in_place_whose_safety_dump_of_the_live_database_cannot_fit_is_refused_before_anything_is_written(
    in_place_site, small_disk
):
    # The spool fits, the spool and the safety dump of the live database do not (before: the spool was written,
    # then the safety dump ran the disk full); with room for both the restore runs, on the same small disk, and
    # the safety dump it keeps is within the estimate.
    site = in_place_site
    size = in_place_backed_up(site, small_disk)
    margin = room_margin(shutil.disk_usage(small_disk).total)
    fill(small_disk, 0)
    estimate = refused_in_place(site, small_disk)[1]
    (small_disk / "filler").unlink()
    fill(small_disk, size + estimate // 2 + margin)

    needed, again, _what = refused_in_place(site, small_disk)

    assert (needed, again) == (size + estimate, estimate)
    (small_disk / "filler").unlink()
    fill(small_disk, size + estimate + margin + 64 * 1024)
    site.manage("backup_restore", "--noinput", "--skip-media")
    [kept] = (small_disk / "safety").glob("*/default.*")
    assert 0 < kept.stat().st_size <= estimate
    assert site.query("SELECT count(*) FROM demo_part WHERE quantity > 20") != [[0]]


@pytest.mark.parametrize("in_place_site", ["postgres", "mysql"], indirect=True)
def test_a_safety_dump_that_outgrows_the_room_it_was_weighed_with_stops_before_the_disk_is_full(
    in_place_site, small_disk
):
    # The room is taken after the check (held before the safety dump): the dump stops at the margin, the
    # restore is undone, nothing is left in the safety folder, and the disk keeps its margin.
    from test_refusals import everything, same

    site = in_place_site
    in_place_backed_up(site, small_disk)
    before = everything(site)
    held = Held(site, "restore:in-place-dump:default", "backup_restore", "--noinput", "--skip-media")
    held.paused("restore:in-place-dump:default")
    margin = room_margin(shutil.disk_usage(small_disk).total)
    fill(small_disk, margin + 4 * 1024)
    held.go_on()
    code, err = held.finish(timeout=120)
    held.resume.unlink()

    assert code != 0
    last = err.strip().splitlines()[-1]
    assert "the safety dump of database 'default' (kept to undo the restore in place) would fill the" in last, err
    assert "the restore was undone (nothing had been changed)" in last, err
    assert "Traceback" not in err
    assert shutil.disk_usage(small_disk).free >= margin
    assert sorted(p.name for p in small_disk.iterdir()) in (["filler"], ["filler", "safety"])
    assert not (small_disk / "safety").exists() or list((small_disk / "safety").iterdir()) == []
    assert same(everything(site), before)


def test_a_restore_whose_staging_needs_add_up_on_one_file_system_is_refused_before_anything_is_written(
    tmp_path, small_disk, migrated_sqlite
):
    # The staging file and the media files each fit; both do not.
    db, media = small_disk / "db.sqlite3", small_disk / "media"
    shutil.copyfile(migrated_sqlite, db)
    media.mkdir()
    site = make_site(tmp_path / "site", INVENTREE_DB_NAME=str(db), INVENTREE_MEDIA_ROOT=str(media))
    big_rows(site, 500)
    (media / "photo.bin").write_bytes(os.urandom(1024 * 1024))
    site.manage("backup_create")
    (media / "photo.bin").unlink()
    staged = manifest_of(site)[1]["databases"][0]["source_bytes"]
    margin = room_margin(shutil.disk_usage(small_disk).total)
    fill(small_disk, max(staged, 1024 * 1024) + 256 * 1024 + margin)

    needed, what = refused_for_room(site, small_disk)

    assert needed == staged + 1024 * 1024
    assert "the staging file of database 'default'" in what and f"the media staging folder {media}" in what


def test_a_set_whose_manifest_has_no_database_size_is_still_restored_and_bounded_while_staging(
    tmp_path, small_disk, migrated_sqlite
):
    # Sets written before the manifest recorded source_bytes: no check up front; staging stops at the margin.
    db = small_disk / "db.sqlite3"
    shutil.copyfile(migrated_sqlite, db)
    site = make_site(tmp_path / "site", INVENTREE_DB_NAME=str(db))
    big_rows(site, 600)  # about 1.4 MB: the live file and a staged one fit
    site.manage("backup_create")
    path, manifest = manifest_of(site)
    size = manifest["databases"][0].pop("source_bytes")
    path.write_text(json.dumps(manifest))
    site.sql("UPDATE demo_part SET quantity = -1 WHERE id = (SELECT max(id) FROM demo_part)")  # one page
    fill(small_disk, size // 2 + room_margin(shutil.disk_usage(small_disk).total))
    before = exact(site)

    result = site.manage("backup_restore", "--noinput", check=False)

    assert result.returncode != 0
    assert "expands to more than" in result.stderr and "nothing was changed" in result.stderr
    assert not reference_differences(before, exact(site))
    assert leftovers(site) == []
    (small_disk / "filler").unlink()
    site.manage("backup_restore", "--noinput")
    assert site.query("SELECT count(*), max(quantity) FROM demo_part WHERE name = 'big'") == [[600, 600]]


@pytest.mark.parametrize(
    ("damage", "command"),
    [
        ("flipped-bit", ("manage.py", "backup_create", "--clean")),
        ("newer-format", ("manage.py", "backup_create", "--clean")),
        ("flipped-bit", ("invoke", "update")),  # every update backs up and prunes the same way
    ],
)
def test_clean_never_deletes_a_set_whose_manifest_cannot_be_read(changed_site, damage, command):
    [manifest] = changed_site.backups.glob("*.manifest.metadata")
    raw = manifest.read_bytes()
    manifest.write_bytes(bytes([raw[0] ^ 1]) + raw[1:] if damage == "flipped-bit" else raw.replace(b"/1", b"/9"))
    before = sorted(p.name for p in changed_site.backups.iterdir())

    result = changed_site.run(*command, extra_env={"INVENTREE_BACKUP_KEEP": "1"})

    assert "its manifest cannot be read" in result.stderr
    assert set(before) <= {p.name for p in changed_site.backups.iterdir()}


def test_a_killed_runs_history_row_is_closed_by_the_next_command(changed_site):
    import sqlite3

    held = Held(changed_site, "backup:media-written", "backup_create").paused("backup:media-written")
    held.signal(signal.SIGKILL)
    held.finish()

    changed_site.manage("backup_list")

    conn = sqlite3.connect(changed_site.env["INVENTREE_DB_NAME"])
    [(outcome, error)] = conn.execute(
        "SELECT outcome, error FROM backup_app_backuprun WHERE pid = ?", (held.proc.pid,)
    ).fetchall()
    conn.close()
    assert outcome == "failed"
    assert f"pid {held.proc.pid}" in error and "ended without closing it" in error


# --- pid-tagged cleanup: a restore removes what dead runs left, never a running verify's scratch ---------


def scratch_of(site, pid: int) -> list[str]:
    """What the run ``pid`` staged: its scratch database (``<name>_restore_<pid>_...``) or SQLite file."""
    if site.env["INVENTREE_DB_ENGINE"] == "sqlite3":
        return sorted(p.name for p in site.root.glob(f".db.sqlite3.restore-{pid}-*"))
    return [name for name in side_databases(site) if f"_restore_{pid}_" in name]


def leave_scratch_of_a_dead_run(site) -> str:
    """A scratch database (or SQLite file) named after a process that has ended, as a kill leaves it."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    engine, name = site.env["INVENTREE_DB_ENGINE"], site.env["INVENTREE_DB_NAME"]
    if engine == "sqlite3":
        stale = f".db.sqlite3.restore-{ended.pid}-killed"
        (site.root / stale).write_bytes(b"SQLite format 3\0")
        return stale
    stale = f"{name[:30]}_restore_{ended.pid}_1"
    if engine == "postgresql":
        from conftest import _pg_connect

        with _pg_connect() as conn:
            conn.execute(f'CREATE DATABASE "{stale}"')
    else:
        from conftest import _my_connect

        conn = _my_connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{stale}`")
        conn.close()
    return stale


@pytest.mark.parametrize("engine", ["sqlite", "postgres", "mysql"])
def test_a_restore_removes_a_dead_runs_scratch_but_not_a_running_verifys(request, engine):
    site = request.getfixturevalue(f"{engine}_site")
    server_prepare(site)
    stale = leave_scratch_of_a_dead_run(site)
    verify = Held(site, "verify:staged:default", "backup_verify", "--restore-test")
    verify.paused("verify:staged:default")
    staged = scratch_of(site, verify.proc.pid)
    assert len(staged) == 1, staged

    result = site.manage("backup_restore", "--noinput", "--skip-media")
    still = scratch_of(site, verify.proc.pid)
    verify.go_on()
    code, err = verify.finish()

    assert f"Removed {stale}, left behind by an interrupted restore" in result.stderr
    assert staged[0] not in result.stderr
    assert still == staged
    assert code == 0, err
    assert scratch_of(site, verify.proc.pid) == []  # the verify removed its own when it was done


def make_scratch(site, name: str) -> None:
    """A scratch database (or, for SQLite, file ``name`` beside the database file) as a run would leave it."""
    engine = site.env["INVENTREE_DB_ENGINE"]
    if engine == "sqlite3":
        (site.root / name).write_bytes(b"SQLite format 3\0")
    elif engine == "postgresql":
        from conftest import _pg_connect

        with _pg_connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    else:
        from conftest import _my_connect

        conn = _my_connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        conn.close()


def scratch_names(site) -> list[str]:
    if site.env["INVENTREE_DB_ENGINE"] == "sqlite3":
        return sorted(p.name for p in site.root.glob(".db.sqlite3.restore-*"))
    return [name for name in side_databases(site) if "_restore_" in name]


@pytest.mark.parametrize("engine", ["sqlite", "postgres", "mysql"])
def test_cleanup_leaves_another_hosts_scratch_and_removes_this_hosts_dead_or_older_boots(request, engine):
    """Containers over one database server and one data volume (InvenTree's web server and worker) have PID
    namespaces of their own: a pid that does not exist here may be a running restore of the other container.  The
    names carry the owner's host+boot tag; cleanup removes this host's dead runs' (and an older boot's, whatever its
    pid), never another host's."""
    from backup_app.tools import owner_tag

    site = request.getfixturevalue(f"{engine}_site")
    server_prepare(site)
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead, live = ended.pid, os.getpid()
    mine = owner_tag()
    other_host = "h" + format(int(mine[1:5], 16) ^ 0xFFFF, "04x") + mine[5:]
    older_boot = mine[:5] + format(int(mine[5:8], 16) ^ 0xFFF, "03x") + mine[8:]
    prefix = ""
    if engine == "sqlite":
        name = lambda pid, tag: f".db.sqlite3.restore-{pid}-{tag}-x"  # noqa: E731
    else:
        prefix = site.env["INVENTREE_DB_NAME"][:25]
        name = lambda pid, tag: f"{prefix}_restore_{pid}_{tag}_1"  # noqa: E731
    # No tag: pid only (an earlier version, which also kept 30 characters of the database's name).
    untagged = f"{site.env['INVENTREE_DB_NAME'][:30]}_restore_{dead}_1"
    old = f".db.sqlite3.restore-{dead}-x" if engine == "sqlite" else untagged
    gone = [name(dead, mine), name(live, older_boot), old]
    kept = [name(dead, other_host), name(live, mine)]
    for scratch in gone + kept:
        make_scratch(site, scratch)
    media = [f".backup-restore-{dead}-{mine}-x", f".backup-restore-{dead}-{other_host}-x"]
    for folder in media:
        (site.media / folder).mkdir()
    result = site.manage("backup_restore", "--noinput", "--skip-media")
    assert scratch_names(site) == sorted(kept), result.stderr
    for scratch in gone:
        assert f"Removed {scratch}, left behind by an interrupted restore" in result.stderr
    assert sorted(p.name for p in site.media.glob(".backup-restore-*")) == [media[1]]
    assert f"Removed {media[0]}, left in the media folder by an interrupted restore" in result.stderr
    if engine != "postgres":
        return
    # The throwaway roles are server-wide.  Made just before the cleanup, then looked at: another checkout's runs on
    # a shared test server (an earlier version, pid-only) would drop both.
    from conftest import _pg_connect

    roles = [f"bk_restore_{dead}_{mine}_abcd", f"bk_restore_{dead}_{other_host}_abcd"]
    with _pg_connect() as conn:
        for role in roles:
            conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        code = "from backup_app.engines import engine_for; print(engine_for('default').cleanup())"
        removed = site.manage("shell", "-c", code).stdout
        assert roles[0] in removed and roles[1] not in removed, removed
    finally:
        with _pg_connect() as conn:
            for role in roles:
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def restore_roles_of(pid: int) -> list[str]:
    """The throwaway PostgreSQL roles (``bk_restore_<pid>_...``) the run ``pid`` made and has not dropped."""
    from conftest import _pg_connect

    with _pg_connect() as conn:
        rows = conn.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (f"bk_restore_{pid}_",))
        return sorted(r[0] for r in rows)


def test_a_postgres_load_that_fails_leaves_no_staging_database_or_role_and_shows_its_own_error(postgres_site):
    import psycopg
    from conftest import _pg_connect

    server_prepare(postgres_site)
    before = postgres_site.snapshot_db()
    step = "restore:loading:default"
    held = Held(postgres_site, step, "backup_restore", "--noinput", "--skip-media").paused(step)
    (staging,) = scratch_of(postgres_site, held.proc.pid)
    assert len(restore_roles_of(held.proc.pid)) == 1
    # A session of the test's own held open on the staging database, which then accepts no connection:
    # pg_restore cannot reach it (the cause), nor can the cleanup that hands on what the role owns there.
    other = _pg_connect(staging)
    try:
        with _pg_connect() as admin:
            admin.execute(f'ALTER DATABASE "{staging}" ALLOW_CONNECTIONS false')
        held.go_on()
        code, err = held.finish()
        with pytest.raises(psycopg.OperationalError):
            other.execute("SELECT 1")  # ended, so that the staging database could be dropped
    finally:
        other.close()

    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, err
    assert "is not currently accepting connections" in lines[-1], err
    assert "cannot be dropped" not in err and "could not remove" not in err, err
    assert scratch_of(postgres_site, held.proc.pid) == []
    assert restore_roles_of(held.proc.pid) == []
    assert postgres_site.snapshot_db() == before


def test_a_failed_restore_test_shows_its_own_error_first_when_its_scratch_cannot_be_dropped(postgres_site):
    """The count of a ``verify --restore-test`` fails and the drop of its scratch database fails too: the count's
    error is the one shown, the scratch left is one more line after it, the exit is non-zero."""
    from conftest import _pg_connect

    server_prepare(postgres_site)
    verify = Held(postgres_site, "verify:staged:default", "backup_verify", "--restore-test")
    (scratch,) = scratch_of(postgres_site, verify.paused("verify:staged:default").proc.pid)
    try:
        # A scratch database that takes no connection (the count fails) and is a template (the drop fails).
        with _pg_connect() as admin:
            admin.execute(f'ALTER DATABASE "{scratch}" WITH ALLOW_CONNECTIONS false IS_TEMPLATE true')
        verify.go_on()
        code, err = verify.finish()
        out = verify.proc.stdout.read()
    finally:
        with _pg_connect() as admin:
            admin.execute(f'ALTER DATABASE "{scratch}" WITH IS_TEMPLATE false')
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}"')

    problems = [line.strip() for line in out.splitlines() if line.strip().startswith("! ")]
    assert code != 0, err
    assert len(problems) == 2, out
    assert "is not currently accepting connections" in problems[0], out
    assert "cannot drop a template database" not in problems[0], out
    assert f"the scratch copy (database {scratch}) was not removed" in problems[1], out
    assert "cannot drop a template database" in problems[1], out
    assert "is not currently accepting connections" in err.splitlines()[-1], err


def test_a_staging_database_that_cannot_be_dropped_is_named_after_the_error_and_the_next_restore_removes_it(
    postgres_site,
):
    """A restore stopped after staging (SIGTERM) whose staging database will not drop: the interruption is still
    the line's cause, the database left is named on that line with why and what removes it, and it goes once
    the cause has gone."""
    from conftest import _pg_connect

    server_prepare(postgres_site)
    old = db_rows(postgres_site)
    held = Held(postgres_site, "restore:staged", "backup_restore", "--noinput", "--skip-media")
    (staging,) = scratch_of(postgres_site, held.paused("restore:staged").proc.pid)
    try:
        with _pg_connect() as admin:
            admin.execute(f'ALTER DATABASE "{staging}" WITH IS_TEMPLATE true')  # its drop fails
        held.signal(signal.SIGTERM)
        code, err = held.finish()
    finally:
        with _pg_connect() as admin:
            admin.execute(f'ALTER DATABASE "{staging}" WITH IS_TEMPLATE false')
    last = err.strip().splitlines()[-1]

    assert code == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM; the restore was undone (nothing had been changed)" in last, err
    assert f"the staging database {staging} was not removed (" in last, err
    assert "cannot drop a template database" in last, err
    assert "the next `python manage.py backup_restore` removes it" in last, err
    assert db_rows(postgres_site) == old
    assert scratch_of(postgres_site, held.proc.pid) == [staging]

    result = postgres_site.manage("backup_restore", "--noinput", "--skip-media")

    assert f"Removed {staging}, left behind by an interrupted restore" in result.stderr
    assert [name for name in side_databases(postgres_site) if "_restore_" in name] == []


def test_a_superuser_site_restore_in_place_killed_after_its_load_leaves_nothing_the_next_restore_keeps(
    postgres_site,
):
    # Issue 15: the throwaway role owns what it loaded until the owners are given back; killed in between, the
    # next restore hands that on, drops the restore's schema in the live database and the role.
    from conftest import _pg_connect

    postgres_site.env["INVENTREE_BACKUP_CONNECTOR_OPTIONS"] = json.dumps({"SCHEMAS": ["public"]})
    live = postgres_site.env["INVENTREE_DB_NAME"]
    postgres_site.manage("demo_data")
    postgres_site.invoke("backup", "--skip-media")
    backed_up = postgres_site.snapshot_db()
    postgres_site.sql("DELETE FROM demo_part WHERE id % 2 = 0")
    step = "restore:in-place-loaded:default"
    held = Held(postgres_site, step, "backup_restore", "--noinput", "--skip-media").paused(step)
    (role,) = restore_roles_of(held.proc.pid)
    held.signal(signal.SIGKILL)
    held.finish()

    result = postgres_site.invoke("restore", "--skip-media")

    assert f"Removed {role}" in result.stderr, result.stderr
    assert restore_roles_of(held.proc.pid) == []
    with _pg_connect(live) as conn:
        assert (
            conn.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'bk_restore_')").fetchall() == []
        )
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' UNION SELECT pg_get_userbyid(nspowner) FROM pg_namespace"
            " WHERE nspname = 'public'"
        ).fetchall()
    assert sorted(owners) == [("pg_database_owner",), ("postgres",)]
    assert postgres_site.snapshot_db() == backed_up


def test_a_restore_leaves_alone_the_throwaway_role_another_sites_killed_restore_left(postgres_site):
    # Seen as a flake with -n 2: site b's restore, killed after its load in place, left its role owning what it
    # loaded into b's database; site a's restore, before it loads, removed stale roles of every site and stopped on
    # "role ... cannot be dropped because some objects depend on it".  Only b's next restore can give that back.
    from conftest import _pg_connect, unique_name

    other = unique_name()
    dead = subprocess.Popen(["true"])  # noqa: S607 - a pid that has just ended
    dead.wait()
    role = f"bk_restore_{dead.pid}_{os.urandom(4).hex()}"
    with _pg_connect() as conn:
        conn.execute(f'CREATE DATABASE "{other}"')
        conn.execute(f'CREATE ROLE "{role}"')
    try:
        with _pg_connect(other) as conn:
            conn.execute(f'CREATE TABLE kept (id int); ALTER TABLE kept OWNER TO "{role}"')
        postgres_site.invoke("backup", "--skip-media")

        result = postgres_site.invoke("restore", "--skip-media")

        assert role not in result.stderr
        assert restore_roles_of(dead.pid) == [role]
        with _pg_connect(other) as conn:
            assert conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'kept'").fetchall() == [
                (role,)
            ]
    finally:
        with _pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')
