"""SAM's mask decoder, rearranged so that no work is repeated per prompt that the image already did.

segment-anything's ``MaskDecoder.predict_masks`` copies the ``256x64x64`` image embedding once per
prompt (``repeat_interleave``) and runs every projection of it again for each prompt. For automatic
masks (hundreds of point prompts on one image) that is most of the time. :class:`FastDecoder` runs
the same network with the same weights, in an order that does less:

* the image side of the first block (the embedding plus the no-mask dense prompt, its keys and
  values for token-to-image attention, its queries for image-to-token attention) is computed once
  per image (:meth:`FastDecoder.context`);
* attention between a few prompt tokens and 4096 image tokens is re-associated, so the ``4096x256``
  projections of the per-prompt image tokens become products with the handful of tokens instead
  (``softmax(q (W_k x)^T) (W_v x) == softmax((q W_k) x^T) x W_v^T`` — rows of a softmax sum to one,
  and a key bias adds a constant per row, which softmax ignores);
* the two transposed convolutions of the upscaling (kernel 2, stride 2: one linear map per pixel)
  are matrix products in channels-last order, with a fused ``layer_norm``;
* only the mask tokens that are returned are projected to masks, and the final token-to-image
  attention runs only for the tokens the heads read (not the prompt tokens).

The maths is SAM's; in fp32 outputs match ``MaskDecoder`` to float rounding (tests compare them).
With ``dtype=torch.bfloat16`` the decoder runs on a bf16 copy of its weights end to end (no
autocast casts between ops); logits come back as fp32. Prompts with mask inputs are not supported
(samdrop never sends them).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam


class AttentionWeights(Protocol):
    """What the re-associated attention below reads of an attention layer: segment-anything's
    ``Attention`` as it is, SAM 2.1's through :class:`predictor.sam2_decoder.Sam2Attention`."""

    @property
    def q_proj(self) -> torch.nn.Linear: ...
    @property
    def k_proj(self) -> torch.nn.Linear: ...
    @property
    def v_proj(self) -> torch.nn.Linear: ...
    @property
    def out_proj(self) -> torch.nn.Linear: ...
    @property
    def num_heads(self) -> int: ...
    @property
    def internal_dim(self) -> int: ...


@dataclass(frozen=True)
class DecoderContext:
    """The per-image half of the decoder's work, shared by every prompt on that image.

    src: ``1xNxC`` image embedding plus the no-mask dense prompt (N = 64*64 image tokens, C = 256);
    pos: ``1xNxC`` positional encoding of the image tokens;
    keys0, values0: ``1xHxNxd`` first block's token-to-image keys and values (H heads of width d);
    queries0: ``1xNxHxd`` first block's image-to-token queries.
    """

    src: torch.Tensor
    pos: torch.Tensor
    keys0: torch.Tensor
    values0: torch.Tensor
    queries0: torch.Tensor


