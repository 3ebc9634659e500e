"""SAM 2.1's image encoder as ``Sam2Model.get_image_embeddings`` runs it, without its waste.

transformers' Hiera forward, profiled on hiera tiny (1024 px, bf16 autocast, 2 Zen 4 cores), spends
a third of its time on work whose result is never read or that is the same for every image:

* each attention block multiplies every token's query by its keys head against head and softmaxes
  that in fp32 (``Sam2MultiScaleAttention``'s ``attn_weights``: SDPA does the real attention);
* the windowed positional embedding is interpolated bicubically from its 7x7 background every
  forward, and the neck builds a sine positional encoding for every feature level, which the image
  encoder's callers never read (the decoder takes its own);
* under autocast the fp32 residual stream is cast to bf16 before every linear and back after it,
  and the weights are cast again on every call.

:class:`Sam2FastEncoder` runs the same modules with the same weights and skips all three: the
positional embedding is computed once, the blocks call the attention's projections and SDPA
directly, and with ``dtype=torch.bfloat16`` a bf16 copy of the encoder runs end to end (features
back in bf16, which the decoder reads as they are). On a CPU its linears take their bias, GELU and
residual add inside the product (:mod:`predictor.fused_linear`), and the two finest neck levels,
which the decoder reads only through ``conv_s0`` / ``conv_s1``, are one composed linear each.
fp32 outputs match ``get_image_embeddings`` to float rounding (``tests/unit/test_sam2_encoder.py``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import GELUActivation

from predictor.fused_linear import linear
from predictor.windows import partition, unpartition


class Sam2FastEncoder(nn.Module):
    """``pixels`` ``Bx3xSxS`` (normalised, S the model's input side) -> the three feature levels
    ``BxC0xS/4xS/4``, ``BxC1xS/8xS/8``, ``BxCxS/16xS/16`` of ``Sam2Model.get_image_embeddings``, in
    ``dtype`` (the first two are channels-last in memory)."""

    backbone: Any  # transformers' Sam2HieraDetModel (its blocks and patch embedding)
    neck_convs: Any
    to_s0: Any  # nn.Linear, _composed
    to_s1: Any
    pos_embed: torch.Tensor
    no_memory: torch.Tensor

    def __init__(self, model: Any, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        vision = model.vision_encoder
        neck = vision.neck
        self.top_down_levels = tuple(neck.fpn_top_down_levels)
        self.num_feature_levels = int(vision.num_feature_levels)
        last = len(neck.convs) - 1
        if self.num_feature_levels != 3 or {0, 1} & set(self.top_down_levels):
            raise ValueError("Sam2FastEncoder expects SAM 2's neck: 3 levels, the finest two lateral only")
        parts = nn.ModuleDict(
            {
                "backbone": vision.backbone,
                "neck_convs": neck.convs,
                # The two finest levels are the neck's lateral 1x1 convolutions alone, and the decoder
                # reads them only through conv_s0 / conv_s1 (1x1 too): two affine maps per pixel,
                # composed once here into one. Hiera tiny: the 256x256x256 level never exists.
                "to_s0": _composed(neck.convs[last], model.mask_decoder.conv_s0),
                "to_s1": _composed(neck.convs[last - 1], model.mask_decoder.conv_s1),
            }
        )
        if dtype != torch.float32:
            parts = copy.deepcopy(parts).to(dtype)
        self.dtype = dtype
        self.backbone = parts["backbone"]
        self.neck_convs = parts["neck_convs"]
        self.to_s0 = parts["to_s0"]
        self.to_s1 = parts["to_s1"]
        side = int(vision.backbone.config.image_size[0]) // int(vision.backbone.config.patch_stride[0])
        with torch.no_grad():
            pos = vision.backbone._get_pos_embed((side, side))  # 1 x side x side x C, fp32
            self.register_buffer("pos_embed", pos.to(dtype).contiguous(), persistent=False)
            no_memory = model.no_memory_embedding.reshape(1, -1, 1, 1).to(dtype)
            self.register_buffer("no_memory", no_memory, persistent=False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        backbone = self.backbone
        hidden = backbone.patch_embed(pixels.to(self.dtype))  # B x H x W x C
        hidden = hidden + (
            self.pos_embed
            if hidden.shape[1:3] == self.pos_embed.shape[1:3]
            else backbone._get_pos_embed(hidden.shape[1:3]).to(self.dtype)
        )
        stages = []
        for index, block in enumerate(backbone.blocks):
            hidden = _block(block, hidden)
            if index in backbone.stage_ends:
                stages.append(hidden)
        s0 = linear(stages[0], self.to_s0).permute(0, 3, 1, 2)
        s1 = linear(stages[1], self.to_s1).permute(0, 3, 1, 2)
        return s0, s1, self._embedding(stages) + self.no_memory

    def _embedding(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """``Sam2VisionNeck``'s third level, without its positional encoding: the lateral 1x1
        convolutions of the coarser stages, each plus the coarser result upsampled where the neck's
        top-down levels say."""
        last = len(self.neck_convs) - 1
        previous = stages[last]
        for i in range(last, 1, -1):
            lateral = self.neck_convs[last - i](stages[i].permute(0, 3, 1, 2))
            if i not in self.top_down_levels or i == last:
                previous = lateral
            else:  # nearest upsampling copies values: exact in any dtype
                previous = lateral + F.interpolate(previous, scale_factor=2.0, mode="nearest")
        return previous


def _composed(lateral: nn.Conv2d, projection: nn.Conv2d) -> nn.Linear:
    """``projection(lateral(x))`` of two 1x1 convolutions as one linear over channels-last pixels,
    composed in fp32: ``W = Wp Wl``, ``b = Wp bl + bp``."""
    if (
        lateral.bias is None
        or projection.bias is None
        or any(conv.kernel_size != (1, 1) or conv.stride != (1, 1) for conv in (lateral, projection))
    ):
        raise ValueError("Sam2FastEncoder expects SAM 2's 1x1 neck and high-resolution projections")
    inner, outer = lateral.weight[:, :, 0, 0], projection.weight[:, :, 0, 0]
    layer = nn.Linear(inner.shape[1], outer.shape[0], device=inner.device)
    with torch.no_grad():
        layer.weight.copy_(outer.double() @ inner.double())
        layer.bias.copy_(outer.double() @ lateral.bias.double() + projection.bias.double())
    return layer.requires_grad_(False)


def _block(block: Any, hidden: torch.Tensor) -> torch.Tensor:
    """``Sam2MultiScaleBlock.forward`` with :func:`_attention` (``hidden``: ``BxHxWxC``).

    The attention's output projection acts on each token alone, so it runs after the windows are
    put back, with the residual add inside it; the MLP's GELU and its residual add likewise
    (:func:`predictor.fused_linear.linear`)."""
    residual = hidden
    hidden = block.layer_norm1(hidden)
    if block.dim != block.dim_out:
        residual = _pool(linear(hidden, block.proj), block.query_stride)
    window = block.window_size
    if window > 0:
        height, width = hidden.shape[1:3]
        hidden, padded = partition(hidden, window)
    hidden = _attention(block.attn, hidden)
    if block.query_stride:  # the windows shrank with the queries
        window = block.window_size // block.query_stride[0]
        height, width = residual.shape[1:3]
        padded = (height + (-height) % window, width + (-width) % window)
    if block.window_size > 0:
        hidden = unpartition(hidden, window, padded, (height, width))
    hidden = linear(hidden, block.attn.proj, residual=residual)
    mlp = block.mlp
    if not _fusable(mlp):
        out: torch.Tensor = hidden + mlp(block.layer_norm2(hidden))
        return out
    inner = linear(block.layer_norm2(hidden), mlp.proj_in, gelu=True)
    return linear(inner, mlp.proj_out, residual=hidden)


def _fusable(mlp: Any) -> bool:
    """Whether ``Sam2FeedForward`` is one linear, exact GELU, one linear (Hiera's MLP)."""
    return len(mlp.layers) == 0 and not mlp.sigmoid_output and type(mlp.activation) is GELUActivation


def _attention(attn: Any, hidden: torch.Tensor) -> torch.Tensor:
    """``Sam2MultiScaleAttention.forward`` without its unused head-by-head scores, and without its
    output projection (:func:`_block` runs it): ``BxHxWxC`` -> ``BxH'xW'xC'`` (H', W' pooled)."""
    batch, height, width, _ = hidden.shape
    heads = attn.num_attention_heads
    qkv = linear(hidden, attn.qkv).reshape(batch, height * width, 3, heads, -1)
    query, key, value = torch.unbind(qkv, 2)
    if attn.query_stride:
        query = _pool(query.reshape(batch, height, width, -1), attn.query_stride)
        height, width = query.shape[1:3]
        query = query.reshape(batch, height * width, heads, -1)
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=attn.scale
    )
    return out.transpose(1, 2).reshape(batch, height, width, -1)


def _pool(x: torch.Tensor, stride: Any) -> torch.Tensor:
    """Hiera's query pooling: max over ``stride`` of ``BxHxWxC``."""
    if stride is None:
        return x
    pooled = F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride)
    return pooled.permute(0, 2, 3, 1)
