"""From a CloudEvent to done: decode, route, act, log one line. Clients arrive in :class:`Deps`.

Meeting Pub/Sub at this edge: returning normally acknowledges the message; raising
``TransientError`` or ``ConfigError`` makes functions-framework answer 500, so Pub/Sub redelivers
with backoff and finally dead-letters. Undecodable events and permanent errors are acknowledged;
a permanent error that could not be recorded as ``error.json`` still gets one failed completion.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from functions.batches import BatchStart, StartBatch, pipelines_not_configured
from functions.endpoint import Endpoint
from functions.events import EventDecodeError, UploadEvent, decode_event
from functions.routing import Action, route
from functions.segment import segment_upload
from samdrop.batches import BatchPaths, failed_completion
from samdrop.errors import (
    ConfigError,
    ErrorInfo,
    SamdropError,
    TransientError,
    as_samdrop_error,
    public_error,
)
from samdrop.logs import fields as log_fields
from samdrop.messages import CompletionMessage, ImageCompletion, Publisher, publish_completion
from samdrop.settings import Settings
from samdrop.storage import ObjectStore
from samdrop.tracing import tracer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deps:
    """Everything the handler needs from the outside; built once per process (or from fakes)."""

    settings: Settings
    store: ObjectStore
    publisher: Publisher
    endpoint: Endpoint | None  # None when SAMDROP_ENDPOINT is unset: batches still work
    start_batch: StartBatch = field(default=pipelines_not_configured)
    clock: Callable[[], float] = time.monotonic


def handle_cloud_event(cloud_event: Any, deps: Deps) -> str:
    """Decode a CloudEvent (``type``, ``id``, ``data``) and handle it; returns the outcome logged."""
    try:
        event = decode_event(
            cloud_event["type"],
            cloud_event.data,
            ce_id=cloud_event["id"],
            max_json_depth=deps.settings.max_json_depth,
        )
    except (EventDecodeError, KeyError, AttributeError, TypeError) as exc:
        log.warning(
            "undecodable event acknowledged: %s",
            exc,
            extra=log_fields(
                outcome="invalid_event",
                ce_id=_safe_get(cloud_event, "id"),
                ce_type=_safe_get(cloud_event, "type"),
            ),
        )
        if isinstance(exc, EventDecodeError):
            _report_malformed(exc, deps)
        return "invalid_event"
    return handle_upload(event, deps)


def handle_upload(event: UploadEvent, deps: Deps) -> str:
    """Route ``event`` and act on it; exactly one log line per event. Returns the outcome.
    One trace per event (``SAMDROP_TRACES``): this span is its root."""
    attributes = {"samdrop.object": event.uri, "samdrop.generation": event.generation}
    with tracer().start_as_current_span("function.handle_upload", attributes=attributes) as span:
        outcome = _handle_upload(event, deps)
        span.set_attribute("samdrop.outcome", outcome)
        return outcome


def _handle_upload(event: UploadEvent, deps: Deps) -> str:
    started = deps.clock()
    about: dict[str, Any] = {
        "object": event.uri,
        "generation": event.generation,
        "event_type": event.event_type,
        "message_id": event.message_id,
    }
    decision = route(event, deps.settings)
    try:
        if decision.action is Action.IGNORE:
            log.info("ignored: %s", decision.reason, extra=log_fields(outcome="ignored", **about))
            return "ignored"
        if decision.action is Action.START_BATCH:
            assert decision.batch_id is not None
            prefix = deps.settings.batches_prefix + decision.batch_id + "/"
            request = BatchStart(decision.batch_id, event.bucket, event.generation, prefix)
            outcome = deps.start_batch(
                request, settings=deps.settings, store=deps.store, publisher=deps.publisher
            )
            timings = {"total": _ms(deps.clock() - started)}
            log.info(
                "batch %s: %s",
                decision.batch_id,
                outcome,
                extra=log_fields(outcome=outcome, timings_ms=timings, **about),
            )
            return outcome
        result = segment_upload(
            event,
            settings=deps.settings,
            store=deps.store,
            publisher=deps.publisher,
            endpoint=deps.endpoint,
            clock=deps.clock,
        )
    except TransientError as exc:
        log.warning(
            "transient failure, Pub/Sub will redeliver: %s",
            exc.message,
            extra=log_fields(outcome="retry", error_code=exc.code, **about),
        )
        raise
    except ConfigError as exc:
        log.error(
            "configuration error, Pub/Sub will redeliver: %s",
            exc.message,
            extra=log_fields(outcome="config_error", error_code=exc.code, **about),
        )
        raise
    except Exception as exc:
        error = as_samdrop_error(exc, where=f"handling {event.uri}", log=log, extra=log_fields(**about))
        if not error.permanent:  # e.g. a write conflict or a network failure: look again later
            log.warning(
                "%s, Pub/Sub will redeliver",
                error.message,
                extra=log_fields(outcome="retry", error_code=error.code, **about),
            )
            raise error from exc
        # Permanent, and not recorded where it happened (outputs that cannot be written, a bug):
        # one failed completion, then acknowledge. Retrying would meet the same problem again.
        return _fail_unrecorded(event, decision.batch_id, error, deps, about)
    timings = {**result.timings_ms, "handler": _ms(deps.clock() - started)}
    level = logging.WARNING if result.outcome == "failed" else logging.INFO
    failure = result.message.error if result.message is not None else None
    log.log(
        level,
        "%s: %s",
        result.outcome,
        result.reason,
        extra=log_fields(
            outcome=result.outcome,
            error_code=failure["code"] if failure is not None else None,
            timings_ms=timings,
            **about,
        ),
    )
    return result.outcome


def _report_malformed(exc: EventDecodeError, deps: Deps) -> None:
    """A malformed notification for an upload this function would segment: tell its uploader once
    (no generation is known, so there is nothing to key a record on)."""
    subject = exc.subject
    if subject is None or route(subject, deps.settings).action is not Action.SEGMENT:
        return
    error: ErrorInfo = {
        "code": "invalid_request",
        "message": f"the upload notification is malformed: {exc.message}",
    }
    message = ImageCompletion(status="failed", input=subject.uri, error=error)
    publish_completion(deps.publisher, deps.settings.completions_topic, message)


def _fail_unrecorded(
    event: UploadEvent, batch_id: str | None, exc: Exception, deps: Deps, about: dict[str, Any]
) -> str:
    """Publish one ``failed`` completion carrying ``exc``'s code and curated message (no record
    could be written, so ``outputs`` is empty); the trace goes to the log. Returns the outcome."""
    error = public_error(exc)
    log.error(
        "permanent failure without a record: %s",
        error["message"],
        exc_info=None if isinstance(exc, SamdropError) else exc,  # a bug's trace; a refusal needs none
        extra=log_fields(outcome="failed", error=error, error_code=error["code"], **about),
    )
    message: CompletionMessage
    if batch_id is not None:
        paths = BatchPaths.of(deps.settings, batch_id, event.bucket)
        message = failed_completion(paths, error["code"], error["message"])
    else:
        message = ImageCompletion(status="failed", input=event.uri, generation=event.generation, error=error)
    publish_completion(deps.publisher, deps.settings.completions_topic, message)
    return "failed"


def _safe_get(cloud_event: Any, key: str) -> Any:
    try:
        return cloud_event[key]
    except Exception:
        return None


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)
