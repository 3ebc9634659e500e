"""Small SAM 2.1 models with seeded random weights, for tests (Meta's weights cannot be fetched here).

The architecture is SAM 2's (Hiera backbone, FPN neck, prompt encoder, two-way decoder), shrunk: a
256 px input, a 5-block Hiera of width 16 and a 32-wide decoder, so a test encodes an image in tens
of milliseconds on a CPU and loads through the very same ``from_pretrained`` as Meta's checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_SAM2_SEED = 20261203
INPUT_SIDE = 256


def tiny_sam2_config() -> Any:
    from transformers import Sam2Config

    quarter, eighth, sixteenth = INPUT_SIDE // 4, INPUT_SIDE // 8, INPUT_SIDE // 16
    return Sam2Config(
        vision_config={
            "model_type": "sam2_vision_model",
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": 16,
                "num_attention_heads": 1,
                "image_size": [INPUT_SIDE, INPUT_SIDE],
                "blocks_per_stage": [1, 1, 2, 1],
                "embed_dim_per_stage": [16, 32, 64, 128],
                "num_attention_heads_per_stage": [1, 1, 1, 1],
                "window_size_per_stage": [8, 4, 4, 4],
                "global_attention_blocks": [3],
                "window_positional_embedding_background_size": [4, 4],
            },
            "backbone_channel_list": [128, 64, 32, 16],
            "backbone_feature_sizes": [[quarter, quarter], [eighth, eighth], [sixteenth, sixteenth]],
            "fpn_hidden_size": 32,
        },
        prompt_encoder_config={"hidden_size": 32, "image_size": INPUT_SIDE, "patch_size": 16},
        mask_decoder_config={
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
    )


def tiny_sam2() -> Any:
    """A ``Sam2Model`` of :func:`tiny_sam2_config` with seeded weights, in eval mode."""
    from transformers import Sam2Model

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_SAM2_SEED)
        model = Sam2Model(tiny_sam2_config())
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def write_tiny_sam2(folder: Path) -> Path:
    """``save_pretrained`` of :func:`tiny_sam2` into ``folder`` (config.json + model.safetensors)."""
    tiny_sam2().save_pretrained(folder)
    return folder
