"""Model registry and checkpoint loading.

``MODEL_SPECS`` holds the only architecture numbers in the project (as segment-anything's
``build_sam.py`` does). Meta's checkpoints (``vit_b``/``vit_l``/``vit_h``) come from a local path, an
``http(s)://`` or ``gs://`` URI, or (``auto``) Meta's server or a mirror, downloaded once into a cache
by :mod:`predictor.weights`. ``tiny`` is the same SAM architecture with a small image
encoder and seeded random weights: the project writes it to a checkpoint file and then loads it
through the very same loader, so tests exercise the real loading code.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from predictor import weights
from samdrop.errors import ConfigError
from samdrop.models import model_info
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S

log = logging.getLogger(__name__)

IMAGE_SIZE = 1024  # input side of every SAM image encoder
PATCH_SIZE = 16
PROMPT_EMBED_DIM = 256
TINY_SEED = 20261125


@dataclass(frozen=True)
class ModelSpec:
    """Image-encoder numbers that tell SAM variants apart; prompt encoder and decoder are shared."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]


MODEL_SPECS: dict[str, ModelSpec] = {
    "vit_h": ModelSpec(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": ModelSpec(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": ModelSpec(768, 12, 12, (2, 5, 8, 11)),
    # Same architecture, small encoder: 2 blocks (one windowed, one global) of width 64.
    "tiny": ModelSpec(64, 2, 2, (1,)),
}


def build_sam(model_type: str) -> Sam:
    """An un-initialised-by-checkpoint SAM of ``model_type`` (random weights), in eval mode."""
    spec = _spec(model_type)
    embedding_size = IMAGE_SIZE // PATCH_SIZE
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.encoder_depth,
            embed_dim=spec.encoder_embed_dim,
            img_size=IMAGE_SIZE,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder_num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.encoder_global_attn_indexes,
            window_size=14,
            out_chans=PROMPT_EMBED_DIM,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def write_tiny_checkpoint(path: Path) -> Path:
    """Build ``tiny`` with seeded weights and save its state dict to ``path`` (atomically)."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_SEED)
        model = build_sam("tiny")
    finally:
        torch.random.set_rng_state(generator_state)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        torch.save(model.state_dict(), handle)
    os.replace(handle.name, path)
    return path


def resolve_checkpoint(
    model_type: str, checkpoint: str | None, cache_dir: Path, *, weights_url: str | None = None
) -> Path:
    """A local file for ``checkpoint``: a path, a folder with one .pth, an ``http(s)://`` or ``gs://``
    URI (or ``gs://`` folder with one .pth), fetched once into ``cache_dir`` (:mod:`predictor.weights`).

    ``auto`` or nothing means Meta's official file for ``model_type`` (from ``weights_url``, a mirror,
    when given); ``tiny`` without a checkpoint gets the project's seeded file, written once.
    """
    _spec(model_type)
    if not checkpoint or checkpoint == "auto":
        if model_type != "tiny":
            return weights.fetch(weights.official_url(model_type, weights_url), cache_dir)
        path = cache_dir / f"sam_tiny_seed{TINY_SEED}.pth"
        return path if path.exists() else write_tiny_checkpoint(path)
    if checkpoint.startswith("gs://") and checkpoint.endswith("/"):
        return _download(checkpoint, cache_dir)
    if weights.is_remote(checkpoint):
        return weights.fetch(checkpoint, cache_dir)
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return Path(_single_checkpoint_in(sorted(str(p) for p in path.glob("*.pth")), checkpoint))
    if not path.is_file():
        raise ConfigError(f"checkpoint {checkpoint} does not exist (SAMDROP_CHECKPOINT / --checkpoint)")
    return path


def load_sam(model_type: str, checkpoint: str | None, cache_dir: Path, device: str | torch.device) -> Sam:
    """Build ``model_type`` and load its checkpoint strictly; a mismatch names both."""
    path = resolve_checkpoint(model_type, checkpoint, cache_dir)
    model = build_sam(model_type)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"checkpoint {checkpoint or path} could not be read as a PyTorch state dict: {exc}"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(
            f"checkpoint {checkpoint or path} holds a {type(state).__name__}, not a SAM state dict"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        guess = guess_model_type(state)
        hint = f" it looks like a {guess!r} checkpoint" if guess else " it is not a SAM checkpoint"
        raise ConfigError(
            f"checkpoint {checkpoint or path} does not match model type {model_type!r}:{hint}; "
            "set SAMDROP_MODEL_TYPE (--model-type) to match the checkpoint"
        ) from None
    log.info("loaded SAM %s from %s", model_type, checkpoint or path)
    return model.to(device)


def guess_model_type(state: dict[str, torch.Tensor]) -> str | None:
    """The registry entry whose encoder width and depth match ``state``, if any."""
    pos_embed = state.get("image_encoder.pos_embed")
    if pos_embed is None:
        return None
    depth = len({key.split(".")[2] for key in state if key.startswith("image_encoder.blocks.")})
    for name, spec in MODEL_SPECS.items():
        if pos_embed.shape[-1] == spec.encoder_embed_dim and depth == spec.encoder_depth:
            return name
    return None


def _spec(model_type: str) -> ModelSpec:
    info = model_info(model_type)
    try:
        return MODEL_SPECS[model_type]
    except KeyError:
        raise ConfigError(
            f"model type {model_type} is {info.family}, not a SAM 1 model: "
            f"segment-anything builds {', '.join(MODEL_SPECS)}"
        ) from None


def _single_checkpoint_in(candidates: list[str], where: str) -> str:
    if len(candidates) != 1:
        raise ConfigError(
            f"{where} must hold exactly one .pth checkpoint, found {len(candidates)}: {candidates}"
        )
    return candidates[0]


def _download(uri: str, cache_dir: Path) -> Path:
    """The single .pth under a ``gs://`` folder, fetched once."""
    import google.cloud.storage as storage

    bucket_name, _, prefix = uri.removeprefix("gs://").partition("/")
    blobs = storage.Client().list_blobs(bucket_name, prefix=prefix, timeout=DEFAULT_REQUEST_TIMEOUT_S)
    name = _single_checkpoint_in([b.name for b in blobs if b.name.endswith(".pth")], uri)
    return weights.fetch(f"gs://{bucket_name}/{name}", cache_dir)
