"""Prompts for one image, as users write them: ``samdrop upload --prompts``, the ``samdrop-prompts``
metadata of a single upload, and one entry of a batch's ``prompts.json`` all share this shape::

    {"points": [[x, y], ...], "labels": [1|0, ...], "boxes": [[x0, y0, x1, y1], ...],
     "multimask": bool, "amg": {automatic-mask parameters},
     "label": "car" | ["car", "tree", ...], "outputs": ["polygons"],
     "tiling": true | false | {"tile": 1024, "overlap": 128},
     "text": "car" | ["solar panel", "car", ...], "box_labels": [true|false, ...]}

Coordinates are pixels of the image as displayed. ``labels`` default to 1 (foreground) per point.
``multimask`` left out means three masks for points alone and one per box (:func:`multimask_for`).
``amg`` takes ``SamAutomaticMaskGenerator``'s parameters (:data:`AMG_DEFAULTS`).
``label`` names what the prompts mark (one name for all, or one per box / for the point group); it
flows into ``masks.json``, COCO categories and YOLO classes. ``outputs: ["polygons"]`` adds COCO
polygons to every mask record. ``tiling`` cuts a large image into overlapping tiles and stitches
the masks back (``true``: the server's default tile and overlap; ``false``: never, whatever its size).
``text`` names concepts for SAM 3 (every instance of each in the image; a mask's ``label`` is its
concept, so ``label`` is refused beside it). With ``text``, ``boxes`` are exemplars shown to SAM 3
for every concept, ``box_labels`` saying which are examples of it (true / 1, the default) and which
of what it is not (false / 0); points, ``labels`` and ``multimask`` are refused beside ``text``.
Whether the prompts fit inside the image is the predictor's check (it knows the size).

This module is the one validator of that shape: ``samdrop upload``, the function (upload metadata),
the pipeline (``prompts.json`` entries and the ``_READY`` body's ``amg``) and the predictor (each
``:predict`` instance) call :func:`check_prompts`, so a mistake is refused at the first of them
with the same words; only the ``where`` each names its source with differs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from samdrop import budgets
from samdrop.budgets import DEFAULT_MAX_JSON_DEPTH, loads_limited
from samdrop.concepts import MAX_EXEMPLAR_BOXES, check_concepts
from samdrop.errors import InvalidPrompt

if TYPE_CHECKING:
    from samdrop.settings import Settings

PROMPTS_METADATA_KEY = "samdrop-prompts"
PROMPT_KEYS = (
    "points", "labels", "boxes", "multimask", "amg", "label", "outputs", "tiling", "text", "box_labels"
)  # fmt: skip
# What a concept prompt (``text``) takes beside its names; anything else would be ignored by SAM 3.
TEXT_KEYS = ("text", "boxes", "box_labels", "amg", "outputs", "tiling")
MAX_TILE = 4096
MASK_OUTPUTS = ("polygons",)
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
EXAMPLE = 'example: {"points": [[120, 80]], "labels": [1]} or {"boxes": [[10, 10, 200, 150]]}'


def parse_prompts_json(
    text: str, *, where: str, max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
) -> dict[str, Any] | None:
    """Parse and check prompts JSON from ``where`` (named in errors); None means automatic masks.
    JSON nested deeper than ``max_json_depth`` is refused like any other malformed JSON."""
    try:
        value = loads_limited(text, max_depth=max_json_depth)
    except ValueError as exc:
        raise InvalidPrompt(f"{where} is not valid JSON ({exc}); {EXAMPLE}") from None
    return check_prompts(value, where=where)


def check_prompts(value: Any, *, where: str) -> dict[str, Any] | None:
    """Normalise one prompts object; raises ``InvalidPrompt`` saying what to fix. ``{}`` → None."""
    if not isinstance(value, dict):
        raise InvalidPrompt(f"{where} must be a JSON object; {EXAMPLE}")
    unknown = sorted(set(value) - set(PROMPT_KEYS))
    if unknown:
        raise InvalidPrompt(f"{where} has unknown key(s) {unknown}; allowed: {list(PROMPT_KEYS)}")
    if "text" in value:
        return _check_concepts(value, where=where)
    if "box_labels" in value:
        raise InvalidPrompt(f"{where}.box_labels mark exemplar boxes of text concepts: give them with text")
    prompts: dict[str, Any] = {}
    points = _rows(value.get("points"), 2, f"{where}.points")
    labels = value.get("labels")
    if points:
        labels = [1] * len(points) if labels is None else labels
        if not isinstance(labels, list) or any(
            label not in (0, 1) or isinstance(label, bool) for label in labels
        ):
            raise InvalidPrompt(f"{where}.labels must be a list of 1 (foreground) or 0 (background)")
        if len(labels) != len(points):
            raise InvalidPrompt(
                f"{where} has {len(points)} points but {len(labels)} labels: give one label per point"
            )
        prompts["points"], prompts["labels"] = points, labels
    elif labels:
        raise InvalidPrompt(f"{where}.labels given without points")
    boxes = _rows(value.get("boxes"), 4, f"{where}.boxes")
    for box in boxes:
        if box[2] < box[0] or box[3] < box[1]:
            raise InvalidPrompt(f"{where}.boxes entry {box} is not [x0, y0, x1, y1] with x0 <= x1, y0 <= y1")
    if boxes:
        prompts["boxes"] = boxes
    if "multimask" in value:
        if not isinstance(value["multimask"], bool):
            raise InvalidPrompt(f"{where}.multimask must be true or false")
        prompts["multimask"] = value["multimask"]
    if "label" in value:
        prompts["label"] = check_label(value["label"], where=f"{where}.label", prompts=len(boxes) or 1)
    prompts.update(_shared_keys(value, where=where))
    return prompts or None


def _check_concepts(value: dict[str, Any], *, where: str) -> dict[str, Any]:
    """A concept prompt: ``text`` names (a string or a list), optional exemplar ``boxes`` with
    ``box_labels`` (one per box, true / 1 by default) and the keys every prompt may carry. The
    budgets (how many concepts, how long a name) are :func:`check_budget`'s: they are settings."""
    beside = sorted(set(value) - set(TEXT_KEYS))
    if beside:
        raise InvalidPrompt(
            f"{where} gives {beside} with text: text concepts take only {list(TEXT_KEYS)} "
            "(each mask is labelled with its concept; points go to a SAM 1 / SAM 2.1 request without text)"
        )
    text = value["text"]
    names = [text] if isinstance(text, str) else text
    try:
        prompts: dict[str, Any] = {"text": check_concepts(names, max_concepts=None, max_chars=None)}
    except InvalidPrompt as exc:
        raise InvalidPrompt(f"{where}: {exc.message}") from None
    boxes = _rows(value.get("boxes"), 4, f"{where}.boxes")
    for box in boxes:
        if box[2] <= box[0] or box[3] <= box[1]:
            raise InvalidPrompt(f"{where}.boxes exemplar {box} is not [x0, y0, x1, y1] with x0 < x1, y0 < y1")
    box_labels = value.get("box_labels", [True] * len(boxes))
    if not isinstance(box_labels, list) or any(label not in (0, 1) for label in box_labels):
        raise InvalidPrompt(
            f"{where}.box_labels must be a list of true / 1 (an example of the concept) or false / 0 (not)"
        )
    if len(box_labels) != len(boxes):
        raise InvalidPrompt(f"{where} has {len(boxes)} exemplar boxes but {len(box_labels)} box_labels")
    if boxes:
        prompts["boxes"], prompts["box_labels"] = boxes, [bool(label) for label in box_labels]
    prompts.update(_shared_keys(value, where=where))
    return prompts


