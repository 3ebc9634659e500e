"""SAM 3's detector for all concepts of one image in one pass, with mask work only where it is kept.

``Sam3Model.forward`` (transformers 5.23, pinned) runs the DETR encoder and decoder, then the mask
decoder for every one of the 200 queries of every concept, and scores last; most queries are then
dropped by the score threshold. :func:`detect` calls the very same submodules in the same order,
with the same arithmetic for every instance it keeps, but:

* scores and boxes come first; the mask decoder runs only for the concepts with a query above the
  threshold, and mask embeddings and logits only for those queries (with real weights most
  concepts of most images have none, and a few instances at most);
* the image's backbone features are broadcast to the concepts, never copied per concept (the
  library clones every level per concept before its pixel decoder);
* the semantic-segmentation head, which samdrop does not use, is skipped.

``tests/unit/test_concepts.py`` holds this path to plain ``model(**inputs)`` + the processor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Sam3Model
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.sam3.modeling_sam3 import (
    Sam3VisionEncoderOutput,
    box_cxcywh_to_xyxy,
    inverse_sigmoid,
)


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
) -> list[Detections]:
    """Every concept's instances scoring above ``score_threshold`` in one image.

    vision: the image's features (batch of one); text_features: ``CxTxD``, one row per concept;
    text_mask: ``CxT`` (1 for a token, 0 for padding); input_boxes: ``CxBx4`` normalized (cx, cy,
    w, h) exemplars with ``CxB`` labels (1 positive, 0 negative). Returns one
    :class:`Detections` per concept, in order.
    """
    count = text_features.shape[0]
    fpn = [t.expand(count, -1, -1, -1) for t in vision.fpn_hidden_states[:-1]]
    positions = [t.expand(count, -1, -1, -1) for t in vision.fpn_position_encoding[:-1]]
    prompt, prompt_mask = _prompt(
        model, text_features, text_mask.bool(), fpn, positions, input_boxes, input_boxes_labels
    )

    encoded = model.detr_encoder(
        vision_features=[fpn[-1]],
        text_features=prompt,
        vision_pos_embeds=[positions[-1]],
        text_mask=prompt_mask,
    )
    decoded = model.detr_decoder(
        vision_features=encoded.last_hidden_state,
        text_features=encoded.text_features,
        vision_pos_encoding=encoded.pos_embeds_flattened,
        text_mask=prompt_mask,
        spatial_shapes=encoded.spatial_shapes,
    )
    # The last decoder layer's queries, boxes and presence: what the model's outputs hold. Scoring
    # and the box head act on each layer on its own, so only the last is computed.
    queries = decoded.intermediate_hidden_states[-1]
    offsets = model.detr_decoder.box_head(queries)
    boxes = box_cxcywh_to_xyxy((inverse_sigmoid(decoded.reference_boxes[-1]) + offsets).sigmoid())  # type: ignore[no-untyped-call]
    logits = model.dot_product_scoring(
        decoder_hidden_states=queries.unsqueeze(0),
        text_features=encoded.text_features,
        text_mask=prompt_mask,
    )[0].squeeze(-1)
    presence = decoded.presence_logits[-1]
    scores = logits.float().sigmoid() * presence.float().sigmoid()
    keep = scores > score_threshold

    found = [keep[row].any().item() for row in range(count)]
    rows = [row for row in range(count) if found[row]]
    masks = _mask_logits(model, vision, encoded.last_hidden_state, prompt, prompt_mask, queries, keep, rows)
    side = fpn[0].shape[-2:]
    empty = queries.new_zeros((0, *side))
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
    # image's own, broadcast over the concepts (batch of one) instead of cloned per concept.
    backbone = vision.fpn_hidden_states[:-2]
    height, width = vision.fpn_hidden_states[-2].shape[-2:]
    pixels = states[:, : height * width].transpose(1, 2).reshape(len(rows), -1, height, width)
    pixel_decoder = decoder.pixel_decoder
    for level, feature in enumerate(reversed(backbone)):
        pixels = F.interpolate(pixels, size=feature.shape[-2:], mode="nearest") + feature
        pixels = F.relu(pixel_decoder.norms[level](pixel_decoder.conv_layers[level](pixels)))
    instances = decoder.instance_projection(pixels)

    return {
        row: torch.einsum("qc,chw->qhw", decoder.mask_embedder(queries[row][keep[row]]), instances[slot])
        for slot, row in enumerate(rows)
    }
