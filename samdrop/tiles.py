"""Where the tiles of a tiled image lie (the one home of the grid's geometry, shared by the
predictor that cuts the tiles and the overlay that draws them; docs/design.md "Tiling")."""

from __future__ import annotations

import math


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Offsets (px) of the tiles along a side of ``length`` px: stride ``tile - overlap``, the last
    tile moved in to end on the edge; one tile when the side fits in one."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def tile_boxes(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Every tile as ``(x0, y0, x1, y1)`` px, ``x1``/``y1`` exclusive, row-major (tile ``i`` at column
    ``i % columns``, row ``i // columns``)."""
    xs, ys = tile_starts(width, tile, overlap), tile_starts(height, tile, overlap)
    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in ys for x in xs]
