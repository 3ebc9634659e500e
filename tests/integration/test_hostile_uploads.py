"""Hostile uploads through the real parts (fake-gcs-server → Pub/Sub emulator → functions-framework →
CPR predictor server): each gets exactly one failed completion with a code and a message naming the
limit, nothing is redelivered, and afterwards an ordinary upload still succeeds. The whole table of
issue #10's hostile inputs runs in process in tests/unit/test_hostile_inputs.py; this is a subset
that needs the real services (object names, notifications, HTTP bodies, generations).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable

import pytest
import requests
from google.cloud.storage import Blob
from PIL import Image

from .local_stack_support import key_of
from .test_event_path import HOST, EventStack, photo, unique
from .test_event_path import events as events  # the module's stack: one per test module

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def thin_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (3000, 1), (90, 90, 90)).save(out, "PNG")
    return out.getvalue()


def upload_raw(events: EventStack, name: str, data: bytes, metadata: dict[str, str]) -> Blob:
    blob = events.bucket.blob(name)
    blob.metadata = metadata
    blob.upload_from_string(data, content_type="image/png")
    return blob


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


# name, how to upload it, code, a fragment of the message
CASES: list[tuple[str, Callable[[EventStack, str], Blob], str, str]] = [
    (
        "90 multimask boxes",
        lambda e, n: e.upload(n, photo(), {"boxes": [[1, 1, 60, 40]] * 90, "multimask": True}),
        "invalid_prompt",
        "SAMDROP_MAX_PROMPTS=64",
    ),
    ("a 3000x1 image", lambda e, n: e.upload(n, thin_png()), "invalid_image", "SAMDROP_MAX_ASPECT_RATIO="),
    (
        # 1,500 levels: deep enough for json.loads to raise RecursionError (2,500 levels, 5,000
        # bytes of metadata, run through a restart in test_store_restart.py).
        "samdrop-prompts nested 1500 deep",
        lambda e, n: upload_raw(e, n, photo(), {"samdrop-prompts": deep(1500)}),
        "invalid_prompt",
        "SAMDROP_MAX_JSON_DEPTH=32",
    ),
    (
        "an automatic grid beyond the points budget",
        lambda e, n: e.upload(n, photo(), {"amg": {"points_per_side": 128, "crop_n_layers": 2}}),
        "invalid_request",
        "SAMDROP_MAX_AUTO_POINTS=",
    ),
]


def test_hostile_uploads_each_get_one_failed_completion_and_the_stack_stays_healthy(events):
    blobs = {}
    for label, send, _, _ in CASES:
        blobs[label] = send(events, unique("hostile.png"))
    # An input of 1,018 bytes, so its output names exceed Cloud Storage's 1,024: no error.json can
    # exist, the completion still comes.
    long_name = f"incoming/{uuid.uuid4().hex[:8]}/" + ("a" * 198 + "/") * 5 + "x.png"
    long_blob = events.upload(long_name, photo())

    for label, _, code, says in CASES:
        message = events.await_completion(blobs[label])
        assert message["status"] == "failed", (label, message)
        assert message["error"]["code"] == code, (label, message["error"])
        assert says in message["error"]["message"], (label, message["error"])
        assert set(events.results(blobs[label].name)) == {"error.json", "completion.json"}
    long = events.await_completion(long_blob, recorded=False)
    assert long["error"]["code"] == "invalid_request"
    assert "SAMDROP_MAX_OBJECT_NAME_BYTES=1024" in long["error"]["message"]
    assert long["outputs"] == {} and events.results(long_name) == {}

    # Acknowledged, not retried: no function log line says "retry", and nothing is published twice.
    sent = [*blobs.values(), long_blob]
    events.completions.exactly(*map(key_of, sent), expect=len(sent))
    for blob in sent:
        assert len(events.completions.about(key_of(blob))) == 1, blob.name
        assert "retry" not in [e["outcome"] for e in events.function_log(blob.name)]

    good = events.upload(unique("after-hostile.png"), photo(seed=5), {"boxes": [[10, 10, 60, 60]]})
    assert events.await_completion(good)["status"] == "succeeded"


def test_a_forged_notification_with_a_generation_like_superscript_two_is_answered_once(events):
    name = unique("forged.png")
    topic = events.publisher.topic_path(events.settings.project, events.settings.uploads_topic)
    events.publisher.publish(
        topic,
        b"",
        eventType="OBJECT_FINALIZE",
        bucketId=events.settings.bucket,
        objectId=name,
        objectGeneration="²",  # str.isdigit() says yes, int() says no
        payloadFormat="NONE",
    ).result(timeout=30)

    # One completion, and no second one after it: acknowledged, not redelivered.
    key = (f"gs://{events.settings.bucket}/{name}", None)
    [message] = events.completions.exactly(key, expect=1)
    assert message["status"] == "failed" and message["generation"] is None
    assert message["error"]["code"] == "invalid_request" and "generation" in message["error"]["message"]


def predict(events: EventStack, body: bytes) -> requests.Response:
    url = f"http://{HOST}:{events.settings.predictor_port}/predict"
    return requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=120)


def test_the_predictor_refuses_oversized_requests_with_a_code_and_reads_only_the_pinned_generation(events):
    too_many = json.dumps({"instances": [{"gcs_uri": "gs://b/x.png"}] * 33}).encode()
    refused = predict(events, too_many)
    assert refused.status_code == 400
    assert refused.json()["detail"]["code"] == "invalid_request"
    assert "SAMDROP_MAX_INSTANCES=32" in refused.json()["detail"]["message"]

    nested = predict(events, ('{"instances": ' + deep(3000) + "}").encode())
    assert nested.status_code == 400 and "SAMDROP_MAX_JSON_DEPTH=32" in nested.json()["detail"]["message"]

    # Replace an object by another of the same size: the old generation is gone, not silently swapped.
    name = unique("replaced.bmp")  # uncompressed: two different pictures of the same byte size
    old = events.upload(name, photo(seed=6, fmt="BMP"))
    new = events.upload(name, photo(seed=7, fmt="BMP"))
    assert old.size == new.size and old.generation != new.generation
    events.await_completion(new)  # let the function's own events settle first
    uri = f"gs://{events.settings.bucket}/{name}"
    instance = {"gcs_uri": uri, "points": [[20, 20]], "labels": [1]}
    body = {
        "instances": [
            {**instance, "generation": str(old.generation)},
            {**instance, "generation": str(new.generation)},
        ]
    }
    stale, current = predict(events, json.dumps(body).encode()).json()["predictions"]
    assert stale["error"]["code"] == "not_found" and str(old.generation) in stale["error"]["message"]
    assert "error" not in current and current["width"] == 160

    # Still healthy: an ordinary request answers.
    ok = predict(events, json.dumps({"instances": [instance]}).encode())
    assert ok.status_code == 200 and "error" not in ok.json()["predictions"][0]
