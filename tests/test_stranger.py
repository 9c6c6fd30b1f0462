"""A stranger's project: the built wheel in a fresh virtual environment, a second Django project, its prefix.

The steps are those of ``docs/adopting.md``, read from the page: its shell
blocks are the commands run here (``test_page_lists_the_steps_this_test_runs``
keeps the two the same), its Python blocks are the files written into the
project, its environment block names the variables set.  Two substitutions, both
said on the page: ``pip install`` takes the wheel built from this checkout, and
the PostgreSQL block gets the test's database name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, media_hashes, service_missing

PAGE = ROOT / "docs" / "adopting.md"

SETUP_STEPS = ['pip install "backup_app[postgres,mysql]"', "django-admin startproject mysite ."]
RUN_STEPS = [
    "python manage.py migrate",
    "invoke --list",
    "invoke backup-config",
    "invoke backup",
    "invoke listbackups --json",
    "invoke verify",
    "invoke restore",
    "invoke rollback",
    "invoke restore",
    "invoke update",
]
APP_TASKS = [
    *("backup", "backup-check", "backup-config", "backup-export", "listbackups", "migrate", "restore", "rollback"),
    "static",
    *("update", "verify", "worker"),
]
# Not copied into the wheel's source tree: what the repository holds beside the code.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", "node_modules", "data", "site", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"
)
VENDOR = {"postgres": "PostgreSQL", "mysql": "MariaDB"}
PIP_OFFLINE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution")


# --- the page ----------------------------------------------------------------------------------------------------


def page_blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced block of the adoption page."""
    return re.findall(r"^```(\w+)\n(.*?)^```$", PAGE.read_text(), flags=re.MULTILINE | re.DOTALL)


def page_block(first_line: str) -> str:
    """The block whose first line is ``first_line`` (that comment line left out)."""
    found = [text for _, text in page_blocks() if text.splitlines()[0] == first_line]
    assert len(found) == 1, f"docs/adopting.md has {len(found)} blocks starting with {first_line!r}"
    return found[0].split("\n", 1)[1]


def page_commands(first_line: str) -> list[str]:
    return [line for line in page_block(first_line).splitlines() if line and not line.startswith("#")]


def page_environment() -> dict[str, str]:
    """``NAME: value`` of the page's ``export`` lines."""
    lines = page_commands("# the site's environment")
    return dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines)


def test_page_lists_the_steps_this_test_runs():
    assert page_commands("# in the project's folder, with its virtual environment active") == SETUP_STEPS
    assert page_commands("# in the project's folder") == RUN_STEPS


# --- the wheel and the virtual environment ---------------------------------------------------------------------


def clean_env(**extra: str) -> dict:
    """The environment of a user's shell: nothing of the demo site or of this checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INVENTREE_", "DJANGO_", "MYSITE_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(extra)
    return env


def run(argv: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout
    )


def pip(argv: list[str], cwd: Path, env: dict) -> None:
    result = run(argv, cwd, env)
    if result.returncode:
        output = result.stdout + result.stderr
        if any(sign in output for sign in PIP_OFFLINE):
            service_missing("PyPI", RuntimeError(output.strip().splitlines()[-1]))
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{output}")


@dataclass
class Venv:
    root: Path
    wheel: Path
    seconds: dict = field(default_factory=dict)

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def site_packages(self) -> Path:
        return next((self.root / "lib").glob("python3*/site-packages"))

    def env(self, **extra: str) -> dict:
        return clean_env(PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(self.root), **extra)


def build_wheel(workdir: Path) -> Path:
    """``pip wheel`` of a copy of this checkout (the build's own folders stay out of the repository)."""
    source = workdir / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(workdir / "dist"), str(source)]
    pip(argv, workdir, clean_env())
    [wheel] = (workdir / "dist").glob("backup_app-*.whl")
    return wheel


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Venv:
    """The wheel of this checkout, installed with its ``[postgres,mysql]`` extras into a new virtual environment."""
    workdir = tmp_path_factory.mktemp("stranger")
    started = time.monotonic()
    wheel = build_wheel(workdir)
    built = time.monotonic()
    root = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    env = Venv(root, wheel)
    install = page_commands("# in the project's folder, with its virtual environment active")[0]
    argv = shlex.split(install.replace('"backup_app[', f'"{wheel}['))
    pip([str(env.bin / "python"), "-m", *argv, "-q"], workdir, env.env())
    env.seconds = {"wheel": built - started, "venv+install": time.monotonic() - built}
    return env


