"""The layout of DESIGN.md ("Layout and the direction of imports"), checked on the source.

    bon/ (CLI) ──> server/ ──> models/ <── training/ <── evaluation/ ──> loadtest/
                                      world/  (used by training, evaluation, loadtest and the judge backend)
                                      common/ (used by all but world; imports none of ours)
                   bench/ ──> server/, models/, loadtest/, world/ (the benchmark runs them side by side)

Files are parsed with `ast`, never imported, so every import counts: at module level, inside functions, under
`if TYPE_CHECKING:`, absolute and relative. An arrow not drawn above is an import the layout forbids. Under
tests/, no module imports a test module or a conftest: builders come from tests/builders.py.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("bon", "server", "models", "training", "evaluation", "loadtest", "bench", "world", "common")

# Which of our other packages each package may import: the arrows of the drawing, and no more. common/ (atomic
# files, flags from typed fields, server processes) sits under every package but world/, which needs none of ours.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "bon": frozenset(OURS) - {"bon"},  # the CLI sits on top and may reach everything
    "server": frozenset({"models", "common"}),  # HTTP only: backends, the judge included, come through models/
    "models": frozenset({"world", "common"}),  # the judge reward backend scores with world's gold judge
    "training": frozenset({"models", "world", "common"}),
    "evaluation": frozenset({"training", "models", "loadtest", "world", "common"}),
    "loadtest": frozenset({"world", "common"}),  # talks HTTP to any server; world only for its prompts
    # Times bon's pipeline in process and served against what a user would run instead; trains nothing.
    "bench": frozenset({"server", "models", "loadtest", "world", "common"}),
    "world": frozenset(),  # standard library only, checked below: the embedded world does without common/ too
    "common": frozenset(),  # standard library only, checked below
}


def _module_parts(path: Path) -> list[str]:
    """A file's dotted module name as parts: world/judge.py -> [world, judge], world/__init__.py -> [world]."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(source: str, module: list[str], is_package: bool,
                     names: bool = False) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) of every import in `source`, relative ones resolved against `module`; with
    `names`, `from a import b` also yields `a.b`, as `b` may be a module."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                # `from . import x` is relative to the package itself in its __init__, to the parent elsewhere.
                package = module if is_package else module[:-1]
                base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            yield base, node.lineno
            if names:
                for alias in node.names:
                    yield f"{base}.{alias.name}", node.lineno


def imports_in(directory: str, names: bool = False) -> Iterator[tuple[str, str]]:
    """(module imported, "file:line") for every import in every .py file under `directory`."""
    for path in sorted((REPO / directory).rglob("*.py")):
        parts = _module_parts(path)
        for name, line in imported_modules(path.read_text(), parts, path.name == "__init__.py", names):
            yield name, f"{path.relative_to(REPO)}:{line}"


def imports_of(package: str) -> list[tuple[str, str]]:
    """(top-level package imported, "file:line") for every import in every .py file of `package`."""
    return [(name.split(".")[0], where) for name, where in imports_in(package)]


def _pairs() -> Iterator[object]:
    """One test per arrow the drawing lacks, so that a known violation can be marked xfail(strict=True) alone."""
    for package in OURS:
        for other in OURS:
            if other != package and other not in MAY_IMPORT[package]:
                yield pytest.param(package, other, id=f"{package}-imports-no-{other}")


@pytest.mark.parametrize("package, forbidden", list(_pairs()))
def test_package_does_not_import(package: str, forbidden: str) -> None:
    offending = [where for top, where in imports_of(package) if top == forbidden]
    assert not offending, f"{package}/ must not import {forbidden}/ (DESIGN.md, layout): {offending}"


@pytest.mark.parametrize("package", ["world", "common"])
def test_package_uses_the_standard_library_only(package: str) -> None:
    allowed = set(sys.stdlib_module_names) | {"__future__", package}
    offending = [(top, where) for top, where in imports_of(package) if top not in allowed]
    assert not offending, f"{package}/ imports only the standard library and itself: {offending}"


