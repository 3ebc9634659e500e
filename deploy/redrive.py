"""``samdrop sweep`` and ``samdrop redrive``: send unfinished work through the function again.

Both speak only through the official clients (``google-cloud-storage``, ``google-cloud-pubsub``)
handed in by the caller, so the same code runs against the local stack's emulators and Google Cloud.

* :func:`sweep` finds every single-upload input under the incoming prefix whose *current*
  generation has no completion record (``results/<input>/completion.json`` tagged with that
  generation, docs/design.md "Idempotency") and publishes onto the uploads topic the message a GCS
  ``OBJECT_FINALIZE`` notification would carry for it. Completed inputs (succeeded or failed) and
  objects the function would ignore (folder placeholders, non-images) are left alone.
* :func:`redrive` pulls the dead-letter subscription and republishes each message, data and
  attributes unchanged, onto the uploads topic; a message is acknowledged only after its publish
  succeeded, so a failure loses nothing.

Re-sending is safe: the function keys work by (bucket, object, generation) and finishes or
republishes from what it finds (``samdrop/outputs.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc

from samdrop.errors import InvalidRequest
from samdrop.images import is_image_object
from samdrop.layout import input_generation, output_paths
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S, Settings

if TYPE_CHECKING:
    from google.cloud import pubsub_v1, storage

PULL_WAIT_S = 10.0  # an empty pull of the dead-letter subscription ends the redrive
PULL_BATCH = 100
PUBLISH_BATCH = 100  # publishes in flight before sweep waits for them
# What GCS names the notification in a real event; a re-sent one names the command instead.
NOTIFICATION_CONFIG = "projects/_/buckets/{bucket}/notificationConfigs/samdrop-{command}"

Emit = Callable[[str], None]


@dataclass(frozen=True)
class Finalize:
    """The Pub/Sub message a GCS ``OBJECT_FINALIZE`` notification (payload ``JSON_API_V1``) carries:
    ``data`` is the object resource as JSON bytes, ``attributes`` name bucket, object, generation."""

    data: bytes
    attributes: dict[str, str]


@dataclass
class SweepReport:
    """What :func:`sweep` did; ``sent`` holds ``(object name, generation)`` in listing order."""

    sent: list[tuple[str, int]] = field(default_factory=list)
    completed: int = 0
    ignored: int = 0
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would send" if self.dry_run else "sent"
        return (
            f"sweep: {verb} {len(self.sent)}, already completed {self.completed}, "
            f"not an input the function segments {self.ignored}"
        )


@dataclass
class RedriveReport:
    """What :func:`redrive` did; ``sent`` holds the dead letters' message ids, in pull order."""

    sent: list[str] = field(default_factory=list)
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would move" if self.dry_run else "moved"
        return f"redrive: {verb} {len(self.sent)} dead letter(s) back onto the uploads topic"


def object_resource(blob: Any) -> dict[str, Any]:
    """The JSON API object resource of ``blob`` (a ``storage.Blob`` from a listing): the fields a
    notification's payload has that the function reads or a subscriber may, absent ones left out.
    Generation, metageneration and size are decimal strings, as GCS writes them."""
    resource = {
        "kind": "storage#object",
        "id": f"{blob.bucket.name}/{blob.name}/{blob.generation}",
        "name": blob.name,
        "bucket": blob.bucket.name,
        "generation": _text(blob.generation),
        "metageneration": _text(blob.metageneration),
        "contentType": blob.content_type,
        "size": _text(blob.size),
        "md5Hash": blob.md5_hash,
        "crc32c": blob.crc32c,
        "etag": blob.etag,
        "storageClass": blob.storage_class,
        "timeCreated": _rfc3339(blob.time_created),
        "updated": _rfc3339(blob.updated),
        "metadata": dict(blob.metadata) if blob.metadata else None,
    }
    return {key: value for key, value in resource.items() if value is not None}


def finalize_message(blob: Any, *, command: str = "sweep") -> Finalize:
    """What GCS would publish for ``blob``'s finalize (see functions/events.py for what is read)."""
    bucket = blob.bucket.name
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "bucketId": bucket,
        "objectId": blob.name,
        "objectGeneration": str(blob.generation),
        "payloadFormat": "JSON_API_V1",
        "notificationConfig": NOTIFICATION_CONFIG.format(bucket=bucket, command=command),
    }
    if blob.time_created is not None:
        attributes["eventTime"] = _rfc3339(blob.time_created) or ""
    data = json.dumps(object_resource(blob), separators=(",", ":"), ensure_ascii=False).encode()
    return Finalize(data, attributes)


