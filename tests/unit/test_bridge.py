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
    """The three calls the bridge makes, recording what it asked for."""

    def __init__(self, messages: list[pubsub_types.ReceivedMessage]) -> None:
        self.queue = list(messages)
        self.acked: list[str] = []
        self.deadlines: list[tuple[str, int]] = []

    def pull(self, request: dict[str, Any], timeout: float) -> pubsub_types.PullResponse:
        assert request == {"subscription": SUBSCRIPTION, "max_messages": 1}
        batch = self.queue[:1]
        del self.queue[:1]
        return pubsub_types.PullResponse(received_messages=batch)

    def acknowledge(self, request: dict[str, Any], timeout: float) -> None:
        self.acked += request["ack_ids"]

    def modify_ack_deadline(self, request: dict[str, Any], timeout: float) -> None:
        self.deadlines += [(ack_id, request["ack_deadline_seconds"]) for ack_id in request["ack_ids"]]


def _received(ack_id: str, attempt: int = 1) -> pubsub_types.ReceivedMessage:
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
    )
    return DeliveryPolicy(**{**values, **changes})


def test_a_delivery_posts_the_push_body_and_acks_on_success():
    posted: list[tuple[str, dict[str, Any], float]] = []

    def post(url: str, body: bytes, timeout: float) -> int:
        posted.append((url, json.loads(body), timeout))
        return 204

    subscriber = FakeSubscriber([_received("a", attempt=3)])
    bridge = Bridge(subscriber, _policy(), post=post)  # type: ignore[arg-type]
    assert bridge.deliver_once()

    ((url, body, timeout),) = posted
    assert url == "http://function/projects/p/topics/uploads"
    assert timeout == 600.0  # the ack deadline: a slower answer counts as a failure, as for push
    assert body["subscription"] == SUBSCRIPTION
    assert body["deliveryAttempt"] == 3
    message = body["message"]
    assert base64.b64decode(message["data"]) == b'{"name": "incoming/a.jpg"}'
    assert message["attributes"] == {"objectId": "incoming/a.jpg", "objectGeneration": "7"}
    assert message["messageId"] == message["message_id"] == "m-a"
    assert message["publishTime"].startswith("2026-11-26T12:00:00")
    assert subscriber.acked == ["a"]
    assert subscriber.deadlines == []
    assert bridge.snapshot() == {"delivered": 1, "acked": 1, "failed": 0, "in_flight": 0, "pull_errors": 0}


@pytest.mark.parametrize("answer", [500, 429, 404, 302, OSError("connection refused")])
def test_a_failed_delivery_backs_off_exponentially_and_is_not_acked(answer):
    def post(url: str, body: bytes, timeout: float) -> int:
        if isinstance(answer, Exception):
            raise answer
        return answer

    subscriber = FakeSubscriber([_received(f"a{n}", attempt=n) for n in (1, 2, 3, 8)])
    bridge = Bridge(subscriber, _policy(), post=post)  # type: ignore[arg-type]
    while bridge.deliver_once():
        pass
    assert subscriber.acked == []
    # Pub/Sub's exponential backoff between the subscription's minimum and maximum.
    assert subscriber.deadlines == [("a1", 10), ("a2", 20), ("a3", 40), ("a8", 600)]
    assert bridge.snapshot()["failed"] == 4


def test_every_push_success_status_acks():
    assert {102, 200, 201, 202, 204} == ACK_STATUSES


def test_a_failed_pull_is_counted_and_retried():
    class Broken(FakeSubscriber):
        def pull(self, request: dict[str, Any], timeout: float) -> pubsub_types.PullResponse:
            raise RuntimeError("emulator restarting")

    bridge = Bridge(Broken([]), _policy(), post=lambda *_: 200)  # type: ignore[arg-type]
    bridge._stop.set()  # no pause before the next pull
    assert not bridge.deliver_once()
    assert bridge.snapshot()["pull_errors"] == 1


def test_policy_follows_the_settings(tmp_path):
    settings = Settings.from_env(
        {},
        project="proj",
        uploads_subscription="ups",
        uploads_topic="uploads",
        push_ack_deadline_s=120,
        retry_min_backoff_s=1.0,
        retry_max_backoff_s=2.0,
        delivery_concurrency=5,
    )
    policy = policy_from_settings(settings, "http://127.0.0.1:9")
    assert policy.subscription == "projects/proj/subscriptions/ups"
    assert policy.endpoint == "http://127.0.0.1:9/projects/proj/topics/uploads"
    assert (policy.ack_deadline_s, policy.concurrency) == (120, 5)
    assert [policy.backoff_s(n) for n in (1, 2, 3)] == [1.0, 2.0, 2.0]


def test_counters_are_served_as_json():
    bridge = Bridge(FakeSubscriber([]), _policy(), post=lambda *_: 200)  # type: ignore[arg-type]
    server = serve_counters(bridge, "127.0.0.1", 0)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert json.loads(response.read()) == bridge.snapshot()
    finally:
        server.shutdown()
