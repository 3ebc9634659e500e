"""The classic backend in process: masks land on the known objects of synthetic scenes."""

from __future__ import annotations

import numpy as np
import pytest

from predictor.classic import ClassicEngine
from predictor.engine import Job
from predictor.instances import Prompts
from samdrop.images import decode_image
from samdrop.masks import mask_box, rle_to_mask
from tests.scenes import ENCODINGS, best_iou, encode_as, iou, shapes_scene

SCENE = shapes_scene()
MIN_IOU = 0.85


@pytest.fixture(scope="module")
def engine() -> ClassicEngine:
    return ClassicEngine(max_masks=50)


def masks_of(result) -> list[np.ndarray]:
    return [rle_to_mask(record.rle) for record in result.masks]


@pytest.mark.parametrize("target", SCENE.objects, ids=lambda o: o.name)
def test_a_box_prompt_masks_its_object(engine, target):
    (result,) = engine.run([Job(SCENE.image, Prompts(boxes=np.array([target.box], np.float32)))])
    (record,) = result.masks
    mask = rle_to_mask(record.rle)
    assert iou(mask, target.mask) >= MIN_IOU
    assert record.prompt_index == 0 and record.area == int(mask.sum())
    assert record.box == mask_box(mask)
    assert 0.5 < record.score <= 1 and 0.9 < record.stability_score <= 1


@pytest.mark.parametrize("target", SCENE.objects, ids=lambda o: o.name)
def test_a_foreground_point_masks_its_object(engine, target):
    prompts = Prompts(points=np.array([target.point], np.float32), labels=np.array([1]))
    (result,) = engine.run([Job(SCENE.image, prompts)])
    assert result.masks, "a points-only prompt gives at least one mask"
    assert iou(masks_of(result)[0], target.mask) >= MIN_IOU  # the best-scored reading


def test_boxes_are_one_prompt_each_in_order(engine):
    boxes = np.array([o.box for o in SCENE.objects], np.float32)
    (result,) = engine.run([Job(SCENE.image, Prompts(boxes=boxes))])
    assert [r.prompt_index for r in result.masks] == [0, 1, 2]
    for target, mask in zip(SCENE.objects, masks_of(result), strict=True):
        assert iou(mask, target.mask) >= MIN_IOU


def test_a_background_point_cuts_a_box(engine):
    disc = SCENE.objects[0]
    x0, y0, x1, y1 = disc.box
    prompts = Prompts(
        points=np.array([disc.point, (x0 + 2, y0 + 2)], np.float32),
        labels=np.array([1, 0]),
        boxes=np.array([[x0 - 15, y0 - 15, x1 + 15, y1 + 15]], np.float32),
        multimask=False,
    )
    (result,) = engine.run([Job(SCENE.image, prompts)])
    assert iou(masks_of(result)[0], disc.mask) >= MIN_IOU


def test_automatic_masks_find_every_object(engine):
    (result,) = engine.run([Job(SCENE.image)])
    masks = masks_of(result)
    for target in SCENE.objects:
        assert best_iou(target.mask, masks) >= MIN_IOU, target.name
    scores = [r.score for r in result.masks]
    assert scores == sorted(scores, reverse=True)
    for record, mask in zip(result.masks, masks, strict=True):
        ((x, y),) = record.point_coords
        assert mask[round(y), round(x)], "the point of a mask lies inside it"


def test_automatic_masks_respect_max_masks_and_min_area(engine):
    (few,) = engine.run([Job(SCENE.image, amg={"max_masks": 2})])
    assert len(few.masks) == 2
    (large,) = engine.run([Job(SCENE.image, amg={"min_mask_region_area": 20_000})])
    assert all(r.area >= 15_000 for r in large.masks)  # scaled back from the working size


def test_description_names_the_backend_and_how_to_get_sam(engine):
    info = engine.description
    assert info["type"] == "classic" and info["random_weights"] is False
    assert "samdrop models pull" in info["note"]


def test_a_box_over_the_whole_image_still_works(engine):
    height, width = SCENE.image.shape[:2]
    (result,) = engine.run(
        [Job(SCENE.image, Prompts(boxes=np.array([[0, 0, width - 1, height - 1]], np.float32)))]
    )
    assert result.masks[0].rle["size"] == [height, width]


def test_a_flat_image_gives_masks_without_errors(engine):
    flat = np.full((64, 80, 3), 128, np.uint8)
    (prompted, automatic) = engine.run(
        [Job(flat, Prompts(boxes=np.array([[10, 10, 40, 40]], np.float32))), Job(flat)]
    )
    assert prompted.width == 80 and prompted.height == 64
    assert automatic.masks[0].area == 64 * 80


@pytest.mark.parametrize("kind", ENCODINGS)
def test_every_input_encoding_is_segmented_where_it_is_displayed(engine, kind):
    image = decode_image(encode_as(SCENE, kind), max_pixels=10_000_000, name=kind)
    assert image.shape == SCENE.image.shape  # EXIF rotation undone, any mode made RGB
    boxes = np.array([o.box for o in SCENE.objects], np.float32)
    points = [Prompts(points=np.array([o.point], np.float32), labels=np.array([1])) for o in SCENE.objects]
    boxed, automatic, *pointed = engine.run(
        [Job(image, Prompts(boxes=boxes)), Job(image), *(Job(image, p) for p in points)]
    )
    automatic_masks = masks_of(automatic)
    for target, box_mask, point_result in zip(SCENE.objects, masks_of(boxed), pointed, strict=True):
        assert iou(box_mask, target.mask) >= MIN_IOU, ("box", target.name)
        assert iou(masks_of(point_result)[0], target.mask) >= MIN_IOU, ("point", target.name)
        assert best_iou(target.mask, automatic_masks) >= MIN_IOU, ("automatic", target.name)
