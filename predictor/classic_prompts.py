"""Prompted masks without weights: OpenCV's GrabCut, seeded by SAM-style boxes and points.

A box marks everything outside it as background and inside it as probable foreground; foreground
points (label 1) are certain foreground, background points (label 0) certain background. Points
without a box seed the graph-segmentation region under each foreground point as probable
foreground. GrabCut runs on a region of interest around the prompt, shrunk to at most
:data:`WORK_SIDE` pixels, and the result is scaled back to the image's full size.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.segmentation import felzenszwalb

WORK_SIDE = 400  # GrabCut's cost grows with pixels; object outlines survive this scale
ITERATIONS = 5
POINT_RADIUS_FRACTION = 0.015  # seed disc radius, as a fraction of the working image's short side


def grabcut_mask(
    image: np.ndarray,
    box: np.ndarray | None,
    points: np.ndarray | None,
    labels: np.ndarray | None,
) -> np.ndarray:
    """One prompt's mask.

    image: ``HxWx3 uint8`` RGB; box: ``4 float`` XYXY pixels or None; points: ``Nx2 float`` XY pixels
    and labels ``N int`` (1 foreground, 0 background), or None. Returns an ``HxW bool`` mask; with
    foreground points, only the connected parts that hold one of them.
    """
    height, width = image.shape[:2]
    x0, y0, x1, y1 = _region_of_interest(box, points, labels, width, height)
    scale = min(1.0, WORK_SIDE / max(x1 - x0, y1 - y0))
    roi = image[y0:y1, x0:x1]
    work = cv2.resize(roi, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else roi
    work_h, work_w = work.shape[:2]

    def to_work(xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy, dtype=np.float64) - (x0, y0)) * scale

    seeds = np.full((work_h, work_w), cv2.GC_PR_BGD, np.uint8)
    if box is not None:
        bx0, by0 = to_work(box[:2]).round().astype(int)
        bx1, by1 = to_work(box[2:]).round().astype(int)
        seeds[:] = cv2.GC_BGD
        seeds[max(by0, 0) : by1 + 1, max(bx0, 0) : bx1 + 1] = cv2.GC_PR_FGD
    elif points is not None and labels is not None:
        regions = felzenszwalb(work, scale=200, sigma=0.8, min_size=max(20, work_h * work_w // 2000))
        for (x, y), label in zip(to_work(points).round().astype(int), labels, strict=True):
            if label == 1 and 0 <= x < work_w and 0 <= y < work_h:
                seeds[regions == regions[y, x]] = cv2.GC_PR_FGD
    foreground = []
    if points is not None and labels is not None:
        radius = max(2, round(min(work_h, work_w) * POINT_RADIUS_FRACTION))
        for (x, y), label in zip(to_work(points).round().astype(int), labels, strict=True):
            cv2.circle(seeds, (int(x), int(y)), radius, cv2.GC_FGD if label == 1 else cv2.GC_BGD, -1)
            if label == 1:
                foreground.append((int(x), int(y)))
    _ensure_both_sides(seeds)
    work_mask = _run_grabcut(work, seeds)
    if foreground:
        work_mask = _parts_holding(work_mask, foreground)
    if scale < 1:
        resized = cv2.resize(work_mask.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        work_mask = resized >= 0.5
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = work_mask
    return mask


def _region_of_interest(
    box: np.ndarray | None,
    points: np.ndarray | None,
    labels: np.ndarray | None,
    width: int,
    height: int,
) -> tuple[int, int, int, int]:
    """XYXY (end exclusive) around the box with a margin of background; points alone: the image."""
    if box is None:
        return 0, 0, width, height
    bx0, by0, bx1, by1 = (float(v) for v in box)
    margin = max(10.0, 0.25 * max(bx1 - bx0, by1 - by0))
    xs = [bx0 - margin, bx1 + margin]
    ys = [by0 - margin, by1 + margin]
    if points is not None:
        xs += list(points[:, 0])
        ys += list(points[:, 1])
    x0, x1 = max(0, int(min(xs))), min(width, int(np.ceil(max(xs))) + 1)
    y0, y1 = max(0, int(min(ys))), min(height, int(np.ceil(max(ys))) + 1)
    return x0, y0, max(x1, x0 + 2), max(y1, y0 + 2)


def _ensure_both_sides(seeds: np.ndarray) -> None:
    """GrabCut needs background and foreground samples: a box over the whole image leaves no
    background, so the frame becomes probable background; no foreground makes the centre probable."""
    if not np.isin(seeds, (cv2.GC_BGD, cv2.GC_PR_BGD)).any():
        seeds[[0, -1], :] = cv2.GC_PR_BGD
        seeds[:, [0, -1]] = cv2.GC_PR_BGD
    if not np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD)).any():
        h, w = seeds.shape
        seeds[h // 4 : 3 * h // 4 + 1, w // 4 : 3 * w // 4 + 1] = cv2.GC_PR_FGD


def _run_grabcut(work: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    labels = seeds.copy()
    bgr = np.ascontiguousarray(work[:, :, ::-1])
    try:
        cv2.grabCut(bgr, labels, (0, 0, 0, 0), bgd_model, fgd_model, ITERATIONS, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # degenerate colour models (e.g. a flat image): the seeds are the answer
        labels = seeds
    return np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))


def _parts_holding(mask: np.ndarray, points: list[tuple[int, int]]) -> np.ndarray:
    """The 8-connected components of ``mask`` that contain one of ``points`` (XY)."""
    count, components = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    h, w = mask.shape
    keep = {int(components[y, x]) for x, y in points if 0 <= x < w and 0 <= y < h and mask[y, x]}
    if not keep or count <= 1:
        return mask
    return np.isin(components, sorted(keep))
