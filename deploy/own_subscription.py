"""A pull subscription of one's own on the completions topic, for ``samdrop watch`` and
``samdrop upload --wait``: created before anything is awaited, deleted on exit (Ctrl-C included),
so these commands never take a message from another consumer's subscription.

A process killed without a chance to clean up (``kill -9``) leaves the subscription behind; Pub/Sub
deletes it after :data:`EXPIRES_AFTER_S` without a pull, and keeps what it holds at most
:data:`RETENTION_S`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from google.api_core import exceptions as gexc

from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S

if TYPE_CHECKING:
    from google.cloud import pubsub_v1

log = logging.getLogger(__name__)

PREFIX = "samdrop-cli-"
EXPIRES_AFTER_S = 24 * 3600  # Pub/Sub's shortest expiration policy
RETENTION_S = 600  # Pub/Sub's shortest retention of unacknowledged messages
ACK_DEADLINE_S = 60


def subscription_name() -> str:
    """A name no other process picks: host, pid and a random part (Pub/Sub: 3-255 characters of
    letters, digits, ``-_.~+%``, starting with a letter)."""
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:40] or "host"
    return f"{PREFIX}{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def own_subscription(
    subscriber: pubsub_v1.SubscriberClient, project: str, topic: str, *, filter: str = ""
) -> Iterator[str]:
    """Create a subscription of this process's own on ``topic`` (only the messages whose attributes
    pass ``filter``, Pub/Sub's filter syntax, e.g. ``attributes.kind = "image"``); yield its path;
    delete it on the way out. Only messages published after it exists reach it."""
    path = subscriber.subscription_path(project, subscription_name())
    request = {
        "name": path,
        "topic": subscriber.topic_path(project, topic),
        "ack_deadline_seconds": ACK_DEADLINE_S,
        "message_retention_duration": {"seconds": RETENTION_S},
        "expiration_policy": {"ttl": {"seconds": EXPIRES_AFTER_S}},
    }
    if filter:
        request["filter"] = filter
    subscriber.create_subscription(request=request, timeout=DEFAULT_REQUEST_TIMEOUT_S)
    try:
        yield path
    finally:
        try:
            subscriber.delete_subscription(request={"subscription": path}, timeout=DEFAULT_REQUEST_TIMEOUT_S)
        except gexc.GoogleAPICallError as exc:  # the subscription expires on its own; say so, go on
            log.warning("could not delete %s (%s); Pub/Sub deletes it after a day unused", path, exc)
