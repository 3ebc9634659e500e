"""The gen2 function's source folder, and a digest of the code that deploy ships.

Cloud Functions wants ``main.py`` and ``requirements.txt`` at the top of its source. The
repository keeps the entry point in ``functions/main.py`` and its dependencies in ``pyproject.toml``,
so deploy stages a folder: exactly the modules ``functions/main.py`` imports (followed through the
repository, function-level imports included), a ``main.py`` that re-exports ``on_upload``, and a
``requirements.txt`` generated from the core dependencies plus the ``[function]`` extra (no torch,
no kfp: SAM runs on the endpoint and in the pipeline's image).
"""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
import tomllib
from pathlib import Path

from deploy.gcp.clients import CloudClients
from deploy.gcp.plan import DeployError, StepResult

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTION_ENTRY = "functions/main.py"
FUNCTION_EXTRA = "function"
FIRST_PARTY = ("samdrop", "functions", "pipeline", "predictor", "deploy")
# What the serving image is built from (predictor/Dockerfile's COPY lines), plus the function's code.
IMAGE_INPUTS = (
    "pyproject.toml",
    "constraints.txt",
    "README.md",
    "samdrop",
    "predictor",
    "functions",
    "pipeline",
)
MAIN_PY = (
    '"""Cloud Functions entry point, staged by samdrop deploy."""\n\n'
    "from functions.main import on_upload\n\n"
    '__all__ = ["on_upload"]\n'
)


def stage_function_source(clients: CloudClients | None, destination: str) -> StepResult:
    """Write the function's source folder to ``destination`` (replacing an older one)."""
    target = Path(destination)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for relative in function_files():
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / relative, target / relative)
    (target / "main.py").write_text(MAIN_PY)
    (target / "requirements.txt").write_text(requirements(REPO_ROOT / "pyproject.toml"))
    shutil.copy(REPO_ROOT / "constraints.txt", target / "constraints.txt")
    return StepResult("done", str(target))


def function_files(root: Path = REPO_ROOT, entry: str = FUNCTION_ENTRY) -> list[Path]:
    """The repository files the function imports, starting at ``entry``, with their packages'
    ``__init__.py`` (paths relative to ``root``). Imports under ``if TYPE_CHECKING:`` are skipped."""
    seen: set[Path] = set()
    pending = [Path(entry)]
    while pending:
        relative = pending.pop()
        if relative in seen:
            continue
        seen.add(relative)
        for parent in relative.parents:
            init = parent / "__init__.py"
            if parent != Path(".") and (root / init).is_file():
                pending.append(init)
        tree = ast.parse((root / relative).read_text(), filename=str(relative))
        for module in _imported_modules(tree):
            pending.extend(_module_files(root, module))
    return sorted(seen)


def requirements(pyproject: Path) -> str:
    """``requirements.txt`` for the function: the core dependencies and the ``[function]`` extra,
    at the project's pins, under constraints.txt."""
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"][FUNCTION_EXTRA]]
    lines = ["-c constraints.txt"]
    for requirement in wanted:
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)$", requirement)
        if match is None:
            raise DeployError(
                f"pyproject.toml: {requirement!r} in the function's dependencies is not an exact pin"
            )
        lines.append(f"{match.group(1).lower()}=={match.group(3)}")
    return "\n".join(lines) + "\n"


def source_digest(root: Path = REPO_ROOT) -> str:
    """SHA-256 over the files that go into the image and the function (paths and bytes)."""
    digest = hashlib.sha256()
    for name in IMAGE_INPUTS:
        path = root / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()


def _imported_modules(tree: ast.Module) -> list[str]:
    """Dotted names of first-party modules (or their attributes) that ``tree`` imports."""
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return [name for name in names if name.split(".")[0] in FIRST_PARTY]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_files(root: Path, dotted: str) -> list[Path]:
    """The file of module ``dotted`` (``a/b.py`` or ``a/b/__init__.py``), if it is one."""
    base = Path(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / candidate).is_file():
            return [candidate]
    return []
