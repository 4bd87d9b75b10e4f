"""Every ``__all__`` is the package's public API: complete, existing, sorted (as httpx checks its
own in tests/test_exported_members.py), and the only way in from outside sagakit.
"""

from __future__ import annotations
import __future__

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest
import sagakit

ROOT = Path(__file__).resolve().parents[2]
# Code that uses sagakit as a library: it may import only from the public packages.
LIBRARY_USERS = ("services", "contracts", "bench", "tools")
TOP_LEVEL_BUDGET = 30
EXCEPTIONS = "sagakit._exceptions"


def _packages() -> list[ModuleType]:
    found = [sagakit]
    for info in pkgutil.iter_modules(sagakit.__path__, prefix="sagakit."):
        if info.ispkg:
            found.append(importlib.import_module(info.name))
    return found


PACKAGES = _packages()
PACKAGE_NAMES = {package.__name__ for package in PACKAGES}


def _exportable(package: ModuleType, name: str) -> bool:
    """A public name bound in the package's ``__init__`` that is not merely an import."""
    value = getattr(package, name)
    if name.startswith("_") or inspect.ismodule(value):
        return False
    if isinstance(value, __future__._Feature):
        return False
    if inspect.isclass(value) or inspect.isroutine(value):
        return str(getattr(value, "__module__", "")).startswith("sagakit")
    return True


def _python_files(*folders: str) -> list[Path]:
    return [
        path
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*.py"))
        if ".venv" not in path.parts
    ]


def _private_imports(path: Path) -> list[tuple[int, str, str]]:
    """``(line, module, name)`` for each name imported from a private sagakit module."""
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        parts = node.module.split(".")
        if parts[0] != "sagakit" or not any(part.startswith("_") for part in parts[1:]):
            continue
        found.extend((node.lineno, node.module, alias.name) for alias in node.names)
    return found


def _public_home(module: str) -> ModuleType:
    """The public package a private module belongs to (``sagakit.store._sql`` → sagakit.store)."""
    parts = module.split(".")
    public = [part for part in parts if not part.startswith("_")]
    return importlib.import_module(".".join(public))


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_all_is_sorted_without_duplicates(package: ModuleType) -> None:
    assert package.__all__ == sorted(set(package.__all__))


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_all_names_exist(package: ModuleType) -> None:
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert missing == []


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_all_is_complete(package: ModuleType) -> None:
    """What the package's ``__init__`` imports from its private modules, it exports."""
    bound = sorted(name for name in vars(package) if _exportable(package, name))
    assert sorted(set(bound) - set(package.__all__)) == []


@pytest.mark.parametrize(
    "package",
    [package for package in PACKAGES if package is not sagakit],
    ids=lambda package: package.__name__,
)
def test_subpackages_export_their_own_names(package: ModuleType) -> None:
    """A class or function is exported by the subpackage that defines it, not by a neighbour;
    only an exception of the one tree (sagakit._exceptions) may be re-exported by the
    subpackage whose callers catch it."""
    foreign = [
        name
        for name in package.__all__
        if (inspect.isclass(value := getattr(package, name)) or inspect.isroutine(value))
        and value.__module__ != package.__name__
        and not value.__module__.startswith(package.__name__ + ".")
        and not (value.__module__ == EXCEPTIONS and inspect.isclass(value))
    ]
    assert foreign == []


def test_every_exception_is_exported_somewhere() -> None:
    exported = {name for package in PACKAGES for name in package.__all__}
    tree = {
        name
        for name, value in vars(sagakit._exceptions).items()
        if inspect.isclass(value) and issubclass(value, sagakit.SagaError)
    }
    assert sorted(tree - exported) == []


def test_top_level_is_a_participant_authors_api() -> None:
    """The top holds about 25 names; each one is also where its subpackage says it lives."""
    assert len(sagakit.__all__) <= TOP_LEVEL_BUDGET
    for name in sagakit.__all__:
        home = _public_home(getattr(sagakit, name).__module__)
        assert name in home.__all__, f"sagakit.{name} is not exported by {home.__name__}"


@pytest.mark.parametrize("folder", LIBRARY_USERS)
def test_library_users_import_only_public_packages(folder: str) -> None:
    """Services, contracts, benchmarks and tools never reach into a private module."""
    private = [
        f"{path.relative_to(ROOT)}:{line}: {name} from {module}"
        for path in _python_files(folder)
        for line, module, name in _private_imports(path)
    ]
    assert private == [], "export these from the public package and import them from there"


def test_tests_import_public_names_from_the_public_package() -> None:
    """A test may reach into a private module for an internal, never for an exported name."""
    detours = []
    for path in _python_files("tests"):
        for line, module, name in _private_imports(path):
            home = _public_home(module)
            if name in getattr(home, "__all__", ()):
                detours.append(f"{path.relative_to(ROOT)}:{line}: {name} from {home.__name__}")
    assert detours == []


def test_the_packages_listed_in_the_top_docstring_exist() -> None:
    documented = {
        line.split("``")[1]
        for line in (sagakit.__doc__ or "").splitlines()
        if line.startswith("- ``sagakit.")
    }
    assert documented == PACKAGE_NAMES - {"sagakit"}
