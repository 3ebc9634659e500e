"""Pull-and-post: the local stack's stand-in for a Pub/Sub push subscription.

The Pub/Sub emulator's push keeps at most two messages in flight per subscription and, after an
outage of the endpoint, stops delivering some messages without dead-lettering them; its pull
subscriptions, too, stopped redelivering 130 messages whose ack deadlines a client had shortened to
back off (measured). Google Cloud's push (and Eventarc) does none of that. So locally the uploads
subscription is a *pull* subscription with the same ack deadline, retry and dead-letter policies,
and this bridge delivers it to the function the way Pub/Sub's push does (docs/design.md "Local
stack"), keeping the retry schedule itself:

- ``concurrency`` workers each pull one message and POST the push body Pub/Sub would send
  (``{"message": …, "subscription": …, "deliveryAttempt": n}``) to the function's URL;
- an answer of 102, 200, 201, 202 or 204 acknowledges the message; anything else, no answer within
  the subscription's ack deadline, or a refused connection is a failed delivery;
- a failed delivery is held (its lease extended) and posted again after
  ``min(max_backoff, min_backoff * 2 ** (attempt - 1))`` seconds, Pub/Sub's exponential backoff;
- after ``max_delivery_attempts`` failed deliveries the message is published to the dead-letter
  topic with Pub/Sub's ``CloudPubSubDeadLetter*`` attributes, then acknowledged.

If the bridge dies, what it held comes back from the emulator once the ack deadline passes.
``python -m deploy.bridge`` runs it with the settings from the environment and serves its counters
as JSON on ``SAMDROP_BRIDGE_PORT`` (the stack's health probe), with what its :class:`~deploy.tally.Tally`
saw on the topics under ``tally`` (``samdrop status`` reads them).
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from deploy.tally import Tally, TallyPuller
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S

if TYPE_CHECKING:
    from google.cloud import pubsub_v1
    from google.pubsub_v1 import types as pubsub_types

    from samdrop.settings import Settings

log = logging.getLogger(__name__)

ACK_STATUSES = frozenset({102, 200, 201, 202, 204})  # what Pub/Sub push counts as success
IDLE_WAIT_S = 0.25  # a worker that found nothing to do waits this long before pulling again

Post = Callable[[str, bytes, float], int]  # (url, body, timeout) -> HTTP status; raises OSError
Publish = Callable[[str, bytes, dict[str, str]], None]  # (topic path, data, attributes)


@dataclass(frozen=True)
class DeliveryPolicy:
    """What a push subscription would do: where to, how long to wait, how to back off, when to
    give up. Times in seconds; ``endpoint`` is the function URL with the topic in its path
    (``deploy.resources.push_endpoint_url``)."""

    subscription: str  # projects/P/subscriptions/S
    endpoint: str
    ack_deadline_s: float
    min_backoff_s: float
    max_backoff_s: float
    concurrency: int
    dead_letter_topic: str  # projects/P/topics/T
    max_delivery_attempts: int

    def backoff_s(self, attempt: int) -> float:
        """Delay before the next delivery after failed delivery number ``attempt`` (1-based)."""
        return float(min(self.max_backoff_s, self.min_backoff_s * 2.0 ** max(0, attempt - 1)))


@dataclass
class Counters:
    """What the bridge did since it started; served as JSON by the health endpoint."""

    delivered: int = 0  # POSTs sent
    acked: int = 0
    failed: int = 0  # deliveries answered with an error, refused or timed out
    dead_lettered: int = 0
    in_flight: int = 0
    waiting: int = 0  # failed messages held until their next attempt
    pull_errors: int = 0


@dataclass(order=True)
class _Held:
    """A failed message held (leased) until ``due``."""

    due: float
    order: int
    received: pubsub_types.ReceivedMessage = field(compare=False)
    attempt: int = field(compare=False)  # deliveries so far
    extended_at: float = field(compare=False)


def push_body(received: pubsub_types.ReceivedMessage, subscription: str, attempt: int) -> bytes:
    """The JSON body Pub/Sub's push sends for ``received`` (the "wrapped" push format)."""
    message = received.message
    published = message.publish_time.isoformat() if message.publish_time else ""
    body: dict[str, Any] = {
        "message": {
            "data": base64.b64encode(message.data).decode(),
            "attributes": dict(message.attributes),
            "messageId": message.message_id,
            "message_id": message.message_id,
            "publishTime": published,
            "publish_time": published,
        },
        "subscription": subscription,
        "deliveryAttempt": attempt,
    }
    return json.dumps(body).encode()


