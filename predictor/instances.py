"""Parsing and validating ``:predict`` instances (see docs/design.md "Predictor request and response").

Pure functions: a JSON instance in, a typed :class:`Instance` out, or a
:class:`~samdrop.errors.PermanentError` that says what to fix.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samdrop.documents import PromptsRecord
from samdrop.errors import InvalidPrompt, InvalidRequest
from samdrop.models import model_info, names, text_refused
from samdrop.prompts import (
    AMG_DEFAULTS,
    PROMPT_KEYS,
    SAM2_AMG_OPTIONS,
    check_amg,
    check_prompts,
    multimask_for,
)

IMAGE_FIELDS = ("gcs_uri", "generation", "image")
PROMPT_FIELDS = ("points", "labels", "boxes", "multimask", "text", "box_labels")
# What the request-level "parameters" may give every instance (an instance's own value wins).
PARAMETER_DEFAULTS = ("multimask", "outputs", "tiling")
OUTPUT_FIELDS = ("mask_format", "return_logits", "outputs", "label", "tiling")
LEGACY_FIELDS = ("input_point", "input_label")
KNOWN_FIELDS = ("file_path", *IMAGE_FIELDS, *PROMPT_FIELDS, "amg", *OUTPUT_FIELDS, *LEGACY_FIELDS)
MASK_FORMATS = ("rle", "png")


@dataclass(frozen=True)
class Prompts:
    """Prompts for one image, in pixel coordinates of the image as displayed.

    points: ``Nx2 float32`` XY; labels: ``N int64`` (1 foreground, 0 background); boxes: ``Mx4 float32``
    XYXY. With boxes, each box is one prompt and the points (if any) join every box; without boxes,
    all points form one prompt. ``multimask`` None means :func:`samdrop.prompts.multimask_for` decides.
    text: SAM 3 concept names (each one prompt; then ``boxes`` are exemplars shown with every
    concept and ``box_labels`` ``M bool`` say which are positive; no points).
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    multimask: bool | None = None
    text: tuple[str, ...] | None = None
    box_labels: tuple[bool, ...] | None = None

    @property
    def count(self) -> int:
        """Number of prompts the decoder runs (one per box, or one for points only; one per concept)."""
        if self.text is not None:
            return len(self.text)
        if self.boxes is not None:
            return len(self.boxes)
        return 1 if self.points is not None else 0

    @property
    def wants_multimask(self) -> bool:
        return multimask_for(len(self.boxes) if self.boxes is not None else 0, self.multimask)

    def to_json(self) -> PromptsRecord:
        """The prompts as ``masks.json`` and the predictor's answer record them."""
        out = PromptsRecord()
        if self.points is not None and self.labels is not None:
            out["points"] = [[float(v) for v in point] for point in self.points.tolist()]
            out["labels"] = [int(label) for label in self.labels.tolist()]
        if self.boxes is not None:
            out["boxes"] = [[float(v) for v in box] for box in self.boxes.tolist()]
        if self.text is not None:
            out["text"] = list(self.text)
            if self.box_labels is not None:
                out["box_labels"] = list(self.box_labels)
            return out
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


