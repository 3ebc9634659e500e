"""The custom prediction routine, step by step and without HTTP."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from PIL import Image

from predictor.cpr import SamRoutine
from predictor.engine import CPU_GRID_EAGER, SamEngine
from samdrop.errors import InputNotFound, InvalidRequest
from samdrop.masks import png_to_mask, rle_to_mask
from samdrop.settings import Settings
from tests.helpers import encode


@pytest.fixture
def objects(coffee) -> dict[str, bytes]:
    return {
        "gs://b/incoming/coffee.jpg": encode(coffee),
        "gs://b/incoming/big.png": encode(Image.new("L", (3000, 3000)), "PNG"),
    }


@pytest.fixture
def routine(fast_engine: SamEngine, objects, cache_dir) -> SamRoutine:
    def read(uri: str, generation: int | None = None) -> bytes:
        if uri not in objects:
            raise InputNotFound(f"{uri} does not exist")
        return objects[uri]

    settings = Settings.from_env({}, max_image_pixels=4_000_000, cache_dir=cache_dir)
    predictor = SamRoutine()
    predictor.setup(settings, fast_engine, read)
    return predictor


def call(routine: SamRoutine, body: dict) -> list[dict]:
    return routine.postprocess(routine.predict(routine.preprocess(body)))["predictions"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_good_and_bad_instances_side_by_side(routine, coffee):
    good = {
        "gcs_uri": "gs://b/incoming/coffee.jpg",
        "file_path": "incoming/coffee.jpg",
        "points": [[300, 200]],
        "labels": [1],
    }
    cases: list[tuple[dict[str, Any], str | None]] = [
        (good, None),
        ({"image": b64(b"garbage bytes"), "file_path": "junk.jpg"}, "invalid_image"),
        ({"image": "", "file_path": "empty.jpg"}, "invalid_image"),
        ({"gcs_uri": "gs://b/incoming/missing.jpg"}, "not_found"),
        ({"gcs_uri": "gs://b/incoming/big.png"}, "image_too_large"),
        ({**good, "points": [[900, 10]]}, "invalid_prompt"),
        ({**good, "labels": [1, 0]}, "invalid_prompt"),
        ({"gcs_uri": good["gcs_uri"], "boxes": [[50, 50, 10, 10]]}, "invalid_prompt"),
        ({**good, "model": "vit_q"}, "invalid_request"),
        (
            {
                "image": b64(encode(coffee)),
                "file_path": "legacy.jpg",
                "input_point": [[10, 10]],
                "input_label": [1],
            },
            None,
        ),
    ]
    predictions = call(routine, {"instances": [raw for raw, _ in cases]})
    assert len(predictions) == len(cases)
    for prediction, (raw, code) in zip(predictions, cases, strict=True):
        if code is None:
            assert "error" not in prediction, prediction
            assert (prediction["width"], prediction["height"]) == (600, 400)
            assert len(prediction["masks"]) == 3
            assert prediction["scores"] == [m["score"] for m in prediction["masks"]]
            assert prediction["model"]["random_weights"] is True
            assert prediction["file_path"] == raw["file_path"]
        else:
            assert prediction["error"]["code"] == code, prediction
            assert prediction["error"]["message"]


def test_automatic_masks_with_request_parameters(routine):
    body = {
        "instances": [{"gcs_uri": "gs://b/incoming/coffee.jpg"}],
        "parameters": {
            "amg": {"points_per_side": 4, "pred_iou_thresh": 0, "stability_score_thresh": 0, "max_masks": 3}
        },
    }
    (prediction,) = call(routine, body)
    assert prediction["mode"] == "automatic"
    assert 0 < len(prediction["masks"]) <= 3
    assert prediction["amg"]["points_per_side"] == 4


def test_server_default_grid_applies_under_the_request(fast_engine, objects, cache_dir):
    settings = Settings.from_env({"SAMDROP_AMG_POINTS_PER_SIDE": "2"}, cache_dir=cache_dir)
    predictor = SamRoutine()
    predictor.setup(settings, fast_engine, lambda uri, generation: objects[uri])
    instance = {"gcs_uri": "gs://b/incoming/coffee.jpg", "amg": {"pred_iou_thresh": 0}}
    (default,) = call(predictor, {"instances": [instance]})
    (asked,) = call(predictor, {"instances": [{**instance, "amg": {"points_per_side": 3}}]})
    assert default["amg"]["points_per_side"] == 2 and default["amg"]["pred_iou_thresh"] == 0
    assert asked["amg"]["points_per_side"] == 3
    assert asked["amg"]["pred_iou_thresh"] == 0.88  # left out: the model's own, recorded as used


def test_auto_grid_comes_from_the_engine(fast_engine, objects, cache_dir):
    settings = Settings.from_env({"SAMDROP_AMG_POINTS_PER_SIDE": "auto"}, cache_dir=cache_dir)
    predictor = SamRoutine()
    predictor.setup(settings, fast_engine, lambda uri, generation: objects[uri])
    (slot,) = predictor.preprocess({"instances": [{"gcs_uri": "gs://b/incoming/coffee.jpg"}]})
    assert slot.instance is not None
    # fast_engine runs on a CPU, not compiled: the eager CPU grid.
    assert slot.instance.amg["points_per_side"] == fast_engine.auto_points_per_side == CPU_GRID_EAGER
    assert fast_engine.description["precision"] == "fp32" and fast_engine.description["compiled"] is False


def test_png_masks_and_logits(routine):
    body = {
        "instances": [
            {
                "gcs_uri": "gs://b/incoming/coffee.jpg",
                "boxes": [[10, 10, 300, 300]],
                "mask_format": "png",
                "return_logits": True,
            },
            {"gcs_uri": "gs://b/incoming/coffee.jpg", "boxes": [[10, 10, 300, 300]]},
        ]
    }
    png, rle = call(routine, body)
    mask = png_to_mask(base64.b64decode(png["masks"][0]["segmentation"]))
    assert mask.shape == (400, 600)
    np.testing.assert_array_equal(mask, rle_to_mask(rle["masks"][0]["segmentation"]))
    logits = png["logits"][0]
    assert logits["shape"] == [256, 256]
    assert len(base64.b64decode(logits["b64"])) == 256 * 256 * 2
    assert "logits" not in rle


@pytest.mark.parametrize("body", [[], {"instances": "x"}, {"instances": [], "parameters": 3}])
def test_malformed_request_is_rejected_whole(routine, body):
    with pytest.raises(InvalidRequest):
        routine.preprocess(body)


def test_load_builds_tiny_from_environment(tmp_path):
    predictor = SamRoutine()
    env = {"SAMDROP_CACHE_DIR": str(tmp_path), "SAMDROP_DEVICE": "cpu", "SAMDROP_MODEL_TYPE": "tiny"}
    predictor.load("", env=env)
    assert predictor.engine is not None and predictor.engine.model_type == "tiny"


def test_load_without_weights_builds_classic(tmp_path):
    predictor = SamRoutine()
    predictor.load("", env={"SAMDROP_CACHE_DIR": str(tmp_path)})
    assert predictor.engine is not None and predictor.engine.description["type"] == "classic"


def test_timings_split_model_from_reading(routine):
    body = {"instances": [{"gcs_uri": "gs://b/incoming/coffee.jpg", "boxes": [[10, 10, 300, 300]]}]}
    (prediction,) = call(routine, body)
    timings = prediction["timings_ms"]
    stages = timings["encoder"] + timings["decoder"] + timings["postprocess"]
    assert timings["model"] == pytest.approx(stages, abs=0.05)
    assert timings["total"] == pytest.approx(timings["model"] + timings["read_decode"], abs=0.05)


def test_logits_for_an_image_the_size_rule_would_tile_are_refused_before_the_model(routine, monkeypatch):
    """return_logits has no one frame on a tiled image: over SAMDROP_TILE_ABOVE_PIXELS it is a clear
    error for that instance (its neighbour still runs), and "tiling": false gets the logits."""
    monkeypatch.setattr(routine, "settings", routine.settings.replace(tile_above_pixels=100_000))
    box = {"gcs_uri": "gs://b/incoming/coffee.jpg", "boxes": [[10, 10, 300, 300]], "return_logits": True}
    refused, plain, whole = call(routine, {"instances": [box, {**box, "return_logits": False},
                                                          {**box, "tiling": False}]})  # fmt: skip
    assert refused["error"]["code"] == "invalid_request"
    assert "SAMDROP_TILE_ABOVE_PIXELS=100000" in refused["error"]["message"]
    assert plain["tiling"] is not None and "logits" not in plain
    assert whole["tiling"] is None and whole["logits"][0]["shape"] == [256, 256]
