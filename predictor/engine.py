"""The SAM engine: one model per process, batched encoder, prompt and automatic masks.

Two paths sit behind one interface (``fast``):

* reference — what segment-anything's own ``SamPredictor`` does: ``set_image`` per image, then one
  ``predict`` per prompt, fp32, the original attention;
* fast — images go through the encoder in batches of ``batch_size``, attention uses SDPA, bf16 runs
  wherever the hardware has it (``precision``, see :mod:`predictor.hardware`), the decoder is
  :class:`~predictor.decoder.FastDecoder` (every prompt of an image in one call, the image's half
  once), and automatic masks use :class:`~predictor.automatic.FastMaskGenerator`, with the decoder
  compiled where that pays (``compile``).

Both share an LRU cache of image embeddings keyed by a hash of the image content, so re-prompting
an image (or the full-image crop of automatic masks) skips the encoder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.amg import calculate_stability_score

from predictor.automatic import FastMaskGenerator
from predictor.decoder import DecoderContext, FastDecoder
from predictor.embedding_engine import EmbeddingEngine, engine_options
from predictor.fast import enable_sdpa
from predictor.hardware import resolve_compile, resolve_precision, use_compile_cache
from predictor.instances import Prompts, refuse_sam2_options
from predictor.records import generator_record, prompt_record
from predictor.registry import load_sam
from samdrop.budgets import check_auto_points, points_per_batch_for
from samdrop.documents import MaskRecord, TilingRecord
from samdrop.models import amg_used
from samdrop.prompts import AMG_DEFAULTS
from samdrop.settings import Settings


@dataclass(frozen=True)
class Embedding:
    """Encoder output for one image.

    features: ``1x256x64x64`` on the engine's device (bf16 when the engine runs bf16);
    input_size: (H, W) after resizing the long side to 1024, before padding;
    original_size: (H, W) of the image as given.
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


@dataclass
class MaskSet:
    """Masks for one image.

    masks: one :class:`~samdrop.documents.MaskRecord` per mask — ``segmentation`` (COCO RLE of the
    ``HxW`` mask at the input's size), ``score`` (predicted IoU), ``stability_score``, ``box`` (XYXY
    pixels, inclusive), ``area`` (pixels), and ``prompt_index`` (prompt mode) or ``point_coords``
    (automatic mode).
    logits: ``Nx256x256 float32`` low-resolution logits, only when asked for (prompt mode).
    """

    masks: list[MaskRecord]
    width: int
    height: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    logits: np.ndarray | None = None
    # Automatic masks on the fast path: where the time went inside ``automatic`` (encoder, decoder,
    # masks) and how many candidates were decoded, upsampled and kept.
    stages_ms: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    encoder_batch: int = 0  # images in the encoder pass that embedded this one (0: from the cache)
    tiling: TilingRecord | None = None  # how a tiled image was cut (predictor/tiling.py), else None

    def model_record(self, description: dict[str, Any], requests_batched: int = 1) -> dict[str, Any]:
        """The ``model`` entry of a prediction and of ``masks.json``: the engine's ``description``
        plus how this image ran (its encoder pass, and how many requests shared the engine run)."""
        return {**description, "encoder_batch": self.encoder_batch, "requests_batched": requests_batched}


@dataclass(frozen=True)
class Job:
    """One image to segment: prompts, or automatic masks with ``amg`` parameters."""

    image: np.ndarray  # HxWx3 uint8 RGB
    prompts: Prompts | None = None
    amg: dict[str, Any] = field(default_factory=dict)
    return_logits: bool = False


# SAMDROP_AMG_POINTS_PER_SIDE=auto on a CPU (measured with tiny on 2 cores, docs/benchmarks.md).
CPU_GRID_COMPILED = 24
CPU_GRID_EAGER = 16


