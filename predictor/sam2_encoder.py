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
back in bf16, which the decoder reads as they are). fp32 outputs match ``get_image_embeddings`` to
float rounding (``tests/unit/test_sam2_encoder.py``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from predictor.windows import partition, unpartition


class Sam2FastEncoder(nn.Module):
    """``pixels`` ``Bx3xSxS`` (normalised, S the model's input side) -> the three feature levels
    ``BxC0xS/4xS/4``, ``BxC1xS/8xS/8``, ``BxCxS/16xS/16`` of ``Sam2Model.get_image_embeddings``, in
    ``dtype``."""

    backbone: Any  # transformers' Sam2HieraDetModel (its blocks and patch embedding)
    neck_convs: Any
    conv_s0: Any
    conv_s1: Any
    pos_embed: torch.Tensor
    no_memory: torch.Tensor

    def __init__(self, model: Any, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        vision = model.vision_encoder
        parts = nn.ModuleDict(
            {
                "backbone": vision.backbone,
                "neck_convs": vision.neck.convs,
                "conv_s0": model.mask_decoder.conv_s0,
                "conv_s1": model.mask_decoder.conv_s1,
            }
        )
        if dtype != torch.float32:
            parts = copy.deepcopy(parts).to(dtype)
        self.dtype = dtype
        self.backbone = parts["backbone"]
        self.neck_convs = parts["neck_convs"]
        self.conv_s0 = parts["conv_s0"]
        self.conv_s1 = parts["conv_s1"]
        self.top_down_levels = tuple(vision.neck.fpn_top_down_levels)
        self.num_feature_levels = int(vision.num_feature_levels)
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
        levels = self._neck(stages)
        s0, s1, embedding = levels
        return self.conv_s0(s0), self.conv_s1(s1), embedding + self.no_memory

    def _neck(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        """``Sam2VisionNeck`` without its positional encodings: levels high to low resolution."""
        last = len(self.neck_convs) - 1
        outputs: list[torch.Tensor] = []
        previous = stages[last]
        for i in range(last, -1, -1):
            lateral = self.neck_convs[last - i](stages[i].permute(0, 3, 1, 2))
            if i not in self.top_down_levels or i == last:
                previous = lateral
            else:  # nearest upsampling copies values: exact in any dtype
                previous = lateral + F.interpolate(previous, scale_factor=2.0, mode="nearest")
            outputs.append(previous)
        return outputs[-self.num_feature_levels :][::-1]


def _block(block: Any, hidden: torch.Tensor) -> torch.Tensor:
    """``Sam2MultiScaleBlock.forward`` with :func:`_attention` (``hidden``: ``BxHxWxC``)."""
    residual = hidden
    hidden = block.layer_norm1(hidden)
    if block.dim != block.dim_out:
        residual = _pool(block.proj(hidden), block.query_stride)
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
    hidden = residual + hidden
    out: torch.Tensor = hidden + block.mlp(block.layer_norm2(hidden))
    return out


def _attention(attn: Any, hidden: torch.Tensor) -> torch.Tensor:
    """``Sam2MultiScaleAttention.forward`` without its unused head-by-head scores."""
    batch, height, width, _ = hidden.shape
    heads = attn.num_attention_heads
    qkv = attn.qkv(hidden).reshape(batch, height * width, 3, heads, -1)
    query, key, value = torch.unbind(qkv, 2)
    if attn.query_stride:
        query = _pool(query.reshape(batch, height, width, -1), attn.query_stride)
        height, width = query.shape[1:3]
        query = query.reshape(batch, height * width, heads, -1)
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=attn.scale
    )
    projected: torch.Tensor = attn.proj(out.transpose(1, 2).reshape(batch, height, width, -1))
    return projected


def _pool(x: torch.Tensor, stride: Any) -> torch.Tensor:
    """Hiera's query pooling: max over ``stride`` of ``BxHxWxC``."""
    if stride is None:
        return x
    pooled = F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride)
    return pooled.permute(0, 2, 3, 1)
