"""An image becomes outputs: the one place that decides, writes and cleans ``results/<input path>/``.

The function (:mod:`functions.segment`) and the pipeline's shard (:mod:`pipeline.shard`) both call
this module; they differ only in where the masks come from (the endpoint or the engine in process)
and where the completion goes (a Pub/Sub message or a manifest line).

Write order for input generation G, and what a redelivery or re-run finds after a crash at each point
(see docs/design.md "Idempotency"):

1. mask PNGs + overlay.jpg (scratch)  → no record for G yet          → COMPUTE again, replacing them
2. masks.json or error.json (record)  → record for G, no completion  → PUBLISH from the record
3. the completion (message or manifest line)
4. completion.json (function only)    → completion for G              → COMPLETED, nothing published

Objects for a newer input generation make an older one STALE: a re-upload wins over a late event.
Every write carries a generation precondition (:func:`samdrop.layout.write_output`).
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from samdrop.documents import ErrorRecord, MaskOutputs, MasksDocument, Prediction, TilingRecord
from samdrop.errors import PermanentError, SamdropError
from samdrop.layout import OutputPaths, input_generation, json_record, write_output
from samdrop.masks import mask_to_png, overlay_jpeg, rle_to_mask
from samdrop.storage import ObjectInfo, ObjectStore
from samdrop.tiles import tile_boxes
from samdrop.tracing import current_trace_id

log = logging.getLogger(__name__)

PREVIEW_SIDE = 1024  # px, longest side of overlay.jpg
MAX_WRITE_THREADS = 8
RANDOM_WEIGHTS_NOTE = "model has RANDOM WEIGHTS (tiny test model): these masks are meaningless"

Record = MasksDocument | ErrorRecord
Listing = Mapping[str, ObjectInfo]


class Step(enum.Enum):
    COMPUTE = "compute"  # nothing recorded for this generation: segment it
    PUBLISH = "publish"  # a record exists but its completion was not recorded
    COMPLETED = "completed"  # the completion for this generation was recorded
    STALE = "stale"  # outputs of a newer input generation exist


@dataclass(frozen=True)
class Decision:
    step: Step
    reason: str
    record: ObjectInfo | None = None  # masks.json / error.json for this generation (PUBLISH, COMPLETED)
    newer: str | None = None  # an output of a newer generation (STALE)


def decide(listing: Listing, paths: OutputPaths, generation: int) -> Decision:
    """What work input ``generation`` still needs, given the objects in ``paths.folder``."""
    newer = [
        info.name
        for info in listing.values()
        if (gen := input_generation(info.metadata)) is not None and gen > generation
    ]
    if newer:
        return Decision(
            Step.STALE,
            f"outputs of a newer upload exist ({min(newer)}); this event is outdated",
            None,
            min(newer),
        )
    record = None
    for name in (paths.masks_json, paths.error_json):
        info = listing.get(name)
        if info is not None and input_generation(info.metadata) == generation:
            record = info
            break
    completion = listing.get(paths.completion)
    if completion is not None and input_generation(completion.metadata) == generation:
        return Decision(
            Step.COMPLETED, "already completed: the completion for this generation was published", record
        )
    if record is not None:
        name = record.name.rsplit("/", 1)[-1]
        return Decision(Step.PUBLISH, f"{name} exists but its completion was not recorded", record)
    return Decision(Step.COMPUTE, "no record for this generation")


def read_record(store: ObjectStore, paths: OutputPaths, info: ObjectInfo) -> Record:
    """The ``masks.json`` or ``error.json`` version ``info`` (from a listing) as its document."""
    raw = json.loads(store.read(paths.bucket, info.name, generation=info.generation))
    if info.name == paths.error_json:
        return ErrorRecord.from_json(raw)
    return MasksDocument.from_json(raw)


def write_masks(
    store: ObjectStore,
    paths: OutputPaths,
    listing: Listing,
    *,
    image: np.ndarray,
    prediction: Prediction,
    input_uri: str,
    generation: int,
    batch_id: str | None = None,
    timings_ms: Mapping[str, float] | None = None,
    threads: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    total_since: float | None = None,
) -> MasksDocument:
    """Write mask PNGs (full resolution), ``overlay.jpg``, then ``masks.json`` last (the commit).

    image: ``HxWx3 uint8`` RGB as displayed, the one ``prediction`` was made on (a different size
    raises ``PermanentError`` ``size_mismatch``). ``timings_ms``: the caller's stages; ``write`` is
    added, and ``total`` since ``total_since`` (a ``clock`` reading) when given. ``threads``: mask
    PNGs written at once. Raises ``WriteConflict`` when another writer got
    there first, ``TransientError`` when storage fails.
    """
    started = clock()
    height, width = image.shape[:2]
    if (prediction.height, prediction.width) != (height, width):
        raise PermanentError(
            f"the masks are {prediction.width}x{prediction.height} px but {input_uri} generation "
            f"{generation} is {width}x{height}: was the object replaced meanwhile? Upload it again",
            code="size_mismatch",
        )
    note = RANDOM_WEIGHTS_NOTE if prediction.random_weights else None
    previews = _write_mask_pngs(store, paths, listing, prediction, generation, threads)
    preview_image = _resize_image(image, preview_size(width, height))
    if prediction.tiling is not None and prediction.mode == "automatic":
        preview_image = draw_tile_grid(preview_image, prediction.tiling, width, height)
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
    doc = MasksDocument(
        input=input_uri,
        generation=str(generation),
        batch_id=batch_id,
        width=width,
        height=height,
        mode=prediction.mode,
        prompts=prediction.prompts,
        amg=prediction.amg,
        tiling=prediction.tiling,
        masks=prediction.masks,
        model=prediction.model,
        note=note,
        predictor_timings_ms=dict(prediction.timings_ms),
        timings_ms=_timings(timings_ms, clock(), started, total_since),
        outputs=MaskOutputs(
            masks=[paths.uri(paths.mask(i)) for i in range(len(prediction.masks))],
            metadata=paths.uri(paths.masks_json),
            overlay=paths.uri(paths.overlay),
        ),
        trace_id=current_trace_id(),
    )
    write_record(store, paths, listing, doc)
    return doc


def error_record(error: SamdropError, input_uri: str, generation: int) -> ErrorRecord:
    return ErrorRecord(error.code, error.message, input_uri, str(generation))


def write_record(store: ObjectStore, paths: OutputPaths, listing: Listing, record: Record) -> int:
    """Write ``masks.json`` or ``error.json``; returns the new object's generation."""
    name = paths.error_json if isinstance(record, ErrorRecord) else paths.masks_json
    return write_output(
        store,
        paths.bucket,
        name,
        json_record(record.to_json()),
        "application/json",
        seen=listing.get(name),
        generation=int(record.generation),
    )


