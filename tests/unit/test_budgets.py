"""The budget checks themselves (samdrop/budgets.py), and that every limit is a listed setting."""

from __future__ import annotations

import json

import pytest
from segment_anything.utils.amg import build_all_layer_point_grids

from samdrop import budgets
from samdrop.errors import ImageTooLarge, InvalidImage, InvalidPrompt, InvalidRequest
from samdrop.settings import Settings

LIMITS = (
    "SAMDROP_MAX_INPUT_BYTES",
    "SAMDROP_MAX_REQUEST_BYTES",
    "SAMDROP_MAX_INSTANCES",
    "SAMDROP_MAX_PROMPTS",
    "SAMDROP_MAX_MASKS",
    "SAMDROP_MAX_AUTO_POINTS",
    "SAMDROP_MAX_POINTS_PER_BATCH",
    "SAMDROP_DECODER_MEMORY_BYTES",
    "SAMDROP_MAX_ASPECT_RATIO",
    "SAMDROP_MAX_JSON_DEPTH",
    "SAMDROP_MAX_OBJECT_NAME_BYTES",
    "SAMDROP_MAX_IMAGE_PIXELS",
)


def test_every_limit_is_a_listed_setting():
    listed = {name for name, _, _ in Settings.describe()}
    assert set(LIMITS) <= listed


@pytest.mark.parametrize("name", ["SAMDROP_MAX_PROMPTS", "SAMDROP_MAX_INSTANCES", "SAMDROP_MAX_JSON_DEPTH"])
def test_a_limit_must_be_positive(name):
    with pytest.raises(Exception, match=name):
        Settings.from_env({name: "0"})


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("3", 0),
        ("[]", 1),
        ('{"a": [[1], {"b": {}}]}', 4),
        ('{"a": "[[[[[[[[ inside a string ]]"}', 1),
        ('["\\"[[[", [2]]', 2),  # an escaped quote does not end the string
    ],
)
def test_json_depth_counts_brackets_outside_strings(text, depth):
    json.loads(text)  # valid JSON, all of them
    assert budgets.json_depth(text) == depth


def test_json_nested_thousands_deep_is_refused_as_a_value_error_not_a_recursion_error():
    text = "[" * 3000 + "]" * 3000
    with pytest.raises(ValueError, match="SAMDROP_MAX_JSON_DEPTH=32") as info:
        budgets.loads_limited(text, max_depth=32)
    assert isinstance(info.value, budgets.JsonTooDeep)
    assert budgets.loads_limited('{"a": [[1]]}', max_depth=3) == {"a": [[1]]}


@pytest.mark.parametrize(
    ("side", "layers", "downscale"), [(32, 0, 1), (16, 1, 1), (32, 2, 2), (10, 3, 1), (64, 1, 2)]
)
def test_auto_points_counts_what_segment_anything_builds(side, layers, downscale):
    grids = build_all_layer_point_grids(side, layers, downscale)
    crops_per_layer = [4**layer for layer in range(layers + 1)]
    expected = sum(len(grid) * crops for grid, crops in zip(grids, crops_per_layer, strict=True))
    assert budgets.auto_points(side, layers, downscale) == expected


def test_auto_points_over_the_budget_are_refused_naming_the_setting():
    budgets.check_auto_points({"points_per_side": 64, "crop_n_layers": 1}, limit=65_536)
    with pytest.raises(InvalidRequest, match="SAMDROP_MAX_AUTO_POINTS=65536"):
        budgets.check_auto_points({"points_per_side": 128, "crop_n_layers": 2}, limit=65_536)


def test_points_per_batch_is_clamped_to_memory_for_the_image():
    twelve_mp = (4000, 3000)
    # The issue's figure: 256 points' full-size masks on a 12 MP photo need ~37 GB.
    assert pytest.approx(37e9, rel=0.01) == budgets.DECODER_BYTES_PER_POINT_PIXEL * 256 * 4000 * 3000
    per_point = budgets.DECODER_BYTES_PER_POINT + 12 * 4000 * 3000
    clamped = budgets.points_per_batch_for(100_000, *twelve_mp, cap=256, memory_bytes=8 * 2**30)
    assert clamped == 8 * 2**30 // per_point == 48
    assert budgets.points_per_batch_for(100_000, 64, 48, cap=256, memory_bytes=80 * 2**30) == 256
    assert budgets.points_per_batch_for(64, 64, 48, cap=256, memory_bytes=8 * 2**30) == 64
    assert budgets.points_per_batch_for(64, 100_000, 100_000, cap=256, memory_bytes=1) == 1


@pytest.mark.parametrize(("width", "height"), [(3000, 1), (1, 3000), (2000, 10)])
def test_images_that_resize_to_nothing_are_refused(width, height):
    with pytest.raises(InvalidImage, match="SAMDROP_MAX_ASPECT_RATIO=100"):
        budgets.check_image_shape(width, height, max_aspect_ratio=100, name="x.png")


def test_a_thin_image_within_the_ratio_passes_unless_it_resizes_to_zero():
    budgets.check_image_shape(1000, 10, max_aspect_ratio=100, name="x.png")
    with pytest.raises(InvalidImage):  # 1024/3000 rounds to no pixel at all, whatever the setting
        budgets.check_image_shape(3000, 1, max_aspect_ratio=10_000, name="x.png")


def test_prompt_budgets_name_their_setting():
    budgets.check_prompts(64, 64, True, max_prompts=64, max_masks=256)
    with pytest.raises(InvalidPrompt, match=r"90 boxes .* SAMDROP_MAX_PROMPTS=64"):
        budgets.check_prompts(90, 0, True, max_prompts=64, max_masks=256)
    with pytest.raises(InvalidPrompt, match=r"65 points .* SAMDROP_MAX_PROMPTS=64"):
        budgets.check_prompts(0, 65, False, max_prompts=64, max_masks=256)
    with pytest.raises(InvalidPrompt, match="9 masks, which exceeds SAMDROP_MAX_MASKS=8"):
        budgets.check_prompts(3, 1, True, max_prompts=64, max_masks=8)
    budgets.check_prompts(0, 60, True, max_prompts=64, max_masks=3)  # points alone: one prompt


def test_sizes_and_names_over_their_limits():
    budgets.check_input_bytes(None, limit=10, name="a")  # unknown: checked when it is known
    with pytest.raises(ImageTooLarge, match="SAMDROP_MAX_INPUT_BYTES=10"):
        budgets.check_input_bytes(11, limit=10, name="a")
    with pytest.raises(InvalidRequest, match="SAMDROP_MAX_REQUEST_BYTES=10"):
        budgets.check_request_bytes(11, limit=10)
    with pytest.raises(InvalidRequest, match="SAMDROP_MAX_INSTANCES=32"):
        budgets.check_instances(33, limit=32)
    budgets.check_object_name("é" * 512, limit=1024)
    with pytest.raises(InvalidRequest, match="1026 bytes, which exceeds SAMDROP_MAX_OBJECT_NAME_BYTES=1024"):
        budgets.check_object_name("é" * 513, limit=1024)  # 513 characters, 1026 UTF-8 bytes
