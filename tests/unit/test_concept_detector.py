"""The detector's rewritten mask-head arithmetic against the library's sequence of ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from predictor.concept_detector import _upsampled_conv


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
