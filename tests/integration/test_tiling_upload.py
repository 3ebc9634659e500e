"""A large upload asking for tiling, through the real stack: fake-gcs-server → Pub/Sub emulator → the
function → the CPR predictor server (``tiny``) → stitched full-resolution masks in the bucket."""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.schema_check import check_document

from .test_event_path import events  # noqa: F401  (the module's stack fixture, started for this module)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _large_photo(width: int = 1800, height: int = 1300) -> bytes:
    rng = np.random.default_rng(12)
    pixels = np.full((height, width, 3), 60, np.uint8)
    for _ in range(40):  # flat shapes, some across tile borders
        x, y = int(rng.integers(0, width - 200)), int(rng.integers(0, height - 200))
        w, h = (int(v) for v in rng.integers(40, 200, 2))
        pixels[y : y + h, x : x + w] = rng.integers(0, 255, 3)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_a_large_upload_with_tiling_gets_stitched_full_resolution_masks(events):  # noqa: F811
    prompts = {
        # Small tiles keep the pixels few; every tile costs one encoder pass, so the grid is 4 x 3.
        "tiling": {"tile": 512, "overlap": 64},
        "outputs": ["polygons"],
        # tiny's random weights score low: keep every candidate so there is something to stitch.
        "amg": {"pred_iou_thresh": 0, "stability_score_thresh": 0, "max_masks": 40},
    }
    name = f"incoming/{uuid.uuid4().hex[:8]}/aerial.jpg"
    blob = events.upload(name, _large_photo(), prompts)

    message = events.await_completion(blob, timeout_s=540)

    assert message["status"] == "succeeded", message["error"]
    outputs = events.results(name)
    doc = check_document("masks", json.loads(outputs["masks.json"].download_as_bytes()))
    assert (doc["width"], doc["height"], doc["mode"]) == (1800, 1300, "automatic")
    assert doc["tiling"] == {"tile": 512, "overlap": 64, "tiles": 12, "grid": [4, 3]}
    assert doc["tiling"]["tiles"] >= 12
    masks = doc["masks"]
    assert 0 < len(masks) == message["mask_count"]
    for mask in masks:
        assert mask["segmentation"]["size"] == [1300, 1800]
        assert mask["tiles"] and set(mask["tiles"]) <= set(range(12))
        assert mask["polygons"]["tolerance_px"] == 1.0
    with Image.open(io.BytesIO(outputs["mask_000.png"].download_as_bytes())) as png:
        assert png.size == (1800, 1300)
    rles = [{"size": m["segmentation"]["size"], "counts": m["segmentation"]["counts"]} for m in masks]
    iou = np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)))
    np.fill_diagonal(iou, 0.0)
    assert iou.max() <= 0.9, f"near-duplicate masks left: IoU {iou.max():.3f}"
