from __future__ import annotations

import base64

import numpy as np
import pytest

from predictor.instances import check_prompts_fit, parse_instance, parse_prompts
from samdrop.errors import InvalidPrompt, InvalidRequest
from samdrop.prompts import AMG_DEFAULTS

URI = "gs://bucket/incoming/cat.jpg"


def test_points_boxes_and_defaults():
    instance = parse_instance(
        {
            "gcs_uri": URI,
            "file_path": "cat.jpg",
            "points": [[1, 2], [3, 4]],
            "labels": [1, 0],
            "boxes": [[0, 0, 5, 5]],
        }
    )
    assert instance.gcs_uri == URI and instance.image_bytes is None
    assert instance.prompts is not None
    np.testing.assert_array_equal(instance.prompts.labels, [1, 0])
    assert instance.prompts.count == 1
    assert instance.prompts.wants_multimask is False
    assert instance.mask_format == "rle"


def test_no_prompts_means_automatic_with_request_parameters():
    instance = parse_instance({"gcs_uri": URI}, {"amg": {"points_per_side": 8}, "mask_format": "png"})
    assert instance.prompts is None
    assert instance.amg == {**AMG_DEFAULTS, "points_per_side": 8}
    assert instance.mask_format == "png"


def test_legacy_shape_is_accepted():
    image = base64.b64encode(b"bytes").decode()
    instance = parse_instance(
        {"file_path": "a.jpg", "image": image, "input_point": [[5, 6]], "input_label": [1]}
    )
    assert instance.image_bytes == b"bytes"
    assert instance.prompts is not None and instance.prompts.points is not None
    assert instance.prompts.points.tolist() == [[5.0, 6.0]]
    assert instance.prompts.wants_multimask is True


@pytest.mark.parametrize(
    ("raw", "error", "text"),
    [
        ({"gcs_uri": URI, "colour": "red"}, InvalidRequest, "unknown field"),
        ({}, InvalidRequest, "exactly one image source"),
        ({"gcs_uri": URI, "image": "aGk="}, InvalidRequest, "exactly one image source"),
        ({"gcs_uri": "http://x/y.jpg"}, InvalidRequest, "gs://bucket/object"),
        ({"image": "***"}, InvalidRequest, "base64"),
        (
            {"gcs_uri": URI, "points": [[1, 2]], "labels": [1, 1]},
            InvalidPrompt,
            "1 points but 2 labels: give one label per point",
        ),
        ({"gcs_uri": URI, "points": [[1, 2]], "labels": [2]}, InvalidPrompt, "1 \\(foreground\\) or 0"),
        ({"gcs_uri": URI, "points": [[1, 2, 3]], "labels": [1]}, InvalidPrompt, "not 2 non-negative numbers"),
        ({"gcs_uri": URI, "boxes": [[10, 0, 5, 5]]}, InvalidPrompt, "x0 <= x1"),
        ({"gcs_uri": URI, "boxes": [["a", 0, 5, 5]]}, InvalidPrompt, "not 4 non-negative numbers"),
        ({"gcs_uri": URI, "labels": [1]}, InvalidPrompt, "without points"),
        ({"gcs_uri": URI, "multimask": "yes", "boxes": [[0, 0, 1, 1]]}, InvalidPrompt, "multimask"),
        ({"gcs_uri": URI, "mask_format": "jpeg"}, InvalidRequest, "mask_format"),
        ({"gcs_uri": URI, "amg": {"points_per_sid": 4}}, InvalidPrompt, "instance.amg has unknown parameter"),
        ({"gcs_uri": URI, "amg": {"pred_iou_thresh": 3}}, InvalidPrompt, "within \\[0, 1\\]"),
        ({"gcs_uri": URI, "amg": {"points_per_side": 0}}, InvalidPrompt, "1..128"),
        ("just a string", InvalidRequest, "JSON object"),
        ({"gcs_uri": URI, "return_logits": True}, InvalidRequest, "needs point or box prompts"),
        ({"gcs_uri": URI, "text": "car", "return_logits": True}, InvalidRequest, "text concepts have no"),
        (
            {"gcs_uri": URI, "boxes": [[0, 0, 5, 5]], "return_logits": True, "tiling": True},
            InvalidRequest,
            "tiled image",
        ),
    ],
)
def test_bad_instances_say_what_to_fix(raw, error, text):
    with pytest.raises(error, match=text):
        parse_instance(raw)


def test_prompts_must_fit_the_image():
    prompts = parse_prompts([[10, 10]], [1], [[0, 0, 50, 40]])
    assert prompts is not None
    check_prompts_fit(prompts, 50, 40)
    with pytest.raises(InvalidPrompt, match="outside the 20x40 image"):
        check_prompts_fit(prompts, 20, 40)
    with pytest.raises(InvalidPrompt, match="point 0"):
        check_prompts_fit(parse_prompts([[51, 3]], [1], None), 50, 40)  # type: ignore[arg-type]


def test_several_boxes_are_several_prompts():
    prompts = parse_prompts([[1, 1]], [1], [[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 3, 3]])
    assert prompts is not None and prompts.count == 3
    assert prompts.to_json()["boxes"][2] == [2.0, 2.0, 3.0, 3.0]
