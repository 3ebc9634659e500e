"""Pub/Sub steps through ``google-cloud-pubsub``, reusing :mod:`deploy.resources` for the
topic and subscription rules the local stack follows too."""

from __future__ import annotations

from google.api_core import exceptions as gexc
from google.iam.v1 import policy_pb2

from deploy import resources
from deploy.gcp.clients import CloudClients
from deploy.gcp.plan import DeployError, StepResult

TIMEOUT_S = resources.TIMEOUT_S
EVENTARC_PREFIX = "eventarc-"  # Eventarc names the subscription of a Pub/Sub trigger eventarc-<region>-…


def ensure_topic(clients: CloudClients, name: str) -> StepResult:
    change = resources.ensure_topic(clients.publisher, clients.project, name)
    return StepResult(change.outcome, change.name)


def ensure_pull_subscription(
    clients: CloudClients, name: str, topic: str, ack_deadline_s: int = 60
) -> StepResult:
    change = resources.ensure_pull_subscription(
        clients.subscriber, clients.project, name, topic, ack_deadline_s=ack_deadline_s
    )
    return StepResult(change.outcome, change.name)


def trigger_subscriptions(clients: CloudClients, topic: str) -> list[str]:
    """Full paths of the subscriptions Eventarc created on ``topic`` for function triggers."""
    topic_path = clients.publisher.topic_path(clients.project, topic)
    names = clients.publisher.list_topic_subscriptions(request={"topic": topic_path}, timeout=TIMEOUT_S)
    return sorted(name for name in names if name.rsplit("/", 1)[-1].startswith(EVENTARC_PREFIX))


def ensure_trigger_dead_lettering(
    clients: CloudClients,
    topic: str,
    dead_letter_topic: str,
    max_delivery_attempts: int,
    min_backoff_s: float,
    max_backoff_s: float,
) -> StepResult:
    """Retry backoff and dead-letter policy on the trigger subscription(s) Eventarc made on ``topic``."""
    subscriptions = trigger_subscriptions(clients, topic)
    if not subscriptions:
        raise DeployError(
            f"no Eventarc subscription on topic {topic}: the function's Pub/Sub trigger is missing; "
            "re-run `samdrop deploy`"
        )
    changes = [
        resources.ensure_delivery_policies(
            clients.subscriber,
            subscription,
            min_backoff_s=min_backoff_s,
            max_backoff_s=max_backoff_s,
            dead_letter_topic=clients.publisher.topic_path(clients.project, dead_letter_topic),
            max_delivery_attempts=max_delivery_attempts,
        )
        for subscription in subscriptions
    ]
    changed = [c.name for c in changes if c.outcome != "unchanged"]
    return StepResult("updated" if changed else "unchanged", ", ".join(subscriptions))


def grant_trigger_subscriber(clients: CloudClients, topic: str, member: str) -> StepResult:
    """``roles/pubsub.subscriber`` for ``member`` on each Eventarc subscription of ``topic``.

    Dead-lettering needs it: the Pub/Sub service agent acknowledges a message on the source
    subscription when it forwards the message to the dead-letter topic.
    """
    role = "roles/pubsub.subscriber"
    granted = []
    for subscription in trigger_subscriptions(clients, topic):
        policy = clients.subscriber.get_iam_policy(request={"resource": subscription}, timeout=TIMEOUT_S)
        if any(b.role == role and member in b.members for b in policy.bindings):
            continue
        policy.bindings.append(policy_pb2.Binding(role=role, members=[member]))
        clients.subscriber.set_iam_policy(
            request={"resource": subscription, "policy": policy}, timeout=TIMEOUT_S
        )
        granted.append(subscription)
    return StepResult("updated" if granted else "unchanged", ", ".join(granted))


def delete_subscription(clients: CloudClients, name: str) -> StepResult:
    path = clients.subscriber.subscription_path(clients.project, name)
    try:
        clients.subscriber.delete_subscription(request={"subscription": path}, timeout=TIMEOUT_S)
    except gexc.NotFound:
        return StepResult("absent", path)
    return StepResult("deleted", path)


def delete_topic(clients: CloudClients, name: str) -> StepResult:
    path = clients.publisher.topic_path(clients.project, name)
    try:
        clients.publisher.delete_topic(request={"topic": path}, timeout=TIMEOUT_S)
    except gexc.NotFound:
        return StepResult("absent", path)
    return StepResult("deleted", path)
