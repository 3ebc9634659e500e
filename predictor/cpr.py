"""The Vertex AI custom prediction routine (CPR): ``load``/``preprocess``/``predict``/``postprocess``.

Each step is a plain method, testable without HTTP. A bad instance becomes
``{"error": {"code", "message"}}`` in its slot and never fails its neighbours.
"""

from __future__ import annotations

import base64
import io
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
from predictor.instances import Instance, check_prompts_fit, parse_instance
from predictor.polygons import with_exports
from predictor.tiling import resolve_tiling, run_jobs
from samdrop.documents import FailedPrediction, Prediction, Rle, masks_of
from samdrop.errors import ConfigError, InputNotFound, InvalidRequest, SamdropError, TransientError
from samdrop.images import decode_image
from samdrop.masks import mask_to_png, rle_to_mask
from samdrop.settings import Settings

ReadObject = Callable[[str], bytes]


@dataclass
class Slot:
    """One instance on its way through the routine: either ``error`` or the later fields are set."""

    index: int
    file_path: str | None = None
    instance: Instance | None = None
    image: np.ndarray | None = None
    result: MaskSet | None = None
    error: SamdropError | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    requests_batched: int = 1  # requests whose images ran through the model together with this one


class SamRoutine(Predictor):
    """SAM behind Vertex AI's ``:predict`` contract: the custom prediction routine's ``Predictor``
    (see docs/design.md "Predictor request and response")."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # aiplatform's Predictor is unannotated
        self.engine: Engine | None = None
        self.settings: Settings | None = None
        self._read_object: ReadObject | None = None
        self._pool: ThreadPoolExecutor | None = None

    def load(self, artifacts_uri: str | None, **kwargs: Any) -> None:
        """Load the model once. ``artifacts_uri`` is ``AIP_STORAGE_URI``: a folder holding the
        checkpoint, used when ``SAMDROP_CHECKPOINT`` is not set. Settings come from the environment
        here, at the edge."""
        overrides: dict[str, Any] = {}
        env = kwargs.get("env", os.environ)
        if (
            artifacts_uri
            and not env.get("SAMDROP_CHECKPOINT")
            and env.get("SAMDROP_MODEL_TYPE", "tiny") not in ("tiny", "classic")
        ):
            overrides["checkpoint"] = artifacts_uri
        settings = Settings.from_env(env, **overrides)
        self.setup(settings, load_engine(settings), kwargs.get("read_object"))

    def setup(self, settings: Settings, engine: Engine, read_object: ReadObject | None = None) -> None:
        """Wire an already built engine (tests and the pipeline use this instead of ``load``)."""
        self.settings = settings
        self.engine = engine
        self._read_object = read_object
        self._pool = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="samdrop-io")

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
        slots = [Slot(i) for i in range(len(prediction_input["instances"]))]
        for slot, raw in zip(slots, prediction_input["instances"], strict=True):
            if isinstance(raw, dict) and isinstance(raw.get("file_path"), str):
                slot.file_path = raw["file_path"]
            try:
                slot.instance = parse_instance(raw, parameters)
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
        try:
            data = (
                instance.image_bytes
                if instance.image_bytes is not None
                else self._read(instance.gcs_uri or "")
            )
            slot.image = decode_image(data, max_pixels=self.settings.max_image_pixels, name=name)
            if instance.prompts is not None:
                check_prompts_fit(instance.prompts, slot.image.shape[1], slot.image.shape[0])
        except SamdropError as exc:
            slot.error = exc
        except Exception as exc:  # an unexpected read failure stays in this slot; a retry may pass
            slot.error = TransientError(f"reading {name} failed: {type(exc).__name__}: {exc}")
        slot.timings_ms["read_decode"] = round((time.perf_counter() - started) * 1000, 2)

    def _read(self, uri: str) -> bytes:
        if self._read_object is None:
            self._read_object = gcs_reader(self.settings.project if self.settings else None)
        return self._read_object(uri)

    def predict(self, instances: list[Slot]) -> list[Slot]:
        """Run the engine over every slot that decoded, batched."""
        assert self.engine is not None, "load() first"
        ready = [s for s in instances if s.error is None and s.image is not None and s.instance is not None]
        if ready:
            jobs = [
                Job(s.image, s.instance.prompts, s.instance.amg, s.instance.return_logits)  # type: ignore[arg-type, union-attr]
                for s in ready
            ]
            assert self.settings is not None
            tilings = [
                resolve_tiling(s.instance.tiling, s.image.shape[1], s.image.shape[0], self.settings)  # type: ignore[union-attr]
                for s in ready
            ]
            for slot, result in zip(ready, run_jobs(self.engine, jobs, tilings), strict=True):
                slot.result = result
        return instances

    def postprocess(self, prediction_results: list[Slot]) -> dict[str, Any]:
        """``{"predictions": [...]}``, one per instance, in order (:mod:`samdrop.documents`)."""
        assert self.engine is not None
        return {"predictions": [self._prediction(slot).to_json() for slot in prediction_results]}

    def _prediction(self, slot: Slot) -> Prediction | FailedPrediction:
        if slot.error is not None or slot.result is None or slot.instance is None:
            error = slot.error or SamdropError("no result was produced")
            return FailedPrediction(error.to_json(), slot.file_path)
        assert self.engine is not None
        result, instance = slot.result, slot.instance
        masks = with_exports(
            masks_of(result.masks), labels=instance.label, polygons="polygons" in instance.outputs
        )
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
            amg=instance.amg if instance.prompts is None else None,
            model=result.model_record(self.engine.description, slot.requests_batched),
            timings_ms=_timings(slot.timings_ms, result.timings_ms),
            logits=logits,
            tiling=result.tiling,
        )


def gcs_reader(project: str | None) -> ReadObject:
    """Read ``gs://`` objects through google-cloud-storage (honours ``STORAGE_EMULATOR_HOST``)."""
    import google.cloud.storage as storage
    from google.api_core import exceptions

    try:
        client = storage.Client(project=project)
    except Exception as exc:  # no credentials, no project: the server's setup, not the input
        raise ConfigError(f"the predictor cannot reach Cloud Storage to read gcs_uri images: {exc}") from None

    def read(uri: str) -> bytes:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        try:
            data: bytes = client.bucket(bucket).blob(name).download_as_bytes(timeout=60)
            return data
        except exceptions.NotFound:
            raise InputNotFound(f"{uri} does not exist (or this service account cannot read it)") from None
        except exceptions.Forbidden as exc:
            raise InputNotFound(f"{uri} cannot be read: {exc.message}") from None
        except (exceptions.ServerError, exceptions.TooManyRequests, TimeoutError, ConnectionError) as exc:
            raise TransientError(f"reading {uri} failed, retry later: {exc}") from None

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
