"""One output path: a single upload and a batch write the same masks.json for the same image and prompts.

The function's endpoint here is the real CPR routine (in process, no HTTP) over the same tiny engine
the shard runs, so the only difference left is the path itself.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions.events import UploadEvent
from functions.segment import segment_upload
from pipeline.listing import BatchOptions, PlanItem
from pipeline.shard import ShardWorker
from predictor.cpr import SamRoutine
from predictor.engine import SamEngine
from samdrop.batches import BatchPaths
from samdrop.documents import ErrorRecord, MasksDocument
from samdrop.layout import output_paths, tag
from samdrop.outputs import PREVIEW_SIDE, Step, decide, preview_size, written_names
from samdrop.prompts import PROMPTS_METADATA_KEY
from tests.helpers import json_shape

from .function_fakes import BUCKET, RESULTS, FakePublisher, settings
from .pipeline_fakes import TreeStore, png

SETTINGS = settings(amg_points_per_side=4)  # SAM's 32x32 grid takes minutes per image with tiny on CPU
PROMPTS = {"points": [[20, 20]], "labels": [1], "boxes": [[5, 5, 60, 40]]}


class RoutineEndpoint:
    """The function's :class:`~functions.endpoint.Endpoint` answered by the CPR routine in process."""

    def __init__(self, engine: SamEngine, store: TreeStore) -> None:
        def read(uri: str, generation: int | None = None) -> bytes:
            bucket, _, name = uri.removeprefix("gs://").partition("/")
            return store.read(bucket, name)

        self.routine = SamRoutine()
        self.routine.setup(SETTINGS, engine, read)

    def predict(self, instances: list[dict[str, Any]], parameters: dict[str, Any]) -> list[Any]:
        body = {"instances": instances, "parameters": parameters}
        # Through JSON, as over HTTP.
        return list(
            json.loads(
                json.dumps(self.routine.postprocess(self.routine.predict(self.routine.preprocess(body))))
            )["predictions"]
        )


def _single(store: TreeStore, engine: SamEngine, name: str, prompts: dict[str, Any] | None) -> dict[str, Any]:
    metadata = {PROMPTS_METADATA_KEY: json.dumps(prompts)} if prompts else {}
    generation = store.put(BUCKET, name, png(96, 64, 1), content_type="image/png", **metadata)
    event = UploadEvent("OBJECT_FINALIZE", BUCKET, name, str(generation), "image/png", metadata=metadata)
    outcome = segment_upload(
        event,
        settings=SETTINGS,
        store=store,
        publisher=FakePublisher(),
        endpoint=RoutineEndpoint(engine, store),
    )
    assert outcome.outcome == "succeeded", outcome.reason
    return dict(store.json(output_paths(SETTINGS, name).masks_json))


def _batch(store: TreeStore, engine: SamEngine, name: str, prompts: dict[str, Any] | None) -> dict[str, Any]:
    generation = store.put(BUCKET, name, png(96, 64, 1), content_type="image/png")
    worker = ShardWorker(
        paths=BatchPaths.of(SETTINGS, "b1"),
        shard=0,
        settings=SETTINGS,
        store=store,
        engine=engine,
        options=BatchOptions(),
    )
    (line,) = worker.run([PlanItem(name, generation, prompts)]).lines
    assert line["status"] == "succeeded", line["error"]
    return dict(store.json(output_paths(SETTINGS, name).masks_json))


@pytest.mark.parametrize("prompts", [PROMPTS, None], ids=["prompted", "automatic"])
def test_single_upload_and_batch_write_the_same_masks_json(fast_engine, prompts):
    store = TreeStore()
    single = _single(store, fast_engine, "incoming/a.png", prompts)
    batch = _batch(store, fast_engine, "batches/b1/a.png", prompts)

    assert single["batch_id"] is None and batch["batch_id"] == "b1"
    for doc in (single, batch):
        doc.pop("batch_id")
        doc.pop("timings_ms")  # each path's own stages (endpoint vs compute)
        doc.pop("predictor_timings_ms")
    assert json_shape(single) == json_shape(batch)
    assert single["mode"] == batch["mode"] == ("prompted" if prompts else "automatic")
    assert single["prompts"] == batch["prompts"]
    assert single["amg"] == batch["amg"]
    assert [m["box"] for m in single["masks"]] == [m["box"] for m in batch["masks"]]
    assert all(isinstance(v, int) for m in single["masks"] for v in m["box"])
    assert [m["segmentation"] for m in single["masks"]] == [m["segmentation"] for m in batch["masks"]]
    assert MasksDocument.from_json(single).to_json()["masks"] == single["masks"]


def test_decide_sees_the_record_of_a_completed_generation():
    store = TreeStore()
    paths = output_paths(SETTINGS, "incoming/x.png")
    store.put(RESULTS, paths.masks_json, b"{}", content_type="application/json", **tag(7))
    store.put(RESULTS, paths.completion, b"{}", content_type="application/json", **tag(7))
    decision = decide(store.list(RESULTS, paths.folder), paths, 7)
    assert decision.step is Step.COMPLETED and decision.record is not None
    assert decision.record.name == paths.masks_json


def test_written_names_and_preview_size():
    paths = output_paths(SETTINGS, "incoming/x.png")
    assert written_names(paths, ErrorRecord("invalid_image", "m", "gs://b/x", "1")) == {paths.error_json}
    assert preview_size(4000, 3000) == (PREVIEW_SIDE, 768)
    assert preview_size(10, 20) == (10, 20)


def test_a_planted_generation_that_is_not_ascii_digits_is_not_ours():
    from samdrop.layout import GENERATION_KEY, input_generation

    assert input_generation({GENERATION_KEY: "²"}) is None  # isdigit() says yes, int() says no
    assert input_generation({GENERATION_KEY: "17"}) == 17
    assert input_generation(None) is None


def test_masks_document_counts_masks_per_label_with_every_concept_asked():
    from dataclasses import replace

    from samdrop.documents import MaskRecord, MasksDocument

    def mask(label):
        return MaskRecord(
            segmentation={"size": [2, 2], "counts": "04"}, score=0.9, box=[0, 0, 1, 1], area=4, label=label
        )

    base = MasksDocument.from_json(
        {
            "input": "gs://b/incoming/a.png",
            "generation": "1",
            "width": 2,
            "height": 2,
            "mode": "prompted",
            "masks": [],
            "outputs": {"masks": [], "metadata": "gs://r/m.json", "overlay": "gs://r/o.jpg"},
        }
    )
    concepts = replace(
        base, prompts={"text": ["car", "tree"], "multimask": False}, masks=[mask("tree"), mask("tree")]
    )
    assert concepts.label_counts == {"car": 0, "tree": 2}
    assert replace(base, prompts=None, masks=[mask(None)]).label_counts is None
