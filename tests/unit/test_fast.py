"""``enable_sdpa``: the encoder's attention through SDPA computes what segment-anything's does."""

from __future__ import annotations

import copy

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT

from predictor.fast import BiasScratch, enable_sdpa


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


def small_encoder() -> ImageEncoderViT:
    torch.manual_seed(0)
    encoder = ImageEncoderViT(
        img_size=64,
        patch_size=8,
        embed_dim=32,
        depth=3,
        num_heads=2,
        out_chans=16,
        use_rel_pos=True,
        window_size=3,  # 8x8 tokens: window blocks pad to 9x9
        global_attn_indexes=(1,),
    ).eval()
    for module in encoder.modules():
        if isinstance(module, Attention):
            torch.nn.init.normal_(module.rel_pos_h, std=0.5)
            torch.nn.init.normal_(module.rel_pos_w, std=0.5)
    return encoder


def test_encoder_blocks_share_one_bias_buffer_for_one_pass(monkeypatch: pytest.MonkeyPatch):
    original = small_encoder()
    fast = copy.deepcopy(original)
    assert enable_sdpa(fast) == 3
    assert enable_sdpa(fast) == 3  # switching twice adds no second scratch or hooks
    scratch = fast.bias_scratch
    lent: list[int] = []
    take = BiasScratch.take

    def spy(self: BiasScratch, numel: int, like: torch.Tensor) -> torch.Tensor | None:
        storage = take(self, numel, like)
        assert storage is not None, "the scratch is open during the encoder's forward"
        lent.append(storage.data_ptr())
        return storage

    monkeypatch.setattr(BiasScratch, "take", spy)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = original(x), fast(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # window block (small bias), global block (a bigger buffer), window block (reuses it)
    assert len(lent) == 3 and lent[2] == lent[1]
    assert not scratch.open and scratch.buffer is None  # nothing held between passes


def test_the_scratch_is_released_when_the_forward_fails():
    encoder = small_encoder()
    enable_sdpa(encoder)
    with pytest.raises(RuntimeError), torch.no_grad():
        encoder(torch.randn(1, 4, 64, 64))  # four channels: the patch embedding refuses them
    assert not encoder.bias_scratch.open and encoder.bias_scratch.buffer is None
