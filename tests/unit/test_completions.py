import concurrent.futures
import json
from typing import Any

import pytest
from google.api_core import exceptions as api_exceptions

from functions.batches import BatchStart, pipelines_not_configured
from samdrop.errors import ConfigError, TransientError
from samdrop.messages import (
    BatchCompletion,
    ImageCompletion,
    PubsubPublisher,
    completion_from_json,
    publish_completion,
)
from tests.unit.function_fakes import FakePublisher, FakeStore, settings

SUCCESS = ImageCompletion(
    status="succeeded",
    input="gs://b/incoming/cat.jpg",
    generation="1712345678901234",
    outputs={
        "masks": ["gs://b/results/incoming/cat.jpg/mask_000.png"],
        "metadata": "gs://b/results/incoming/cat.jpg/masks.json",
        "overlay": "gs://b/results/incoming/cat.jpg/overlay.jpg",
    },
    mask_count=1,
    model={"type": "vit_h", "device": "cuda:0"},
    timings_ms={"total": 812, "model": 640},
)


def test_image_success_matches_design_example():
    body = json.loads(SUCCESS.data().decode("utf-8"))
    assert list(body) == [
        "schema_version", "kind", "status", "input", "generation", "outputs", "mask_count", "model",
        "timings_ms", "error",
    ]  # fmt: skip
    assert body["error"] is None and body["generation"] == "1712345678901234"
    assert SUCCESS.attributes() == {"schema_version": "1", "kind": "image", "status": "succeeded"}


def test_image_failure_carries_code_and_message():
    failed = ImageCompletion(
        status="failed", input="gs://b/incoming/x.jpg", generation="1",
        error={"code": "invalid_image", "message": "not an image"},
    )  # fmt: skip
    body = failed.to_json()
    assert body["status"] == "failed" and body["error"] == {
        "code": "invalid_image",
        "message": "not an image",
    }
    assert failed.attributes() == {"schema_version": "1", "kind": "image", "status": "failed"}


def test_batch_message_has_batch_fields_and_attribute():
    batch = BatchCompletion(
        status="partial", batch_id="2026-11-25-a", input="gs://b/batches/2026-11-25-a/",
        images=1000, succeeded=998, failed=2, outputs={"manifest": "gs://m", "report": "gs://r"},
    )  # fmt: skip
    assert list(batch.to_json()) == [
        "schema_version", "kind", "status", "batch_id", "input", "images", "succeeded", "failed",
        "outputs", "error",
    ]  # fmt: skip
    assert batch.attributes() == {
        "schema_version": "1", "kind": "batch", "status": "partial", "batch_id": "2026-11-25-a"
    }  # fmt: skip


def test_round_trip():
    assert completion_from_json(json.loads(SUCCESS.data())) == SUCCESS


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "video", "status": "succeeded"},
        {"kind": "image", "status": "partial"},
        {"kind": "image", "status": "failed"},  # no error
        {"kind": "image", "status": "succeeded", "error": {"code": "x", "message": "y"}},
        {"kind": "image", "status": "failed", "error": {"message": "no code"}},
        {"kind": "batch", "status": "failed", "error": {"code": "x", "message": "y"}},  # no batch_id
    ],
)
def test_invalid_messages_are_refused(fields):
    with pytest.raises(ValueError):
        completion_from_json({"input": "gs://b/x", **fields})


def test_publish_completion_sends_body_and_attributes():
    publisher = FakePublisher()
    publish_completion(publisher, "samdrop-completions", SUCCESS)
    [(topic, body, attributes)] = publisher.messages
    assert (topic, body, attributes) == ("samdrop-completions", SUCCESS.to_json(), SUCCESS.attributes())


class FakeFuture:
    def __init__(self, outcome) -> None:
        self.outcome = outcome

    def result(self, timeout=None):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class FakePublisherClient:
    def __init__(self, outcome) -> None:
        self.outcome = outcome
        self.calls: list[Any] = []

    def topic_path(self, project, topic):
        return f"projects/{project}/topics/{topic}"

    def publish(self, topic, data, **attributes):
        self.calls.append((topic, data, attributes))
        return FakeFuture(self.outcome)


def test_pubsub_publisher_publishes_to_topic_path():
    client = FakePublisherClient("msg-1")
    assert PubsubPublisher(client, "p").publish("t", b"{}", {"kind": "image"}) == "msg-1"
    assert client.calls == [("projects/p/topics/t", b"{}", {"kind": "image"})]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (api_exceptions.ServiceUnavailable("down"), TransientError),
        (concurrent.futures.TimeoutError(), TransientError),
        (api_exceptions.NotFound("no topic"), ConfigError),
    ],
)
def test_pubsub_publisher_errors_are_classified(error, expected):
    with pytest.raises(expected):
        PubsubPublisher(FakePublisherClient(error), "p").publish("t", b"{}", {})


def test_batches_without_pipelines_get_a_clear_failed_completion():
    publisher = FakePublisher()
    request = BatchStart("b1", "samdrop-local", "5", "batches/b1/")
    outcome = pipelines_not_configured(request, settings=settings(), store=FakeStore(), publisher=publisher)
    assert outcome == "batch_not_started"
    [(_, body, attributes)] = publisher.messages
    assert attributes == {"schema_version": "1", "kind": "batch", "status": "failed", "batch_id": "b1"}
    assert body["input"] == "gs://samdrop-local/batches/b1/"
    assert body["error"]["code"] == "pipelines_not_configured"
    assert "not started" in body["error"]["message"] and "SAMDROP_PIPELINE_RUNNER" in body["error"]["message"]


def test_label_counts_appear_only_for_labelled_masks_concepts_first():
    labelled = ImageCompletion(
        status="succeeded", input="gs://b/incoming/a.png", generation="1",
        mask_count=3, label_counts={"solar panel": 2, "car": 0, "roof": 1},
    )  # fmt: skip
    body = labelled.to_json()
    assert list(body)[list(body).index("mask_count") + 1] == "label_counts"
    assert body["label_counts"] == {"solar panel": 2, "car": 0, "roof": 1}
    plain = ImageCompletion(status="succeeded", input="gs://b/incoming/a.png", generation="1")
    assert "label_counts" not in plain.to_json()
    assert completion_from_json(body) == labelled
