"""The layering rules, checked on the source: no backend family imports another family's
package, and the model layer imports no framework."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Backend family -> its packages under backends/. A family may import its own packages, the
# model layer, core and plugins; never another family's.
FAMILIES = {"torch": ("torch", "cpu", "triton", "cuda", "rocm"), "jax": ("tpu",)}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_backend_family_imports_another():
    problems = []
    for family, packages in FAMILIES.items():
        foreign = [f"quire.backends.{p}" for other, ps in FAMILIES.items() if other != family
                   for p in ps]
        for package in packages:
            for path in sorted((ROOT / "backends" / package).rglob("*.py")):
                for module in imported_modules(path):
                    if any(module == f or module.startswith(f + ".") for f in foreign):
                        problems.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not problems, problems


def test_every_backend_package_belongs_to_a_family():
    packages = {p.name for p in (ROOT / "backends").iterdir()
                if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == {p for ps in FAMILIES.values() for p in ps}


def test_model_layer_imports_no_framework():
    code = ("import sys\n"
            "import quire.models.config, quire.models.checkpoint, quire.models.gguf\n"
            "import quire.models.weight_map, quire.models.rope\n"
            "bad = [m for m in ('torch', 'jax', 'triton') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] != "quire":
        parts.insert(0, "quire")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_no_import_cycles():
    """Imports between quire's modules, top-level and inside functions alike, form no
    cycle (package __init__ files and `if TYPE_CHECKING:` imports are left out)."""
    files = [p for d in ("quire", "core", "plugins", "models", "backends")
             for p in (ROOT / d).rglob("*.py") if p.name != "__init__.py"]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", "") == "TYPE_CHECKING"
                       for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                           else node.module for a in node.names]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
