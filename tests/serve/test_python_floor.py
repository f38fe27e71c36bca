"""The code runs on the oldest Python pyproject.toml allows: it uses no module, name or syntax of a newer one.

The server is where a newer name hurts most (asyncio.timeout on 3.10 dropped every connection), so the scan
lives with the serving tests, but it reads every module of the package and every script."""
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# (module, name) -> the Python that added it
NEWER = {("asyncio", "timeout"): (3, 11), ("asyncio", "timeout_at"): (3, 11), ("asyncio", "TaskGroup"): (3, 11),
         ("asyncio", "Runner"): (3, 11), ("asyncio", "Barrier"): (3, 11), ("typing", "Self"): (3, 11),
         ("typing", "LiteralString"): (3, 11), ("typing", "Never"): (3, 11), ("typing", "assert_never"): (3, 11),
         ("typing", "reveal_type"): (3, 11), ("typing", "Required"): (3, 11), ("typing", "NotRequired"): (3, 11),
         ("enum", "StrEnum"): (3, 11), ("datetime", "UTC"): (3, 11), ("contextlib", "chdir"): (3, 11),
         ("hashlib", "file_digest"): (3, 11), ("itertools", "batched"): (3, 12), ("typing", "override"): (3, 12)}
NEWER_MODULES = {"tomllib": (3, 11)}
NEWER_BUILTINS = {"ExceptionGroup": (3, 11), "BaseExceptionGroup": (3, 11)}
NEWER_METHODS = {"add_note": (3, 11)}   # BaseException.add_note


def floor() -> tuple:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'^requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', text, re.M)
    assert m, "pyproject.toml names no requires-python floor"
    return int(m[1]), int(m[2])


def sources() -> list:
    return sorted((ROOT / "locator").rglob("*.py")) + sorted(ROOT.glob("*.py")) + sorted(
        (ROOT / "bench").glob("*.py")) + sorted((ROOT / "tools").glob("*.py"))


def _fallback_imports(tree) -> set:
    """Imports inside `try:` blocks whose handler catches ImportError: the newer module or an older stand-in."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def too_new(tree, oldest: tuple) -> list:
    """(line, what) of every use of something newer than `oldest`."""
    fallback, found = _fallback_imports(tree), []

    def newer(version, line, what):
        if version > oldest:
            found.append((line, f"{what} (Python {'.'.join(map(str, version))})"))

    for node in ast.walk(tree):
        if type(node).__name__ == "TryStar":
            newer((3, 11), node.lineno, "except*")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in NEWER_MODULES and id(node) not in fallback:
                    newer(NEWER_MODULES[a.name], node.lineno, f"import {a.name} without a fallback")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in NEWER_MODULES and id(node) not in fallback:
                newer(NEWER_MODULES[node.module], node.lineno, f"from {node.module} import without a fallback")
            for a in node.names:
                if (node.module, a.name) in NEWER:
                    newer(NEWER[node.module, a.name], node.lineno, f"{node.module}.{a.name}")
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and (node.value.id, node.attr) in NEWER:
                newer(NEWER[node.value.id, node.attr], node.lineno, f"{node.value.id}.{node.attr}")
            elif node.attr in NEWER_METHODS:
                newer(NEWER_METHODS[node.attr], node.lineno, f".{node.attr}()")
        elif isinstance(node, ast.Name) and node.id in NEWER_BUILTINS:
            newer(NEWER_BUILTINS[node.id], node.lineno, node.id)
    return found


def test_the_scan_finds_what_a_newer_python_added():
    code = ("import asyncio, tomllib\nfrom enum import StrEnum\nasync def f():\n    async with asyncio.timeout(1):\n"
            "        pass\ntry:\n    import tomllib as t\nexcept ModuleNotFoundError:\n    import tomli as t\n"
            "e = ValueError()\ne.add_note('x')\n")
    found = sorted(f"{line}: {what}" for line, what in too_new(ast.parse(code), (3, 10)))
    assert found == ["11: .add_note() (Python 3.11)", "1: import tomllib without a fallback (Python 3.11)",
                     "2: enum.StrEnum (Python 3.11)", "4: asyncio.timeout (Python 3.11)"]
    assert too_new(ast.parse(code), (3, 11)) == []


def test_the_code_uses_nothing_newer_than_the_python_pyproject_allows():
    oldest = floor()
    assert oldest <= sys.version_info[:2]
    found = []
    for path in sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in too_new(tree, oldest)]
    assert not found, f"requires-python is >= {oldest[0]}.{oldest[1]}, but:\n" + "\n".join(found)
