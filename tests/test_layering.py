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
