"""``samdrop sweep`` and ``samdrop redrive`` through fake-gcs-server and the Pub/Sub emulator.

No function runs here: what is checked is what lands on the uploads topic (read back through a pull
subscription, and decoded by the function's own ``decode_event``) and what stays in the dead-letter
subscription. The topics are the tests' own, so the stack's bucket notifications (fake-gcs-server
publishes one per upload onto the stack's uploads topic) never mix in.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from deploy import redrive
from deploy.local import LocalStack, emulator_storage_client, pubsub_clients
from functions.events import PUBSUB_TYPE, decode_event
from samdrop.layout import GENERATION_KEY, output_paths
from samdrop.settings import Settings

from .local_stack_support import settled, stack_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@dataclass
class Emulators:
    storage: Any
    publisher: Any
    subscriber: Any
    settings: Settings  # the tests' own topics
    stack: Settings  # the stack's: fake-gcs-server publishes its notifications on stack.uploads_topic


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    stack_config = stack_settings(tmp_path_factory.mktemp("redrive-state"))
    stack = LocalStack(stack_config, predictor=False, function=False)
    stack.up()
    env = stack.client_env()
    storage_client = emulator_storage_client(stack_config.project, env["STORAGE_EMULATOR_HOST"])
    publisher, subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])
    settings = stack_config.replace(
        uploads_topic="redrive-uploads",
        dead_letter_topic="redrive-dead",
        dead_letter_subscription="redrive-dead-sub",
    )
    for topic in (settings.uploads_topic, settings.dead_letter_topic):
        publisher.create_topic(request={"name": publisher.topic_path(settings.project, topic)})
    try:
        yield Emulators(storage_client, publisher, subscriber, settings, stack_config)
    finally:
        subscriber.close()
        publisher.transport.close()
        storage_client.close()
        stack.down()


def pull_subscription(e: Emulators, name: str, topic: str) -> str:
    path = e.subscriber.subscription_path(e.settings.project, name)
    e.subscriber.create_subscription(
        request={"name": path, "topic": e.publisher.topic_path(e.settings.project, topic)}
    )
    return path


def drain(e: Emulators, subscription: str, *, expect: int = 0) -> list[Any]:
    """The ``expect`` messages on ``subscription`` (acked; waiting up to a minute: a notification can
    take seconds on a loaded machine), failing if one more arrives (see ``settled``)."""
    messages: list[Any] = []

    def arrived() -> list[Any]:
        response = e.subscriber.pull(
            request={"subscription": subscription, "max_messages": 100, "return_immediately": True},
            timeout=10,
        )
        if response.received_messages:
            messages.extend(r.message for r in response.received_messages)
            ack_ids = [r.ack_id for r in response.received_messages]
            e.subscriber.acknowledge(request={"subscription": subscription, "ack_ids": ack_ids})
        return messages

    return settled(arrived, expect, timeout_s=60.0, what=f"messages on {subscription}")


def upload(
    e: Emulators, name: str, metadata: dict[str, str] | None = None, content_type: str = "image/png"
) -> int:
    blob = e.storage.bucket(e.settings.bucket).blob(name)
    blob.metadata = metadata
    blob.upload_from_string(PNG, content_type=content_type)
    return int(blob.generation)


def complete(e: Emulators, name: str, generation: int) -> None:
    """What the function leaves for a finished input: its results folder, completion.json last."""
    paths = output_paths(e.settings, name)
    for obj in (paths.masks_json, paths.overlay, paths.completion):
        blob = e.storage.bucket(paths.bucket).blob(obj)
        blob.metadata = {GENERATION_KEY: str(generation)}
        blob.upload_from_string(b"{}", content_type="application/json")


def delete_results(e: Emulators, name: str) -> None:
    folder = output_paths(e.settings, name).folder
    for blob in e.storage.list_blobs(e.settings.output_bucket, prefix=folder):
        blob.delete()


def as_event(message: Any) -> Any:
    """The function's view of a Pub/Sub message: what Eventarc or a push hands ``decode_event``."""
    data = {"data": base64.b64encode(message.data).decode(), "attributes": dict(message.attributes)}
    return decode_event(PUBSUB_TYPE, {"message": {**data, "messageId": message.message_id}})


def test_a_swept_message_reads_like_the_bucket_notification_it_stands_for(emulators):
    e = emulators
    notifications = pull_subscription(e, "redrive-real-notifications", e.stack.uploads_topic)
    uploads = pull_subscription(e, "redrive-uploads-compare", e.settings.uploads_topic)
    prompts = '{"boxes":[[0,0,1,1]]}'
    generation = upload(e, "incoming/compare/cat.png", {"samdrop-prompts": prompts})
    arrived = drain(e, notifications, expect=1)
    (real,) = [m for m in arrived if m.attributes["objectId"] == "incoming/compare/cat.png"]
    redrive.sweep(e.storage, e.publisher, e.settings, prefix="incoming/compare/", emit=lambda _: None)
    (swept,) = drain(e, uploads, expect=1)
    # type, bucket, name, generation, content type, size: all but the message's own id
    assert dataclasses.replace(as_event(swept), message_id=None) == dataclasses.replace(
        as_event(real), message_id=None
    )
    assert as_event(swept).metadata == as_event(real).metadata == {"samdrop-prompts": prompts}
    assert int(as_event(swept).generation) == generation
    assert set(real.attributes) - {"overwroteGeneration"} <= set(swept.attributes)


