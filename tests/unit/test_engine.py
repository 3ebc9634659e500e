from __future__ import annotations

import numpy as np
import pytest

from predictor.embedding_engine import image_key
from predictor.engine import Job, SamEngine
from predictor.instances import parse_prompts
from samdrop.masks import rle_to_mask

SMALL_AMG = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def masks_of(result) -> list[np.ndarray]:
    return [rle_to_mask(m.rle) for m in result.masks]


def test_points_give_three_masks_at_input_size(fast_engine: SamEngine, coffee):
    result = fast_engine.run([Job(coffee, parse_prompts([[300, 200], [50, 50]], [1, 0], None))])[0]
    assert (result.width, result.height) == (600, 400)
    assert len(result.masks) == 3
    for record, mask in zip(result.masks, masks_of(result), strict=True):
        assert mask.shape == (400, 600)
        assert record.area == int(mask.sum())
        assert record.prompt_index == 0
        assert record.stability_score is not None and record.point_coords is None


def test_each_box_is_one_prompt_in_one_call(fast_engine: SamEngine, coffee):
    boxes = [[10, 10, 200, 200], [300, 100, 590, 390], [0, 0, 599, 399]]
    result = fast_engine.run([Job(coffee, parse_prompts([[100, 100]], [1], boxes))])[0]
    assert [m.prompt_index for m in result.masks] == [0, 1, 2]
    multi = fast_engine.run([Job(coffee, parse_prompts(None, None, boxes, multimask=True))])[0]
    assert [m.prompt_index for m in multi.masks] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_logits_on_request(fast_engine: SamEngine, coffee):
    result = fast_engine.run(
        [Job(coffee, parse_prompts(None, None, [[10, 10, 200, 200]]), return_logits=True)]
    )[0]
    assert result.logits is not None and result.logits.shape == (1, 256, 256)


