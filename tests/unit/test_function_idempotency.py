import pytest

from functions.events import UploadEvent
from functions.segment import segment_upload
from samdrop.errors import TransientError
from samdrop.layout import GENERATION_KEY, output_paths
from samdrop.masks import png_to_mask
from samdrop.outputs import Step, decide
from samdrop.storage import ObjectInfo, WriteConflict
from tests.unit.function_fakes import (
    BUCKET,
    RESULTS,
    Crash,
    FakeEndpoint,
    FakePublisher,
    FakeStore,
    default_masks,
    jpeg,
    settings,
)

NAME = "incoming/cat.jpg"
FOLDER = "results/incoming/cat.jpg/"


def upload(store: FakeStore, name: str = NAME) -> UploadEvent:
    generation = store.put(BUCKET, name, jpeg(), content_type="image/jpeg")
    return UploadEvent("OBJECT_FINALIZE", BUCKET, name, str(generation), "image/jpeg", metadata={})


def run(event, store, publisher, endpoint=None):
    return segment_upload(
        event, settings=settings(), store=store, publisher=publisher, endpoint=endpoint or FakeEndpoint()
    )


def info(name: str, generation: int, input_generation: int | None) -> ObjectInfo:
    metadata = {GENERATION_KEY: str(input_generation)} if input_generation is not None else {}
    return ObjectInfo(FOLDER + name, generation, metadata)


PATHS = output_paths(settings(), NAME)


@pytest.mark.parametrize(
    ("objects", "step"),
    [
        ([], Step.COMPUTE),
        ([info("mask_000.png", 7, 100)], Step.COMPUTE),  # scratch from a crashed attempt
        ([info("masks.json", 7, 100)], Step.PUBLISH),
        ([info("error.json", 7, 100)], Step.PUBLISH),
        ([info("masks.json", 7, 100), info("completion.json", 8, 100)], Step.COMPLETED),
        ([info("masks.json", 7, 99), info("completion.json", 8, 99)], Step.COMPUTE),  # older upload
        ([info("masks.json", 7, 101)], Step.STALE),  # a newer upload already took over
        ([info("mask_000.png", 7, 101)], Step.STALE),  # ... or is being written right now
        ([info("masks.json", 7, None)], Step.COMPUTE),  # not written by samdrop
    ],
)
def test_decide(objects, step):
    assert decide({o.name: o for o in objects}, PATHS, 100).step is step


def test_first_delivery_writes_everything_and_publishes_once():
    store, publisher, endpoint = FakeStore(), FakePublisher(), FakeEndpoint()
    event = upload(store)
    outcome = run(event, store, publisher, endpoint)
    assert outcome.outcome == "succeeded"
    assert store.names(FOLDER) == [FOLDER + n for n in (
        "completion.json", "mask_000.png", "mask_001.png", "mask_002.png", "masks.json", "overlay.jpg"
    )]  # fmt: skip
    doc = store.json(FOLDER + "masks.json")
    assert doc["generation"] == event.generation and doc["input"] == event.uri
    assert doc["mask_count"] == 3 and doc["mode"] == "automatic"
    assert "meaningless" in doc["note"]
    for i, mask in enumerate(default_masks()):
        assert (png_to_mask(store.objects[(RESULTS, f"{FOLDER}mask_{i:03d}.png")].data) == mask).all()
    [(topic, body, attributes)] = publisher.messages
    assert topic == "samdrop-completions"
    assert attributes == {"schema_version": "1", "kind": "image", "status": "succeeded"}
    assert body["outputs"]["metadata"] == f"gs://{RESULTS}/{FOLDER}masks.json"
    assert body["model"]["type"] == "tiny" and body["mask_count"] == 3
    assert body["timings_ms"]["model"] == 12.5 and body["timings_ms"]["total"] >= 0
    assert store.json(FOLDER + "completion.json")["generation"] == event.generation


def test_redelivery_after_success_does_nothing():
    store, publisher, endpoint = FakeStore(), FakePublisher(), FakeEndpoint()
    event = upload(store)
    run(event, store, publisher, endpoint)
    writes = [op for op in store.ops if op[0] == "write"]
    outcome = run(event, store, publisher, endpoint)
    assert outcome.outcome == "duplicate"
    assert len(endpoint.calls) == 1 and len(publisher.messages) == 1
    assert [op for op in store.ops if op[0] == "write"] == writes


def test_crash_after_record_before_publish_publishes_exactly_once_on_redelivery():
    store, publisher, endpoint = FakeStore(), FakePublisher(), FakeEndpoint()
    event = upload(store)
    publisher.fail_next = Crash()  # the process dies inside publish
    with pytest.raises(Crash):
        run(event, store, publisher, endpoint)
    assert publisher.messages == [] and FOLDER + "masks.json" in store.names()

    outcome = run(event, store, publisher, endpoint)
    assert outcome.outcome == "republished"
    assert len(endpoint.calls) == 1  # not recomputed
    assert [b["status"] for b in publisher.bodies] == ["succeeded"]
    assert run(event, store, publisher, endpoint).outcome == "duplicate"
    assert len(publisher.messages) == 1


