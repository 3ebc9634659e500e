from __future__ import annotations

from pathlib import Path

import pytest
import torch

from predictor.registry import MODEL_SPECS, build_sam, guess_model_type, load_sam, resolve_checkpoint
from samdrop.errors import ConfigError


def test_registry_has_meta_models_and_tiny():
    assert set(MODEL_SPECS) == {"tiny", "vit_b", "vit_l", "vit_h"}


def test_tiny_checkpoint_is_written_once_and_seeded(tmp_path: Path):
    first = resolve_checkpoint("tiny", None, tmp_path / "a")
    second = resolve_checkpoint("tiny", None, tmp_path / "b")
    assert first.exists() and first.name == second.name
    one, two = torch.load(first, weights_only=True), torch.load(second, weights_only=True)
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert resolve_checkpoint("tiny", None, tmp_path / "a").stat().st_mtime == first.stat().st_mtime


def test_tiny_loads_through_the_real_loader(tmp_path: Path):
    model = load_sam("tiny", None, tmp_path, "cpu")
    assert not model.training
    assert model.image_encoder.img_size == 1024
    assert len(model.image_encoder.blocks) == MODEL_SPECS["tiny"].encoder_depth


def test_explicit_checkpoint_path_and_folder(tmp_path: Path):
    written = resolve_checkpoint("tiny", None, tmp_path)
    assert resolve_checkpoint("tiny", str(written), tmp_path) == written
    assert resolve_checkpoint("tiny", str(written.parent), tmp_path) == written
    load_sam("tiny", str(written), tmp_path, "cpu")


def test_mismatched_checkpoint_names_both(tmp_path: Path):
    # A vit_b-shaped state dict is large; the encoder shapes alone identify it, so fake only those.
    tiny = resolve_checkpoint("tiny", None, tmp_path)
    with pytest.raises(ConfigError) as info:
        load_sam("vit_b", str(tiny), tmp_path, "cpu")
    assert "vit_b" in info.value.message and "'tiny'" in info.value.message


def test_guess_model_type_from_shapes():
    state = build_sam("tiny").state_dict()
    assert guess_model_type(state) == "tiny"
    assert guess_model_type({"something": torch.zeros(1)}) is None


def test_unknown_model_type_and_missing_checkpoint(tmp_path: Path):
    with pytest.raises(ConfigError, match="'vit_x' is not a model type: choose one of"):
        resolve_checkpoint("vit_x", None, tmp_path)
    # No checkpoint means Meta's file: offline (a mirror on the discard port), the error names it.
    with pytest.raises(ConfigError, match=r"sam_vit_h_4b8939\.pth"):
        resolve_checkpoint("vit_h", None, tmp_path, weights_url="http://127.0.0.1:9/")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_checkpoint("vit_b", str(tmp_path / "nope.pth"), tmp_path)


def test_not_a_state_dict(tmp_path: Path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not torch")
    with pytest.raises(ConfigError, match="could not be read"):
        load_sam("tiny", str(junk), tmp_path, "cpu")
