"""Sam2FastDecoder against transformers' own Sam2Model decoder call, on a small random model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from predictor.sam2_decoder import Sam2FastDecoder
from tests.sam2_models import INPUT_SIDE, tiny_sam2

PROMPTS = 6


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_sam2()


@pytest.fixture(scope="module")
def features(model: Any) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        return list(
            model.get_image_embeddings(torch.randn(1, 3, INPUT_SIDE, INPUT_SIDE, generator=generator))
        )


def _prompts() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    points = torch.rand(PROMPTS, 1, 2, 2, generator=generator) * INPUT_SIDE
    labels = torch.tensor([[[1, 0]]] * PROMPTS, dtype=torch.int32)
    masks = torch.randn(PROMPTS, 1, INPUT_SIDE // 4, INPUT_SIDE // 4, generator=generator) * 8
    return points, labels, masks


def _point_prompts(model: Any) -> torch.Tensor:
    """The sparse embeddings of :func:`_prompts`' points, one row per prompt."""
    points, labels, _ = _prompts()
    with torch.inference_mode():
        sparse, _ = model.prompt_encoder(points, labels, None, None)
    return sparse[:, 0]


def _median_best_iou(decoder: Sam2FastDecoder, context: Any, sparse: torch.Tensor) -> float:
    """A ``min_iou`` that about half of the prompts pass."""
    _, iou = decoder(context, sparse, True)
    return float(iou.max(dim=1).values.median())


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = float(theirs.abs().max())
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("with_mask", [False, True])
def test_fp32_matches_sam2_model(model: Any, features: list[torch.Tensor], multimask: bool, with_mask: bool):
    points, labels, masks = _prompts()
    mask_prompts = masks if with_mask else None
    decoder = Sam2FastDecoder(model, chunk=4)  # two uneven chunks of the 6 prompts
    with torch.inference_mode():
        theirs = model(
            image_embeddings=[level.expand(PROMPTS, -1, -1, -1) for level in features],
            input_points=points,
            input_labels=labels,
            input_masks=mask_prompts,
            multimask_output=multimask,
        )
        sparse, dense = model.prompt_encoder(points, labels, None, mask_prompts)
        logits, iou = decoder(
            decoder.context(tuple(features)), sparse[:, 0], multimask, dense if with_mask else None
        )
    assert logits.shape == (PROMPTS, 3 if multimask else 1, INPUT_SIDE // 4, INPUT_SIDE // 4)
    _close(logits, theirs.pred_masks[:, 0])
    _close(iou, theirs.iou_scores[:, 0])


def test_min_iou_skips_only_prompts_that_cannot_pass(model: Any, features: list[torch.Tensor]):
    sparse = _point_prompts(model)
    decoder = Sam2FastDecoder(model, chunk=4)
    with torch.inference_mode():
        context = decoder.context(tuple(features))
        logits, iou = decoder(context, sparse, True)
        threshold = _median_best_iou(decoder, context, sparse)
        gated, gated_iou = decoder(context, sparse, True, min_iou=threshold)
    passing = iou.max(dim=1).values > threshold
    assert 0 < int(passing.sum()) < PROMPTS
    torch.testing.assert_close(gated_iou, iou)
    torch.testing.assert_close(gated[passing], logits[passing])
    assert not gated[~passing].any()  # never upscaled


@pytest.mark.parametrize("multimask", [True, False])
def test_min_iou_over_every_iou_upscales_nothing(model: Any, features: list[torch.Tensor], multimask: bool):
    """Chunks where no prompt passes: zero logits of the full shape, IoUs at most ``min_iou``."""
    sparse = _point_prompts(model)
    decoder = Sam2FastDecoder(model, chunk=4)
    with torch.inference_mode():
        context = decoder.context(tuple(features))
        logits, iou = decoder(context, sparse, multimask)
        gated, gated_iou = decoder(context, sparse, multimask, min_iou=1.0)  # IoUs are sigmoids
    assert gated.shape == logits.shape and not gated.any()
    assert gated_iou.shape == iou.shape and bool((gated_iou <= 1.0).all())
    if multimask:
        torch.testing.assert_close(gated_iou, iou)


def test_bf16_decoder_predicts_ious_in_fp32(model: Any, features: list[torch.Tensor]):
    """Filters, NMS order and the top-k cut read these scores: bf16 rounding would tie or swap them."""
    sparse = _point_prompts(model)
    fp32, bf16 = Sam2FastDecoder(model), Sam2FastDecoder(model, dtype=torch.bfloat16)
    with torch.inference_mode():
        _, reference = fp32(fp32.context(tuple(features)), sparse, True)
        _, iou = bf16(bf16.context(tuple(features)), sparse, True)
    assert iou.dtype == torch.float32
    assert (iou.bfloat16().float() != iou).float().mean() > 0.5  # not bf16 values cast up
    torch.testing.assert_close(iou, reference, atol=0.05, rtol=0)


@pytest.mark.slow
def test_compiled_decoder_matches_eager(model: Any, features: list[torch.Tensor], tmp_path, monkeypatch):
    """6 prompts in chunks of 4: the second chunk is padded to 4 rows, and with ``min_iou`` only some
    prompts go through the compiled upscaling (one at a time)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    sparse = _point_prompts(model)
    decoder = Sam2FastDecoder(model, chunk=4)
    compiled = decoder.compiled_copy()
    with torch.inference_mode():
        context = decoder.context(tuple(features))
        threshold = _median_best_iou(decoder, context, sparse)
        logits, iou = decoder(context, sparse, True, min_iou=threshold)
        ours, ours_iou = compiled(context, sparse, True, min_iou=threshold)
    assert 0 < int((iou.max(dim=1).values > threshold).sum()) < PROMPTS
    assert ours.shape == logits.shape and ours_iou.shape == iou.shape
    _close(ours, logits)
    _close(ours_iou, iou)
