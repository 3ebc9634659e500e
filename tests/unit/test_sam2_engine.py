"""The SAM 2.1 engine on a small random-weight Sam2Model (tests/sam2_models.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from skimage import data as skdata

from predictor.engine import Job
from predictor.instances import Prompts, refuse_sam2_options
from predictor.sam2_engine import Sam2Engine
from samdrop.errors import InvalidPrompt
from samdrop.masks import rle_to_mask
from tests.sam2_models import INPUT_SIDE, tiny_sam2

OPEN_AMG: dict[str, Any] = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def small(coffee: np.ndarray) -> np.ndarray:
    """Coffee at a quarter of its size (``100x150``): automatic masks upsample every candidate."""
    return np.ascontiguousarray(coffee[::4, ::4])


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_sam2()


@pytest.fixture
def engine(model: Any) -> Sam2Engine:
    return Sam2Engine(model, "sam2.1_hiera_tiny", random_weights=True, batch_size=2, images_per_pass=2)


def _masks(result: Any) -> np.ndarray:
    return np.stack([rle_to_mask(m.rle) for m in result.masks])


def test_points_without_labels_are_foreground(engine: Sam2Engine, coffee: np.ndarray):
    points = np.array([[300, 200], [120, 80]], np.float32)
    unlabelled = engine.segment(coffee, Prompts(points=points), return_logits=True)
    labelled = engine.segment(coffee, Prompts(points=points, labels=np.array([1, 1])), return_logits=True)
    background = engine.segment(coffee, Prompts(points=points, labels=np.array([1, 0])), return_logits=True)
    assert len(unlabelled.masks) == 3  # a points-only prompt gives three masks
    assert unlabelled.logits is not None and labelled.logits is not None and background.logits is not None
    assert np.array_equal(unlabelled.logits, labelled.logits)
    assert np.array_equal(_masks(unlabelled), _masks(labelled))
    assert not np.allclose(background.logits, labelled.logits)


def test_prompt_masks_are_at_the_image_size(engine: Sam2Engine, coffee: np.ndarray):
    boxes = np.array([[10, 10, 200, 200], [300, 50, 590, 390]], np.float32)
    result = engine.run([Job(coffee, Prompts(boxes=boxes), return_logits=True)])[0]
    assert [m.prompt_index for m in result.masks] == [0, 1]  # one mask per box by default
    assert (result.width, result.height) == (600, 400)
    assert _masks(result).shape == (2, 400, 600)
    for record in result.masks:
        mask = rle_to_mask(record.rle)
        assert record.area == int(mask.sum())
        assert record.stability_score is not None and 0.0 <= record.stability_score <= 1.0
    assert result.logits is not None and result.logits.shape == (2, INPUT_SIDE // 4, INPUT_SIDE // 4)


def test_prompts_match_transformers_own_processor(model: Any, engine: Sam2Engine, coffee: np.ndarray):
    """Same pixels in, same prompt transform: our masks are the ones Sam2Processor + Sam2Model give."""
    from transformers import Sam2ImageProcessor, Sam2Processor

    processor = Sam2Processor(
        Sam2ImageProcessor(size={"height": INPUT_SIDE, "width": INPUT_SIDE}), target_size=INPUT_SIDE
    )
    inputs = processor(
        images=coffee, input_points=[[[[300, 200]]]], input_labels=[[[1]]], return_tensors="pt"
    )
    with torch.inference_mode():
        output = model(**inputs, multimask_output=True)
    theirs = processor.post_process_masks(output.pred_masks, inputs["original_sizes"])[0][0].numpy()
    ours = engine.segment(coffee, Prompts(points=np.array([[300, 200]], np.float32)))
    for mine, reference in zip(_masks(ours), theirs, strict=True):
        union = (mine | reference).sum()
        assert union == 0 or (mine & reference).sum() / union > 0.98
    np.testing.assert_allclose([m.score for m in ours.masks], output.iou_scores[0, 0].numpy(), atol=2e-3)


def test_embedding_cache_and_batched_encoder(engine: Sam2Engine, coffee: np.ndarray, astronaut: np.ndarray):
    prompts = Prompts(boxes=np.array([[10, 10, 100, 100]], np.float32))
    first = engine.run([Job(coffee, prompts), Job(astronaut, prompts)])
    assert [r.encoder_batch for r in first] == [2, 2]  # one encoder pass for both
    again = engine.run([Job(coffee, prompts)])[0]
    assert again.encoder_batch == 0 and (engine.cache_hits, engine.cache_misses) == (1, 2)
    assert again.masks == first[0].masks


def test_one_image_per_encoder_pass_on_a_cpu(model: Any, coffee: np.ndarray, astronaut: np.ndarray):
    engine = Sam2Engine(model, "sam2.1_hiera_tiny", batch_size=2)
    prompts = Prompts(boxes=np.array([[10, 10, 100, 100]], np.float32))
    results = engine.run([Job(coffee, prompts), Job(astronaut, prompts)])
    assert [r.encoder_batch for r in results] == [1, 1]


def test_automatic_masks_at_the_image_size(engine: Sam2Engine, small: np.ndarray):
    result = engine.run([Job(small, None, {**OPEN_AMG, "box_nms_thresh": 1.0})])[0]
    assert result.counts["candidates"] == 4 * 4 * 3  # three masks per grid point
    assert result.masks and (result.width, result.height) == (150, 100)
    scores = [m.score for m in result.masks]
    assert scores == sorted(scores, reverse=True)
    for record in result.masks:
        assert record.rle["size"] == [100, 150]
        assert record.point_coords is not None and len(record.point_coords) == 1
    assert not engine.run([Job(small, None, {**OPEN_AMG, "pred_iou_thresh": 1.0})])[0].masks
    capped = engine.run([Job(small, None, {**OPEN_AMG, "box_nms_thresh": 1.0, "max_masks": 5})])[0]
    assert len(capped.masks) == 5


def test_sam2_generator_options(engine: Sam2Engine, small: np.ndarray):
    single = engine.generate(small, {**OPEN_AMG, "box_nms_thresh": 1.0, "multimask_output": False})
    assert single.counts["candidates"] == 4 * 4
    refined = engine.generate(small, {**OPEN_AMG, "box_nms_thresh": 1.0, "use_m2m": True})
    plain = engine.generate(small, {**OPEN_AMG, "box_nms_thresh": 1.0})
    assert refined.counts["candidates"] == plain.counts["candidates"]
    assert [m.score for m in refined.masks] != [m.score for m in plain.masks]
    # A higher mask threshold can only shrink each candidate.
    high = engine.generate(small, {**OPEN_AMG, "box_nms_thresh": 1.0, "mask_threshold": 5.0})
    assert sum(m.area for m in high.masks) <= sum(m.area for m in plain.masks)
    cropped = engine.generate(small, {**OPEN_AMG, "crop_n_layers": 1})
    assert cropped.counts["candidates"] == 5 * 4 * 4 * 3  # the image and its four crops


def test_sam1_engines_refuse_sam2_only_parameters():
    with pytest.raises(InvalidPrompt, match="use_m2m"):
        refuse_sam2_options({**OPEN_AMG, "use_m2m": True}, "vit_b")
    refuse_sam2_options(OPEN_AMG, "vit_b")


def test_description_names_family_and_checkpoint(engine: Sam2Engine):
    description = engine.description
    assert description["type"] == "sam2.1_hiera_tiny" and description["family"] == "sam2.1"
    assert description["checkpoint"] == "facebook/sam2.1-hiera-tiny"
    assert description["random_weights"] is True and "meaningless" in description["note"]


def test_automatic_masks_match_transformers_pipeline_with_its_filters_off(model: Any, engine: Sam2Engine):
    """With thresholds 0 and no NMS the two generators keep every candidate: same points, same model,
    so the same predicted IoUs and masks (the pipeline's grid scaling is right on square images)."""
    from PIL import Image
    from transformers import Sam2ImageProcessor, pipeline

    image = np.asarray(Image.fromarray(skdata.astronaut()).resize((128, 128)))
    processor = Sam2ImageProcessor(size={"height": INPUT_SIDE, "width": INPUT_SIDE})
    generator = pipeline("mask-generation", model=model, image_processor=processor, device="cpu")
    theirs = generator(
        Image.fromarray(image),
        points_per_crop=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crops_nms_thresh=1.0,
    )
    ours = engine.generate(image, {**OPEN_AMG, "box_nms_thresh": 1.0})
    assert len(ours.masks) == len(theirs["masks"]) == 4 * 4 * 3
    np.testing.assert_allclose(
        sorted(m.score for m in ours.masks), sorted(float(s) for s in theirs["scores"]), atol=1e-4
    )
    our_areas = sorted(m.area for m in ours.masks)
    their_areas = sorted(int(np.asarray(m).sum()) for m in theirs["masks"])
    np.testing.assert_allclose(our_areas, their_areas, rtol=0.02, atol=20)
    # Mask by mask: each of our top masks (Sam2FastDecoder, IoU-gated) is one of the pipeline's
    # (Sam2Model's own decoder, one full-size mask per candidate).
    their_masks = [np.asarray(m, bool) for m in theirs["masks"]]
    for record in sorted(ours.masks, key=lambda m: m.score, reverse=True)[:10]:
        mine = rle_to_mask(record.rle).astype(bool)
        best = max((mine & other).sum() / max((mine | other).sum(), 1) for other in their_masks)
        assert best >= 0.9


def test_iou_filter_before_upscaling_keeps_the_same_masks(engine: Sam2Engine, small: np.ndarray):
    """pred_iou_thresh lets the decoder skip upscaling prompts that cannot pass: the masks kept are
    exactly those of the unfiltered run over the threshold."""
    everything = engine.generate(small, {**OPEN_AMG, "box_nms_thresh": 1.0})
    scores = sorted({m.score for m in everything.masks})  # records round scores: cut between two
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    gated = engine.generate(small, {**OPEN_AMG, "box_nms_thresh": 1.0, "pred_iou_thresh": threshold})
    expected = [m for m in everything.masks if m.score > threshold]
    assert 0 < len(gated.masks) < len(everything.masks)
    assert [(m.rle, m.score) for m in gated.masks] == [(m.rle, m.score) for m in expected]
