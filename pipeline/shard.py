"""Step 2 of a batch: segment one shard with the model loaded once.

Three stages overlap: an I/O pool lists each image's output folder, reads and decodes the image
(a bounded window ahead of the model); the calling thread runs the engine on batches of
``engine.batch_size``; a writer pool encodes and uploads PNGs, the overlay and ``masks.json``
(last: the commit) while the next batch computes.

Per image, in order: a ``masks.json`` or ``error.json`` already written for this input generation
means done (a re-run resumes, nothing is recomputed); a permanent problem becomes ``error.json``; a
transient one (storage unavailable, a write race) is only reported, so the next run tries again.
Every write carries a generation precondition: nothing is overwritten that was not seen.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from pipeline.listing import BatchOptions, PlanItem
from pipeline.paths import BatchPaths
from pipeline.records import RANDOM_WEIGHTS_NOTE, error_document, failed_line, masks_document, succeeded_line
from predictor.backends import Engine
from predictor.engine import Job, MaskSet
from predictor.instances import Prompts, check_prompts_fit, parse_prompts
from samdrop.errors import PermanentError, SamdropError, TransientError
from samdrop.images import decode_image
from samdrop.layout import OutputPaths, input_generation, json_record, output_paths, write_output
from samdrop.masks import mask_to_png, overlay_jpeg, rle_to_mask
from samdrop.settings import Settings
from samdrop.storage import ObjectInfo, ObjectStore, WriteConflict

log = logging.getLogger(__name__)

PREVIEW_SIDE = 1024  # px, longest side of overlay.jpg
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Loaded:
    """One item after the I/O stage: either ``line`` (finished already), ``error`` or ``image`` is set."""

    item: PlanItem
    out: OutputPaths
    listing: dict[str, ObjectInfo] = field(default_factory=dict)
    image: np.ndarray | None = None
    prompts: Prompts | None = None
    line: dict[str, Any] | None = None
    error: SamdropError | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class ShardResult:
    """``lines``: one manifest line per item, in plan order; ``timings_ms``: sums over the shard
    (``read`` and ``decode`` on the I/O pool, ``compute`` engine wall time, ``write`` on the writer
    pool, ``wall`` for the whole shard)."""

    lines: list[dict[str, Any]]
    timings_ms: dict[str, float]


class ShardWorker:
    """Segments the items of one shard; build once per shard task (the engine is loaded already)."""

    def __init__(
        self,
        *,
        paths: BatchPaths,
        shard: int,
        settings: Settings,
        store: ObjectStore,
        engine: Engine,
        options: BatchOptions,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.paths = paths
        self.shard = shard
        self.settings = settings
        self.store = store
        self.engine = engine
        self.options = options
        self.clock = clock
        self.model = engine.description
        self.totals: dict[str, float] = {"read": 0.0, "decode": 0.0, "compute": 0.0, "write": 0.0}
        self._totals_lock = threading.Lock()

    def _add(self, stage: str, seconds: float) -> None:
        with self._totals_lock:
            self.totals[stage] += seconds * 1000.0

    def run(self, items: Iterable[PlanItem]) -> ShardResult:
        started = self.clock()
        threads = max(1, self.settings.io_threads)
        batch_size = max(1, self.engine.batch_size)
        lines: list[Future[dict[str, Any]]] = []
        with (
            ThreadPoolExecutor(threads, thread_name_prefix="samdrop-read") as readers,
            ThreadPoolExecutor(threads, thread_name_prefix="samdrop-write") as writers,
        ):
            batch: list[Loaded] = []
            for loaded in _prefetch(readers, self._load, items, window=2 * batch_size + threads):
                if loaded.image is None:
                    lines.append(writers.submit(self._finish_unreadable, loaded))
                    continue
                batch.append(loaded)
                if len(batch) == batch_size:
                    lines.extend(self._compute(batch, writers))
                    batch = []
                    _throttle(lines, limit=2 * batch_size + threads)
            if batch:
                lines.extend(self._compute(batch, writers))
            results = [future.result() for future in lines]
        results.sort(key=lambda line: line["_order"])  # writes finish out of order; the manifest is not
        for line in results:
            del line["_order"]
        totals = {key: round(value, 1) for key, value in self.totals.items()}
        return ShardResult(results, {**totals, "wall": _ms(self.clock() - started)})

    # -- I/O stage -----------------------------------------------------------------------------

    def _load(self, item: PlanItem, order: int) -> Loaded:
        loaded = Loaded(item, output_paths(self.settings, item.name))
        loaded.timings_ms["order"] = order
        t0 = self.clock()
        try:
            loaded.listing = self.store.list(loaded.out.bucket, loaded.out.folder)
            loaded.line = self._finished_before(loaded)
        except SamdropError as exc:  # the outputs, not the input, could not be read: try again next run
            loaded.error = TransientError(
                f"checking earlier outputs of {self._uri(item)} failed: {exc.message}"
            )
            return loaded
        try:
            if loaded.line is None and item.error is None:
                data = self.store.read(self.paths.bucket, item.name, generation=item.generation)
                t1 = self.clock()
                loaded.image = decode_image(
                    data, max_pixels=self.settings.max_image_pixels, name=self._uri(item)
                )
                loaded.prompts = self._prompts(item, loaded.image)
                t2 = self.clock()
                loaded.timings_ms.update(read=_ms(t1 - t0), decode=_ms(t2 - t1))
                self._add("read", t1 - t0)
                self._add("decode", t2 - t1)
        except SamdropError as exc:
            loaded.image, loaded.error = None, exc
        except Exception as exc:  # one image's surprise must not end the shard
            loaded.image, loaded.error = None, _internal(exc, self._uri(item))
        return loaded

    def _prompts(self, item: PlanItem, image: np.ndarray) -> Prompts | None:
        entry = item.prompts
        if not entry:
            return None
        multimask = entry.get("multimask", self.options.multimask)
        prompts = parse_prompts(entry.get("points"), entry.get("labels"), entry.get("boxes"), multimask)
        if prompts is not None:
            check_prompts_fit(prompts, image.shape[1], image.shape[0])
        return prompts

    def _finished_before(self, loaded: Loaded) -> dict[str, Any] | None:
        """The manifest line of an earlier run's record for this generation, or None to compute."""
        item, out = loaded.item, loaded.out
        newer = [
            info.name
            for info in loaded.listing.values()
            if (input_generation(info.metadata) or 0) > item.generation
        ]
        if newer:
            error = {
                "code": "superseded",
                "message": (
                    f"outputs of a newer upload of {self._file(item)} exist ({min(newer)}); left as they are"
                ),
            }
            return self._failed(loaded, error, error_uri=None, resumed=True)
        for name in (out.masks_json, out.error_json):
            info = loaded.listing.get(name)
            if info is None or input_generation(info.metadata) != item.generation:
                continue
            doc = json.loads(self.store.read(out.bucket, name, generation=info.generation))
            if name == out.masks_json:
                return self._succeeded(loaded, doc, resumed=True)
            return self._failed(loaded, doc, error_uri=out.uri(name), resumed=True)
        return None

    # -- compute stage -------------------------------------------------------------------------

    def _compute(self, batch: list[Loaded], writers: ThreadPoolExecutor) -> list[Future[dict[str, Any]]]:
        started = self.clock()
        results = self._run_engine(batch)
        elapsed = self.clock() - started
        self._add("compute", elapsed)
        futures = []
        for loaded, result in zip(batch, results, strict=True):
            loaded.timings_ms["compute"] = _ms(elapsed / len(batch))
            if isinstance(result, SamdropError):
                loaded.image, loaded.error = None, result
                futures.append(writers.submit(self._finish_unreadable, loaded))
            else:
                futures.append(writers.submit(self._write_masks, loaded, result))
        return futures

    def _run_engine(self, batch: list[Loaded]) -> list[MaskSet | SamdropError]:
        jobs = [Job(loaded.image, loaded.prompts, self.options.amg) for loaded in batch]  # type: ignore[arg-type]
        try:
            return list(self.engine.run(jobs))
        except Exception:
            if len(batch) == 1:
                return [_internal_now(self._uri(batch[0].item))]
        # One image broke the batch: run each alone so only that one fails.
        return [self._run_engine([loaded])[0] for loaded in batch]

    # -- write stage ---------------------------------------------------------------------------

    def _write_masks(self, loaded: Loaded, result: MaskSet) -> dict[str, Any]:
        started = self.clock()
        item, out, listing = loaded.item, loaded.out, loaded.listing
        assert loaded.image is not None
        try:
            preview_size = _preview_size(result.width, result.height)
            previews = []
            for index, mask in enumerate(result.masks):
                binary = rle_to_mask(mask["segmentation"])
                self._write(out, out.mask(index), mask_to_png(binary), "image/png", listing, item.generation)
                previews.append(_resize_mask(binary, preview_size))
            note = RANDOM_WEIGHTS_NOTE if self.model.get("random_weights") else None
            preview = _resize_image(loaded.image, preview_size)
            overlay = overlay_jpeg(preview, previews, max_side=None, note=note)
            self._write(out, out.overlay, overlay, "image/jpeg", listing, item.generation)
            doc = masks_document(
                input_uri=self._uri(item),
                generation=item.generation,
                batch_id=self.paths.batch_id,
                width=result.width,
                height=result.height,
                prompts=item.prompts,
                amg=self.options.amg,
                masks=result.masks,
                model=self.model,
                predictor_timings_ms=result.timings_ms,
                paths=out,
            )
            write_ms = _ms(self.clock() - started)
            doc["timings_ms"] = {**_without_order(loaded.timings_ms), "write": write_ms}
            self._write_json(out, out.masks_json, doc, listing, item.generation)
        except (TransientError, WriteConflict) as exc:
            return self._failed(loaded, exc.to_dict(), error_uri=None, resumed=False)
        except Exception as exc:  # not recorded as error.json: the next run tries this image again
            return self._failed(
                loaded, _internal(exc, self._uri(item)).to_dict(), error_uri=None, resumed=False
            )
        finally:
            self._add("write", self.clock() - started)
        loaded.timings_ms["write"] = _ms(self.clock() - started)
        self._remove_older(
            loaded, keep={out.mask(i) for i in range(len(result.masks))} | {out.overlay, out.masks_json}
        )
        return self._succeeded(loaded, doc, resumed=False)

    def _finish_unreadable(self, loaded: Loaded) -> dict[str, Any]:
        """Write ``error.json`` for a permanent error (the input's fault); only report any other
        (storage unavailable, access denied, a write race), so the next run tries the image again."""
        if loaded.line is not None:
            return {**loaded.line, "_order": loaded.timings_ms["order"]}
        item, out = loaded.item, loaded.out
        if loaded.error is not None and not isinstance(loaded.error, PermanentError):
            return self._failed(loaded, loaded.error.to_dict(), error_uri=None, resumed=False)
        error = loaded.error.to_dict() if loaded.error is not None else dict(item.error or {})
        if not error:
            error = {"code": "internal", "message": "no result was produced"}
        started = self.clock()
        try:
            doc = error_document(error, self._uri(item), item.generation)
            self._write_json(out, out.error_json, doc, loaded.listing, item.generation)
        except (TransientError, WriteConflict) as exc:
            return self._failed(loaded, exc.to_dict(), error_uri=None, resumed=False)
        finally:
            self._add("write", self.clock() - started)
        loaded.timings_ms["write"] = _ms(self.clock() - started)
        self._remove_older(loaded, keep={out.error_json})
        return self._failed(loaded, error, error_uri=out.uri(out.error_json), resumed=False)

    def _write(
        self,
        out: OutputPaths,
        name: str,
        data: bytes,
        content_type: str,
        listing: Mapping[str, ObjectInfo],
        generation: int,
    ) -> None:
        write_output(
            self.store, out.bucket, name, data, content_type, seen=listing.get(name), generation=generation
        )

    def _write_json(
        self,
        out: OutputPaths,
        name: str,
        doc: Mapping[str, Any],
        listing: Mapping[str, ObjectInfo],
        generation: int,
    ) -> None:
        self._write(out, name, json_record(doc), "application/json", listing, generation)

    def _remove_older(self, loaded: Loaded, *, keep: set[str]) -> None:
        """Best effort: outputs of an older input generation that this run did not replace."""
        for info in loaded.listing.values():
            generation = input_generation(info.metadata)
            if info.name in keep or generation is None or generation >= loaded.item.generation:
                continue
            try:
                self.store.delete(loaded.out.bucket, info.name, if_generation_match=info.generation)
            except SamdropError as exc:
                log.warning("could not remove outdated output %s: %s", info.name, exc.message)

    # -- manifest lines ------------------------------------------------------------------------

    def _succeeded(self, loaded: Loaded, doc: Mapping[str, Any], *, resumed: bool) -> dict[str, Any]:
        line = succeeded_line(
            doc,
            file=self._file(loaded.item),
            shard=self.shard,
            resumed=resumed,
            timings_ms=self._timings(loaded),
        )
        return {**line, "_order": loaded.timings_ms.get("order", 0)}

    def _failed(
        self, loaded: Loaded, error: Mapping[str, str], *, error_uri: str | None, resumed: bool
    ) -> dict[str, Any]:
        item = loaded.item
        line = failed_line(
            error,
            input_uri=self._uri(item),
            file=self._file(item),
            generation=item.generation,
            shard=self.shard,
            resumed=resumed,
            error_uri=error_uri,
            timings_ms=self._timings(loaded),
        )
        return {**line, "_order": loaded.timings_ms.get("order", 0)}

    def _timings(self, loaded: Loaded) -> dict[str, float]:
        timings = _without_order(loaded.timings_ms)
        timings["finished"] = round(time.time(), 3)  # wall clock: the report plots images/s over the run
        return timings

    def _uri(self, item: PlanItem) -> str:
        return self.paths.input(item.name)

    def _file(self, item: PlanItem) -> str:
        return self.paths.relative(item.name)