def test_every_top_level_package_is_checked() -> None:
    """A new package must join the drawing (and OURS) before it can escape the rules."""
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages == set(OURS)
    assert set(MAY_IMPORT) == set(OURS)


def test_the_parser_sees_every_kind_of_import() -> None:
    """Guards the guard: relative imports, imports inside functions and TYPE_CHECKING blocks all count."""
    source = (
        "from __future__ import annotations\n"
        "import os.path\n"
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from ..other import thing\n"
        "if TYPE_CHECKING:\n"
        "    from server.app import App\n"
        "def f() -> None:\n"
        "    import training.sft\n"
    )
    names = [name for name, _ in imported_modules(source, ["models", "sub", "mod"], is_package=False)]
    assert sorted(names) == sorted(["__future__", "os.path", "typing", "models.sub", "models.other",
                                    "server.app", "training.sft"])
    in_init = [name for name, _ in imported_modules("from .judge import score\n", ["world"], is_package=True)]
    assert in_init == ["world.judge"]
    # And on the real tree: training does import models, so an empty graph cannot pass for a clean one.
    assert "models" in {top for top, _ in imports_of("training")}


def _test_module_or_conftest(name: str) -> bool:
    return any(part == "conftest" or part.startswith("test_") for part in name.split("."))


def test_no_test_module_imports_a_test_module_or_a_conftest() -> None:
    """Shared builders live in tests/builders.py and fixtures in tests/conftest.py: a test module or a conftest
    imported as a library is a second copy of it under another name."""
    offending = [(name, where) for name, where in imports_in("tests", names=True) if _test_module_or_conftest(name)]
    assert not offending, f"import builders from tests.builders, fixtures come from tests/conftest.py: {offending}"


def test_the_tests_check_sees_every_way_to_import_a_test_module() -> None:
    """Guards the guard: absolute, relative and `from package import module` imports all count."""
    source = (
        "from tests.server.conftest import launch_server\n"
        "from tests.models import test_registry\n"
        "from .test_registry import build_swap_root\n"
        "import conftest\n"
        "from tests.builders import wait_until\n"
    )
    names = [name for name, _ in imported_modules(source, ["tests", "models", "test_x"], False, names=True)]
    assert [name for name in names if _test_module_or_conftest(name)] == [
        "tests.server.conftest", "tests.server.conftest.launch_server", "tests.models.test_registry",
        "tests.models.test_registry", "tests.models.test_registry.build_swap_root", "conftest"]
    # And on the real tree: the tests do import their builders, so an empty list cannot pass for a clean one.
    assert any(name == "tests.builders" for name, _ in imports_in("tests"))


def _models_graph() -> dict[str, set[str]]:
    """models/ module -> the models/ modules it imports (any import, anywhere in the file)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((REPO / "models").glob("*.py")):
        parts = _module_parts(path)
        name = ".".join(parts)
        graph[name] = {imported for imported, _ in imported_modules(path.read_text(), parts, path.name == "__init__.py")
                       if imported.startswith("models.") and imported != name}
    return graph


def test_models_interface_imports_no_backend() -> None:
    """Every backend imports the interface; the interface imports none of them (only checkpoint verification)."""
    assert _models_graph()["models.interface"] <= {"models.checkpoint"}


def test_models_has_no_import_cycle() -> None:
    graph = _models_graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle in models/: {' -> '.join(path + (module,))}"
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())
    # Guards the guard: the graph is not empty (every backend imports the interface).
    assert "models.interface" in graph["models.policy_hf"]


def _loader_targets() -> list[str]:
    from models.loader import POLICY_BACKENDS, REWARD_BACKENDS

    return [*POLICY_BACKENDS.values(), *REWARD_BACKENDS.values()]


def test_loader_names_real_backends() -> None:
    """Each registered backend names a module of models/ that defines the class it names."""
    for target in _loader_targets():
        module, _, attribute = target.partition(":")
        path = REPO / Path(*module.split(".")).with_suffix(".py")
        tree = ast.parse(path.read_text())
        assert any(isinstance(n, ast.ClassDef) and n.name == attribute for n in tree.body), target
