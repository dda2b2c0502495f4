"""The package's layout rules (ARCHITECTURE.md, "Packages"): each package is used through its
`__init__`, never through another package's private modules, and no module grows past what a
reader can hold (900 lines). Tests and benchmarks use the packages the same way; the one
exception is a test file named for a private module (`tests/test_probes.py` for
`membership._probes`, `tests/test_sip_replication.py` for `sip._replication`), which is that
module's white-box unit test and may import it.

Read from the source with `ast`, so a lazy import inside a function counts as much as one at
the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "swimthor"
MAX_LINES = 900


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "node_modules" not in p.parts)


def _package_of(path: Path) -> tuple[str, ...]:
    """('swimthor', 'sip') for swimthor/sip/_proxy.py; ('swimthor',) for swimthor/agent.py."""
    return path.relative_to(ROOT).parts[:-1]


def _imported(path: Path) -> list[tuple[int, str]]:
    """Every module `path` imports, absolute (relative imports resolved), with its line."""
    tree = ast.parse(path.read_text(), str(path))
    package = _package_of(path)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ((node.module,) if node.module else ()))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            # `from swimthor.sip import _proxy` imports a private module too.
            out.extend((node.lineno, f"{name}.{alias.name}") for alias in node.names)
    return out


def _private_part(name: str, importer: tuple[str, ...]) -> str | None:
    """The private module (or name) of another package than `importer` that `name`
    (swimthor.x._y...) reaches into, if any: 'swimthor.x._y'."""
    parts = name.split(".")
    if parts[0] != "swimthor":
        return None
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            owner = tuple(parts[:i])  # the package that keeps `part` private
            return ".".join(parts[: i + 1]) if owner != importer else None
    return None


def _private_module_of_another_package(name: str, importer: tuple[str, ...]) -> bool:
    return _private_part(name, importer) is not None


def _violations(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        importer = _package_of(path)
        if importer[:1] != ("swimthor",):
            importer = ()  # tests and bench belong to no package of ours
        for line, name in _imported(path):
            private = _private_part(name, importer)
            if private is not None:
                found.append(f"{path.relative_to(ROOT)}:{line}: {private}")
    return sorted(set(found))


def test_no_module_of_the_package_imports_another_packages_private_module() -> None:
    assert _violations(_modules(PACKAGE)) == []


def _named_for(path: Path, private: str) -> bool:
    """Whether test file `path` is the unit test of the private module `private`
    (swimthor.pkg._mod): test_mod*.py or test_pkg_mod*.py."""
    parts = private.split(".")
    module = parts[-1].lstrip("_")
    package = parts[-2] if len(parts) > 2 else ""
    stem = path.stem
    return stem.startswith(f"test_{module}") or stem.startswith(f"test_{package}_{module}")


def test_tests_and_benchmarks_use_the_packages_through_their_init() -> None:
    found = []
    for folder in (ROOT / "tests", ROOT / "bench"):
        for path in _modules(folder):
            for line, name in _imported(path):
                private = _private_part(name, ())
                if private is not None and not _named_for(path, private):
                    found.append(f"{path.relative_to(ROOT)}:{line}: {private}")
    assert sorted(set(found)) == []


def test_no_module_of_the_package_is_over_900_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules(PACKAGE)
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_checker_sees_what_it_must() -> None:
    """The rule itself: a private module of another package is refused, a package's own
    private modules and other packages' `__init__` names are not."""
    sip, top = ("swimthor", "sip"), ("swimthor",)
    assert _private_module_of_another_package("swimthor.membership._core", sip)
    assert _private_module_of_another_package("swimthor.sip._proxy", top)
    assert _private_module_of_another_package("swimthor.sip._proxy", ())
    assert _private_module_of_another_package("swimthor.cli._commands.x", sip)
    assert not _private_module_of_another_package("swimthor.sip._proxy", sip)
    assert not _private_module_of_another_package("swimthor.membership", sip)
    assert not _private_module_of_another_package("swimthor.membership.runtime", sip)
    assert not _private_module_of_another_package("swimthor.sip.__init__", top)
    assert not _private_module_of_another_package("trio._core", sip)
    assert _named_for(ROOT / "tests" / "test_probes.py", "swimthor.membership._probes")
    assert _named_for(ROOT / "tests" / "test_sip_replication.py", "swimthor.sip._replication")
    assert _named_for(ROOT / "tests" / "test_sync_properties.py", "swimthor.membership._sync")
    assert not _named_for(ROOT / "tests" / "test_core.py", "swimthor.membership._probes")
    # Relative imports resolve against the importer's package.
    path = PACKAGE / "sip" / "_service.py"
    assert _package_of(path) == sip
    assert _package_of(PACKAGE / "agent.py") == top
    assert _package_of(PACKAGE / "sip" / "__init__.py") == sip
