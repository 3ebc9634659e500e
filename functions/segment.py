"""Segment one uploaded image and write the results back (idempotently, see :mod:`samdrop.outputs`).

What is particular to a single upload: the masks come from the endpoint, and the completion is a
Pub/Sub message, recorded afterwards in ``completion.json``. Everything else — the done/stale
decision, the write order, the documents, the clean-up — is :mod:`samdrop.outputs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from functions.endpoint import Endpoint
from functions.events import UploadEvent
from functions.prediction import parse_prediction
from functions.prompts import build_instance, prompts_from_metadata
from samdrop import outputs
from samdrop.budgets import check_image_shape, check_input_bytes, check_object_name
from samdrop.documents import ErrorRecord, MasksDocument
from samdrop.errors import ConfigError, InputNotFound, TransientError, as_samdrop_error
from samdrop.images import decode_image
from samdrop.layout import OutputPaths, json_record, output_paths, write_output
from samdrop.logs import fields as log_fields
from samdrop.messages import CompletionMessage, ImageCompletion, Publisher, publish_completion, traced
from samdrop.outputs import Decision, Listing, Record, Step
from samdrop.prompts import check_budget
from samdrop.settings import Settings
from samdrop.storage import ObjectStore, WriteConflict
from samdrop.tracing import tracer

log = logging.getLogger(__name__)
Clock = Callable[[], float]
# How a decision that needs no work is reported (the handler logs it as the outcome).
_OUTCOME = {Step.COMPLETED: "duplicate", Step.STALE: "stale"}


@dataclass(frozen=True)
class Outcome:
    """What one delivery did: ``outcome`` is ``succeeded``, ``failed`` (recorded permanent error),
    ``duplicate``, ``stale`` or ``republished`` (an earlier delivery's record, published now)."""

    outcome: str
    reason: str
    message: CompletionMessage | None = None
    timings_ms: Mapping[str, float] = field(default_factory=dict)


def segment_upload(
    event: UploadEvent,
    *,
    settings: Settings,
    store: ObjectStore,
    publisher: Publisher,
    endpoint: Endpoint | None,
    clock: Clock = time.monotonic,
) -> Outcome:
    """Segment ``event``'s image unless its generation was already handled; publish one completion.

    Raises ``TransientError`` (redeliver) and ``ConfigError`` (redeliver, then dead-letter); every
    other failure is recorded as ``error.json`` + a failed completion and returned normally.
    """
    paths = output_paths(settings, event.name)
    generation = int(event.generation)
    # Before any work: outputs that cannot be named cannot hold error.json either (the handler
    # publishes this refusal as the one failed completion).
    check_object_name(outputs.longest_name(paths, settings.max_masks), limit=settings.max_object_name_bytes)
    listing = store.list(paths.bucket, paths.folder)
    decision = outputs.decide(listing, paths, generation)
    if decision.step is not Step.COMPUTE:
        return _finish_existing(decision, paths, listing, settings, store, publisher)

    started = clock()
    record: Record
    try:
        if endpoint is None:
            raise ConfigError("SAMDROP_ENDPOINT is not set: the function cannot segment images")
        record = _segment_and_write(event, paths, listing, settings, store, endpoint, clock)
    except (TransientError, ConfigError):
        raise
    except WriteConflict as exc:
        return _after_conflict(exc, paths, generation, store)
    except Exception as exc:
        error = as_samdrop_error(
            exc,
            where=f"segmenting {event.uri}",
            log=log,
            extra=log_fields(object=event.uri, generation=event.generation),
        )
        if not error.permanent:  # an I/O failure the storage or endpoint client did not translate
            raise error from exc
        record = outputs.error_record(error, event.uri, generation)
        try:
            outputs.write_record(store, paths, listing, record)
        except WriteConflict as conflict:
            return _after_conflict(conflict, paths, generation, store)

    outputs.remove_older_outputs(store, paths, listing, generation, keep=outputs.written_names(paths, record))
    message = completion_from_record(record, paths)
    _publish_and_mark(message, paths, listing, generation, settings, store, publisher)
    timings = {"total": outputs.ms(clock() - started)}
    if isinstance(record, ErrorRecord):
        return Outcome("failed", record.message, message, timings)
    return Outcome("succeeded", "segmented", message, timings)


def completion_from_record(record: Record, paths: OutputPaths) -> ImageCompletion:
    """The completion message for a masks.json or error.json document (same for every delivery)."""
    if isinstance(record, ErrorRecord):
        return ImageCompletion(
            status="failed",
            input=record.input,
            generation=record.generation,
            outputs={"error": paths.uri(paths.error_json)},
            error=record.error,
        )
    timings = record.timings_ms
    return ImageCompletion(
        status="succeeded",
        input=record.input,
        generation=record.generation,
        outputs=dict(record.outputs),
        mask_count=record.mask_count,
        label_counts=record.label_counts,
        model=record.model,
        timings_ms={k: timings[k] for k in ("total", "model", "endpoint") if k in timings},
    )


def _segment_and_write(
    event: UploadEvent,
    paths: OutputPaths,
    listing: Listing,
    settings: Settings,
    store: ObjectStore,
    endpoint: Endpoint,
    clock: Clock,
) -> MasksDocument:
    """Read, predict, then write the outputs (:func:`samdrop.outputs.write_masks`)."""
    t0 = clock()
    generation = int(event.generation)
    metadata, size = event.metadata, event.size
    with tracer().start_as_current_span("function.read"):
        if metadata is None or size is None:  # notification without payload: stat that exact generation
            info = store.stat(event.bucket, event.name, generation=generation)
            if info is None:
                raise InputNotFound(
                    f"{event.uri} generation {generation} no longer exists (deleted or replaced)"
                )
            metadata, size = info.metadata, info.size
        # Budgets first: nothing is downloaded or sent to the endpoint for an input over a limit.
        check_input_bytes(size, limit=settings.max_input_bytes, name=event.uri)
        prompts = prompts_from_metadata(metadata, max_json_depth=settings.max_json_depth)
        check_budget(prompts, settings)
        data = store.read(event.bucket, event.name, generation=generation)
        image = decode_image(data, max_pixels=settings.max_image_pixels, name=event.uri)
        height, width = image.shape[:2]
        check_image_shape(width, height, max_aspect_ratio=settings.max_aspect_ratio, name=event.uri)
    t1 = clock()
    with tracer().start_as_current_span("function.endpoint"):  # the predictor's spans are children
        raw = endpoint.predict([build_instance(event, prompts).to_json()], {})[0]
    prediction = parse_prediction(raw, where=event.uri)
    t2 = clock()
    timings = {"read": outputs.ms(t1 - t0), "endpoint": outputs.ms(t2 - t1)}
    if "model" in prediction.timings_ms:
        timings["model"] = prediction.timings_ms["model"]
    with tracer().start_as_current_span("function.write_outputs"):
        return outputs.write_masks(
            store,
            paths,
            listing,
            image=image,
            prediction=prediction,
            input_uri=event.uri,
            generation=generation,
            timings_ms=timings,
            threads=settings.io_threads,
            clock=clock,
            total_since=t0,
        )


def _publish_and_mark(
    message: ImageCompletion,
    paths: OutputPaths,
    listing: Listing,
    generation: int,
    settings: Settings,
    store: ObjectStore,
    publisher: Publisher,
) -> None:
    """Publish, then record that it was published. Publishing first means a crash in between
    republishes on redelivery instead of losing the completion."""
    message = traced(message)  # completion.json records the trace id the message carries
    with tracer().start_as_current_span("function.publish_completion"):
        message_id = publish_completion(publisher, settings.completions_topic, message)
    try:
        write_output(
            store,
            paths.bucket,
            paths.completion,
            json_record(message.to_record(message_id)),
            "application/json",
            seen=listing.get(paths.completion),
            generation=generation,
        )
    except WriteConflict:
        log.warning(
            "completion marker already written by a concurrent delivery",
            extra=log_fields(
                object=message.input, generation=message.generation, outcome="duplicate_publish"
            ),
        )


def _finish_existing(
    decision: Decision,
    paths: OutputPaths,
    listing: Listing,
    settings: Settings,
    store: ObjectStore,
    publisher: Publisher,
) -> Outcome:
    if decision.step is not Step.PUBLISH:
        return Outcome(_OUTCOME[decision.step], decision.reason)
    assert decision.record is not None
    record = outputs.read_record(store, paths, decision.record)
    message = completion_from_record(record, paths)
    _publish_and_mark(message, paths, listing, int(record.generation), settings, store, publisher)
    return Outcome("republished", decision.reason, message)


def _after_conflict(exc: WriteConflict, paths: OutputPaths, generation: int, store: ObjectStore) -> Outcome:
    """A 412: another delivery wrote here since our listing. Look again; if it finished (or a newer
    upload took over) we are done, otherwise let Pub/Sub redeliver later rather than race it."""
    decision = outputs.decide(store.list(paths.bucket, paths.folder), paths, generation)
    if decision.step in _OUTCOME:
        return Outcome(_OUTCOME[decision.step], f"{decision.reason} (after a write conflict)")
    # PUBLISH here means the other delivery is between its record and its completion: it will
    # publish; publishing too would duplicate. COMPUTE means it is still writing.
    raise TransientError(
        f"another delivery is writing outputs of this generation ({exc.message}); retrying later"
    ) from exc
