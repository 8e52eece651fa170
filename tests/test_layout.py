"""The package's shape: imports only point down the layers of docs/architecture.md, and the
shipped checkpoints are found wherever the package is used from."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

MOR = Path(__file__).resolve().parent.parent / "mor"
# layer -> the mor layers it may import (besides itself)
ALLOWED = {
    "model": set(),
    "data": set(),
    "inference": {"model"},
    "training": {"model", "data"},
    "analysis": {"model", "inference", "data"},
}


def mor_imports(path: Path) -> set[str]:
    """The mor layers a module imports (absolute `mor.x` or relative `..x` imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    layers = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.split(".")[0] == "mor":
                parts = node.module.split(".")
                layers.add(parts[1] if len(parts) > 1 else "<root>")
            elif node.level == 2 and node.module:  # from ..x import y, inside mor/<layer>/
                layers.add(node.module.split(".")[0])
            elif node.level == 2:  # from .. import x
                layers.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("mor", "app"):
                    parts = alias.name.split(".")
                    layers.add(parts[1] if len(parts) > 1 and parts[0] == "mor" else parts[0])
    return layers


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_down(layer):
    for module in sorted((MOR / layer).glob("*.py")):
        used = mor_imports(module) - {layer}
        assert used <= ALLOWED[layer], f"{module.relative_to(MOR.parent)} imports {sorted(used - ALLOWED[layer])}"


def test_mor_never_imports_the_app():
    for module in MOR.rglob("*.py"):
        assert "app" not in mor_imports(module), module


@pytest.mark.slow
def test_checkpoints_are_found_from_any_directory(tmp_path):
    code = "import mor; print(len(mor.list_checkpoints()))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    assert int(done.stdout.strip().splitlines()[-1]) == len(list((MOR.parent / "checkpoints").glob("*/config.json"))) > 0
