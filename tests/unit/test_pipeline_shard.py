"""The shard worker with the tiny engine and an in-memory store: outputs, errors, resume, preconditions."""

from __future__ import annotations

import json

import pytest

from pipeline.listing import BatchOptions, PlanItem
from pipeline.shard import ShardWorker
from samdrop.batches import BatchPaths
from samdrop.errors import ConfigError, TransientError
from samdrop.layout import GENERATION_KEY
from samdrop.masks import png_to_mask, rle_to_mask
from samdrop.settings import Settings

from .pipeline_fakes import BUCKET, RESULTS, TreeStore, png

SETTINGS = Settings.from_env({"SAMDROP_BUCKET": BUCKET}, io_threads=3)
PATHS = BatchPaths.of(SETTINGS, "b1")
POINTS = {"points": [[20, 20]], "labels": [1]}


def _items(
    store: TreeStore, files: dict[str, bytes], prompts: dict[str, dict] | None = None
) -> list[PlanItem]:
    items = []
    for name, data in files.items():
        generation = store.put(BUCKET, f"batches/b1/{name}", data, content_type="image/png")
        items.append(PlanItem(f"batches/b1/{name}", generation, (prompts or {}).get(name, POINTS)))
    return items


def _worker(store: TreeStore, engine, **options) -> ShardWorker:
    return ShardWorker(
        paths=PATHS, shard=3, settings=SETTINGS, store=store, engine=engine, options=BatchOptions(**options)
    )


def test_a_shard_writes_masks_overlay_and_records_errors(fast_engine):
    store = TreeStore()
    files = {
        "a.png": png(96, 64, 1),
        "bad.png": b"\x89PNG broken",
        "b.png": png(80, 120, 2),
        "c.png": png(64, 64, 3),
    }
    items = _items(store, files)
    items[3] = PlanItem(items[3].name, items[3].generation, {"points": [[500, 500]], "labels": [1]})
    result = _worker(store, fast_engine).run(items)

    assert [line["file"] for line in result.lines] == ["a.png", "bad.png", "b.png", "c.png"]
    assert [line["status"] for line in result.lines] == ["succeeded", "failed", "succeeded", "failed"]
    assert result.lines[1]["error"]["code"] == "invalid_image"
    assert (
        result.lines[3]["error"]["code"] == "invalid_prompt"
        and "outside" in result.lines[3]["error"]["message"]
    )
    assert set(result.timings_ms) == {"read", "decode", "compute", "write", "wall"}

    doc = store.json("results/batches/b1/b.png/masks.json")
    assert (doc["width"], doc["height"], doc["mode"], doc["batch_id"]) == (80, 120, "prompted", "b1")
    assert doc["generation"] == str(items[2].generation) and doc["mask_count"] == 3 == len(doc["masks"])
    assert doc["model"]["random_weights"] and "RANDOM WEIGHTS" in doc["note"]
    first = doc["masks"][0]
    png_mask = png_to_mask(store.objects[(RESULTS, "results/batches/b1/b.png/mask_000.png")].data)
    assert png_mask.shape == (120, 80) and (png_mask == rle_to_mask(first["segmentation"])).all()
    assert first["png"] == "gs://samdrop-local-results/results/batches/b1/b.png/mask_000.png"
    overlay = store.objects[(RESULTS, "results/batches/b1/b.png/overlay.jpg")]
    assert overlay.metadata == {GENERATION_KEY: str(items[2].generation)}
    line = result.lines[2]
    assert line["mask_count"] == 3 and len(line["scores"]) == 3 and line["outputs"] == doc["outputs"]

    error = store.json("results/batches/b1/bad.png/error.json")
    assert error["code"] == "invalid_image" and error["input"] == "gs://samdrop-local/batches/b1/bad.png"
    assert result.lines[1]["outputs"] == {
        "error": "gs://samdrop-local-results/results/batches/b1/bad.png/error.json"
    }
    # masks.json is written last: after every PNG and the overlay of its image.
    writes = store.writes()
    b_writes = [name for name in writes if name.startswith("results/batches/b1/b.png/")]
    assert b_writes[-1].endswith("masks.json") and len(b_writes) == 5
    # Inputs are never written.
    assert not [name for name in writes if name.startswith("batches/")]


