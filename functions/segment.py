"""Segment one uploaded image and write the results back (idempotently, see :mod:`functions.idempotency`)."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from PIL import Image

from functions import logs
from functions.endpoint import Endpoint
from functions.events import UploadEvent
from functions.idempotency import Plan, Step, decide
from functions.prediction import Prediction, parse_prediction
from functions.prompts import build_instance, prompts_from_metadata
from samdrop.errors import ConfigError, InputNotFound, PermanentError, TransientError
from samdrop.images import decode_image
from samdrop.layout import OutputPaths, input_generation, json_record, output_paths, write_output
from samdrop.masks import mask_to_png, overlay_jpeg, rle_to_mask
from samdrop.messages import CompletionMessage, Publisher, publish_completion
from samdrop.settings import Settings
from samdrop.storage import ObjectInfo, ObjectStore, WriteConflict

RANDOM_WEIGHTS_NOTE = "model has RANDOM WEIGHTS (tiny test model): these masks are meaningless"
PREVIEW_SIDE = 1024  # px, longest side of overlay.jpg
MAX_WRITE_THREADS = 8

Clock = Callable[[], float]


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
    listing = store.list(paths.bucket, paths.folder)
    plan = decide(listing, paths, generation)
    if plan.step is not Step.COMPUTE:
        return _finish_existing(plan, paths, listing, settings, store, publisher)

    started = clock()
    try:
        if endpoint is None:
            raise ConfigError("SAMDROP_ENDPOINT is not set: the function cannot segment images")
        doc = _segment_and_write(event, paths, listing, settings, store, endpoint, clock)
        record_name, outcome = paths.masks_json, "succeeded"
    except (TransientError, ConfigError):
        raise
    except WriteConflict as exc:
        return _after_conflict(exc, paths, generation, settings, store, publisher)
    except Exception as exc:
        error = _as_permanent(exc, event)
        doc = {**error.to_dict(), "input": event.uri, "generation": event.generation}
        try:
            _write_json(store, paths, paths.error_json, doc, listing, generation)
        except WriteConflict as conflict:
            return _after_conflict(conflict, paths, generation, settings, store, publisher)
        record_name, outcome = paths.error_json, "failed"

    _remove_older_outputs(store, paths, listing, generation, keep=_written_names(doc, paths, record_name))
    message = completion_from_record(doc, record_name, paths)
    _publish_and_mark(message, paths, listing, generation, settings, store, publisher)
    timings = {"total": _ms(clock() - started)}
    return Outcome(outcome, "segmented" if outcome == "succeeded" else doc["message"], message, timings)


def completion_from_record(doc: Mapping[str, Any], record_name: str, paths: OutputPaths) -> CompletionMessage:
    """The completion message for a masks.json or error.json document (same for every delivery)."""
    if record_name.endswith("/error.json"):
        return CompletionMessage(
            kind="image",
            status="failed",
            input=doc["input"],
            generation=doc["generation"],
            outputs={"error": paths.uri(record_name)},
            error={"code": doc["code"], "message": doc["message"]},
        )
    timings = doc.get("timings_ms") or {}
    return CompletionMessage(
        kind="image",
        status="succeeded",
        input=doc["input"],
        generation=doc["generation"],
        outputs=doc["outputs"],
        mask_count=doc["mask_count"],
        model=(doc.get("model") or {}).get("type"),
        timings_ms={k: timings[k] for k in ("total", "model", "endpoint") if k in timings},
    )


# --- compute -----------------------------------------------------------------------------------


def _segment_and_write(
    event: UploadEvent,
    paths: OutputPaths,
    listing: Mapping[str, ObjectInfo],
    settings: Settings,
    store: ObjectStore,
    endpoint: Endpoint,
    clock: Clock,
) -> dict[str, Any]:
    """Read, predict, write mask PNGs + overlay, then masks.json last (the commit). Returns masks.json."""
    t0 = clock()
    generation = int(event.generation)
    metadata = event.metadata
    if metadata is None:  # notification without payload: read the metadata of that exact generation
        info = store.stat(event.bucket, event.name, generation=generation)
        if info is None:
            raise InputNotFound(f"{event.uri} generation {generation} no longer exists (deleted or replaced)")
        metadata = info.metadata
    prompts = prompts_from_metadata(metadata)
    data = store.read(event.bucket, event.name, generation=generation)
    image = decode_image(data, max_pixels=settings.max_image_pixels, name=event.uri)
    t1 = clock()
    raw = endpoint.predict([build_instance(event, prompts)], {})[0]
    prediction = parse_prediction(raw, where=event.uri)
    t2 = clock()
    if (prediction.height, prediction.width) != image.shape[:2]:
        raise PermanentError(
            f"the endpoint saw {prediction.width}x{prediction.height} px but {event.uri} generation "
            f"{generation} is {image.shape[1]}x{image.shape[0]}: was the object replaced meanwhile? "
            "Upload it again",
            code="size_mismatch",
        )
    note = RANDOM_WEIGHTS_NOTE if prediction.random_weights else None
    previews = _write_masks(prediction, paths, listing, generation, store, settings)
    preview_image = _shrink(image, PREVIEW_SIDE)
    overlay = overlay_jpeg(preview_image, previews, max_side=None, note=note)
    write_output(
        store,
        paths.bucket,
        paths.overlay,
        overlay,
        "image/jpeg",
        seen=listing.get(paths.overlay),
        generation=generation,
    )
    t3 = clock()
    doc = _masks_document(event, prompts, prediction, paths, note)
    doc["timings_ms"] = {
        "total": _ms(t3 - t0),
        "read": _ms(t1 - t0),
        "endpoint": _ms(t2 - t1),
        "write": _ms(t3 - t2),
        **({"model": prediction.timings_ms["model"]} if "model" in prediction.timings_ms else {}),
    }
    _write_json(store, paths, paths.masks_json, doc, listing, generation)
    return doc


def _write_masks(
    prediction: Prediction,
    paths: OutputPaths,
    listing: Mapping[str, ObjectInfo],
    generation: int,
    store: ObjectStore,
    settings: Settings,
) -> list[np.ndarray]:
    """Write ``mask_NNN.png`` at full resolution in parallel; return the masks at preview size
    (so at most one full-size mask per thread is alive at a time)."""
    preview = _preview_size(prediction.width, prediction.height, PREVIEW_SIDE)

    def write_one(index: int) -> np.ndarray:
        mask = rle_to_mask(prediction.masks[index]["segmentation"])
        name = paths.mask(index)
        write_output(
            store,
            paths.bucket,
            name,
            mask_to_png(mask),
            "image/png",
            seen=listing.get(name),
            generation=generation,
        )
        if preview == (prediction.width, prediction.height):
            return mask
        small = Image.fromarray(mask).resize(preview, Image.Resampling.NEAREST)
        return np.asarray(small, dtype=bool)

    count = len(prediction.masks)
    if count == 0:
        return []
    threads = max(1, min(settings.io_threads, MAX_WRITE_THREADS, count))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="samdrop-write") as pool:
        return list(pool.map(write_one, range(count)))


def _masks_document(
    event: UploadEvent,
    prompts: Mapping[str, Any] | None,
    prediction: Prediction,
    paths: OutputPaths,
    note: str | None,
) -> dict[str, Any]:
    mask_uris = [paths.uri(paths.mask(i)) for i in range(len(prediction.masks))]
    return {
        "input": event.uri,
        "generation": event.generation,
        "width": prediction.width,
        "height": prediction.height,
        "mode": "prompted" if prompts else "automatic",
        "prompts": prediction.prompts if prediction.prompts is not None else prompts,
        "mask_count": len(prediction.masks),
        "masks": [
            {"index": i, "png": uri, **mask}
            for i, (uri, mask) in enumerate(zip(mask_uris, prediction.masks, strict=True))
        ],
        "model": dict(prediction.model),
        "note": note,
        "predictor_timings_ms": dict(prediction.timings_ms),
        "outputs": {
            "masks": mask_uris,
            "metadata": paths.uri(paths.masks_json),
            "overlay": paths.uri(paths.overlay),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --- records, publishing, cleanup ----------------------------------------------------------------


def _write_json(
    store: ObjectStore,
    paths: OutputPaths,
    name: str,
    doc: Mapping[str, Any],
    listing: Mapping[str, ObjectInfo],
    generation: int,
) -> int:
    return write_output(
        store,
        paths.bucket,
        name,
        json_record(doc),
        "application/json",
        seen=listing.get(name),
        generation=generation,
    )


def _publish_and_mark(
    message: CompletionMessage,
    paths: OutputPaths,
    listing: Mapping[str, ObjectInfo],
    generation: int,
    settings: Settings,
    store: ObjectStore,
    publisher: Publisher,
) -> None:
    """Publish, then record that it was published. Publishing first means a crash in between
    republishes on redelivery instead of losing the completion."""
    message_id = publish_completion(publisher, settings.completions_topic, message)
    try:
        _write_json(
            store,
            paths,
            paths.completion,
            {**message.to_dict(), "message_id": message_id},
            listing,
            generation,
        )
    except WriteConflict:
        logs.warning(
            "completion marker already written by a concurrent delivery",
            object=message.input,
            generation=message.generation,
            outcome="duplicate_publish",
        )


def _finish_existing(
    plan: Plan,
    paths: OutputPaths,
    listing: Mapping[str, ObjectInfo],
    settings: Settings,
    store: ObjectStore,
    publisher: Publisher,
) -> Outcome:
    if plan.step is not Step.PUBLISH:
        return Outcome(plan.step.value, plan.reason)
    assert plan.record is not None
    record = plan.record
    generation = input_generation(record.metadata) or 0
    doc = json.loads(store.read(paths.bucket, record.name, generation=record.generation))
    message = completion_from_record(doc, record.name, paths)
    _publish_and_mark(message, paths, listing, generation, settings, store, publisher)
    return Outcome("republished", plan.reason, message)


def _after_conflict(
    exc: WriteConflict,
    paths: OutputPaths,
    generation: int,
    settings: Settings,
    store: ObjectStore,
    publisher: Publisher,
) -> Outcome:
    """A 412: another delivery wrote here since our listing. Look again; if it finished (or a newer
    upload took over) we are done, otherwise let Pub/Sub redeliver later rather than race it."""
    plan = decide(store.list(paths.bucket, paths.folder), paths, generation)
    if plan.step in (Step.DONE, Step.STALE):
        return Outcome(plan.step.value, f"{plan.reason} (after a write conflict)")
    # PUBLISH here means the other delivery is between its record and its completion: it will
    # publish; publishing too would duplicate. COMPUTE means it is still writing.
    raise TransientError(
        f"another delivery is writing outputs of this generation ({exc.message}); retrying later"
    ) from exc


def _remove_older_outputs(
    store: ObjectStore,
    paths: OutputPaths,
    listing: Mapping[str, ObjectInfo],
    generation: int,
    *,
    keep: set[str],
) -> None:
    """Best effort: delete outputs of older input generations that this run did not replace (e.g.
    mask_007.png when the new image has 5 masks, or masks.json when the new one failed)."""
    for info in listing.values():
        gen = input_generation(info.metadata)
        if info.name in keep or info.name == paths.completion or gen is None or gen >= generation:
            continue
        try:
            store.delete(paths.bucket, info.name, if_generation_match=info.generation)
        except (WriteConflict, InputNotFound, TransientError) as exc:
            logs.warning("could not remove an outdated output", object=info.name, error=str(exc))


def _written_names(doc: Mapping[str, Any], paths: OutputPaths, record_name: str) -> set[str]:
    if record_name == paths.error_json:
        return {record_name}
    return {paths.mask(i) for i in range(doc["mask_count"])} | {paths.overlay, paths.masks_json}


def _as_permanent(exc: Exception, event: UploadEvent) -> PermanentError:
    if isinstance(exc, PermanentError):
        return exc
    # A bug here must not become a crash loop: record it for the user, keep the trace in the log.
    logs.error(
        "unexpected error while segmenting; recorded as a permanent failure",
        object=event.uri,
        generation=event.generation,
        error=f"{type(exc).__name__}: {exc}",
        traceback=traceback.format_exc(),
    )
    return PermanentError(f"internal error ({type(exc).__name__}: {exc})", code="internal")


def _preview_size(width: int, height: int, side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink(image: np.ndarray, side: int) -> np.ndarray:
    height, width = image.shape[:2]
    size = _preview_size(width, height, side)
    if size == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)
