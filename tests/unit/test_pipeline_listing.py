"""Listing, options, prompts and sharding of a batch (pure parts and plan_batch over an in-memory store)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.listing import (
    BatchOptions,
    build_plan,
    existing_plan,
    parse_prompts_file,
    parse_ready,
    plan_batch,
    read_shard,
    shard_size_for,
    write_plan,
)
from samdrop.batches import BatchPaths
from samdrop.errors import InvalidPrompt, InvalidRequest, PermanentError
from samdrop.layout import GENERATION_KEY
from samdrop.settings import Settings
from samdrop.storage import ObjectInfo

from .pipeline_fakes import BUCKET, TreeStore, png

SETTINGS = Settings.from_env({"SAMDROP_BUCKET": BUCKET})
PATHS = BatchPaths.of(SETTINGS, "b1")


def _objects(*names: str, content_type: str = "image/png") -> dict[str, ObjectInfo]:
    return {
        f"batches/b1/{n}": ObjectInfo(f"batches/b1/{n}", 100 + i, {}, content_type, 10)
        for i, n in enumerate(names)
    }


def test_empty_ready_body_means_defaults():
    options = parse_ready(b"  \n", default_shard_size=32)
    assert options == BatchOptions(shard_size=32)


def test_ready_body_sets_prompts_file_amg_shard_size_and_multimask():
    body = json.dumps(
        {"prompts": "p.json", "amg": {"points_per_side": 8}, "shard_size": 5, "multimask": False}
    )
    options = parse_ready(body.encode(), default_shard_size=64)
    assert (options.prompts, options.prompts_named, options.amg, options.shard_size, options.multimask) == (
        "p.json",
        True,
        {"points_per_side": 8},
        5,
        False,
    )


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must hold a JSON object"),
        (b'{"shards": 3}', "unknown key(s) ['shards']"),
        (b'{"shard_size": 0}', "shard_size"),
        (b'{"shard_size": true}', "shard_size"),
        (b'{"multimask": "yes"}', "multimask"),
        (b'{"prompts": "/abs.json"}', "prompts"),
        (b'{"amg": {"points_per_side": 0}}', "points_per_side"),
        (b'{"amg": {"colour": 1}}', "amg has unknown parameter"),
        (b'{"text": []}', '"text" is empty'),
        (b'{"text": ["car", "car"]}', "listed twice"),
    ],
)
def test_bad_ready_bodies_say_what_to_fix(body, fragment):
    with pytest.raises(InvalidRequest) as caught:
        parse_ready(body, default_shard_size=8, where="gs://b/batches/b1/_READY")
    assert fragment in caught.value.message
    assert "_READY" in caught.value.message


def test_prompts_file_entries_are_checked_one_by_one():
    data = json.dumps(
        {
            "a.png": {"points": [[1, 2]]},
            "b.png": {"points": [[1, 2]], "labels": [1, 0]},
            "c.png": {"boxes": [[5, 5, 1, 1]]},
            "d.png": {},
            "e.png": {"boxes": [[0, 0, 10, 10]], "multimask": True},
            "f.png": {"multimask": True},
            "g.png": {"boxes": [[0, 0, 10, 10]], "amg": {"points_per_side": 4}},
            "h.png": {"points": [[-1, 2]]},
        }
    ).encode()
    entries = parse_prompts_file(data, where="prompts.json")
    assert entries["a.png"] == {"points": [[1, 2]], "labels": [1]}  # labels default to foreground
    assert entries["e.png"] == {"boxes": [[0, 0, 10, 10]], "multimask": True}
    for bad in ("b.png", "c.png", "d.png", "f.png", "g.png", "h.png"):
        entry = entries[bad]
        assert isinstance(entry, InvalidPrompt)
        assert bad in entry.message


@pytest.mark.parametrize("data", [b"{", b'["a.png"]', b"\xff\xfe"])
def test_a_malformed_prompts_file_fails_the_batch(data):
    with pytest.raises(InvalidRequest, match=r"prompts\.json"):
        parse_prompts_file(data, where="gs://b/batches/b1/prompts.json")


def test_build_plan_sorts_shards_and_attaches_prompts_and_errors():
    objects = {
        **_objects("c.png", "a.png", "sub/b.png", "_READY", "prompts.json", "folder/"),
        **_objects("notes.txt", content_type="text/plain"),
    }
    prompts: dict[str, dict[str, Any] | PermanentError] = {
        "a.png": {"points": [[1, 1]], "labels": [1]},
        "sub/b.png": InvalidPrompt("bad entry"),
        "gone.png": {"points": [[1, 1]], "labels": [1]},
    }
    plan = build_plan(PATHS, 7, objects, BatchOptions(shard_size=2), prompts)
    names = [[item.name.removeprefix("batches/b1/") for item in shard] for shard in plan.shards]
    assert names == [["a.png", "c.png"], ["notes.txt", "sub/b.png"]]
    a, c, notes, b = [item for shard in plan.shards for item in shard]
    assert a.prompts == {"points": [[1, 1]], "labels": [1]} and a.error is None
    assert c.prompts is None and c.error is None
    assert notes.error is not None and notes.error["code"] == "unsupported_format"
    assert b.error == {"code": "invalid_prompt", "message": "bad entry"}
    assert plan.images == 4 and plan.error is None
    assert plan.warnings == ["prompts.json has prompts for 1 file(s) not in the batch: gone.png"]
    assert a.generation == objects["batches/b1/a.png"].generation


@pytest.mark.parametrize(
    ("images", "requested", "workers", "size"),
    [
        (50, 0, 4, 50),  # below 2 x 64: one shard, one task start
        (200, 0, 4, 67),  # 3 shards of >= 64, not 4 of 50
        (1000, 0, 4, 250),  # one wave of 4 workers
        (1000, 0, 1, 1000),
        (10_000, 0, 4, 2500),
        (50_000, 0, 2, 10_000),  # no shard above MAX_SHARD_SIZE: 5 shards, 2 at a time
        (1000, 32, 4, 32),  # a size that was asked for is kept
        (0, 0, 4, 1),
    ],
)
def test_automatic_shard_size_spreads_a_batch_over_one_wave_of_workers(
    images: int, requested: int, workers: int, size: int
) -> None:
    assert shard_size_for(images, requested, workers) == size


def test_plan_without_a_shard_size_splits_evenly_over_the_workers():
    objects = _objects(*(f"img_{i:03d}.png" for i in range(300)))
    plan = build_plan(PATHS, 7, objects, BatchOptions(), {}, workers=4)
    assert [len(shard) for shard in plan.shards] == [75, 75, 75, 75]
    assert plan.summary().shard_size == 75
    one = build_plan(PATHS, 7, objects, BatchOptions(), {}, workers=1)
    assert [len(shard) for shard in one.shards] == [300]


def test_a_folder_without_images_is_a_batch_error():
    plan = build_plan(PATHS, 7, _objects("_READY"), BatchOptions(), {})
    assert plan.shards == [] and plan.error is not None
    assert plan.error["code"] == "empty_batch" and "gs://samdrop-local/batches/b1/" in plan.error["message"]


def test_plan_batch_reads_the_marker_generation_and_prompts_from_storage():
    store = TreeStore()
    store.put(BUCKET, "batches/b1/x.png", png(), content_type="image/png")
    store.put(BUCKET, "batches/b1/p.json", json.dumps({"x.png": {"boxes": [[0, 0, 5, 5]]}}).encode())
    first = store.put(BUCKET, "batches/b1/_READY", b'{"prompts": "p.json", "shard_size": 3}')
    plan = plan_batch(PATHS, first, store, default_shard_size=64)
    assert plan.error is None and plan.options.shard_size == 3
    (item,) = plan.shards[0]
    assert item.prompts == {"boxes": [[0, 0, 5, 5]]}
    # The marker is read at its generation: a replaced marker is not silently swapped in.
    store.put(BUCKET, "batches/b1/_READY", b'{"shard_size": 1}')
    stale = plan_batch(PATHS, first, store, default_shard_size=64)
    assert stale.error is not None and stale.error["code"] == "not_found"


def test_plan_batch_turns_bad_input_into_a_plan_error():
    store = TreeStore()
    store.put(BUCKET, "batches/b1/x.png", png(), content_type="image/png")
    marker = store.put(BUCKET, "batches/b1/_READY", b'{"prompts": "missing.json"}')
    plan = plan_batch(PATHS, marker, store, default_shard_size=64)
    assert plan.error is not None and plan.error["code"] == "not_found"
    assert "missing.json" in plan.error["message"]


def test_written_plan_reads_back_and_is_reused_for_the_same_marker():
    store = TreeStore()
    for name in ("a.png", "b.png", "c.png"):
        store.put(BUCKET, f"batches/b1/{name}", png(), content_type="image/png")
    marker = store.put(BUCKET, "batches/b1/_READY", b'{"shard_size": 2}')
    plan = plan_batch(PATHS, marker, store, default_shard_size=64)
    write_plan(PATHS, plan, store)
    assert [item.name for item in read_shard(PATHS, 1, store)] == ["batches/b1/c.png"]
    assert read_shard(PATHS, 0, store) == plan.shards[0]
    summary = existing_plan(PATHS, marker, store)
    assert summary is not None and summary.shards == 2 and summary.images == 3
    assert existing_plan(PATHS, marker + 1, store) is None
    # After a local stack's restore the tag names the marker's new generation, the body the old one
    # (with the inputs' old generations): not reused, so the run plans again.
    restored = store.objects[(PATHS.output_bucket, PATHS.plan)]
    restored.metadata = {GENERATION_KEY: str(marker + 7)}
    assert existing_plan(PATHS, marker + 7, store) is None
    # Writing again replaces exactly the versions seen (generation preconditions), never blindly.
    write_plan(PATHS, plan, store)
    assert store.writes().count(PATHS.plan) == 2


def test_ready_text_is_the_prompt_of_every_image_without_its_own_entry():
    options = parse_ready(b'{"text": "ellipse"}', default_shard_size=8)
    assert options.text == ["ellipse"]
    assert options.prompts_for(None) == {"text": ["ellipse"]}
    assert options.prompts_for({"points": [[1, 2]], "labels": [1]}) == {"points": [[1, 2]], "labels": [1]}
    assert parse_ready(b"", default_shard_size=8).prompts_for(None) == {}


@pytest.mark.parametrize(
    ("model_type", "refused"), [("sam2.1_hiera_tiny", True), ("sam3", False), ("auto", False)]
)
def test_batch_wide_text_for_a_model_without_text_fails_the_batch_before_any_image(model_type, refused):
    store = TreeStore()
    store.put(BUCKET, "batches/b1/x.png", png(), content_type="image/png")
    marker = store.put(BUCKET, "batches/b1/_READY", b'{"text": ["solar panel"]}')
    plan = plan_batch(PATHS, marker, store, default_shard_size=64, model_type=model_type)
    if refused:
        assert plan.error is not None and plan.error["code"] == "invalid_request" and plan.shards == []
        assert "sam3" in plan.error["message"] and "_READY" in plan.error["message"]
    else:  # sam3 takes text; auto is decided where the model loads (the predictor refuses there)
        assert plan.error is None and plan.options.text == ["solar panel"] and len(plan.shards) == 1
