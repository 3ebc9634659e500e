"""SAM 2.1's mask decoder rearranged as :class:`predictor.decoder.FastDecoder` rearranges SAM 1's.

transformers' ``Sam2MaskDecoder`` copies the ``256x64x64`` image embedding, its positional encoding
and both high-resolution feature maps (``32x256x256`` and ``64x128x128``) once per prompt
(``repeat_interleave``) and projects all 4096 image tokens again for each. Profiled on hiera tiny,
640x480, 16x16 grid, fp32, 2 cores: 80 of 92 s in the decoder, a quarter of it in those copies and
another quarter in adding the copies up. :class:`Sam2FastDecoder` runs the same network with the same
weights and does that work once per image (:meth:`Sam2FastDecoder.context`):

* the first block's image side, and its attention re-associated, exactly as SAM 1's
  (:mod:`predictor.decoder`'s helpers, which both decoders call);
* the high-resolution features are laid out once, channels-last in the sub-pixel order of the
  upscaling's transposed convolutions (matrix products per pixel), and added to every prompt's
  upscaled embedding by broadcasting, never copied;
* only the mask tokens that are returned are projected to masks, and the object-score head, which
  image prompts never read, does not run; the final token-to-image attention runs for the IoU token
  first, and for the returned mask tokens only of the prompts that are upscaled (with ``min_iou``,
  those that can pass it), never for the object-score and prompt tokens;
* the second block forms ``keys + pos`` once for its two attentions, and its image-to-token
  residual sum is written over the keys (no copy).

Mask prompts (``use_m2m``) give every prompt its own dense embedding: the first block then takes the
per-prompt path (the second block's). fp32 outputs match ``Sam2MaskDecoder`` to float rounding
(tests compare them); ``dtype=torch.bfloat16`` runs a bf16 copy of the decoder end to end, logits
and IoU back in fp32.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from predictor.decoder import DecoderContext, attend_shared, image_to_tokens, shared_context, tokens_to_image

# Prompts decoded together: each holds several 4096x256 image-token tensors, and a chunk's should
# stay in the CPU's last-level cache (8 prompts' bf16 one is 16 MiB).
PROMPT_CHUNK = 8


@dataclass(frozen=True)
class Sam2Attention:
    """A transformers ``Sam2Attention``'s projections under the names the shared helpers read."""

    q_proj: torch.nn.Linear
    k_proj: torch.nn.Linear
    v_proj: torch.nn.Linear
    out_proj: torch.nn.Linear
    num_heads: int
    internal_dim: int

    @classmethod
    def of(cls, attn: Any) -> Sam2Attention:
        return cls(
            attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, attn.num_attention_heads, attn.internal_dim
        )


@dataclass(frozen=True)
class Sam2DecoderContext(DecoderContext):
    """:class:`~predictor.decoder.DecoderContext` (from the image embedding plus the no-mask dense
    prompt) and what SAM 2.1 adds.

    image: ``1xNxC`` the image embedding alone (mask prompts add their own dense embedding to it);
    feat_s1: ``1xNx(4*C1)`` the 128x128 features plus ``upscale_conv1``'s bias, pixel (i, j) of
    64x64 then sub-pixel (a, c) at ``(2i + a, 2j + c)``; feat_s0: ``1xNx(16*C0)`` the 256x256
    features plus ``upscale_conv2``'s bias, in the order ``(i, j, a, c, a2, c2)`` at
    ``(4i + 2a + a2, 4j + 2c + c2)``.
    """

    image: torch.Tensor
    feat_s1: torch.Tensor
    feat_s0: torch.Tensor


