"""Idempotency rules of deploy.resources, against small in-memory stand-ins for the clients."""

from typing import Any

import pytest
from google.api_core import exceptions as gexc

from deploy import resources
from deploy.resources import PushDelivery
from samdrop.errors import ConfigError


class FakeSubscriber:
    def __init__(self):
        self.subscriptions = {}
        self.updates = []

    @staticmethod
    def subscription_path(project, name):
        return f"projects/{project}/subscriptions/{name}"

    @staticmethod
    def topic_path(project, name):
        return f"projects/{project}/topics/{name}"

    def create_subscription(self, request, timeout):
        assert timeout > 0
        if request.name in self.subscriptions:
            raise gexc.AlreadyExists("exists")
        self.subscriptions[request.name] = request

    def get_subscription(self, request, timeout):
        return self.subscriptions[request["subscription"]]

    def update_subscription(self, request, timeout):
        self.updates.append(list(request["update_mask"].paths))
        self.subscriptions[request["subscription"].name] = request["subscription"]


def _delivery(endpoint="http://127.0.0.1:8081/projects/p/topics/t", **changes):
    values = dict(
        endpoint=endpoint,
        ack_deadline_s=600,
        min_backoff_s=10.0,
        max_backoff_s=600.0,
        dead_letter_topic="projects/p/topics/dead",
        max_delivery_attempts=5,
    )
    return PushDelivery(**{**values, **changes})


def test_push_subscription_is_created_once_then_left_alone():
    subscriber: Any = FakeSubscriber()  # the part of SubscriberClient deploy.resources uses
    first = resources.ensure_push_subscription(subscriber, "p", "push", "t", _delivery())
    again = resources.ensure_push_subscription(subscriber, "p", "push", "t", _delivery())
    assert (first.outcome, again.outcome) == ("created", "unchanged")
    created = subscriber.subscriptions["projects/p/subscriptions/push"]
    assert created.dead_letter_policy.max_delivery_attempts == 5
    assert created.retry_policy.minimum_backoff.total_seconds() == 10


def test_a_moved_endpoint_is_updated_in_place():
    subscriber: Any = FakeSubscriber()  # the part of SubscriberClient deploy.resources uses
    resources.ensure_push_subscription(subscriber, "p", "push", "t", _delivery())
    change = resources.ensure_push_subscription(
        subscriber, "p", "push", "t", _delivery("http://127.0.0.1:9/x")
    )
    assert change.outcome == "updated"
    assert subscriber.updates == [["push_config"]]


def test_without_an_endpoint_the_subscription_is_pulled_with_the_same_policies():
    subscriber: Any = FakeSubscriber()  # the part of SubscriberClient deploy.resources uses
    resources.ensure_push_subscription(subscriber, "p", "bridged", "t", _delivery(None))
    created = subscriber.subscriptions["projects/p/subscriptions/bridged"]
    assert created.push_config.push_endpoint == ""
    assert created.dead_letter_policy.dead_letter_topic == "projects/p/topics/dead"
    assert created.ack_deadline_seconds == 600


def test_a_subscription_on_another_topic_is_an_error():
    subscriber: Any = FakeSubscriber()  # the part of SubscriberClient deploy.resources uses
    resources.ensure_pull_subscription(subscriber, "p", "sub", "one")
    with pytest.raises(ConfigError, match="exists on topic projects/p/topics/one"):
        resources.ensure_pull_subscription(subscriber, "p", "sub", "two")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ack_deadline_s": 5}, "SAMDROP_PUSH_ACK_DEADLINE_S"),
        ({"min_backoff_s": 20.0, "max_backoff_s": 10.0}, "SAMDROP_RETRY_MIN_BACKOFF_S"),
        ({"max_delivery_attempts": 101}, "SAMDROP_MAX_DELIVERY_ATTEMPTS"),
    ],
)
def test_push_delivery_checks_pubsub_bounds(changes, message):
    with pytest.raises(ConfigError, match=message):
        _delivery(**changes)


def test_push_endpoint_carries_the_topic_for_the_cloudevent_source():
    url = resources.push_endpoint_url("http://127.0.0.1:8081/", "proj", "uploads")
    assert url == "http://127.0.0.1:8081/projects/proj/topics/uploads"


def test_fractional_backoff_keeps_its_nanos():
    assert resources._duration(1.25).seconds == 1
    assert resources._duration(1.25).nanos == 250_000_000
