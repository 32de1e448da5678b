"""The package's layers: each module imports only from the modules below it.

The order below is the architecture (see the README's "Development" section).
A module may import, at run time, only modules listed before it, so the
import graph has no cycle and a function-level import is never needed to
break one. Imports under ``if TYPE_CHECKING:`` are annotations only and may
point anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import daemon_controller

PACKAGE = Path(daemon_controller.__file__).parent

#: Bottom to top.
LAYERS = [
    # foundations: no module of ours
    "_errors",
    "_files",
    "_ports",
    "_waiting",
    "_interrupts",
    "_fdwait",
    "_platform",
    "_cancel",
    "_aio",
    "_concurrently",
    # options, probes, processes, files
    "_options",
    "_sockets",
    "_probes",
    "_templates",
    "_process",
    "_record",
    "_lock_wait",
    "_lock",
    "_pidfile",
    "_tracking",
    "_failures",
    "_commands",
    "_prepare",
    "_logs",
    "_notify",
    "_readiness",
    "_launch",
    # the steps of the actions
    "_ownership",
    "_start",
    "_stop",
    "_attempts",
    # the actions and what is built on them
    "_actions",
    "_async_actions",
    "_scoped",
    "_status",
    "_instance",
    "_pings",
    "_daemon",
    "_ruby",
    "_together",
    "_decorators",
    "_toml",
    # the faces
    "_cli_output",
    "_cli_plan",
    "_cli_commands",
    "_cli",
    "pytest_plugin",
    "__main__",
    "__init__",
]

#: At most this many lines in one module: more usually means two concerns.
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]  # _platform/_posix.py belongs to _platform


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST, here: str, *, depth: int = 1) -> set[str]:
    """The modules of the package that ``tree`` imports when it runs.

    ``depth`` is how deep the file lies: 2 inside a subpackage, whose own
    relative imports (level 1) stay inside it.
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level == depth and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == depth:
                found.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith("daemon_controller."):
                found.add((node.module or "").split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("daemon_controller."):
                    found.add(alias.name.split(".")[1])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(here)
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    modules = {_module_name(path) for path in _sources()}
    assert modules == set(LAYERS)


def test_modules_import_only_from_layers_below():
    rank = {name: index for index, name in enumerate(LAYERS)}
    upward = []
    for path in _sources():
        here = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        depth = len(path.relative_to(PACKAGE).parts)
        imported = _runtime_imports(tree, here, depth=depth)
        upward += [
            f"{path.relative_to(PACKAGE)} imports {name}"
            for name in sorted(imported)
            if rank[name] >= rank[here]
        ]
    assert upward == []


def test_only_the_platform_package_chooses_an_implementation():
    # Nothing outside _platform/ imports _posix or _windows: the implementation
    # for this OS is chosen once, in _platform/__init__.py.
    choosers = {
        str(path.relative_to(PACKAGE))
        for path in _sources()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith(("_posix", "_windows"))
    }
    assert "_platform/__init__.py" in choosers
    assert {c for c in choosers if not c.startswith("_platform/")} == set()


def test_no_module_is_too_long():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in _sources()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_checker_sees_an_upward_import():
    # The check itself can fail: a module importing one above it is reported.
    tree = ast.parse("from . import _actions\nfrom ._daemon import Daemon\n")
    assert _runtime_imports(tree, "_start") == {"_actions", "_daemon"}
    tree = ast.parse("if TYPE_CHECKING:\n    from ._daemon import Daemon\n")
    assert _runtime_imports(tree, "_start") == set()
