import base64
import json

import flask
import pytest
from functions_framework import event_conversion

from functions.events import EventDecodeError, decode_event
from functions.routing import Action, route
from samdrop.settings import Settings
from tests.unit.function_fakes import load_event

SETTINGS = Settings.from_env({"SAMDROP_BUCKET": "samdrop-local"})


def decode(fixture: dict):
    return decode_event(fixture["type"], fixture["data"], ce_id=fixture.get("id"))


def test_captured_emulator_finalize_decodes():
    # Captured from fake-gcs-server → Pub/Sub emulator → push → functions-framework.
    event = decode(load_event("gcs_finalize_cloudevent.json"))
    assert (event.event_type, event.bucket, event.name) == (
        "OBJECT_FINALIZE",
        "samdrop-local",
        "incoming/cats/cat.jpg",
    )
    assert event.generation == "1795645324987411"
    assert event.content_type == "image/jpeg"
    assert event.size == 19
    assert json.loads(event.metadata["samdrop-prompts"])["boxes"] == [[10, 20, 200, 160]]
    assert event.message_id == "2"
    assert event.uri == "gs://samdrop-local/incoming/cats/cat.jpg"
    assert route(event, SETTINGS).action is Action.SEGMENT


def test_push_body_through_functions_framework_conversion_decodes():
    # What functions-framework does with a raw Pub/Sub push body before calling on_upload.
    push = load_event("gcs_finalize_pubsub_push.json")
    app = flask.Flask("test")
    with app.test_request_context("/", method="POST", json=push):
        cloud_event = event_conversion.background_event_to_cloud_event(flask.request)
    event = decode_event(cloud_event["type"], cloud_event.data, ce_id=cloud_event["id"])
    assert event == decode(load_event("gcs_finalize_cloudevent.json"))


@pytest.mark.parametrize(
    ("fixture", "event_type", "name", "action"),
    [
        ("finalize_incoming.json", "OBJECT_FINALIZE", "incoming/cat.jpg", Action.SEGMENT),
        ("delete_incoming.json", "OBJECT_DELETE", "incoming/cat.jpg", Action.IGNORE),
        ("finalize_results.json", "OBJECT_FINALIZE", "results/incoming/cat.jpg/mask_000.png", Action.IGNORE),
        ("finalize_ready.json", "OBJECT_FINALIZE", "batches/2026-11-25-a/_READY", Action.START_BATCH),
    ],
)
def test_fixtures_decode_and_route(fixture, event_type, name, action):
    event = decode(load_event(fixture))
    assert (event.event_type, event.name, event.bucket) == (event_type, name, "samdrop-local")
    assert event.generation.isdigit()
    assert route(event, SETTINGS).action is action


def test_prompts_travel_in_metadata():
    event = decode(load_event("finalize_incoming.json"))
    assert json.loads(event.metadata["samdrop-prompts"]) == {"points": [[120, 80]], "labels": [1]}


@pytest.mark.parametrize(
    ("fixture", "message"), [("malformed_base64.json", "base64"), ("missing_attributes.json", "bucketId")]
)
def test_malformed_fixtures_raise_decode_error(fixture, message):
    with pytest.raises(EventDecodeError, match=message):
        decode(load_event(fixture))


def _with_message(**changes):
    fixture = load_event("finalize_incoming.json")
    fixture["data"]["message"].update(changes)
    return fixture


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"no": "message"}, "no data.message"),
        ({"message": {"data": ""}}, "no attributes"),
        ("not json", "not JSON"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_malformed_shapes_raise_decode_error(data, message):
    with pytest.raises(EventDecodeError, match=message):
        decode_event("google.cloud.pubsub.topic.v1.messagePublished", data)


def test_payload_that_is_not_json_is_malformed():
    fixture = _with_message(data=base64.b64encode(b"{not json").decode())
    with pytest.raises(EventDecodeError, match="not JSON"):
        decode(fixture)


def test_bad_generation_is_malformed():
    fixture = load_event("finalize_incoming.json")
    fixture["data"]["message"]["attributes"]["objectGeneration"] = "abc"
    with pytest.raises(EventDecodeError, match="generation"):
        decode(fixture)


def test_unsupported_cloudevent_type():
    with pytest.raises(EventDecodeError, match="unsupported"):
        decode_event("com.example.other", {})


def test_payload_format_none_leaves_metadata_unknown():
    fixture = load_event("finalize_incoming.json")
    message = fixture["data"]["message"]
    message["attributes"]["payloadFormat"] = "NONE"
    message["data"] = ""
    event = decode(fixture)
    assert event.metadata is None and event.content_type is None
    assert event.name == "incoming/cat.jpg"


def test_integer_generation_from_fake_gcs_server_is_normalised():
    fixture = load_event("finalize_incoming.json")
    fixture["data"]["message"]["attributes"]["objectGeneration"] = 1764065702512799
    assert decode(fixture).generation == "1764065702512799"


def test_direct_storage_cloudevent_decodes():
    resource = json.loads(base64.b64decode(load_event("finalize_incoming.json")["data"]["message"]["data"]))
    event = decode_event("google.cloud.storage.object.v1.finalized", resource, ce_id="x")
    assert (event.event_type, event.name, event.generation) == (
        "OBJECT_FINALIZE",
        "incoming/cat.jpg",
        "1764065702512799",
    )
