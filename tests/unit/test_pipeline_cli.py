"""``samdrop batch``: what a folder upload plans, the _READY body, and argument handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import plan_batch_upload, ready_body
from samdrop.cli import build_parser
from samdrop.errors import InputNotFound, InvalidRequest
from samdrop.settings import Settings

SETTINGS = Settings.from_env({})


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "shoot"
    (root / "day2").mkdir(parents=True)
    for name in ("a.jpg", "day2/b.PNG", "notes.txt", "prompts.json"):
        (root / name).write_bytes(b"x")
    return root


def test_a_folder_keeps_relative_paths_and_its_prompts_file(tmp_path):
    planned = plan_batch_upload([_folder(tmp_path)], "run-1", SETTINGS)
    assert [p.object_name for p in planned] == [
        "batches/run-1/a.jpg",
        "batches/run-1/day2/b.PNG",
        "batches/run-1/prompts.json",
    ]


def test_an_explicit_prompts_file_replaces_the_folders(tmp_path):
    extra = tmp_path / "mine.json"
    extra.write_text("{}")
    planned = plan_batch_upload([_folder(tmp_path)], "run-1", SETTINGS, prompts=extra)
    assert [p.source for p in planned if p.object_name.endswith("prompts.json")] == [extra]


@pytest.mark.parametrize("batch_id", ["", "a/b", "-x", "x" * 129])
def test_bad_batch_ids_are_refused(tmp_path, batch_id):
    with pytest.raises(InvalidRequest, match="batch id"):
        plan_batch_upload([_folder(tmp_path)], batch_id, SETTINGS)


def test_nothing_to_upload_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFound, match="no images"):
        plan_batch_upload([tmp_path / "empty"], "run-1", SETTINGS)
    with pytest.raises(InputNotFound, match="does not exist"):
        plan_batch_upload([tmp_path / "missing"], "run-1", SETTINGS)


def test_same_name_twice_is_refused(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.jpg").write_bytes(b"x")
    with pytest.raises(InvalidRequest, match="same object"):
        plan_batch_upload([tmp_path / "one", tmp_path / "one" / "a.jpg"], "run-1", SETTINGS)


def test_ready_body():
    assert ready_body(None, None) == b""
    body = json.loads(ready_body('{"points_per_side": 8}', 16))
    assert body == {"amg": {"points_per_side": 8}, "shard_size": 16}
    with pytest.raises(InvalidRequest, match="--amg"):
        ready_body("{", None)


def test_the_batch_command_is_registered():
    args = build_parser().parse_args(["batch", "status", "run-1"])
    assert args.target == ["status", "run-1"] and args.batch_id is None