def longest_name(paths: OutputPaths, max_masks: int) -> str:
    """The longest object name (in UTF-8 bytes) an input's outputs can have, at most ``max_masks``
    masks: checked against Cloud Storage's limit before any work (:mod:`samdrop.budgets`)."""
    names = [
        paths.masks_json,
        paths.error_json,
        paths.overlay,
        paths.completion,
        paths.mask(max(0, max_masks - 1)),
    ]
    return max(names, key=lambda name: len(name.encode("utf-8")))


def written_names(paths: OutputPaths, record: Record) -> set[str]:
    """The objects a run that wrote ``record`` owns (everything else older may go)."""
    if isinstance(record, ErrorRecord):
        return {paths.error_json}
    return {paths.mask(i) for i in range(record.mask_count)} | {paths.overlay, paths.masks_json}


def remove_older_outputs(
    store: ObjectStore, paths: OutputPaths, listing: Listing, generation: int, *, keep: set[str]
) -> None:
    """Best effort: delete outputs of older input generations this run did not replace (e.g.
    ``mask_007.png`` when the new image has 5 masks, or ``masks.json`` when the new one failed).
    ``completion.json`` stays: the next completion replaces exactly the version listed."""
    for info in listing.values():
        gen = input_generation(info.metadata)
        if info.name in keep or info.name == paths.completion or gen is None or gen >= generation:
            continue
        try:
            store.delete(paths.bucket, info.name, if_generation_match=info.generation)
        except SamdropError as exc:
            log.warning("could not remove an outdated output %s: %s", info.name, exc.message)


def preview_size(width: int, height: int, side: int = PREVIEW_SIDE) -> tuple[int, int]:
    """(width, height) of the overlay: the longest side at most ``side`` px, aspect kept."""
    scale = min(1.0, side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def _timings(
    timings_ms: Mapping[str, float] | None, now: float, started: float, total_since: float | None
) -> dict[str, float]:
    timings = {**(timings_ms or {}), "write": ms(now - started)}
    if total_since is not None:
        timings["total"] = ms(now - total_since)
    return timings


def _write_mask_pngs(
    store: ObjectStore,
    paths: OutputPaths,
    listing: Listing,
    prediction: Prediction,
    generation: int,
    threads: int,
) -> list[np.ndarray]:
    """Write ``mask_NNN.png``; return the masks at preview size (so at most one full-size mask per
    thread is alive at a time)."""
    size = preview_size(prediction.width, prediction.height)

    def write_one(index: int) -> np.ndarray:
        mask = rle_to_mask(prediction.masks[index].rle)
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
        return _resize_mask(mask, size)

    count = len(prediction.masks)
    workers = max(1, min(threads, MAX_WRITE_THREADS, count))
    if workers == 1:
        return [write_one(index) for index in range(count)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="samdrop-write") as pool:
        return list(pool.map(write_one, range(count)))


def draw_tile_grid(preview: np.ndarray, tiling: TilingRecord, width: int, height: int) -> np.ndarray:
    """The preview with the tile grid drawn in (1-px white lines at each tile's edges)."""
    out = preview.copy()
    scale_x, scale_y = preview.shape[1] / width, preview.shape[0] / height
    for x0, y0, x1, y1 in tile_boxes(width, height, tiling["tile"], tiling["overlap"]):
        left, right = round(x0 * scale_x), min(preview.shape[1] - 1, round(x1 * scale_x) - 1)
        top, bottom = round(y0 * scale_y), min(preview.shape[0] - 1, round(y1 * scale_y) - 1)
        out[top : bottom + 1, [left, right]] = 255
        out[[top, bottom], left : right + 1] = 255
    return out


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if size == (mask.shape[1], mask.shape[0]):
        return mask
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST), dtype=bool)


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if size == (image.shape[1], image.shape[0]):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
