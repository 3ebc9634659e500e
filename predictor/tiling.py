"""Large images: cut into overlapping tiles, segmented tile by tile, stitched back at full resolution.

Automatic masks run on every tile of a grid (tiles of ``tile`` px sharing ``overlap`` px with their
neighbours; the last row and column are moved in to end on the image's edge). Tiles go through the
same engine, ``engine.batch_size`` at a time (one encoder pass per batch). Each tile's masks are kept
as *pieces*: their tight box and the box-cropped mask as a COCO RLE, never a full-resolution array.
Two pieces of overlapping tiles are the same object when, inside the band the two tiles share, the
intersection of the pieces covers at least ``MATCH_IOS`` of the smaller one; matched pieces are
unioned into one mask with one id (union-find, so an object cut by four tiles comes out whole).
Merged masks whose IoU still exceeds ``DUPLICATE_IOU`` keep only the better-scored one.

Text concepts (SAM 3) run over the same grid: every tile is asked every concept, and only pieces
of the same concept are matched and merged, so a stitched mask keeps its ``label``. A concept with
exemplar boxes runs whole (the boxes belong to the whole image's coordinates).

Point and box prompts are routed instead: each box (with the points, if any) or the point group
runs on a window around it at native resolution (a tile-sized window, larger for a box that does
not fit one), and its masks are written back at their place in the full image.

Memory: the image itself, one batch of tiles, the pieces as RLE, and one merged mask at a time
(encoded column strip by column strip). See docs/design.md "Tiling".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils

from predictor.engine import Job, MaskSet
from predictor.instances import Prompts
from samdrop.documents import MaskRecord, Rle, TilingRecord
from samdrop.masks import mask_bounds, rle_to_mask
from samdrop.settings import Settings
from samdrop.tiles import tile_boxes, tile_starts

if TYPE_CHECKING:
    from predictor.backends import Engine

MATCH_IOS = 0.5  # intersection over the smaller piece, within the shared band
DUPLICATE_IOU = 0.9
ENCODE_BLOCK = 256  # columns encoded at a time when a stitched mask becomes a full-size RLE


@dataclass(frozen=True)
class Tiling:
    """``tile``: side of a tile, px; ``overlap``: px neighbouring tiles share."""

    tile: int
    overlap: int


@dataclass(frozen=True)
class Tile:
    """Tile ``index`` of the grid: pixels ``[x0, x1) x [y0, y1)`` of the full image."""

    index: int
    x0: int
    y0: int
    x1: int
    y1: int

    def intersect(self, other: Tile) -> tuple[int, int, int, int] | None:
        x0, y0 = max(self.x0, other.x0), max(self.y0, other.y0)
        x1, y1 = min(self.x1, other.x1), min(self.y1, other.y1)
        return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


@dataclass(frozen=True)
class Grid:
    columns: int
    rows: int
    tiles: list[Tile]


def resolve_tiling(requested: Any, width: int, height: int, settings: Settings) -> Tiling | None:
    """How to tile a ``width``x``height`` image: ``requested`` is the prompts' ``tiling`` as checked by
    :func:`samdrop.prompts.check_tiling` (None: not asked, ``False``: never, ``True``: the default
    tile and overlap, ``{"tile", "overlap"}``); not asked means tiling above
    ``SAMDROP_TILE_ABOVE_PIXELS`` (when set)."""
    default = Tiling(settings.tile_size, settings.tile_overlap)
    if requested is None:
        above = settings.tile_above_pixels
        return default if above and width * height > above else None
    if requested is False:
        return None
    if requested is True:
        return default
    return Tiling(int(requested.get("tile", default.tile)), int(requested.get("overlap", default.overlap)))


def tile_grid(width: int, height: int, tiling: Tiling) -> Grid:
    """Row-major tiles covering the image; tile ``i`` is at column ``i % columns``, row ``i // columns``."""
    columns = len(tile_starts(width, tiling.tile, tiling.overlap))
    boxes = tile_boxes(width, height, tiling.tile, tiling.overlap)
    tiles = [Tile(index, *box) for index, box in enumerate(boxes)]
    return Grid(columns, len(tiles) // columns, tiles)


def run_jobs(engine: Engine, jobs: Sequence[Job], tilings: Sequence[Tiling | None]) -> list[MaskSet]:
    """``engine.run(jobs)``, except that a job with a tiling runs tiled (see the module's docstring).
    Text concepts with exemplar boxes run whole."""
    tilings = [None if _has_exemplars(job) else tiling for job, tiling in zip(jobs, tilings, strict=True)]
    results: list[MaskSet | None] = [None] * len(jobs)
    whole = [i for i, tiling in enumerate(tilings) if tiling is None]
    if whole:
        for i, result in zip(whole, engine.run([jobs[i] for i in whole]), strict=True):
            results[i] = result
    for i, tiling in enumerate(tilings):
        if tiling is not None:
            job = jobs[i]
            results[i] = (
                segment_windows(engine, job, tiling)
                if job.prompts is not None and not _is_text(job)
                else segment_tiles(engine, job, tiling)
            )
    return [result for result in results if result is not None]


def _is_text(job: Job) -> bool:
    return job.prompts is not None and job.prompts.text is not None


def _has_exemplars(job: Job) -> bool:
    return _is_text(job) and job.prompts is not None and job.prompts.boxes is not None


# -- automatic masks over a grid --------------------------------------------------------------


@dataclass
class Piece:
    """One tile's mask: ``box`` ``[x0, y0, x1, y1)`` in the full image, ``crop`` the box-cropped
    mask as compressed COCO RLE; ``points``: the grid points that made it, full-image px XY;
    ``label``/``prompt_index``: the concept that found it (text prompts), else None."""

    tile: int
    box: tuple[int, int, int, int]
    crop: dict[str, Any]
    area: int
    score: float
    stability: float
    points: list[list[float]]
    label: str | None = None
    prompt_index: int | None = None

    def mask(self) -> np.ndarray:
        decoded: np.ndarray = mask_utils.decode(self.crop).astype(bool)
        return decoded

    def within(self, region: tuple[int, int, int, int]) -> np.ndarray | None:
        """This piece's pixels inside ``region`` (an ``[x0, y0, x1, y1)`` box), as a region-sized
        array; None when the piece's box misses the region."""
        x0, y0 = max(self.box[0], region[0]), max(self.box[1], region[1])
        x1, y1 = min(self.box[2], region[2]), min(self.box[3], region[3])
        if x0 >= x1 or y0 >= y1:
            return None
        out = np.zeros((region[3] - region[1], region[2] - region[0]), dtype=bool)
        crop = self.mask()
        out[y0 - region[1] : y1 - region[1], x0 - region[0] : x1 - region[0]] = crop[
            y0 - self.box[1] : y1 - self.box[1], x0 - self.box[0] : x1 - self.box[0]
        ]
        return out


@dataclass
class Stitcher:
    """Collects tiles' masks (:meth:`add`, tiles in grid order) and merges them (:meth:`masks`)."""

    grid: Grid
    width: int
    height: int
    pieces: list[Piece] = field(default_factory=list)
    by_tile: dict[int, list[int]] = field(default_factory=dict)
    parent: list[int] = field(default_factory=list)

    def add(self, tile: Tile, records: Sequence[MaskRecord]) -> None:
        """The masks one tile gave (engine records: ``segmentation`` RLE at the tile's size …)."""
        neighbours = [
            (other, band)
            for other in self.grid.tiles[: tile.index]
            if (band := tile.intersect(other)) is not None and other.index in self.by_tile
        ]
        for record in records:
            mask = rle_to_mask(record.rle)
            bounds = mask_bounds(mask)
            if bounds is None:
                continue
            bx0, by0, bx1, by1 = bounds
            crop = np.asfortranarray(mask[by0:by1, bx0:bx1].astype(np.uint8))
            piece = Piece(
                tile=tile.index,
                box=(tile.x0 + bx0, tile.y0 + by0, tile.x0 + bx1, tile.y0 + by1),
                crop=mask_utils.encode(crop),
                area=int(np.count_nonzero(crop)),
                score=float(record.score),
                stability=float(record.stability_score or 0.0),
                points=[[p[0] + tile.x0, p[1] + tile.y0] for p in record.point_coords or []],
                label=record.label,
                prompt_index=record.prompt_index,
            )
            index = len(self.pieces)
            self.pieces.append(piece)
            self.parent.append(index)
            self.by_tile.setdefault(tile.index, []).append(index)
            for other, band in neighbours:
                for j in self.by_tile[other.index]:
                    if self._same_object(piece, self.pieces[j], band):
                        self._union(index, j)

    def _same_object(self, a: Piece, b: Piece, band: tuple[int, int, int, int]) -> bool:
        if a.label != b.label or not _boxes_meet(a.box, b.box):
            return False
        inside_a, inside_b = a.within(band), b.within(band)
        if inside_a is None or inside_b is None:
            return False
        smaller = min(int(inside_a.sum()), int(inside_b.sum()))
        return smaller > 0 and int((inside_a & inside_b).sum()) >= MATCH_IOS * smaller

    def _find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def _union(self, i: int, j: int) -> None:
        ri, rj = self._find(i), self._find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def groups(self) -> list[list[int]]:
        """Piece indexes per stitched mask, in order of their first piece."""
        groups: dict[int, list[int]] = {}
        for i in range(len(self.pieces)):
            groups.setdefault(self._find(i), []).append(i)
        return list(groups.values())

    def masks(self) -> list[MaskRecord]:
        """One record per stitched mask, at full resolution, best score first (concept by concept,
        in the order asked), near-duplicates of the same concept dropped."""
        records = [self._merge([self.pieces[i] for i in group]) for group in self.groups()]
        records.sort(key=lambda r: (r.prompt_index or 0, -r.score))
        return _drop_duplicates(records)

    def _merge(self, pieces: list[Piece]) -> MaskRecord:
        x0, y0 = min(p.box[0] for p in pieces), min(p.box[1] for p in pieces)
        x1, y1 = max(p.box[2] for p in pieces), max(p.box[3] for p in pieces)
        canvas = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        for p in pieces:
            canvas[p.box[1] - y0 : p.box[3] - y0, p.box[0] - x0 : p.box[2] - x0] |= p.mask()
        weights = np.array([p.area for p in pieces], dtype=np.float64)
        bx0, by0, bx1, by1 = mask_bounds(canvas) or (0, 0, 1, 1)
        return MaskRecord(
            segmentation=crop_to_rle(canvas, x0, y0, self.height, self.width),
            score=round(float(np.average([p.score for p in pieces], weights=weights)), 4),
            stability_score=round(float(np.average([p.stability for p in pieces], weights=weights)), 4),
            box=[x0 + bx0, y0 + by0, x0 + bx1 - 1, y0 + by1 - 1],
            area=int(np.count_nonzero(canvas)),
            point_coords=None if pieces[0].label is not None else [pt for p in pieces for pt in p.points],
            prompt_index=pieces[0].prompt_index,
            label=pieces[0].label,
            tiles=sorted({p.tile for p in pieces}),
        )


def segment_tiles(engine: Engine, job: Job, tiling: Tiling) -> MaskSet:
    """Automatic masks (or text concepts) of ``job.image`` (``HxWx3 uint8``) over a grid of tiles,
    stitched."""
    height, width = job.image.shape[:2]
    grid = tile_grid(width, height, tiling)
    stitcher = Stitcher(grid, width, height)
    runs = _Runs(engine)
    prompts = job.prompts if _is_text(job) else None
    for tile, result in runs.each(grid.tiles, lambda tile: Job(_crop(job.image, tile), prompts, job.amg)):
        stitcher.add(tile, result.masks)
    started = time.perf_counter()
    masks = stitcher.masks()
    # A cap per image, as on an image run whole (each tile had it too): the request's, within the
    # engine's SAMDROP_MAX_MASKS.
    caps = [int(cap) for cap in (job.amg.get("max_masks"), getattr(engine, "max_masks", None)) if cap]
    if caps:
        masks = masks[: min(caps)]
    runs.timings_ms["stitch"] = round((time.perf_counter() - started) * 1000, 2)
    return runs.result(masks, width, height, _record(tiling, len(grid.tiles), [grid.columns, grid.rows]))


# -- prompts, each in its own window ----------------------------------------------------------


def prompt_windows(prompts: Prompts, width: int, height: int, tiling: Tiling) -> list[Tile]:
    """One window per prompt (box plus points, or the point group): at least a tile, centred on
    the prompt, grown to hold it with ``overlap`` px of context, moved inside the image."""
    points = prompts.points if prompts.points is not None else np.zeros((0, 2), np.float32)
    extents = (
        [np.concatenate([box.reshape(2, 2), points]) for box in prompts.boxes]
        if prompts.boxes is not None
        else [points]
    )
    windows = []
    for index, corners in enumerate(extents):
        (ex0, ey0), (ex1, ey1) = corners.min(axis=0), corners.max(axis=0)
        x0, x1 = _window(float(ex0), float(ex1), width, tiling)
        y0, y1 = _window(float(ey0), float(ey1), height, tiling)
        windows.append(Tile(index, x0, y0, x1, y1))
    return windows


def _window(low: float, high: float, length: int, tiling: Tiling) -> tuple[int, int]:
    size = min(length, max(tiling.tile, math.ceil(high - low) + 2 * tiling.overlap))
    start = round((low + high) / 2 - size / 2)
    start = min(max(0, start), length - size)
    return start, start + size


def segment_windows(engine: Engine, job: Job, tiling: Tiling) -> MaskSet:
    """Prompted masks of ``job.image``, each prompt run on its window at native resolution."""
    assert job.prompts is not None
    prompts = job.prompts
    height, width = job.image.shape[:2]
    windows = prompt_windows(prompts, width, height, tiling)
    masks: list[MaskRecord] = []
    runs = _Runs(engine)
    for window, result in runs.each(windows, lambda w: Job(_crop(job.image, w), _shifted(prompts, w))):
        masks += [_placed(record, window, width, height) for record in result.masks]
    return runs.result(masks, width, height, _record(tiling, len(windows), [len(windows), 1]))


def _shifted(prompts: Prompts, window: Tile) -> Prompts:
    offset = np.array([window.x0, window.y0], dtype=np.float32)
    points = prompts.points - offset if prompts.points is not None else None
    boxes = None
    if prompts.boxes is not None:
        boxes = (prompts.boxes[window.index] - np.tile(offset, 2))[None, :]
    return Prompts(points, prompts.labels, boxes, prompts.multimask)


def _placed(record: MaskRecord, window: Tile, width: int, height: int) -> MaskRecord:
    """A window's mask record moved into the full image (``prompt_index``: the window's prompt)."""
    mask = rle_to_mask(record.rle)
    bounds = mask_bounds(mask)
    out = replace(record, prompt_index=window.index, tiles=[window.index])
    if bounds is None:
        empty = crop_to_rle(mask[:0, :0], 0, 0, height, width)
        return replace(out, segmentation=empty, box=[0, 0, 0, 0], area=0)
    bx0, by0, bx1, by1 = bounds
    crop = mask[by0:by1, bx0:bx1]
    x0, y0 = window.x0 + bx0, window.y0 + by0
    return replace(
        out,
        segmentation=crop_to_rle(crop, x0, y0, height, width),
        box=[x0, y0, window.x0 + bx1 - 1, window.y0 + by1 - 1],
        area=int(np.count_nonzero(crop)),
    )


# -- helpers ----------------------------------------------------------------------------------


def crop_to_rle(
    crop: np.ndarray, x0: int, y0: int, height: int, width: int, *, block: int = ENCODE_BLOCK
) -> Rle:
    """COCO RLE of a ``height``x``width`` mask that is ``crop`` (``h x w bool``) at ``(x0, y0)`` and
    empty elsewhere, without building the full mask: ``block`` columns at a time (COCO RLE runs
    down the columns), so encoding needs ``height x block`` bytes plus 8 bytes per run."""
    h, w = crop.shape
    total = height * width
    changes: list[np.ndarray] = []  # flat (column-major) indexes where the value flips
    value, position = 0, height * x0
    for c0 in range(0, w if h else 0, block):
        strip = np.zeros((height, min(block, w - c0)), dtype=np.uint8, order="F")
        strip[y0 : y0 + h] = crop[:, c0 : c0 + block]
        flat = strip.ravel(order="F")  # a view: the strip is column-major
        if flat[0] != value:
            changes.append(np.array([position], dtype=np.int64))
        changes.append(np.flatnonzero(flat[1:] != flat[:-1]).astype(np.int64) + 1 + position)
        value, position = int(flat[-1]), position + flat.size
    if value and position < total:
        changes.append(np.array([position], dtype=np.int64))
    bounds = np.concatenate([np.zeros(1, np.int64), *changes, np.array([total], np.int64)])
    runs = np.diff(bounds).astype(np.uint32)
    encoded = mask_utils.frPyObjects({"counts": runs, "size": [height, width]}, height, width)
    return Rle(size=[height, width], counts=encoded["counts"].decode("ascii"))


def _drop_duplicates(records: list[MaskRecord]) -> list[MaskRecord]:
    """Keep a record unless one kept before it (better score, same label) has IoU above ``DUPLICATE_IOU``."""
    kept: list[MaskRecord] = []
    for record in records:
        duplicate = False
        for other in kept:
            if record.label != other.label:
                continue
            small, large = sorted((record.area, other.area))
            if small < DUPLICATE_IOU * large or not _boxes_meet(_exclusive(record), _exclusive(other)):
                continue
            iou = mask_utils.iou([_coco(record)], [_coco(other)], [0])[0][0]
            if iou > DUPLICATE_IOU:
                duplicate = True
                break
        if not duplicate:
            kept.append(record)
    return kept


def _coco(record: MaskRecord) -> dict[str, Any]:
    rle = record.rle
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def _exclusive(record: MaskRecord) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = record.box
    return x0, y0, x1 + 1, y1 + 1


def _boxes_meet(a: Sequence[int], b: Sequence[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _crop(image: np.ndarray, tile: Tile) -> np.ndarray:
    return np.ascontiguousarray(image[tile.y0 : tile.y1, tile.x0 : tile.x1])


@dataclass
class _Runs:
    """Runs one job per tile (or window) through ``engine``, ``batch_size`` at a time, summing the
    stage timings and keeping the largest encoder pass, for the one ``MaskSet`` they make."""

    engine: Engine
    timings_ms: dict[str, float] = field(default_factory=dict)
    encoder_batch: int = 0

    def each(self, tiles: Sequence[Tile], job_for: Callable[[Tile], Job]) -> Iterator[tuple[Tile, MaskSet]]:
        size = max(1, self.engine.batch_size)
        for start in range(0, len(tiles), size):
            batch = tiles[start : start + size]
            for tile, result in zip(batch, self.engine.run([job_for(t) for t in batch]), strict=True):
                for key, value in result.timings_ms.items():
                    self.timings_ms[key] = round(self.timings_ms.get(key, 0.0) + value, 2)
                self.encoder_batch = max(self.encoder_batch, result.encoder_batch)
                yield tile, result

    def result(self, masks: list[MaskRecord], width: int, height: int, tiling: TilingRecord) -> MaskSet:
        return MaskSet(
            masks, width, height, timings_ms=self.timings_ms, encoder_batch=self.encoder_batch, tiling=tiling
        )


def _record(tiling: Tiling, tiles: int, grid: list[int]) -> TilingRecord:
    return TilingRecord(tile=tiling.tile, overlap=tiling.overlap, tiles=tiles, grid=grid)
