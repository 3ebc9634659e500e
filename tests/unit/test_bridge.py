"""The local delivery bridge with an in-process subscriber: push body, ack rules, backoff."""

from __future__ import annotations

import base64
import json
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest
from google.pubsub_v1 import types as pubsub_types

from deploy.bridge import ACK_STATUSES, Bridge, DeliveryPolicy, policy_from_settings, serve_counters
from samdrop.settings import Settings

SUBSCRIPTION = "projects/p/subscriptions/uploads"


class FakeSubscriber:
    """The calls the bridge makes, recording what it asked for."""

    def __init__(self, messages: list[pubsub_types.ReceivedMessage]) -> None:
        self.queue = list(messages)
        self.acked: list[str] = []
        self.deadlines: list[tuple[str, int]] = []

    def pull(self, request: dict[str, Any], timeout: float) -> pubsub_types.PullResponse:
        assert request["subscription"] == SUBSCRIPTION and request["max_messages"] == 1
        batch = self.queue[:1]
        del self.queue[:1]
        return pubsub_types.PullResponse(received_messages=batch)

    def acknowledge(self, request: dict[str, Any], timeout: float) -> None:
        self.acked += request["ack_ids"]

    def modify_ack_deadline(self, request: dict[str, Any], timeout: float) -> None:
        self.deadlines += [(ack_id, request["ack_deadline_seconds"]) for ack_id in request["ack_ids"]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _received(ack_id: str, attempt: int = 0) -> pubsub_types.ReceivedMessage:
    return pubsub_types.ReceivedMessage(
        ack_id=ack_id,
        delivery_attempt=attempt,
        message=pubsub_types.PubsubMessage(
            data=b'{"name": "incoming/a.jpg"}',
            attributes={"objectId": "incoming/a.jpg", "objectGeneration": "7"},
            message_id=f"m-{ack_id}",
            publish_time=datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        ),
    )


def _policy(**changes: Any) -> DeliveryPolicy:
    values: dict[str, Any] = dict(
        subscription=SUBSCRIPTION,
        endpoint="http://function/projects/p/topics/uploads",
        ack_deadline_s=600.0,
        min_backoff_s=10.0,
        max_backoff_s=600.0,
        concurrency=2,
        dead_letter_topic="projects/p/topics/dead",
        max_delivery_attempts=5,
    )
    return DeliveryPolicy(**{**values, **changes})


def _bridge(subscriber: FakeSubscriber, post: Any, clock: Clock | None = None, **policy: Any) -> Any:
    published: list[tuple[str, bytes, dict[str, str]]] = []
    bridge = Bridge(
        subscriber,  # type: ignore[arg-type]
        _policy(**policy),
        publish=lambda topic, data, attributes: published.append((topic, data, attributes)),
        post=post,
        clock=clock or Clock(),
    )
    bridge.published = published  # type: ignore[attr-defined]
    return bridge


def test_a_delivery_posts_the_push_body_and_acks_on_success():
    posted: list[tuple[str, dict[str, Any], float]] = []

    def post(url: str, body: bytes, timeout: float) -> int:
        posted.append((url, json.loads(body), timeout))
        return 204

    subscriber = FakeSubscriber([_received("a", attempt=3)])
    bridge = _bridge(subscriber, post)
    assert bridge.step()

    ((url, body, timeout),) = posted
    assert url == "http://function/projects/p/topics/uploads"
    assert timeout == 600.0  # the ack deadline: a slower answer counts as a failure, as for push
    assert body["subscription"] == SUBSCRIPTION
    assert body["deliveryAttempt"] == 3  # Pub/Sub's own count goes on (a restarted bridge)
    message = body["message"]
    assert base64.b64decode(message["data"]) == b'{"name": "incoming/a.jpg"}'
    assert message["attributes"] == {"objectId": "incoming/a.jpg", "objectGeneration": "7"}
    assert message["messageId"] == message["message_id"] == "m-a"
    assert message["publishTime"].startswith("2026-11-26T12:00:00")
    assert subscriber.acked == ["a"]
    assert bridge.snapshot()["acked"] == 1 and bridge.snapshot()["in_flight"] == 0


@pytest.mark.parametrize("answer", [500, 429, 404, 302, OSError("connection refused")])
def test_a_failing_message_is_retried_with_exponential_backoff_then_dead_lettered(answer):
    attempts: list[tuple[float, int]] = []
    clock = Clock()

    def post(url: str, body: bytes, timeout: float) -> int:
        attempts.append((clock.now - 1000.0, json.loads(body)["deliveryAttempt"]))
        if isinstance(answer, Exception):
            raise answer
        return int(answer)

    subscriber = FakeSubscriber([_received("a")])
    bridge = _bridge(subscriber, post, clock)
    for _ in range(200):  # one simulated second per step
        bridge.step()
        clock.now += 1.0
    # Held by the bridge between attempts: 10, 20, 40, 80 s (Pub/Sub's exponential backoff).
    assert attempts == [(0.0, 1), (10.0, 2), (30.0, 3), (70.0, 4), (150.0, 5)]
    ((topic, data, attributes),) = bridge.published
    assert topic == "projects/p/topics/dead"
    assert data == b'{"name": "incoming/a.jpg"}'
    assert attributes["objectId"] == "incoming/a.jpg"
    assert attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert attributes["CloudPubSubDeadLetterSourceSubscription"] == "uploads"
    assert attributes["CloudPubSubDeadLetterSourceSubscriptionProject"] == "p"
    assert subscriber.acked == ["a"]  # acknowledged only once it sits on the dead-letter topic
    counts = bridge.snapshot()
    assert (counts["failed"], counts["dead_lettered"], counts["waiting"]) == (5, 1, 0)


def test_a_message_that_recovers_is_acked_once_and_not_dead_lettered():
    answers = iter([503, 503, 200])
    clock = Clock()
    subscriber = FakeSubscriber([_received("a")])
    bridge = _bridge(subscriber, lambda *_: next(answers), clock, min_backoff_s=1.0, max_backoff_s=4.0)
    for _ in range(20):
        bridge.step()
        clock.now += 1.0
    assert subscriber.acked == ["a"]
    assert bridge.published == []
    assert bridge.snapshot()["delivered"] == 3


def test_held_messages_keep_their_lease():
    clock = Clock()
    subscriber = FakeSubscriber([_received("a")])
    bridge = _bridge(subscriber, lambda *_: 500, clock, ack_deadline_s=60.0, min_backoff_s=600.0)
    bridge.step()  # fails: held for 600 s, ten times the ack deadline
    for _ in range(100):
        clock.now += 1.0
        bridge.step()
    # Renewed every half deadline, so the emulator never redelivers it behind the bridge's back.
    assert [seconds for _, seconds in subscriber.deadlines] == [60, 60, 60]
    assert bridge.snapshot()["waiting"] == 1


def test_every_push_success_status_acks():
    assert {102, 200, 201, 202, 204} == ACK_STATUSES


def test_a_failed_pull_is_counted():
    class Broken(FakeSubscriber):
        def pull(self, request: dict[str, Any], timeout: float) -> pubsub_types.PullResponse:
            raise RuntimeError("emulator restarting")

    bridge = _bridge(Broken([]), lambda *_: 200)
    assert not bridge.step()
    assert bridge.snapshot()["pull_errors"] == 1


def test_policy_follows_the_settings(tmp_path):
    settings = Settings.from_env(
        {},
        project="proj",
        uploads_subscription="ups",
        uploads_topic="uploads",
        dead_letter_topic="dead",
        push_ack_deadline_s=120,
        retry_min_backoff_s=1.0,
        retry_max_backoff_s=2.0,
        delivery_concurrency=5,
        max_delivery_attempts=7,
    )
    policy = policy_from_settings(settings, "http://127.0.0.1:9")
    assert policy.subscription == "projects/proj/subscriptions/ups"
    assert policy.endpoint == "http://127.0.0.1:9/projects/proj/topics/uploads"
    assert policy.dead_letter_topic == "projects/proj/topics/dead"
    assert (policy.ack_deadline_s, policy.concurrency, policy.max_delivery_attempts) == (120, 5, 7)
    assert [policy.backoff_s(n) for n in (1, 2, 3)] == [1.0, 2.0, 2.0]


def test_counters_are_served_as_json():
    bridge = _bridge(FakeSubscriber([]), lambda *_: 200)
    server = serve_counters(bridge, "127.0.0.1", 0)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert json.loads(response.read()) == bridge.snapshot()
    finally:
        server.shutdown()
