"""The package's shape, kept by a test: imports run one way (docs/architecture.md), no import cycle (function-level
imports included), no module over about 400 lines, and no name assigned twice in config.py."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "locator"
# The written order (docs/architecture.md): a step package imports its own modules and those of LOWER layers only.
LAYERS = {"core": 0, "crawl": 1, "runs": 1, "data": 2, "predict": 2, "train": 3, "serve": 3, "job": 4}
MAX_LINES = 420


def modules() -> dict:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(mods: dict) -> dict:
    """module -> the locator modules it imports anywhere in its body (relative imports resolved)."""
    graph = {}
    for name, path in mods.items():
        pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(pkg[:len(pkg) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                    else (node.module or "")
                for a in node.names:
                    found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def test_every_step_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS), f"packages without a layer (add them to LAYERS and docs/architecture.md): " \
                                    f"{packages ^ set(LAYERS)}"


def test_imports_follow_the_written_order():
    wrong = []
    for mod, deps in imports(modules()).items():
        parts = mod.split(".")
        if len(parts) < 2:
            continue
        for dep in deps:
            dparts = dep.split(".")
            if len(dparts) < 2 or dparts[1] == parts[1]:
                continue
            if LAYERS[dparts[1]] >= LAYERS[parts[1]]:
                wrong.append(f"{mod} -> {dep}")
    assert not wrong, "imports against the layer order: " + ", ".join(sorted(wrong))


def test_no_import_cycle():
    graph = imports(modules())
    state, stack, cycles = {}, [], []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append(" -> ".join(stack[stack.index(w):] + [w]))
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_modules_are_short():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines()))
            > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_config_assigns_each_name_once():
    tree = ast.parse((PACKAGE / "core" / "config.py").read_text())
    seen, twice = set(), []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        for t in targets:
            for n in [t] if isinstance(t, ast.Name) else [e for e in getattr(t, "elts", []) if isinstance(e, ast.Name)]:
                if n.id in seen:
                    twice.append(n.id)
                seen.add(n.id)
    assert not twice, f"config.py assigns these names more than once: {twice}"
