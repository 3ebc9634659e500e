"""The SAM engine: one model per process, batched encoder, prompt and automatic masks.

Two paths sit behind one interface (``fast``):

* reference — what segment-anything's own ``SamPredictor`` does: ``set_image`` per image, then one
  ``predict`` per prompt, fp32, the original attention;
* fast — images go through the encoder in batches of ``batch_size``, attention uses SDPA, CUDA runs
  under bf16 autocast, and every prompt of an image goes through the decoder in one call.

Both share an LRU cache of image embeddings keyed by a hash of the image content, so re-prompting
an image (or the full-image crop of automatic masks) skips the encoder.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.amg import calculate_stability_score

from predictor.automatic import FastMaskGenerator
from predictor.fast import enable_sdpa
from predictor.instances import AMG_DEFAULTS, Prompts
from predictor.registry import load_sam
from samdrop.masks import mask_box, mask_to_rle
from samdrop.settings import Settings


@dataclass(frozen=True)
class Embedding:
    """Encoder output for one image.

    features: ``1x256x64x64`` on the engine's device (bf16 under the fast CUDA path);
    input_size: (H, W) after resizing the long side to 1024, before padding;
    original_size: (H, W) of the image as given.
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


@dataclass
class MaskSet:
    """Masks for one image, JSON-ready.

    masks: one dict per mask — ``segmentation`` (COCO RLE of the ``HxW`` mask at the input's size),
    ``score`` (predicted IoU), ``stability_score``, ``box`` (XYXY pixels, inclusive), ``area``
    (pixels), and ``prompt_index`` (prompt mode) or ``point_coords`` (automatic mode).
    logits: ``Nx256x256 float32`` low-resolution logits, only when asked for (prompt mode).
    """

    masks: list[dict[str, Any]]
    width: int
    height: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    logits: np.ndarray | None = None


@dataclass(frozen=True)
class Job:
    """One image to segment: prompts, or automatic masks with ``amg`` parameters."""

    image: np.ndarray  # HxWx3 uint8 RGB
    prompts: Prompts | None = None
    amg: dict[str, Any] = field(default_factory=dict)
    return_logits: bool = False


