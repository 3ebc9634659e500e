"""A tiny SAM 3 with seeded random weights and an offline tokenizer, for tests (``facebook/sam3`` is
gated and cannot be fetched here).

Every sub-config of ``Sam3Config`` is shrunk (a forward takes ~0.1 s on one core); the tokenizer is a
CLIP BPE over single letters, so every letter is one token. :func:`write_tiny_sam3` saves both with
``save_pretrained``: the folder loads through the very same ``from_pretrained`` as Meta's checkpoint.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch

TINY_SAM3_SEED = 0
SIDE = 56  # model input side: 4x4 patches of 14
WIDTH = 32


def tiny_sam3_config() -> Any:
    """Every sub-config shrunk: a forward takes ~0.1 s on one core."""
    from transformers import Sam3Config

    small = {"hidden_size": WIDTH, "num_attention_heads": 2, "intermediate_size": 64}
    return Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model",
                **small,
                "num_hidden_layers": 2,
                "image_size": SIDE,
                "pretrain_image_size": SIDE,
                "window_size": 2,
                "global_attn_indexes": [1],
            },
            "fpn_hidden_size": WIDTH,
            "backbone_feature_sizes": [[16, 16], [8, 8], [4, 4]],
        },
        text_config={
            "model_type": "clip_text_model",
            **small,
            "vocab_size": 64,
            "projection_dim": WIDTH,
            "num_hidden_layers": 1,
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        geometry_encoder_config={**small, "num_layers": 1, "roi_size": 2},
        detr_encoder_config={**small, "num_layers": 1},
        detr_decoder_config={**small, "num_layers": 2, "num_queries": 8},
        mask_decoder_config={"hidden_size": WIDTH, "num_attention_heads": 2},
    )


def tiny_tokenizer() -> Any:
    """A CLIP BPE tokenizer over single letters (no merges): every letter is one token."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for letter in string.ascii_lowercase:
            vocab[letter + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def write_tiny_sam3(path: Path, *, seed: int = TINY_SAM3_SEED) -> Path:
    """Save the tiny SAM 3 (model, tokenizer and processor) under ``path`` and return it."""
    from transformers import Sam3Model, Sam3Processor
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    torch.manual_seed(seed)
    model = Sam3Model(tiny_sam3_config())
    # Random weights at the default init give near-constant scores; wider ones spread them out.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4.0)
    processor = Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": SIDE, "width": SIDE}), tokenizer=tiny_tokenizer()
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
