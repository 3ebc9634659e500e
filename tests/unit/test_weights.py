"""Checkpoint downloads against a local HTTP server: once, resumed, checked, never half-loaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from predictor import weights
from predictor.backends import load_engine, resolve_model
from predictor.registry import load_sam, write_tiny_checkpoint
from samdrop.errors import ConfigError
from samdrop.settings import Settings
from tests.weights_server import serve


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    """A seeded random SAM checkpoint (the ``tiny`` architecture, so the test stays small)."""
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "seeded.pth")
    return path.read_bytes()


def test_fetched_once_then_loaded_from_cache_with_the_server_gone(tmp_path: Path, checkpoint_bytes):
    with serve({"/models/x.pth": checkpoint_bytes}) as server:
        url = f"{server.base_url}/models/x.pth"
        model = load_sam("tiny", url, tmp_path, "cpu")
        load_sam("tiny", url, tmp_path, "cpu")
        assert len(server.requests) == 1
    again = load_sam("tiny", url, tmp_path, "cpu")  # server shut down: the cache answers
    first = dict(model.state_dict())
    assert all(torch.equal(first[k], v) for k, v in again.state_dict().items())
    assert not list(tmp_path.rglob("*.part"))


def test_truncated_download_is_never_loaded_and_resumes(tmp_path: Path, checkpoint_bytes):
    half = len(checkpoint_bytes) // 2
    with serve({"/x.pth": checkpoint_bytes}) as server:
        url = f"{server.base_url}/x.pth"
        server.cut_after = half
        with pytest.raises(ConfigError, match="run again to resume"):
            load_sam("tiny", url, tmp_path, "cpu")
        target = weights.source(url, tmp_path).target
        assert not target.exists()
        part = target.with_name(target.name + ".part")
        kept = part.stat().st_size  # whole chunks received before the cut
        assert 0 < kept <= half
        assert load_sam("tiny", url, tmp_path, "cpu") is not None
        assert server.requests[-1] == ("/x.pth", f"bytes={kept}-")
    assert target.read_bytes() == checkpoint_bytes and not part.exists()


def test_wrong_checksum_is_refused_with_a_message(tmp_path: Path, checkpoint_bytes):
    wrong = "0" * 64
    with serve({"/x.pth": checkpoint_bytes}) as server:
        url = f"{server.base_url}/x.pth"
        with pytest.raises(ConfigError) as info:
            load_sam("tiny", f"{url}#sha256={wrong}", tmp_path, "cpu")
        assert (
            wrong in info.value.message and hashlib.sha256(checkpoint_bytes).hexdigest() in info.value.message
        )
        assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pth", ".part")]
        good = hashlib.sha256(checkpoint_bytes).hexdigest()
        load_sam("tiny", f"{url}#sha256={good}", tmp_path, "cpu")


def test_official_names_go_to_one_cache_file_from_a_mirror(tmp_path: Path, checkpoint_bytes):
    with serve({"/mirror/sam_vit_b_01ec64.pth": checkpoint_bytes}) as server:
        mirror = f"{server.base_url}/mirror/"
        url = weights.official_url("vit_b", mirror)
        assert url == f"{mirror}sam_vit_b_01ec64.pth"
        path = weights.fetch(url, tmp_path)
    assert path == tmp_path / "checkpoints" / "sam_vit_b_01ec64.pth"
    assert weights.official_url("vit_h") == weights.OFFICIAL_BASE_URL + "sam_vit_h_4b8939.pth"


def test_offline_error_names_the_file_and_where(tmp_path: Path):
    url = weights.official_url("vit_b", "http://127.0.0.1:9/")  # discard port: nothing listens
    with pytest.raises(ConfigError) as info:
        weights.fetch(url, tmp_path)
    assert str(tmp_path / "checkpoints" / "sam_vit_b_01ec64.pth") in info.value.message


def test_http_errors_are_reported(tmp_path: Path):
    with serve({}) as server, pytest.raises(ConfigError, match="HTTP 404"):
        weights.fetch(f"{server.base_url}/missing.pth", tmp_path)


def test_auto_picks_cached_sam_else_classic(tmp_path: Path):
    settings = Settings.from_env({}, cache_dir=tmp_path)
    assert resolve_model(settings).model_type == "classic"
    assert load_engine(settings).description["type"] == "classic"
    cached = tmp_path / "checkpoints" / "sam_vit_l_0b3195.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placed by hand")
    resolved = resolve_model(settings)
    assert resolved.model_type == "vit_l" and resolved.checkpoint == weights.official_url("vit_l")
    named = resolve_model(settings.replace(checkpoint="/models/sam_vit_b_01ec64.pth"))
    assert named.model_type == "vit_b" and named.checkpoint == "/models/sam_vit_b_01ec64.pth"
    with pytest.raises(ConfigError, match="SAMDROP_MODEL_TYPE"):
        resolve_model(settings.replace(checkpoint="/models/mine.pth"))


def test_explicit_tiny_and_classic_stay(tmp_path: Path):
    for model_type in ("tiny", "classic"):
        settings = Settings.from_env({"SAMDROP_MODEL_TYPE": model_type}, cache_dir=tmp_path)
        assert resolve_model(settings).model_type == model_type
