"""``samdrop sweep`` and ``samdrop redrive`` (deploy/redrive.py) against in-process stand-ins for the
storage client, the publisher and the subscriber; tests/integration/test_redrive_emulators.py runs
the same functions through fake-gcs-server and the Pub/Sub emulator."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest

from deploy import redrive
from deploy.command import build_parser
from functions.events import PUBSUB_TYPE, decode_event
from samdrop.errors import InvalidRequest
from samdrop.layout import GENERATION_KEY
from samdrop.settings import Settings

# The fakes below stand in for the clients these take.
sweep = cast(Callable[..., redrive.SweepReport], redrive.sweep)
move = cast(Callable[..., redrive.RedriveReport], redrive.redrive)
SETTINGS = Settings.from_env({}, project="p", bucket="uploads-b")
WHEN = datetime(2026, 11, 26, 13, 0, 0, 123000, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)  # dead letters published before any run of these tests


@dataclass
class FakeBlob:
    bucket: Any
    name: str
    generation: int
    content_type: str | None = "image/jpeg"
    metadata: dict[str, str] | None = None
    size: int = 1234
    metageneration: int = 1
    md5_hash: str | None = "bWQ1"
    crc32c: str | None = "Y3Jj"
    etag: str | None = "CJ4="
    storage_class: str | None = "STANDARD"
    time_created: datetime | None = WHEN
    updated: datetime | None = WHEN


class FakeStorage:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], FakeBlob] = {}
        self.listed: list[tuple[str, str]] = []

    def put(self, bucket: str, name: str, generation: int, **fields: Any) -> FakeBlob:
        blob = FakeBlob(SimpleNamespace(name=bucket), name, generation, **fields)
        self.objects[(bucket, name)] = blob
        return blob

    def complete(self, input_name: str, generation: int, bucket: str = "uploads-b-results") -> None:
        self.put(
            bucket, f"results/{input_name}/completion.json", 7, metadata={GENERATION_KEY: str(generation)}
        )

    def list_blobs(self, bucket: str, prefix: str, timeout: float) -> list[FakeBlob]:
        self.listed.append((bucket, prefix))
        return [
            b for (bk, name), b in sorted(self.objects.items()) if bk == bucket and name.startswith(prefix)
        ]


class FakePublisher:
    def __init__(self, fail_after: int | None = None) -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.ids = itertools.count(1000)
        self.fail_after = fail_after
        self.closed = False

    @staticmethod
    def topic_path(project: str, topic: str) -> str:
        return f"projects/{project}/topics/{topic}"

    def publish(self, topic: str, data: bytes, **attributes: str) -> Future[str]:
        future: Future[str] = Future()
        if self.fail_after is not None and len(self.published) >= self.fail_after:
            future.set_exception(RuntimeError("publish failed"))
            return future
        self.published.append((topic, data, attributes))
        future.set_result(str(next(self.ids)))
        return future


@dataclass
class Queue:
    """A pull subscription: messages leased by a pull until acked or released."""

    messages: dict[str, Any] = field(default_factory=dict)  # message id → message
    leased: set[str] = field(default_factory=set)
    acked: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


class FakeSubscriber:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    @staticmethod
    def subscription_path(project: str, name: str) -> str:
        return f"projects/{project}/subscriptions/{name}"

    def pull(self, request: dict[str, Any], timeout: float) -> Any:
        assert request["subscription"] == "projects/p/subscriptions/samdrop-dead-letter-sub"
        free = [m for mid, m in self.queue.messages.items() if mid not in self.queue.leased]
        chosen = free[: request["max_messages"]]
        self.queue.leased |= {m.message_id for m in chosen}
        received = [SimpleNamespace(ack_id=f"ack-{m.message_id}", message=m) for m in chosen]
        return SimpleNamespace(received_messages=received)

    def acknowledge(self, request: dict[str, Any], timeout: float) -> None:
        for ack_id in request["ack_ids"]:
            message_id = ack_id.removeprefix("ack-")
            self.queue.messages.pop(message_id)
            self.queue.leased.discard(message_id)
            self.queue.acked.append(message_id)
            self.queue.events.append(f"ack {message_id}")

    def modify_ack_deadline(self, request: dict[str, Any], timeout: float) -> None:
        assert request["ack_deadline_seconds"] == 0
        for ack_id in request["ack_ids"]:
            message_id = ack_id.removeprefix("ack-")
            self.queue.leased.discard(message_id)
            self.queue.released.append(message_id)


def dead_letter(message_id: str, name: str, published: datetime = LONG_AGO) -> Any:
    return SimpleNamespace(
        message_id=message_id,
        publish_time=published,
        data=json.dumps({"name": name}).encode(),
        attributes={
            "eventType": "OBJECT_FINALIZE",
            "bucketId": "uploads-b",
            "objectId": name,
            "objectGeneration": "5",
            "CloudPubSubDeadLetterSourceDeliveryCount": "5",
        },
    )


def as_cloudevent_data(data: bytes, attributes: dict[str, str]) -> dict[str, Any]:
    """What a push (or Eventarc) hands the function for a message published with these."""
    return {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes, "messageId": "9"}}


# --- the finalize message ----------------------------------------------------------------------
def test_the_sent_message_decodes_as_the_uploads_finalize_event():
    storage = FakeStorage()
    prompts = '{"points":[[3,4]],"labels":[1]}'
    blob = storage.put(
        "uploads-b", "incoming/cat.jpg", 1732625000123456, metadata={"samdrop-prompts": prompts}
    )
    message = redrive.finalize_message(blob)
    event = decode_event(PUBSUB_TYPE, as_cloudevent_data(message.data, message.attributes))
    assert (event.event_type, event.bucket, event.name) == (
        "OBJECT_FINALIZE",
        "uploads-b",
        "incoming/cat.jpg",
    )
    assert event.generation == "1732625000123456"
    assert (event.content_type, event.size) == ("image/jpeg", 1234)
    assert event.metadata == {"samdrop-prompts": prompts}, "the prompts travel with the re-sent event"
    assert message.attributes["payloadFormat"] == "JSON_API_V1"
    assert message.attributes["notificationConfig"] == (
        "projects/_/buckets/uploads-b/notificationConfigs/samdrop-sweep"
    )
    resource = json.loads(message.data)
    assert resource["id"] == "uploads-b/incoming/cat.jpg/1732625000123456"
    assert (resource["generation"], resource["size"]) == ("1732625000123456", "1234")  # strings, as GCS
    assert resource["timeCreated"] == "2026-11-26T13:00:00.123000Z"


def test_an_object_without_optional_fields_leaves_them_out():
    blob = FakeStorage().put("b", "incoming/x.png", 3, content_type=None, md5_hash=None, metadata=None)
    resource = json.loads(redrive.finalize_message(blob).data)
    assert "contentType" not in resource and "metadata" not in resource and "md5Hash" not in resource


# --- sweep ---------------------------------------------------------------------------------------
def five_done_five_not(storage: FakeStorage) -> set[tuple[str, int]]:
    """Ten images: five completed for their current generation, five not (for five reasons)."""
    for i in range(5):
        storage.put("uploads-b", f"incoming/done/{i}.jpg", 100 + i)
        storage.complete(f"incoming/done/{i}.jpg", 100 + i)
    pending = {
        ("incoming/new.jpg", 1),  # nothing written yet
        ("incoming/replaced.jpg", 20),  # completion.json is for the older upload 10
        ("incoming/record-only.png", 3),  # masks.json written, completion missing
        ("incoming/untagged.jpg", 4),  # a completion.json samdrop did not write
        ("incoming/deep/er/y.webp", 5),
    }
    for name, generation in pending:
        storage.put("uploads-b", name, generation)
    storage.complete("incoming/replaced.jpg", 10)
    storage.put("uploads-b", "results/incoming/record-only.png/masks.json", 9, metadata={GENERATION_KEY: "3"})
    storage.put("uploads-b", "results/incoming/untagged.jpg/completion.json", 9, metadata=None)
    return pending


def test_sweep_sends_exactly_the_inputs_without_a_completion_for_their_generation():
    storage, publisher, lines = FakeStorage(), FakePublisher(), list[str]()
    pending = five_done_five_not(storage)
    storage.put("uploads-b", "incoming/", 1, content_type="application/x-directory")  # a folder
    storage.put("uploads-b", "incoming/notes.txt", 2, content_type="text/plain")  # not an image
    storage.put("uploads-b", "batches/b1/a.jpg", 2)  # a batch's image: the batch's business
    report = sweep(storage, publisher, SETTINGS, emit=lines.append)
    sent = {(a["objectId"], int(a["objectGeneration"])) for _, _, a in publisher.published}
    assert sent == pending == set(report.sent)
    assert len(publisher.published) == 5
    assert {topic for topic, _, _ in publisher.published} == {"projects/p/topics/samdrop-uploads"}
    assert (report.completed, report.ignored) == (5, 2)
    assert lines[-1] == "sweep: sent 5, already completed 5, not an input the function segments 2"
    assert len(lines) == 13  # one per object under incoming/, then the summary
    assert any(
        "incoming/replaced.jpg#20" in line and "completion is for generation 10" in line for line in lines
    )


def test_sweep_dry_run_sends_nothing_and_says_what_it_would():
    storage, publisher, lines = FakeStorage(), FakePublisher(), list[str]()
    pending = five_done_five_not(storage)
    report = sweep(storage, publisher, SETTINGS, dry_run=True, emit=lines.append)
    assert publisher.published == []
    assert set(report.sent) == pending
    assert sum(line.startswith("would send") for line in lines) == 5
    assert lines[-1].startswith("sweep: would send 5,")


def test_sweep_reads_completions_from_the_results_bucket_and_honours_prefix():
    settings = SETTINGS.replace(results_bucket="results-b")
    storage, publisher = FakeStorage(), FakePublisher()
    storage.put("uploads-b", "incoming/a/1.jpg", 1)
    storage.put("uploads-b", "incoming/a/2.jpg", 2)
    storage.put("uploads-b", "incoming/b/3.jpg", 3)
    storage.complete("incoming/a/1.jpg", 1, bucket="results-b")
    storage.complete("incoming/a/2.jpg", 2, bucket="uploads-b")  # the upload bucket: not a record
    report = sweep(storage, publisher, settings, prefix="incoming/a/", emit=lambda _: None)
    assert report.sent == [("incoming/a/2.jpg", 2)]
    assert storage.listed == [("results-b", "results/incoming/a/"), ("uploads-b", "incoming/a/")]


def test_outputs_under_the_incoming_prefix_are_never_inputs():
    settings = SETTINGS.replace(results_prefix="incoming/_results/")
    storage, publisher = FakeStorage(), FakePublisher()
    storage.put("uploads-b", "incoming/a.jpg", 1)
    storage.put("uploads-b", "incoming/_results/incoming/a.jpg/overlay.jpg", 2)
    report = sweep(storage, publisher, settings, emit=lambda _: None)
    assert (report.sent, report.ignored) == ([("incoming/a.jpg", 1)], 1)


def test_a_large_sweep_publishes_in_batches_and_reports_every_message():
    storage, publisher, lines = FakeStorage(), FakePublisher(), list[str]()
    for i in range(250):
        storage.put("uploads-b", f"incoming/many/{i:03d}.jpg", 1000 + i)
    report = sweep(storage, publisher, SETTINGS, emit=lines.append)
    assert len(report.sent) == len(publisher.published) == 250
    sent_lines = [line for line in lines if line.startswith("sent ")]
    assert len(sent_lines) == 250 and len({line.split("message ")[1] for line in sent_lines}) == 250
    assert "incoming/many/000.jpg#1000" in sent_lines[0] and "incoming/many/249.jpg#1249" in sent_lines[-1]


@pytest.mark.parametrize("prefix", ["batches/", "results/incoming/", "inc"])
def test_sweep_refuses_a_prefix_outside_the_incoming_prefix(prefix):
    with pytest.raises(InvalidRequest, match="not under the incoming prefix"):
        sweep(FakeStorage(), FakePublisher(), SETTINGS, prefix=prefix, emit=lambda _: None)


# --- redrive -------------------------------------------------------------------------------------
def queue_of(count: int) -> Queue:
    queue = Queue()
    for i in range(count):
        queue.messages[f"m{i}"] = dead_letter(f"m{i}", f"incoming/{i}.jpg")
    return queue


def test_redrive_moves_every_dead_letter_unchanged_and_acks_each_after_its_publish():
    queue, publisher, lines = queue_of(7), FakePublisher(), list[str]()
    originals = {mid: (m.data, dict(m.attributes)) for mid, m in queue.messages.items()}
    report = move(FakeSubscriber(queue), publisher, SETTINGS, wait_s=0.01, emit=lines.append)
    assert queue.messages == {} and sorted(queue.acked) == sorted(originals)
    assert report.sent == [f"m{i}" for i in range(7)]
    assert [(d, a) for _, d, a in publisher.published] == [originals[f"m{i}"] for i in range(7)]
    assert {topic for topic, _, _ in publisher.published} == {"projects/p/topics/samdrop-uploads"}
    assert lines[-1] == "redrive: moved 7 dead letter(s) back onto the uploads topic"
    assert "gs://uploads-b/incoming/0.jpg#5" in lines[0]


def test_redrive_max_moves_at_most_that_many():
    queue, publisher = queue_of(250), FakePublisher()
    report = move(
        FakeSubscriber(queue), publisher, SETTINGS, max_messages=120, wait_s=0.01, emit=lambda _: None
    )
    assert len(report.sent) == len(publisher.published) == 120
    assert len(queue.messages) == 130 and not queue.leased - set(queue.messages)


def test_redrive_dry_run_publishes_nothing_and_releases_every_message():
    queue, publisher, lines = queue_of(3), FakePublisher(), list[str]()
    report = move(FakeSubscriber(queue), publisher, SETTINGS, dry_run=True, wait_s=0.01, emit=lines.append)
    assert publisher.published == [] and queue.acked == []
    assert len(queue.messages) == 3 and queue.leased == set()
    assert report.sent == ["m0", "m1", "m2"]
    assert lines[-1] == "redrive: would move 3 dead letter(s) back onto the uploads topic"


def test_a_failed_publish_keeps_its_dead_letter_and_those_after_it():
    queue, publisher = queue_of(5), FakePublisher(fail_after=2)
    with pytest.raises(RuntimeError, match="publish failed"):
        move(FakeSubscriber(queue), publisher, SETTINGS, wait_s=0.01, emit=lambda _: None)
    assert queue.acked == ["m0", "m1"]
    assert sorted(queue.messages) == ["m2", "m3", "m4"] and queue.leased == set()


def test_a_dead_letter_that_arrives_during_the_run_is_left_for_the_next_one():
    """A redriven message that fails again comes back as a new dead letter: moving it again in the
    same run could loop for as long as the cause lasts."""
    queue, publisher = queue_of(2), FakePublisher()
    later = WHEN.replace(minute=5)
    queue.messages["back-again"] = dead_letter("back-again", "incoming/0.jpg", published=later)
    report = move(
        FakeSubscriber(queue), publisher, SETTINGS, wait_s=0.01, emit=lambda _: None, now=lambda: WHEN
    )
    assert report.sent == ["m0", "m1"]
    assert list(queue.messages) == ["back-again"] and queue.leased == set()
    assert queue.released == ["back-again"]


def test_redrive_refuses_a_max_below_one():
    with pytest.raises(InvalidRequest, match="--max"):
        move(FakeSubscriber(Queue()), FakePublisher(), SETTINGS, max_messages=0)


# --- the commands --------------------------------------------------------------------------------
def test_sweep_and_redrive_are_samdrop_commands():
    from deploy.cli import redrive_command, sweep_command

    args = build_parser().parse_args(["sweep", "--prefix", "incoming/a/", "--dry-run"])
    assert (args.func, args.prefix, args.dry_run) == (sweep_command, "incoming/a/", True)
    args = build_parser().parse_args(["redrive", "--max", "3"])
    assert (args.func, args.max, args.dry_run) == (redrive_command, 3, False)
