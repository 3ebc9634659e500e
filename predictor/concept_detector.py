"""SAM 3's detector for all concepts of one image in one pass, with mask work only where it is kept.

``Sam3Model.forward`` (transformers 5.23, pinned) runs the DETR encoder and decoder, then the mask
decoder for every one of the 200 queries of every concept, and scores last; most queries are then
dropped by the score threshold. :func:`detect` calls the very same submodules in the same order,
with the same arithmetic for every instance it keeps (the mask head's sums in another order),
but:

* scores and boxes come first; the mask decoder runs only for the concepts with a query above the
  threshold, and mask embeddings and logits only for those queries (with real weights most
  concepts of most images have none, and a few instances at most);
* the image's backbone features are broadcast to the concepts, never copied per concept (the
  library clones every level per concept before its pixel decoder);
* the DETR encoder's first self-attention, which reads only the image, runs once for all the
  concepts (:func:`_encode`), and in bf16 its MLPs run on packed weights with the ReLU fused
  (:func:`encoder_mlps`, the same bits as autocast's);
* the decoder's box bias is added straight into the attention mask's layout (:func:`_box_bias`),
  and its presence head runs for the last layer only, the one whose output is read;
* the pixel decoder's 3x3 convs over the upsampled coarse map plus the image's level split in two
  (the conv is linear): the image's part runs once for all concepts, the concept's part as one
  2x2 conv per output phase over the coarse map, 4/9 of the work (:func:`_upsampled_conv`); and
  the 1x1 instance projection is folded into each kept query's mask embedding;
* the semantic-segmentation head, which samdrop does not use, is skipped.

``tests/unit/test_concepts.py`` holds this path to plain ``model(**inputs)`` + the processor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Sam3Model
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.sam3.modeling_sam3 import (
    Sam3VisionEncoderOutput,
    box_cxcywh_to_xyxy,
    inverse_sigmoid,
)

from predictor.fused_linear import PackedLinear, fused_on


@dataclass
class Detections:
    """One concept's kept instances: scores ``K float32`` (detection x presence probability),
    boxes ``Kx4 float32`` XYXY normalized to [0, 1], mask_logits ``Kxhxw`` at the mask decoder's
    resolution (288x288 for the released model)."""

    scores: torch.Tensor
    boxes: torch.Tensor
    mask_logits: torch.Tensor


def detect(
    model: Sam3Model,
    vision: Sam3VisionEncoderOutput,
    text_features: torch.Tensor,
    text_mask: torch.Tensor,
    score_threshold: float,
    input_boxes: torch.Tensor | None = None,
    input_boxes_labels: torch.Tensor | None = None,
    mlps: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> list[Detections]:
    """Every concept's instances scoring above ``score_threshold`` in one image.

    vision: the image's features (batch of one); text_features: ``CxTxD``, one row per concept;
    text_mask: ``CxT`` (1 for a token, 0 for padding); input_boxes: ``CxBx4`` normalized (cx, cy,
    w, h) exemplars with ``CxB`` labels (1 positive, 0 negative); mlps: the DETR encoder's MLPs
    (:func:`encoder_mlps`; default: the layers' own). Returns one :class:`Detections` per concept,
    in order.
    """
    count = text_features.shape[0]
    fpn = [t.expand(count, -1, -1, -1) for t in vision.fpn_hidden_states[:-1]]
    positions = [t.expand(count, -1, -1, -1) for t in vision.fpn_position_encoding[:-1]]
    prompt, prompt_mask = _prompt(
        model, text_features, text_mask.bool(), fpn, positions, input_boxes, input_boxes_labels
    )

    layers: list[Any] = list(model.detr_encoder.layers)
    layers_mlps = list(mlps) if mlps is not None else [layer.mlp for layer in layers]
    encoded, positions_flat = _encode(model, layers_mlps, fpn[-1], positions[-1], prompt, prompt_mask)
    side = (int(fpn[-1].shape[-2]), int(fpn[-1].shape[-1]))
    queries, reference, presence = _decode(model, encoded, positions_flat, prompt, prompt_mask, side)
    offsets = model.detr_decoder.box_head(queries)
    boxes = box_cxcywh_to_xyxy((inverse_sigmoid(reference) + offsets).sigmoid())  # type: ignore[no-untyped-call]
    logits = model.dot_product_scoring(
        decoder_hidden_states=queries.unsqueeze(0),
        text_features=prompt,
        text_mask=prompt_mask,
    )[0].squeeze(-1)
    scores = logits.float().sigmoid() * presence.float().sigmoid()
    keep = scores > score_threshold

    found = [keep[row].any().item() for row in range(count)]
    rows = [row for row in range(count) if found[row]]
    masks = _mask_logits(model, vision, encoded, prompt, prompt_mask, queries, keep, rows)
    empty = queries.new_zeros((0, *fpn[0].shape[-2:]))
    return [
        Detections(scores[row][keep[row]], boxes[row][keep[row]].float(), masks.get(row, empty))
        for row in range(count)
    ]


def _prompt(
    model: Sam3Model,
    text_features: torch.Tensor,
    text_mask: torch.Tensor,
    fpn: list[torch.Tensor],
    positions: list[torch.Tensor],
    input_boxes: torch.Tensor | None,
    input_boxes_labels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt the DETR encoder reads: the text, then the encoded exemplar boxes if any
    (as ``Sam3Model.forward`` builds it)."""
    if input_boxes is None or input_boxes.numel() == 0:
        return text_features, text_mask
    labels = (
        input_boxes_labels if input_boxes_labels is not None else torch.ones_like(input_boxes[..., 0]).long()
    )
    geometry = model.geometry_encoder(
        box_embeddings=input_boxes,
        box_mask=labels != -10,
        box_labels=torch.where(labels == -10, 0, labels),
        img_feats=tuple(fpn),
        img_pos_embeds=tuple(positions),
    )
    prompt = torch.cat([text_features, geometry.last_hidden_state], dim=1)
    return prompt, torch.cat([text_mask, geometry.attention_mask], dim=1)


def encoder_mlps(model: Sam3Model, dtype: torch.dtype) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The DETR encoder's MLPs to hand :func:`detect`: in bf16, where oneDNN has its bf16 kernels,
    on bf16 weight copies reordered once, with the ReLU fused (:class:`_PackedMLP`, the same
    values as under autocast); else the layers' own."""
    layers: list[Any] = list(model.detr_encoder.layers)
    backbone = cast(Any, model.config.vision_config).backbone_config
    rows = (int(backbone.image_size) // int(backbone.patch_size)) ** 2  # image tokens: a tuning hint
    device = next(model.parameters()).device
    if dtype != torch.bfloat16 or not fused_on(dtype, device):
        return [layer.mlp for layer in layers]
    return [
        _PackedMLP(layer.mlp, rows) if layer.mlp.config.hidden_act == "relu" else layer.mlp
        for layer in layers
    ]


class _PackedMLP:
    """``Sam3MLP`` with ReLU (fc1, ReLU, fc2) on packed bf16 weights: 35% less time than autocast's
    ``F.linear`` for the 4 concepts of a 1008 px image on 2 Zen 4 cores, and the same bits."""

    def __init__(self, mlp: Any, rows: int) -> None:
        self.fc1 = PackedLinear(mlp.fc1.weight, mlp.fc1.bias, torch.bfloat16, rows)
        self.fc2 = PackedLinear(mlp.fc2.weight, mlp.fc2.bias, torch.bfloat16, rows)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(hidden.to(torch.bfloat16), activation="relu"))


def _encode(
    model: Sam3Model,
    mlps: list[Callable[[torch.Tensor], torch.Tensor]],
    feature: torch.Tensor,
    position: torch.Tensor,
    prompt: torch.Tensor,
    prompt_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Sam3DetrEncoder.forward`` over the coarsest level (``feature``, ``position``: ``CxDxHxW``,
    the image's broadcast over the concepts), each layer's MLP one of ``mlps``: the encoded
    ``CxHWxD`` and the flattened positions.

    The first layer's self-attention reads only the image, so it runs once, not once per concept;
    everything after it reads the prompt and runs per concept, as in the library."""
    encoder = model.detr_encoder
    count = prompt.shape[0]
    image = feature[:1].flatten(2).transpose(1, 2)
    positions = position[:1].flatten(2).transpose(1, 2)
    mask = create_bidirectional_mask(
        config=encoder.config,
        inputs_embeds=image.expand(count, -1, -1),
        attention_mask=prompt_mask,
        encoder_hidden_states=prompt,
    )
    hidden = image
    for index, (layer, mlp) in enumerate(zip(encoder.layers, mlps, strict=True)):
        layer = cast(Any, layer)
        normed = layer.layer_norm1(hidden)
        with_position = normed + positions
        attended, _ = layer.self_attn(query=with_position, key=with_position, value=normed)
        hidden = attended + hidden
        if index == 0:
            hidden, positions = hidden.expand(count, -1, -1), positions.expand(count, -1, -1)
        attended, _ = layer.cross_attn(
            query=layer.layer_norm2(hidden), key=prompt, value=prompt, attention_mask=mask
        )
        hidden = attended + hidden
        hidden = mlp(layer.layer_norm3(hidden)) + hidden
    return hidden, positions


def _decode(
    model: Sam3Model,
    encoded: torch.Tensor,
    positions: torch.Tensor,
    prompt: torch.Tensor,
    prompt_mask: torch.Tensor,
    side: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Sam3DetrDecoder.forward``, returning only what its last layer gives the heads: the
    normalised queries ``CxQxD``, the reference boxes they refine ``CxQx4`` and the presence logits
    ``Cx1``. The box bias of each layer is written in place (:func:`_box_bias`)."""
    decoder = model.detr_decoder
    count = encoded.shape[0]
    queries = decoder.query_embed.weight.unsqueeze(0).expand(count, -1, -1)
    reference = decoder.reference_points.weight.unsqueeze(0).expand(count, -1, -1).sigmoid()
    presence = decoder.presence_token.weight.unsqueeze(0).expand(count, -1, -1)
    hidden = torch.cat([presence, queries], dim=1)
    text_mask = create_bidirectional_mask(
        config=decoder.config, inputs_embeds=hidden, attention_mask=prompt_mask, encoder_hidden_states=prompt
    )
    last = len(decoder.layers) - 1
    for index, layer in enumerate(decoder.layers):
        hidden = layer(
            hidden,
            query_pos=decoder.ref_point_head(decoder.position_encoding.encode_boxes(reference)),
            text_features=prompt,
            vision_features=encoded,
            vision_pos_encoding=positions,
            text_cross_attn_mask=text_mask,
            vision_cross_attn_mask=_box_bias(decoder, reference, *side),
        )
        normed = decoder.output_layer_norm(hidden[:, 1:])
        if index == last:
            logits = decoder.presence_head(decoder.presence_layer_norm(hidden[:, :1])).squeeze(-1)
            limit = decoder.clamp_presence_logit_max_val
            return normed, reference, logits.clamp(min=-limit, max=limit)
        reference = (decoder.box_head(normed) + inverse_sigmoid(reference)).sigmoid()
    raise ValueError("SAM 3's DETR decoder has no layers")


def _box_bias(decoder: Any, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``Sam3DetrDecoder._get_rpb_matrix`` with the presence token's zero row, ``CxHeadsx(1+Q)xHW``:
    the same values, added straight into the attention mask's layout (the library adds, permutes
    into a copy, then pads into another)."""
    xyxy = box_cxcywh_to_xyxy(boxes)  # type: ignore[no-untyped-call]
    count, queries, _ = xyxy.shape
    rows, cols = decoder._get_coords(height, width, dtype=boxes.dtype, device=boxes.device)
    edges = xyxy.reshape(-1, 1, 4)
    delta_y = (rows.view(1, -1, 1) - edges[:, :, 1:4:2]).view(count, queries, -1, 2)
    delta_x = (cols.view(1, -1, 1) - edges[:, :, 0:3:2]).view(count, queries, -1, 2)
    bias_y = decoder.box_rpb_embed_y(_log_scale(delta_y)).permute(0, 3, 1, 2)  # C x heads x Q x H
    bias_x = decoder.box_rpb_embed_x(_log_scale(delta_x)).permute(0, 3, 1, 2)  # C x heads x Q x W
    bias: torch.Tensor = bias_y.new_empty(count, bias_y.shape[1], queries + 1, height * width)
    bias[:, :, 0] = 0  # the presence token attends to every position alike
    torch.add(
        bias_y.unsqueeze(-1), bias_x.unsqueeze(-2), out=bias[:, :, 1:].view(count, -1, queries, height, width)
    )
    return bias


def _log_scale(delta: torch.Tensor) -> torch.Tensor:
    """The box bias's log-scale encoding of coordinate differences, as transformers writes it."""
    scaled = delta * 8
    encoded: torch.Tensor = torch.sign(scaled) * torch.log2(torch.abs(scaled) + 1.0) / math.log2(8)
    return encoded


def _mask_logits(
    model: Sam3Model,
    vision: Sam3VisionEncoderOutput,
    encoder_states: torch.Tensor,
    prompt: torch.Tensor,
    prompt_mask: torch.Tensor,
    queries: torch.Tensor,
    keep: torch.Tensor,
    rows: list[int],
) -> dict[int, torch.Tensor]:
    """``{row: Kxhxw mask logits}`` for the kept queries of the concepts in ``rows`` only: the
    mask decoder's prompt cross-attention, pixel decoder and instance projection per concept, the
    query embedding per kept query (``Sam3MaskDecoder.forward`` and ``_embed_pixels``)."""
    if not rows:
        return {}
    decoder = model.mask_decoder
    index = torch.tensor(rows, device=queries.device)
    states, prompt, prompt_mask = encoder_states[index], prompt[index], prompt_mask[index]
    normed = decoder.prompt_cross_attn_norm(states)
    attention_mask = create_bidirectional_mask(
        config=decoder.config,
        inputs_embeds=normed,
        encoder_hidden_states=prompt,
        attention_mask=prompt_mask,
    )
    attended, _ = decoder.prompt_cross_attn(
        query=normed, key=prompt, value=prompt, attention_mask=attention_mask
    )
    states = states + attended

    # The pixel decoder with the encoder's output as its coarsest level; the finer levels are the
    # image's own, shared by the concepts (batch of one) instead of cloned per concept. The states
    # are token-major, so the pixels stay channels-last throughout.
    backbone = vision.fpn_hidden_states[:-2]
    height, width = vision.fpn_hidden_states[-2].shape[-2:]
    pixels = states[:, : height * width].unflatten(1, (height, width)).permute(0, 3, 1, 2)
    pixel_decoder = decoder.pixel_decoder
    for level, feature in enumerate(reversed(backbone)):
        conv = cast(nn.Conv2d, pixel_decoder.conv_layers[level])
        pixels = F.relu(pixel_decoder.norms[level](_upsampled_conv(pixels, feature, conv)), inplace=True)

    # The instance projection (a 1x1 conv) is folded into each kept query's embedding, the same
    # sum in another order: e . (W p + b) = (e W) . p + e . b, so it runs on K queries instead of
    # on every pixel.
    projection = decoder.instance_projection
    flat = pixels.permute(0, 2, 3, 1).reshape(len(rows), -1, pixels.shape[1])  # no copy: channels-last
    logits = {}
    for slot, row in enumerate(rows):
        embedded = decoder.mask_embedder(queries[row][keep[row]])
        weight = embedded @ projection.weight.flatten(1)
        bias = (embedded @ projection.bias).unsqueeze(1)
        logits[row] = torch.addmm(bias, weight, flat[slot].T).view(-1, *pixels.shape[-2:])
    return logits


def _upsampled_conv(pixels: torch.Tensor, skip: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(interpolate(pixels, 2x, nearest) + skip)`` for every concept, ``pixels`` ``CxDxhxw``,
    ``skip`` the image's ``1xDx2hx2w``; channels-last out.

    The conv is linear, so it splits: ``conv(skip)`` is the image's and runs once for all the
    concepts. And a 3x3 conv over a nearest-upsampled map is, at each of the four output phases
    (even/odd row, even/odd column), a 2x2 conv over the small map whose taps are sums of the 3x3
    taps that read the same small pixel: all four phases are one conv with 4D outputs and 4/9 of
    the multiply-adds of the 3x3 conv at the large size. Its outputs are interleaved while
    ``conv(skip)`` is added. Where the sizes are not an exact 2x (or the conv is not 3x3,
    stride 1, padding 1) it is the library's sequence."""
    count, _, height, width = pixels.shape
    if not _phases_apply(conv, (height, width), (skip.shape[-2], skip.shape[-1])):
        return conv(F.interpolate(pixels, size=skip.shape[-2:], mode="nearest") + skip)  # type: ignore[no-any-return]
    kernels = torch.cat([_fold(_fold(conv.weight, 2, row), 3, col) for row in (0, 1) for col in (0, 1)])
    phases = F.conv2d(F.pad(pixels, (1, 1, 1, 1)), kernels)  # C x 4D x h+1 x w+1
    # C x h+1 x w+1 x 2 x 2 x D (no copy: channels-last)
    phases = phases.permute(0, 2, 3, 1).reshape(count, height + 1, width + 1, 2, 2, -1)
    shared = conv(skip.contiguous(memory_format=torch.channels_last))
    shared = shared.permute(0, 2, 3, 1).reshape(1, height, 2, width, 2, -1)
    out = phases.new_empty(count, height, 2, width, 2, phases.shape[-1])
    for row in (0, 1):
        for col in (0, 1):
            torch.add(
                phases[:, row : row + height, col : col + width, row, col],
                shared[:, :, row, :, col],
                out=out[:, :, row, :, col],
            )
    result: torch.Tensor = out.view(count, 2 * height, 2 * width, -1).permute(0, 3, 1, 2)
    return result


def _phases_apply(conv: nn.Conv2d, small: tuple[int, int], large: tuple[int, int]) -> bool:
    """Whether :func:`_upsampled_conv`'s phase split is exact: a plain 3x3 conv with zero padding
    1 over a map upsampled exactly 2x."""
    plain = conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
    same = conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.padding_mode == "zeros"
    return plain and same and large == (2 * small[0], 2 * small[1])


def _fold(weight: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
    """A 3-tap axis of a conv kernel as the 2 taps that read a 2x nearest-upsampled input at
    output ``phase``: phase 0 reads small pixels (i-1, i) with taps (w0, w1 + w2), phase 1 reads
    (i, i+1) with (w0 + w1, w2)."""
    first, middle, last = weight.unbind(dim)
    pair = (first, middle + last) if phase == 0 else (first + middle, last)
    return torch.stack(pair, dim)
