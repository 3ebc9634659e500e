"""`samdrop upload` planning and prompt checks, `samdrop watch` formatting."""

import json

import pytest

from deploy.upload import format_message, parse_prompts, plan_uploads, prompts_metadata
from samdrop.errors import InputNotFound, InvalidImage, InvalidPrompt
from samdrop.storage import MAX_CUSTOM_METADATA_BYTES, custom_metadata_bytes


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


def test_prompts_over_cloud_storages_metadata_limit_are_refused_before_upload():
    # 6,000 bytes of prompts: over the old local-stack limit (3,500), within Cloud Storage's 8 KiB.
    points = [[1000.25, 2000.25]] * 300
    accepted = parse_prompts(json.dumps({"points": points, "labels": [1] * 300}))
    assert custom_metadata_bytes(prompts_metadata(accepted)) > 5000
    text = json.dumps({"points": [[1000.25, 2000.25]] * 500, "labels": [1] * 500})
    with pytest.raises(InvalidPrompt, match=f"over Cloud Storage's {MAX_CUSTOM_METADATA_BYTES} bytes"):
        parse_prompts(text)


def test_metadata_size_counts_keys_and_values_in_utf8_bytes():
    assert custom_metadata_bytes({"ab": "é", "c": ""}) == 2 + 2 + 1
    assert MAX_CUSTOM_METADATA_BYTES == 8192
