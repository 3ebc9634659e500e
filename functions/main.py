"""Cloud Functions gen2 entry point: ``functions-framework --target on_upload``.

Thin on purpose: build clients and settings once per process (warm starts reuse them), then hand
the CloudEvent to :func:`functions.handler.handle_cloud_event`. Tests pass ``deps`` built from fakes.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import functions_framework

from functions.handler import Deps, handle_cloud_event
from samdrop.logs import configure as configure_logs
from samdrop.tracing import configure as configure_traces

_deps: Deps | None = None
_deps_lock = threading.Lock()


def default_deps() -> Deps:
    """The process-wide clients, built on first use from ``os.environ`` (emulators via
    ``STORAGE_EMULATOR_HOST`` / ``PUBSUB_EMULATOR_HOST``, which the client libraries honour)."""
    global _deps
    with _deps_lock:
        if _deps is None:
            _deps = build_deps(os.environ)
        return _deps


def build_deps(env: Any) -> Deps:
    # Imported here: tests that pass fakes never load the client libraries.
    from google.cloud.pubsub_v1 import PublisherClient
    from google.cloud.storage import Client as StorageClient

    from functions.batches import pipelines_not_configured
    from functions.endpoint import make_endpoint
    from pipeline.start import starter_for
    from samdrop.messages import PubsubPublisher
    from samdrop.settings import Settings
    from samdrop.storage import GcsStore

    settings = Settings.from_env(env)
    return Deps(
        settings=settings,
        store=GcsStore(StorageClient(project=settings.project), timeout_s=settings.request_timeout_s),
        publisher=PubsubPublisher(PublisherClient(), settings.project, timeout_s=settings.request_timeout_s),
        endpoint=make_endpoint(settings) if settings.endpoint else None,
        start_batch=pipelines_not_configured if settings.pipeline_runner == "none" else starter_for(settings),
    )


@functions_framework.cloud_event
def on_upload(cloud_event: Any, deps: Deps | None = None) -> None:
    """Handle one GCS notification CloudEvent (``google.cloud.pubsub.topic.v1.messagePublished``)."""
    deps = deps if deps is not None else default_deps()
    configure_logs(deps.settings.log_level)
    configure_traces(deps.settings.traces, "samdrop-function")
    handle_cloud_event(cloud_event, deps)
