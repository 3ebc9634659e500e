"""Fast-path model changes that keep segment-anything's weights and interfaces.

``enable_sdpa`` swaps the image encoder's attention for PyTorch's fused
``scaled_dot_product_attention`` with the decomposed relative-position term passed as an additive
bias (the segment-anything-fast approach). The maths is unchanged, so fp32 outputs match the
reference path; on CUDA it runs the memory-efficient kernel instead of materialising softmax inputs
in Python-level ops.

The bias is large (heads x tokens², 400 MB per image in each of ``vit_b``'s global blocks), and on a
CPU a fresh allocation of that size is fresh pages from the kernel every time: the page faults cost
about as much as computing the bias. The encoder's blocks run one after another, so one buffer
(:class:`BiasScratch`) serves them all for the length of one forward pass.
"""

from __future__ import annotations

import threading
import types
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT, get_rel_pos


class BiasScratch(threading.local):
    """Storage for the relative-position bias, lent to an encoder's attention blocks in turn.

    Open from the encoder's forward pre-hook to its forward hook, and per thread, so concurrent
    forward passes never share it; between passes nothing is held. Closed (a bare ``Attention``
    called on its own), :meth:`take` gives ``None`` and the block allocates its own.
    """

    def __init__(self) -> None:
        self.open = False
        self.buffer: torch.Tensor | None = None

    def start(self, *_: Any) -> None:
        self.open, self.buffer = True, None

    def stop(self, *_: Any) -> None:
        self.open, self.buffer = False, None

    def take(self, numel: int, like: torch.Tensor) -> torch.Tensor | None:
        """A flat tensor of ``numel`` elements with ``like``'s dtype and device, or ``None``."""
        if not self.open:
            return None
        if not self._fits(numel, like):
            self.buffer = None  # the old one goes before the bigger one is made
            self.buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
        assert self.buffer is not None
        return self.buffer[:numel]

    def _fits(self, numel: int, like: torch.Tensor) -> bool:
        buffer = self.buffer
        return (
            buffer is not None
            and buffer.numel() >= numel
            and (buffer.dtype, buffer.device) == (like.dtype, like.device)
        )


def enable_sdpa(model: torch.nn.Module) -> int:
    """Use SDPA in every encoder ``Attention`` of ``model``; returns how many were switched."""
    count = 0
    for encoder in [m for m in model.modules() if isinstance(m, ImageEncoderViT)] or [model]:
        scratch = getattr(encoder, "bias_scratch", None)
        if scratch is None:  # not switched before: one scratch and one pair of hooks per encoder
            scratch = encoder.bias_scratch = BiasScratch()
            if isinstance(encoder, ImageEncoderViT):
                encoder.register_forward_pre_hook(scratch.start)
                encoder.register_forward_hook(scratch.stop, always_call=True)  # on errors too
        for module in encoder.modules():
            if isinstance(module, Attention):
                module.forward = types.MethodType(_sdpa_forward, module)
                module.bias_scratch = scratch
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
        # einsum returns permuted views; a sum of those takes their layout and comes out strided
        # (the reshape to SDPA's shape would then copy it): contiguous inputs give a contiguous sum.
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_h_table).contiguous().to(q.dtype)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_w_table).contiguous().to(q.dtype)
        shape = (batch * heads, height, width, height, width)
        scratch: BiasScratch = self.bias_scratch
        storage = scratch.take(batch * heads * (height * width) ** 2, q)
        out = None if storage is None else storage.view(shape)
        bias = torch.add(rel_h[:, :, :, :, None], rel_w[:, :, :, None, :], out=out)
        bias = bias.view(batch, heads, height * width, height * width)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(batch, heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    return self.proj(out)