def _shared_keys(value: dict[str, Any], *, where: str) -> dict[str, Any]:
    """The keys every kind of prompt may carry, checked: ``amg`` (as given: the defaults stay the
    engine's), ``outputs`` and ``tiling``."""
    shared: dict[str, Any] = {}
    if "amg" in value:
        check_amg(value["amg"], where=f"{where}.amg")
        shared["amg"] = dict(value["amg"])
    if "outputs" in value:
        outputs = value["outputs"]
        if not isinstance(outputs, list) or any(o not in MASK_OUTPUTS for o in outputs):
            raise InvalidPrompt(f"{where}.outputs must be a list of {list(MASK_OUTPUTS)}")
        shared["outputs"] = outputs
    if "tiling" in value:
        shared["tiling"] = check_tiling(value["tiling"], where=f"{where}.tiling")
    return shared


def multimask_for(boxes: int, multimask: bool | None) -> bool:
    """Whether a prompt makes three masks: ``multimask`` as asked, else three for points alone and
    one per box (SAM's own advice: a box is unambiguous, a single point is not)."""
    return multimask if multimask is not None else boxes == 0


def check_amg(value: Any, *, where: str = "amg") -> dict[str, Any]:
    """Automatic-mask parameters merged over :data:`AMG_DEFAULTS`, type- and range-checked."""
    if not isinstance(value, dict):
        raise InvalidPrompt(f"{where} must be an object of automatic-mask parameters")
    known = (*AMG_DEFAULTS, *SAM2_AMG_OPTIONS)
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise InvalidPrompt(f"{where} has unknown parameter(s) {unknown}; known: {', '.join(known)}")
    params = {**AMG_DEFAULTS, **value}
    for name in ("use_m2m", "multimask_output"):
        if name in params and not isinstance(params[name], bool):
            raise InvalidPrompt(f"{where}.{name} must be true or false, got {params[name]!r}")
    threshold = params.get("mask_threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
        raise InvalidPrompt(f"{where}.mask_threshold must be a number (a logit), got {threshold!r}")
    for name in _AMG_INT:
        number = params[name]
        if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 0):
            raise InvalidPrompt(f"{where}.{name} must be a non-negative integer, got {number!r}")
    for name in _AMG_UNIT:
        number = params[name]
        if number is None and AMG_DEFAULTS[name] is None:
            continue
        if isinstance(number, bool) or not isinstance(number, int | float) or not 0 <= number <= 1:
            raise InvalidPrompt(f"{where}.{name} must be a number within [0, 1], got {number!r}")
    offset = params["stability_score_offset"]
    if isinstance(offset, bool) or not isinstance(offset, int | float) or not math.isfinite(offset):
        raise InvalidPrompt(f"{where}.stability_score_offset must be a number")
    if not 1 <= params["points_per_side"] <= 128:
        raise InvalidPrompt(f"{where}.points_per_side must be within 1..128, got {params['points_per_side']}")
    if params["crop_n_layers"] > 3:
        raise InvalidPrompt(f"{where}.crop_n_layers must be at most 3")
    if params["crop_n_points_downscale_factor"] < 1:
        raise InvalidPrompt(f"{where}.crop_n_points_downscale_factor must be >= 1")
    return params


