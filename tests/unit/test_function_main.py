"""The entry point itself, called with a real ``cloudevents`` CloudEvent and injected fakes."""

import json
from collections.abc import Callable

import pytest
from cloudevents.http import CloudEvent

from functions import main
from samdrop.errors import TransientError
from tests.unit.function_fakes import (
    BUCKET,
    FakeEndpoint,
    FakePublisher,
    FakeStore,
    jpeg,
    load_event,
    make_deps,
)

# functions-framework's decorator types the target as (CloudEvent) -> None; the tests also pass deps.
on_upload: Callable[..., None] = main.on_upload


def cloud_event(fixture: str) -> CloudEvent:
    raw = load_event(fixture)
    data = raw.pop("data")
    return CloudEvent(raw, data)


def logged(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_on_upload_segments_the_captured_emulator_event(capsys):
    store, publisher = FakeStore(), FakePublisher()
    event = cloud_event("gcs_finalize_cloudevent.json")
    # Make the object exist at the generation the event names.
    name, generation = "incoming/cats/cat.jpg", 1795645324987411
    store.put(BUCKET, name, jpeg())
    store.objects[(BUCKET, name)].generation = generation
    endpoint = FakeEndpoint()

    on_upload(event, make_deps(store, publisher, endpoint))

    [([instance], _)] = endpoint.calls
    assert instance["points"] == [[120, 80]] and instance["boxes"] == [[10, 20, 200, 160]]
    [body] = publisher.bodies
    assert body["status"] == "succeeded" and body["generation"] == str(generation)
    [line] = logged(capsys)
    assert line["severity"] == "INFO" and line["outcome"] == "succeeded" and "error_code" not in line
    assert line["object"] == f"gs://{BUCKET}/{name}" and line["generation"] == str(generation)
    assert "total" in line["timings_ms"]


@pytest.mark.parametrize("fixture", ["delete_incoming.json", "finalize_results.json"])
def test_on_upload_ignores_with_exactly_one_log_line(fixture, capsys):
    publisher = FakePublisher()
    on_upload(cloud_event(fixture), make_deps(publisher=publisher))
    [line] = logged(capsys)
    assert line["outcome"] == "ignored" and line["message"].startswith("ignored:")
    assert publisher.messages == []


@pytest.mark.parametrize("fixture", ["malformed_base64.json", "missing_attributes.json"])
def test_on_upload_acknowledges_undecodable_events(fixture, capsys):
    on_upload(cloud_event(fixture), make_deps())  # returns normally → 200 → acked
    [line] = logged(capsys)
    assert line["severity"] == "WARNING" and line["outcome"] == "invalid_event"


def test_on_upload_ready_marker_reaches_the_batch_hand_off(capsys):
    started = []

    def start_batch(request, *, settings, store, publisher):
        started.append(request)
        return "batch_started"

    on_upload(cloud_event("finalize_ready.json"), make_deps(start_batch=start_batch))
    [request] = started
    assert request.batch_id == "2026-11-25-a" and request.folder_uri == f"gs://{BUCKET}/batches/2026-11-25-a/"
    assert logged(capsys)[0]["outcome"] == "batch_started"


def test_on_upload_default_batch_hand_off_publishes_failed():
    publisher = FakePublisher()
    on_upload(cloud_event("finalize_ready.json"), make_deps(publisher=publisher))
    [(_, body, attributes)] = publisher.messages
    assert attributes["batch_id"] == "2026-11-25-a" and body["status"] == "failed"


def test_on_upload_lets_transient_errors_escape_for_redelivery(capsys):
    store = FakeStore()
    store.put(BUCKET, "incoming/cat.jpg", jpeg())
    store.objects[(BUCKET, "incoming/cat.jpg")].generation = 1764065702512799
    deps = make_deps(store, endpoint=FakeEndpoint(error=TransientError("HTTP 503")))
    with pytest.raises(TransientError):
        on_upload(cloud_event("finalize_incoming.json"), deps)
    [line] = logged(capsys)
    assert line["outcome"] == "retry" and line["error_code"] == TransientError.code


def test_on_upload_logs_one_line_per_image_with_its_error_code(capsys):
    """The line a log-based metric counts: one per image, outcome and error code as fields."""
    store, publisher = FakeStore(), FakePublisher()
    store.put(BUCKET, "incoming/cat.jpg", b"not a jpeg")
    store.objects[(BUCKET, "incoming/cat.jpg")].generation = 1764065702512799
    on_upload(cloud_event("finalize_incoming.json"), make_deps(store, publisher, FakeEndpoint()))
    [body] = publisher.bodies
    [line] = logged(capsys)
    assert line["outcome"] == "failed" and line["error_code"] == body["error"]["code"] == "invalid_image"
