"""The Vertex AI custom prediction routine (CPR): ``load``/``preprocess``/``predict``/``postprocess``.

Each step is a plain method, testable without HTTP. A bad instance becomes
``{"error": {"code", "message"}}`` in its slot and never fails its neighbours: budgets
(:mod:`samdrop.budgets`) are checked per instance before its image is read, and when the model fails
on a group of images each is run again alone, so the failure lands only in its own slot.
"""

from __future__ import annotations

import base64
import collections
import io
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from google.cloud.aiplatform.prediction.predictor import Predictor

from predictor.backends import Engine, load_engine
from predictor.engine import Job, MaskSet
from predictor.instances import (
    Instance,
    check_model_takes,
    check_prompts_fit,
    parse_instance,
    tiled_logits_refused,
)
from predictor.metrics import PredictorMetrics
from predictor.polygons import with_exports
from predictor.tiling import Tiling, resolve_tiling, run_jobs
from samdrop import budgets
from samdrop.documents import FailedPrediction, Prediction, Rle
from samdrop.errors import (
    ConfigError,
    InputNotFound,
    InvalidRequest,
    PermanentError,
    SamdropError,
    as_samdrop_error,
)
from samdrop.images import decode_image
from samdrop.masks import mask_to_png, rle_to_mask
from samdrop.models import BY_NAME, amg_used
from samdrop.prompts import check_budget
from samdrop.settings import Settings
from samdrop.storage import GcsStore
from samdrop.tracing import configure as configure_traces

log = logging.getLogger(__name__)
# (gs:// URI, generation or None for the live object) -> the object's bytes.
ReadObject = Callable[[str, int | None], bytes]


@dataclass
class Slot:
    """One instance on its way through the routine: either ``error`` or the later fields are set."""

    index: int
    file_path: str | None = None
    instance: Instance | None = None
    image: np.ndarray | None = None
    tiling: Tiling | None = None  # how the image runs (resolved once it is decoded); None: whole
    result: MaskSet | None = None
    error: SamdropError | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    requests_batched: int = 1  # requests whose images ran through the model together with this one
    # Wall-clock (start, end) ns of the stages this slot ran on its own: read, decode,
    # encode_outputs (metrics and trace spans; the shared engine run is timed by its request).
    stages_ns: dict[str, tuple[int, int]] = field(default_factory=dict)
    model_ns: tuple[int, int] | None = None  # the engine run this image was part of