def test_publish_failure_is_transient_and_redelivery_publishes():
    store, publisher = FakeStore(), FakePublisher()
    event = upload(store)
    publisher.fail_next = TransientError("pubsub unavailable")
    with pytest.raises(TransientError):
        run(event, store, publisher)
    assert run(event, store, publisher).outcome == "republished"
    assert len(publisher.messages) == 1


def test_crash_between_publish_and_marker_republishes_same_key():
    # The one window that duplicates: documented, and the copy carries the same (input, generation).
    store, publisher = FakeStore(), FakePublisher()
    event = upload(store)
    store.faults[("write", FOLDER + "completion.json")] = Crash()
    with pytest.raises(Crash):
        run(event, store, publisher)
    run(event, store, publisher)
    first, second = publisher.bodies
    assert (first["input"], first["generation"]) == (second["input"], second["generation"])


def test_crash_mid_mask_writes_recomputes_and_replaces_scratch():
    store, publisher, endpoint = FakeStore(), FakePublisher(), FakeEndpoint()
    event = upload(store)
    store.faults[("write", FOLDER + "overlay.jpg")] = Crash()
    with pytest.raises(Crash):
        run(event, store, publisher, endpoint)
    assert FOLDER + "mask_000.png" in store.names() and FOLDER + "masks.json" not in store.names()
    outcome = run(event, store, publisher, endpoint)
    assert outcome.outcome == "succeeded"
    assert len(endpoint.calls) == 2 and len(publisher.messages) == 1


def test_412_when_a_concurrent_delivery_finished_first_is_a_duplicate():
    store, publisher = FakeStore(), FakePublisher()
    event = upload(store)

    def other_delivery_finishes(name: str) -> None:
        if name == FOLDER + "overlay.jpg":
            store.after_write = None
            run(event, store, publisher)  # wins the race: writes masks.json and publishes

    store.after_write = other_delivery_finishes
    outcome = run(event, store, publisher)
    assert outcome.outcome == "duplicate"
    assert len(publisher.messages) == 1


def test_412_while_a_concurrent_delivery_is_still_writing_retries_later():
    store, publisher = FakeStore(), FakePublisher()
    event = upload(store)
    store.faults[("write", FOLDER + "masks.json")] = WriteConflict("precondition failed")
    with pytest.raises(TransientError, match="another delivery"):
        run(event, store, publisher)
    assert publisher.messages == []
    assert run(event, store, publisher).outcome == "succeeded"
    assert len(publisher.messages) == 1


def test_new_upload_replaces_outputs_of_the_older_generation():
    store, publisher = FakeStore(), FakePublisher()
    first = upload(store)
    run(first, store, publisher, FakeEndpoint(masks=default_masks(count=3)))
    second = upload(store)  # the same name uploaded again: a new generation
    outcome = run(second, store, publisher, FakeEndpoint(masks=default_masks(count=1)))
    assert outcome.outcome == "succeeded"
    assert store.json(FOLDER + "masks.json")["generation"] == second.generation
    # mask_001/mask_002 of the older image are removed; the new image has one mask.
    assert [n for n in store.names(FOLDER) if n.endswith(".png")] == [FOLDER + "mask_000.png"]
    assert [b["generation"] for b in publisher.bodies] == [first.generation, second.generation]


def test_late_redelivery_of_an_older_generation_is_stale():
    store, publisher = FakeStore(), FakePublisher()
    first = upload(store)
    second = upload(store)
    run(second, store, publisher)
    endpoint = FakeEndpoint()
    outcome = run(first, store, publisher, endpoint)
    assert outcome.outcome == "stale"
    assert endpoint.calls == [] and len(publisher.messages) == 1


def test_failure_after_success_of_older_generation_cleans_its_masks():
    store, publisher = FakeStore(), FakePublisher()
    run(upload(store), store, publisher)
    second = upload(store)
    store.objects[(BUCKET, NAME)].data = b"not an image"
    assert run(second, store, publisher).outcome == "failed"
    assert store.names(FOLDER) == [FOLDER + "completion.json", FOLDER + "error.json"]


def test_redelivery_of_a_recorded_failure_does_not_publish_twice():
    store, publisher = FakeStore(), FakePublisher()
    event = upload(store)
    store.objects[(BUCKET, NAME)].data = b"not an image"
    assert run(event, store, publisher).outcome == "failed"
    assert run(event, store, publisher).outcome == "duplicate"
    assert [b["status"] for b in publisher.bodies] == ["failed"]