def pick_device(preference: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        from samdrop.errors import ConfigError

        raise ConfigError("SAMDROP_DEVICE=cuda but no CUDA device is visible: use auto or cpu")
    return torch.device(preference)


class SamEngine:
    """Loads SAM once and serves prompt and automatic masks, batched. Thread-safe (one job at a time)."""

    def __init__(
        self,
        model: Sam,
        model_type: str,
        *,
        fast: bool = True,
        batch_size: int = 4,
        points_per_batch: int = 64,
        cache_size: int = 16,
        max_masks: int = 256,
        random_weights: bool = False,
    ) -> None:
        self.model = model.eval()
        self.model_type = model_type
        self.fast = fast
        self.batch_size = batch_size
        self.points_per_batch = points_per_batch
        self.max_masks = max_masks
        self.random_weights = random_weights
        self.device = next(model.parameters()).device
        if fast:
            enable_sdpa(self.model)
        self._predictor = _EmbeddingPredictor(self)
        self._cache: OrderedDict[str, Embedding] = OrderedDict()
        self._cache_size = cache_size
        self._pinned: dict[str, Embedding] = {}
        self._lock = threading.RLock()
        self.cache_hits = 0
        self.cache_misses = 0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SamEngine:
        """Load ``settings.model_type`` from ``settings.checkpoint`` onto the chosen device."""
        device = pick_device(settings.device)
        model = load_sam(settings.model_type, settings.checkpoint, settings.cache_dir, device)
        options: dict[str, Any] = {
            "fast": settings.fast_path,
            "batch_size": settings.batch_size,
            "points_per_batch": settings.points_per_batch,
            "cache_size": settings.embedding_cache_size,
            "max_masks": settings.max_masks,
            "random_weights": settings.model_type == "tiny",
        }
        return cls(model, settings.model_type, **{**options, **overrides})

    @property
    def description(self) -> dict[str, Any]:
        """What produced the masks, for responses and ``masks.json``."""
        info: dict[str, Any] = {
            "type": self.model_type,
            "device": str(self.device),
            "fast_path": self.fast,
            "precision": "bf16" if self._autocast_enabled else "fp32",
            "random_weights": self.random_weights,
        }
        if self.random_weights:
            info["note"] = "tiny model with random weights: the masks are meaningless (pipeline testing only)"
        return info

    # -- encoder -----------------------------------------------------------------------------

    def embed(self, images: Sequence[np.ndarray]) -> list[Embedding]:
        """Embeddings for ``HxWx3 uint8`` RGB images, from the cache or the encoder (batched)."""
        return [embedding for _, embedding in self._embed_keyed(images)]

    def _embed_keyed(
        self, images: Sequence[np.ndarray], *, count: bool = True
    ) -> list[tuple[str, Embedding]]:
        with self._lock:
            keys = [image_key(image) for image in images]
            found: dict[str, Embedding] = {}
            missing: dict[str, np.ndarray] = {}
            for key, image in zip(keys, images, strict=True):
                hit = self._lookup(key)
                if hit is not None:
                    found[key] = hit
                else:
                    missing.setdefault(key, image)
            if count:
                self.cache_hits += len(images) - len(missing)
                self.cache_misses += len(missing)
            missing_keys = list(missing)
            step = self.batch_size if self.fast else 1
            for start in range(0, len(missing_keys), step):
                chunk = missing_keys[start : start + step]
                for key, embedding in zip(chunk, self._encode([missing[k] for k in chunk]), strict=True):
                    found[key] = embedding
                    self._remember(key, embedding)
            return [(key, found[key]) for key in keys]

    @torch.inference_mode()
    def _encode(self, images: Sequence[np.ndarray]) -> list[Embedding]:
        if not self.fast:  # exactly segment-anything's set_image
            out = []
            for image in images:
                self._predictor.reference_set_image(image)
                assert self._predictor.features is not None
                out.append(
                    Embedding(
                        self._predictor.features, self._predictor.input_size, self._predictor.original_size
                    )
                )
            return out
        transform = self._predictor.transform
        batch, sizes = [], []
        for image in images:
            resized = torch.as_tensor(transform.apply_image(image), device=self.device)
            resized = resized.permute(2, 0, 1).contiguous()[None]
            sizes.append((tuple(resized.shape[-2:]), tuple(image.shape[:2])))
            batch.append(self.model.preprocess(resized))
        with self._autocast():
            features = self.model.image_encoder(torch.cat(batch))
        return [
            Embedding(features[i : i + 1], input_size, original)  # type: ignore[arg-type]
            for i, (input_size, original) in enumerate(sizes)
        ]

    def _lookup(self, key: str) -> Embedding | None:
        if key in self._pinned:
            return self._pinned[key]
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
        return hit

    def _remember(self, key: str, embedding: Embedding) -> None:
        if self._cache_size <= 0:
            return
        self._cache[key] = embedding
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._pinned.clear()

    # -- jobs --------------------------------------------------------------------------------

    def run(self, jobs: Sequence[Job]) -> list[MaskSet]:
        """Segment every job: one encoder pass per ``batch_size`` images, then each job's masks."""
        with self._lock:
            started = time.perf_counter()
            keyed = self._embed_keyed([job.image for job in jobs])
            encode_ms = (time.perf_counter() - started) * 1000 / max(len(jobs), 1)
            # Pinned for this run, so a cache smaller than the batch cannot evict them before use.
            self._pinned = dict(keyed)
            embeddings = [embedding for _, embedding in keyed]
            try:
                results = []
                for job, embedding in zip(jobs, embeddings, strict=True):
                    if job.prompts is not None:
                        result = self.segment(
                            job.image, job.prompts, embedding, return_logits=job.return_logits
                        )
                    else:
                        result = self.generate(job.image, job.amg)
                    result.timings_ms["encoder"] = round(encode_ms, 2)
                    results.append(result)
                return results
            finally:
                self._pinned.clear()

    @torch.inference_mode()
    def segment(
        self,
        image: np.ndarray,
        prompts: Prompts,
        embedding: Embedding | None = None,
        *,
        return_logits: bool = False,
    ) -> MaskSet:
        """Masks for ``prompts`` (pixel coordinates of ``image``); one decoder call for all prompts."""
        with self._lock:
            embedding = embedding or self.embed([image])[0]
            started = time.perf_counter()
            self._predictor.use(embedding)
            multimask = prompts.wants_multimask
            if self.fast:
                masks, scores, logits = self._decode_all(prompts, multimask)
            else:
                masks, scores, logits = self._decode_each(prompts, multimask)
            decode_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            threshold = self.model.mask_threshold
            stability = calculate_stability_score(logits.float(), threshold, 1.0).cpu().numpy()
            binary = (masks > threshold).cpu().numpy()
            scores_np = scores.float().cpu().numpy()
            prompt_count, per_prompt = binary.shape[:2]
            records = []
            for p in range(prompt_count):
                for m in range(per_prompt):
                    mask = binary[p, m]
                    records.append(
                        {
                            "segmentation": mask_to_rle(mask),
                            "score": round(float(scores_np[p, m]), 5),
                            "stability_score": round(float(stability[p, m]), 5),
                            "box": mask_box(mask),
                            "area": int(mask.sum()),
                            "prompt_index": p,
                        }
                    )
            result = MaskSet(records, width=image.shape[1], height=image.shape[0])
            if return_logits:
                result.logits = logits.float().cpu().numpy().reshape(-1, *logits.shape[-2:])
            result.timings_ms.update(
                decoder=round(decode_ms, 2), postprocess=round((time.perf_counter() - started) * 1000, 2)
            )
            return result

    def _decode_all(
        self, prompts: Prompts, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All prompts in one ``predict_torch`` call.

        Returns mask logits ``PxMxHxW``, scores ``PxM`` and low-res logits ``PxMx256x256``.
        """
        predictor = self._predictor
        original = predictor.original_size
        count = prompts.count
        coords = labels = boxes = None
        if prompts.points is not None and prompts.labels is not None:
            points = predictor.transform.apply_coords(prompts.points, original)
            coords = torch.as_tensor(points, dtype=torch.float, device=self.device)[None].expand(
                count, -1, -1
            )
            labels = torch.as_tensor(prompts.labels, dtype=torch.int, device=self.device)[None].expand(
                count, -1
            )
        if prompts.boxes is not None:
            boxes = torch.as_tensor(
                predictor.transform.apply_boxes(prompts.boxes, original),
                dtype=torch.float,
                device=self.device,
            )
        with self._autocast():
            masks, scores, low_res = predictor.predict_torch(
                coords, labels, boxes, multimask_output=multimask, return_logits=True
            )
        return masks, scores, low_res

    def _decode_each(
        self, prompts: Prompts, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reference: one ``SamPredictor.predict`` per prompt, as segment-anything's examples do."""
        results = []
        boxes: list[np.ndarray | None] = list(prompts.boxes) if prompts.boxes is not None else [None]
        for box in boxes:
            masks, scores, low_res = self._predictor.predict(
                prompts.points, prompts.labels, box, multimask_output=multimask, return_logits=True
            )
            results.append((torch.as_tensor(masks), torch.as_tensor(scores), torch.as_tensor(low_res)))
        return tuple(torch.stack([r[i] for r in results]) for i in range(3))  # type: ignore[return-value]

    @torch.inference_mode()
    def generate(self, image: np.ndarray, amg: dict[str, Any] | None = None) -> MaskSet:
        """Automatic masks with ``SamAutomaticMaskGenerator`` parameters (see :data:`AMG_DEFAULTS`).

        The generator's ``set_image`` goes through the embedding cache, so a batch encoded by
        :meth:`run` is not encoded again.
        """
        with self._lock:
            params = {**AMG_DEFAULTS, **(amg or {})}
            max_masks = min(params.pop("max_masks") or self.max_masks, self.max_masks)
            params["points_per_batch"] = params["points_per_batch"] or self.points_per_batch
            generator_class = FastMaskGenerator if self.fast else SamAutomaticMaskGenerator
            generator = generator_class(self.model, output_mode="coco_rle", **params)
            generator.predictor = self._predictor
            started = time.perf_counter()
            with self._autocast():
                raw = generator.generate(image)
            raw.sort(key=lambda m: m["predicted_iou"], reverse=True)
            records = []
            for mask in raw[:max_masks]:
                x, y, w, h = (round(v) for v in mask["bbox"])
                rle = mask["segmentation"]
                records.append(
                    {
                        "segmentation": {"size": list(rle["size"]), "counts": _text(rle["counts"])},
                        "score": round(float(mask["predicted_iou"]), 5),
                        "stability_score": round(float(mask["stability_score"]), 5),
                        "box": [x, y, x + w, y + h],  # the generator's XYWH has w = x1 - x0
                        "area": int(mask["area"]),
                        "point_coords": [[round(float(c), 2) for c in p] for p in mask["point_coords"]],
                    }
                )
            result = MaskSet(records, width=image.shape[1], height=image.shape[0])
            result.timings_ms["automatic"] = round((time.perf_counter() - started) * 1000, 2)
            return result

    @property
    def _autocast_enabled(self) -> bool:
        return self.fast and self.device.type == "cuda"

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self._autocast_enabled:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                yield
        else:
            yield


class _EmbeddingPredictor(SamPredictor):
    """A ``SamPredictor`` whose ``set_image`` goes through the engine's embedding cache."""

    def __init__(self, engine: SamEngine) -> None:
        super().__init__(engine.model)
        self._engine = engine

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        # Called by the automatic mask generator: not counted as a cache hit or miss of the caller.
        self.use(self._engine._embed_keyed([image], count=False)[0][1])

    def reference_set_image(self, image: np.ndarray) -> None:
        super().set_image(image)

    def use(self, embedding: Embedding) -> None:
        self.reset_image()
        self.features = embedding.features
        self.input_size = embedding.input_size
        self.original_size = embedding.original_size
        self.is_image_set = True


def image_key(image: np.ndarray) -> str:
    """Content hash of an ``HxWx3 uint8`` image (shape included), the embedding-cache key."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def _text(counts: str | bytes) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else counts