def sweep_prefix(settings: Settings, prefix: str | None) -> str:
    """``prefix`` checked to lie under the incoming prefix (default: the incoming prefix itself)."""
    if prefix is None:
        return settings.incoming_prefix
    prefix = prefix.lstrip("/")
    if not prefix.startswith(settings.incoming_prefix):
        raise InvalidRequest(
            f"--prefix {prefix!r} is not under the incoming prefix {settings.incoming_prefix!r}: "
            f"only single uploads are swept (a batch resumes with `samdrop batch run ID`)"
        )
    return prefix


def completion_generations(storage_client: storage.Client, settings: Settings, prefix: str) -> dict[str, int]:
    """``completion.json`` object name → the input generation it records, for every input under
    ``prefix``: one listing of the results folder that mirrors it."""
    # output_paths(settings, name).folder is results/<name>/: every one of them starts with this
    folder = settings.results_prefix + prefix
    completions: dict[str, int] = {}
    for blob in storage_client.list_blobs(
        settings.output_bucket, prefix=folder, timeout=settings.request_timeout_s
    ):
        if blob.name.endswith("/completion.json"):
            generation = input_generation(blob.metadata)
            if generation is not None:
                completions[blob.name] = generation
    return completions


def sweep(
    storage_client: storage.Client,
    publisher: pubsub_v1.PublisherClient,
    settings: Settings,
    *,
    prefix: str | None = None,
    dry_run: bool = False,
    emit: Emit = print,
) -> SweepReport:
    """Re-send every input under ``prefix`` (default the incoming prefix) whose current generation
    has no completion record; emit one line per object looked at. Completion records are listed
    before the inputs, so an input completed meanwhile is at worst sent once more (harmless)."""
    prefix = sweep_prefix(settings, prefix)
    completions = completion_generations(storage_client, settings, prefix)
    topic = publisher.topic_path(settings.project, settings.uploads_topic)
    report = SweepReport(dry_run=dry_run)
    in_flight: list[tuple[str, str, Any]] = []  # (where, why, publish future): the client batches them

    def wait_for_publishes() -> None:
        for where, why, future in in_flight:
            emit(f"sent       {where}  message {future.result(timeout=DEFAULT_REQUEST_TIMEOUT_S)}  ({why})")
        in_flight.clear()

    for blob in storage_client.list_blobs(settings.bucket, prefix=prefix, timeout=settings.request_timeout_s):
        name, generation = blob.name, int(blob.generation)
        where = f"gs://{settings.bucket}/{name}#{generation}"
        if name.endswith("/") or name.startswith(settings.results_prefix):
            report.ignored += 1
            emit(f"ignored    {where}  (a folder placeholder or an output, never an input)")
            continue
        if not is_image_object(name, blob.content_type):
            report.ignored += 1
            emit(f"ignored    {where}  (not an image the function segments)")
            continue
        completed = completions.get(output_paths(settings, name).completion)
        if completed == generation:
            report.completed += 1
            emit(f"completed  {where}")
            continue
        why = "no completion" if completed is None else f"completion is for generation {completed}"
        report.sent.append((name, generation))
        if dry_run:
            emit(f"would send {where}  ({why})")
            continue
        message = finalize_message(blob, command="sweep")
        attributes: dict[str, Any] = dict(message.attributes)  # publish() types **kwargs as its options
        in_flight.append((where, why, publisher.publish(topic, message.data, **attributes)))
        if len(in_flight) >= PUBLISH_BATCH:
            wait_for_publishes()
    wait_for_publishes()
    emit(report.summary())
    return report


