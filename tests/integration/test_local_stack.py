"""The local stack with its real emulators: notifications, push to the function, CLI, teardown."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from google.cloud import storage

from deploy import processes
from deploy.local import LocalStack, emulator_storage_client, port_in_use, pubsub_clients

from .local_stack_support import RECORDER, RunningStack, own_subscriptions, stack_settings, until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = Path(__file__).resolve().parent.parent / "data" / "events"
PYTHON = sys.executable


def _storage(running: RunningStack) -> storage.Client:
    return emulator_storage_client(running.settings.project, running.env["STORAGE_EMULATOR_HOST"])


def _function_events(running: RunningStack, object_id: str) -> list[dict[str, Any]]:
    if not running.record_file.exists():
        return []
    events = [json.loads(line) for line in running.record_file.read_text().splitlines()]
    return [e for e in events if e["data"]["message"]["attributes"].get("objectId") == object_id]


def _samdrop(running: RunningStack, *args: str, env: dict[str, str] | None = None, timeout: float = 60):
    base = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    full_env = {**base, **running.settings.to_env(), **(env or {})}
    return subprocess.run(
        [PYTHON, "-m", "deploy.command", *args], env=full_env, capture_output=True, text=True, timeout=timeout
    )


def test_upload_publishes_a_finalize_notification(local_stack):
    s = local_stack.settings
    publisher, subscriber = pubsub_clients(local_stack.env["PUBSUB_EMULATOR_HOST"])
    name = f"probe-{uuid.uuid4().hex[:8]}"
    path = subscriber.subscription_path(s.project, name)
    subscriber.create_subscription(
        request={"name": path, "topic": publisher.topic_path(s.project, s.uploads_topic)}
    )
    try:
        blob = _storage(local_stack).bucket(s.bucket).blob(f"incoming/{name}.jpg")
        blob.metadata = {"samdrop-prompts": '{"points":[[1,2]],"labels":[1]}'}
        blob.upload_from_string(b"\xff\xd8not-really-a-jpeg", content_type="image/jpeg", timeout=30)

        response = subscriber.pull(request={"subscription": path, "max_messages": 10}, timeout=30)
        (received,) = [m for m in response.received_messages if m.message.attributes["objectId"] == blob.name]
        subscriber.acknowledge(request={"subscription": path, "ack_ids": [received.ack_id]}, timeout=30)
    finally:
        subscriber.delete_subscription(request={"subscription": path}, timeout=30)

    attributes = dict(received.message.attributes)
    fixture = json.loads((EVENTS / "gcs_finalize_pubsub_message.json").read_text())
    assert set(attributes) >= set(fixture["attributes"]) - {"overwroteGeneration"}
    assert attributes["eventType"] == "OBJECT_FINALIZE"
    assert attributes["bucketId"] == s.bucket
    assert attributes["payloadFormat"] == "JSON_API_V1"
    assert attributes["objectGeneration"] == str(blob.generation)
    resource = json.loads(received.message.data)
    assert resource["name"] == blob.name
    assert resource["generation"] == str(blob.generation)
    assert resource["contentType"] == "image/jpeg"
    assert resource["metadata"] == {"samdrop-prompts": '{"points":[[1,2]],"labels":[1]}'}


def test_push_reaches_the_function_as_an_eventarc_cloudevent(local_stack):
    s = local_stack.settings
    object_id = f"incoming/push-{uuid.uuid4().hex[:8]}.png"
    _storage(local_stack).bucket(s.bucket).blob(object_id).upload_from_string(b"png?", timeout=30)

    (event,) = until(lambda: _function_events(local_stack, object_id), 30, "CloudEvent at the function")
    assert event["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert event["source"] == f"//pubsub.googleapis.com/projects/{s.project}/topics/{s.uploads_topic}"
    message = event["data"]["message"]
    assert message["attributes"]["eventType"] == "OBJECT_FINALIZE"
    assert json.loads(base64.b64decode(message["data"]))["name"] == object_id


def test_results_bucket_writes_do_not_notify(local_stack):
    """Only the upload bucket has a notification, as configured on a real bucket."""
    s = local_stack.settings
    client = _storage(local_stack)
    other = client.create_bucket(f"other-{uuid.uuid4().hex[:8]}", timeout=30)
    other.blob("incoming/x.jpg").upload_from_string(b"x", timeout=30)
    marker = f"incoming/after-{uuid.uuid4().hex[:8]}.jpg"
    client.bucket(s.bucket).blob(marker).upload_from_string(b"x", timeout=30)
    until(lambda: _function_events(local_stack, marker), 30, "marker event")
    events = [json.loads(line) for line in local_stack.record_file.read_text().splitlines()]
    assert all(e["data"]["message"]["attributes"]["bucketId"] == s.bucket for e in events)


def test_a_failing_function_dead_letters_after_max_attempts(local_stack):
    s = local_stack.settings
    object_id = f"incoming/fail-on-purpose-{uuid.uuid4().hex[:8]}.jpg"
    _storage(local_stack).bucket(s.bucket).blob(object_id).upload_from_string(b"x", timeout=30)
    _, subscriber = pubsub_clients(local_stack.env["PUBSUB_EMULATOR_HOST"])
    dead = subscriber.subscription_path(s.project, s.dead_letter_subscription)

    def pull_dead_letter() -> list[Any]:
        response = subscriber.pull(request={"subscription": dead, "max_messages": 10}, timeout=10)
        return [m for m in response.received_messages if m.message.attributes.get("objectId") == object_id]

    (letter,) = until(pull_dead_letter, 60, "dead letter")
    subscriber.acknowledge(request={"subscription": dead, "ack_ids": [letter.ack_id]}, timeout=30)
    attributes = letter.message.attributes
    assert attributes["CloudPubSubDeadLetterSourceSubscription"] == s.uploads_subscription
    assert attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == str(s.max_delivery_attempts)
    assert len(_function_events(local_stack, object_id)) == s.max_delivery_attempts


def test_second_resource_creation_is_a_no_op(local_stack):
    changes = local_stack.stack.ensure_resources()
    assert {c.outcome for c in changes} == {"unchanged"}
    # two buckets (uploads, results), 3 topics, 3 subscriptions, the bridge's 2 tally subscriptions
    assert len(changes) == 10


def test_local_env_upload_and_watch_work_for_plain_clients(local_stack, tmp_path):
    s = local_stack.settings
    result = _samdrop(local_stack, "local", "env")
    assert result.returncode == 0, result.stderr
    env = dict(shlex.split(line)[1].split("=", 1) for line in result.stdout.splitlines())
    assert env == local_stack.env

    # A user's own code, configured only by those variables, publishes a completion message.
    user_code = (
        "import os\n"
        "from google.cloud import pubsub_v1, storage\n"
        "bucket = storage.Client().bucket(os.environ['SAMDROP_BUCKET'])\n"
        "assert bucket.exists(timeout=30)\n"
        "publisher = pubsub_v1.PublisherClient()\n"
        "topic = publisher.topic_path(\n"
        "    os.environ['SAMDROP_PROJECT'], os.environ['SAMDROP_COMPLETIONS_TOPIC']\n"
        ")\n"
        'publisher.publish(topic, b\'{"kind": "image", "status": "succeeded"}\', kind=\'image\').result(30)\n'
    )
    # `watch` reads a subscription of its own, made when it starts: it sees what is published after.
    before = set(own_subscriptions(local_stack))
    base = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    watch = subprocess.Popen(
        [PYTHON, "-m", "deploy.command", "watch", "--count", "1", "--timeout", "30"],
        env={**base, **local_stack.settings.to_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    until(lambda: set(own_subscriptions(local_stack)) - before, 30, "watch's own subscription")
    run = subprocess.run(
        [PYTHON, "-c", user_code], env={**base, **env}, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr

    watched, errors = watch.communicate(timeout=60)
    assert watch.returncode == 0, errors
    assert json.loads(watched) == {"kind": "image", "status": "succeeded"}

    folder = tmp_path / "drop"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.png").write_bytes(b"png")
    (folder / "readme.txt").write_text("ignored")
    prompts = '{"boxes": [[1, 2, 30, 40]]}'
    # Without the emulator variables: `upload` finds the running stack through its state file.
    uploaded = _samdrop(local_stack, "upload", str(folder), "--prompts", prompts)
    assert uploaded.returncode == 0, uploaded.stderr
    assert uploaded.stdout.split() == [f"gs://{s.bucket}/incoming/drop/sub/a.png"]
    blob = _storage(local_stack).bucket(s.bucket).get_blob("incoming/drop/sub/a.png", timeout=30)
    assert blob.metadata == {"samdrop-prompts": '{"boxes":[[1,2,30,40]]}'}
    assert blob.content_type == "image/png"

    refused = _samdrop(local_stack, "upload", str(folder), "--prompts", '{"points": [[1, 2]], "labels": []}')
    assert refused.returncode == 2
    assert "1 points but 0 labels" in refused.stderr


def test_status_reports_every_server_healthy(local_stack):
    result = _samdrop(local_stack, "local", "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    services = json.loads(result.stdout)["services"]
    assert [s["name"] for s in services] == ["pubsub", "gcs", "function", "bridge"]
    assert all(s["healthy"] for s in services)


def test_down_from_another_process_leaves_nothing_behind(tmp_path):
    settings = stack_settings(tmp_path / "state")
    env = {
        k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")
    } | settings.to_env() | {"RECORD_FILE": str(tmp_path / "events.jsonl")}  # fmt: skip
    # `up` in one process, `down` in another: only the state file connects them.
    up_code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from deploy.local import LocalStack\n"
        "from samdrop.settings import Settings\n"
        "settings = Settings.from_env(os.environ)\n"
        f"LocalStack(settings, predictor=False, function_source=Path({str(RECORDER)!r})).up()\n"
    )
    started = subprocess.run([PYTHON, "-c", up_code], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    state = processes.load_state(LocalStack(settings).state_path)
    assert state is not None
    assert [r.name for r in state.processes] == ["pubsub", "gcs", "function", "bridge"]
    # gcloud runs java, functions-framework runs gunicorn workers: groups have several members.
    members = {r.name: processes.live_members(r.pgid) for r in state.processes}
    assert len(members["pubsub"]) >= 2 and len(members["function"]) >= 2

    stopped = subprocess.run(
        [PYTHON, "-m", "deploy.command", "local", "down"], env=env, capture_output=True, text=True, timeout=60
    )
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped bridge, function, gcs, pubsub" in stopped.stdout
    for record in state.processes:
        assert processes.live_members(record.pgid) == [], record.name
        assert not port_in_use(record.port), record.name
    assert not LocalStack(settings).state_path.exists()
