"""benchmarks/meta_sam2.py: a transformers ``Sam2Model``'s weights in Meta's ``SAM2Base`` compute
the same features, masks and IoU (skipped without the ``bench-meta`` extra)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("sam2", reason="Meta's sam2 (the bench-meta extra) is not installed")

from benchmarks.meta_sam2 import hf_key, meta_state_dict, sam2_model_from_hf, tie_positional_embeddings

# Seeded random hiera tiny (Meta's config is hiera tiny's only); a small image keeps the encoder
# to about a second, and the decoder runs on random features of the full size.
SEED = 7
SIDE = 128
# Meta's SAM2Transforms scripts its resize with torch.jit, which torch 2.14 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any]:
    from transformers import Sam2Config, Sam2Model

    torch.manual_seed(SEED)
    hf = Sam2Model(Sam2Config()).eval()
    with torch.no_grad():  # a trained no_mem_embed is not zero; make the test see it
        hf.no_memory_embedding.normal_()
    tie_positional_embeddings(hf)
    return hf, sam2_model_from_hf(hf)


@pytest.fixture(scope="module")
def predictor(models: tuple[Any, Any]) -> Any:
    """Meta's image predictor on random full-size features (1024x1024 input): the decoder's inputs."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    g = torch.Generator().manual_seed(SEED)
    features = [
        torch.randn(1, 32, 256, 256, generator=g),
        torch.randn(1, 64, 128, 128, generator=g),
        torch.randn(1, 256, 64, 64, generator=g),
    ]
    predictor = SAM2ImagePredictor(models[1])
    predictor._features = {"image_embed": features[-1], "high_res_feats": features[:-1]}
    predictor._is_image_set = True
    predictor._orig_hw = [(1024, 1024)]
    return predictor


def test_keys_map_as_transformers_converts_them() -> None:
    assert hf_key("image_encoder.trunk.blocks.3.mlp.layers.1.weight") == (
        "vision_encoder.backbone.blocks.3.mlp.proj_out.weight"
    )
    assert hf_key("image_encoder.neck.convs.2.conv.bias") == "vision_encoder.neck.convs.2.bias"
    assert hf_key("sam_mask_decoder.transformer.layers.1.norm4.weight") == (
        "mask_decoder.transformer.layers.1.layer_norm4.weight"
    )
    assert hf_key("sam_mask_decoder.output_hypernetworks_mlps.2.layers.1.bias") == (
        "mask_decoder.output_hypernetworks_mlps.2.layers.0.bias"
    )
    assert (
        hf_key("sam_prompt_encoder.mask_downscaling.4.weight")
        == "prompt_encoder.mask_embed.layer_norm2.weight"
    )


def test_a_partial_or_mismatched_conversion_is_refused(models: tuple[Any, Any]) -> None:
    hf, meta = models
    hf_state = dict(hf.state_dict())
    extra = {**hf_state, "mask_decoder.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="no place in Meta's model"):
        meta_state_dict(extra, meta.state_dict())
    missing = {k: v for k, v in hf_state.items() if k != "mask_decoder.conv_s0.weight"}
    with pytest.raises(ValueError, match="conv_s0"):
        meta_state_dict(missing, meta.state_dict())
    untied = {**hf_state, "shared_image_embedding.positional_embedding": torch.zeros(2, 128)}
    with pytest.raises(ValueError, match="prompt encoder's"):
        meta_state_dict(untied, meta.state_dict())


@torch.inference_mode()
def test_image_features_agree(models: tuple[Any, Any]) -> None:
    hf, meta = models
    pixels = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(SEED))
    ours = hf.get_image_features(pixels).fpn_hidden_states
    ours[-1] = ours[-1] + hf.no_memory_embedding
    _, theirs, _, _ = meta._prepare_backbone_features(meta.forward_image(pixels))
    theirs[-1] = theirs[-1] + meta.no_mem_embed
    assert [f.shape for f in ours] == [f.shape for f in theirs]  # HW x 1 x C, three levels
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("multimask", [True, False])
@torch.inference_mode()
def test_point_prompt_masks_and_iou_agree(models: tuple[Any, Any], predictor: Any, multimask: bool) -> None:
    hf, _ = models
    features = [*predictor._features["high_res_feats"], predictor._features["image_embed"]]
    points = torch.tensor([[[300.0, 500.0]], [[700.0, 100.0]], [[20.0, 1000.0]]])  # model-input pixels
    labels = torch.ones(3, 1, dtype=torch.int)
    _, their_iou, their_low_res = predictor._predict(
        points, labels, multimask_output=multimask, return_logits=True
    )
    out = hf(
        image_embeddings=features,
        input_points=points[None],
        input_labels=labels[None],
        multimask_output=multimask,
    )
    assert their_low_res.shape == (3, 3 if multimask else 1, 256, 256)
    torch.testing.assert_close(out.pred_masks[0], their_low_res, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.iou_scores[0], their_iou, atol=1e-5, rtol=1e-4)
