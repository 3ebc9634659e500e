"""``samdrop batch``: what a folder upload plans, the _READY body, and argument handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions as api_exceptions
from google.auth.exceptions import DefaultCredentialsError

from deploy.command import build_parser, main, use_local_stack, user_error
from pipeline.cli import follow, plan_batch_upload, ready_body, summary
from pipeline.listing import parse_ready
from samdrop.batches import BatchPaths
from samdrop.errors import InputNotFound, InvalidPrompt, InvalidRequest
from samdrop.settings import Settings

SETTINGS = Settings.from_env({})


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "shoot"
    (root / "day2").mkdir(parents=True)
    for name in ("a.jpg", "day2/b.PNG", "notes.txt"):
        (root / name).write_bytes(b"x")
    (root / "prompts.json").write_text('{"a.jpg": {"points": [[1, 2]]}}')
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
    with pytest.raises(InvalidPrompt, match=r"--amg has unknown parameter\(s\) \['colour'\]"):
        ready_body('{"colour": 1}', None)


def test_a_bad_prompts_file_is_refused_before_any_upload(tmp_path):
    folder, bad = _folder(tmp_path), tmp_path / "bad.json"
    bad.write_text('{"a.jpg": {"points": [[1, 2], [3, 4]], "labels": [1]}}')
    with pytest.raises(InvalidPrompt, match="has 2 points but 1 labels: give one label per point"):
        plan_batch_upload([folder], "run-1", SETTINGS, prompts=bad)
    bad.write_text("{oops")
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        plan_batch_upload([folder], "run-1", SETTINGS, prompts=bad)


def test_the_batch_command_is_registered():
    args = build_parser().parse_args(["batch", "status", "run-1"])
    assert args.batch_command == "status" and args.batch_id == "run-1"
    args = build_parser().parse_args(["batch", "start", "drop", "--id", "run-1", "--shard-size", "3"])
    assert args.paths == [Path("drop")] and args.batch_id == "run-1" and args.shard_size == 3


PATHS = BatchPaths.of(SETTINGS, "run-1")
RUNNING = {
    "batch_id": "run-1",
    "input": "gs://samdrop-local/batches/run-1/",
    "state": "running",
    "claim": {"claimed_at": "2026-11-26T13:00:00+00:00"},
    "images": 10,
    "shards": 2,
    "shards_done": 1,
    "images_done": 6,
    "images_failed": 1,
    "warnings": [],
    "elapsed_s": 75.0,
}
DONE = {
    **RUNNING,
    "state": "partial",
    "shards_done": 2,
    "images_done": 10,
    "images_failed": 1,
    "completion": {
        "images": 10,
        "succeeded": 9,
        "failed": 1,
        "outputs": {"report": "gs://b/r/report.html", "manifest": "gs://b/r/manifest.jsonl"},
        "error": None,
    },
}


def test_status_summary_reads_like_a_report():
    text = summary(RUNNING, PATHS)
    assert "batch run-1: running" in text
    assert "6 of 10 done (1 failed)" in text and "1/2 finished" in text and "1 min 15 s" in text
    done = summary(DONE, PATHS)
    assert "9 succeeded, 1 failed" in done and "report   gs://b/r/report.html" in done
    never = summary({"batch_id": "run-1", "input": "gs://x/", "state": "not started"}, PATHS)
    assert "not started" in never and "_READY last" in never


def test_watch_follows_until_the_batch_finishes(capsys):
    looks = iter([RUNNING, RUNNING, DONE])
    status = follow(lambda: next(looks), interval_s=0)
    assert status is DONE
    assert "10/10" in capsys.readouterr().err  # tqdm's bar, on stderr


def test_commands_that_use_the_bucket_find_a_running_local_stack():
    env = {"SAMDROP_BUCKET": "mine"}
    stack = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443", "SAMDROP_BUCKET": "samdrop-local"}
    use_local_stack(env, stack)
    assert env == {"SAMDROP_BUCKET": "mine", "STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443"}


@pytest.mark.parametrize(
    ("error", "says", "status"),
    [
        (DefaultCredentialsError("no ADC"), "samdrop local up", 1),
        (requests.ConnectionError("refused"), "samdrop local status", 1),
        (api_exceptions.NotFound("bucket b"), "404", 1),
        (InvalidRequest("give the batch id"), "give the batch id", 2),
    ],
)
def test_user_mistakes_are_one_line_not_a_traceback(error, says, status):
    known = user_error(error)
    assert known is not None and says in known[0] and known[1] == status
    assert user_error(ZeroDivisionError("a bug")) is None  # bugs keep their traceback


def test_a_user_mistake_exits_2_with_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMDROP_STATE_DIR", str(tmp_path))  # no local stack there
    assert main(["batch", "start", str(tmp_path / "missing"), "--id", "run-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("samdrop: error: ") and len(err.strip().splitlines()) == 1


def test_ready_body_carries_the_batch_wide_concepts_checked_as_the_batch_reads_them():
    body = json.loads(ready_body(None, None, ["solar panel", "car"]))
    assert body == {"text": ["solar panel", "car"]}
    assert parse_ready(json.dumps(body).encode(), default_shard_size=1).text == ["solar panel", "car"]
    with pytest.raises(InvalidRequest, match="--text"):
        ready_body(None, None, [""])