def check_budget(prompts: Mapping[str, Any] | None, settings: Settings) -> None:
    """Refuse checked ``prompts`` over ``SAMDROP_MAX_PROMPTS`` / ``SAMDROP_MAX_MASKS``, text concepts
    over ``SAMDROP_MAX_CONCEPTS`` / ``SAMDROP_MAX_CONCEPT_CHARS`` (:mod:`samdrop.concepts`), or
    automatic-mask parameters (``amg``, when given) over ``SAMDROP_MAX_AUTO_POINTS``
    (:mod:`samdrop.budgets`)."""
    prompts = prompts or {}
    if prompts.get("text"):
        check_concepts(
            list(prompts["text"]), max_concepts=settings.max_concepts, max_chars=settings.max_concept_chars
        )
        exemplars = len(prompts.get("boxes") or [])
        if exemplars > MAX_EXEMPLAR_BOXES:
            raise InvalidPrompt(f"{exemplars} exemplar boxes; at most {MAX_EXEMPLAR_BOXES} per image")
        return
    boxes, points = len(prompts.get("boxes") or []), len(prompts.get("points") or [])
    if boxes or points:
        budgets.check_prompts(
            boxes,
            points,
            multimask_for(boxes, prompts.get("multimask")),
            max_prompts=settings.max_prompts,
            max_masks=settings.max_masks,
        )
    elif prompts.get("amg") is not None:
        budgets.check_auto_points(dict(prompts["amg"]), limit=settings.max_auto_points)


def check_tiling(value: Any, *, where: str) -> bool | dict[str, int]:
    """``true``, ``false`` or ``{"tile": px, "overlap": px}`` (either key may be left to the default)."""
    if isinstance(value, bool):
        return value
    example = '{"tile": 1024, "overlap": 128}'
    if not isinstance(value, dict) or set(value) - {"tile", "overlap"}:
        raise InvalidPrompt(f"{where} must be true, false or {example}")
    for key, low in (("tile", 64), ("overlap", 0)):
        number = value.get(key, low)
        if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= MAX_TILE:
            raise InvalidPrompt(f"{where}.{key} must be an integer within {low}..{MAX_TILE} px")
    if "tile" in value and 2 * value.get("overlap", 0) >= value["tile"]:
        raise InvalidPrompt(f"{where}: the overlap must be under half the tile ({example})")
    return {key: int(number) for key, number in value.items()}


def check_label(value: Any, *, where: str, prompts: int) -> list[str]:
    """A prompts entry's ``label`` as a list: one name for every prompt, or one per prompt."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise InvalidPrompt(f'{where} must be a name ("car") or a list of names, one per box')
    if len(names) not in (1, prompts):
        raise InvalidPrompt(f"{where} has {len(names)} names for {prompts} prompts: give one, or one per box")
    return list(names)


def _rows(value: Any, width: int, name: str) -> list[list[float]]:
    if value is None:
        return []
    shape = "[[x, y], ...]" if width == 2 else "[[x0, y0, x1, y1], ...]"
    if not isinstance(value, list):
        raise InvalidPrompt(f"{name} must be a list {shape} in pixels")
    for row in value:
        ok = isinstance(row, list) and len(row) == width
        if not ok or not all(_is_coordinate(v) for v in row):
            raise InvalidPrompt(f"{name} entry {str(row)[:60]} is not {width} non-negative numbers ({shape})")
    return [list(row) for row in value]


def _is_coordinate(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    )
