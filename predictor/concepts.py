"""SAM 3 concept prompts: every instance of a named concept ("solar panel", "car") in an image.

:class:`ConceptEngine` wraps Hugging Face ``transformers``' ``Sam3Model`` + ``Sam3Processor``,
loaded once from a local directory as ``save_pretrained`` writes it (fetching the weights is
someone else's job). Two paths sit behind :meth:`ConceptEngine.segment` (``fast``):

* reference — the library as its docs show it: ``processor(images=image, text=concept)``, then
  ``model(**inputs)``, then ``processor.post_process_instance_segmentation``, one call per image
  and concept, fp32;
* fast — the text encoder runs once per distinct concept of the call, in one batch, and its output
  is kept across calls (keyed by the concept string); the vision encoder runs once per image,
  ``images_per_pass`` at a time (:func:`~predictor.hardware.encoder_images_per_pass`), through
  :mod:`predictor.sam3_vision` (transformers' ViT without its waste); each
  image's concepts go through the detector and mask decoder as one batch against its vision
  features (:mod:`predictor.concept_detector`: mask work only for what passes the score threshold);
  bf16 (a bf16 copy of the ViT, autocast for the detector) where :mod:`predictor.hardware` says the
  hardware runs it natively, the text encoder in fp32.
  A unit test holds the two paths to the same masks and scores.

Budgets are checked before any model work: names and exemplar boxes by :mod:`samdrop.concepts`
(pure, so the function can check an upload's prompts with the same code), token counts here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedConfig, Sam3Model, Sam3Processor
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from predictor.concept_detector import detect, encoder_mlps
from predictor.embedding_engine import bf16_autocast
from predictor.hardware import encoder_images_per_pass, resolve_precision
from predictor.sam3_vision import Sam3FastVision
from samdrop.concepts import (
    MAX_CONCEPT_CHARS,
    MAX_CONCEPTS_PER_IMAGE,
    CheckedBox,
    ExemplarBox,
    check_concepts,
    check_exemplar_boxes,
)
from samdrop.errors import ConfigError, InvalidImage, InvalidPrompt

TEXT_CACHE_SIZE = 256  # text features kept across calls, by concept string (~32 KB each)


@dataclass(frozen=True)
class ConceptThresholds:
    """``score``: keep instances whose score (detection x presence probability) is above it;
    ``mask``: a pixel belongs to a mask where its probability is above it."""

    score: float = 0.5
    mask: float = 0.5

    def __post_init__(self) -> None:
        for name in ("score", "mask"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value <= 1):
                raise InvalidPrompt(f"the {name} threshold must be a number in [0, 1], got {value!r}")


@dataclass
class ConceptMasks:
    """The instances found in one image, ordered by concept as asked, then by score (highest first).

        masks: ``NxHxW bool`` at the image's size; scores: ``N float32`` in [0, 1]; boxes: ``Nx4 int64``,
        the detector's box, XYXY pixels rounded and clipped to ``[0, W] x [0, H]``; labels: ``N`` concept
        strings. timings_ms: where the time went — reference: ``total``; fast: ``text_call`` (the whole
    call's text encoding), ``vision`` (this image's share of its batch), ``detector``, ``masks``.
    """

    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    labels: list[str]
    width: int
    height: int
    timings_ms: dict[str, float] = field(default_factory=dict)


class ConceptEngine:
    """SAM 3 concept segmentation, one model per process (see the module docstring)."""

    def __init__(
        self,
        model: Sam3Model,
        processor: Sam3Processor,
        *,
        fast: bool = True,
        precision: str = "fp32",
        batch_size: int = 4,
        images_per_pass: int | None = None,
        max_concepts: int = MAX_CONCEPTS_PER_IMAGE,
        max_concept_chars: int = MAX_CONCEPT_CHARS,
        text_cache_size: int = TEXT_CACHE_SIZE,
    ) -> None:
        self.model = model
        torch.nn.Module.eval(model)  # transformers' own eval is unannotated
        self.processor = processor
        self.fast = fast
        self.precision = precision if fast else "fp32"
        self.batch_size = batch_size
        self.max_concepts = max_concepts
        self.max_concept_chars = max_concept_chars
        self.device = next(model.parameters()).device
        # None: what is fastest on the device (predictor.hardware), never more than batch_size.
        self.images_per_pass = min(
            images_per_pass or encoder_images_per_pass(batch_size, self.device), batch_size
        )
        # Tokens the text encoder can read, start and end tokens included.
        text_config = model.config.text_config
        assert isinstance(text_config, PreTrainedConfig)
        self.max_tokens = int(text_config.max_position_embeddings)
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._text_cache_size = text_cache_size
        self._lock = threading.Lock()
        self._encoder: Sam3FastVision | None = None
        self._mlps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        if fast:  # built now, so that the first request does not pay for it
            self._vision_encoder()
            self._mlps = encoder_mlps(model, torch.bfloat16 if self.precision == "bf16" else torch.float32)
        if self.precision == "bf16" and self.device.type == "cpu":
            _encode_boxes_in_fp32(model)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        **options: Any,
    ) -> ConceptEngine:
        """Load model and processor from ``directory`` (``config.json``, ``model.safetensors``, tokenizer
        and processor files as ``save_pretrained`` writes them); never touches the network.
        ``precision``: ``auto`` (bf16 where native, see :mod:`predictor.hardware`), ``bf16`` or ``fp32``."""
        path = Path(directory)
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"SAM 3 directory {path} has no config.json: point it at a save_pretrained folder"
            )
        device = torch.device(device)
        try:
            model = Sam3Model.from_pretrained(path, local_files_only=True)
            torch.nn.Module.to(model, device)
            processor = Sam3Processor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load SAM 3 from {path} ({exc}); it needs model and tokenizer files"
            ) from None
        return cls(model, processor, precision=resolve_precision(precision, device), **options)

    @property
    def description(self) -> dict[str, Any]:
        """What produced the masks, for responses and ``masks.json``."""
        return {
            "type": "sam3",
            "device": str(self.device),
            "fast_path": self.fast,
            "precision": self.precision,
        }

    def segment(
        self,
        images: Sequence[np.ndarray],
        concepts: Sequence[str] | Sequence[Sequence[str]],
        exemplar_boxes: Sequence[Sequence[ExemplarBox]] | None = None,
        thresholds: ConceptThresholds = ConceptThresholds(),
    ) -> list[ConceptMasks]:
        """Every instance of every concept in every image.

        images: ``HxWx3 uint8`` RGB arrays; concepts: names for all images (``["car", "tree"]``) or
        one list per image; exemplar_boxes: per image, ``(box, positive)`` pairs with ``box`` XYXY
        pixels of that image, shown to SAM 3 alongside each of its concepts. All budgets and boxes
        are checked before any model work. Returns one :class:`ConceptMasks` per image, in order.
        """
        per_image = self._check(images, concepts, exemplar_boxes)
        with self._lock, torch.inference_mode():
            if not self.fast:
                return [
                    self._reference(image, names, boxes, thresholds)
                    for image, (names, boxes) in zip(images, per_image, strict=True)
                ]
            return self._fast(images, per_image, thresholds)

    def clear_cache(self) -> None:
        """Forget the text features kept across calls."""
        with self._lock:
            self._text_cache.clear()

    # -- checks -------------------------------------------------------------------------------

    def _check(
        self,
        images: Sequence[np.ndarray],
        concepts: Sequence[str] | Sequence[Sequence[str]],
        exemplar_boxes: Sequence[Sequence[ExemplarBox]] | None,
    ) -> list[tuple[list[str], list[CheckedBox]]]:
        if exemplar_boxes is not None and len(exemplar_boxes) != len(images):
            raise InvalidPrompt(
                f"exemplar boxes are given for {len(exemplar_boxes)} images, but there are {len(images)}"
            )
        shared = isinstance(concepts, Sequence) and all(isinstance(c, str) for c in concepts)
        if not shared and len(concepts) != len(images):
            raise InvalidPrompt(f"concepts are given for {len(concepts)} images, but there are {len(images)}")
        checked = []
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise InvalidImage(f"image {index} must be HxWx3 uint8 RGB, got {image.shape} {image.dtype}")
            names = check_concepts(
                concepts if shared else concepts[index],  # type: ignore[arg-type]
                max_concepts=self.max_concepts,
                max_chars=self.max_concept_chars,
            )
            for name in names:
                self._check_tokens(name)
            boxes = exemplar_boxes[index] if exemplar_boxes is not None else []
            checked.append((names, check_exemplar_boxes(boxes, image.shape[1], image.shape[0])))
        return checked

    def _check_tokens(self, name: str) -> None:
        # A character budget cannot bound tokens (one unusual character can be several byte tokens).
        tokens = len(self.processor.tokenizer(name)["input_ids"])
        if tokens > self.max_tokens:
            raise InvalidPrompt(
                f"concept {name!r} is {tokens} tokens; SAM 3 reads at most {self.max_tokens}: "
                "use a shorter name"
            )

    # -- reference path -----------------------------------------------------------------------

    def _reference(
        self,
        image: np.ndarray,
        names: list[str],
        boxes: list[CheckedBox],
        thresholds: ConceptThresholds,
    ) -> ConceptMasks:
        start = time.perf_counter()
        height, width = image.shape[:2]
        found, masks = [], []
        for name in names:
            box_inputs: dict[str, Any] = {}
            if boxes:
                box_inputs = {
                    "input_boxes": [[coords for coords, _ in boxes]],
                    "input_boxes_labels": [[int(positive) for _, positive in boxes]],
                }
            inputs = self.processor(images=image, text=name, return_tensors="pt", **box_inputs).to(
                self.device
            )
            outputs = self.model(**inputs)
            result = self.processor.post_process_instance_segmentation(  # type: ignore[no-untyped-call]
                outputs,
                threshold=thresholds.score,
                mask_threshold=thresholds.mask,
                target_sizes=inputs["original_sizes"].tolist(),
            )[0]
            order = _by_score(result["scores"])
            found.append((name, result["scores"][order], result["boxes"][order]))
            masks.append(result["masks"][order].bool().cpu())
        everything = torch.cat(masks).numpy() if masks else np.zeros((0, height, width), dtype=bool)
        return _collect(found, everything, width, height, {"total": (time.perf_counter() - start) * 1000})

    # -- fast path ----------------------------------------------------------------------------

    def _fast(
        self,
        images: Sequence[np.ndarray],
        per_image: list[tuple[list[str], list[CheckedBox]]],
        thresholds: ConceptThresholds,
    ) -> list[ConceptMasks]:
        start = time.perf_counter()
        # The text encoder stays fp32: 32 tokens per concept, once per concept, where autocast's
        # weight casts cost more than bf16 saves (small config, Zen 4: 1.5 vs 1.1-1.2 CPU-s).
        text = self._text_features(sorted({name for names, _ in per_image for name in names}))
        text_ms = (time.perf_counter() - start) * 1000
        results = []
        for first in range(0, len(images), self.images_per_pass):
            chunk = range(first, min(first + self.images_per_pass, len(images)))
            start = time.perf_counter()
            vision = self._vision([images[i] for i in chunk])
            vision_ms = (time.perf_counter() - start) * 1000 / len(chunk)
            for offset, index in enumerate(chunk):
                names, boxes = per_image[index]
                timings = {"text_call": text_ms, "vision": vision_ms}
                results.append(
                    self._detect(
                        images[index], _pick(vision, offset), names, boxes, text, thresholds, timings
                    )
                )
        return results

    def embed(self, images: Sequence[np.ndarray]) -> list[Sam3VisionEncoderOutput]:
        """Vision features of ``HxWx3 uint8`` RGB images (one per image, as :meth:`segment` uses
        them), ``images_per_pass`` images per encoder pass."""
        with self._lock, torch.inference_mode():
            out = []
            for first in range(0, len(images), self.images_per_pass):
                chunk = list(images[first : first + self.images_per_pass])
                vision = self._vision(chunk)
                out += [_pick(vision, offset) for offset in range(len(chunk))]
            return out

    def _vision(self, images: Sequence[np.ndarray]) -> Sam3VisionEncoderOutput:
        """One vision encoder pass over ``images`` (:class:`~predictor.sam3_vision.Sam3FastVision`)."""
        pixels = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        return self._vision_encoder()(pixels.to(self.device))

    def _vision_encoder(self) -> Sam3FastVision:
        """The vision encoder, built once; in bf16 it holds a bf16 copy of the ViT's weights (~0.9 GB
        for the released model)."""
        if self._encoder is None:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            self._encoder = Sam3FastVision(self.model, dtype)
        return self._encoder

    def _text_features(self, names: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{name: (1xTxD features, 1xT attention mask)}``; the text encoder runs once, on the names
        not cached yet."""
        missing = [name for name in names if name not in self._text_cache]
        if missing:
            tokens = self.processor.tokenizer(
                missing, return_tensors="pt", padding="max_length", max_length=self.max_tokens
            ).to(self.device)
            features = self.model.get_text_features(**tokens).pooler_output
            for row, name in enumerate(missing):
                self._text_cache[name] = (features[row : row + 1], tokens["attention_mask"][row : row + 1])
        found = {}
        for name in names:
            self._text_cache.move_to_end(name)
            found[name] = self._text_cache[name]
        while len(self._text_cache) > self._text_cache_size:
            self._text_cache.popitem(last=False)
        return found

    def _detect(
        self,
        image: np.ndarray,
        vision: Sam3VisionEncoderOutput,
        names: list[str],
        boxes: list[CheckedBox],
        text: dict[str, tuple[torch.Tensor, torch.Tensor]],
        thresholds: ConceptThresholds,
        timings: dict[str, float],
    ) -> ConceptMasks:
        """All ``names`` of one image in one detector + mask-decoder pass over its ``vision`` features."""
        start = time.perf_counter()
        height, width = image.shape[:2]
        features = torch.cat([text[name][0] for name in names])
        attention = torch.cat([text[name][1] for name in names])
        box_inputs = _box_inputs(boxes, width, height, len(names), self.device)
        with self._autocast():
            detections = detect(
                self.model, vision, features, attention, thresholds.score, **box_inputs, mlps=self._mlps
            )
        timings["detector"] = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        scale = torch.tensor([width, height, width, height], device=self.device)
        # Upsampled in score order, straight into the array returned (a few hundred instances of
        # a photo are hundreds of MB: no copy to sort them afterwards).
        masks = np.empty((sum(len(kept.scores) for kept in detections), height, width), dtype=bool)
        found, first = [], 0
        for name, kept in zip(names, detections, strict=True):
            order = _by_score(kept.scores)
            last = first + len(order)
            out = torch.from_numpy(masks[first:last])
            _upsample(kept.mask_logits[order].float(), height, width, thresholds.mask, out=out)
            found.append((name, kept.scores[order], kept.boxes[order] * scale))
            first = last
        timings["masks"] = (time.perf_counter() - start) * 1000
        return _collect(found, masks, width, height, timings)

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        return bf16_autocast(self.precision, self.device)