def test_the_sweep_command_finds_the_running_stack(emulators):
    e = emulators
    generation = upload(e, "incoming/cli/dog.png")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    env.update({"SAMDROP_STATE_DIR": str(e.stack.state_dir), "SAMDROP_LOG_LEVEL": "WARNING"})
    done = subprocess.run(
        [sys.executable, "-m", "deploy.command", "sweep", "--prefix", "incoming/cli/", "--dry-run"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"would send gs://{e.stack.bucket}/incoming/cli/dog.png#{generation}")
    assert lines[-1] == "sweep: would send 1, already completed 0, not an input the function segments 0"


def test_sweep_after_deleting_five_results_sends_exactly_those_five(emulators):
    e = emulators
    uploads = pull_subscription(e, "redrive-uploads-sweep", e.settings.uploads_topic)
    prompts = '{"points":[[0,0]],"labels":[1]}'
    inputs = {}
    for i in range(10):
        name = f"incoming/sweep/photo-{i}.png"
        inputs[name] = upload(e, name, {"samdrop-prompts": prompts} if i == 3 else None)
        complete(e, name, inputs[name])
    # not an image: the function ignores it, so does sweep
    upload(e, "incoming/sweep/readme.txt", content_type="text/plain")
    lost = sorted(inputs)[:5]
    for name in lost:
        delete_results(e, name)

    lines: list[str] = []
    report = redrive.sweep(e.storage, e.publisher, e.settings, prefix="incoming/sweep/", emit=lines.append)

    assert sorted(report.sent) == sorted((name, inputs[name]) for name in lost)
    assert lines[-1] == "sweep: sent 5, already completed 5, not an input the function segments 1"
    received = drain(e, uploads, expect=5)
    events = [as_event(m) for m in received]
    assert sorted((ev.name, int(ev.generation)) for ev in events) == sorted((n, inputs[n]) for n in lost)
    assert {ev.bucket for ev in events} == {e.settings.bucket}
    assert {ev.event_type for ev in events} == {"OBJECT_FINALIZE"}
    assert {ev.content_type for ev in events} == {"image/png"}
    assert {ev.size for ev in events} == {len(PNG)}
    (prompted,) = [ev for ev in events if ev.name == "incoming/sweep/photo-3.png"]
    assert prompted.metadata == {"samdrop-prompts": prompts}, "prompts travel with the re-sent event"
    assert {m.attributes["payloadFormat"] for m in received} == {"JSON_API_V1"}

    # A re-upload makes the old completion stale; once the lost five complete, only it is sent.
    for name in lost:
        complete(e, name, inputs[name])
    replaced = upload(e, "incoming/sweep/photo-9.png")
    again = redrive.sweep(e.storage, e.publisher, e.settings, prefix="incoming/sweep/", emit=lambda _: None)
    assert again.sent == [("incoming/sweep/photo-9.png", replaced)]
    (message,) = drain(e, uploads, expect=1)
    assert message.attributes["objectGeneration"] == str(replaced)
    assert json.loads(message.data)["generation"] == str(replaced)


def test_redrive_moves_dead_letters_back_and_leaves_the_subscription_empty(emulators):
    e = emulators
    dead = pull_subscription(e, e.settings.dead_letter_subscription, e.settings.dead_letter_topic)
    uploads = pull_subscription(e, "redrive-uploads-redrive", e.settings.uploads_topic)
    topic = e.publisher.topic_path(e.settings.project, e.settings.dead_letter_topic)
    sent = {}
    for i in range(6):
        attributes = {
            "eventType": "OBJECT_FINALIZE",
            "bucketId": e.settings.bucket,
            "objectId": f"incoming/dead-{i}.png",
            "objectGeneration": str(100 + i),
            "CloudPubSubDeadLetterSourceDeliveryCount": "5",
        }
        data = json.dumps({"name": f"incoming/dead-{i}.png", "n": i}).encode()
        e.publisher.publish(topic, data, **attributes).result(timeout=30)
        sent[attributes["objectId"]] = (data, attributes)

    first = redrive.redrive(
        e.subscriber, e.publisher, e.settings, max_messages=2, wait_s=3, emit=lambda _: None
    )
    assert len(first.sent) == 2
    lines: list[str] = []
    rest = redrive.redrive(e.subscriber, e.publisher, e.settings, wait_s=3, emit=lines.append)
    assert len(rest.sent) == 4 and not set(first.sent) & set(rest.sent)
    assert lines[-1] == "redrive: moved 4 dead letter(s) back onto the uploads topic"

    moved = drain(e, uploads, expect=6)
    assert {m.attributes["objectId"]: (m.data, dict(m.attributes)) for m in moved} == sent
    assert drain(e, dead) == [], "every dead letter was acked after its publish"
