"""Upload images to the local stack and wait for their completions: what the demo, the outage
drill and the benchmarks share (``samdrop demo`` itself is :mod:`deploy.demo`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc

from samdrop.errors import ConfigError
from samdrop.prompts import PROMPTS_METADATA_KEY
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S, Settings

if TYPE_CHECKING:
    import numpy as np
    from google.cloud import pubsub_v1, storage

    from deploy.local import LocalStack


@dataclass
class Upload:
    """An image put into the bucket and what became of it."""

    name: str
    uri: str  # gs://bucket/incoming/…
    generation: str
    uploaded_at: float  # time.monotonic() when the upload finished
    completion: dict[str, Any] | None = None
    latency_s: float | None = None  # upload finished → completion message pulled


def sample_image(name: str) -> np.ndarray:
    """A scikit-image sample photo as RGB (grey ones, like ``camera``, are uploaded as they are)."""
    try:
        from skimage import data
    except ModuleNotFoundError:
        raise ConfigError(
            "the demo's photos come from scikit-image: pip install -c constraints.txt '.[local]' "
            "(make demo installs it)"
        ) from None
    image: np.ndarray = getattr(data, name)()
    return image


def upload_file(
    client: storage.Client, bucket: str, path: Path, object_name: str, prompts: dict[str, Any] | None
) -> Upload:
    """Upload ``path`` with its prompts as ``samdrop-prompts`` metadata; the clock starts when it lands."""
    blob = client.bucket(bucket).blob(object_name)
    if prompts:
        blob.metadata = {PROMPTS_METADATA_KEY: json.dumps(prompts, separators=(",", ":"))}
    blob.upload_from_filename(str(path), content_type="image/jpeg", timeout=DEFAULT_REQUEST_TIMEOUT_S)
    return Upload(path.stem, f"gs://{bucket}/{object_name}", str(blob.generation), time.monotonic())


def await_completions(
    subscriber: pubsub_v1.SubscriberClient,
    subscription: str,
    uploads: Sequence[Upload],
    *,
    timeout_s: float,
    progress: Callable[[int, int, float], None] = lambda done, total, elapsed: None,
    on_completion: Callable[[Upload], None] = lambda upload: None,
) -> None:
    """Pull completions until every upload has its own (same input and generation) or time runs out;
    ``on_completion`` gets each upload as its completion arrives (acknowledged by then).

    Only matching messages are acknowledged; others (a user's own uploads) are left for them.
    """
    waiting = {(u.uri, u.generation): u for u in uploads}
    started = time.monotonic()
    deadline = started + timeout_s
    progress(0, len(uploads), 0.0)
    while waiting and time.monotonic() < deadline:
        try:
            response = subscriber.pull(
                request={"subscription": subscription, "max_messages": 100},
                timeout=min(10.0, max(0.1, deadline - time.monotonic())),
            )
        except (gexc.DeadlineExceeded, gexc.ServiceUnavailable):
            continue
        received_at = time.monotonic()
        mine, arrived = [], []
        for received in response.received_messages:
            try:
                body = json.loads(received.message.data)
            except ValueError:
                continue
            upload = waiting.pop((body.get("input"), str(body.get("generation"))), None)
            if upload is not None:
                upload.completion, upload.latency_s = body, received_at - upload.uploaded_at
                mine.append(received.ack_id)
                arrived.append(upload)
        if mine:
            subscriber.acknowledge(
                request={"subscription": subscription, "ack_ids": mine}, timeout=DEFAULT_REQUEST_TIMEOUT_S
            )
        for upload in arrived:
            on_completion(upload)
        progress(len(uploads) - len(waiting), len(uploads), received_at - started)


@contextmanager
def running_stack(
    settings: Settings, *, keep_running: bool, say: Callable[[str], None]
) -> Iterator[LocalStack]:
    """The local stack: reused when one is up and healthy, else started (and stopped after unless
    ``keep_running``)."""
    from deploy.local import LocalStack
    from deploy.processes import LocalStackError

    stack = LocalStack(settings)
    services = stack.status()
    if services and all(s.healthy for s in services):
        names = {s.name for s in services}
        if not {"predictor", "function"} <= names:
            raise LocalStackError(
                "the running local stack has no predictor or function: `samdrop local down`, then retry"
            )
        say(f"using the running local stack ({stack.state_path})")
        yield stack
        return
    if services:
        raise LocalStackError(
            f"a local stack is recorded in {stack.state_path} but not healthy: run `samdrop local down`"
        )
    say("starting the local stack: Pub/Sub emulator, fake-gcs-server, SAM predictor, function …")
    started = time.monotonic()
    stack.up()
    say(f"  up in {time.monotonic() - started:.1f} s; logs in {stack.state_dir / 'logs'}")
    try:
        yield stack
    finally:
        if keep_running:
            say('the stack keeps running: eval "$(samdrop local env)"; stop it with `samdrop local down`')
        else:
            stack.down()
            say("stopped the local stack (keep it with --keep-running)")


def completion_clients(
    stack: LocalStack, settings: Settings
) -> tuple[storage.Client, pubsub_v1.SubscriberClient, str]:
    """(storage client, subscriber, completions subscription path) bound to ``stack``'s emulators:
    what uploads and then waits for completions (the demo, the benchmarks). Close the first two."""
    from deploy.local import emulator_storage_client, pubsub_clients

    env = stack.client_env()
    client = emulator_storage_client(settings.project, env["STORAGE_EMULATOR_HOST"])
    publisher, subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])
    publisher.transport.close()
    return (
        client,
        subscriber,
        subscriber.subscription_path(settings.project, settings.completions_subscription),
    )
