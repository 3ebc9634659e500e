"""``classic``: masks from classic computer vision, no weights, behind the engine interface.

Prompts go to OpenCV's GrabCut (:mod:`predictor.classic_prompts`), automatic masks to scikit-image's
graph segmentation with region merging (:mod:`predictor.classic_regions`). The records are the
same as :class:`~predictor.engine.SamEngine`'s (:class:`~predictor.engine.MaskSet`), with two
scores of their own, both in 0..1:

* ``score`` — boundary contrast: the mean colour-gradient magnitude on the mask's outline over the
  image's 99th percentile gradient (an outline on real edges scores near 1). Not a predicted IoU.
* ``stability_score`` — IoU of the mask opened and closed by a 5x5 square: how little the mask
  changes when its outline moves by two pixels (SAM's is the same idea with the logit threshold).

SAM's ``pred_iou_thresh`` and ``stability_score_thresh`` are tuned to SAM's scores and do not apply;
``max_masks`` and ``min_mask_region_area`` do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from predictor.classic_prompts import grabcut_mask
from predictor.classic_regions import image_regions
from predictor.engine import Job, MaskSet
from predictor.instances import Prompts
from samdrop.documents import MaskRecord
from samdrop.masks import mask_box, mask_to_rle
from samdrop.settings import Settings

SWITCH_TO_SAM = (
    "classic computer vision (GrabCut, graph segmentation), not SAM: for SAM masks run "
    "`samdrop models pull vit_b` (or set SAMDROP_MODEL_TYPE=vit_b, SAMDROP_CHECKPOINT=auto)"
)


class ClassicEngine:
    """Same interface as :class:`~predictor.engine.SamEngine`; thread-safe (one job at a time)."""

    model_type = "classic"

    def __init__(self, *, batch_size: int = 4, max_masks: int = 256) -> None:
        self.batch_size = batch_size
        self.max_masks = max_masks
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ClassicEngine:
        return cls(batch_size=settings.batch_size, max_masks=settings.max_masks)

    @property
    def description(self) -> dict[str, Any]:
        """What produced the masks, for responses and ``masks.json``."""
        return {
            "type": "classic",
            "backend": "classic",
            "device": "cpu",
            "prompts": f"OpenCV {cv2.__version__} GrabCut",
            "automatic": "scikit-image Felzenszwalb + region-adjacency merging",
            "random_weights": False,
            "note": SWITCH_TO_SAM,
        }

    @property
    def auto_points_per_side(self) -> int:
        """Accepted for the interface; automatic masks here use no point grid."""
        return 32

    def embed(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """No encoder: the ``HxWx3 uint8`` images themselves are the features."""
        return list(images)

    def clear_cache(self) -> None:
        """Nothing is cached."""

    def run(self, jobs: Sequence[Job]) -> list[MaskSet]:
        """Each job's masks: prompts by GrabCut, no prompts by graph segmentation."""
        with self._lock:
            return [
                self.segment(job.image, job.prompts)
                if job.prompts is not None
                else self.generate(job.image, job.amg)
                for job in jobs
            ]

    def segment(self, image: np.ndarray, prompts: Prompts) -> MaskSet:
        """Masks for ``prompts`` (pixel XY of ``image``): one per box, or one for points alone;
        ``multimask`` adds the box-only / largest-part alternatives, best score first."""
        started = time.perf_counter()
        gradient = _gradient(image)
        boxes: list[np.ndarray | None] = list(prompts.boxes) if prompts.boxes is not None else [None]
        records = []
        for index, box in enumerate(boxes):
            mask = grabcut_mask(image, box, prompts.points, prompts.labels)
            candidates = [mask]
            if prompts.wants_multimask:
                candidates += _alternatives(image, mask, box, prompts)
            scored = sorted(
                (replace(_record(m, gradient), prompt_index=index) for m in _distinct(candidates)),
                key=lambda r: -r.score,
            )
            records += scored
        result = MaskSet(records, width=image.shape[1], height=image.shape[0])
        result.timings_ms.update(classic=round((time.perf_counter() - started) * 1000, 2), encoder=0.0)
        return result

    def generate(self, image: np.ndarray, amg: dict[str, Any] | None = None) -> MaskSet:
        """Automatic masks, best score first, at most ``max_masks`` (the request's, capped by ours)."""
        started = time.perf_counter()
        params = amg or {}
        max_masks = min(params.get("max_masks") or self.max_masks, self.max_masks)
        gradient = _gradient(image)
        records = []
        for region in image_regions(image, min_area=int(params.get("min_mask_region_area") or 0)):
            point = [round(region.point[0], 2), round(region.point[1], 2)]
            records.append(replace(_record(region.mask, gradient), point_coords=[point]))
        records.sort(key=lambda r: -r.score)
        result = MaskSet(records[:max_masks], width=image.shape[1], height=image.shape[0])
        result.timings_ms.update(automatic=round((time.perf_counter() - started) * 1000, 2), encoder=0.0)
        result.counts = {"regions": len(records), "kept": len(result.masks)}
        return result


