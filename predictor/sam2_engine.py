"""The SAM 2.1 engine: transformers' ``Sam2Model`` behind samdrop's engine interface.

Same jobs in and :class:`~predictor.engine.MaskSet` out as :class:`~predictor.engine.SamEngine`:
points (without labels: foreground) and boxes, one or three masks per prompt, automatic masks with
``SAM2AutomaticMaskGenerator``'s parameters (:mod:`predictor.sam2_automatic`).

How it runs: the model is loaded once per process (``from_pretrained`` of a local folder, see
:mod:`predictor.hf_weights`) with SDPA attention; images go through the encoder
(:class:`~predictor.sam2_encoder.Sam2FastEncoder`) ``images_per_pass`` at a time (one on a CPU,
``batch_size`` on a GPU: :func:`~predictor.hardware.encoder_images_per_pass`), resized to the model's
square input on the device (SAM 2 does not keep the aspect ratio: no padding); the three feature
levels of each image are kept in an LRU cache keyed by the image's content, so re-prompting an image
or its automatic masks never encode it again; every prompt of an image runs in one decoder call (a
batch of prompts over the cached features); where :mod:`predictor.hardware` says the device computes
bf16 natively, encoder and decoder run on bf16 copies of their weights.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.amg import calculate_stability_score

from predictor import hf_weights
from predictor.embedding_engine import EmbeddingEngine, engine_options
from predictor.engine import MaskSet, device_memory_bytes, pick_device
from predictor.hardware import (
    encoder_images_per_pass,
    resolve_compile,
    resolve_precision,
    use_compile_cache,
)
from predictor.instances import Prompts
from predictor.records import generator_record, prompt_record
from predictor.sam2_automatic import Sam2MaskGenerator
from predictor.sam2_decoder import Sam2DecoderContext, Sam2FastDecoder
from predictor.sam2_encoder import Sam2FastEncoder
from samdrop.budgets import check_auto_points, points_per_batch_for
from samdrop.documents import MaskRecord
from samdrop.errors import ConfigError
from samdrop.models import ModelInfo, amg_used, model_info
from samdrop.prompts import AMG_DEFAULTS, SAM2_AMG_OPTIONS
from samdrop.settings import Settings

# Sam2ImageProcessor's (and Meta's SAM2Transforms') normalisation, on RGB in [0, 1].
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
CPU_GRID = 16  # SAMDROP_AMG_POINTS_PER_SIDE=auto on a CPU, as for SAM 1's eager decoder


@dataclass(frozen=True)
class Sam2Embedding:
    """Encoder output for one image.

    features: the model's three feature levels, ``1xC0xS/4xS/4``, ``1xC1xS/8xS/8`` and
    ``1xCxS/16xS/16`` (S: the model's input side, 1024 for Meta's; C = 256), on the engine's device
    in its precision (bf16 or fp32);
    original_size: (H, W) of the image as given.
    """

    features: tuple[torch.Tensor, ...]
    original_size: tuple[int, int]


def load_sam2(info: ModelInfo, checkpoint: str | None, cache_dir: Path, device: torch.device) -> Any:
    """``Sam2Model`` of ``info`` from ``checkpoint`` (see :func:`predictor.hf_weights.resolve`), in eval
    mode on ``device`` with SDPA attention; a folder holding another model says so."""
    from transformers import Sam2Model
    from transformers.utils import logging as hf_logging

    folder = hf_weights.resolve(info, checkpoint, cache_dir)
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        model = Sam2Model.from_pretrained(folder, attn_implementation="sdpa")
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"checkpoint {checkpoint or info.source} could not be loaded as {info.name} "
            f"({info.family}): {exc}; "
            "set SAMDROP_MODEL_TYPE (--model-type) to match the checkpoint"
        ) from None
    return model.eval().to(device)  # type: ignore[no-untyped-call]


class Sam2Engine(EmbeddingEngine[Sam2Embedding]):
    """Loads SAM 2.1 once and serves prompt and automatic masks, batched. Thread-safe (one job at a time)."""

    def __init__(
        self,
        model: Any,
        model_type: str,
        *,
        checkpoint: str | None = None,
        batch_size: int = 4,
        points_per_batch: int = 64,
        cache_size: int = 16,
        max_masks: int = 256,
        precision: str = "fp32",
        compile: bool = False,
        random_weights: bool = False,
        max_points_per_batch: int = 256,
        decoder_memory_bytes: int | None = None,
        max_auto_points: int | None = None,
        images_per_pass: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.model_type = model_type
        self.info = model_info(model_type)
        self.checkpoint = checkpoint or self.info.source
        self.batch_size = batch_size
        self.points_per_batch = points_per_batch
        self.max_masks = max_masks
        self.precision = precision
        self.random_weights = random_weights
        self.max_points_per_batch = max_points_per_batch
        self.device = next(model.parameters()).device
        # None: what is fastest on the device (predictor.hardware), never more than batch_size.
        self.images_per_pass = min(
            images_per_pass or encoder_images_per_pass(batch_size, self.device), batch_size
        )
        self.decoder_memory_bytes = decoder_memory_bytes or device_memory_bytes(self.device) // 4
        self.max_auto_points = max_auto_points
        self.input_size = int(model.config.prompt_encoder_config.image_size)
        self._mean = torch.tensor(IMAGE_MEAN, device=self.device)[:, None, None]
        self._std = torch.tensor(IMAGE_STD, device=self.device)[:, None, None]
        self.compiled = compile
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self._encoder = Sam2FastEncoder(model, dtype)
        self._decoder = Sam2FastDecoder(model, dtype)
        # Automatic masks decode fixed chunks of grid points: compiled, one graph serves them all.
        # Prompt calls (a few prompts each) stay eager: padded to a chunk they would do more work.
        self._points_decoder = self._decoder.compiled_copy() if compile else self._decoder
        self._last_context: tuple[Sam2Embedding, Sam2DecoderContext] | None = None
        self._init_cache(cache_size)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Sam2Engine:
        """Load ``settings.model_type`` from ``settings.checkpoint`` onto the chosen device."""
        device = pick_device(settings.device)
        info = model_info(settings.model_type)
        model = load_sam2(info, settings.checkpoint, settings.cache_dir, device)
        compile_decoder = resolve_compile(settings.compile, device)
        if compile_decoder:
            use_compile_cache(settings.cache_dir)
        options: dict[str, Any] = {
            **engine_options(settings),
            "checkpoint": settings.checkpoint if settings.checkpoint not in (None, "auto") else info.source,
            "precision": resolve_precision(settings.precision, device),
            "compile": compile_decoder,
        }
        return cls(model, settings.model_type, **{**options, **overrides})

    @property
    def description(self) -> dict[str, Any]:
        """What produced the masks, for responses and ``masks.json``."""
        record = hf_weights.hf_description(self.info, self.checkpoint, "Sam2Model", self.random_weights)
        return {**record, "device": str(self.device), "precision": self.precision, "compiled": self.compiled}

    @property
    def auto_points_per_side(self) -> int:
        """The automatic-mask grid for ``SAMDROP_AMG_POINTS_PER_SIDE=auto``: 32 on a GPU, less on a CPU."""
        return 32 if self.device.type == "cuda" else CPU_GRID

    # -- encoder -----------------------------------------------------------------------------

    def _encoder_step(self) -> int:
        return self.images_per_pass

    @torch.inference_mode()
    def _encode(self, images: Sequence[np.ndarray]) -> list[Sam2Embedding]:
        """One encoder pass over ``images`` (each resized to the model's square input on the device)."""
        side = self.input_size
        batch = []
        for image in images:
            # A copy: images decoded by PIL are read-only arrays, which torch will not wrap.
            pixels = torch.tensor(image, device=self.device).permute(2, 0, 1)[None].float() / 255.0
            pixels = F.interpolate(pixels, (side, side), mode="bilinear", align_corners=False, antialias=True)
            batch.append((pixels[0] - self._mean) / self._std)
        levels = self._encoder(torch.stack(batch))
        return [
            Sam2Embedding(tuple(level[i : i + 1] for level in levels), (image.shape[0], image.shape[1]))
            for i, image in enumerate(images)
        ]

    # -- decoder -----------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(
        self,
        embedding: Sam2Embedding,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_prompts: torch.Tensor | None,
        multimask: bool,
        min_iou: float | None = None,
        *,
        automatic: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """B prompts on one image in one decoder call (``min_iou``: see
        :meth:`~predictor.sam2_decoder.Sam2FastDecoder.__call__`; ``automatic``: grid points, through
        the compiled decoder when the engine compiles).

        points: ``BxNx2`` and labels ``BxN`` (1 foreground, 0 background), boxes ``Bx4`` XYXY, all in
        pixels of the model's input (S x S); mask_prompts: ``Bx1xhxw`` low-res logits (h = w = S/4,
        as the decoder gives them). :class:`~predictor.sam2_decoder.Sam2FastDecoder` runs it. Returns
        low-res logits ``BxMxhxw`` float32 (h = w = S/4) and predicted IoU ``BxM`` float32, M = 3
        with ``multimask`` else 1 (SAM 2's single mask falls back to the best of three when unstable).
        """
        sparse, dense = self.model.prompt_encoder(
            input_points=None if points is None else points[:, None].to(self.device),
            input_labels=None if labels is None else labels[:, None].to(self.device),
            input_boxes=None if boxes is None else boxes[:, None].to(self.device),
            input_masks=None if mask_prompts is None else mask_prompts.to(self.device),
        )
        decoder = self._points_decoder if automatic else self._decoder
        return decoder(
            self._context(embedding),
            sparse[:, 0],
            multimask,
            None if mask_prompts is None else dense,
            min_iou,
        )

    def _context(self, embedding: Sam2Embedding) -> Sam2DecoderContext:
        """The decoder's image side for ``embedding``, kept for the next call on the same one (an
        automatic-mask image asks once per point batch)."""
        last = self._last_context
        if last is None or last[0] is not embedding:
            last = self._last_context = (embedding, self._decoder.context(embedding.features))
        return last[1]

    def _decode_points(
        self,
        embedding: Sam2Embedding,
        coords: torch.Tensor,
        mask_prompts: torch.Tensor | None,
        multimask: bool,
        min_iou: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Automatic masks' decoder call: one foreground point per prompt (``Bx1x2``)."""
        labels = torch.ones(coords.shape[:2], dtype=torch.int32)
        return self.decode(embedding, coords, labels, None, mask_prompts, multimask, min_iou, automatic=True)

    # -- jobs --------------------------------------------------------------------------------

    def segment(
        self,
        image: np.ndarray,
        prompts: Prompts,
        embedding: Sam2Embedding | None = None,
        *,
        return_logits: bool = False,
    ) -> MaskSet:
        """Masks for ``prompts`` (pixel XY of ``image``); one decoder call for all prompts.

        With boxes each box is a prompt and the points join every box; without, all points are one
        prompt. Points without labels are foreground.
        """
        with self._lock:
            embedding = embedding or self.embed([image])[0]
            height, width = image.shape[:2]
            scale = torch.tensor([self.input_size / width, self.input_size / height])
            count = prompts.count
            started = time.perf_counter()
            points = labels = boxes = None
            if prompts.points is not None:
                points = (torch.as_tensor(prompts.points, dtype=torch.float) * scale)[None].expand(
                    count, -1, -1
                )
                given = prompts.labels if prompts.labels is not None else np.ones(len(prompts.points))
                labels = torch.as_tensor(given, dtype=torch.int32)[None].expand(count, -1)
            if prompts.boxes is not None:
                boxes = torch.as_tensor(prompts.boxes, dtype=torch.float) * scale.repeat(2)
            low_res, scores = self.decode(embedding, points, labels, boxes, None, prompts.wants_multimask)
            decode_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            records: list[MaskRecord] = []
            for p in range(count):  # one prompt's masks at a time: full-size logits stay bounded
                logits = F.interpolate(
                    low_res[p : p + 1], (height, width), mode="bilinear", align_corners=False
                )[0]
                stability = calculate_stability_score(logits, 0.0, 1.0).cpu().numpy()
                binary = (logits > 0.0).cpu().numpy()
                for m in range(binary.shape[0]):
                    records.append(prompt_record(binary[m], float(scores[p, m]), float(stability[m]), p))
            result = MaskSet(records, width=width, height=height)
            if return_logits:
                result.logits = low_res.cpu().numpy().reshape(-1, *low_res.shape[-2:])
            result.timings_ms.update(
                decoder=round(decode_ms, 2), postprocess=round((time.perf_counter() - started) * 1000, 2)
            )
            return result

    def generate(self, image: np.ndarray, amg: dict[str, Any] | None = None) -> MaskSet:
        """Automatic masks with ``SAM2AutomaticMaskGenerator``'s parameters (AMG_DEFAULTS plus
        :data:`~predictor.instances.SAM2_AMG_OPTIONS`; ``pred_iou_thresh`` unset: Meta's 0.8)."""
        with self._lock, torch.inference_mode():
            params = amg_used({**AMG_DEFAULTS, **SAM2_AMG_OPTIONS, **(amg or {})}, self.model_type) or {}
            max_masks = min(params.pop("max_masks") or self.max_masks, self.max_masks)
            if self.max_auto_points is not None:
                check_auto_points(params, limit=self.max_auto_points)
            # Survivors are upsampled in bounded chunks: only the per-point decoder term applies.
            params["points_per_batch"] = points_per_batch_for(
                params["points_per_batch"] or self.points_per_batch,
                0,
                0,
                cap=self.max_points_per_batch,
                memory_bytes=self.decoder_memory_bytes,
            )
            generator = Sam2MaskGenerator(
                embed=self._embed_crop, decode=self._decode_points, input_size=self.input_size, **params
            )
            started = time.perf_counter()
            raw = sorted(generator.generate(image), key=lambda m: m["predicted_iou"], reverse=True)
            records = [generator_record(mask) for mask in raw[:max_masks]]
            result = MaskSet(records, width=image.shape[1], height=image.shape[0])
            result.timings_ms["automatic"] = round((time.perf_counter() - started) * 1000, 2)
            result.stages_ms = {k: round(v, 2) for k, v in generator.timings_ms.items()}
            result.counts = dict(generator.counts)
            return result

    def _embed_crop(self, crop: np.ndarray) -> Sam2Embedding:
        return self._embed_keyed([crop], count=False)[0][1]
