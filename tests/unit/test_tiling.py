"""Tiling: the grid, full-size RLE from crops, stitching with a stand-in mask source, prompt windows,
and the tiny engine through the predictor routine and a batch shard."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.listing import BatchOptions, PlanItem, PlanSummary
from pipeline.report import build_report, summarize
from pipeline.shard import ShardWorker
from predictor.cpr import SamRoutine
from predictor.engine import Job
from predictor.instances import Prompts, parse_prompts, prompts_from
from predictor.tiling import (
    Tiling,
    crop_to_rle,
    prompt_windows,
    resolve_tiling,
    run_jobs,
    segment_tiles,
    segment_windows,
    tile_grid,
)
from samdrop.batches import BatchPaths
from samdrop.documents import Prediction, TilingRecord
from samdrop.errors import InvalidPrompt
from samdrop.layout import output_paths
from samdrop.masks import mask_box, mask_to_rle, rle_to_mask
from samdrop.outputs import write_masks
from samdrop.prompts import check_prompts
from samdrop.settings import Settings
from tests.helpers import encode
from tests.scenes import ObjectPixels

from .pipeline_fakes import BUCKET, RESULTS, TreeStore

SETTINGS = Settings.from_env({"SAMDROP_BUCKET": BUCKET}, io_threads=2)


def _scene(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image with a ring-shaped object (a hole, and arms) around the middle and a small square."""
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    cx, cy = width // 2, height // 2
    big = ((yy - cy) ** 2 + (xx - cx) ** 2 < 260**2) & ((yy - cy) ** 2 + (xx - cx) ** 2 > 60**2)
    big |= (abs(yy - cy - 40) < 15) & (abs(xx - cx) < 420)  # an arm reaching far into two tiles
    small = np.zeros((height, width), dtype=bool)
    small[40:90, 50:120] = True
    image[big] = (255, 1, 0)
    image[small] = (255, 2, 0)
    return image, big, small


def test_the_grid_covers_the_image_with_overlapping_tiles():
    grid = tile_grid(4000, 3000, Tiling(1024, 128))
    assert (grid.columns, grid.rows, len(grid.tiles)) == (5, 4, 20)
    covered = np.zeros((3000, 4000), dtype=np.uint8)
    for tile in grid.tiles:
        assert tile.x1 - tile.x0 == 1024 and tile.y1 - tile.y0 == 1024
        covered[tile.y0 : tile.y1, tile.x0 : tile.x1] += 1
    assert covered.min() >= 1
    right = grid.tiles[1]
    band = grid.tiles[0].intersect(right)
    assert band is not None and band[2] - band[0] >= 128
    assert len(tile_grid(500, 300, Tiling(1024, 128)).tiles) == 1


def test_tiling_is_asked_or_follows_the_size_rule():
    settings = Settings.from_env({"SAMDROP_TILE_ABOVE_PIXELS": "1000000"})
    assert resolve_tiling(None, 1000, 1000, settings) is None
    assert resolve_tiling(None, 1001, 1000, settings) == Tiling(1024, 128)
    assert resolve_tiling(False, 5000, 5000, settings) is None
    assert resolve_tiling({"tile": 512}, 10, 10, settings) == Tiling(512, 128)
    assert resolve_tiling(None, 9000, 9000, SETTINGS) is None  # off unless set
    assert check_prompts({"tiling": {"tile": 512, "overlap": 64}}, where="p") == {
        "tiling": {"tile": 512, "overlap": 64}
    }
    for bad in ({"tile": 100, "overlap": 50}, {"tile": 32}, "yes", {"size": 3}):
        with pytest.raises(InvalidPrompt, match="tiling"):
            check_prompts({"tiling": bad}, where="p")


@pytest.mark.parametrize(("x0", "y0", "h", "w"), [(0, 0, 5, 7), (3, 2, 6, 4), (10, 13, 7, 5), (0, 4, 16, 15)])
def test_a_crop_encodes_to_the_rle_of_the_full_mask(x0, y0, h, w):
    rng = np.random.default_rng(x0 + y0)
    crop = rng.random((h, w)) > 0.5
    crop[0, 0] = True
    full = np.zeros((20, 15), dtype=bool)
    full[y0 : y0 + h, x0 : x0 + w] = crop
    assert crop_to_rle(crop, x0, y0, 20, 15) == mask_to_rle(full)
    for block in (1, 2, 3):  # column blocks whose runs continue across block edges
        assert crop_to_rle(crop, x0, y0, 20, 15, block=block) == mask_to_rle(full)
    solid = np.ones((20, 15), dtype=bool)
    assert crop_to_rle(solid, 0, 0, 20, 15, block=4) == mask_to_rle(solid)
    assert crop_to_rle(crop[:0], 0, 0, 20, 15) == mask_to_rle(np.zeros((20, 15), dtype=bool))