def test_wheel_holds_backup_app_only(venv):
    names = zipfile.ZipFile(venv.wheel).namelist()

    assert {name.split("/")[0] for name in names} == {"backup_app", venv.wheel.name.split("-py3")[0] + ".dist-info"}
    assert "backup_app/tasks.py" in names
    assert "backup_app/templates/backup_app/status.html" in names
    assert not [name for name in names if name.endswith(".yaml")]


def test_installed_package_has_no_config_module(venv, tmp_path):
    result = run([str(venv.bin / "python"), "-c", "import config"], tmp_path, venv.env())

    assert result.returncode != 0
    assert "No module named 'config'" in result.stderr


def test_editable_install_exposes_backup_app_but_not_the_demo(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    root = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    env = clean_env(PATH=f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}")
    pip([str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "-e", str(source)], tmp_path, env)

    probe = "import importlib.util as u; print(u.find_spec('backup_app').origin, u.find_spec('config'))"
    result = run([str(root / "bin" / "python"), "-c", probe], tmp_path, env)

    assert result.stdout.split() == [str(source / "backup_app" / "__init__.py"), "None"], result.stderr


def test_invoke_without_manage_py_fails_with_one_line(venv, tmp_path):
    (tmp_path / "tasks.py").write_text(page_block("# tasks.py, next to manage.py"))

    result = run([str(venv.bin / "invoke"), "backup"], tmp_path, venv.env())

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"No manage.py in {tmp_path.resolve()} or any folder above it: run invoke in your Django project's folder "
        "(the one with manage.py) or below it."
    ]


# --- the project -------------------------------------------------------------------------------------------------


