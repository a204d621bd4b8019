"""The package's architecture: one part per stage of the study over leaf modules, imports that only go down, no
import cycles, and a selection engine that loads no deep-learning library."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mc_bench"
# parts from the bottom up: a module may import its own part and the parts below it, never one above
ORDER = ["errors", "paths", "io", "images", "config", "select", "world", "train", "weights", "evaluate", "profile",
         "study", "cli", "__main__"]


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(PACKAGE.rglob("*.py"))}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: Path) -> set[str]:
    """mc_bench modules that ``module`` imports, anywhere in its body (function-level imports count too)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mc_bench"):
                modules = _modules()
                for alias in node.names:  # `from .pkg import submodule` imports the submodule
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if candidate in modules else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mc_bench")}
    return found - {module}


def test_every_module_imports():
    for module in _modules():
        if module != "mc_bench.__main__":  # runs the CLI
            importlib.import_module(module)


def test_parts_only_import_downwards():
    modules = _modules()
    assert {_part(m) for m in modules} - {"__init__"} <= set(ORDER)
    edges = {(m, t) for m, p in modules.items() for t in _imports(m, p)}
    assert ("mc_bench.select.mc", "mc_bench.select.graph") in edges and len(edges) > 60  # the parser sees them
    for module, path in modules.items():
        for target in _imports(module, path):
            if _part(target) == "__init__" or _part(module) == "__init__":
                continue
            assert ORDER.index(_part(target)) <= ORDER.index(_part(module)), f"{module} imports {target}, a part above it"


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {t for t in _imports(m, p) if t in modules} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_selection_engine_imports_no_deep_learning_library():
    code = ("import sys, mc_bench.select, mc_bench.select.validation\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_world_generators_match_the_manifest_schema():
    from mc_bench.config import WORLD_GENERATORS
    from mc_bench.world import GENERATORS

    assert tuple(GENERATORS) == WORLD_GENERATORS


def test_no_unused_imports_or_undefined_names_and_the_package_within_120_columns():
    """pyflakes' checks (ruff's F rules) on the package, tests, benchmarks and scripts; the package's lines at most
    120 characters (E501)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ruff = Path(sys.executable).with_name("ruff")
    proc = subprocess.run([str(ruff), "check", "--select", "F", "mc_bench", "tests", "benchmarks", "scripts"],
                          cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    proc = subprocess.run([str(ruff), "check", "--select", "E501", "--line-length", "120", "mc_bench"], cwd=root,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