def test_an_object_across_four_tiles_comes_out_as_one_mask_equal_to_it():
    image, big, small = _scene(1800, 1800)
    engine = ObjectPixels()
    result = segment_tiles(engine, Job(image, None, {}), Tiling(1024, 128))
    assert engine.shapes == [(1024, 1024)] * 4  # native resolution, never the whole image
    assert result.tiling == {"tile": 1024, "overlap": 128, "tiles": 4, "grid": [2, 2]}
    masks = [rle_to_mask(m.rle) for m in result.masks]
    assert len(masks) == 2 and all(m.shape == (1800, 1800) for m in masks)
    stitched = next(r for r, m in zip(result.masks, masks, strict=True) if (m & big).any())
    assert (rle_to_mask(stitched.rle) == big).all()
    assert stitched.tiles == [0, 1, 2, 3] and stitched.area == int(big.sum())
    assert stitched.box == mask_box(big)
    other = next(r for r in result.masks if r is not stitched)
    assert (rle_to_mask(other.rle) == small).all() and other.tiles == [0]


def test_stitched_masks_are_capped_by_the_engine_and_the_request():
    image, _, _ = _scene(1800, 1800)  # two objects
    engine = ObjectPixels()
    engine.max_masks = 1  # type: ignore[attr-defined]  # SAMDROP_MAX_MASKS of the engine
    assert len(segment_tiles(engine, Job(image, None, {}), Tiling(1024, 128)).masks) == 1
    engine.max_masks = 5  # type: ignore[attr-defined]
    assert len(segment_tiles(engine, Job(image, None, {"max_masks": 1}), Tiling(1024, 128)).masks) == 1


def test_an_object_inside_an_overlap_is_not_left_twice():
    image = np.full((500, 1000, 3), 40, dtype=np.uint8)
    obj = np.zeros((500, 1000), dtype=bool)
    obj[200:260, 470:520] = True  # inside the band shared by both tiles (x 448..552)
    image[obj] = (255, 1, 0)
    result = segment_tiles(ObjectPixels(), Job(image, None, {}), Tiling(552, 104))
    assert result.tiling is not None and result.tiling["tiles"] == 2
    assert len(result.masks) == 1 and (rle_to_mask(result.masks[0].rle) == obj).all()
    assert result.masks[0].tiles == [0, 1]


def _concepts(raw: dict) -> Prompts | None:
    return prompts_from(check_prompts(raw, where="prompts") or {})


def test_text_concepts_run_on_every_tile_and_stitch_per_concept():
    image, big, small = _scene(1800, 1800)
    image[big & (np.arange(1800)[None, :] >= 900)] = (255, 3, 0)  # the ring's right half: another concept
    # "loop" finds the same object as "ring": two concepts, two masks, never merged or deduplicated
    engine = ObjectPixels(concepts={"ring": 1, "square": 2, "half": 3, "absent": 9, "loop": 1})
    job = Job(image, _concepts({"text": ["half", "ring", "absent", "square", "loop"]}), {})
    (result,) = run_jobs(engine, [job], [Tiling(1024, 128)])
    assert engine.shapes == [(1024, 1024)] * 4 and all(p.text for p in engine.prompts_seen)
    found = [(m.label, m.prompt_index) for m in result.masks]
    assert found == [("half", 0), ("ring", 1), ("square", 3), ("loop", 4)]
    half, ring, square, loop = (rle_to_mask(m.rle) for m in result.masks)
    assert (loop == ring).all()
    # the two concepts touch along x = 900 and each is stitched from its own pieces only
    assert (ring == (big & (np.arange(1800)[None, :] < 900))).all()
    assert (half == (big & (np.arange(1800)[None, :] >= 900))).all()
    assert (square == small).all() and result.masks[2].tiles == [0]
    assert result.masks[0].tiles == [0, 1, 2, 3] and result.masks[0].point_coords is None


def test_text_concepts_with_exemplar_boxes_run_whole():
    image, _, small = _scene(1800, 1800)
    engine = ObjectPixels(concepts={"square": 2})
    job = Job(image, _concepts({"text": ["square"], "boxes": [[50, 40, 119, 89]]}), {})
    (result,) = run_jobs(engine, [job], [Tiling(1024, 128)])
    assert engine.shapes == [(1800, 1800)] and result.tiling is None
    assert [m.label for m in result.masks] == ["square"] and (rle_to_mask(result.masks[0].rle) == small).all()


