"""Small helpers for tests."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def encode(image: np.ndarray | Image.Image, fmt: str = "JPEG", **save: object) -> bytes:
    """Bytes of ``image`` saved as ``fmt``."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def json_shape(value: Any) -> Any:
    """Keys and JSON types of a document, recursively (a list by its first item): what two writers
    of the same document must agree on."""
    if isinstance(value, dict):
        return {key: json_shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_shape(value[0])] if value else []
    return type(value).__name__
