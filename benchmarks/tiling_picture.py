"""docs/usage.md's picture of a stitched result: ``docs/tiling-stitched.jpg``. Not a test.

A 1800x1800 scene with a ring-shaped object (a hole, and an arm reaching into two tiles) across the
four tiles of a 1024/128 grid, and a small square in one tile. The masks come from a stand-in mask
source (each tile's mask is the true object's pixels within that tile; ``tiny``'s random weights
would draw noise), run through ``predictor.tiling.segment_tiles`` exactly as the engine's are.
Left: the pieces as the tiles gave them (what painting tiles over each other leaves); right: the
stitched masks, one per object. White lines: the tile grid.

    python benchmarks/tiling_picture.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predictor.engine import Job  # noqa: E402
from predictor.tiling import Tiling, segment_tiles, tile_grid  # noqa: E402
from samdrop.masks import render_overlay, rle_to_mask  # noqa: E402
from samdrop.outputs import draw_tile_grid  # noqa: E402
from tests.scenes import ObjectPixels  # noqa: E402

SIDE = 1800
TILING = Tiling(1024, 128)


def scene() -> np.ndarray:
    yy, xx = np.mgrid[:SIDE, :SIDE]
    c = SIDE // 2
    ring = ((yy - c) ** 2 + (xx - c) ** 2 < 260**2) & ((yy - c) ** 2 + (xx - c) ** 2 > 60**2)
    ring |= (abs(yy - c - 40) < 15) & (abs(xx - c) < 420)
    image = np.full((SIDE, SIDE, 3), (70, 90, 60), dtype=np.uint8)
    image[ring] = (255, 1, 0)
    image[40:120, 60:200] = (255, 2, 0)
    return image


def main() -> None:
    image = scene()
    shown = image.copy()
    shown[image[..., 0] == 255] = (150, 150, 150)  # the objects in grey under the masks
    engine = ObjectPixels()
    grid = tile_grid(SIDE, SIDE, TILING)
    pieces = []
    for tile in grid.tiles:  # what each tile alone gives, placed in the full image
        crop = np.ascontiguousarray(image[tile.y0 : tile.y1, tile.x0 : tile.x1])
        for record in engine.run([Job(crop)])[0].masks:
            full = np.zeros((SIDE, SIDE), dtype=bool)
            full[tile.y0 : tile.y1, tile.x0 : tile.x1] = rle_to_mask(record.rle)
            pieces.append(full)
    stitched = [rle_to_mask(m.rle) for m in segment_tiles(engine, Job(image), TILING).masks]
    tiled = {"tile": TILING.tile, "overlap": TILING.overlap, "tiles": len(grid.tiles), "grid": [2, 2]}
    base = draw_tile_grid(shown, tiled, SIDE, SIDE)  # type: ignore[arg-type]
    left = render_overlay(base, pieces, max_side=600, note=f"per tile: {len(pieces)} pieces")
    right = render_overlay(base, stitched, max_side=600, note=f"stitched: {len(stitched)} masks")
    both = Image.new("RGB", (1210, 600), (255, 255, 255))
    both.paste(left, (0, 0))
    both.paste(right, (610, 0))
    out = ROOT / "docs" / "tiling-stitched.jpg"
    both.save(out, quality=85)
    print(out, len(pieces), "pieces ->", len(stitched), "masks")


if __name__ == "__main__":
    main()
