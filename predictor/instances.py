"""Parsing and validating ``:predict`` instances (see docs/design.md "Predictor request and response").

Pure functions: a JSON instance in, a typed :class:`Instance` out, or a
:class:`~samdrop.errors.PermanentError` that says what to fix.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samdrop.documents import PromptsRecord
from samdrop.errors import InvalidPrompt, InvalidRequest
from samdrop.prompts import MASK_OUTPUTS, check_label, check_tiling

IMAGE_FIELDS = ("gcs_uri", "generation", "image")
PROMPT_FIELDS = ("points", "labels", "boxes", "multimask")
OUTPUT_FIELDS = ("mask_format", "return_logits", "outputs", "label", "tiling")
LEGACY_FIELDS = ("input_point", "input_label")
KNOWN_FIELDS = ("file_path", *IMAGE_FIELDS, *PROMPT_FIELDS, "amg", *OUTPUT_FIELDS, *LEGACY_FIELDS)
MASK_FORMATS = ("rle", "png")

# SamAutomaticMaskGenerator's parameters (and defaults, for ViT-H), plus our ``max_masks``.
AMG_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32,
    "points_per_batch": None,  # None: the engine's setting
    "pred_iou_thresh": None,  # None: the model's own default (SAM 1: 0.88, SAM 2.1: 0.8)
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "crop_n_layers": 0,
    "crop_nms_thresh": 0.7,
    "crop_overlap_ratio": 512 / 1500,
    "crop_n_points_downscale_factor": 1,
    "min_mask_region_area": 0,
    "max_masks": None,  # None: the engine's cap
}
# SAM2AutomaticMaskGenerator's own parameters, taken by SAM 2.1 engines only (refused by others);
# added to a request's amg only when it names them.
SAM2_AMG_OPTIONS: dict[str, Any] = {"mask_threshold": 0.0, "use_m2m": False, "multimask_output": True}
_AMG_INT = ("points_per_side", "points_per_batch", "crop_n_layers", "crop_n_points_downscale_factor",
            "min_mask_region_area", "max_masks")  # fmt: skip
_AMG_UNIT = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh",
             "crop_overlap_ratio")  # fmt: skip


@dataclass(frozen=True)
class Prompts:
    """Prompts for one image, in pixel coordinates of the image as displayed.

    points: ``Nx2 float32`` XY; labels: ``N int64`` (1 foreground, 0 background); boxes: ``Mx4 float32``
    XYXY. With boxes, each box is one prompt and the points (if any) join every box; without boxes,
    all points form one prompt. ``multimask`` None means: three masks for a points-only prompt, one
    otherwise (SAM's own advice).
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    multimask: bool | None = None

    @property
    def count(self) -> int:
        """Number of prompts the decoder runs (one per box, or one for points only)."""
        if self.boxes is not None:
            return len(self.boxes)
        return 1 if self.points is not None else 0

    @property
    def wants_multimask(self) -> bool:
        if self.multimask is not None:
            return self.multimask
        return self.boxes is None

    def to_json(self) -> PromptsRecord:
        """The prompts as ``masks.json`` and the predictor's answer record them."""
        out = PromptsRecord()
        if self.points is not None and self.labels is not None:
            out["points"] = [[float(v) for v in point] for point in self.points.tolist()]
            out["labels"] = [int(label) for label in self.labels.tolist()]
        if self.boxes is not None:
            out["boxes"] = [[float(v) for v in box] for box in self.boxes.tolist()]
        out["multimask"] = self.wants_multimask
        return out


@dataclass(frozen=True)
class Instance:
    """One parsed instance. Exactly one of ``gcs_uri`` and ``image_bytes`` is set."""

    file_path: str | None
    gcs_uri: str | None = None
    image_bytes: bytes | None = None
    prompts: Prompts | None = None  # None: automatic masks
    amg: dict[str, Any] = field(default_factory=dict)
    mask_format: str = "rle"
    return_logits: bool = False
    generation: int | None = None  # the gcs_uri object's generation to read; None: the live one
    label: list[str] | None = None  # one name for every prompt, or one per prompt
    outputs: tuple[str, ...] = ()  # extra per-mask outputs: "polygons"
    tiling: bool | dict[str, int] | None = None  # None: the server's SAMDROP_TILE_ABOVE_PIXELS decides


def parse_instance(raw: Any, parameters: dict[str, Any] | None = None) -> Instance:
    """Validate one instance. ``parameters`` (the request-level dict) supplies defaults for
    ``amg``, ``mask_format``, ``return_logits`` and ``multimask``."""
    if not isinstance(raw, dict):
        raise InvalidRequest(f"an instance must be a JSON object, got {type(raw).__name__}")
    params = parameters or {}
    unknown = sorted(set(raw) - set(KNOWN_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field(s) {unknown}; known fields: {', '.join(KNOWN_FIELDS)}")
    file_path = raw.get("file_path")
    if file_path is not None and not isinstance(file_path, str):
        raise InvalidRequest("file_path must be a string")

    gcs_uri, image_bytes = _image_source(raw)
    points_raw = raw.get("points", raw.get("input_point"))
    labels_raw = raw.get("labels", raw.get("input_label"))
    multimask = raw.get("multimask", params.get("multimask"))
    prompts = parse_prompts(points_raw, labels_raw, raw.get("boxes"), multimask)

    mask_format = raw.get("mask_format", params.get("mask_format", "rle"))
    if mask_format not in MASK_FORMATS:
        raise InvalidRequest(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    return_logits = raw.get("return_logits", params.get("return_logits", False))
    if not isinstance(return_logits, bool):
        raise InvalidRequest("return_logits must be true or false")
    amg = parse_amg({**(params.get("amg") or {}), **(raw.get("amg") or {})})
    generation = _generation(raw.get("generation"), gcs_uri)
    label = raw.get("label")
    if label is not None:
        label = check_label(label, where="label", prompts=prompts.count if prompts is not None else 1)
    outputs = raw.get("outputs", params.get("outputs", []))
    if not isinstance(outputs, list) or any(o not in MASK_OUTPUTS for o in outputs):
        raise InvalidRequest(f"outputs must be a list of {list(MASK_OUTPUTS)}, got {_short(outputs)}")
    tiling = raw.get("tiling", params.get("tiling"))
    if tiling is not None:
        tiling = check_tiling(tiling, where="tiling")
    if return_logits and prompts is None:
        raise InvalidRequest("return_logits needs prompts (points or boxes): automatic masks have no logits")
    if return_logits and tiling not in (None, False):
        raise tiled_logits_refused('"tiling" asks for it')
    return Instance(
        file_path,
        gcs_uri,
        image_bytes,
        prompts,
        amg,
        mask_format,
        return_logits,
        generation=generation,
        label=label,
        outputs=tuple(outputs),
        tiling=tiling,
    )


def parse_prompts(points: Any, labels: Any, boxes: Any, multimask: Any = None) -> Prompts | None:
    """Prompts from JSON lists; None when there are none (automatic masks)."""
    if multimask is not None and not isinstance(multimask, bool):
        raise InvalidPrompt("multimask must be true or false")
    point_array = _array(points, "points", columns=2) if points is not None else None
    box_array = _array(boxes, "boxes", columns=4) if boxes is not None else None
    label_array = None
    if point_array is not None:
        if labels is None:
            raise InvalidPrompt(
                f"{len(point_array)} points were given without labels: add labels (1 or 0 each)"
            )
        label_array = np.asarray(labels)
        if label_array.ndim != 1 or len(label_array) != len(point_array):
            raise InvalidPrompt(
                f"labels must be one per point: {len(point_array)} points but labels {_short(labels)}"
            )
        if not np.isin(label_array, (0, 1)).all() or label_array.dtype.kind not in "iub":
            raise InvalidPrompt(f"labels must be 1 (foreground) or 0 (background), got {_short(labels)}")
        label_array = label_array.astype(np.int64)
    elif labels is not None and len(labels) > 0:
        raise InvalidPrompt("labels were given without points")
    if box_array is not None:
        bad = np.nonzero((box_array[:, 2] < box_array[:, 0]) | (box_array[:, 3] < box_array[:, 1]))[0]
        if len(bad):
            raise InvalidPrompt(
                f"box {int(bad[0])} {box_array[bad[0]].tolist()} has x1 < x0 or y1 < y0: "
                "boxes are [x0, y0, x1, y1]"
            )
    if point_array is None and box_array is None:
        return None
    return Prompts(point_array, label_array, box_array, multimask)


def check_prompts_fit(prompts: Prompts, width: int, height: int) -> None:
    """Raise :class:`InvalidPrompt` if a point or box lies outside a ``width``x``height`` image."""
    if prompts.points is not None:
        outside = (
            (prompts.points < 0).any(axis=1)
            | (prompts.points[:, 0] > width)
            | (prompts.points[:, 1] > height)
        )
        if outside.any():
            index = int(np.argmax(outside))
            raise InvalidPrompt(
                f"point {index} {prompts.points[index].tolist()} lies outside the {width}x{height} image "
                "(points are pixel [x, y] in the image as displayed)"
            )
    if prompts.boxes is not None:
        b = prompts.boxes
        outside = (b[:, :2] < 0).any(axis=1) | (b[:, 2] > width) | (b[:, 3] > height)
        if outside.any():
            index = int(np.argmax(outside))
            raise InvalidPrompt(f"box {index} {b[index].tolist()} lies outside the {width}x{height} image")


def parse_amg(raw: Any) -> dict[str, Any]:
    """Automatic-mask parameters merged over :data:`AMG_DEFAULTS`, type- and range-checked."""
    if not isinstance(raw, dict):
        raise InvalidRequest("amg must be a JSON object of automatic-mask parameters")
    known = (*AMG_DEFAULTS, *SAM2_AMG_OPTIONS)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InvalidRequest(f"unknown amg parameter(s) {unknown}; known: {', '.join(known)}")
    params = {**AMG_DEFAULTS, **raw}
    for name in ("use_m2m", "multimask_output"):
        if name in params and not isinstance(params[name], bool):
            raise InvalidRequest(f"amg.{name} must be true or false, got {params[name]!r}")
    threshold = params.get("mask_threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
        raise InvalidRequest(f"amg.mask_threshold must be a number (a logit), got {threshold!r}")
    for name in _AMG_INT:
        value = params[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InvalidRequest(f"amg.{name} must be a non-negative integer, got {value!r}")
    for name in _AMG_UNIT:
        value = params[name]
        if value is None and AMG_DEFAULTS[name] is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise InvalidRequest(f"amg.{name} must be a number within [0, 1], got {value!r}")
    if not isinstance(params["stability_score_offset"], int | float):
        raise InvalidRequest("amg.stability_score_offset must be a number")
    if not 1 <= params["points_per_side"] <= 128:
        raise InvalidRequest(f"amg.points_per_side must be within 1..128, got {params['points_per_side']}")
    if params["crop_n_layers"] > 3:
        raise InvalidRequest("amg.crop_n_layers must be at most 3")
    if params["crop_n_points_downscale_factor"] < 1:
        raise InvalidRequest("amg.crop_n_points_downscale_factor must be >= 1")
    return params


def refuse_sam2_options(amg: dict[str, Any], model_type: str) -> None:
    """Raise :class:`InvalidRequest` if ``amg`` names a SAM 2.1-only parameter for ``model_type``."""
    named = sorted(set(amg) & set(SAM2_AMG_OPTIONS))
    if named:
        raise InvalidRequest(
            f"amg parameter(s) {named} belong to SAM 2.1's generator; model {model_type} does not take them"
        )


def _image_source(raw: dict[str, Any]) -> tuple[str | None, bytes | None]:
    gcs_uri, image = raw.get("gcs_uri"), raw.get("image")
    if (gcs_uri is None) == (image is None):
        raise InvalidRequest(
            'give exactly one image source: "gcs_uri": "gs://bucket/object" or "image": "<base64>"'
        )
    if gcs_uri is not None:
        if not isinstance(gcs_uri, str) or not gcs_uri.startswith("gs://") or "/" not in gcs_uri[5:]:
            raise InvalidRequest(f"gcs_uri must look like gs://bucket/object, got {_short(gcs_uri)}")
        return gcs_uri, None
    if isinstance(image, dict) and "b64" in image:  # Vertex's {"b64": ...} convention
        image = image["b64"]
    if not isinstance(image, str):
        raise InvalidRequest("image must be a base64 string")
    try:
        return None, base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image is not valid base64") from None


def tiled_logits_refused(why: str) -> InvalidRequest:
    """The error for ``return_logits`` on a tiled image (``why`` it is tiled): the logits are SAM's
    per prompt in the model's frame of the whole image, and a tiled image has no one frame (each
    prompt runs on a window of its own). Refused rather than answered without them."""
    return InvalidRequest(
        f"return_logits is not available for a tiled image ({why}): "
        'send "tiling": false with it, or leave return_logits out'
    )


def _generation(value: Any, gcs_uri: str | None) -> int | None:
    """``"generation"``: a decimal string (or whole number) pinning which version of ``gcs_uri`` to read."""
    if value is None:
        return None
    if gcs_uri is None:
        raise InvalidRequest('"generation" pins a "gcs_uri" object; it makes no sense with "image"')
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 30:
        raise InvalidRequest(
            f'generation must be a decimal string like "1714000000000000", got {_short(value)}'
        )
    return int(text)


def _array(value: Any, name: str, columns: int) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidPrompt(
            f"{name} must be a list of [{'x, y' if columns == 2 else 'x0, y0, x1, y1'}] numbers"
        ) from None
    if array.ndim == 1 and len(array) == columns:  # a single point or box without the outer list
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != columns or len(array) == 0:
        shape = "[[x, y], ...]" if columns == 2 else "[[x0, y0, x1, y1], ...]"
        raise InvalidPrompt(f"{name} must look like {shape}, got {_short(value)}")
    if not np.isfinite(array).all():
        raise InvalidPrompt(f"{name} must be finite numbers")
    return array


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
