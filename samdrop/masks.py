"""Binary masks ⇄ COCO RLE (pycocotools) ⇄ PNG bytes (Pillow), and overlay previews.

A mask here is always an ``HxW bool`` numpy array at the input image's displayed resolution.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from samdrop.documents import Rle

# Distinct, colour-blind-friendly colours (Okabe-Ito, then Tableau) cycled over masks.
PALETTE = np.array(
    [
        (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
        (213, 94, 0), (204, 121, 167), (31, 119, 180), (255, 127, 14), (44, 160, 44),
        (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
    ],
    dtype=np.uint16,
)  # fmt: skip


def mask_to_rle(mask: np.ndarray) -> Rle:
    """COCO RLE of an ``HxW bool`` mask: ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return Rle(size=[int(rle["size"][0]), int(rle["size"][1])], counts=rle["counts"].decode("ascii"))


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`: an ``HxW bool`` array."""
    counts = rle["counts"]
    coco = {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    mask: np.ndarray = mask_utils.decode(coco).astype(bool)
    return mask


def mask_to_png(mask: np.ndarray) -> bytes:
    """PNG bytes of an ``HxW bool`` mask, mode ``L`` with 0 for background and 255 for the mask."""
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    # Level 1: about as small as 6 for smooth masks, 4x faster for speckled ones (measured).
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def png_to_mask(data: bytes) -> np.ndarray:
    """Inverse of :func:`mask_to_png`; accepts mode ``1`` or ``L`` PNGs (any non-zero pixel is mask)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L")) > 0


def mask_bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight ``(x0, y0, x1, y1)`` of an ``HxW bool`` mask, ``x1``/``y1`` exclusive; None when empty
    (row and column projections: no ``nonzero`` index arrays of 16 bytes per mask pixel)."""
    columns, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if len(columns) == 0:
        return None
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def mask_box(mask: np.ndarray) -> list[int]:
    """Tight box of a mask, ``[x0, y0, x1, y1]`` in pixels (x1/y1 inclusive); zeros when empty."""
    bounds = mask_bounds(mask)
    if bounds is None:
        return [0, 0, 0, 0]
    x0, y0, x1, y1 = bounds
    return [x0, y0, x1 - 1, y1 - 1]


def render_overlay(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    *,
    alpha: float = 0.5,
    max_side: int | None = 1024,
    note: str | None = None,
) -> Image.Image:
    """The image with each mask tinted in its own colour and outlined.

    image: ``HxWx3 uint8`` RGB; masks: ``HxW bool`` each, same size. Largest masks are painted first
    so small ones stay visible. ``max_side`` shrinks the preview; ``note`` is written in the corner
    (used to say when the masks come from random weights).
    """
    canvas = image.copy()
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    weight = round(alpha * 256)
    for rank, index in enumerate(order):
        colour = PALETTE[rank % len(PALETTE)]
        window = _window(masks[index])
        if window is None:
            continue
        mask, region = masks[index][window], canvas[window]
        # Integer blend over the mask's bounding box only (a preview: rounding by at most 1 level).
        tinted = (region.astype(np.uint16) * (256 - weight) + colour * weight) >> 8
        np.copyto(region, tinted.astype(np.uint8), where=mask[:, :, None])
        np.copyto(region, colour.astype(np.uint8), where=(mask & ~_erode(mask))[:, :, None])
    result = Image.fromarray(canvas, mode="RGB")
    if max_side and max(result.size) > max_side:
        result.thumbnail((max_side, max_side))
    if note:
        patch, corner = _note_patch(note)
        result.paste(patch, corner)
    return result


@functools.lru_cache(maxsize=16)
def _note_patch(note: str) -> tuple[Image.Image, tuple[int, int]]:
    """``note`` in yellow on a black box, and where its corner goes: drawn once per text (FreeType
    rendering was 7% of the function's CPU when drawn on every overlay), pasted on each."""
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((4, 4), note)
    left, top = int(box[0]) - 3, int(box[1]) - 3
    patch = Image.new("RGB", (int(box[2]) + 3 - left + 1, int(box[3]) + 3 - top + 1), (0, 0, 0))
    ImageDraw.Draw(patch).text((4 - left, 4 - top), note, fill=(255, 255, 0))
    return patch, (left, top)


def overlay_jpeg(image: np.ndarray, masks: Sequence[np.ndarray], **kwargs: Any) -> bytes:
    """JPEG bytes of :func:`render_overlay`."""
    buffer = io.BytesIO()
    render_overlay(image, masks, **kwargs).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _window(mask: np.ndarray) -> tuple[slice, slice] | None:
    """:func:`mask_bounds` grown by one pixel (within the image), so that :func:`_erode` sees the
    same neighbours as on the whole mask; None when the mask is empty."""
    bounds = mask_bounds(mask)
    if bounds is None:
        return None
    x0, y0, x1, y1 = bounds
    height, width = mask.shape
    return slice(max(y0 - 1, 0), min(y1 + 1, height)), slice(max(x0 - 1, 0), min(x1 + 1, width))


def _erode(mask: np.ndarray) -> np.ndarray:
    """One-pixel binary erosion (4-neighbourhood), enough to find outlines."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner
