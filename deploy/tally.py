"""What Cloud Monitoring would say about the local stack's topics, kept by the delivery bridge.

The Pub/Sub emulator has no metrics API and pulling the uploads subscription without acknowledging
would disturb the deliveries, so the bridge watches the topics through two subscriptions of its own
(:func:`tally_subscriptions`, created with the stack's other resources). Everything published to
the uploads topic is noted with its publish time and crossed off when the bridge acknowledges or
dead-letters it: what remains is the subscription's undelivered messages and their oldest age
(``num_undelivered_messages``, ``oldest_unacked_message_age`` in a project). Every completion
published is kept for an hour with its kind, status and error code.

Counts start when the bridge starts: uploads published while no bridge ran are not in them.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S

if TYPE_CHECKING:
    from google.cloud import pubsub_v1

    from samdrop.settings import Settings

log = logging.getLogger(__name__)
WINDOW_S = 3600.0  # completions are counted over the last hour
RATE_WINDOW_S = 300.0  # images per minute: image completions over the last five minutes
SUFFIX = "-tally"


@dataclass(frozen=True)
class Completion:
    at: float  # epoch seconds, when the tally received it
    kind: str
    status: str
    code: str | None


def tally_subscriptions(settings: Settings) -> dict[str, str]:
    """The bridge's watching subscriptions: name -> topic (short names)."""
    return {
        settings.uploads_subscription + SUFFIX: settings.uploads_topic,
        settings.completions_subscription + SUFFIX: settings.completions_topic,
    }


class Tally:
    """Thread-safe counts of uploads waiting and of recent completions."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._waiting: dict[str, float] = {}  # upload message id -> publish time (epoch s)
        self._done_unseen: dict[str, float] = {}  # acked before the tally saw it -> when
        self._completions: collections.deque[Completion] = collections.deque()

    def published(self, message_id: str, publish_time: float) -> None:
        with self._lock:
            if self._done_unseen.pop(message_id, None) is None:
                self._waiting[message_id] = publish_time

    def done(self, message_id: str) -> None:
        """The bridge acknowledged or dead-lettered ``message_id``."""
        with self._lock:
            if self._waiting.pop(message_id, None) is None:
                self._done_unseen[message_id] = self.clock()

    def completed(self, body: dict[str, Any]) -> None:
        error = body.get("error")
        code = str(error.get("code")) if isinstance(error, dict) else None
        entry = Completion(self.clock(), str(body.get("kind")), str(body.get("status")), code)
        with self._lock:
            self._completions.append(entry)

    def snapshot(self) -> dict[str, Any]:
        """``uploads_waiting``, ``oldest_upload_age_s`` (None: none waits), the last hour's
        completions by status (``completions_last_hour``) and failed images by error code
        (``errors_last_hour``), and ``images_per_minute`` over :data:`RATE_WINDOW_S`."""
        now = self.clock()
        with self._lock:
            self._forget(now)
            oldest = min(self._waiting.values(), default=None)
            completions = list(self._completions)
            waiting = len(self._waiting)
        images = [c for c in completions if c.kind == "image"]
        recent = sum(c.at >= now - RATE_WINDOW_S for c in images)
        return {
            "uploads_waiting": waiting,
            "oldest_upload_age_s": None if oldest is None else round(max(0.0, now - oldest), 1),
            "completions_last_hour": dict(collections.Counter(c.status for c in completions)),
            "errors_last_hour": dict(collections.Counter(c.code for c in images if c.code)),
            "images_per_minute": round(recent * 60.0 / RATE_WINDOW_S, 1),
        }

    def _forget(self, now: float) -> None:
        while self._completions and self._completions[0].at < now - WINDOW_S:
            self._completions.popleft()
        # An ack whose publish the tally never sees (published before the bridge started).
        for message_id in [m for m, at in self._done_unseen.items() if at < now - WINDOW_S]:
            del self._done_unseen[message_id]


class TallyPuller:
    """Pulls the watching subscriptions into a :class:`Tally` (acknowledging at once) in a thread."""

    def __init__(
        self, subscriber: pubsub_v1.SubscriberClient, settings: Settings, tally: Tally, idle_s: float = 0.5
    ) -> None:
        self.subscriber = subscriber
        self.tally = tally
        names = list(tally_subscriptions(settings))
        self.uploads = subscriber.subscription_path(settings.project, names[0])
        self.completions = subscriber.subscription_path(settings.project, names[1])
        self.idle_s = idle_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-tally", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(DEFAULT_REQUEST_TIMEOUT_S)

    def step(self) -> int:
        """Pull each subscription once; how many messages came."""
        count = 0
        for path in (self.uploads, self.completions):
            try:
                response = self.subscriber.pull(
                    request={"subscription": path, "max_messages": 500, "return_immediately": True},
                    timeout=DEFAULT_REQUEST_TIMEOUT_S,
                )
            except Exception as exc:  # not created yet, or the emulator restarting: pull again soon
                log.debug("tally pull from %s failed: %s", path, exc)
                continue
            received = list(response.received_messages)
            for item in received:
                message = item.message
                if path == self.uploads:
                    self.tally.published(message.message_id, message.publish_time.timestamp())
                else:
                    try:
                        body = json.loads(message.data)
                    except ValueError:
                        continue
                    if isinstance(body, dict):
                        self.tally.completed(body)
            if received:
                try:
                    self.subscriber.acknowledge(
                        request={"subscription": path, "ack_ids": [m.ack_id for m in received]},
                        timeout=DEFAULT_REQUEST_TIMEOUT_S,
                    )
                except Exception as exc:  # redelivered later: the tally then sees a duplicate
                    log.warning("tally ack on %s failed: %s", path, exc)
            count += len(received)
        return count

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.step():
                self._stop.wait(self.idle_s)