def pick_device(preference: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        from samdrop.errors import ConfigError

        raise ConfigError("SAMDROP_DEVICE=cuda but no CUDA device is visible: use auto or cpu")
    return torch.device(preference)


class SamEngine(EmbeddingEngine[Embedding]):
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
        precision: str = "fp32",
        compile: bool = False,
        max_points_per_batch: int = 256,
        decoder_memory_bytes: int | None = None,
        max_auto_points: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.model_type = model_type
        self.fast = fast
        self.precision = precision if fast else "fp32"
        self.compiled = compile and fast
        self.batch_size = batch_size
        self.points_per_batch = points_per_batch
        self.max_masks = max_masks
        # Budgets (samdrop/budgets.py): points_per_batch shrinks to what decoder memory holds for
        # the image at hand; grids over max_auto_points are refused.
        self.max_points_per_batch = max_points_per_batch
        self.decoder_memory_bytes = (
            decoder_memory_bytes or device_memory_bytes(next(model.parameters()).device) // 4
        )
        self.max_auto_points = max_auto_points
        self.random_weights = random_weights
        self.device = next(model.parameters()).device
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self._decoder = FastDecoder(self.model, dtype)
        self._decode_points = self._points_decoder()
        if fast:
            enable_sdpa(self.model)
        self._predictor = _EmbeddingPredictor(self)
        self._init_cache(cache_size)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SamEngine:
        """Load ``settings.model_type`` from ``settings.checkpoint`` onto the chosen device."""
        device = pick_device(settings.device)
        model = load_sam(settings.model_type, settings.checkpoint, settings.cache_dir, device)
        compile_decoder = resolve_compile(settings.compile, device)
        if compile_decoder:
            use_compile_cache(settings.cache_dir)
        options: dict[str, Any] = {
            **engine_options(settings),
            "precision": resolve_precision(settings.precision, device),
            "compile": compile_decoder,
            "fast": settings.fast_path,
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
            "precision": self.precision,
            "compiled": self.compiled,
            "random_weights": self.random_weights,
        }
        if self.random_weights:
            info["note"] = "tiny model with random weights: the masks are meaningless (pipeline testing only)"
        return info

    @property
    def auto_points_per_side(self) -> int:
        """The automatic-mask grid for ``SAMDROP_AMG_POINTS_PER_SIDE=auto``: SAM's 32 on a GPU; on a
        CPU the largest that keeps a ``tiny`` image near 10 s (``benchmarks/amg_bench.py --grid-sweep``)."""
        if self.device.type == "cuda":
            return 32
        return CPU_GRID_COMPILED if self.compiled else CPU_GRID_EAGER

    # -- encoder -----------------------------------------------------------------------------

    def _encoder_step(self) -> int:
        return self.batch_size if self.fast else 1  # the reference path embeds one image at a time

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
            records: list[MaskRecord] = []
            for p in range(prompt_count):
                for m in range(per_prompt):
                    mask = binary[p, m]
                    records.append(prompt_record(mask, scores_np[p, m], stability[p, m], p))
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
        """All prompts in one :class:`FastDecoder` call.

        Returns mask logits ``PxMxHxW``, scores ``PxM`` and low-res logits ``PxMx256x256``.
        """
        predictor = self._predictor
        original = predictor.original_size
        count = prompts.count
        points = boxes = None
        if prompts.points is not None and prompts.labels is not None:
            coords = predictor.transform.apply_coords(prompts.points, original)
            points = (
                torch.as_tensor(coords, dtype=torch.float, device=self.device)[None].expand(count, -1, -1),
                torch.as_tensor(prompts.labels, dtype=torch.int, device=self.device)[None].expand(count, -1),
            )
        if prompts.boxes is not None:
            boxes = torch.as_tensor(
                predictor.transform.apply_boxes(prompts.boxes, original),
                dtype=torch.float,
                device=self.device,
            )
        assert predictor.features is not None
        sparse, _ = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, scores = self._decoder(self._decoder.context(predictor.features), sparse, multimask)
        masks = self.model.postprocess_masks(low_res, predictor.input_size, original)
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

    def generate(self, image: np.ndarray, amg: dict[str, Any] | None = None) -> MaskSet:
        """Automatic masks with ``SamAutomaticMaskGenerator`` parameters (see :data:`AMG_DEFAULTS`).

        Crops are encoded through the embedding cache, so a batch encoded by :meth:`run` is not
        encoded again.
        """
        with self._lock, torch.no_grad():  # not inference_mode: compiled graphs cannot take its tensors
            params = amg_used({**AMG_DEFAULTS, **(amg or {})}, self.model_type) or {}
            refuse_sam2_options(params, self.model_type)
            max_masks = min(params.pop("max_masks") or self.max_masks, self.max_masks)
            if self.max_auto_points is not None:
                check_auto_points(params, limit=self.max_auto_points)
            requested = params["points_per_batch"] or self.points_per_batch
            if self.compiled:  # one graph for one batch shape: a request's own size would recompile
                requested = self.points_per_batch
            # The fast generator upsamples only survivors, in bounded chunks: no full-size mask per
            # point, so only the per-point term applies (and a compiled graph keeps its one shape).
            width, height = (0, 0) if self.fast else (image.shape[1], image.shape[0])
            params["points_per_batch"] = points_per_batch_for(
                requested,
                width,
                height,
                cap=self.max_points_per_batch,
                memory_bytes=self.decoder_memory_bytes,
            )
            generator: SamAutomaticMaskGenerator
            if self.fast:
                generator = FastMaskGenerator(
                    self.model,
                    embed=self._embed_crop,
                    decoder=self._decoder,
                    decode=self._decode_points,
                    **params,
                )
            else:
                generator = SamAutomaticMaskGenerator(self.model, output_mode="coco_rle", **params)
                generator.predictor = self._predictor
            started = time.perf_counter()
            raw = generator.generate(image)
            raw.sort(key=lambda m: m["predicted_iou"], reverse=True)
            records = [generator_record(mask) for mask in raw[:max_masks]]
            result = MaskSet(records, width=image.shape[1], height=image.shape[0])
            result.timings_ms["automatic"] = round((time.perf_counter() - started) * 1000, 2)
            if isinstance(generator, FastMaskGenerator):
                result.stages_ms = {k: round(v, 2) for k, v in generator.timings_ms.items()}
                result.counts = dict(generator.counts)
            return result

    def _embed_crop(self, crop: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        embedding = self._embed_keyed([crop], count=False)[0][1]
        return embedding.features, embedding.input_size

    def _points_decoder(self) -> Callable[[DecoderContext, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The automatic-mask decoder call (multimask), compiled when asked: its point batches have
        one fixed shape, so one graph serves every batch."""

        def decode(context: DecoderContext, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self._decoder(context, sparse, True)

        if not self.compiled:
            return decode
        return torch.compile(decode, dynamic=False)


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


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of ``device``: the GPU's own, or the machine's RAM for a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _text(counts: str | bytes) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else counts
