"""``enable_sdpa``: the encoder's attention through SDPA computes what segment-anything's does."""

from __future__ import annotations

import copy

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from predictor.fast import enable_sdpa


@pytest.mark.parametrize("size", [(14, 14), (16, 24)], ids=["window", "global-wide"])
@pytest.mark.parametrize("rel_pos", [True, False])
def test_sdpa_attention_matches_the_original(size: tuple[int, int], rel_pos: bool):
    torch.manual_seed(0)
    height, width = size
    original = Attention(64, num_heads=4, use_rel_pos=rel_pos, input_size=size).eval()
    if rel_pos:  # segment-anything initialises the tables to zero: random ones make the term count
        torch.nn.init.normal_(original.rel_pos_h, std=0.5)
        torch.nn.init.normal_(original.rel_pos_w, std=0.5)
    fast = copy.deepcopy(original)
    assert enable_sdpa(fast) == 1
    x = torch.randn(2, height, width, 64)
    with torch.no_grad():
        expected, got = original(x), fast(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_sdpa_attention_in_bf16_stays_close_to_fp32():
    torch.manual_seed(0)
    attention = Attention(64, num_heads=4, use_rel_pos=True, input_size=(16, 16)).eval()
    torch.nn.init.normal_(attention.rel_pos_h, std=0.5)
    torch.nn.init.normal_(attention.rel_pos_w, std=0.5)
    enable_sdpa(attention)
    x = torch.randn(1, 16, 16, 64)
    with torch.no_grad():
        fp32 = attention(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = attention(x).float()
    # bf16 keeps 8 bits of mantissa: a few parts in a hundred of the output's scale.
    assert (bf16 - fp32).abs().max() <= 0.05 * fp32.abs().max()
