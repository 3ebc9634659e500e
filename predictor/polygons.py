"""Masks → COCO polygons (OpenCV), and the export fields a mask record gains (``label``, ``polygons``).

A polygon ring is ``[x1, y1, x2, y2, ...]`` in pixels of the input image (float, pixel centres of
the mask's boundary pixels, as OpenCV traces them). A mask's outer rings and its holes are kept
apart: ``outer`` is a valid COCO polygon segmentation on its own (COCO cannot express holes), and
``holes`` lists the rings that cut holes into it. Rings are simplified with Douglas-Peucker at
``tolerance_px``: every vertex of the traced boundary lies within that many pixels of the
simplified ring. Used by the predictor's answer and the pipeline's shard alike, so both write
the same records (docs/design.md "Documents").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import cv2
import numpy as np

from samdrop.documents import MaskRecord, Polygons
from samdrop.masks import rle_to_mask

POLYGON_TOLERANCE_PX = 1.0
OUTPUT_CHOICES = ("polygons",)  # what a prompts entry's "outputs" may ask for per mask


def mask_polygons(mask: np.ndarray, tolerance_px: float = POLYGON_TOLERANCE_PX) -> Polygons:
    """Outer rings and holes of an ``HxW bool`` mask, each simplified within ``tolerance_px``.

    Rings with fewer than three vertices after simplification (a 1- or 2-pixel sliver) are left out.
    """
    columns, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if len(columns) == 0:
        return Polygons(outer=[], holes=[], tolerance_px=tolerance_px)
    x0, y0, x1, y1 = int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1
    # Trace the tight crop, padded by one pixel so a mask touching the crop's edge still closes.
    crop = np.zeros((y1 - y0 + 2, x1 - x0 + 2), dtype=np.uint8)
    crop[1:-1, 1:-1] = mask[y0:y1, x0:x1]
    contours, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    outer: list[list[float]] = []
    holes: list[list[float]] = []
    for contour, links in zip(contours, hierarchy[0] if hierarchy is not None else [], strict=True):
        ring = cv2.approxPolyDP(contour, tolerance_px, True).reshape(-1, 2)
        if len(ring) < 3:
            continue
        coords = (ring + np.array([x0 - 1, y0 - 1])).astype(float).reshape(-1).tolist()
        # RETR_CCOMP: a contour with a parent is a hole of that parent.
        (holes if links[3] >= 0 else outer).append(coords)
    return Polygons(outer=outer, holes=holes, tolerance_px=tolerance_px)


def with_exports(
    records: Sequence[MaskRecord],
    *,
    labels: Sequence[str] | None,
    polygons: bool,
    tolerance_px: float = POLYGON_TOLERANCE_PX,
) -> list[MaskRecord]:
    """``records`` with ``label`` (``labels[prompt_index]``; every label when one is given for all)
    and, when ``polygons``, their polygons. ``labels``: one per prompt, or None."""
    out = []
    for record in records:
        label = record.label
        if labels:
            index = record.prompt_index if record.prompt_index is not None else 0
            label = labels[index] if len(labels) > 1 else labels[0]
        rings = mask_polygons(rle_to_mask(record.rle), tolerance_px) if polygons else record.polygons
        out.append(replace(record, label=label, polygons=rings))
    return out
