"""Sam2FastEncoder against transformers' own ``Sam2Model.get_image_embeddings``, on a small random model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from predictor.sam2_encoder import Sam2FastEncoder
from tests.sam2_models import INPUT_SIDE, tiny_sam2


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_sam2()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, INPUT_SIDE, INPUT_SIDE, generator=torch.Generator().manual_seed(5))


def _close(ours: tuple[torch.Tensor, ...], theirs: list[torch.Tensor], rtol: float) -> None:
    assert [level.shape for level in ours] == [level.shape for level in theirs]
    for mine, reference in zip(ours, theirs, strict=True):
        scale = float(reference.abs().max())
        np.testing.assert_allclose(mine.float().numpy(), reference.numpy(), rtol=rtol, atol=rtol * scale)


def test_fp32_matches_get_image_embeddings(model: Any, pixels: torch.Tensor):
    with torch.inference_mode():
        theirs = model.get_image_embeddings(pixels)
        ours = Sam2FastEncoder(model)(pixels)
    _close(ours, theirs, 1e-5)
    assert all(level.dtype == torch.float32 for level in ours)


def test_bf16_copy_runs_in_bf16_and_leaves_the_model_fp32(model: Any, pixels: torch.Tensor):
    """As close to fp32 as transformers' own call under bf16 autocast (the path it replaces)."""
    encoder = Sam2FastEncoder(model, torch.bfloat16)
    with torch.inference_mode():
        theirs = model.get_image_embeddings(pixels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model.get_image_embeddings(pixels)
        ours = encoder(pixels)
    assert all(level.dtype == torch.bfloat16 for level in ours)
    assert next(model.parameters()).dtype == torch.float32
    for mine, auto, reference in zip(ours, autocast, theirs, strict=True):
        error, autocast_error = ((x.float() - reference).abs().max() for x in (mine, auto))
        assert error <= 2 * autocast_error + 1e-3 * reference.abs().max()


def test_one_image_alone_as_in_a_batch(model: Any, pixels: torch.Tensor):
    encoder = Sam2FastEncoder(model)
    with torch.inference_mode():
        batch = encoder(pixels)
        alone = encoder(pixels[1:])
    _close(alone, [level[1:] for level in batch], 1e-5)
