"""Pull-and-post: the local stack's stand-in for a Pub/Sub push subscription.

The Pub/Sub emulator's push keeps at most two messages in flight per subscription and, after an
outage of the endpoint, stops delivering some messages without dead-lettering them. Google Cloud's
push (and Eventarc) does neither. So locally the uploads subscription is a *pull* subscription with
the same ack deadline, retry policy and dead-letter policy, and this bridge delivers it to the
function the way Pub/Sub's push does (docs/design.md "Local stack"):

- ``concurrency`` workers, each pulling one message and POSTing the push body Pub/Sub would send
  (``{"message": …, "subscription": …, "deliveryAttempt": n}``) to the function's URL;
- an answer of 102, 200, 201, 202 or 204 acknowledges the message; anything else, a timeout
  (the subscription's ack deadline) or a refused connection is a failed delivery;
- a failed delivery comes back after ``min(max_backoff, min_backoff * 2 ** (attempt - 1))`` seconds
  (Pub/Sub's exponential backoff), by setting the message's ack deadline to that delay;
- the emulator counts delivery attempts and moves a message to the dead-letter topic after the
  subscription's ``max_delivery_attempts``, as Pub/Sub does.

``python -m deploy.bridge`` runs it with the settings from the environment and serves its counters
as JSON on ``SAMDROP_BRIDGE_PORT`` (the stack's health probe).
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.cloud import pubsub_v1
    from google.pubsub_v1 import types as pubsub_types

    from samdrop.settings import Settings

log = logging.getLogger(__name__)

ACK_STATUSES = frozenset({102, 200, 201, 202, 204})  # what Pub/Sub push counts as success
PULL_WAIT_S = 10.0  # how long one pull waits on the server for a message
CALL_TIMEOUT_S = 30.0  # ack and modify-ack-deadline calls

Post = Callable[[str, bytes, float], int]  # (url, body, timeout) -> HTTP status; raises OSError


@dataclass(frozen=True)
class DeliveryPolicy:
    """What a push subscription would do: where to, how long to wait, how to back off.

    Times in seconds; ``endpoint`` is the function URL with the topic in its path
    (``deploy.resources.push_endpoint_url``).
    """

    subscription: str  # projects/P/subscriptions/S
    endpoint: str
    ack_deadline_s: float
    min_backoff_s: float
    max_backoff_s: float
    concurrency: int

    def backoff_s(self, attempt: int) -> float:
        """Delay before the next delivery after failed delivery number ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.min_backoff_s * 2.0 ** max(0, attempt - 1))


@dataclass
class Counters:
    """What the bridge did since it started; served as JSON by the health endpoint."""

    delivered: int = 0  # POSTs sent
    acked: int = 0
    failed: int = 0  # deliveries answered with an error, refused or timed out
    in_flight: int = 0
    pull_errors: int = 0


def push_body(received: pubsub_types.ReceivedMessage, subscription: str) -> bytes:
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
    }
    if received.delivery_attempt:
        body["deliveryAttempt"] = received.delivery_attempt
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
        post: Post = http_post,
    ) -> None:
        self.subscriber = subscriber
        self.policy = policy
        self.post = post
        self.counters = Counters()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.policy.concurrency):
            worker = threading.Thread(target=self._work, name=f"bridge-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self, timeout_s: float = PULL_WAIT_S + 5) -> None:
        """Stop pulling; deliveries in flight finish (or are redelivered after their deadline)."""
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout_s)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return asdict(self.counters)

    def deliver_once(self) -> bool:
        """Pull at most one message and deliver it; False when none came within the pull's wait."""
        try:
            response = self.subscriber.pull(
                request={"subscription": self.policy.subscription, "max_messages": 1},
                timeout=PULL_WAIT_S + 5,
            )
        except Exception as exc:  # the emulator restarting, a deadline: pull again shortly
            self._count(pull_errors=1)
            log.warning("pull from %s failed: %s", self.policy.subscription, exc)
            self._stop.wait(1.0)
            return False
        for received in response.received_messages:
            self._deliver(received)
        return bool(response.received_messages)

    def _work(self) -> None:
        while not self._stop.is_set():
            self.deliver_once()

    def _deliver(self, received: pubsub_types.ReceivedMessage) -> None:
        policy = self.policy
        attempt = received.delivery_attempt or 1
        self._count(delivered=1, in_flight=1)
        began = time.monotonic()
        try:
            status: int | None = self.post(
                policy.endpoint, push_body(received, policy.subscription), policy.ack_deadline_s
            )
        except OSError as exc:
            status = None
            log.info("delivery of %s failed: %s", received.message.message_id, exc)
        ok = status in ACK_STATUSES
        try:
            if ok:
                self.subscriber.acknowledge(
                    request={"subscription": policy.subscription, "ack_ids": [received.ack_id]},
                    timeout=CALL_TIMEOUT_S,
                )
            else:
                # Back off: the message becomes deliverable again once this deadline passes.
                self.subscriber.modify_ack_deadline(
                    request={
                        "subscription": policy.subscription,
                        "ack_ids": [received.ack_id],
                        "ack_deadline_seconds": max(1, round(policy.backoff_s(attempt))),
                    },
                    timeout=CALL_TIMEOUT_S,
                )
        except Exception as exc:  # the ack deadline then runs out and Pub/Sub redelivers
            log.warning("ack/modack of %s failed: %s", received.message.message_id, exc)
        self._count(acked=int(ok), failed=int(not ok), in_flight=-1)
        log.info(
            "message %s attempt %d -> %s in %.2fs",
            received.message.message_id,
            attempt,
            status if status is not None else "no answer",
            time.monotonic() - began,
        )

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

    return DeliveryPolicy(
        subscription=f"projects/{settings.project}/subscriptions/{settings.uploads_subscription}",
        endpoint=push_endpoint_url(function_url, settings.project, settings.uploads_topic),
        ack_deadline_s=settings.push_ack_deadline_s,
        min_backoff_s=settings.retry_min_backoff_s,
        max_backoff_s=settings.retry_max_backoff_s,
        concurrency=settings.delivery_concurrency,
    )


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    import os

    from deploy.local import HOST, pubsub_clients
    from samdrop.settings import Settings

    env = os.environ if environ is None else environ
    settings = Settings.from_env(env)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    _, subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])
    bridge = Bridge(subscriber, policy_from_settings(settings, f"http://{HOST}:{settings.function_port}"))
    server = serve_counters(bridge, HOST, settings.bridge_port)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    bridge.start()
    log.info("delivering %s to %s", bridge.policy.subscription, bridge.policy.endpoint)
    stopped.wait()
    bridge.stop()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
