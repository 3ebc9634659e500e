"""Small helpers for tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(image: np.ndarray | Image.Image, fmt: str = "JPEG", **save: object) -> bytes:
    """Bytes of ``image`` saved as ``fmt``."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **save)
    return buffer.getvalue()