def http_post(url: str, body: bytes, timeout: float) -> int:
    """POST JSON ``body``; the HTTP status. Connection problems and timeouts raise ``OSError``."""
    import requests

    try:
        response = requests.post(
            url, data=body, headers={"Content-Type": "application/json"}, timeout=timeout
        )
    except requests.RequestException as exc:
        raise OSError(str(exc)) from exc
    return int(response.status_code)


class Bridge:
    """Delivers one pull subscription to one HTTP endpoint with ``policy.concurrency`` workers."""

    def __init__(
        self,
        subscriber: pubsub_v1.SubscriberClient,
        policy: DeliveryPolicy,
        *,
        publish: Publish,
        post: Post = http_post,
        clock: Callable[[], float] = time.monotonic,
        tally: Tally | None = None,
    ) -> None:
        self.subscriber = subscriber
        self.tally = tally
        self.policy = policy
        self.publish = publish
        self.post = post
        self.clock = clock
        self.counters = Counters()
        self._lock = threading.Lock()
        self._held: list[_Held] = []  # a heap by due time
        self._order = itertools.count()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.policy.concurrency):
            worker = threading.Thread(target=self._work, name=f"bridge-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop pulling; what is held comes back from Pub/Sub after its ack deadline."""
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout_s)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counters: dict[str, Any] = asdict(self.counters)
        if self.tally is not None:
            counters["tally"] = self.tally.snapshot()
        return counters

    def step(self) -> bool:
        """One unit of work: a held message that is due, else one pulled message; False if idle."""
        self.extend_leases()
        held = self._take_due()
        if held is not None:
            self._deliver(held.received, held.attempt + 1)
            return True
        try:
            response = self.subscriber.pull(
                request={
                    "subscription": self.policy.subscription,
                    "max_messages": 1,
                    "return_immediately": True,  # a long poll would leave due retries waiting
                },
                timeout=DEFAULT_REQUEST_TIMEOUT_S,
            )
        except Exception as exc:  # the emulator restarting: pull again shortly
            self._count(pull_errors=1)
            log.warning("pull from %s failed: %s", self.policy.subscription, exc)
            return False
        for received in response.received_messages:
            # Pub/Sub counts deliveries when a dead-letter policy is set (after a bridge restart
            # the count goes on); without one, this is the first.
            self._deliver(received, max(1, received.delivery_attempt))
        return bool(response.received_messages)

    def extend_leases(self) -> None:
        """Keep held messages leased: renew each ack deadline once half of it has passed."""
        now = self.clock()
        with self._lock:
            stale = [h for h in self._held if now - h.extended_at >= self.policy.ack_deadline_s / 2]
            for held in stale:
                held.extended_at = now
        if stale:
            self._modack([h.received.ack_id for h in stale], round(self.policy.ack_deadline_s))

    def _work(self) -> None:
        while not self._stop.is_set():
            if not self.step():
                self._stop.wait(IDLE_WAIT_S)

    def _take_due(self) -> _Held | None:
        with self._lock:
            if self._held and self._held[0].due <= self.clock():
                self.counters.waiting -= 1
                return heapq.heappop(self._held)
        return None

    def _deliver(self, received: pubsub_types.ReceivedMessage, attempt: int) -> None:
        policy = self.policy
        message_id = received.message.message_id
        self._count(delivered=1, in_flight=1)
        began = self.clock()
        try:
            status: int | None = self.post(
                policy.endpoint, push_body(received, policy.subscription, attempt), policy.ack_deadline_s
            )
        except OSError as exc:
            status = None
            log.info("delivery of %s failed: %s", message_id, exc)
        log.info(
            "message %s attempt %d -> %s in %.2fs",
            message_id,
            attempt,
            status if status is not None else "no answer",
            self.clock() - began,
        )
        if status in ACK_STATUSES:
            self._ack(received.ack_id)
            self._count(acked=1, in_flight=-1)
            self._done(message_id)
        elif attempt >= policy.max_delivery_attempts:
            if self._dead_letter(received, attempt):
                self._done(message_id)
            self._count(failed=1, dead_lettered=1, in_flight=-1)
        else:
            now = self.clock()
            with self._lock:
                heapq.heappush(
                    self._held,
                    _Held(now + policy.backoff_s(attempt), next(self._order), received, attempt, began),
                )
                self.counters.waiting += 1
            self._count(failed=1, in_flight=-1)

    def _done(self, message_id: str) -> None:
        if self.tally is not None:
            self.tally.done(message_id)

    def _dead_letter(self, received: pubsub_types.ReceivedMessage, attempts: int) -> bool:
        """Publish to the dead-letter topic as Pub/Sub does, then acknowledge the original; False
        when the publish failed (the message comes back after its ack deadline)."""
        _, project, _, name = self.policy.subscription.split("/")
        message = received.message
        attributes = {
            **dict(message.attributes),
            "CloudPubSubDeadLetterSourceDeliveryCount": str(attempts),
            "CloudPubSubDeadLetterSourceSubscription": name,
            "CloudPubSubDeadLetterSourceSubscriptionProject": project,
            "CloudPubSubDeadLetterSourceTopicPublishTime": message.publish_time.isoformat()
            if message.publish_time
            else "",
        }
        try:
            self.publish(self.policy.dead_letter_topic, message.data, attributes)
        except Exception as exc:  # not acknowledged: Pub/Sub delivers it again after the deadline
            log.error("dead-lettering %s failed: %s", message.message_id, exc)
            return False
        log.warning("message %s dead-lettered after %d attempts", message.message_id, attempts)
        self._ack(received.ack_id)
        return True

    def _ack(self, ack_id: str) -> None:
        try:
            self.subscriber.acknowledge(
                request={"subscription": self.policy.subscription, "ack_ids": [ack_id]},
                timeout=DEFAULT_REQUEST_TIMEOUT_S,
            )
        except Exception as exc:  # the ack deadline runs out and Pub/Sub delivers it again
            log.warning("ack failed: %s", exc)

    def _modack(self, ack_ids: list[str], seconds: int) -> None:
        try:
            self.subscriber.modify_ack_deadline(
                request={
                    "subscription": self.policy.subscription,
                    "ack_ids": ack_ids,
                    "ack_deadline_seconds": seconds,
                },
                timeout=DEFAULT_REQUEST_TIMEOUT_S,
            )
        except Exception as exc:
            log.warning("extending %d leases failed: %s", len(ack_ids), exc)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + delta)


def serve_counters(bridge: Bridge, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``bridge.snapshot()`` as JSON on GET (any path), in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(bridge.snapshot()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every 0.2 s: keep quiet
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="bridge-health", daemon=True).start()
    return server


def policy_from_settings(settings: Settings, function_url: str) -> DeliveryPolicy:
    from deploy.resources import push_endpoint_url

    project = settings.project
    return DeliveryPolicy(
        subscription=f"projects/{project}/subscriptions/{settings.uploads_subscription}",
        endpoint=push_endpoint_url(function_url, project, settings.uploads_topic),
        ack_deadline_s=settings.push_ack_deadline_s,
        min_backoff_s=settings.retry_min_backoff_s,
        max_backoff_s=settings.retry_max_backoff_s,
        concurrency=settings.delivery_concurrency,
        dead_letter_topic=f"projects/{project}/topics/{settings.dead_letter_topic}",
        max_delivery_attempts=settings.max_delivery_attempts,
    )


def main(environ: Mapping[str, str] | None = None) -> int:
    import os

    from deploy.local import HOST, pubsub_clients
    from samdrop.settings import Settings

    env = os.environ if environ is None else environ
    settings = Settings.from_env(env)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    publisher, subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])

    def publish(topic: str, data: bytes, attributes: dict[str, str]) -> None:
        publisher.publish(topic, data, **attributes).result(timeout=DEFAULT_REQUEST_TIMEOUT_S)  # type: ignore[arg-type]

    policy = policy_from_settings(settings, f"http://{HOST}:{settings.function_port}")
    tally = Tally()
    _, tally_subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])  # its own channel: no waits
    puller = TallyPuller(tally_subscriber, settings, tally)
    bridge = Bridge(subscriber, policy, publish=publish, tally=tally)
    server = serve_counters(bridge, HOST, settings.bridge_port)
    puller.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    bridge.start()
    log.info("delivering %s to %s", policy.subscription, policy.endpoint)
    stopped.wait()
    bridge.stop()
    puller.stop()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
