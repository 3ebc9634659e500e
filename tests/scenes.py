"""Synthetic scenes with known objects: solid shapes on a textured background.

Each object's ground-truth mask is drawn with the same call as its pixels, so a segmentation can be
scored against it (IoU) in the coordinates of the image as displayed. ``ObjectPixels`` is a stand-in
engine whose masks are such known objects, marked in the image's own pixels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from predictor.engine import Job, MaskSet
from samdrop.documents import MaskRecord
from samdrop.masks import mask_box, mask_to_rle


@dataclass(frozen=True)
class SceneObject:
    """name; mask ``HxW bool``; box XYXY inclusive pixels; point XY inside the object."""

    name: str
    mask: np.ndarray
    box: tuple[int, int, int, int]
    point: tuple[int, int]


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # HxWx3 uint8 RGB
    objects: list[SceneObject]


def textured_background(height: int, width: int, seed: int) -> np.ndarray:
    """Greenish-grey noise with soft blotches and diagonal stripes: ``HxWx3 uint8``."""
    rng = np.random.default_rng(seed)
    base = np.array([110, 130, 100], np.float32)
    blotches = cv2.resize(rng.normal(0, 18, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32),
                          (width, height), interpolation=cv2.INTER_CUBIC)  # fmt: skip
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = (8 * np.sin((xx + yy) / 6.0))[:, :, None]
    noise = rng.normal(0, 10, (height, width, 3))
    return np.clip(base + blotches + stripes + noise, 0, 255).astype(np.uint8)


def shapes_scene(height: int = 360, width: int = 480, seed: int = 7) -> Scene:
    """A red disc, a blue rectangle and a yellow triangle, well apart, on :func:`textured_background`."""
    image = textured_background(height, width, seed)
    objects = []
    h, w = height, width

    def add(name: str, colour: tuple[int, int, int], draw: object) -> None:
        mask = np.zeros((h, w), np.uint8)
        draw(mask)  # type: ignore[operator]
        solid = mask.astype(bool)
        image[solid] = colour
        ys, xs = np.nonzero(solid)
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        distance = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        py, px = np.unravel_index(int(np.argmax(distance)), distance.shape)
        objects.append(SceneObject(name, solid, box, (int(px), int(py))))

    add("disc", (220, 40, 40), lambda m: cv2.circle(m, (w // 5, h // 3), min(h, w) // 7, 1, -1))
    add(
        "rectangle",
        (40, 60, 210),
        lambda m: cv2.rectangle(m, (w // 2, h // 6), (w // 2 + w // 4, h // 2), 1, -1),
    )
    triangle = np.array(
        [[w // 6, h - h // 8], [w // 6 + w // 4, h - h // 8], [w // 6 + w // 8, h // 2 + h // 12]]
    )
    add("triangle", (235, 210, 50), lambda m: cv2.fillPoly(m, [triangle.astype(np.int32)], 1))
    return Scene(image, objects)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``HxW bool`` masks (0 when both are empty)."""
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 0.0


def best_iou(target: np.ndarray, masks: list[np.ndarray]) -> float:
    return max((iou(target, m) for m in masks), default=0.0)


def encode_as(scene: Scene, kind: str) -> bytes:
    """``scene.image`` as uploaded bytes that *display* as the scene (what samdrop must segment).

    kinds: ``exif_jpeg`` (pixels stored rotated, EXIF orientation 6 turns them back), ``cmyk_jpeg``,
    ``png16`` (16-bit greyscale, the luminance scaled to 0..65535), ``rgba_png`` (translucent
    background, opaque objects) and ``webp``.
    """
    from PIL import Image

    image = Image.fromarray(scene.image)
    out = io.BytesIO()
    if kind == "exif_jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: the viewer rotates 90 degrees clockwise
        image.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=95, exif=exif)
    elif kind == "cmyk_jpeg":
        image.convert("CMYK").save(out, "JPEG", quality=95)
    elif kind == "png16":
        grey = np.asarray(image.convert("L"), np.uint16) * 257
        Image.fromarray(grey).save(out, "PNG")  # uint16 -> mode I;16
    elif kind == "rgba_png":
        alpha = np.full(scene.image.shape[:2], 230, np.uint8)
        for obj in scene.objects:
            alpha[obj.mask] = 255
        Image.fromarray(np.dstack([scene.image, alpha]), mode="RGBA").save(out, "PNG")
    elif kind == "webp":
        image.save(out, "WEBP", quality=90)
    else:
        raise ValueError(f"unknown encoding {kind!r}")
    return out.getvalue()


ENCODINGS = ("exif_jpeg", "cmyk_jpeg", "png16", "rgba_png", "webp")


class ObjectPixels:
    """A stand-in mask source: in each image it is given, the mask is the pixels whose red channel is
    255 (the true objects), split into one mask per object id in the green channel; a box prompt
    keeps the part inside its box. Text prompts name objects through ``concepts`` (concept → the
    green id of its objects): each concept's masks carry it as their ``label``."""

    model_type = "fake"
    description: dict[str, Any] = {"type": "fake"}  # noqa: RUF012
    auto_points_per_side = 4

    def __init__(self, batch_size: int = 3, concepts: dict[str, int] | None = None) -> None:
        self.batch_size = batch_size
        self.concepts = concepts or {}
        self.shapes: list[tuple[int, int]] = []
        self.prompts_seen: list[Any] = []

    def run(self, jobs: Sequence[Job]) -> list[MaskSet]:
        results = []
        for job in jobs:
            image = job.image
            self.shapes.append(image.shape[:2])
            self.prompts_seen.append(job.prompts)
            if job.prompts is not None and job.prompts.text is not None:
                results.append(self._concepts(image, job.prompts.text))
                continue
            masks = []
            for ident in sorted(set(np.unique(image[..., 1][image[..., 0] == 255]))):
                mask = (image[..., 0] == 255) & (image[..., 1] == ident)
                if job.prompts is not None and job.prompts.boxes is not None:
                    x0, y0, x1, y1 = (int(v) for v in job.prompts.boxes[0])
                    inside = np.zeros_like(mask)
                    inside[y0 : y1 + 1, x0 : x1 + 1] = True
                    mask &= inside
                if mask.any():
                    masks.append(
                        MaskRecord(
                            segmentation=mask_to_rle(mask),
                            score=0.9,
                            stability_score=0.95,
                            box=mask_box(mask),
                            area=int(mask.sum()),
                            prompt_index=0 if job.prompts is not None else None,
                            point_coords=None if job.prompts is not None else [[1.0, 2.0]],
                        )
                    )
            results.append(MaskSet(masks, image.shape[1], image.shape[0], timings_ms={"decoder": 1.0}))
        return results

    def _concepts(self, image: np.ndarray, text: Sequence[str]) -> MaskSet:
        masks = []
        for index, concept in enumerate(text):
            mask = (image[..., 0] == 255) & (image[..., 1] == self.concepts.get(concept, -1))
            if mask.any():
                record = MaskRecord(
                    segmentation=mask_to_rle(mask),
                    score=0.8,
                    stability_score=0.0,
                    box=mask_box(mask),
                    area=int(mask.sum()),
                    prompt_index=index,
                    label=concept,
                )
                masks.append(record)
        return MaskSet(masks, image.shape[1], image.shape[0], timings_ms={"decoder": 1.0})

    def embed(self, images: Sequence[np.ndarray]) -> Sequence[Any]:
        return []

    def clear_cache(self) -> None:
        pass
