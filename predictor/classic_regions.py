"""Automatic masks without weights: scikit-image's Felzenszwalb graph segmentation, then adjacent
regions of similar mean colour merged on a region adjacency graph (``skimage.graph.cut_threshold``).

Work happens on the image shrunk to at most :data:`WORK_SIDE` pixels; each region's mask is scaled
back to full size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage import graph
from skimage.color import rgb2lab
from skimage.segmentation import felzenszwalb

WORK_SIDE = 512
MERGE_LAB_DISTANCE = 8.0  # regions whose mean Lab colours are closer than this become one
MIN_AREA_FRACTION = 0.002  # regions smaller than this share of the image are dropped


@dataclass(frozen=True)
class Region:
    """One automatic mask: ``mask`` ``HxW bool`` at full size; ``point`` XY pixel deepest inside it."""

    mask: np.ndarray
    point: tuple[float, float]


def image_regions(image: np.ndarray, *, min_area: int = 0) -> list[Region]:
    """Regions of an ``HxWx3 uint8`` RGB image, largest first; each at least ``min_area`` pixels
    (and :data:`MIN_AREA_FRACTION` of the image)."""
    height, width = image.shape[:2]
    scale = min(1.0, WORK_SIDE / max(height, width))
    work = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
    work_h, work_w = work.shape[:2]
    labels = felzenszwalb(work, scale=100, sigma=0.8, min_size=max(20, work_h * work_w // 2000))
    merged = labels
    if labels.max() > 0:  # a graph of one region has no edges to cut (and networkx refuses it)
        adjacency = graph.rag_mean_color(rgb2lab(work), labels, mode="distance")  # type: ignore[no-untyped-call]
        merged = graph.cut_threshold(labels, adjacency, MERGE_LAB_DISTANCE, in_place=True)  # type: ignore[no-untyped-call]
    floor = max(min_area * scale * scale, MIN_AREA_FRACTION * work_h * work_w)
    ids, areas = np.unique(merged, return_counts=True)
    regions = []
    for region_id in ids[np.argsort(-areas)]:
        work_mask = merged == region_id
        if work_mask.sum() < floor:
            continue
        if scale < 1:
            resized = cv2.resize(
                work_mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
            )
            mask = resized >= 0.5
        else:
            mask = work_mask
        if mask.any():
            regions.append(Region(mask, _deepest_point(mask)))
    return regions


def _deepest_point(mask: np.ndarray) -> tuple[float, float]:
    """The XY pixel farthest from the mask's edge (a point a SAM prompt there would hit)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(x), float(y)