class Sam2FastDecoder:
    """Low-res mask logits and IoU predictions for batches of prompts on one image, as
    ``Sam2MaskDecoder`` gives them (with ``Sam2Model``'s dynamic single-mask choice)."""

    def __init__(self, model: Any, dtype: torch.dtype = torch.float32, chunk: int = PROMPT_CHUNK) -> None:
        self.model = model
        self.dtype = dtype
        self.chunk = chunk
        source = model.mask_decoder
        self.decoder = source if dtype == torch.float32 else copy.deepcopy(source).to(dtype)
        # The IoU head stays fp32 (three 256-wide linears per prompt, nothing next to the rest):
        # rounded to bf16, near scores tie or swap, and pred_iou_thresh, NMS order and the top-k cut
        # all read them (against Meta's generator, bf16 scores picked other masks; docs/benchmarks.md).
        self._iou_head = copy.deepcopy(source.iou_prediction_head).float()
        transformer = self.decoder.transformer
        if len(transformer.layers) != 2:
            raise ValueError("Sam2FastDecoder expects SAM 2's two-block two-way transformer")
        self._blocks = [
            (
                Sam2Attention.of(layer.cross_attn_token_to_image),
                Sam2Attention.of(layer.cross_attn_image_to_token),
            )
            for layer in transformer.layers
        ]
        self._final = Sam2Attention.of(transformer.final_attn_token_to_image)
        conv1, conv2 = self.decoder.upscale_conv1, self.decoder.upscale_conv2
        # ConvTranspose2d weight (in, out, 2, 2) -> (in, 2*2*out): each input pixel's four sub-pixels.
        self._up1_w = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, -1)
        self._up1_b = conv1.bias.repeat(4)
        self._up1_out = conv1.out_channels
        self._up2_w = conv2.weight.permute(0, 2, 3, 1).reshape(conv2.in_channels, -1)
        self._up2_b = conv2.bias.repeat(16)  # for all 16 sub-sub-pixels of a 64x64 pixel
        self._up2_out = conv2.out_channels
        self.compiled = False
        self._tokens = self._token_side
        self._upscale = self._upscale_and_project

    def compiled_copy(self) -> Sam2FastDecoder:
        """This decoder (the same weights) with a chunk's token side and its upscaling each
        ``torch.compile``d into one graph: chunks are padded to ``chunk`` prompts and upscaled one
        prompt at a time, so the shapes never change (mask prompts and the number of masks per
        prompt, 3 or 4, make a second graph of each when used)."""
        twin = copy.copy(self)
        twin.compiled = True
        twin._tokens = torch.compile(twin._token_side, dynamic=False)
        twin._upscale = torch.compile(twin._upscale_and_project, dynamic=False)
        return twin

    @torch.no_grad()
    def context(self, features: tuple[torch.Tensor, ...]) -> Sam2DecoderContext:
        """The image side for one image's three feature levels (``1xC0xS/4xS/4``, ``1xC1xS/8xS/8``,
        ``1xCxS/16xS/16``, as ``Sam2Model.get_image_embeddings`` returns them)."""
        s0, s1, embedding = (level.to(self.dtype) for level in features)
        no_mask = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, 1, -1).to(self.dtype)
        image = embedding.flatten(2).transpose(1, 2)
        src = image + no_mask
        pos = self.model.get_image_wide_positional_embeddings().flatten(2).transpose(1, 2).to(self.dtype)
        t2i, i2t = self._blocks[0]
        shared = shared_context(t2i, i2t, src, pos)
        side = embedding.shape[-1]
        channels1, channels0 = s1.shape[1], s0.shape[1]
        # (c, i, a, j, c') -> (i, j, a, c', c)
        feat_s1 = s1[0].reshape(channels1, side, 2, side, 2).permute(1, 3, 2, 4, 0)
        # (c, i, a, a2, j, c', c2) -> (i, j, a, c', a2, c2, c)
        feat_s0 = s0[0].reshape(channels0, side, 2, 2, side, 2, 2).permute(1, 4, 2, 5, 3, 6, 0)
        # The transposed convolutions' biases are per-pixel constants too: added here, once.
        feat_s1 = feat_s1.reshape(1, side * side, 4 * channels1) + self._up1_b
        feat_s0 = feat_s0.reshape(1, side * side, 16 * channels0) + self._up2_b
        return Sam2DecoderContext(**vars(shared), image=image, feat_s1=feat_s1, feat_s0=feat_s0)

    @torch.no_grad()
    def __call__(
        self,
        context: Sam2DecoderContext,
        sparse: torch.Tensor,
        multimask: bool,
        dense: torch.Tensor | None = None,
        min_iou: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sparse``: ``BxSxC`` prompt embeddings (``Sam2PromptEncoder``'s sparse output without its
        point-batch axis); ``dense``: ``BxCxhxw`` mask-prompt embeddings, or ``None`` (no mask).

        Returns low-res logits ``BxMxS/4xS/4`` and IoU predictions ``BxM`` in fp32: M = 3 with
        ``multimask``, else 1 (token 0's mask, or the best of the three where it is unstable).

        ``min_iou``: the caller keeps only masks with a predicted IoU over it (automatic masks'
        ``pred_iou_thresh``). The IoU head reads the tokens alone, so a prompt none of whose masks
        can pass skips the upscaling, half the decoder's work; its logits come back as zeros and
        its IoUs are at most ``min_iou`` (the caller's filter drops them unread).
        """
        # Chunks of prompts: their per-prompt BxNxC tensors stay in cache.
        starts = range(0, sparse.shape[0], self.chunk)
        parts = [
            self._chunk(
                context,
                sparse[start : start + self.chunk],
                multimask,
                None if dense is None else dense[start : start + self.chunk],
                min_iou,
            )
            for start in starts
        ]
        iou = torch.cat([part_iou for _, part_iou, _ in parts])
        if min_iou is None:
            masks = [part_masks for part_masks, _, _ in parts]
            return masks[0] if len(masks) == 1 else torch.cat(masks), iou
        # Prompts not upscaled get zero logits: one fill for the batch, then the chunks' kept rows.
        first = parts[0][0]
        logits = first.new_zeros(sparse.shape[0], *first.shape[1:])
        for start, (masks_kept, _, rows) in zip(starts, parts, strict=True):
            if len(rows):
                logits[start + rows] = masks_kept
        return logits, iou

    def _chunk(
        self,
        context: Sam2DecoderContext,
        sparse: torch.Tensor,
        multimask: bool,
        dense: torch.Tensor | None,
        min_iou: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`__call__` for at most ``chunk`` prompts: the logits of the prompts upscaled
        (``KxMxS/4xS/4``), the IoUs of all (``BxM``), and which K were upscaled (all without
        ``min_iou``)."""
        decoder = self.decoder
        batch = sparse.shape[0]
        all_iou, mask_queries, mask_tokens, keys = self._tokens(
            context, self._padded(sparse), None if dense is None else self._padded(dense)
        )
        dynamic = not multimask and decoder.dynamic_multimask_via_stability
        picked = list(range(1, decoder.num_mask_tokens)) if multimask else [0]
        if dynamic:
            picked = list(range(decoder.num_mask_tokens))
        iou = all_iou[:batch, picked].float()
        keys, mask_queries, mask_tokens = keys[:batch], mask_queries[:batch], mask_tokens[:batch]
        if min_iou is None:
            rows = torch.arange(batch, device=iou.device)
        else:
            rows = torch.nonzero(iou.max(dim=1).values > min_iou)[:, 0]
            keys, mask_queries, mask_tokens = keys[rows], mask_queries[rows], mask_tokens[rows]
        masks = self._masks(context, keys, mask_queries[:, picked], mask_tokens[:, picked], picked)
        if not dynamic:
            return masks, iou, rows
        # transformers' own rule, on the four masks it would have made
        chosen, best = decoder._dynamic_multimask_via_stability(masks[:, None], iou[rows][:, None])
        iou = iou[:, :1].clone()  # token 0's for prompts not upscaled: at most min_iou, as the best is
        iou[rows] = best[:, 0]
        return chosen[:, 0], iou, rows

    def _padded(self, prompts: torch.Tensor) -> torch.Tensor:
        """``prompts`` (a chunk's rows) repeated up to ``chunk`` rows when compiled: a compiled graph
        keeps the one shape it was made for (another would recompile); eager, as they are."""
        missing = self.chunk - prompts.shape[0]
        if not self.compiled or missing == 0:
            return prompts
        return torch.cat([prompts, prompts[-1:].expand(missing, *prompts.shape[1:])])

    def _token_side(
        self, context: Sam2DecoderContext, sparse: torch.Tensor, dense: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The two-way transformer for one chunk and the IoU head: IoU predictions ``BxT`` fp32 for
        all T mask tokens; the mask tokens' final-attention inputs, queries plus token embeddings and
        queries alone (``BxTxC`` each, for :meth:`_hypernetworks`); and the image tokens ``BxNxC``."""
        decoder = self.decoder
        batch = sparse.shape[0]
        output_tokens = torch.cat(
            [decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0
        )
        tokens = torch.cat([output_tokens[None].expand(batch, -1, -1), sparse.to(self.dtype)], dim=1)
        first, second = decoder.transformer.layers
        (t2i1, i2t1), (t2i2, i2t2) = self._blocks

        # Block 1 (no positional term in its self-attention): the image side from the context, unless
        # each prompt brings its own dense embedding.
        queries = first.layer_norm1(_self_attention(first.self_attn, tokens, tokens, tokens))
        if dense is None:
            src = context.src
            attended = attend_shared(t2i1, queries + tokens, context)
        else:
            src = context.image + dense.to(self.dtype).flatten(2).transpose(1, 2)
            attended = tokens_to_image(t2i1, queries + tokens, src, src, context.pos)
        queries = first.layer_norm2(queries + attended)
        queries = first.layer_norm3(queries + first.mlp(queries))
        if dense is None:
            keys = first.layer_norm4(image_to_tokens(i2t1, context.queries0, None, queries, tokens, src))
        else:
            keys = first.layer_norm4(image_to_tokens(i2t1, None, src, queries, tokens, src, context.pos))

        # Block 2.
        q = queries + tokens
        queries = second.layer_norm1(queries + _self_attention(second.self_attn, q, q, queries))
        # keys + pos, formed once: both attentions of the block read it (as keys, then as queries).
        # One BxNxC add costs less than the products of every prompt's queries with pos besides.
        keys_pos = keys + context.pos
        queries = second.layer_norm2(queries + tokens_to_image(t2i2, queries + tokens, keys_pos, keys))
        queries = second.layer_norm3(queries + second.mlp(queries))
        # The keys are last read here: the residual sum overwrites them.
        keys = image_to_tokens(i2t2, None, keys_pos, queries, tokens, keys, overwrite=True)
        keys = second.layer_norm4(keys)

        # Final token-to-image attention. Each token attends alone, so it runs here for the IoU token
        # only (row 1): its prediction decides which prompts are upscaled at all. The mask tokens'
        # (rows 2 to 2 + mask tokens) run in _hypernetworks, for the prompts and masks kept; the
        # object-score and prompt tokens' outputs are never read.
        q = queries + tokens
        attended = tokens_to_image(self._final, q[:, 1:2], keys, keys, context.pos)
        iou_token = decoder.transformer.layer_norm_final_attn(queries[:, 1:2] + attended)
        iou = self._iou_head(iou_token[:, 0].float())
        masks = slice(2, 2 + decoder.num_mask_tokens)
        return iou, q[:, masks], queries[:, masks], keys

    def _masks(
        self,
        context: Sam2DecoderContext,
        keys: torch.Tensor,
        q: torch.Tensor,
        queries: torch.Tensor,
        picked: list[int],
    ) -> torch.Tensor:
        """Low-res logits ``BxMxS/4xS/4`` fp32 of the mask tokens ``picked`` (see
        :meth:`_hypernetworks`); none for no prompts."""
        if keys.shape[0] == 0:
            side = 4 * math.isqrt(keys.shape[1])
            return torch.zeros(0, len(picked), side, side, device=keys.device)
        return self._upscale_rows(keys, self._hypernetworks(context, keys, q, queries, picked), context)

    def _hypernetworks(
        self,
        context: Sam2DecoderContext,
        keys: torch.Tensor,
        q: torch.Tensor,
        queries: torch.Tensor,
        picked: list[int],
    ) -> torch.Tensor:
        """The final token-to-image attention and the hypernetwork MLPs for the mask tokens
        ``picked``: ``q`` (queries plus token embeddings) and ``queries`` ``BxMxC`` -> ``BxMxC/8``."""
        decoder = self.decoder
        attended = tokens_to_image(self._final, q, keys, keys, context.pos)
        out = decoder.transformer.layer_norm_final_attn(queries + attended)
        mlps = decoder.output_hypernetworks_mlps
        return torch.stack([mlps[token](out[:, i]) for i, token in enumerate(picked)], dim=1)

    def _upscale_rows(
        self, keys: torch.Tensor, hyper: torch.Tensor, context: Sam2DecoderContext
    ) -> torch.Tensor:
        """:meth:`_upscale_and_project` of the prompts kept; compiled, one prompt per call (how many
        pass ``min_iou`` varies, a graph's shape does not)."""
        if not self.compiled:
            return self._upscale(keys, hyper, context)
        rows = range(keys.shape[0])
        return torch.cat([self._upscale(keys[r : r + 1], hyper[r : r + 1], context) for r in rows])

    def _upscale_and_project(
        self, keys: torch.Tensor, hyper: torch.Tensor, context: Sam2DecoderContext
    ) -> torch.Tensor:
        """``upscale_conv1`` (+ 128x128 features), norm, GELU, ``upscale_conv2`` (+ 256x256
        features), GELU, then ``hyper @ upscaled``, channels-last: ``BxNxC`` -> ``BxMx4sx4s`` fp32."""
        batch, tokens, _ = keys.shape
        side = math.isqrt(tokens)
        norm = self.decoder.upscale_layer_norm
        x = torch.add(keys @ self._up1_w, context.feat_s1).reshape(batch, tokens, 4, self._up1_out)
        x = F.gelu(F.layer_norm(x, (self._up1_out,), norm.weight, norm.bias, norm.eps))
        x = (x @ self._up2_w).reshape(batch, tokens, 16 * self._up2_out)
        x = F.gelu(torch.add(x, context.feat_s0)).reshape(batch, tokens * 16, self._up2_out)
        masks = x @ hyper.transpose(1, 2)  # B x (N*16) x M
        count = masks.shape[-1]
        # (i, j, a, c, a2, c2) -> row 4i + 2a + a2, column 4j + 2c + c2
        masks = masks.reshape(batch, side, side, 2, 2, 2, 2, count).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(batch, count, side * 4, side * 4).float()


def _self_attention(attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A ``Sam2Attention`` over the few prompt tokens (``BxTxC``; it wants a point-batch axis)."""
    out: torch.Tensor = attn(q[:, None], k[:, None], v[:, None])[0][:, 0]
    return out
