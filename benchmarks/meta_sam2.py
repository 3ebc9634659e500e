"""Meta's SAM 2.1 code (PyPI ``sam2==1.1.0``, the ``bench-meta`` extra) on the weights of a
transformers ``Sam2Model``: benchmark-only, never imported by ``predictor/``.

Meta's weights cannot be downloaded where the benchmarks run, so the reference gets the same
(seeded random) weights as ours by converting a ``Sam2Model`` state dict to Meta's key layout: the
inverse of transformers' ``convert_sam2_to_hf.py``. Every image-path tensor of Meta's ``SAM2Base``
comes from the ``Sam2Model``; the video-only modules (memory attention and encoder, object
pointers), which ``Sam2Model`` does not have and no image call reads, keep Meta's own init. The
result is loaded with ``strict=True``.

    model = sam2_model_from_hf(hf_model)            # Meta's SAM2Base, fp32, eval, CPU
    generator = SAM2AutomaticMaskGenerator(model, points_per_side=16)
"""

from __future__ import annotations

import re
from typing import Any

import torch

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"  # inside the sam2 package (hydra's search path)

# Meta's SAM2Base parameters that only its video predictor reads (Sam2Model has none of them).
VIDEO_ONLY = (
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
    "mask_downsample.",
    "memory_attention.",
    "memory_encoder.",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
)

# Meta's name -> transformers' name, applied in order to each key (the renames of
# transformers' convert_sam2_to_hf.py that concern the image path).
RENAMES = (
    ("image_encoder.trunk.", "vision_encoder.backbone."),
    ("image_encoder.neck.", "vision_encoder.neck."),
    ("patch_embed.proj.", "patch_embed.projection."),
    ("sam_prompt_encoder.", "prompt_encoder."),
    ("sam_mask_decoder.", "mask_decoder."),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("mask_downscaling.0.", "mask_embed.conv1."),
    ("mask_downscaling.1.", "mask_embed.layer_norm1."),
    ("mask_downscaling.3.", "mask_embed.conv2."),
    ("mask_downscaling.4.", "mask_embed.layer_norm2."),
    ("mask_downscaling.6.", "mask_embed.conv3."),
    ("output_upscaling.0.", "upscale_conv1."),
    ("output_upscaling.1.", "upscale_layer_norm."),
    ("output_upscaling.3.", "upscale_conv2."),
    ("norm_final_attn.", "layer_norm_final_attn."),
    (".out_proj.", ".o_proj."),
    ("no_mem_embed", "no_memory_embedding"),
)
# Norms and MLPs renamed by position: Hiera blocks' and the two-way transformer's norms, MLPs
# of two layers (proj_in, proj_out) and of three (proj_in, layers.0, proj_out).
NORM = re.compile(r"\.norm(\d)\.")
NECK_CONV = re.compile(r"(neck\.convs\.\d+)\.conv\.")
TWO_LAYER_MLP = re.compile(r"((?:blocks|transformer\.layers)\.\d+\.mlp)\.layers\.([01])\.")
THREE_LAYER_MLP = re.compile(
    r"((?:output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head))\.layers\.([012])\."
)
POINT_EMBEDDING = re.compile(r"sam_prompt_encoder\.point_embeddings\.(\d)\.weight")


def hf_key(meta_key: str) -> str:
    """transformers' ``Sam2Model`` name of one of Meta's image-path parameters."""
    key = meta_key
    for old, new in RENAMES:
        key = key.replace(old, new)
    key = NORM.sub(r".layer_norm\1.", key)
    key = NECK_CONV.sub(r"\1.", key)
    key = TWO_LAYER_MLP.sub(lambda m: f"{m[1]}.{('proj_in', 'proj_out')[int(m[2])]}.", key)
    return THREE_LAYER_MLP.sub(lambda m: f"{m[1]}.{('proj_in', 'layers.0', 'proj_out')[int(m[2])]}.", key)


def meta_state_dict(hf_state: dict[str, torch.Tensor], meta_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Meta's state dict with every image-path tensor taken from ``hf_state``.

    meta_state: a freshly built ``SAM2Base``'s own state dict (its keys, shapes, and the video-only
    tensors kept). Raises ``ValueError`` when a key or shape does not match, or when a tensor of
    ``hf_state`` is left unused (the conversion would be silently partial).
    """
    out: dict[str, Any] = {}
    used: set[str] = set()
    for key, own in meta_state.items():
        if key.startswith(VIDEO_ONLY):
            out[key] = own
            continue
        point = POINT_EMBEDDING.fullmatch(key)
        if point:  # Meta: four 1x256 embeddings; transformers: one 4x256 table
            source = "prompt_encoder.point_embed.weight"
            value = hf_state[source][int(point[1]) : int(point[1]) + 1]
        else:
            source = hf_key(key)
            if source not in hf_state:
                raise ValueError(f"Meta's {key} has no Sam2Model tensor (looked for {source})")
            value = hf_state[source]
        if value.shape != own.shape:
            raise ValueError(f"{key}: Meta {tuple(own.shape)} vs Sam2Model {source} {tuple(value.shape)}")
        out[key] = value.clone()
        used.add(source)
    # Sam2Model keeps the image-wide positional embedding apart from the prompt encoder's; Meta
    # has one (pe_layer) for both, so the two must hold the same tensor.
    shared = "shared_image_embedding.positional_embedding"
    if not torch.equal(hf_state[shared], hf_state["prompt_encoder.shared_embedding.positional_embedding"]):
        raise ValueError(f"{shared} differs from the prompt encoder's: Meta's SAM2Base has one for both")
    unused = set(hf_state) - used - {shared}
    if unused:
        raise ValueError(f"Sam2Model tensors with no place in Meta's model: {sorted(unused)}")
    return out


def tie_positional_embeddings(hf_model: Any) -> None:
    """Give ``hf_model``'s image-wide positional embedding the prompt encoder's values, as trained
    checkpoints have (one tensor in Meta's); a random ``Sam2Model`` initialises them apart."""
    with torch.no_grad():
        hf_model.shared_image_embedding.positional_embedding.copy_(
            hf_model.prompt_encoder.shared_embedding.positional_embedding
        )


def sam2_model_from_hf(hf_model: Any) -> Any:
    """Meta's ``SAM2Base`` (hiera tiny, Meta's image-predictor settings) in eval mode on the CPU,
    fp32, with ``hf_model``'s weights (its architecture must be hiera tiny's)."""
    from sam2.build_sam import build_sam2

    meta = build_sam2(CONFIG, ckpt_path=None, device="cpu")
    hf_state = {k: v.detach().float().cpu() for k, v in hf_model.state_dict().items()}
    meta.load_state_dict(meta_state_dict(hf_state, meta.state_dict()), strict=True)
    return meta.eval()