def redrive(
    subscriber: pubsub_v1.SubscriberClient,
    publisher: pubsub_v1.PublisherClient,
    settings: Settings,
    *,
    max_messages: int | None = None,
    dry_run: bool = False,
    emit: Emit = print,
    wait_s: float = PULL_WAIT_S,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RedriveReport:
    """Move dead letters (``settings.dead_letter_subscription``) back onto the uploads topic, at most
    ``max_messages`` (None: until a pull waits ``wait_s`` and finds nothing). Each message is acked
    only after its publish succeeded; one whose publish fails is released for a later run and the
    error raised. ``dry_run`` pulls, reports and releases every message, publishing nothing.

    Only dead letters published before the run began (``now()``) move: one that fails again while
    the run lasts comes back later and is left for the next run, so a redrive always ends."""
    if max_messages is not None and max_messages < 1:
        raise InvalidRequest(f"--max must be at least 1, got {max_messages}")
    subscription = subscriber.subscription_path(settings.project, settings.dead_letter_subscription)
    topic = publisher.topic_path(settings.project, settings.uploads_topic)
    report = RedriveReport(dry_run=dry_run)
    started = now()
    seen: set[str] = set()
    held: list[str] = []  # ack ids released at the end (released now, they would be pulled again)
    try:
        while max_messages is None or len(report.sent) < max_messages:
            wanted = PULL_BATCH if max_messages is None else min(PULL_BATCH, max_messages - len(report.sent))
            received = _pull(subscriber, subscription, wanted, wait_s)
            late = [r for r in received if r.message.publish_time > started]
            held += [r.ack_id for r in late]
            received = [r for r in received if r.message.publish_time <= started]
            if not received:
                break
            fresh = [r for r in received if r.message.message_id not in seen]
            fresh_ids = {r.ack_id for r in fresh}
            seen.update(r.message.message_id for r in received)
            if dry_run:
                held += [r.ack_id for r in received]
                for r in fresh:
                    report.sent.append(r.message.message_id)
                    emit(f"would move {_describe(r.message)}")
                continue
            # A message seen before is one whose ack came too late: it was published already.
            _ack(subscriber, subscription, [r.ack_id for r in received if r.ack_id not in fresh_ids])
            _republish(subscriber, publisher, subscription, topic, fresh, report, emit)
    finally:
        _release(subscriber, subscription, held)
    emit(report.summary())
    return report


def _republish(
    subscriber: pubsub_v1.SubscriberClient,
    publisher: pubsub_v1.PublisherClient,
    subscription: str,
    topic: str,
    received: list[Any],
    report: RedriveReport,
    emit: Emit,
) -> None:
    futures = [(r, publisher.publish(topic, r.message.data, **dict(r.message.attributes))) for r in received]
    failed: Exception | None = None
    for index, (r, future) in enumerate(futures):
        try:
            message_id = future.result(timeout=DEFAULT_REQUEST_TIMEOUT_S)
        except Exception as exc:  # released below, so the dead letter stays for the next run
            failed = exc
            _release(subscriber, subscription, [f[0].ack_id for f in futures[index:]])
            break
        _ack(subscriber, subscription, [r.ack_id])
        report.sent.append(r.message.message_id)
        emit(f"moved      {_describe(r.message)}  → message {message_id}")
    if failed is not None:
        emit(report.summary())
        raise failed


def _pull(subscriber: pubsub_v1.SubscriberClient, subscription: str, wanted: int, wait_s: float) -> list[Any]:
    try:
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": wanted}, timeout=wait_s
        )
    except gexc.DeadlineExceeded:
        return []
    return list(response.received_messages)


def _ack(subscriber: pubsub_v1.SubscriberClient, subscription: str, ack_ids: Iterable[str]) -> None:
    ids = list(ack_ids)
    if ids:
        subscriber.acknowledge(
            request={"subscription": subscription, "ack_ids": ids}, timeout=DEFAULT_REQUEST_TIMEOUT_S
        )


def _release(subscriber: pubsub_v1.SubscriberClient, subscription: str, ack_ids: Iterable[str]) -> None:
    """Nack: the messages are delivered again at once, to this or a later pull."""
    ids = list(ack_ids)
    if ids:
        subscriber.modify_ack_deadline(
            request={"subscription": subscription, "ack_ids": ids, "ack_deadline_seconds": 0},
            timeout=DEFAULT_REQUEST_TIMEOUT_S,
        )


def _describe(message: Any) -> str:
    attributes: Mapping[str, str] = message.attributes
    if "objectId" in attributes:
        bucket, generation = attributes.get("bucketId", "?"), attributes.get("objectGeneration", "?")
        what = f"gs://{bucket}/{attributes['objectId']}#{generation}"
    else:
        what = f"{len(message.data)} bytes, attributes {sorted(attributes)}"
    return f"dead letter {message.message_id}: {what}"


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _rfc3339(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")