def test_each_prompt_runs_on_a_window_around_it_at_native_resolution():
    image, big, _ = _scene(3000, 2000)
    box = [1400, 900, 1600, 1100]
    prompts = parse_prompts([[1500.0, 1000.0]], [1], [box, [10, 10, 3000, 2000]])
    assert prompts is not None
    windows = prompt_windows(prompts, 3000, 2000, Tiling(512, 64))
    assert (windows[0].x1 - windows[0].x0, windows[0].y1 - windows[0].y0) == (512, 512)
    assert windows[0].x0 <= 1400 and windows[0].x1 >= 1600
    assert (windows[1].x0, windows[1].y0, windows[1].x1, windows[1].y1) == (0, 0, 3000, 2000)
    engine = ObjectPixels()
    result = segment_windows(engine, Job(image, prompts), Tiling(512, 64))
    assert engine.shapes == [(512, 512), (2000, 3000)]
    first = next(m for m in result.masks if m.prompt_index == 0)
    inside = np.zeros_like(big)
    inside[900:1101, 1400:1601] = True
    assert (rle_to_mask(first.rle) == (big & inside)).all()
    assert result.tiling is not None and result.tiling["tiles"] == 2


@pytest.mark.slow
def test_the_routine_tiles_an_instance_that_asks(fast_engine, cache_dir):
    image = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    settings = Settings.from_env({}, cache_dir=cache_dir)
    routine = SamRoutine()
    routine.setup(settings, fast_engine)
    body = {
        "instances": [
            {
                "image": base64.b64encode(encode(image, "PNG")).decode(),
                "tiling": {"tile": 96, "overlap": 16},
                "amg": {"points_per_side": 2, "pred_iou_thresh": 0, "stability_score_thresh": 0},
            }
        ]
    }
    (prediction,) = routine.postprocess(routine.predict(routine.preprocess(body)))["predictions"]
    assert prediction["tiling"] == {"tile": 96, "overlap": 16, "tiles": 6, "grid": [3, 2]}
    assert prediction["masks"]
    for mask in prediction["masks"]:
        assert mask["segmentation"]["size"] == [150, 200] and mask["tiles"]


@pytest.mark.slow
def test_a_batch_shard_records_the_tiling_in_masks_json(fast_engine):
    store = TreeStore()
    image = np.full((130, 160, 3), 60, dtype=np.uint8)
    image[20:70, 30:120] = (200, 40, 40)
    generation = store.put(BUCKET, "batches/b1/big.png", encode(image, "PNG"), content_type="image/png")
    worker = ShardWorker(
        paths=BatchPaths.of(SETTINGS, "b1"),
        shard=0,
        settings=SETTINGS,
        store=store,
        engine=fast_engine,
        options=BatchOptions(
            amg={"points_per_side": 2, "pred_iou_thresh": 0, "stability_score_thresh": 0},
            tiling={"tile": 96, "overlap": 24},
        ),
    )
    (line,) = worker.run([PlanItem("batches/b1/big.png", generation, None)]).lines
    assert line["status"] == "succeeded"
    doc = json.loads(store.objects[(RESULTS, "results/batches/b1/big.png/masks.json")].data)
    assert doc["tiling"] == {"tile": 96, "overlap": 24, "tiles": 4, "grid": [2, 2]}
    assert doc["mask_count"] > 0 and all(m["segmentation"]["size"] == [130, 160] for m in doc["masks"])
    assert all(set(m["tiles"]) <= {0, 1, 2, 3} for m in doc["masks"])
    assert line["tiling"] == doc["tiling"]
    markdown = _report_markdown([line])
    assert "from 4 tiles (2x2, 96 px / 24 overlap)" in markdown


def test_the_overlay_of_a_tiled_image_shows_its_tile_grid():
    store = TreeStore()
    image = np.full((130, 160, 3), 60, dtype=np.uint8)
    paths = output_paths(SETTINGS, "incoming/big.png")
    tiling = TilingRecord(tile=96, overlap=24, tiles=4, grid=[2, 2])
    prediction = Prediction(width=160, height=130, masks=[], mode="automatic", tiling=tiling)
    doc = write_masks(
        store, paths, {}, image=image, prediction=prediction, input_uri="gs://b/x", generation=7
    )
    assert doc.tiling == tiling and doc.to_json()["tiling"] == tiling
    with Image.open(io.BytesIO(store.objects[(RESULTS, paths.overlay)].data)) as jpeg:
        overlay = np.asarray(jpeg.convert("L")).astype(int)
    # White lines along the tiles' edges: x = 0, 95 (first column), 64, 159 (second); y = 0, 95, 34, 129.
    for x in (0, 64, 95, 159):
        assert np.median(overlay[:, x]) > 200
    for y in (0, 34, 95, 129):
        assert np.median(overlay[y, :]) > 200
    assert np.median(overlay[:, 40]) < 80 and np.median(overlay[60, :]) < 80


def _report_markdown(lines: list[dict]) -> str:
    plan = PlanSummary("b1", "gs://b/batches/b1/", 9, BatchOptions(), len(lines), 1, len(lines), [], None, "")
    summary = summarize(plan, lines, [])
    files = {f.name: f for f in build_report(summary, lines, {})}
    return files["report.md"].data.decode()