class SamRoutine(Predictor):
    """SAM behind Vertex AI's ``:predict`` contract: the custom prediction routine's ``Predictor``
    (see docs/design.md "Predictor request and response")."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # aiplatform's Predictor is unannotated
        self.engine: Engine | None = None
        self.settings: Settings | None = None
        self._read_object: ReadObject | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.metrics: PredictorMetrics | None = None

    def load(self, artifacts_uri: str | None, **kwargs: Any) -> None:
        """Load the model once. ``artifacts_uri`` is ``AIP_STORAGE_URI``: a folder holding the
        checkpoint, used when ``SAMDROP_CHECKPOINT`` is not set. Settings come from the environment
        here, at the edge."""
        overrides: dict[str, Any] = {}
        env = kwargs.get("env", os.environ)
        if (
            artifacts_uri
            and not env.get("SAMDROP_CHECKPOINT")
            and _takes_weights(env.get("SAMDROP_MODEL_TYPE", "tiny"))
        ):
            overrides["checkpoint"] = artifacts_uri
        settings = Settings.from_env(env, **overrides)
        configure_traces(settings.traces, "samdrop-predictor")
        self.setup(settings, load_engine(settings), kwargs.get("read_object"))

    def setup(self, settings: Settings, engine: Engine, read_object: ReadObject | None = None) -> None:
        """Wire an already built engine (tests and the pipeline use this instead of ``load``)."""
        self.settings = settings
        self.engine = engine
        self._read_object = read_object
        self._pool = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="samdrop-io")
        precision = str(engine.description.get("precision", "fp32"))
        self.metrics = PredictorMetrics(engine.model_type, precision, settings.batch_size)
        self.metrics.watch_cache(
            lambda: (getattr(engine, "cache_hits", 0), getattr(engine, "cache_misses", 0))
        )

    def preprocess(self, prediction_input: Any) -> list[Slot]:
        """Parse every instance and fetch + decode its image on the I/O pool."""
        if not isinstance(prediction_input, dict) or not isinstance(prediction_input.get("instances"), list):
            raise InvalidRequest('the request body must be {"instances": [...], "parameters": {...}}')
        parameters = prediction_input.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidRequest("parameters must be a JSON object")
        if (
            self.settings is not None
            and self.engine is not None
            and isinstance(parameters.get("amg", {}), dict)
        ):
            # This server's default grid (SAMDROP_AMG_POINTS_PER_SIDE, auto: what fits the device)
            # under what the request asks.
            grid = self.settings.amg_points_per_side or self.engine.auto_points_per_side
            amg = {"points_per_side": grid, **parameters.get("amg", {})}
            parameters = {**parameters, "amg": amg}
        assert self.settings is not None, "load() first"
        budgets.check_instances(len(prediction_input["instances"]), limit=self.settings.max_instances)
        slots = [Slot(i) for i in range(len(prediction_input["instances"]))]
        for slot, raw in zip(slots, prediction_input["instances"], strict=True):
            if isinstance(raw, dict) and isinstance(raw.get("file_path"), str):
                slot.file_path = raw["file_path"]
            try:
                slot.instance = parse_instance(raw, parameters, where=f"instances[{slot.index}]")
                if self.engine is not None:
                    check_model_takes(slot.instance.prompts, self.engine.model_type)
                check_budgets(slot.instance, self.settings)
            except SamdropError as exc:
                slot.error = exc
        assert self._pool is not None, "load() first"
        list(self._pool.map(self._load_image, [s for s in slots if s.error is None]))
        return slots

    def _load_image(self, slot: Slot) -> None:
        assert slot.instance is not None and self.settings is not None
        started = time.perf_counter()
        instance = slot.instance
        name = instance.gcs_uri or instance.file_path or f"instance {slot.index}"
        stage_start = time.time_ns()
        try:
            data = (
                instance.image_bytes
                if instance.image_bytes is not None
                else self._read(instance.gcs_uri or "", instance.generation)
            )
            slot.stages_ns["read"] = (stage_start, stage_start := time.time_ns())
            budgets.check_input_bytes(len(data), limit=self.settings.max_input_bytes, name=name)
            slot.image = decode_image(data, max_pixels=self.settings.max_image_pixels, name=name)
            height, width = slot.image.shape[:2]
            budgets.check_image_shape(
                width, height, max_aspect_ratio=self.settings.max_aspect_ratio, name=name
            )
            if instance.prompts is not None:
                check_prompts_fit(instance.prompts, slot.image.shape[1], slot.image.shape[0])
            slot.tiling = resolve_tiling(instance.tiling, width, height, self.settings)
            if instance.return_logits and slot.tiling is not None:
                above = self.settings.tile_above_pixels
                raise tiled_logits_refused(f"{width}x{height} is over SAMDROP_TILE_ABOVE_PIXELS={above}")
        except SamdropError as exc:
            slot.error = exc
        except Exception as exc:  # stays in this slot: an I/O failure is transient, a bug internal
            slot.error = as_samdrop_error(exc, where=f"reading {name}", log=log)
        slot.stages_ns["decode" if "read" in slot.stages_ns else "read"] = (stage_start, time.time_ns())
        slot.timings_ms["read_decode"] = round((time.perf_counter() - started) * 1000, 2)

    def _read(self, uri: str, generation: int | None) -> bytes:
        if self._read_object is None:
            assert self.settings is not None
            self._read_object = gcs_reader(self.settings)
        return self._read_object(uri, generation)

    def predict(self, instances: list[Slot]) -> list[Slot]:
        """Run the engine over every slot that decoded, batched. If the batched run fails, each
        image runs again alone and only the ones that fail alone get an error in their slot."""
        assert self.engine is not None, "load() first"
        ready = [s for s in instances if s.error is None and s.image is not None and s.instance is not None]
        if not ready:
            return instances
        started = time.time_ns()
        try:
            return self._predict(instances, ready)
        finally:
            ended = time.time_ns()
            for slot in ready:
                slot.model_ns = (started, ended)

    def _predict(self, instances: list[Slot], ready: list[Slot]) -> list[Slot]:
        assert self.engine is not None
        tilings = [s.tiling for s in ready]
        try:
            results = run_jobs(self.engine, [_job(s) for s in ready], tilings)
        except Exception as exc:
            if len(ready) == 1:
                ready[0].error = _model_error(exc, ready[0])
                return instances
            for slot, tiling in zip(ready, tilings, strict=True):
                try:
                    [slot.result] = run_jobs(self.engine, [_job(slot)], [tiling])
                except Exception as alone:
                    slot.error = _model_error(alone, slot)
            return instances
        for slot, result in zip(ready, results, strict=True):
            slot.result = result
        self._count_encoder_passes(results)
        return instances

    def _count_encoder_passes(self, results: list[MaskSet]) -> None:
        """Each image records the size of the encoder pass that embedded it (0: from the cache):
        ``n`` images that say ``b`` were ``n / b`` passes of ``b``."""
        if self.metrics is None:
            return
        sizes = collections.Counter(r.encoder_batch for r in results if r.encoder_batch > 0)
        for size, images in sizes.items():
            for _ in range(max(1, images // size)):
                self.metrics.encoder_pass(size)

    def postprocess(self, prediction_results: list[Slot]) -> dict[str, Any]:
        """``{"predictions": [...]}``, one per instance, in order (:mod:`samdrop.documents`)."""
        assert self.engine is not None
        predictions = []
        for slot in prediction_results:
            started = time.time_ns()
            try:
                answer = self._prediction(slot).to_json()
            except Exception as exc:  # this slot's answer only; its neighbours keep theirs
                answer = FailedPrediction(_model_error(exc, slot).to_json(), slot.file_path).to_json()
            slot.stages_ns["encode_outputs"] = (started, time.time_ns())
            self._observe(slot, answer)
            predictions.append(answer)
        return {"predictions": predictions}

    def _observe(self, slot: Slot, answer: dict[str, Any]) -> None:
        """One answered instance in the metrics: its outcome and where its time went."""
        if self.metrics is None:
            return
        error = answer.get("error")
        self.metrics.image(str(error.get("code")) if isinstance(error, dict) else None)
        for stage, (start, end) in slot.stages_ns.items():
            self.metrics.stage(stage, (end - start) / 1e9)
        if slot.result is not None:
            model_ms = slot.result.timings_ms
            encode_ms = model_ms.get("encoder", 0.0)
            self.metrics.stage("encode", encode_ms / 1000)
            self.metrics.stage("decode_masks", (sum(model_ms.values()) - encode_ms) / 1000)

    def _prediction(self, slot: Slot) -> Prediction | FailedPrediction:
        if slot.error is not None or slot.result is None or slot.instance is None:
            error = slot.error or SamdropError("no result was produced")
            return FailedPrediction(error.to_json(), slot.file_path)
        assert self.engine is not None
        result, instance = slot.result, slot.instance
        masks = with_exports(result.masks, labels=instance.label, polygons="polygons" in instance.outputs)
        if instance.mask_format == "png":
            masks = [replace(m, segmentation=_png_b64(m.rle)) for m in masks]
        logits = None
        if instance.return_logits and result.logits is not None:
            logits = [_array_b64(logit) for logit in result.logits]
        return Prediction(
            file_path=instance.file_path,
            width=result.width,
            height=result.height,
            masks=masks,
            mask_format=instance.mask_format,
            mode="prompted" if instance.prompts is not None else "automatic",
            prompts=instance.prompts.to_json() if instance.prompts is not None else None,
            amg=amg_used(instance.amg, self.engine.model_type) if instance.prompts is None else None,
            model=result.model_record(self.engine.description, slot.requests_batched),
            timings_ms=_timings(slot.timings_ms, result.timings_ms),
            logits=logits,
            tiling=result.tiling,
        )


def check_budgets(instance: Instance, settings: Settings) -> None:
    """Refuse an instance over a budget before its image is read (:mod:`samdrop.budgets`)."""
    prompts = instance.prompts
    check_budget(prompts.to_json() if prompts is not None else {"amg": instance.amg}, settings)


def _job(slot: Slot) -> Job:
    assert slot.image is not None and slot.instance is not None
    instance = slot.instance
    return Job(slot.image, instance.prompts, instance.amg, instance.return_logits)


def _model_error(exc: Exception, slot: Slot) -> SamdropError:
    """The error a slot records when the model failed on its image alone (the trace is logged)."""
    if isinstance(exc, SamdropError):
        return exc
    name = slot.file_path or f"instance {slot.index}"
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return PermanentError(
            f"{name} ran out of memory in the model: downscale the image or lower amg.points_per_batch "
            "(SAMDROP_DECODER_MEMORY_BYTES caps it)",
            code="image_too_large",
        )
    return as_samdrop_error(exc, where=f"running the model on {name}", log=log)


def gcs_reader(settings: Settings) -> ReadObject:
    """Read ``gs://`` objects through :class:`~samdrop.storage.GcsStore` (honours
    ``STORAGE_EMULATOR_HOST``; its one translation of storage errors, timeout and retry rule):
    exactly the generation asked for (None: the live one), refused above ``SAMDROP_MAX_INPUT_BYTES``
    before the download."""
    import google.cloud.storage as storage

    try:
        client = storage.Client(project=settings.project)
    except Exception as exc:  # no credentials, no project: the server's setup, not the input
        raise ConfigError(f"the predictor cannot reach Cloud Storage to read gcs_uri images: {exc}") from None
    store = GcsStore(client, timeout_s=settings.request_timeout_s)

    def read(uri: str, generation: int | None) -> bytes:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        info = store.stat(bucket, name, generation=generation)
        if info is None:
            which = f"{uri} generation {generation}" if generation is not None else uri
            raise InputNotFound(f"{which} does not exist (deleted or replaced by a newer upload)")
        budgets.check_input_bytes(info.size, limit=settings.max_input_bytes, name=uri)
        return store.read(bucket, name, generation=info.generation)  # the generation just stat'ed

    return read


def _png_b64(rle: Rle) -> str:
    return base64.b64encode(mask_to_png(rle_to_mask(rle))).decode("ascii")


def _array_b64(array: np.ndarray) -> dict[str, Any]:
    """A float array as ``{"shape", "dtype": "float16", "b64"}`` (little-endian .npy-free bytes)."""
    buffer = io.BytesIO(array.astype("<f2").tobytes())
    return {
        "shape": list(array.shape),
        "dtype": "float16",
        "b64": base64.b64encode(buffer.getvalue()).decode(),
    }


def _timings(io_ms: dict[str, float], model_ms: dict[str, float]) -> dict[str, float]:
    """Each stage's ms, plus ``model`` (encoder + decoder + postprocess / automatic masks, which
    do not overlap) and ``total`` (model + reading and decoding the image)."""
    model = round(sum(model_ms.values()), 2)
    return {**io_ms, **model_ms, "model": model, "total": round(model + sum(io_ms.values()), 2)}


def _takes_weights(model_type: str) -> bool:
    """Whether a checkpoint folder (``AIP_STORAGE_URI``) means anything to ``model_type`` (auto: yes)."""
    info = BY_NAME.get(model_type)
    return info is None or info.needs_weights
