"""Every hostile input of issue #10 ("Hostile input" and "Race"), and the earlier bad-image set, in
process: a GCS notification CloudEvent into the function's entry point, the real predictor routine
(``tiny`` engine) as its endpoint, both reading the same in-memory bucket. Each row must end with
exactly one completion carrying a code and a curated message, and a normal upload must still
succeed afterwards. ``tests/integration/test_hostile_uploads.py`` runs a subset through the emulators.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from cloudevents.http import CloudEvent
from PIL import Image

from functions import main
from functions.handler import Deps
from predictor.cpr import SamRoutine
from predictor.engine import SamEngine
from samdrop import budgets
from samdrop.errors import InvalidRequest, SamdropError
from samdrop.settings import Settings
from tests.unit.function_fakes import BUCKET, RESULTS, FakePublisher, FakeStore, Ticker, jpeg

on_upload: Callable[..., None] = main.on_upload
NAME = "incoming/cat.jpg"
RAW_TEXT = "SECRET-RAW-EXCEPTION-TEXT"  # must never reach a completion


@dataclass
class RoutineEndpoint:
    """The function's ``Endpoint``: the real predictor routine in process. ``before`` runs first
    (a race: replace the object between the function's read and the predictor's)."""

    routine: SamRoutine
    before: Callable[[], None] | None = None
    calls: list[list[dict[str, Any]]] = field(default_factory=list)

    def predict(self, instances: list[dict[str, Any]], parameters: dict[str, Any]) -> list[Any]:
        self.calls.append(instances)
        if self.before is not None:
            self.before()
        body = {"instances": instances, "parameters": parameters}
        predictions: list[Any] = self.routine.postprocess(
            self.routine.predict(self.routine.preprocess(body))
        )["predictions"]
        return json.loads(json.dumps(predictions))  # as it crosses HTTP


@dataclass
class World:
    store: FakeStore
    publisher: FakePublisher
    endpoint: RoutineEndpoint
    deps: Deps


def make_world(engine: SamEngine, cache_dir: Any, store: FakeStore | None = None, **limits: Any) -> World:
    settings = Settings.from_env(
        {"SAMDROP_BUCKET": BUCKET, "SAMDROP_ENDPOINT": "http://127.0.0.1:8080"},
        amg_points_per_side=2,
        cache_dir=cache_dir,
        **limits,
    )
    store, publisher = store if store is not None else FakeStore(), FakePublisher()

    def read(uri: str, generation: int | None) -> bytes:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return store.read(bucket, name, generation=generation)

    routine = SamRoutine()
    routine.setup(settings, engine, read)
    endpoint = RoutineEndpoint(routine)
    deps = Deps(settings=settings, store=store, publisher=publisher, endpoint=endpoint, clock=Ticker())
    return World(store, publisher, endpoint, deps)


def notification(
    store: FakeStore,
    name: str,
    data: bytes,
    metadata: dict[str, str] | None = None,
    *,
    generation: str | None = None,
    payload: bytes | None = None,
) -> CloudEvent:
    """Store ``data`` as ``name`` and return the Pub/Sub CloudEvent GCS would send for it."""
    stored = store.put(BUCKET, name, data, **(metadata or {}))
    resource = {
        "bucket": BUCKET,
        "name": name,
        "generation": str(stored),
        "size": str(len(data)),
        "contentType": "image/jpeg",
        "metadata": metadata or {},
    }
    body = payload if payload is not None else json.dumps(resource).encode()
    message = {
        "data": base64.b64encode(body).decode(),
        "messageId": "1",
        "attributes": {
            "bucketId": BUCKET,
            "objectId": name,
            "objectGeneration": generation if generation is not None else str(stored),
            "eventType": "OBJECT_FINALIZE",
            "payloadFormat": "JSON_API_V1",
        },
    }
    attributes = {"id": "1", "type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub"}
    return CloudEvent(attributes, {"message": message, "subscription": "s"})


def image(width: int, height: int, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(out, fmt)
    return out.getvalue()


def prompts(**value: Any) -> dict[str, str]:
    return {"samdrop-prompts": json.dumps(value)}


def boxes(count: int) -> list[list[int]]:
    return [[1, 1, 20 + i % 40, 20 + i % 20] for i in range(count)]


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@dataclass(frozen=True)
class Row:
    """One hostile input: how to send it, and the one completion it must get."""

    name: str
    send: Callable[[World], CloudEvent]
    code: str | None  # None: it succeeds
    says: str = ""  # a fragment the message must contain (the limit's setting, usually)
    record: bool = True  # error.json written (False: its name cannot exist, or writing it fails)
    reaches_endpoint: bool = False
    limits: dict[str, Any] = field(default_factory=dict)


def plain(world: World) -> CloudEvent:
    return notification(world.store, NAME, jpeg(), prompts(points=[[10, 10]], labels=[1]))


def race(world: World) -> CloudEvent:
    """The object is replaced by another of the same size after the function read it."""
    event = notification(world.store, NAME, jpeg(), prompts(points=[[10, 10]], labels=[1]))

    def replace() -> None:
        world.store.put(BUCKET, NAME, jpeg())

    world.endpoint.before = replace
    return event


def storage_400(*names: str) -> Callable[[World], CloudEvent]:
    def send(world: World) -> CloudEvent:
        for name in names:
            world.store.faults[("write", f"results/{NAME}/{name}")] = InvalidRequest(
                "Cloud Storage refused a request as invalid (HTTP 400)"
            )
        return plain(world)

    return send


ROWS = [
    Row(
        "90 multimask boxes",
        lambda w: notification(w.store, NAME, jpeg(), prompts(boxes=boxes(90), multimask=True)),
        "invalid_prompt",
        "SAMDROP_MAX_PROMPTS=64",
    ),
    Row(
        "800 boxes, as much as metadata holds",
        lambda w: notification(w.store, NAME, jpeg(), prompts(boxes=boxes(800))),
        "invalid_prompt",
        "SAMDROP_MAX_PROMPTS=64",
    ),
    Row(
        "65 points",
        lambda w: notification(w.store, NAME, jpeg(), prompts(points=[[5, 5]] * 65)),
        "invalid_prompt",
        "SAMDROP_MAX_PROMPTS=64",
    ),
    Row(
        "more masks than max_masks in prompt mode",
        lambda w: notification(w.store, NAME, jpeg(), prompts(boxes=boxes(3), multimask=True)),
        "invalid_prompt",
        "SAMDROP_MAX_MASKS=8",
        limits={"max_masks": 8},
    ),
    Row(
        "an automatic grid over all crop layers beyond the budget",
        lambda w: notification(
            w.store, NAME, jpeg(), prompts(amg={"points_per_side": 128, "crop_n_layers": 2})
        ),
        "invalid_request",
        "SAMDROP_MAX_AUTO_POINTS=65536",
    ),
    Row(
        "points_per_batch 100000 (clamped, not refused)",
        lambda w: notification(w.store, NAME, jpeg(), prompts(amg={"points_per_batch": 100_000})),
        None,
        reaches_endpoint=True,
    ),
    Row(
        "a 3000x1 image",
        lambda w: notification(w.store, NAME, image(3000, 1)),
        "invalid_image",
        "SAMDROP_MAX_ASPECT_RATIO=100",
    ),
    Row(
        "more bytes than the input budget (refused before download)",
        lambda w: notification(w.store, NAME, jpeg()),
        "image_too_large",
        "SAMDROP_MAX_INPUT_BYTES=1000",
        limits={"max_input_bytes": 1000},
    ),
    Row(
        "a name whose outputs exceed GCS's 1024 bytes",
        lambda w: notification(w.store, "incoming/" + "a" * 1000 + ".jpg", jpeg()),
        "invalid_request",
        "SAMDROP_MAX_OBJECT_NAME_BYTES=1024",
        record=False,
    ),
    Row(
        "a multi-byte name near the limit",
        lambda w: notification(w.store, "incoming/" + "é" * 500 + ".jpg", jpeg()),
        "invalid_request",
        "SAMDROP_MAX_OBJECT_NAME_BYTES=1024",
        record=False,
    ),
    Row(
        "samdrop-prompts nested 3000 deep",
        lambda w: notification(w.store, NAME, jpeg(), {"samdrop-prompts": deep(3000)}),
        "invalid_prompt",
        "SAMDROP_MAX_JSON_DEPTH=32",
    ),
    Row(
        "samdrop-prompts points nested 40 deep",
        lambda w: notification(w.store, NAME, jpeg(), {"samdrop-prompts": '{"points": ' + deep(40) + "}"}),
        "invalid_prompt",
        "SAMDROP_MAX_JSON_DEPTH=32",
    ),
    Row(
        "a notification payload nested 3000 deep",
        lambda w: notification(w.store, NAME, jpeg(), payload=deep(3000).encode()),
        "invalid_request",
        "SAMDROP_MAX_JSON_DEPTH=32",
        record=False,
    ),
    Row(
        "a generation attribute '²' (isdigit() but not int())",
        lambda w: notification(w.store, NAME, jpeg(), generation="²"),
        "invalid_request",
        "not a non-negative integer",
        record=False,
    ),
    Row(
        "GCS answers 400 to a mask write",
        storage_400("mask_000.png"),
        "invalid_request",
        "HTTP 400",
        reaches_endpoint=True,
    ),
    Row(
        "GCS answers 400 to every write, error.json included",
        storage_400("mask_000.png", "error.json"),
        "invalid_request",
        "HTTP 400",
        record=False,
        reaches_endpoint=True,
    ),
    Row(
        "replaced by a same-size image before the predictor reads it",
        race,
        "not_found",  # unpinned, the predictor would have segmented the new bytes
        "does not exist",
        reaches_endpoint=True,
    ),
    # The earlier bad-image set.
    Row("empty bytes", lambda w: notification(w.store, NAME, b""), "invalid_image", "empty"),
    Row("not an image", lambda w: notification(w.store, NAME, b"GIF89a garbage" * 10), "invalid_image"),
    Row(
        "more pixels than allowed",
        lambda w: notification(w.store, NAME, jpeg()),
        "image_too_large",
        "SAMDROP_MAX_IMAGE_PIXELS",
        limits={"max_image_pixels": 1000},
    ),
    Row(
        "labels that do not match the points",
        lambda w: notification(w.store, NAME, jpeg(), prompts(points=[[1, 1]], labels=[1, 0])),
        "invalid_prompt",
        "label",
    ),
    Row(
        "a prompt outside the image",
        lambda w: notification(w.store, NAME, jpeg(), prompts(points=[[900, 10]], labels=[1])),
        "invalid_prompt",
        "outside",
        reaches_endpoint=True,
    ),
]


@pytest.fixture
def engine(fast_engine: SamEngine) -> Iterator[SamEngine]:
    """The shared tiny engine with SAMDROP_DECODER_MEMORY_BYTES=512 MiB (this machine is shared)."""
    memory, fast_engine.decoder_memory_bytes = fast_engine.decoder_memory_bytes, 512 * 2**20
    yield fast_engine
    fast_engine.decoder_memory_bytes = memory


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_each_hostile_input_gets_exactly_one_clear_completion(row: Row, engine, cache_dir):
    world = make_world(engine, cache_dir, **row.limits)
    event = row.send(world)

    on_upload(event, world.deps)  # returns: the message is acknowledged, never redelivered

    [(_, body, attributes)] = world.publisher.messages
    assert body["kind"] == "image" and body["input"].startswith(f"gs://{BUCKET}/incoming/")
    if row.code is None:
        assert body["status"] == "succeeded" and body["error"] is None, body
    else:
        assert attributes["status"] == body["status"] == "failed"
        assert body["error"]["code"] == row.code, body["error"]
        message = body["error"]["message"]
        assert row.says in message
        assert "Traceback" not in message and RAW_TEXT not in message
        errors = [n for n in world.store.names("results/") if n.endswith("/error.json")]
        assert len(errors) == (1 if row.record else 0)
        if row.record:
            assert body["outputs"] == {"error": f"gs://{RESULTS}/{errors[0]}"}
            assert world.store.json(errors[0])["code"] == row.code
    assert bool(world.endpoint.calls) == row.reaches_endpoint

    # Healthy afterwards: with the default limits, an ordinary upload succeeds through the same
    # engine and bucket.
    world.store.faults.clear()
    after = make_world(engine, cache_dir, store=world.store)
    on_upload(
        notification(after.store, "incoming/next.jpg", jpeg(), prompts(points=[[9, 9]], labels=[1])),
        after.deps,
    )
    [(_, done, _)] = after.publisher.messages
    assert done["status"] == "succeeded" and done["input"].endswith("/incoming/next.jpg")


def test_a_redelivery_of_a_recorded_refusal_publishes_nothing_new(fast_engine, cache_dir):
    world = make_world(fast_engine, cache_dir)
    event = notification(world.store, NAME, jpeg(), prompts(boxes=boxes(90)))
    on_upload(event, world.deps)
    on_upload(event, world.deps)  # Pub/Sub delivers at least once
    assert len(world.publisher.messages) == 1


# --- the predictor's side: a request, its instances and their slots ---------------------------------


class FlakyEngine:
    """Delegates to the real engine, but fails (with raw text) on any image 77 pixels wide."""

    def __init__(self, engine: SamEngine) -> None:
        self._engine = engine
        self.runs: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def run(self, jobs: list[Any]) -> list[Any]:
        self.runs.append(len(jobs))
        if any(job.image.shape[1] == 77 for job in jobs):
            raise RuntimeError(f"shape mismatch in the decoder {RAW_TEXT}")
        return self._engine.run(jobs)


def routine_with(engine: Any, cache_dir: Any, objects: dict[str, bytes] | None = None) -> SamRoutine:
    settings = Settings.from_env({}, amg_points_per_side=2, cache_dir=cache_dir)
    routine = SamRoutine()
    routine.setup(settings, engine, lambda uri, generation: (objects or {})[uri])
    return routine


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def answer(routine: SamRoutine, body: dict[str, Any]) -> list[dict[str, Any]]:
    return routine.postprocess(routine.predict(routine.preprocess(body)))["predictions"]


def test_one_bad_slot_does_not_fail_its_neighbours(fast_engine, cache_dir):
    engine = FlakyEngine(fast_engine)
    routine = routine_with(engine, cache_dir)
    point = {"points": [[5, 5]], "labels": [1]}
    instances = [
        {"image": b64(jpeg()), "file_path": "good-1.jpg", **point},
        {"image": b64(image(77, 40)), "file_path": "breaks-the-model.png", **point},
        {"image": b64(image(3000, 1)), "file_path": "thin.png", **point},
        {"image": b64(jpeg()), "file_path": "good-2.jpg", **point},
    ]
    predictions = answer(routine, {"instances": instances})
    assert [p.get("error", {}).get("code") for p in predictions] == [None, "internal", "invalid_image", None]
    broken = predictions[1]["error"]["message"]
    assert "breaks-the-model.png" in broken and "RuntimeError" in broken and RAW_TEXT not in broken
    assert "SAMDROP_MAX_ASPECT_RATIO" in predictions[2]["error"]["message"]
    assert engine.runs[0] == 3  # one grouped run first; the thin image never reached the model
    assert all(len(p["masks"]) == 3 for p in (predictions[0], predictions[3]))


def test_instances_per_request_over_the_budget_refuse_the_request(fast_engine, cache_dir):
    routine = routine_with(fast_engine, cache_dir)
    with pytest.raises(InvalidRequest, match=r"33 instances .* SAMDROP_MAX_INSTANCES=32"):
        routine.preprocess({"instances": [{"image": b64(jpeg())}] * 33})


def test_prompt_and_grid_budgets_are_checked_before_the_image_is_read(fast_engine, cache_dir):
    reads: list[str] = []

    def read(uri: str, generation: int | None) -> bytes:
        reads.append(uri)
        return jpeg()

    routine = routine_with(fast_engine, cache_dir)
    routine.setup(routine.settings.replace(max_masks=8), fast_engine, read)  # type: ignore[union-attr]
    slots = routine.preprocess(
        {
            "instances": [
                {"gcs_uri": "gs://b/a.jpg", "boxes": boxes(65)},
                {"gcs_uri": "gs://b/b.jpg", "boxes": boxes(3), "multimask": True},
                {"gcs_uri": "gs://b/c.jpg", "amg": {"points_per_side": 128, "crop_n_layers": 3}},
            ]
        }
    )
    codes = [slot.error.code if isinstance(slot.error, SamdropError) else None for slot in slots]
    assert codes == ["invalid_prompt", "invalid_prompt", "invalid_request"]
    assert reads == []


def test_the_predictor_reads_exactly_the_generation_it_was_sent(fast_engine, cache_dir):
    store = FakeStore()
    old = store.put(BUCKET, NAME, jpeg())
    new = store.put(BUCKET, NAME, jpeg())  # replaced: only the new generation is readable now
    routine = routine_with(fast_engine, cache_dir)
    routine.setup(
        routine.settings,  # type: ignore[arg-type]
        fast_engine,
        lambda uri, generation: store.read(BUCKET, NAME, generation=generation),
    )
    instance = {"gcs_uri": f"gs://{BUCKET}/{NAME}", "points": [[5, 5]], "labels": [1]}
    stale, current = answer(
        routine, {"instances": [{**instance, "generation": str(old)}, {**instance, "generation": str(new)}]}
    )
    assert stale["error"]["code"] == "not_found" and "error" not in current


@pytest.mark.parametrize("generation", ["²", "-1", "12a", True, 1.5])
def test_a_malformed_generation_is_an_invalid_request_slot(generation, fast_engine, cache_dir):
    routine = routine_with(fast_engine, cache_dir)
    [slot] = routine.preprocess({"instances": [{"gcs_uri": "gs://b/a.jpg", "generation": generation}]})
    assert slot.error is not None and slot.error.code == "invalid_request"


def test_points_per_batch_is_clamped_by_the_engine_to_the_image(fast_engine):
    """A request's 100000 is not used as asked (the generator pads every decoder call to it): the
    decoder batch is what SAMDROP_DECODER_MEMORY_BYTES holds of this image's full-size masks."""
    decoded: list[int] = []
    real = fast_engine._decode_points
    memory = fast_engine.decoder_memory_bytes

    def counting(context: Any, sparse: Any) -> Any:
        decoded.append(int(sparse.shape[0]))  # prompts in this decoder call
        return real(context, sparse)

    room = 3 * (budgets.DECODER_BYTES_PER_POINT + budgets.DECODER_BYTES_PER_POINT_PIXEL * 64 * 48)
    fast_engine._decode_points, fast_engine.decoder_memory_bytes = counting, room
    try:
        result = fast_engine.generate(
            np.full((48, 64, 3), 100, np.uint8), {"points_per_side": 2, "points_per_batch": 100_000}
        )
    finally:
        fast_engine._decode_points, fast_engine.decoder_memory_bytes = real, memory
    assert decoded == [3, 3]  # 4 grid points in batches of 3 (room for 3 points' masks), not 100000
    assert (result.width, result.height) == (64, 48)
