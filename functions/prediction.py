"""A raw prediction (one slot of the predictor's ``predictions``) → a checked :class:`Prediction`.

Values may come back as floats where the server sent ints (Vertex's SDK passes predictions
through protobuf ``Value``), so sizes, areas and dimensions are coerced here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from functions.endpoint import BadResponse
from samdrop.errors import ConfigError, PermanentError, TransientError

_OPTIONAL_FLOATS = ("stability_score", "predicted_iou")
_RETRYABLE_CODES = frozenset({TransientError.code, "internal"})


@dataclass(frozen=True)
class Prediction:
    """``masks``: dicts with ``segmentation`` (COCO RLE ``{"size": [H, W], "counts": str}``),
    ``score``, ``box`` (XYXY px), ``area`` (px) and optionally ``stability_score``,
    ``predicted_iou``, ``prompt_index``. ``width``/``height``: the input as displayed, px."""

    width: int
    height: int
    masks: list[dict[str, Any]]
    model: Mapping[str, Any] = field(default_factory=dict)
    prompts: Any = None
    timings_ms: Mapping[str, Any] = field(default_factory=dict)

    @property
    def random_weights(self) -> bool:
        return bool(self.model.get("random_weights"))

    @property
    def model_type(self) -> str | None:
        value = self.model.get("type") or self.model.get("model_type")
        return str(value) if value else None


def parse_prediction(raw: Any, *, where: str) -> Prediction:
    """Check one prediction. A ``{"error": {"code", "message"}}`` slot raises by its code: the
    predictor's ``unavailable`` (storage hiccup) and ``internal`` (its own failure) are worth a
    redelivery (``TransientError``), ``config`` is ``ConfigError``, every other code is the input's
    fault (``PermanentError`` with that code). Anything off-contract raises ``BadResponse``."""
    if not isinstance(raw, Mapping):
        raise BadResponse(f"prediction for {where} is not an object")
    if raw.get("error"):
        error = raw["error"]
        if not isinstance(error, Mapping):
            raise PermanentError(str(error))
        code = str(error.get("code") or "invalid_input")
        message = f"predictor: {error.get('message') or error}"
        if code in _RETRYABLE_CODES:
            raise TransientError(message, code=code)
        if code == ConfigError.code:
            raise ConfigError(message)
        raise PermanentError(str(error.get("message") or error), code=code)
    try:
        width, height = int(raw["width"]), int(raw["height"])
        masks = [_mask(m, height, width) for m in raw.get("masks") or []]
    except (KeyError, TypeError, ValueError) as exc:
        raise BadResponse(f"prediction for {where} is off-contract ({type(exc).__name__}: {exc})") from None
    return Prediction(
        width=width,
        height=height,
        masks=masks,
        model=dict(raw.get("model") or {}),
        prompts=raw.get("prompts"),
        timings_ms=dict(raw.get("timings_ms") or {}),
    )


def _mask(raw: Mapping[str, Any], height: int, width: int) -> dict[str, Any]:
    rle = raw["segmentation"]
    size = [int(rle["size"][0]), int(rle["size"][1])]
    if size != [height, width]:
        raise ValueError(f"mask size {size} differs from the image's [{height}, {width}]")
    if not isinstance(rle["counts"], str):
        raise TypeError("segmentation.counts must be a COCO RLE string (ask for mask_format 'rle')")
    mask: dict[str, Any] = {
        "segmentation": {"size": size, "counts": rle["counts"]},
        "score": float(raw["score"]),
        "box": [float(v) for v in raw["box"]],
        "area": int(raw["area"]),
    }
    for key in _OPTIONAL_FLOATS:
        if raw.get(key) is not None:
            mask[key] = float(raw[key])
    if raw.get("prompt_index") is not None:
        mask["prompt_index"] = int(raw["prompt_index"])
    return mask
