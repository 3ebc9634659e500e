"""Fast-path model changes that keep segment-anything's weights and interfaces.

``enable_sdpa`` swaps the image encoder's attention for PyTorch's fused
``scaled_dot_product_attention`` with the decomposed relative-position term passed as an additive
bias (the segment-anything-fast approach). The maths is unchanged, so fp32 outputs match the
reference path; on CUDA it runs the memory-efficient kernel instead of materialising softmax inputs
in Python-level ops.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos


def enable_sdpa(model: torch.nn.Module) -> int:
    """Use SDPA in every encoder ``Attention`` of ``model``; returns how many were switched."""
    count = 0
    for module in model.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(_sdpa_forward, module)
            count += 1
    return count


def _sdpa_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """x: ``BxHxWxC`` tokens of one window (or the whole map for global blocks) → same shape."""
    batch, height, width, _ = x.shape
    heads = self.num_heads
    # (3, B, heads, H*W, C/heads)
    qkv = self.qkv(x).reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    bias = None
    if self.use_rel_pos:
        rel_h_table = get_rel_pos(height, height, self.rel_pos_h)
        rel_w_table = get_rel_pos(width, width, self.rel_pos_w)
        r_q = q.reshape(batch * heads, height, width, -1)
        # einsum returns permuted views; the sum below takes its layout from them and would come out
        # strided, costing a second full pass (a copy of the bias) in the reshape. Contiguous
        # inputs give a contiguous bias directly: the same numbers, about half the time.
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_h_table).contiguous()
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_w_table).contiguous()
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(
            batch, heads, height * width, height * width
        )
        bias = bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(batch, heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    return self.proj(out)