def test_automatic_masks_respect_max_masks(fast_engine: SamEngine, astronaut):
    everything = fast_engine.run([Job(astronaut, None, {**SMALL_AMG, "box_nms_thresh": 1.0})])[0]
    assert len(everything.masks) > 2
    capped = fast_engine.run([Job(astronaut, None, {**SMALL_AMG, "box_nms_thresh": 1.0, "max_masks": 2})])[0]
    assert len(capped.masks) == 2
    scores = [m.score for m in everything.masks]
    assert scores == sorted(scores, reverse=True)
    assert [m.score for m in capped.masks] == scores[:2]
    assert capped.masks[0].point_coords is not None
    for record, mask in zip(capped.masks, masks_of(capped), strict=True):
        x0, y0, x1, y1 = record.box
        ys, xs = np.nonzero(mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_batch_of_many_images_in_order(fast_engine: SamEngine, coffee, astronaut):
    images = [coffee, astronaut, coffee[::-1].copy(), astronaut[:, ::-1].copy(), coffee[:200]]
    prompts = parse_prompts(None, None, [[5, 5, 150, 150]])
    fast_engine.clear_cache()
    batched = fast_engine.run([Job(image, prompts) for image in images])
    fast_engine.clear_cache()
    single = [fast_engine.run([Job(image, prompts)])[0] for image in images]
    for one, other, image in zip(batched, single, images, strict=True):
        assert (one.height, one.width) == image.shape[:2]
        assert iou(masks_of(one)[0], masks_of(other)[0]) >= 0.99


def test_embedding_cache_skips_the_encoder(fast_engine: SamEngine, coffee):
    fast_engine.clear_cache()
    hits, misses = fast_engine.cache_hits, fast_engine.cache_misses
    fast_engine.run([Job(coffee, parse_prompts([[10, 10]], [1], None))])
    fast_engine.run([Job(coffee.copy(), parse_prompts([[300, 300]], [1], None))])
    fast_engine.run([Job(coffee, None, SMALL_AMG)])
    assert fast_engine.cache_misses - misses == 1
    assert fast_engine.cache_hits - hits == 2


def test_cache_is_lru_bounded(cache_dir):
    from predictor.registry import load_sam

    engine = SamEngine(load_sam("tiny", None, cache_dir, "cpu"), "tiny", cache_size=1)
    a = np.zeros((32, 32, 3), np.uint8)
    b = np.ones((32, 32, 3), np.uint8)
    engine.embed([a])
    engine.embed([b])
    engine.embed([a])
    assert engine.cache_misses == 3


def test_image_key_depends_on_content_and_shape():
    a = np.zeros((4, 6, 3), np.uint8)
    assert image_key(a) == image_key(a.copy())
    assert image_key(a) != image_key(a.reshape(6, 4, 3))
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_key(a) != image_key(b)


def test_tiny_outputs_are_deterministic(cache_dir, coffee):
    from predictor.registry import load_sam

    prompts = parse_prompts([[100, 120]], [1], None)
    runs = [
        SamEngine(load_sam("tiny", None, cache_dir, "cpu"), "tiny").run([Job(coffee, prompts)])[0]
        for _ in range(2)
    ]
    assert [m.score for m in runs[0].masks] == [m.score for m in runs[1].masks]


@pytest.mark.parametrize(
    "prompts",
    [
        parse_prompts([[300, 200], [50, 60]], [1, 0], None),
        parse_prompts(None, None, [[10, 10, 200, 200], [250, 50, 580, 380]]),
        parse_prompts([[100, 100]], [1], [[20, 20, 300, 300]], multimask=True),
    ],
    ids=["points", "boxes", "points+box"],
)
def test_fast_path_matches_reference_path(
    fast_engine: SamEngine, reference_engine: SamEngine, coffee, prompts
):
    fast = fast_engine.run([Job(coffee, prompts)])[0]
    reference = reference_engine.run([Job(coffee, prompts)])[0]
    assert len(fast.masks) == len(reference.masks)
    for a, b in zip(masks_of(fast), masks_of(reference), strict=True):
        assert iou(a, b) >= 0.99
    np.testing.assert_allclose([m.score for m in fast.masks], [m.score for m in reference.masks], atol=1e-3)


@pytest.mark.slow
def test_fast_automatic_masks_match_reference(fast_engine: SamEngine, reference_engine: SamEngine, astronaut):
    params = {**SMALL_AMG, "box_nms_thresh": 1.0, "min_mask_region_area": 20}
    fast = fast_engine.run([Job(astronaut, None, params)])[0]
    reference = reference_engine.run([Job(astronaut, None, params)])[0]
    assert len(fast.masks) == len(reference.masks) > 0
    for a, b in zip(masks_of(fast), masks_of(reference), strict=True):
        assert iou(a, b) >= 0.99


@pytest.mark.slow
def test_automatic_masks_over_crop_layers_match_reference(
    fast_engine: SamEngine, reference_engine: SamEngine, coffee
):
    params = {**SMALL_AMG, "points_per_side": 2, "crop_n_layers": 1, "box_nms_thresh": 1.0}
    fast = fast_engine.run([Job(coffee, None, params)])[0]
    reference = reference_engine.run([Job(coffee, None, params)])[0]
    assert len(fast.masks) == len(reference.masks) > 0
    for a, b in zip(masks_of(fast), masks_of(reference), strict=True):
        assert a.shape == (400, 600)
        assert iou(a, b) >= 0.99
    assert [m.point_coords for m in fast.masks] == [m.point_coords for m in reference.masks]


def test_candidates_are_filtered_by_predicted_iou_before_upsampling(
    fast_engine: SamEngine, reference_engine: SamEngine, astronaut
):
    everything = fast_engine.run([Job(astronaut, None, {**SMALL_AMG, "box_nms_thresh": 1.0})])[0]
    scores = sorted(m.score for m in everything.masks)
    # Between the 5th and 6th best: five candidates pass (tiny's random IoU predictions are mostly < 0).
    threshold = (scores[-5] + scores[-6]) / 2
    assert threshold > 0  # a threshold of 0 or less turns the filter off
    params = {**SMALL_AMG, "pred_iou_thresh": threshold, "box_nms_thresh": 1.0}
    fast = fast_engine.run([Job(astronaut, None, params)])[0]
    reference = reference_engine.run([Job(astronaut, None, params)])[0]
    assert fast.counts["candidates"] == 4 * 4 * 3
    assert fast.counts["upsampled"] == 5
    assert len(fast.masks) == len(reference.masks) == fast.counts["upsampled"]
    for a, b in zip(masks_of(fast), masks_of(reference), strict=True):
        assert iou(a, b) >= 0.99
    assert set(fast.stages_ms) == {"encoder", "decoder", "masks"}


@pytest.mark.slow
def test_bf16_automatic_masks_stay_close_to_the_fp32_reference(
    cache_dir, reference_engine: SamEngine, astronaut
):
    from predictor.registry import load_sam

    engine = SamEngine(load_sam("tiny", None, cache_dir, "cpu"), "tiny", precision="bf16")
    params = {**SMALL_AMG, "points_per_side": 6, "box_nms_thresh": 1.0}
    bf16 = engine.run([Job(astronaut, None, params)])[0]
    reference = reference_engine.run([Job(astronaut, None, params)])[0]
    assert engine.description["precision"] == "bf16"
    ours = masks_of(bf16)
    # Stated tolerance: 90% of the reference's top masks have a bf16 mask with IoU >= 0.9.
    top = masks_of(reference)[:50]
    matched = [max(iou(theirs, mine) for mine in ours) >= 0.9 for theirs in top]
    assert sum(matched) / len(matched) >= 0.9
