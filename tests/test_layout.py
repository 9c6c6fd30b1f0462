"""The shape of backup_app: every module imports only from its own layer or the ones below, without cycles,
and the rules each layer keeps (settings read in one place, process-wide tweaks only at the command line).

Run alone with ``python -m pytest tests/test_layout.py -q``.  Every import counts, those inside functions
and under ``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "backup_app"

#: Lowest first.  A module is known by its first name under backup_app/ (``engines/mysql.py``: ``engines``).
LAYERS: list[set[str]] = [
    {"__init__", "errors", "conf", "testing", "interrupts"},
    {"settings", "secrets", "hints"},
    {"streams", "tools", "progress", "ownership"},
    {"pipeline", "sets", "media", "incremental", "safety", "models", "migrations", "engines", "storage"},
    {"history", "notify"},
    {"actions"},
    {"schedule", "checks", "admin", "views", "urls", "apps", "management", "tasks"},
]
LAYER = {name: index for index, names in enumerate(LAYERS) for name in names}


def modules() -> dict[str, Path]:
    """Dotted name (``backup_app.engines.mysql``) -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = modules()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> set[str]:
    """The backup_app modules ``name`` imports (a ``from x import y`` of a submodule counts as ``x.y``)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "backup_app")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "backup_app":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    found.discard(name)
    return {module for module in found if module in MODULES}


def room(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    assert sorted({room(name) for name in MODULES} - set(LAYER)) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_or_sideways_only(name):
    upward = [
        f"{target} (layer {LAYER[room(target)]})"
        for target in sorted(imports_of(name))
        if LAYER[room(target)] > LAYER[room(name)]
    ]
    assert upward == [], f"{name} (layer {LAYER[room(name)]}) imports from a higher layer"


def test_no_import_cycles():
    graph = {name: imports_of(name) for name in MODULES}
    cycles = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for target in sorted(graph[node]):
            if target in on_path:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in done:
                on_path.add(target)
                visit(target, [*path, target], on_path, done)
                on_path.discard(target)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name], {name}, done)
    assert cycles == []


def source_files_except(*allowed: str) -> list[tuple[str, str]]:
    return [(name, path.read_text()) for name, path in MODULES.items() if name not in allowed]


def test_settings_are_read_through_the_accessor_only():
    """``BACKUP_APP``, ``DBBACKUP_*`` and ``dbbackup.settings`` (a copy made at import) are read in settings.py;
    conf.py writes them."""
    offenders = []
    for name, text in source_files_except("backup_app.settings", "backup_app.conf"):
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and (
                node.attr.startswith("DBBACKUP_") or node.attr.startswith("BACKUP_APP")
            ):
                offenders.append(f"{name}: .{node.attr}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.startswith("DBBACKUP_") or node.value in ("BACKUP_APP", "BACKUP_APP_CONFIG"):
                    offenders.append(f"{name}: {node.value!r}")
            elif isinstance(node, ast.ImportFrom) and node.module in ("dbbackup", "dbbackup.settings"):
                if node.module == "dbbackup.settings" or any(alias.name == "settings" for alias in node.names):
                    offenders.append(f"{name}: imports dbbackup.settings")
    assert offenders == []


def test_process_wide_memory_settings_only_at_the_command_line_entry():
    entry = "backup_app.management.commands._base"
    words = ("mallopt", "malloc_trim", "gc.freeze", "set_streamed_hook(")
    offenders = [
        f"{name}: {word}"
        for name, text in source_files_except(entry, "backup_app.streams")
        for word in words
        if word in text
    ]
    assert offenders == []
    # ... and the collector's thresholds only where invoke runs a command in its own process (its start-up).
    assert [name for name, text in source_files_except("backup_app.tasks") if "gc.set_threshold" in text] == []


def test_no_private_python_isal_api():
    offenders = []
    for name, text in source_files_except():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if isinstance(node.value, ast.Name) and node.value.id in ("isal_zlib", "igzip", "isal"):
                    offenders.append(f"{name}: {node.value.id}.{node.attr}")
    assert offenders == []


def test_commands_call_actions_not_other_commands():
    offenders = [
        name
        for name, text in source_files_except()
        if "call_command(" in text and name != "backup_app.actions.restore"  # Django's own migrate, after a restore
    ]
    assert offenders == []