def _alternatives(
    image: np.ndarray, mask: np.ndarray, box: np.ndarray | None, prompts: Prompts
) -> list[np.ndarray]:
    """Other readings of an ambiguous prompt: the prompt without its points, or the largest part."""
    out = []
    if box is not None and prompts.points is not None:
        out.append(grabcut_mask(image, box, None, None))
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count > 2:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        out.append(components == largest)
    return out


def _distinct(masks: list[np.ndarray]) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for mask in masks:
        if mask.any() and not any(np.array_equal(mask, seen) for seen in out):
            out.append(mask)
    return out or masks[:1]


def _record(mask: np.ndarray, gradient: np.ndarray) -> MaskRecord:
    """A mask's record (no ``prompt_index`` or ``point_coords`` yet)."""
    return MaskRecord(
        segmentation=mask_to_rle(mask),
        score=round(_boundary_contrast(mask, gradient), 5),
        stability_score=round(_stability(mask), 5),
        box=mask_box(mask),
        area=int(mask.sum()),
    )


def _gradient(image: np.ndarray) -> np.ndarray:
    """``HxW float32`` colour-gradient magnitude (Sobel on a lightly blurred image), normalised so the
    99th percentile is 1."""
    blurred = cv2.GaussianBlur(image, (3, 3), 0).astype(np.float32)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.sqrt((gx * gx + gy * gy).sum(axis=2))
    top = float(np.percentile(magnitude, 99))
    normalised: np.ndarray = magnitude / top if top > 0 else magnitude
    return normalised


def _boundary_contrast(mask: np.ndarray, gradient: np.ndarray) -> float:
    mask_u8 = mask.astype(np.uint8)
    outline = (mask_u8 - cv2.erode(mask_u8, np.ones((3, 3), np.uint8))).astype(bool)
    # The image's own frame is not an edge the mask found.
    outline[[0, -1], :] = False
    outline[:, [0, -1]] = False
    if not outline.any():
        return 0.0
    # Sobel peaks straddle an edge: take the larger of the outline and its outer neighbour.
    dilated = cv2.dilate(gradient, np.ones((3, 3), np.uint8))
    return float(np.clip(dilated[outline].mean(), 0.0, 1.0))


def _stability(mask: np.ndarray) -> float:
    kernel = np.ones((5, 5), np.uint8)
    mask_u8 = mask.astype(np.uint8)
    opened = cv2.morphologyEx(mask_u8, cv2.MORPH_OPEN, kernel).astype(bool)
    closed = cv2.morphologyEx(mask_u8, cv2.MORPH_CLOSE, kernel).astype(bool)
    union = int((opened | closed).sum())
    return float((opened & closed).sum() / union) if union else 0.0