@dataclass
class Stranger:
    """The project folder, its environment, and the page's steps as they are run."""

    venv: Venv
    root: Path
    env: dict
    ran: list[str] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)

    def command(self, line: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one command line, in the project's folder, in the virtual environment."""
        argv = shlex.split(line)
        argv[0] = str(self.venv.bin / argv[0])
        result = run(argv, self.root, self.env)
        self.transcript.append(f"$ {line}\n{result.stdout}{result.stderr}(exit {result.returncode})")
        if check and result.returncode:
            raise AssertionError(f"{line} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result

    def step(self, line: str) -> subprocess.CompletedProcess:
        """One of the page's steps, in the page's order."""
        steps = SETUP_STEPS[1:] + RUN_STEPS
        assert line == steps[len(self.ran)], f"{line!r} is not the page's next step {steps[len(self.ran)]!r}"
        self.ran.append(line)
        return self.command(line)

    def manage(self, *args: str) -> str:
        return self.command(shlex.join(["python", "manage.py", *args])).stdout

    def users(self) -> list[dict]:
        return json.loads(self.manage("dumpdata", "auth.user", "--indent", "0"))


def tree(folder: Path) -> dict[str, tuple[int, int, int]]:
    """``{path: (size, mtime_ns, mode)}`` of every file under ``folder`` (compiled bytecode aside)."""
    found = {}
    for path in sorted(folder.rglob("*")) if folder.exists() else ():
        st = path.lstat()
        if "__pycache__" not in path.parts and not path.is_dir():
            found[path.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return found


def stranger_project(venv: Venv, tmp: Path, database: str | None, vendor: str = "PostgreSQL") -> Stranger:
    """The page's setup steps: startproject, the settings lines, tasks.py; the site's environment."""
    root = tmp / "project"
    root.mkdir()
    outside = tmp / "outside"
    env = venv.env(COLUMNS="250")
    for name, value in page_environment().items():
        # The page's folders become the test's own; the other values are the page's.
        env[name] = str(outside / Path(value).name) if name.endswith("_DIR") else value
    env["INVENTREE_BACKUP_DIR"] = str(outside / "inventree-prefix")  # another prefix: must be ignored
    site = Stranger(venv, root, env)
    site.step("django-admin startproject mysite .")
    settings = root / "mysite" / "settings.py"
    added = ""
    if database:
        block = page_block(f"# mysite/settings.py on {vendor}")
        assert '"NAME": "mysite"' in block
        added += "\n" + block.replace('"NAME": "mysite"', f'"NAME": {database!r}')
    added += "\n" + page_block("# mysite/settings.py: add at the end")
    settings.write_text(settings.read_text() + added)
    (root / "tasks.py").write_text(page_block("# tasks.py, next to manage.py"))
    return site


def django_shell(site: Stranger, code: str) -> None:
    site.manage("shell", "-v", "0", "-c", "from django.contrib.auth.models import User; " + code)


@pytest.mark.parametrize("engine", ["sqlite", "postgres", "mysql"])
def test_page_steps_back_up_and_restore_the_project(engine, venv, tmp_path, request):
    database = request.getfixturevalue(f"{engine}_database") if engine != "sqlite" else None
    demo_before = {part: tree(ROOT / part) for part in ("data", "config")}
    package_before = tree(venv.site_packages)
    started = time.monotonic()
    site = stranger_project(venv, tmp_path, database, VENDOR.get(engine, ""))
    backups = Path(site.env["MYSITE_BACKUP_DIR"])
    safety = Path(site.env["MYSITE_BACKUP_SAFETY_DIR"])
    media = site.root / "media"

    site.step("python manage.py migrate")
    listed = site.step("invoke --list").stdout
    config = site.step("invoke backup-config").stdout
    django_shell(site, "User.objects.create_user('alice', 'alice@example.com', 'pw-alice')")
    (media / "docs").mkdir(parents=True)
    (media / "docs" / "a.txt").write_text("backed up")
    (media / "b.bin").write_bytes(os.urandom(4096))
    users, files = site.users(), media_hashes(media)
    site.step("invoke backup")
    [entry] = json.loads(site.step("invoke listbackups --json").stdout)
    verified = site.step("invoke verify").stdout
    # The site is used: rows and files change.
    django_shell(site, "User.objects.all().delete(); User.objects.create_user('mallory')")
    (media / "docs" / "a.txt").write_text("changed")
    (media / "b.bin").unlink()
    (media / "new.txt").write_text("created after the backup")
    used_users, used_files = site.users(), media_hashes(media)
    restored = site.step("invoke restore")
    users_after, files_after = site.users(), media_hashes(media)
    site.step("invoke rollback")
    users_rolled_back, files_rolled_back = site.users(), media_hashes(media)
    site.step("invoke restore")
    users_again = site.users()
    site.step("invoke update")
    seconds = time.monotonic() - started
    print(f"\n[{engine}] wheel {venv.seconds}, project steps {seconds:.1f} s\n" + "\n".join(site.transcript))

    # invoke --list: the app's tasks, as the page shows them.
    assert re.findall(r"^  (\S+)", listed, flags=re.MULTILINE) == APP_TASKS
    assert listed.rstrip() == ("Available tasks:\n" + page_block("Available tasks:")).rstrip()
    # The site's prefix is read, another's is not.
    assert re.search(r"│ backup_dir +│ MYSITE_BACKUP_DIR +│ .* │ MYSITE_BACKUP_DIR +│", config), config
    assert f'"{backups}"' in config  # STORAGES["dbbackup"]'s location
    assert not Path(site.env["INVENTREE_BACKUP_DIR"]).exists()
    assert not (site.root / "backup").exists()
    # The set: where MYSITE_BACKUP_DIR says, named by the MYSITE_ templates.
    assert entry["complete"] is True
    kinds = {f["kind"]: f["name"] for f in entry["files"]}
    assert kinds["db"].startswith("mysite-db-") and kinds["media"].startswith("mysite-media-"), kinds
    assert {f["name"] for f in entry["files"]} <= {p.name for p in backups.iterdir()}
    # Rows and files are back; a file created after the backup stays (no --mirror).
    assert [u["fields"]["username"] for u in users] == ["alice"]
    assert users_after == users
    assert files_after == {**files, "new.txt": hashlib.sha256(b"created after the backup").hexdigest()}
    # The set verifies; the restore says how to undo it, as this site runs the app.
    assert verified.splitlines()[0].split() == ["OK", entry["name"], "(complete)"], verified
    assert "undo this restore with `invoke rollback --name " in restored.stdout + restored.stderr
    # The replaced state went to MYSITE_BACKUP_SAFETY_DIR; the rollback brought it back.
    assert any(safety.iterdir())
    assert (users_rolled_back, files_rolled_back) == (used_users, used_files)
    assert [u["fields"]["username"] for u in used_users] == ["mallory"]
    assert users_again == users
    # invoke update: a second set, static files collected.
    assert [s["complete"] for s in json.loads(site.command("invoke listbackups --json").stdout)] == [True, True]
    assert (site.root / "static" / "admin").is_dir()
    # Nothing was written into the demo site of the repository nor into the installed package.
    assert {part: tree(ROOT / part) for part in ("data", "config")} == demo_before
    assert tree(venv.site_packages) == package_before
    assert site.ran == SETUP_STEPS[1:] + RUN_STEPS