def test_a_second_run_resumes_without_recomputing(fast_engine):
    store = TreeStore()
    items = _items(store, {"a.png": png(seed=1), "bad.png": b"nope", "b.png": png(seed=2)})
    worker = _worker(store, fast_engine)
    first = worker.run(items)
    writes = len(store.writes())
    again = _worker(store, fast_engine).run(items)
    assert len(store.writes()) == writes  # nothing rewritten
    assert [line["resumed"] for line in again.lines] == [True, True, True]
    assert [line["status"] for line in again.lines] == [line["status"] for line in first.lines]
    assert again.lines[0]["mask_count"] == first.lines[0]["mask_count"]
    assert again.lines[0]["scores"] == first.lines[0]["scores"]


def test_a_new_input_generation_replaces_older_outputs(fast_engine):
    store = TreeStore()
    (old,) = _items(store, {"a.png": png(seed=1)})
    _worker(store, fast_engine).run([old])
    store.put(RESULTS, "results/batches/b1/a.png/mask_007.png", b"x", **{GENERATION_KEY: str(old.generation)})
    (new,) = _items(store, {"a.png": png(seed=5)})
    (line,) = _worker(store, fast_engine).run([new]).lines
    assert line["status"] == "succeeded" and not line["resumed"]
    assert store.json("results/batches/b1/a.png/masks.json")["generation"] == str(new.generation)
    assert "results/batches/b1/a.png/mask_007.png" not in store.names()  # outdated leftovers removed


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (TransientError("storage unavailable (503)"), "unavailable"),
        (ConfigError("access denied (403)"), "config"),
    ],
)
def test_storage_errors_are_reported_but_not_recorded(fast_engine, fault, code):
    store = TreeStore()
    items = _items(store, {"a.png": png(seed=1), "b.png": png(seed=2)})
    store.faults[("read", "batches/b1/a.png")] = fault
    result = _worker(store, fast_engine).run(items)
    assert [line["status"] for line in result.lines] == ["failed", "succeeded"]
    assert result.lines[0]["error"]["code"] == code and result.lines[0]["outputs"] == {}
    assert "results/batches/b1/a.png/error.json" not in store.names()  # a re-run tries it again
    (again, _) = _worker(store, fast_engine).run(items).lines
    assert again["status"] == "succeeded" and not again["resumed"]


def test_automatic_masks_use_the_batch_amg_options(fast_engine):
    store = TreeStore()
    (item,) = _items(store, {"a.png": png(64, 48, seed=4)}, prompts={"a.png": {}})
    item = PlanItem(item.name, item.generation, None)
    (line,) = (
        _worker(
            store,
            fast_engine,
            amg={"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
        )
        .run([item])
        .lines
    )
    doc = store.json("results/batches/b1/a.png/masks.json")
    assert doc["mode"] == "automatic" and doc["prompts"] is None and doc["amg"]["points_per_side"] == 2
    assert line["mask_count"] == doc["mask_count"] == len(json.loads(json.dumps(doc["masks"])))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_lines_keep_plan_order_whatever_the_batching(fast_engine, batch_size):
    store = TreeStore()
    names = [f"{c}.png" for c in "edcba"]
    items = _items(store, {n: (b"bad" if n == "c.png" else png(seed=i)) for i, n in enumerate(names)})
    previous = fast_engine.batch_size
    fast_engine.batch_size = batch_size
    try:
        result = _worker(store, fast_engine).run(items)
    finally:
        fast_engine.batch_size = previous
    assert [line["file"] for line in result.lines] == names


def test_a_name_too_long_for_its_outputs_fails_before_any_read_and_writes_nothing(fast_engine):
    store = TreeStore()
    long_name = "n" * 995 + ".png"  # the input fits Cloud Storage's 1024 bytes; its outputs would not
    items = _items(store, {long_name: png(seed=1), "b.png": png(seed=2)})
    store.faults[("read", f"batches/b1/{long_name}")] = AssertionError("read before the name check")
    result = _worker(store, fast_engine).run(items)
    assert [line["status"] for line in result.lines] == ["failed", "succeeded"]
    error = result.lines[0]["error"]
    assert error["code"] == "invalid_request" and "SAMDROP_MAX_OBJECT_NAME_BYTES=1024" in error["message"]
    assert result.lines[0]["outputs"] == {}
    assert not any(name.startswith(f"results/batches/b1/{long_name}") for name in store.names())
