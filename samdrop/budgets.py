"""Budgets: what one upload or request may cost, checked before any work (docs/operations.md "Limits").

Every limit is a :class:`~samdrop.settings.Settings` field, and every refusal names the variable that
sets it (``... exceeds SAMDROP_MAX_PROMPTS=64``), so the user knows what to change and the operator
what to raise. Pure functions of numbers: the function, the predictor and the engine all call them.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from samdrop.errors import ImageTooLarge, InvalidImage, InvalidPrompt, InvalidRequest

# The model's input side: SAM resizes an image's long side to this many pixels.
MODEL_SIDE = 1024
# Memory one grid point costs in a decoder batch: the decoder's own tensors (measured ~25 MB per
# point on a CPU, whatever the image size; SAM's mask decoder is the same for every model type), plus
# three fp32 masks upsampled to the image (256 points on a 12 MP photo: ~37 GB, issue #10).
DECODER_BYTES_PER_POINT = 32 * 2**20
DECODER_BYTES_PER_POINT_PIXEL = 3 * 4
# SAMDROP_MAX_JSON_DEPTH's default, for the readers that run before settings exist.
DEFAULT_MAX_JSON_DEPTH = 32
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]")


class JsonTooDeep(ValueError):
    """JSON nested deeper than the limit (a ``ValueError``, like every other malformed JSON)."""


def json_depth(text: str | bytes) -> int:
    """How deeply arrays and objects nest in JSON ``text`` (0 for a scalar), without parsing it."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    return max(accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def loads_limited(text: str | bytes, *, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` (``SAMDROP_MAX_JSON_DEPTH``)
    with :class:`JsonTooDeep` instead of a ``RecursionError``. Other malformed JSON raises
    ``ValueError`` as ``json.loads`` does."""
    depth = json_depth(text)
    if depth > max_depth:
        raise JsonTooDeep(f"JSON nested {depth} levels deep exceeds SAMDROP_MAX_JSON_DEPTH={max_depth}")
    return json.loads(text)


def check_input_bytes(size: int | None, *, limit: int, name: str) -> None:
    """Refuse an upload of ``size`` bytes (None: unknown, checked later) above ``SAMDROP_MAX_INPUT_BYTES``."""
    if size is not None and size > limit:
        raise ImageTooLarge(
            f"{name} is {size} bytes, which exceeds SAMDROP_MAX_INPUT_BYTES={limit}: "
            "upload a smaller (re-compressed or downscaled) image"
        )


def check_object_name(name: str, *, limit: int) -> None:
    """Refuse an output object name longer than ``limit`` UTF-8 bytes (Cloud Storage allows 1024)."""
    size = len(name.encode("utf-8"))
    if size > limit:
        raise InvalidRequest(
            f"the output name {name[:60]!r}... would be {size} bytes, which exceeds "
            f"SAMDROP_MAX_OBJECT_NAME_BYTES={limit}: use a shorter object name"
        )


def check_image_shape(width: int, height: int, *, max_aspect_ratio: float, name: str) -> None:
    """Refuse an image whose short side would shrink to nothing at the model's input size."""
    short, long = min(width, height), max(width, height)
    if short <= 0 or long / short > max_aspect_ratio or short * MODEL_SIDE / long < 1:
        raise InvalidImage(
            f"{name} is {width}x{height}: its long side is {long / max(short, 1):.0f} times its short "
            f"side, which exceeds SAMDROP_MAX_ASPECT_RATIO={max_aspect_ratio:g} (the model sees a "
            f"{MODEL_SIDE} px square): crop or pad it"
        )


def check_instances(count: int, *, limit: int) -> None:
    if count > limit:
        raise InvalidRequest(
            f"{count} instances in one request exceeds SAMDROP_MAX_INSTANCES={limit}: send fewer per request"
        )


def check_request_bytes(size: int, *, limit: int) -> None:
    if size > limit:
        raise InvalidRequest(
            f"the request body is {size} bytes, which exceeds SAMDROP_MAX_REQUEST_BYTES={limit}: "
            'send images by "gcs_uri" or fewer instances per request'
        )


def check_prompts(boxes: int, points: int, multimask: bool, *, max_prompts: int, max_masks: int) -> None:
    """Refuse more than ``max_prompts`` boxes or points, or prompts that would make more masks than
    ``max_masks`` (a box is one prompt; points alone are one prompt; multimask makes 3 masks each)."""
    for count, what in ((boxes, "boxes"), (points, "points")):
        if count > max_prompts:
            raise InvalidPrompt(
                f"{count} {what} for one image exceeds SAMDROP_MAX_PROMPTS={max_prompts}: "
                "split them over several uploads"
            )
    prompts = boxes if boxes else (1 if points else 0)
    masks = prompts * (3 if multimask else 1)
    if masks > max_masks:
        raise InvalidPrompt(
            f"{prompts} prompt(s) with multimask={str(multimask).lower()} make {masks} masks, which "
            f"exceeds SAMDROP_MAX_MASKS={max_masks}: use fewer boxes or multimask false"
        )


def auto_points(points_per_side: int, crop_n_layers: int = 0, downscale: int = 1) -> int:
    """Grid points the automatic mask generator decodes for one image, over all crop layers
    (layer ``i`` has ``4**i`` crops of ``(points_per_side // downscale**i)**2`` points each)."""
    return sum(
        (4**layer) * int(points_per_side / (downscale**layer)) ** 2 for layer in range(crop_n_layers + 1)
    )


def check_auto_points(amg: dict[str, Any], *, limit: int) -> None:
    """Refuse automatic-mask parameters (``points_per_side``, ``crop_n_layers``,
    ``crop_n_points_downscale_factor``) whose grids exceed ``SAMDROP_MAX_AUTO_POINTS`` in total."""
    total = auto_points(
        int(amg.get("points_per_side") or 32),
        int(amg.get("crop_n_layers") or 0),
        max(1, int(amg.get("crop_n_points_downscale_factor") or 1)),
    )
    if total > limit:
        raise InvalidRequest(
            f"automatic masks with points_per_side={amg.get('points_per_side')} and crop_n_layers="
            f"{amg.get('crop_n_layers') or 0} decode {total} points, which exceeds "
            f"SAMDROP_MAX_AUTO_POINTS={limit}: lower points_per_side or crop_n_layers"
        )


def points_per_batch_for(requested: int, width: int, height: int, *, cap: int, memory_bytes: int) -> int:
    """The automatic-mask points per decoder call for a ``width``x``height`` image: ``requested``,
    at most ``cap`` (``SAMDROP_MAX_POINTS_PER_BATCH``) and at most what ``memory_bytes`` holds of
    decoder tensors and full-size masks (:data:`DECODER_BYTES_PER_POINT`,
    :data:`DECODER_BYTES_PER_POINT_PIXEL`). Never below 1: it changes memory and speed, never the masks."""
    fits = memory_bytes // (DECODER_BYTES_PER_POINT + DECODER_BYTES_PER_POINT_PIXEL * width * height)
    return max(1, min(requested, cap, fits))
