"""Step 2 of a batch: segment one shard with the model loaded once.

Three stages overlap: an I/O pool lists each image's output folder, reads and decodes the image
(a bounded window ahead of the model); the calling thread runs the engine on batches of
``engine.batch_size``; a writer pool encodes and uploads PNGs, the overlay and ``masks.json``
(last: the commit) while the next batch computes.

What is particular to a batch: the masks come from the engine in this process, and the completion
is a manifest line. Per image, :mod:`samdrop.outputs` decides (a ``masks.json`` or ``error.json``
already written for this input generation means done: a re-run resumes, nothing is recomputed) and
writes; a permanent problem becomes ``error.json``; a transient one (storage unavailable, a write
race) is only reported, so the next run tries again.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from pipeline.listing import BatchOptions, PlanItem
from predictor import (
    Engine,
    Job,
    MaskSet,
    Prompts,
    Tiling,
    check_model_takes,
    check_prompts_fit,
    prompts_from,
    resolve_tiling,
    run_jobs,
    with_exports,
)
from samdrop import outputs
from samdrop.batches import BatchPaths
from samdrop.budgets import check_object_name
from samdrop.documents import (
    ErrorRecord,
    JsonObject,
    ManifestLine,
    MasksDocument,
    Prediction,
)
from samdrop.errors import (
    ErrorInfo,
    PermanentError,
    SamdropError,
    TransientError,
    as_samdrop_error,
    error_from_code,
)
from samdrop.images import decode_image
from samdrop.layout import OutputPaths, output_paths
from samdrop.models import amg_used
from samdrop.outputs import Step
from samdrop.prompts import check_amg
from samdrop.settings import Settings
from samdrop.storage import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Loaded:
    """One item after the I/O stage: either ``line`` (finished already), ``error`` or ``image`` is set."""

    item: PlanItem
    out: OutputPaths
    order: int
    listing: dict[str, ObjectInfo] = field(default_factory=dict)
    image: np.ndarray | None = None
    prompts: Prompts | None = None
    line: ManifestLine | None = None
    error: SamdropError | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    unnamed: bool = False  # its outputs' names would exceed Cloud Storage's limit: no error.json


@dataclass
class ShardResult:
    """``lines``: one manifest line (JSON) per item, in plan order; ``timings_ms``: sums over the
    shard (``read`` and ``decode`` on the I/O pool, ``compute`` engine wall time, ``write`` on the
    writer pool, ``wall`` for the whole shard)."""

    lines: list[JsonObject]
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
        # The parameters automatic masks run with, recorded in masks.json as the predictor records them
        # (the default grid as the predictor picks it: SAMDROP_AMG_POINTS_PER_SIDE, auto by device).
        grid = settings.amg_points_per_side or engine.auto_points_per_side
        self.amg = check_amg({"points_per_side": grid, **options.amg})
        self.totals: dict[str, float] = {"read": 0.0, "decode": 0.0, "compute": 0.0, "write": 0.0}
        self._totals_lock = threading.Lock()

    def _add(self, stage: str, seconds: float) -> None:
        with self._totals_lock:
            self.totals[stage] += seconds * 1000.0

    def run(self, items: Iterable[PlanItem]) -> ShardResult:
        started = self.clock()
        threads = max(1, self.settings.io_threads)
        batch_size = max(1, self.engine.batch_size)
        lines: list[Future[tuple[int, ManifestLine]]] = []
        with (
            ThreadPoolExecutor(threads, thread_name_prefix="samdrop-read") as readers,
            ThreadPoolExecutor(threads, thread_name_prefix="samdrop-write") as writers,
        ):
            batch: list[Loaded] = []
            for loaded in _prefetch(readers, self._load, items, window=2 * batch_size + threads):
                if loaded.image is None:
                    lines.append(writers.submit(self._finish_without_masks, loaded))
                    continue
                batch.append(loaded)
                if len(batch) == batch_size:
                    lines.extend(self._compute(batch, writers))
                    batch = []
                    _throttle(lines, limit=2 * batch_size + threads)
            if batch:
                lines.extend(self._compute(batch, writers))
            results = sorted(
                (f.result() for f in lines), key=lambda pair: pair[0]
            )  # writes finish out of order
        totals = {key: round(value, 1) for key, value in self.totals.items()}
        return ShardResult(
            [line.to_json() for _, line in results], {**totals, "wall": outputs.ms(self.clock() - started)}
        )

    # -- I/O stage -----------------------------------------------------------------------------

    def _load(self, item: PlanItem, order: int) -> Loaded:
        loaded = Loaded(item, output_paths(self.settings, item.name), order)
        settings = self.settings
        try:  # before any work, as for a single upload
            check_object_name(
                outputs.longest_name(loaded.out, settings.max_masks), limit=settings.max_object_name_bytes
            )
        except PermanentError as exc:
            loaded.error, loaded.unnamed = exc, True
            return loaded
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
                loaded.timings_ms.update(read=outputs.ms(t1 - t0), decode=outputs.ms(t2 - t1))
                self._add("read", t1 - t0)
                self._add("decode", t2 - t1)
        except SamdropError as exc:
            loaded.image, loaded.error = None, exc
        except Exception as exc:  # one image's surprise must not end the shard
            loaded.image, loaded.error = None, _internal(exc, self._uri(item))
        return loaded

    def _prompts(self, item: PlanItem, image: np.ndarray) -> Prompts | None:
        """The item's ``prompts.json`` entry, checked once by the listing step, as arrays."""
        prompts = prompts_from(self.options.prompts_for(item.prompts), multimask=self.options.multimask)
        check_model_takes(prompts, self.engine.model_type)
        if prompts is not None:
            check_prompts_fit(prompts, image.shape[1], image.shape[0])
        return prompts

    def _tiling(self, loaded: Loaded) -> Tiling | None:
        """The image's ``prompts.json`` entry's ``tiling``, else the ``_READY`` body's, else the size rule."""
        requested = (loaded.item.prompts or {}).get("tiling", self.options.tiling)
        height, width = _image(loaded).shape[:2]
        return resolve_tiling(requested, width, height, self.settings)

    def _finished_before(self, loaded: Loaded) -> ManifestLine | None:
        """The manifest line of an earlier run's record for this generation, or None to compute."""
        item, out = loaded.item, loaded.out
        decision = outputs.decide(loaded.listing, out, item.generation)
        if decision.step is Step.STALE:
            error = ErrorInfo(
                code="superseded",
                message=(
                    f"outputs of a newer upload of {self._file(item)} exist ({decision.newer}); "
                    "left as they are"
                ),
            )
            return self._failed(loaded, error, error_uri=None, resumed=True)
        if decision.record is None:
            return None
        record = outputs.read_record(self.store, out, decision.record)
        if isinstance(record, ErrorRecord):
            return self._failed(loaded, record.error, error_uri=out.uri(out.error_json), resumed=True)
        return self._succeeded(loaded, record, resumed=True)

    # -- compute stage -------------------------------------------------------------------------

    def _compute(
        self, batch: list[Loaded], writers: ThreadPoolExecutor
    ) -> list[Future[tuple[int, ManifestLine]]]:
        started = self.clock()
        results = self._run_engine(batch)
        elapsed = self.clock() - started
        self._add("compute", elapsed)
        futures = []
        for loaded, result in zip(batch, results, strict=True):
            loaded.timings_ms["compute"] = outputs.ms(elapsed / len(batch))
            if isinstance(result, SamdropError):
                loaded.image, loaded.error = None, result
                futures.append(writers.submit(self._finish_without_masks, loaded))
            else:
                futures.append(writers.submit(self._write_masks, loaded, result))
        return futures

    def _run_engine(self, batch: list[Loaded]) -> list[MaskSet | SamdropError]:
        jobs = [Job(_image(loaded), loaded.prompts, self.amg) for loaded in batch]
        tilings = [self._tiling(loaded) for loaded in batch]
        try:
            return list(run_jobs(self.engine, jobs, tilings))
        except Exception:
            if len(batch) == 1:
                return [_engine_failed(self._uri(batch[0].item))]
        # One image broke the batch: run each alone so only that one fails.
        return [self._run_engine([loaded])[0] for loaded in batch]

    # -- write stage ---------------------------------------------------------------------------

    def _write_masks(self, loaded: Loaded, result: MaskSet) -> tuple[int, ManifestLine]:
        started = self.clock()
        item = loaded.item
        try:
            doc = outputs.write_masks(
                self.store,
                loaded.out,
                loaded.listing,
                image=_image(loaded),
                prediction=self._prediction(loaded, result),
                input_uri=self._uri(item),
                generation=item.generation,
                batch_id=self.paths.batch_id,
                timings_ms=loaded.timings_ms,
                clock=self.clock,
            )
        except SamdropError as exc:  # not recorded as error.json: the next run tries this image again
            return self._failed_now(loaded, exc.to_json(), error_uri=None)
        except Exception as exc:
            return self._failed_now(loaded, _internal(exc, self._uri(item)).to_json(), error_uri=None)
        finally:
            self._add("write", self.clock() - started)
        loaded.timings_ms["write"] = outputs.ms(self.clock() - started)
        self._remove_older(loaded, doc)
        return loaded.order, self._succeeded(loaded, doc, resumed=False)

    def _prediction(self, loaded: Loaded, result: MaskSet) -> Prediction:
        """The engine's masks as the predictor would answer them."""
        prompts = loaded.prompts
        entry = loaded.item.prompts or {}
        wanted = {*entry.get("outputs", []), *self.options.outputs}
        masks = with_exports(result.masks, labels=entry.get("label"), polygons="polygons" in wanted)
        return Prediction(
            width=result.width,
            height=result.height,
            masks=masks,
            mode="prompted" if prompts is not None else "automatic",
            prompts=prompts.to_json() if prompts is not None else None,
            amg=None if prompts is not None else amg_used(self.amg, self.engine.model_type),
            model=result.model_record(self.model),  # a shard is one request: its own batches
            timings_ms=result.timings_ms,
            tiling=result.tiling,
        )

    def _finish_without_masks(self, loaded: Loaded) -> tuple[int, ManifestLine]:
        """Write ``error.json`` for a permanent error (the input's fault); only report any other
        (storage unavailable, access denied, a write race), so the next run tries the image again."""
        if loaded.line is not None:
            return loaded.order, loaded.line
        item = loaded.item
        error = loaded.error
        if error is None:
            known = item.error or ErrorInfo(code="internal", message="no result was produced")
            error = error_from_code(known["code"], known["message"])
        if not error.permanent or loaded.unnamed:
            return self._failed_now(loaded, error.to_json(), error_uri=None)
        started = self.clock()
        record = outputs.error_record(error, self._uri(item), item.generation)
        try:
            outputs.write_record(self.store, loaded.out, loaded.listing, record)
        except SamdropError as exc:
            return self._failed_now(loaded, exc.to_json(), error_uri=None)
        finally:
            self._add("write", self.clock() - started)
        loaded.timings_ms["write"] = outputs.ms(self.clock() - started)
        self._remove_older(loaded, record)
        return self._failed_now(loaded, record.error, error_uri=loaded.out.uri(loaded.out.error_json))

    def _remove_older(self, loaded: Loaded, record: MasksDocument | ErrorRecord) -> None:
        keep = outputs.written_names(loaded.out, record)
        outputs.remove_older_outputs(
            self.store, loaded.out, loaded.listing, loaded.item.generation, keep=keep
        )

    # -- manifest lines ------------------------------------------------------------------------

    def _succeeded(self, loaded: Loaded, doc: MasksDocument, *, resumed: bool) -> ManifestLine:
        return ManifestLine.succeeded(
            doc,
            file=self._file(loaded.item),
            shard=self.shard,
            resumed=resumed,
            timings_ms=self._timings(loaded),
        )

    def _failed(
        self, loaded: Loaded, error: ErrorInfo, *, error_uri: str | None, resumed: bool
    ) -> ManifestLine:
        item = loaded.item
        return ManifestLine.failed(
            error,
            input_uri=self._uri(item),
            file=self._file(item),
            generation=item.generation,
            shard=self.shard,
            resumed=resumed,
            error_uri=error_uri,
            timings_ms=self._timings(loaded),
        )

    def _failed_now(
        self, loaded: Loaded, error: ErrorInfo, *, error_uri: str | None
    ) -> tuple[int, ManifestLine]:
        return loaded.order, self._failed(loaded, error, error_uri=error_uri, resumed=False)

    def _timings(self, loaded: Loaded) -> dict[str, float]:
        # wall clock: the report plots images/s over the run
        return {**loaded.timings_ms, "finished": round(time.time(), 3)}

    def _uri(self, item: PlanItem) -> str:
        return self.paths.input(item.name)

    def _file(self, item: PlanItem) -> str:
        return self.paths.relative(item.name)


def _image(loaded: Loaded) -> np.ndarray:
    assert loaded.image is not None, "only items that decoded reach the engine"
    return loaded.image


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


def _internal(exc: Exception, uri: str) -> SamdropError:
    return as_samdrop_error(exc, where=f"processing {uri}", log=log)


def _engine_failed(uri: str) -> PermanentError:
    log.error("the engine failed on %s; recorded as a permanent failure\n%s", uri, traceback.format_exc())
    return PermanentError(f"the model failed on {uri}; see the shard task's log", code="internal")
