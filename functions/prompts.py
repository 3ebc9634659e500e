"""Prompts that travel with an upload (custom metadata ``samdrop-prompts``) → a predictor instance."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from functions.events import UploadEvent
from samdrop.errors import InvalidPrompt

PROMPTS_KEY = "samdrop-prompts"
_KEYS = ("points", "labels", "boxes", "multimask", "amg")


def prompts_from_metadata(metadata: Mapping[str, str] | None) -> dict[str, Any] | None:
    """Parse ``samdrop-prompts``: ``{"points": Nx2 px XY, "labels": N of 1|0, "boxes": Mx4 px XYXY,
    "multimask"?: bool, "amg"?: {...}}``. None (automatic masks) when the key is absent or ``{}``.
    ``labels`` default to 1 (foreground) per point. Raises ``InvalidPrompt`` saying what to fix."""
    raw = (metadata or {}).get(PROMPTS_KEY)
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidPrompt(f"metadata {PROMPTS_KEY} is not valid JSON ({exc}); {_EXAMPLE}") from None
    if not isinstance(value, dict):
        raise InvalidPrompt(f"metadata {PROMPTS_KEY} must be a JSON object; {_EXAMPLE}")
    unknown = sorted(set(value) - set(_KEYS))
    if unknown:
        raise InvalidPrompt(f"metadata {PROMPTS_KEY} has unknown key(s) {unknown}; allowed: {list(_KEYS)}")
    prompts: dict[str, Any] = {}
    points = _rows(value.get("points"), 2, "points")
    if points:
        labels = value.get("labels")
        if labels is None:
            labels = [1] * len(points)
        if not isinstance(labels, list) or any(
            label not in (0, 1) or isinstance(label, bool) for label in labels
        ):
            raise InvalidPrompt(f"{PROMPTS_KEY}.labels must be a list of 1 (foreground) or 0 (background)")
        if len(labels) != len(points):
            raise InvalidPrompt(f"{PROMPTS_KEY} has {len(points)} points but {len(labels)} labels")
        prompts["points"], prompts["labels"] = points, labels
    elif value.get("labels"):
        raise InvalidPrompt(f"{PROMPTS_KEY}.labels given without points")
    boxes = _rows(value.get("boxes"), 4, "boxes")
    for box in boxes:
        if box[2] < box[0] or box[3] < box[1]:
            raise InvalidPrompt(
                f"{PROMPTS_KEY}.boxes entry {box} is not [x0, y0, x1, y1] with x0<=x1, y0<=y1"
            )
    if boxes:
        prompts["boxes"] = boxes
    if "multimask" in value:
        if not isinstance(value["multimask"], bool):
            raise InvalidPrompt(f"{PROMPTS_KEY}.multimask must be true or false")
        prompts["multimask"] = value["multimask"]
    if "amg" in value:
        if not isinstance(value["amg"], dict):
            raise InvalidPrompt(f"{PROMPTS_KEY}.amg must be an object of automatic-mask parameters")
        prompts["amg"] = value["amg"]
    return prompts or None


def build_instance(event: UploadEvent, prompts: Mapping[str, Any] | None) -> dict[str, Any]:
    """The predictor instance for one upload: by ``gs://`` reference, never the bytes themselves."""
    instance: dict[str, Any] = {"gcs_uri": event.uri, "file_path": event.name, "mask_format": "rle"}
    instance.update(prompts or {})
    return instance


def _rows(value: Any, width: int, name: str) -> list[list[float]]:
    if value is None:
        return []
    ok = isinstance(value, list) and all(
        isinstance(row, list)
        and len(row) == width
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in row)
        for row in value
    )
    if not ok:
        shape = "[[x, y], ...]" if width == 2 else "[[x0, y0, x1, y1], ...]"
        raise InvalidPrompt(f"{PROMPTS_KEY}.{name} must be {shape} in pixels, got {str(value)[:80]}")
    return [list(row) for row in value]


_EXAMPLE = 'example: {"points": [[120, 80]], "labels": [1]} or {"boxes": [[10, 10, 200, 150]]}'