def parse_instance(
    raw: Any, parameters: dict[str, Any] | None = None, *, where: str = "instance"
) -> Instance:
    """Validate one instance. ``parameters`` (the request-level dict) supplies defaults for
    ``amg``, ``mask_format``, ``return_logits``, ``multimask``, ``outputs`` and ``tiling``. The
    prompt fields go through :func:`samdrop.prompts.check_prompts` (``where`` names the instance in
    its messages), the one validator every source of prompts shares."""
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
    checked = check_prompts(_prompt_fields(raw, params), where=where) or {}
    prompts = prompts_from(checked)

    mask_format = raw.get("mask_format", params.get("mask_format", "rle"))
    if mask_format not in MASK_FORMATS:
        raise InvalidRequest(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    return_logits = raw.get("return_logits", params.get("return_logits", False))
    if not isinstance(return_logits, bool):
        raise InvalidRequest("return_logits must be true or false")
    generation = _generation(raw.get("generation"), gcs_uri)
    tiling = checked.get("tiling")
    if return_logits and (prompts is None or prompts.text is not None):
        raise InvalidRequest(
            "return_logits needs point or box prompts: automatic masks and text concepts have no logits"
        )
    if return_logits and tiling not in (None, False):
        raise tiled_logits_refused('"tiling" asks for it')
    return Instance(
        file_path,
        gcs_uri,
        image_bytes,
        prompts,
        {**AMG_DEFAULTS, **checked.get("amg", {})},
        mask_format,
        return_logits,
        generation=generation,
        label=checked.get("label"),
        outputs=tuple(checked.get("outputs", ())),
        tiling=tiling,
    )


def _prompt_fields(raw: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The instance's prompts object (the shape :mod:`samdrop.prompts` checks): its own fields, the
    older ``input_point``/``input_label`` names, and the request parameters' defaults."""
    fields = {key: raw[key] for key in PROMPT_KEYS if key in raw and key != "amg"}
    for legacy, key in (("input_point", "points"), ("input_label", "labels")):
        if legacy in raw and key not in raw:
            fields[key] = raw[legacy]
    for key in PARAMETER_DEFAULTS:
        if key == "multimask" and "text" in fields:
            continue  # a request-wide default for its point and box prompts, not for concepts
        if key not in fields and params.get(key) is not None:
            fields[key] = params[key]
    amg = raw.get("amg")
    if params.get("amg") is not None:  # the request's parameters under the instance's own
        check_amg(params["amg"], where="parameters.amg")
        amg = {**params["amg"], **amg} if isinstance(amg, dict) else params["amg"] if amg is None else amg
    if amg is not None:
        fields["amg"] = amg
    return fields


def prompts_from(checked: dict[str, Any], *, multimask: bool | None = None) -> Prompts | None:
    """The numpy form of prompts :func:`samdrop.prompts.check_prompts` returned (no check again);
    None when there are none (automatic masks). ``multimask``: the default when the prompts say none
    (a batch's ``_READY`` body)."""
    points, boxes = checked.get("points"), checked.get("boxes")
    if checked.get("text"):
        return Prompts(
            boxes=np.asarray(boxes, dtype=np.float32) if boxes else None,
            text=tuple(checked["text"]),
            box_labels=tuple(checked["box_labels"]) if boxes else None,
        )
    if not points and not boxes:
        return None
    return Prompts(
        np.asarray(points, dtype=np.float32) if points else None,
        np.asarray(checked["labels"], dtype=np.int64) if points else None,
        np.asarray(boxes, dtype=np.float32) if boxes else None,
        checked.get("multimask", multimask),
    )


def parse_prompts(
    points: Any, labels: Any = None, boxes: Any = None, multimask: Any = None, *, where: str = "prompts"
) -> Prompts | None:
    """Prompts from JSON lists, checked by :func:`samdrop.prompts.check_prompts`; None when there
    are none (automatic masks)."""
    raw = {"points": points, "labels": labels, "boxes": boxes, "multimask": multimask}
    return prompts_from(check_prompts({k: v for k, v in raw.items() if v is not None}, where=where) or {})


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


def check_model_takes(prompts: Prompts | None, model_type: str) -> None:
    """Raise :class:`InvalidRequest` when ``model_type`` cannot answer ``prompts``: text concepts
    to a model without text (naming the types that take it), or anything but text to a text-only
    model (SAM 3 through transformers' ``Sam3Model`` segments concepts, not points or a grid)."""
    info = model_info(model_type)
    has_text = prompts is not None and prompts.text is not None
    if has_text and not info.text:
        raise InvalidRequest(text_refused(model_type))
    if not has_text and info.text and not (info.prompts or info.automatic):
        what = "points and boxes" if prompts is not None else "automatic masks (no prompts)"
        raise InvalidRequest(
            f"model {model_type} segments text concepts only and cannot make {what}: send "
            f'{{"text": ["car"]}} (optionally with exemplar boxes), or use a SAM 2.1 type '
            f"({', '.join(names('sam2.1'))}) for points, boxes and automatic masks"
        )


def refuse_sam2_options(amg: dict[str, Any], model_type: str) -> None:
    """Raise :class:`InvalidPrompt` if ``amg`` names a SAM 2.1-only parameter for ``model_type``."""
    named = sorted(set(amg) & set(SAM2_AMG_OPTIONS))
    if named:
        raise InvalidPrompt(
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


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