class FastDecoder:
    """Mask logits and IoU predictions for batches of prompts on one image, as ``MaskDecoder`` gives."""

    def __init__(self, sam: Sam, dtype: torch.dtype = torch.float32) -> None:
        self.sam = sam
        self.dtype = dtype
        self.decoder = (
            sam.mask_decoder if dtype == torch.float32 else copy.deepcopy(sam.mask_decoder).to(dtype)
        )
        self.transformer = self.decoder.transformer
        if len(self.transformer.layers) != 2:
            raise ValueError("FastDecoder expects SAM's two-block two-way transformer")
        up = self.decoder.output_upscaling
        conv1, norm, _, conv2, _ = up
        # ConvTranspose2d weight (in, out, 2, 2) -> (in, 2*2*out): each input pixel's four sub-pixels.
        self._up1_w = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, -1)
        self._up1_b = conv1.bias.repeat(4)
        self._up1_out = conv1.out_channels
        self._norm = norm
        self._up2_w = conv2.weight.permute(0, 2, 3, 1).reshape(conv2.in_channels, -1)
        self._up2_b = conv2.bias.repeat(4)
        self._up2_out = conv2.out_channels

    @torch.no_grad()
    def context(self, features: torch.Tensor) -> DecoderContext:
        """The image side for ``1xCx64x64`` encoder ``features``."""
        prompt_encoder = self.sam.prompt_encoder
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, 1, -1)
        src = (features.flatten(2).transpose(1, 2).float() + dense).to(self.dtype)
        pos = prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2).to(self.dtype)
        first = self.transformer.layers[0]
        return shared_context(first.cross_attn_token_to_image, first.cross_attn_image_to_token, src, pos)

    @torch.no_grad()
    def __call__(
        self, context: DecoderContext, sparse: torch.Tensor, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sparse``: ``BxSxC`` prompt embeddings (``PromptEncoder``'s sparse output).

        Returns low-resolution mask logits ``BxMx256x256`` and IoU predictions ``BxM`` (M = 3 with
        ``multimask``, else 1), exactly what ``MaskDecoder(..., multimask_output)`` returns.
        """
        decoder = self.decoder
        batch = sparse.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens[None].expand(batch, -1, -1), sparse.to(self.dtype)], dim=1)
        first, second = self.transformer.layers

        # Block 1: the image side comes from the context.
        queries = first.norm1(first.self_attn(q=tokens, k=tokens, v=tokens))
        queries = first.norm2(
            queries + attend_shared(first.cross_attn_token_to_image, queries + tokens, context)
        )
        queries = first.norm3(queries + first.mlp(queries))
        keys = first.norm4(
            context.src
            + image_to_tokens(first.cross_attn_image_to_token, context.queries0, None, queries, tokens)
        )

        # Block 2.
        q = queries + tokens
        queries = second.norm1(queries + second.self_attn(q=q, k=q, v=queries))
        keys_pos = keys + context.pos
        queries = second.norm2(
            queries + tokens_to_image(second.cross_attn_token_to_image, queries + tokens, keys_pos, keys)
        )
        queries = second.norm3(queries + second.mlp(queries))
        attn = second.cross_attn_image_to_token
        keys = second.norm4(keys + image_to_tokens(attn, None, keys_pos, queries, tokens))

        # Final token-to-image attention for the tokens the heads read (IoU and mask tokens, rows 0
        # to num_mask_tokens): each token attends alone, the prompt tokens' outputs are never read.
        final = self.transformer.final_attn_token_to_image
        read = slice(0, 1 + decoder.num_mask_tokens)
        attn_out = tokens_to_image(final, (queries + tokens)[:, read], keys + context.pos, keys)
        queries = self.transformer.norm_final_attn(queries[:, read] + attn_out)

        picked = range(1, decoder.num_mask_tokens) if multimask else range(0, 1)
        hyper = torch.stack(
            [decoder.output_hypernetworks_mlps[i](queries[:, 1 + i, :]) for i in picked], dim=1
        )
        masks = self._upscale_and_project(keys, hyper)
        iou = decoder.iou_prediction_head(queries[:, 0, :])[:, list(picked)]
        return masks.float(), iou.float()

    def _upscale_and_project(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """``output_upscaling`` then ``hyper @ upscaled``, channels-last: ``BxNxC`` -> ``BxMx256x256``."""
        batch, tokens, _ = keys.shape
        side = math.isqrt(tokens)
        x = F.linear(keys, self._up1_w.t(), self._up1_b)
        x = x.reshape(batch, tokens, 4, self._up1_out)
        x = F.layer_norm(x, (self._up1_out,), self._norm.weight, self._norm.bias, self._norm.eps)
        x = F.gelu(x)
        x = F.gelu(F.linear(x, self._up2_w.t(), self._up2_b))
        x = x.reshape(batch, tokens * 16, self._up2_out)  # pixel p, sub-pixel (a, c), sub-sub-pixel (a2, c2)
        masks = x @ hyper.transpose(1, 2)  # B x (N*16) x M
        count = masks.shape[-1]
        # (i, j, a, c, a2, c2) -> row 4i + 2a + a2, column 4j + 2c + c2
        masks = masks.reshape(batch, side, side, 2, 2, 2, 2, count).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(batch, count, side * 4, side * 4)


def shared_context(
    t2i: AttentionWeights, i2t: AttentionWeights, src: torch.Tensor, pos: torch.Tensor
) -> DecoderContext:
    """The first block's image side for ``src`` (``1xNxC``, image embedding plus dense prompt) and
    ``pos``: ``t2i``'s keys and values, ``i2t``'s queries."""
    keys0 = split_heads(t2i.k_proj(src + pos), t2i.num_heads)
    values0 = split_heads(t2i.v_proj(src), t2i.num_heads)
    queries0 = i2t.q_proj(src + pos)
    queries0 = queries0.reshape(1, queries0.shape[1], i2t.num_heads, -1)
    return DecoderContext(src, pos, keys0, values0, queries0)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``BxNx(H*d)`` -> ``BxHxNxd``."""
    batch, count, width = x.shape
    return x.reshape(batch, count, heads, width // heads).transpose(1, 2)


def attend_shared(attn: AttentionWeights, q: torch.Tensor, context: DecoderContext) -> torch.Tensor:
    """First block's token-to-image attention against the context's shared keys and values."""
    batch, count, _ = q.shape
    heads = attn.num_heads
    # All prompts' queries per head in one matrix (H x B*T x d): the shared keys are never copied.
    query = attn.q_proj(q).reshape(batch * count, heads, -1).transpose(0, 1)
    scale = 1 / math.sqrt(query.shape[-1])
    keys, values = context.keys0[0], context.values0[0]
    weights = torch.softmax((query * scale) @ keys.transpose(1, 2), dim=-1)
    out = (weights @ values).transpose(0, 1).reshape(batch, count, -1)  # B x T x H*d
    projected: torch.Tensor = attn.out_proj(out)
    return projected


def tokens_to_image(
    attn: AttentionWeights,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_pos: torch.Tensor | None = None,
) -> torch.Tensor:
    """``attn(q, k + k_pos, v)`` for T tokens ``q`` (``BxTxC``) over N image tokens ``k``, ``v``
    (``BxNxC``; ``k_pos`` ``1xNxC`` shared, or ``None``), without projecting the N image tokens:
    products with the T queries instead. ``k + k_pos`` is never formed: its product with the queries
    is the sum of the two products, the shared one a single matrix product for the whole batch."""
    batch, count, _ = q.shape
    heads = attn.num_heads
    head_dim = attn.internal_dim // heads
    query = attn.q_proj(q).reshape(batch, count, heads, head_dim) / math.sqrt(head_dim)
    w_k = attn.k_proj.weight.reshape(heads, head_dim, -1)  # H x d x C
    # (q W_k) per head: B x (H*T) x C; the key bias adds a per-row constant, which softmax drops.
    q_in = torch.einsum("bthd,hdc->bhtc", query, w_k).reshape(batch, heads * count, -1)
    if k_pos is None:
        scores = q_in @ k.transpose(1, 2)
    else:
        scores = (q_in.reshape(batch * heads * count, -1) @ k_pos[0].t()).view(batch, heads * count, -1)
        scores.baddbmm_(q_in, k.transpose(1, 2))
    weights = torch.softmax(scores, dim=-1)
    mixed = (weights @ v).reshape(batch, heads, count, -1)  # attention-weighted x
    w_v = attn.v_proj.weight.reshape(heads, head_dim, -1)
    b_v = attn.v_proj.bias.reshape(heads, head_dim)
    out = torch.einsum("bhtc,hdc->bthd", mixed, w_v) + b_v  # rows of weights sum to one
    projected: torch.Tensor = attn.out_proj(out.reshape(batch, count, -1))
    return projected


def image_to_tokens(
    attn: AttentionWeights,
    queries: torch.Tensor | None,
    image: torch.Tensor | None,
    tokens: torch.Tensor,
    tokens_pos: torch.Tensor,
    residual: torch.Tensor | None = None,
    image_pos: torch.Tensor | None = None,
    *,
    overwrite: bool = False,
) -> torch.Tensor:
    """``attn(q=image + image_pos, k=tokens + pos, v=tokens)`` for N image tokens over T prompt
    tokens, ``BxNxC``.

    Either ``queries`` (``1xNxHxd``, already projected and shared) or ``image`` (``BxNxC``, projected
    here through the T keys; ``image_pos`` ``1xNxC`` shared, or ``None``) is given. The value and
    output projections are folded into the T values. With ``residual`` (``BxNxC`` or ``1xNxC``) the
    result is ``residual + attn(...)`` in the same product: the output bias rides in the values (each
    head's weights sum to one), so no ``BxNxC`` pass adds it; with ``overwrite`` the sum is
    written into ``residual`` (``BxNxC``, which the caller no longer reads, ``image`` included):
    no ``BxNxC`` copy of it either.

    Scores are laid out ``B x (T*H) x N``: the softmax over the T tokens then runs across rows with
    the N image tokens contiguous (vectorised), and scale and query bias ride in the T keys.
    """
    batch, count, _ = tokens.shape
    heads = attn.num_heads
    head_dim = attn.internal_dim // heads
    keys = attn.k_proj(tokens + tokens_pos).reshape(batch, count, heads, head_dim) / math.sqrt(head_dim)
    values = attn.v_proj(tokens).reshape(batch, count, heads, head_dim)
    w_o = attn.out_proj.weight.reshape(-1, heads, head_dim)  # C x H x d
    values_out = torch.einsum("bthd,chd->bthc", values, w_o).reshape(batch, count * heads, -1)
    if queries is not None:
        # Each (t, h) row holds its key in head h's columns: one product with all heads' queries.
        eye = torch.eye(heads, dtype=keys.dtype, device=keys.device)
        spread = torch.einsum("bthd,hg->bthgd", keys, eye).reshape(batch, count * heads, -1)
        scores = spread @ queries[0].flatten(1).t()
    else:
        assert image is not None
        w_q = attn.q_proj.weight.reshape(heads, head_dim, -1)  # H x d x C
        b_q = attn.q_proj.bias.reshape(heads, head_dim)
        through = torch.einsum("bthd,hdc->bthc", keys, w_q).reshape(batch, count * heads, -1)
        bias = torch.einsum("bthd,hd->bth", keys, b_q).reshape(batch, count * heads, 1)
        if image_pos is None:
            scores = torch.baddbmm(bias, through, image.transpose(1, 2))
        else:
            shared = torch.addmm(
                bias.reshape(-1, 1), through.reshape(-1, through.shape[-1]), image_pos[0].t()
            )
            scores = shared.view(batch, count * heads, -1).baddbmm_(through, image.transpose(1, 2))
    weights = torch.softmax(scores.view(batch, count, -1), dim=1).view(batch, count * heads, -1)
    weights_t = weights.transpose(1, 2)  # B x N x (T*H)
    if residual is None:
        return torch.baddbmm(attn.out_proj.bias, weights_t, values_out)
    values_out = values_out + attn.out_proj.bias / heads
    if overwrite:
        return residual.baddbmm_(weights_t, values_out)
    return torch.baddbmm(residual, weights_t, values_out)
