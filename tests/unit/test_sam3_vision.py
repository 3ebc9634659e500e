"""Sam3FastVision against transformers' own ``Sam3Model.get_vision_features``, on small random models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Sam3Model

from predictor.sam3_vision import Sam3FastVision
from tests.sam3_models import SIDE, tiny_sam3_config


def _model(window: int) -> Any:
    """The tests' tiny SAM 3 (4x4 patches) with ``window``: 2 cuts the grid exactly, 3 pads it."""
    config = tiny_sam3_config()
    config.vision_config.backbone_config.window_size = window
    torch.manual_seed(3)
    model = Sam3Model(config).eval()
    with torch.no_grad():  # default-init weights are too small to tell a wrong rotation apart
        for parameter in model.vision_encoder.parameters():
            parameter.mul_(4.0)
    return model


@pytest.fixture(scope="module", params=[2, 3], ids=["exact-windows", "padded-windows"])
def model(request: pytest.FixtureRequest) -> Any:
    return _model(request.param)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(5))


def _levels(output: Any) -> list[torch.Tensor]:
    return [output.last_hidden_state, *output.fpn_hidden_states]


def test_fp32_matches_get_vision_features(model: Any, pixels: torch.Tensor):
    with torch.inference_mode():
        theirs = model.get_vision_features(pixel_values=pixels)
        ours = Sam3FastVision(model)(pixels)
    for mine, reference in zip(_levels(ours), _levels(theirs), strict=True):
        assert mine.dtype == torch.float32
        scale = float(reference.abs().max())
        np.testing.assert_allclose(mine.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5 * scale)
    for mine, reference in zip(ours.fpn_position_encoding, theirs.fpn_position_encoding, strict=True):
        assert torch.equal(mine, reference)


def test_bf16_copy_is_as_close_to_fp32_as_autocast(model: Any, pixels: torch.Tensor):
    """The path it replaces is transformers' own call under bf16 autocast; the model stays fp32."""
    encoder = Sam3FastVision(model, torch.bfloat16)
    with torch.inference_mode():
        theirs = model.get_vision_features(pixel_values=pixels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model.get_vision_features(pixel_values=pixels)
        ours = encoder(pixels)
    assert next(model.parameters()).dtype == torch.float32
    assert all(level.dtype == torch.bfloat16 for level in ours.fpn_hidden_states)
    for mine, auto, reference in zip(_levels(ours), _levels(autocast), _levels(theirs), strict=True):
        error, autocast_error = ((x.float() - reference).abs().max() for x in (mine, auto))
        assert error <= 2 * autocast_error + 1e-3 * reference.abs().max()


def test_one_image_alone_as_in_a_batch(pixels: torch.Tensor):
    encoder = Sam3FastVision(_model(2))
    with torch.inference_mode():
        batch = encoder(pixels)
        alone = encoder(pixels[1:])
    for mine, reference in zip(_levels(alone), _levels(batch), strict=True):
        np.testing.assert_allclose(mine.numpy(), reference[1:].numpy(), rtol=1e-5, atol=1e-5)


def test_another_input_size_is_refused(pixels: torch.Tensor):
    with pytest.raises(ValueError, match="4x4 patches, not 5x5"):
        Sam3FastVision(_model(2))(F.pad(pixels, (0, 14, 0, 14)))
