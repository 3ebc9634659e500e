"""The detector's rewritten encoder and mask-head arithmetic against the library's."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Sam3Model

from predictor import fused_linear
from predictor.concept_detector import _encode, _PackedMLP, _upsampled_conv, detect, encoder_mlps
from predictor.sam3_vision import Sam3FastVision
from tests.sam3_models import SIDE, WIDTH, tiny_sam3_config


@pytest.fixture(scope="module")
def model() -> Any:
    """The tests' tiny SAM 3 with two DETR encoder layers: the first, whose self-attention runs
    once for all concepts, and one that runs per concept."""
    config = tiny_sam3_config()
    config.detr_encoder_config.num_layers = 2
    torch.manual_seed(0)
    return Sam3Model(config).eval()


def _prompt(count: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    mask = torch.ones(count, 6, dtype=torch.long)
    mask[0, 4:] = 0  # a padded concept
    return torch.randn(count, 6, WIDTH, generator=generator), mask


def test_the_encoder_is_the_librarys_in_fp32(model: Any) -> None:
    vision = Sam3FastVision(model)(torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2)))
    prompt, mask = _prompt()
    feature = vision.fpn_hidden_states[-2].expand(len(prompt), -1, -1, -1)
    position = vision.fpn_position_encoding[-2].expand(len(prompt), -1, -1, -1)
    with torch.inference_mode():
        mlps = encoder_mlps(model, torch.float32)
        ours, _ = _encode(model, mlps, feature, position, prompt, mask)
        theirs = model.detr_encoder(
            vision_features=[feature], text_features=prompt, vision_pos_embeds=[position], text_mask=mask
        ).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    not fused_linear.fused_on(torch.bfloat16, torch.device("cpu")), reason="no oneDNN bf16 on this CPU"
)
def test_packed_encoder_mlps_give_autocasts_bits(model: Any) -> None:
    mlps = encoder_mlps(model, torch.bfloat16)
    assert len(mlps) == 2 and all(isinstance(mlp, _PackedMLP) for mlp in mlps)
    vision = Sam3FastVision(model, torch.bfloat16)(torch.randn(1, 3, SIDE, SIDE))
    prompt, mask = _prompt()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = detect(model, vision, prompt, mask, 0.0)
        packed = detect(model, vision, prompt, mask, 0.0, mlps=mlps)
    for theirs, ours in zip(plain, packed, strict=True):
        assert torch.equal(ours.scores, theirs.scores) and torch.equal(ours.mask_logits, theirs.mask_logits)


def _library(pixels: torch.Tensor, skip: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``Sam3PixelDecoder``'s step before its norm."""
    return conv(F.interpolate(pixels, size=skip.shape[-2:], mode="nearest") + skip)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_the_upsampled_conv_is_the_librarys_in_fp32(channels_last: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    pixels = torch.randn(3, 16, 5, 7)
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    skip = torch.randn(1, 16, 10, 14)
    with torch.no_grad():
        ours, theirs = _upsampled_conv(pixels, skip, conv), _library(pixels, skip, conv)
    assert ours.shape == theirs.shape == (3, 16, 10, 14)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert ours.is_contiguous(memory_format=torch.channels_last)


def test_the_upsampled_conv_under_bf16_autocast_is_as_close_as_the_librarys() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    pixels, skip = torch.randn(2, 32, 6, 6), torch.randn(1, 32, 12, 12)
    with torch.no_grad():
        exact = _library(pixels, skip, conv)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours, theirs = _upsampled_conv(pixels, skip, conv), _library(pixels, skip, conv)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    ours_error = (ours.float() - exact).abs().max()
    theirs_error = (theirs.float() - exact).abs().max()
    assert ours_error <= 2 * theirs_error + 1e-3


def test_sizes_that_are_not_twice_the_input_take_the_librarys_sequence() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    pixels, skip = torch.randn(2, 8, 5, 5), torch.randn(1, 8, 9, 11)
    with torch.no_grad():
        assert torch.equal(_upsampled_conv(pixels, skip, conv), _library(pixels, skip, conv))
