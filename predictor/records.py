"""Mask records (:class:`samdrop.documents.MaskRecord`) as every engine makes them: from a binary
mask and its scores (prompt mode), or from a segment-anything-style generator record (automatic)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from samdrop.documents import MaskRecord, Rle
from samdrop.masks import mask_box, mask_to_rle


def prompt_record(mask: np.ndarray, score: float, stability: float, prompt_index: int) -> MaskRecord:
    """One prompt's mask (``HxW bool`` at the input's size) with its predicted IoU and stability."""
    return MaskRecord(
        segmentation=mask_to_rle(mask),
        score=round(float(score), 5),
        stability_score=round(float(stability), 5),
        box=mask_box(mask),
        area=int(mask.sum()),
        prompt_index=prompt_index,
    )


def generator_record(raw: Mapping[str, Any]) -> MaskRecord:
    """A record of segment-anything's (or SAM 2's) automatic generator in ``coco_rle`` mode:
    ``bbox`` XYWH (w = x1 - x0), ``predicted_iou``, ``stability_score``, ``area``, ``point_coords``."""
    x, y, w, h = (round(v) for v in raw["bbox"])
    rle = raw["segmentation"]
    counts = rle["counts"]
    return MaskRecord(
        segmentation=Rle(
            size=[int(rle["size"][0]), int(rle["size"][1])],
            counts=counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
        ),
        score=round(float(raw["predicted_iou"]), 5),
        stability_score=round(float(raw["stability_score"]), 5),
        box=[x, y, x + w, y + h],
        area=int(raw["area"]),
        point_coords=[[round(float(c), 2) for c in p] for p in raw["point_coords"]],
    )
