"""functions-framework turns the emulator's raw Pub/Sub push body into Eventarc's CloudEvent.

Both files were captured from the running local stack for the same message: the push body as the
Pub/Sub emulator POSTed it, and the CloudEvent the function received (see tests/data/events).
"""

import json
from pathlib import Path

import functions_framework

EVENTS = Path(__file__).resolve().parent.parent / "data" / "events"
RECORDER = Path(__file__).resolve().parent.parent / "integration" / "recorder_function" / "main.py"


def test_raw_push_body_becomes_the_message_published_cloudevent(tmp_path, monkeypatch):
    record_file = tmp_path / "events.jsonl"
    monkeypatch.setenv("RECORD_FILE", str(record_file))
    push = json.loads((EVENTS / "gcs_finalize_pubsub_push.json").read_text())
    expected = json.loads((EVENTS / "gcs_finalize_cloudevent.json").read_text())

    app = functions_framework.create_app("on_upload", str(RECORDER), "cloudevent")
    # The push endpoint carries the topic path; functions-framework builds the event source from it.
    response = app.test_client().post("/projects/samdrop-local/topics/samdrop-uploads", json=push)

    assert response.status_code == 200
    (received,) = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert received == expected
    assert received["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert received["source"] == "//pubsub.googleapis.com/projects/samdrop-local/topics/samdrop-uploads"
    assert received["data"]["message"]["attributes"]["eventType"] == "OBJECT_FINALIZE"


def test_pulled_message_fixture_matches_the_pushed_one():
    pulled = json.loads((EVENTS / "gcs_finalize_pubsub_message.json").read_text())
    pushed = json.loads((EVENTS / "gcs_finalize_pubsub_push.json").read_text())["message"]
    assert pulled["attributes"] == pushed["attributes"]
    assert pulled["data"] == pushed["data"]
    assert pulled["messageId"] == pushed["messageId"]
