"""`samdrop upload` planning and prompt checks, `samdrop watch` formatting."""

import json

import pytest

from deploy.upload import format_message, parse_prompts, plan_uploads
from samdrop.errors import InputNotFound, InvalidImage, InvalidPrompt


def test_parse_prompts_accepts_the_documented_shape():
    text = '{"points": [[10, 20.5], [3, 4]], "labels": [1, 0], "boxes": [[0, 0, 5, 5]]}'
    assert parse_prompts(text) == {"points": [[10, 20.5], [3, 4]], "labels": [1, 0], "boxes": [[0, 0, 5, 5]]}
    assert parse_prompts('{"boxes": [[1, 2, 3, 4]]}') == {"boxes": [[1, 2, 3, 4]]}
    # Labels default to foreground; automatic-mask parameters travel as given.
    assert parse_prompts('{"points": [[1, 2]], "amg": {"points_per_side": 8}}') == {
        "points": [[1, 2]],
        "labels": [1],
        "amg": {"points_per_side": 8},
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"points": [[1, 2]], "labels": [1], "multimask": 1}', "true or false"),
        ('{"point": [[1, 2]]}', "unknown key"),
        ('{"points": [[1, 2]], "labels": []}', "1 points but 0 labels"),
        ("{}", "must not be empty"),
        ('{"points": [[1, 2, 3]], "labels": [1]}', "not 2 non-negative numbers"),
        ('{"points": [[-1, 2]], "labels": [1]}', "non-negative"),
        ('{"points": [[1, 2]], "labels": [2]}', "1 \\(foreground\\) or 0"),
        ('{"points": [[1, 2]], "labels": [true]}', "1 \\(foreground\\) or 0"),
        ('{"boxes": [[5, 0, 1, 1]]}', "x0 <= x1"),
        ('{"boxes": [1, 2, 3, 4]}', "not 4 non-negative numbers"),
    ],
)
def test_parse_prompts_rejects_with_a_fix(text, message):
    with pytest.raises(InvalidPrompt, match=message):
        parse_prompts(text)


def test_plan_uploads_keeps_folder_structure_and_skips_non_images(tmp_path):
    drop = tmp_path / "pets"
    (drop / "cats").mkdir(parents=True)
    (drop / "a.JPG").write_bytes(b"x")
    (drop / "cats" / "b.png").write_bytes(b"x")
    (drop / "notes.txt").write_text("skip me")
    single = tmp_path / "dog.webp"
    single.write_bytes(b"x")
    names = [p.object_name for p in plan_uploads([drop, single], "incoming/")]
    assert names == ["incoming/pets/a.JPG", "incoming/pets/cats/b.png", "incoming/dog.webp"]


def test_plan_uploads_refuses_what_it_cannot_upload(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputNotFound, match="does not exist"):
        plan_uploads([tmp_path / "missing.jpg"], "incoming/")
    with pytest.raises(InputNotFound, match="no images found"):
        plan_uploads([tmp_path / "empty"], "incoming/")
    with pytest.raises(InvalidImage, match="image file extension"):
        plan_uploads([tmp_path / "notes.txt"], "incoming/")


def test_format_message_prints_the_body_or_wraps_it():
    assert json.loads(format_message(b'{"kind": "image", "status": "succeeded"}', {"kind": "image"})) == {
        "kind": "image",
        "status": "succeeded",
    }
    assert json.loads(format_message(b"\xffnot json", {"a": "b"})) == {
        "data": "\ufffdnot json",
        "attributes": {"a": "b"},
    }


def test_prompts_too_large_for_object_metadata_are_refused_before_upload():
    boxes = [[1000.5, 1000.5, 2000.5, 2000.5]] * 64  # within SAMDROP_MAX_PROMPTS, ~2.3 KB
    assert len(parse_prompts(json.dumps({"boxes": boxes}))["boxes"]) == 64
    points = [[1000.25, 2000.25]] * 200
    with pytest.raises(InvalidPrompt, match="bytes as object metadata"):
        parse_prompts(json.dumps({"points": points, "labels": [1] * 200}))
