"""Idempotent creation of the buckets, topics and subscriptions samdrop needs.

Every function takes its clients and plain values as arguments, so the same code provisions the
local emulators and a real Google Cloud project. Each returns what it did (``created``,
``updated`` or ``unchanged``); a second run returns ``unchanged`` everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1, storage
from google.protobuf import duration_pb2, field_mask_pb2
from google.pubsub_v1 import types as pubsub_types

from samdrop.errors import ConfigError
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S, Settings

Outcome = Literal["created", "updated", "unchanged"]
TIMEOUT_S = DEFAULT_REQUEST_TIMEOUT_S  # per admin call (deploy/gcp reuses it)


@dataclass(frozen=True)
class Change:
    """One resource and what ``ensure_*`` did to it."""

    kind: str
    name: str
    outcome: Outcome


@dataclass(frozen=True)
class PushDelivery:
    """How Pub/Sub delivers to the function: deadline, retry backoff and dead-lettering.

    ``endpoint`` None makes it a pull subscription with the same policies: the local stack's
    bridge (``deploy/bridge.py``) pulls it and posts to the function as push would.
    """

    endpoint: str | None
    ack_deadline_s: int
    min_backoff_s: float
    max_backoff_s: float
    dead_letter_topic: str  # full path: projects/P/topics/T
    max_delivery_attempts: int

    def __post_init__(self) -> None:
        # Pub/Sub's own bounds, checked here so a bad value fails before any API call.
        if not 10 <= self.ack_deadline_s <= 600:
            raise ConfigError(
                f"SAMDROP_PUSH_ACK_DEADLINE_S must be within 10..600, got {self.ack_deadline_s}"
            )
        if not 0 <= self.min_backoff_s <= self.max_backoff_s <= 600:
            raise ConfigError(
                "need 0 <= SAMDROP_RETRY_MIN_BACKOFF_S <= SAMDROP_RETRY_MAX_BACKOFF_S <= 600, got "
                f"{self.min_backoff_s} and {self.max_backoff_s}"
            )
        if not 5 <= self.max_delivery_attempts <= 100:
            raise ConfigError("SAMDROP_MAX_DELIVERY_ATTEMPTS must be within 5..100")


def ensure_bucket(
    client: storage.Client,
    name: str,
    *,
    location: str | None = None,
    uniform_access: bool = False,
    public_access_prevention: str | None = None,
) -> Change:
    """Create bucket ``name`` unless it exists.

    ``uniform_access`` and ``public_access_prevention`` (``"enforced"``) apply to a bucket created
    here; an existing bucket is left as it is (``deploy.gcp`` brings its access settings in line).
    """
    if client.lookup_bucket(name, timeout=TIMEOUT_S) is not None:
        return Change("bucket", name, "unchanged")
    bucket = client.bucket(name)
    if uniform_access:
        bucket.iam_configuration.uniform_bucket_level_access_enabled = True
    if public_access_prevention is not None:
        bucket.iam_configuration.public_access_prevention = public_access_prevention
    try:
        client.create_bucket(bucket, location=location, timeout=TIMEOUT_S)
    except gexc.Conflict:  # created meanwhile by someone else: the goal is met
        return Change("bucket", name, "unchanged")
    return Change("bucket", name, "created")


def ensure_topic(publisher: pubsub_v1.PublisherClient, project: str, name: str) -> Change:
    """Create topic ``projects/<project>/topics/<name>`` unless it exists."""
    path = publisher.topic_path(project, name)
    try:
        publisher.create_topic(request={"name": path}, timeout=TIMEOUT_S)
    except gexc.AlreadyExists:
        return Change("topic", path, "unchanged")
    return Change("topic", path, "created")


def ensure_pull_subscription(
    subscriber: pubsub_v1.SubscriberClient, project: str, name: str, topic: str, *, ack_deadline_s: int = 60
) -> Change:
    """A pull subscription ``name`` on topic ``topic`` (short name, same project)."""
    wanted = pubsub_types.Subscription(
        name=subscriber.subscription_path(project, name),
        topic=subscriber.topic_path(project, topic),
        ack_deadline_seconds=ack_deadline_s,
    )
    return _ensure_subscription(subscriber, wanted, ("ack_deadline_seconds",))


def ensure_push_subscription(
    subscriber: pubsub_v1.SubscriberClient, project: str, name: str, topic: str, delivery: PushDelivery
) -> Change:
    """A push subscription on ``topic`` to ``delivery.endpoint`` (pull when None) with retry and
    dead-letter policies.

    An existing subscription whose endpoint or policies differ is updated in place (a restarted
    function may listen on a new port); its topic cannot change, so a different topic is an error.
    """
    wanted = pubsub_types.Subscription(
        name=subscriber.subscription_path(project, name),
        topic=subscriber.topic_path(project, topic),
        push_config=pubsub_types.PushConfig(push_endpoint=delivery.endpoint or ""),
        ack_deadline_seconds=delivery.ack_deadline_s,
        retry_policy=pubsub_types.RetryPolicy(
            minimum_backoff=_duration(delivery.min_backoff_s),
            maximum_backoff=_duration(delivery.max_backoff_s),
        ),
        dead_letter_policy=pubsub_types.DeadLetterPolicy(
            dead_letter_topic=delivery.dead_letter_topic,
            max_delivery_attempts=delivery.max_delivery_attempts,
        ),
    )
    managed = ("push_config", "ack_deadline_seconds", "retry_policy", "dead_letter_policy")
    return _ensure_subscription(subscriber, wanted, managed)


def ensure_delivery_policies(
    subscriber: pubsub_v1.SubscriberClient,
    subscription: str,
    *,
    min_backoff_s: float,
    max_backoff_s: float,
    dead_letter_topic: str,
    max_delivery_attempts: int,
) -> Change:
    """Retry backoff and dead-lettering on an existing subscription someone else created.

    For the subscription Eventarc makes for a gen2 function's Pub/Sub trigger: its push endpoint
    and ack deadline belong to Eventarc, so only the two policies are compared and updated.
    ``subscription`` and ``dead_letter_topic`` are full paths.
    """
    wanted = pubsub_types.Subscription(
        name=subscription,
        retry_policy=pubsub_types.RetryPolicy(
            minimum_backoff=_duration(min_backoff_s), maximum_backoff=_duration(max_backoff_s)
        ),
        dead_letter_policy=pubsub_types.DeadLetterPolicy(
            dead_letter_topic=dead_letter_topic, max_delivery_attempts=max_delivery_attempts
        ),
    )
    current = subscriber.get_subscription(request={"subscription": subscription}, timeout=TIMEOUT_S)
    differing = [
        f for f in ("retry_policy", "dead_letter_policy") if getattr(current, f) != getattr(wanted, f)
    ]
    if not differing:
        return Change("subscription", subscription, "unchanged")
    subscriber.update_subscription(
        request={"subscription": wanted, "update_mask": field_mask_pb2.FieldMask(paths=differing)},
        timeout=TIMEOUT_S,
    )
    return Change("subscription", subscription, "updated")


def ensure_all(
    storage_client: storage.Client,
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    settings: Settings,
    *,
    push_endpoint: str | None,
) -> list[Change]:
    """Everything one samdrop deployment needs, in dependency order (``push_endpoint`` None: the
    uploads subscription is pulled by the local bridge)."""
    project = settings.project
    delivery = PushDelivery(
        endpoint=push_endpoint,
        ack_deadline_s=settings.push_ack_deadline_s,
        min_backoff_s=settings.retry_min_backoff_s,
        max_backoff_s=settings.retry_max_backoff_s,
        dead_letter_topic=publisher.topic_path(project, settings.dead_letter_topic),
        max_delivery_attempts=settings.max_delivery_attempts,
    )
    changes = [ensure_bucket(storage_client, settings.bucket)]
    if settings.output_bucket != settings.bucket:
        changes.append(ensure_bucket(storage_client, settings.output_bucket))
    for topic in (settings.uploads_topic, settings.completions_topic, settings.dead_letter_topic):
        changes.append(ensure_topic(publisher, project, topic))
    changes += [
        # The dead-letter subscription exists before anything can be dead-lettered: Pub/Sub drops
        # messages published to a topic without subscriptions.
        ensure_pull_subscription(
            subscriber, project, settings.dead_letter_subscription, settings.dead_letter_topic
        ),
        ensure_pull_subscription(
            subscriber, project, settings.completions_subscription, settings.completions_topic
        ),
        ensure_push_subscription(
            subscriber, project, settings.uploads_subscription, settings.uploads_topic, delivery
        ),
    ]
    return changes


def push_endpoint_url(base_url: str, project: str, topic: str) -> str:
    """The function URL with the topic in its path.

    functions-framework turns a raw Pub/Sub push body into a ``messagePublished`` CloudEvent and
    takes the event's ``source`` (``//pubsub.googleapis.com/projects/P/topics/T``) from this path;
    without it the source would be empty, unlike what Eventarc sends.
    """
    return f"{base_url.rstrip('/')}/projects/{project}/topics/{topic}"


def _ensure_subscription(
    subscriber: pubsub_v1.SubscriberClient, wanted: pubsub_types.Subscription, managed: tuple[str, ...]
) -> Change:
    try:
        subscriber.create_subscription(request=wanted, timeout=TIMEOUT_S)
        return Change("subscription", wanted.name, "created")
    except gexc.AlreadyExists:
        pass
    current = subscriber.get_subscription(request={"subscription": wanted.name}, timeout=TIMEOUT_S)
    if current.topic != wanted.topic:
        raise ConfigError(
            f"subscription {wanted.name} exists on topic {current.topic}, not {wanted.topic}: "
            "delete it or choose another subscription name"
        )
    differing = [f for f in managed if getattr(current, f) != getattr(wanted, f)]
    if not differing:
        return Change("subscription", wanted.name, "unchanged")
    subscriber.update_subscription(
        request={"subscription": wanted, "update_mask": field_mask_pb2.FieldMask(paths=differing)},
        timeout=TIMEOUT_S,
    )
    return Change("subscription", wanted.name, "updated")


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))
