"""An in-memory store for the pipeline's unit tests: the function's FakeStore plus ``list_tree``."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from samdrop.storage import ObjectInfo

from .function_fakes import BUCKET, RESULTS, FakeStore

__all__ = ["BUCKET", "RESULTS", "TreeStore", "png"]


@dataclass
class TreeStore(FakeStore):
    def list_tree(self, bucket: str, prefix: str) -> dict[str, ObjectInfo]:
        self._fault("list_tree", prefix)
        with self._lock:
            return {
                name: self._info(name, v)
                for (b, name), v in self.objects.items()
                if b == bucket and name.startswith(prefix)
            }

    def writes(self) -> list[str]:
        return [name for op, name in self.ops if op == "write"]


def png(width: int = 96, height: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), rng.integers(0, 255, 3), dtype=np.uint8)
    pixels[10:30, 10:40] = rng.integers(0, 255, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
