"""The gen2 function's source folder, and a digest of the code that deploy ships.

Cloud Functions wants ``main.py`` and ``requirements.txt`` at the top of its source. The
repository keeps the entry point in ``functions/main.py`` and its dependencies in ``pyproject.toml``,
so deploy stages a folder: the packages the function imports, a ``main.py`` that re-exports
``on_upload``, and the function's share of the pinned dependencies (no torch: the function calls
the endpoint, it does not run SAM).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tomllib
from pathlib import Path

from deploy.gcp.clients import CloudClients
from deploy.gcp.plan import DeployError, StepResult

REPO_ROOT = Path(__file__).resolve().parents[2]
# The function's code, and pipeline/ (with the pure-Python parts of predictor/ it reads, such as
# prompt parsing) for starting bulk drops on Vertex AI Pipelines.
FUNCTION_PACKAGES = ("samdrop", "functions", "pipeline", "predictor")
# What the function imports; not torch: SAM runs on the endpoint and in the pipeline's image.
FUNCTION_REQUIREMENTS = (
    "functions-framework",
    "cloudevents",
    "google-cloud-storage",
    "google-cloud-pubsub",
    "google-cloud-aiplatform",
    "kfp",
    "requests",
    "numpy",
    "pillow",
    "pycocotools",
)
# The serving image's build context (predictor/Dockerfile's COPY lines).
IMAGE_INPUTS = (
    "pyproject.toml",
    "constraints.txt",
    "README.md",
    "samdrop",
    "predictor",
    "functions",
    "pipeline",
    "deploy",
)
MAIN_PY = (
    '"""Cloud Functions entry point, staged by samdrop deploy."""\n\n'
    "from functions.main import on_upload\n\n"
    '__all__ = ["on_upload"]\n'
)


def stage_function_source(clients: CloudClients, destination: str) -> StepResult:
    """Write the function's source folder to ``destination`` (replacing an older one)."""
    target = Path(destination)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for package in FUNCTION_PACKAGES:
        source = REPO_ROOT / package
        if (source / "__init__.py").is_file():
            shutil.copytree(source, target / package, ignore=_ignored)
    (target / "main.py").write_text(MAIN_PY)
    (target / "requirements.txt").write_text(requirements(REPO_ROOT / "pyproject.toml"))
    shutil.copy(REPO_ROOT / "constraints.txt", target / "constraints.txt")
    return StepResult("done", str(target))


def requirements(pyproject: Path) -> str:
    """``requirements.txt`` for the function: its packages at the project's pins, under constraints.txt."""
    pins = {}
    for requirement in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)$", requirement)
        if match:
            pins[match.group(1).lower()] = match.group(3)
    missing = [name for name in FUNCTION_REQUIREMENTS if name not in pins]
    if missing:
        raise DeployError(f"pyproject.toml has no exact pin for {', '.join(missing)}")
    lines = ["-c constraints.txt"] + [f"{name}=={pins[name]}" for name in FUNCTION_REQUIREMENTS]
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


def _ignored(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith(".pyc")]