def _prefetch(
    pool: ThreadPoolExecutor, load: Callable[[T, int], R], items: Iterable[T], *, window: int
) -> Iterator[R]:
    """``load(item, index)`` on ``pool``, results in order, at most ``window`` in flight (bounded memory)."""
    pending: deque[Future[R]] = deque()
    for index, item in enumerate(items):
        pending.append(pool.submit(load, item, index))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _throttle(futures: list[Future[Any]], *, limit: int) -> None:
    """Wait for the oldest writes while more than ``limit`` are outstanding (bounded memory)."""
    outstanding = [f for f in futures if not f.done()]
    for future in outstanding[: max(0, len(outstanding) - limit)]:
        future.result()


def _internal(exc: Exception, uri: str) -> PermanentError:
    log.error("unexpected error on %s; recorded as a permanent failure\n%s", uri, traceback.format_exc())
    return PermanentError(f"internal error on {uri} ({type(exc).__name__}: {exc})", code="internal")


def _internal_now(uri: str) -> PermanentError:
    log.error("the engine failed on %s; recorded as a permanent failure\n%s", uri, traceback.format_exc())
    return PermanentError(f"the model failed on {uri}; see the shard task's log", code="internal")


def _preview_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, PREVIEW_SIDE / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if size == (mask.shape[1], mask.shape[0]):
        return mask
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST), dtype=bool)


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if size == (image.shape[1], image.shape[0]):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _without_order(timings: Mapping[str, float]) -> dict[str, float]:
    return {key: value for key, value in timings.items() if key != "order"}


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)