def _encode_boxes_in_fp32(model: Any) -> None:
    """Exemplar boxes are encoded in fp32, outside autocast: transformers hands torchvision's
    ``roi_align`` an fp16 copy of bf16 features, for which CPU autocast has no rule ("Unexpected
    floating ScalarType in at::autocast::prioritize")."""
    encoder = model.geometry_encoder
    original = encoder._encode_boxes

    def encode(
        boxes: torch.Tensor,
        boxes_mask: torch.Tensor,
        boxes_labels: torch.Tensor,
        vision_features: torch.Tensor,
    ) -> Any:
        with torch.autocast(device_type="cpu", enabled=False):
            return original(boxes.float(), boxes_mask, boxes_labels, vision_features.float())

    encoder._encode_boxes = encode


def _upsample(
    logits: torch.Tensor,
    height: int,
    width: int,
    threshold: float,
    *,
    max_floats: int = 2**22,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Kxhxw`` mask logits -> ``KxHxW bool``: sigmoid, bilinear to the image, then the threshold,
    as the processor does; a few masks at a time so the float copies stay under ``max_floats``
    (16 MB: the processor upsamples all at once, 2.4 GB for 50 masks of a 12 MP photo; chunks that
    stay in cache also threshold faster: 200 masks to 512x512, 2 Zen 4 cores, 123 ms against 205 ms
    in 256 MB chunks). Into ``out`` (``KxHxW bool``, on any device) when given."""
    step = max(1, max_floats // (height * width))
    masks = torch.empty((len(logits), height, width), dtype=torch.bool) if out is None else out
    for first in range(0, len(logits), step):
        chunk = logits[first : first + step].sigmoid().unsqueeze(0)
        upsampled = torch.nn.functional.interpolate(
            chunk, size=(height, width), mode="bilinear", align_corners=False
        )[0]
        if masks.device == upsampled.device:
            torch.gt(upsampled, threshold, out=masks[first : first + step])
        else:
            masks[first : first + step].copy_(upsampled > threshold)
    return masks


def _pick(vision: Sam3VisionEncoderOutput, index: int) -> Sam3VisionEncoderOutput:
    """One image's features (batch of one) out of a batch."""
    return Sam3VisionEncoderOutput(
        fpn_hidden_states=tuple(t[index : index + 1] for t in vision.fpn_hidden_states),
        fpn_position_encoding=tuple(t[index : index + 1] for t in vision.fpn_position_encoding),
    )


def _box_inputs(
    boxes: list[CheckedBox], width: int, height: int, count: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Exemplar boxes as ``Sam3Model`` takes them: ``count x B x 4`` normalized (cx, cy, w, h) and
    ``count x B`` labels (1 positive, 0 negative), the same boxes for each of the ``count`` concepts."""
    if not boxes:
        return {}
    xyxy = torch.tensor([coords for coords, _ in boxes], dtype=torch.float32) / torch.tensor(
        [width, height, width, height], dtype=torch.float32
    )
    cxcywh = torch.stack(
        [
            (xyxy[:, 0] + xyxy[:, 2]) / 2,
            (xyxy[:, 1] + xyxy[:, 3]) / 2,
            xyxy[:, 2] - xyxy[:, 0],
            xyxy[:, 3] - xyxy[:, 1],
        ],
        dim=-1,
    )
    labels = torch.tensor([int(positive) for _, positive in boxes], dtype=torch.long)
    return {
        "input_boxes": cxcywh.expand(count, -1, -1).to(device),
        "input_boxes_labels": labels.expand(count, -1).to(device),
    }


def _by_score(scores: torch.Tensor) -> torch.Tensor:
    """The order of one concept's instances: highest score first, ties in detection order."""
    return torch.argsort(scores.float(), descending=True, stable=True)


def _collect(
    found: list[tuple[str, torch.Tensor, torch.Tensor]],
    masks: np.ndarray,
    width: int,
    height: int,
    timings: dict[str, float],
) -> ConceptMasks:
    """Per-concept ``(name, scores K, boxes Kx4 float pixels)``, each in score order, with their
    ``masks`` (``NxHxW bool``, concept after concept) as one :class:`ConceptMasks`."""
    scores = [concept_scores.float().cpu().numpy() for _, concept_scores, _ in found]
    boxes = [
        _pixel_boxes(concept_boxes.float().cpu().numpy(), width, height) for _, _, concept_boxes in found
    ]
    return ConceptMasks(
        masks=masks,
        scores=np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, dtype=np.float32),
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), dtype=np.int64),
        labels=[name for name, concept_scores, _ in found for _ in range(len(concept_scores))],
        width=width,
        height=height,
        timings_ms=timings,
    )


def _pixel_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """``Kx4`` float XYXY pixels -> ``Kx4 int64``, rounded and clipped to the image."""
    limits = np.array([width, height, width, height])
    pixels: np.ndarray = np.clip(np.rint(boxes.reshape(-1, 4)), 0, limits).astype(np.int64)
    return pixels
