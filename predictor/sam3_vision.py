"""SAM 3's vision encoder as ``Sam3Model.get_vision_features`` runs it, without its waste.

transformers' ViT forward (32 layers at 1008 px, bf16 autocast), profiled on 2 Zen 4 cores, spends
well over a third of its time outside its matrix products and attention:

* rotary position encoding: every layer rebuilds its cos/sin tables, casts the strided queries
  and keys to fp32, rotates them by slicing, negating and stacking, and multiplies and adds in
  four more passes (a fifth of the encoder's time);
* autocast casts every weight to bf16 on every call, and the biased linears copy their bias into
  the output before the product (another tenth);
* query, key and value are three products over the same input instead of one.

:class:`Sam3FastVision` runs the same arithmetic on the same weights without that: the rotation
tables are built once (by the layers' own rotary modules) as complex numbers and applied in one
complex product in fp32, the q/k/v weights are stacked into one product, and with
``dtype=torch.bfloat16`` the layers run on bf16 copies of their weights, through oneDNN's packed
linear (bias and GELU fused, :class:`~predictor.fused_linear.PackedLinear`) on a CPU that has it.
The residual stream and layer norms stay fp32, as under autocast, so bf16 features are as close
to fp32 as autocast's; fp32 features match ``get_vision_features`` to float rounding
(``tests/unit/test_sam3_vision.py``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from predictor.fused_linear import PackedLinear
from predictor.windows import partition, unpartition


class _Layer:
    """One ``Sam3ViTLayer``: weights in ``dtype``, layer norms in fp32, its rotation table."""

    def __init__(self, layer: Any, dtype: torch.dtype, rows: int) -> None:
        attention = layer.attention
        self.dtype = dtype
        self.heads = int(attention.num_attention_heads)
        self.window = int(layer.window_size)
        self.norm1 = layer.layer_norm1
        self.norm2 = layer.layer_norm2
        self.qkv = PackedLinear(
            torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]),
            torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]),
            dtype,
            rows,
        )
        self.out = PackedLinear(attention.o_proj.weight, attention.o_proj.bias, dtype, rows)
        self.fc1 = PackedLinear(layer.mlp.fc1.weight, layer.mlp.fc1.bias, dtype, rows)
        self.fc2 = PackedLinear(layer.mlp.fc2.weight, layer.mlp.fc2.bias, dtype, rows)
        self.gelu = layer.mlp.config.hidden_act == "gelu"
        self.activation = layer.mlp.activation_fn
        # The layer's own cos/sin (pairs of equal values, one per rotated pair) as one complex
        # number per pair: tokens x head_dim/2.
        with torch.no_grad():
            cos, sin = layer.rotary_emb(layer.position_ids, layer.position_ids)
        self.rotation = torch.complex(cos[0, :, ::2].float(), sin[0, :, ::2].float()).contiguous()

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden``: ``BxHxWxC`` fp32 residual stream."""
        normed = self.norm1(hidden).to(self.dtype)
        height, width = hidden.shape[1:3]
        if self.window > 0:
            normed, padded = partition(normed, self.window)
        batch, rows, cols, channels = normed.shape
        tokens = rows * cols
        qkv = self.qkv(normed).view(batch, tokens, 3, self.heads, -1)
        # Rotary encoding of queries and keys at once, in fp32 as transformers does: the pair
        # (a, b) at angle t becomes (a cos t - b sin t, b cos t + a sin t), a complex product.
        rotated = qkv[:, :, :2].float()
        pairs = torch.view_as_complex(rotated.view(*rotated.shape[:-1], -1, 2))
        pairs.mul_(self.rotation.view(1, tokens, 1, 1, -1))
        query, key = rotated.to(self.dtype).unbind(2)
        attended = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        )
        out = self.out(attended.transpose(1, 2).reshape(batch, rows, cols, channels))
        if self.window > 0:
            out = unpartition(out, self.window, padded, (height, width))
        hidden = hidden + out
        normed = self.norm2(hidden).to(self.dtype)
        inner = self.fc1(normed, activation="gelu") if self.gelu else self.activation(self.fc1(normed))
        return hidden + self.fc2(inner)


class Sam3FastVision:
    """``pixels`` ``Bx3xSxS`` (normalised, S the model's input side) -> the
    :class:`Sam3VisionEncoderOutput` of ``Sam3Model.get_vision_features``: the ViT's last hidden
    state (fp32), the neck's feature levels (in ``dtype``) and their sine position encodings."""

    def __init__(self, model: Any, dtype: torch.dtype = torch.float32) -> None:
        vision = model.vision_encoder
        backbone = vision.backbone
        config = backbone.config
        self.dtype = dtype
        self.patch = int(config.patch_size)
        side = int(config.image_size) // self.patch
        rows = side * side  # tokens per image, windowed or not: the packing's size hint
        embeddings = backbone.embeddings
        self.patch_weight = embeddings.patch_embeddings.projection.weight.detach().to(dtype)
        with torch.no_grad():
            self.position: torch.Tensor = embeddings._tile_position_embeddings(
                embeddings.position_embeddings, side, side
            ).view(1, side, side, -1)
        self.norm = backbone.layer_norm
        self.layers = [_Layer(layer, dtype, rows) for layer in backbone.layers]
        self.neck = vision.neck.fpn_layers
        if dtype != torch.float32:
            self.neck = copy.deepcopy(self.neck).to(dtype)
        self.position_encoding = vision.neck.position_encoding

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> Sam3VisionEncoderOutput:
        batch = pixels.shape[0]
        height, width = pixels.shape[-2] // self.patch, pixels.shape[-1] // self.patch
        patches = F.conv2d(pixels.to(self.dtype), self.patch_weight, stride=self.patch)
        hidden = patches.permute(0, 2, 3, 1).float() + self._position(height, width)
        hidden = self.norm(hidden)
        for layer in self.layers:
            hidden = layer(hidden)
        spatial = hidden.permute(0, 3, 1, 2)
        levels = tuple(fpn(spatial) for fpn in self.neck)
        positions = tuple(self.position_encoding(level.shape, level.device, level.dtype) for level in levels)
        return Sam3VisionEncoderOutput(
            last_hidden_state=hidden.reshape(batch, height * width, -1),
            fpn_hidden_states=levels,
            fpn_position_encoding=positions,
        )

    def _position(self, height: int, width: int) -> torch.Tensor:
        if self.position.shape[1:3] == (height, width):
            return self.position
        raise ValueError(
            f"SAM 3's vision encoder takes {self.position.shape[1]}x{self.position.shape[2]} patches, "
            f"not {height}x{width}"
        )
