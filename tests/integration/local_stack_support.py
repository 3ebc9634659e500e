"""Helpers shared by the local-stack fixture and tests (a module name no other folder uses)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from google.cloud import pubsub_v1
from google.cloud.storage import Blob

from deploy.local import LocalStack, free_ports
from samdrop.settings import Settings
from tests.schema_check import check_document

RECORDER = Path(__file__).resolve().parent / "recorder_function" / "main.py"
# How long "nothing else arrived" waits after the last message: a redelivery (backoff 1-2 s in
# stack_settings) or a second publish would show up within it.
SETTLE_S = 3.0
T = TypeVar("T")
Key = tuple[str, str | None]  # (input URI, generation); None: any generation


@dataclass(frozen=True)
class RunningStack:
    stack: LocalStack
    settings: Settings
    record_file: Path  # CloudEvents the recorder function received, one JSON per line

    @property
    def env(self) -> dict[str, str]:
        return self.stack.client_env()


def own_subscriptions(running: RunningStack) -> list[str]:
    """Subscriptions that ``samdrop watch`` or ``upload --wait`` made for themselves on the
    completions topic (deploy/own_subscription.py)."""
    from deploy.local import pubsub_clients
    from deploy.own_subscription import PREFIX

    s = running.settings
    publisher, subscriber = pubsub_clients(running.env["PUBSUB_EMULATOR_HOST"])
    try:
        topic = publisher.topic_path(s.project, s.completions_topic)
        names = publisher.list_topic_subscriptions(request={"topic": topic})
        return [name for name in names if name.rsplit("/", 1)[-1].startswith(PREFIX)]
    finally:
        subscriber.close()
        publisher.transport.close()


def stack_settings(state_dir: Path, **overrides) -> Settings:
    """Settings on free ports; quick retries so the dead-letter path runs in seconds."""
    ports = free_ports()
    values = dict(
        state_dir=state_dir,
        retry_min_backoff_s=1.0,
        retry_max_backoff_s=2.0,
        max_delivery_attempts=5,
        # Every stack here starts new predictor processes: skip the decoder compile (tens of seconds
        # cold). The compiled path runs through the real model server in test_model_server.py and
        # through the whole stack in tests/e2e (defaults).
        compile="off",
    )
    return Settings.from_env({}, **{**ports, **values, **overrides})


def until(get: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``get`` until it returns something truthy (and return that); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = get()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout_s}s")


def settled(
    arrived: Callable[[], Sequence[T]],
    expect: int,
    *,
    timeout_s: float,
    what: str,
    settle_s: float = SETTLE_S,
) -> list[T]:
    """``arrived()`` once it holds ``expect`` items and then nothing more for ``settle_s``.

    ``arrived`` pulls (or reads what a puller collected) and returns everything relevant received so
    far. The settle window runs from the last new item (or from this call, if none came during it),
    so a late duplicate fails the test instead of slipping past a fixed sleep. Fails when fewer than
    ``expect`` arrive within ``timeout_s`` or when more than ``expect`` arrive at all.
    """
    deadline = time.monotonic() + timeout_s
    items = list(arrived())
    last_new = time.monotonic()
    while True:
        if len(items) > expect:
            raise AssertionError(f"{len(items)} {what}, expected {expect}; the extra: {items[expect:]}")
        now = time.monotonic()
        if len(items) == expect and now - last_new >= settle_s:
            return items
        if len(items) < expect and now >= deadline:
            raise AssertionError(f"{len(items)} of {expect} {what} within {timeout_s}s")
        time.sleep(0.2)
        latest = list(arrived())
        if len(latest) != len(items):
            last_new = time.monotonic()
        items = latest


def key_of(blob: Blob, *, any_generation: bool = False) -> Key:
    """What a completion for ``blob`` names: its URI and generation."""
    return f"gs://{blob.bucket.name}/{blob.name}", None if any_generation else str(blob.generation)


@dataclass
class Completions:
    """The completions subscription, pulled and acked; every message seen is kept, since the tests
    of a module share the subscription and one test's pull may take another's message."""

    subscriber: pubsub_v1.SubscriberClient
    subscription: str
    seen: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, subscriber: pubsub_v1.SubscriberClient, settings: Settings) -> Completions:
        path = subscriber.subscription_path(settings.project, settings.completions_subscription)
        return cls(subscriber, path)

    def pull(self) -> list[dict[str, Any]]:
        """Pull once (and ack); returns every message seen so far, with its ``_attributes``."""
        response = self.subscriber.pull(
            request={"subscription": self.subscription, "max_messages": 100, "return_immediately": True},
            timeout=10,
        )
        for received in response.received_messages:
            body = check_document("completion", json.loads(received.message.data))
            assert received.message.attributes["schema_version"] == str(body["schema_version"])
            body["_attributes"] = dict(received.message.attributes)
            self.seen.append(body)
        if response.received_messages:
            ack_ids = [m.ack_id for m in response.received_messages]
            self.subscriber.acknowledge(request={"subscription": self.subscription, "ack_ids": ack_ids})
        return self.seen

    def about(self, *keys: Key) -> list[dict[str, Any]]:
        """The messages seen for any of ``keys``."""
        return [
            body
            for body in self.seen
            for uri, generation in keys
            if body.get("input") == uri and (generation is None or body.get("generation") == generation)
        ]

    def first(self, key: Key, *, timeout_s: float) -> dict[str, Any]:
        """The first completion for ``key``, pulling until it comes."""
        return until(lambda: self.pull() and self.about(key), timeout_s, f"completion for {key[0]}")[0]

    def exactly(
        self, *keys: Key, expect: int, timeout_s: float = 60.0, settle_s: float = SETTLE_S
    ) -> list[dict[str, Any]]:
        """The ``expect`` completions for ``keys``, failing if one more arrives (see :func:`settled`)."""
        names = ", ".join(uri for uri, _ in keys)
        return settled(
            lambda: (self.pull(), self.about(*keys))[1],
            expect,
            timeout_s=timeout_s,
            settle_s=settle_s,
            what=f"completions for {names}",
        )
