"""``samdrop models list|pull`` against a local mirror."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.command import main
from tests.hf_hub_server import TOKEN, serve_hub
from tests.sam2_models import write_tiny_sam2
from tests.weights_server import serve

ROOT = Path(__file__).resolve().parents[2]


def _row(listing: str, model_type: str) -> list[str]:
    """The columns of ``model_type``'s row in ``samdrop models list``."""
    return next(line.split() for line in listing.splitlines() if line.split()[:1] == [model_type])


def test_pull_fetches_from_the_mirror_and_list_shows_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMDROP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SAMDROP_MODEL_TYPE", raising=False)
    monkeypatch.delenv("SAMDROP_CHECKPOINT", raising=False)
    with serve({"/sam/sam_vit_b_01ec64.pth": b"weights"}) as server:
        monkeypatch.setenv("SAMDROP_WEIGHTS_URL", f"{server.base_url}/sam")
        assert main(["models", "list"]) == 0
        before = capsys.readouterr().out
        assert main(["models", "pull", "vit_b"]) == 0
        pulled = capsys.readouterr().out
    assert _row(before, "vit_b")[1:3] == ["sam1", "no"] and "serves: classic" in before
    assert "samdrop models pull sam2.1_hiera_large" in before  # the table's recommended type
    assert (tmp_path / "checkpoints" / "sam_vit_b_01ec64.pth").read_bytes() == b"weights"
    assert str(tmp_path / "checkpoints" / "sam_vit_b_01ec64.pth") in pulled
    assert main(["models", "list"]) == 0
    after = capsys.readouterr().out
    assert _row(after, "vit_b")[1:3] == ["sam1", "yes"] and "serves: vit_b" in after


def test_pull_offline_names_the_file_to_place(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMDROP_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SAMDROP_WEIGHTS_URL", "http://127.0.0.1:9/sam/")
    assert main(["models", "pull", "vit_h"]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "checkpoints" / "sam_vit_h_4b8939.pth") in error


def test_list_names_every_type_of_the_table(tmp_path, monkeypatch, capsys):
    from samdrop.models import MODELS

    monkeypatch.setenv("SAMDROP_CACHE_DIR", str(tmp_path))
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    for info in MODELS:
        assert _row(listing, info.name)[1] == info.family
    assert "facebook/sam2.1-hiera-tiny" in " ".join(_row(listing, "sam2.1_hiera_tiny"))
    assert "gated" in " ".join(_row(listing, "sam3")) and "text" in _row(listing, "sam3")[3]


def _samdrop(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``samdrop ARGS`` in a fresh process: huggingface_hub reads HF_* when it is imported."""
    return subprocess.run(
        [sys.executable, "-m", "deploy.command", *args],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def sam2_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = write_tiny_sam2(tmp_path_factory.mktemp("sam2") / "model")
    files = {path.name: path.read_bytes() for path in folder.iterdir()}
    return {**files, "sam2.1_hiera_t.pt": b"Meta's original checkpoint, not for transformers"}


def test_pull_sam2_from_a_hub_mirror_then_auto_serves_it(tmp_path, sam2_files):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SAMDROP_"))}
    env.update(SAMDROP_CACHE_DIR=str(tmp_path), HF_HUB_DISABLE_XET="1")
    with serve_hub({"facebook/sam2.1-hiera-tiny": sam2_files}) as hub:
        pulled = _samdrop(["models", "pull", "sam2.1_hiera_tiny"], {**env, "HF_ENDPOINT": hub.base_url})
    assert pulled.returncode == 0, pulled.stderr
    snapshot = Path(pulled.stdout.strip().split(": ", 1)[1])
    assert snapshot.is_relative_to(tmp_path / "huggingface")
    assert {p.name for p in snapshot.iterdir()} == {"config.json", "model.safetensors"}  # not the .pt
    assert (snapshot / "model.safetensors").read_bytes() == sam2_files["model.safetensors"]
    assert not any("sam2.1_hiera_t.pt" in path for _, path in hub.requests)
    # Offline from now on: the cache alone answers, and auto prefers SAM 2.1 over a cached SAM 1 file.
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "sam_vit_h_4b8939.pth").write_bytes(b"SAM 1")
    listing = _samdrop(["models", "list"], {**env, "HF_HUB_OFFLINE": "1"})
    assert listing.returncode == 0, listing.stderr
    assert _row(listing.stdout, "sam2.1_hiera_tiny")[2] == "yes"
    assert _row(listing.stdout, "sam2.1_hiera_large")[2] == "no"
    assert _row(listing.stdout, "vit_h")[2] == "yes"
    assert "serves: sam2.1_hiera_tiny" in listing.stdout


def test_pull_of_a_gated_repo_without_a_token_says_what_to_do(tmp_path, sam2_files):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SAMDROP_"))}
    env.update(SAMDROP_CACHE_DIR=str(tmp_path), HF_HUB_DISABLE_XET="1")
    with serve_hub({"facebook/sam3": sam2_files}, gated={"facebook/sam3"}) as hub:
        refused = _samdrop(["models", "pull", "sam3"], {**env, "HF_ENDPOINT": hub.base_url})
        granted = _samdrop(
            ["models", "pull", "sam3"], {**env, "HF_ENDPOINT": hub.base_url, "HF_TOKEN": TOKEN}
        )
    assert refused.returncode == 2
    assert "gated" in refused.stderr and "HF_TOKEN" in refused.stderr
    assert "https://huggingface.co/facebook/sam3" in refused.stderr
    assert granted.returncode == 0, granted.stderr


def test_pull_sam2_offline_says_where_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMDROP_CACHE_DIR", str(tmp_path))
    assert main(["models", "pull", "sam2.1_hiera_small"]) == 2  # the test session runs HF_HUB_OFFLINE=1
    error = capsys.readouterr().err
    assert "facebook/sam2.1-hiera-small" in error and "HF_ENDPOINT" in error and "SAMDROP_CHECKPOINT" in error
