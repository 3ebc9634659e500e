"""The documents a shard writes: per-image ``masks.json`` / ``error.json`` and manifest lines.

``masks.json`` has the same keys as the function's (``functions/segment.py``), plus ``batch_id``
and ``amg``, so a consumer reads single and bulk results alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from samdrop.layout import OutputPaths

RANDOM_WEIGHTS_NOTE = "model has RANDOM WEIGHTS (tiny test model): these masks are meaningless"


def masks_document(
    *,
    input_uri: str,
    generation: int,
    batch_id: str,
    width: int,
    height: int,
    prompts: Mapping[str, Any] | None,
    amg: Mapping[str, Any] | None,
    masks: Sequence[Mapping[str, Any]],
    model: Mapping[str, Any],
    predictor_timings_ms: Mapping[str, float],
    paths: OutputPaths,
) -> dict[str, Any]:
    """``masks``: the engine's mask dicts (``segmentation`` COCO RLE, ``score``, ``box`` XYXY px, …)."""
    mask_uris = [paths.uri(paths.mask(i)) for i in range(len(masks))]
    return {
        "input": input_uri,
        "generation": str(generation),
        "batch_id": batch_id,
        "width": width,
        "height": height,
        "mode": "prompted" if prompts else "automatic",
        "prompts": dict(prompts) if prompts else None,
        "amg": None if prompts else dict(amg or {}),
        "mask_count": len(masks),
        "masks": [
            {"index": i, "png": uri, **mask}
            for i, (uri, mask) in enumerate(zip(mask_uris, masks, strict=True))
        ],
        "model": dict(model),
        "note": RANDOM_WEIGHTS_NOTE if model.get("random_weights") else None,
        "predictor_timings_ms": dict(predictor_timings_ms),
        "outputs": {
            "masks": mask_uris,
            "metadata": paths.uri(paths.masks_json),
            "overlay": paths.uri(paths.overlay),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def error_document(error: Mapping[str, str], input_uri: str, generation: int) -> dict[str, Any]:
    return {
        "code": error["code"],
        "message": error["message"],
        "input": input_uri,
        "generation": str(generation),
    }


def succeeded_line(
    doc: Mapping[str, Any], *, file: str, shard: int, resumed: bool, timings_ms: Mapping[str, float]
) -> dict[str, Any]:
    """A manifest line from a ``masks.json`` document."""
    scores = [float(mask["score"]) for mask in doc.get("masks", [])]
    return {
        "input": doc["input"],
        "file": file,
        "generation": str(doc["generation"]),
        "status": "succeeded",
        "resumed": resumed,
        "shard": shard,
        "mask_count": int(doc["mask_count"]),
        "scores": [round(s, 4) for s in scores],
        "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
        "outputs": dict(doc["outputs"]),
        "error": None,
        "timings_ms": dict(timings_ms),
    }


def failed_line(
    error: Mapping[str, str],
    *,
    input_uri: str,
    file: str,
    generation: int,
    shard: int,
    resumed: bool,
    error_uri: str | None,
    timings_ms: Mapping[str, float],
) -> dict[str, Any]:
    """A manifest line for an image without masks; ``error_uri`` is None when no ``error.json`` was
    written (a transient failure: a re-run tries the image again)."""
    return {
        "input": input_uri,
        "file": file,
        "generation": str(generation),
        "status": "failed",
        "resumed": resumed,
        "shard": shard,
        "mask_count": None,
        "scores": [],
        "mean_score": None,
        "outputs": {"error": error_uri} if error_uri else {},
        "error": {"code": error["code"], "message": error["message"]},
        "timings_ms": dict(timings_ms),
    }
