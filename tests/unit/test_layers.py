"""The layers of docs/design.md "Layers", checked on every import statement of every unit's modules
(function-level and ``TYPE_CHECKING`` imports included): ``samdrop`` → ``predictor`` →
``functions``, ``pipeline`` → ``deploy``; ``predictor`` is used through its package only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import predictor

REPO_ROOT = Path(__file__).resolve().parents[2]
# A unit may import its own modules and those of lower layers; tests/ and benchmarks/ import anything.
LAYERS = {"samdrop": 0, "predictor": 1, "functions": 2, "pipeline": 2, "deploy": 3}
# The function starts a batch through the pipeline's one entry point for it (planning and claiming
# a batch are the pipeline's rules; the function only hands the _READY marker over).
ALLOWED = {("functions", "pipeline.start")}
# Units used from outside only through their package (``from predictor import Job``).
PUBLIC_API_ONLY = {"predictor"}


def violation(importer: str, imported: str) -> str | None:
    """Why module ``importer`` may not import ``imported`` (dotted names), or None if it may."""
    source, target = importer.split(".")[0], imported.split(".")[0]
    if target not in LAYERS or target == source:
        return None
    if (source, imported) in ALLOWED:
        return None
    if LAYERS[target] >= LAYERS[source]:
        return f"{importer} imports {imported}: {target} is not below {source}"
    if target in PUBLIC_API_ONLY and imported != target:
        return f"{importer} imports {imported}: use the public API, `from {target} import …`"
    return None


def imported_modules(tree: ast.Module) -> list[str]:
    """Every absolute module name ``tree`` imports, wherever the statement is."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def layer_violations(root: Path) -> list[str]:
    found = []
    for unit in LAYERS:
        for path in sorted((root / unit).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            tree = ast.parse(path.read_text(), filename=str(path))
            found += [v for name in imported_modules(tree) if (v := violation(module, name)) is not None]
    return found


def test_no_module_imports_a_higher_layer_or_a_private_predictor_module():
    assert layer_violations(REPO_ROOT) == []


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("samdrop.settings", "deploy.local", False),  # the core imports nothing of the units
        ("samdrop.outputs", "predictor", False),
        ("predictor.cpr", "functions.endpoint", False),
        ("functions.handler", "pipeline.completion", False),  # same layer, not the entry point
        ("pipeline.steps", "functions.batches", False),
        ("pipeline.shard", "predictor.engine", False),  # a private module of the predictor
        ("deploy.cli", "predictor.weights", False),
        ("functions.main", "pipeline.start", True),
        ("pipeline.shard", "predictor", True),
        ("predictor.cpr", "predictor.engine", True),
        ("predictor.engine", "samdrop.settings", True),
        ("deploy.command", "pipeline.cli", True),
        ("functions.endpoint", "requests", True),
    ],
)
def test_the_rule(importer, imported, allowed):
    assert (violation(importer, imported) is None) is allowed


def test_a_planted_violation_is_found_in_a_function_body(tmp_path):
    for unit in LAYERS:
        (tmp_path / unit).mkdir()
    (tmp_path / "samdrop" / "late.py").write_text("def f():\n    from deploy.local import LocalStack\n")
    (tmp_path / "deploy" / "ok.py").write_text("import samdrop.settings\nfrom predictor import Job\n")
    assert layer_violations(tmp_path) == ["samdrop.late imports deploy.local: deploy is not below samdrop"]


def test_the_public_api_resolves_every_name_it_lists():
    assert set(predictor._LAZY) <= set(predictor.__all__)
    for name in predictor.__all__:
        assert getattr(predictor, name) is not None


def test_importing_the_predictor_package_loads_neither_torch_nor_opencv():
    code = "import sys, predictor; print(sorted({'torch', 'cv2', 'segment_anything'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
