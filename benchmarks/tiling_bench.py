"""Tiled automatic masks: time and peak memory against the number of tiles, ``tiny`` on this CPU.

Each point runs in its own subprocess (so ``ru_maxrss`` is that point's own peak): load the model,
warm up on one tile, build a ``k x k``-tile image (``tile`` px tiles sharing ``overlap`` px, flat
shapes that cross tile borders), then ``predictor.tiling.segment_tiles`` with a small grid and the
thresholds at 0 (random weights still give masks to stitch). Reported per point: wall time, time
per tile, the image's own bytes, the peak RSS above the process's RSS once the image existed, and
tracemalloc's peak of Python/numpy allocations during the run (torch's own buffers are not traced).
Writes ``benchmarks/results/tiling-tiny-cpu.{json,png}`` and ``tiling-tiny-cpu-memory.png``. Not a test.

    python benchmarks/tiling_bench.py                      # 1, 4, 16, 36, 64, 100 tiles
    python benchmarks/tiling_bench.py --tiles 1 4 --tile 512 --overlap 64 --grid 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def scene(side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((side, side, 3), 60, np.uint8)
    for _ in range(max(4, side * side // 400_000)):
        x, y = (int(v) for v in rng.integers(0, max(1, side - 300), 2))
        w, h = (int(v) for v in rng.integers(60, 300, 2))
        image[y : y + h, x : x + w] = rng.integers(0, 255, 3)
    return image


def one_point(per_side: int, tile: int, overlap: int, grid: int) -> dict[str, Any]:
    """Runs in the child process."""
    from predictor.engine import Job, SamEngine
    from predictor.registry import load_sam
    from predictor.tiling import Tiling, segment_tiles, tile_grid
    from samdrop.settings import Settings

    settings = Settings.from_env(os.environ)
    engine = SamEngine(
        load_sam("tiny", None, settings.cache_dir, "cpu"),
        "tiny",
        fast=True,
        batch_size=4,
        random_weights=True,
    )
    amg = {"points_per_side": grid, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    tiling = Tiling(tile, overlap)
    engine.run([Job(scene(tile, seed=1), None, amg)])  # warm-up: first-call costs out of the timing
    side = tile + (per_side - 1) * (tile - overlap)
    image = scene(side)
    assert len(tile_grid(side, side, tiling).tiles) == per_side**2
    rss_with_image = _rss_mb()
    tracemalloc.start()
    started = time.perf_counter()
    result = segment_tiles(engine, Job(image, None, amg), tiling)
    wall = time.perf_counter() - started
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "tiles": per_side**2,
        "image_px": [side, side],
        "image_mb": round(image.nbytes / 2**20, 1),
        "masks": len(result.masks),
        "wall_s": round(wall, 2),
        "s_per_tile": round(wall / per_side**2, 3),
        "stitch_ms": result.timings_ms.get("stitch"),
        "rss_with_image_mb": round(rss_with_image, 1),
        "peak_rss_mb": round(peak_rss, 1),
        "peak_rss_above_image_mb": round(peak_rss - rss_with_image, 1),
        "tracemalloc_peak_mb": round(traced_peak / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, nargs="+", default=[1, 4, 16, 36, 64, 100])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--grid", type=int, default=8, help="automatic-mask points per side, per tile")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "tiling-tiny-cpu.json")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_point(args.child, args.tile, args.overlap, args.grid)))
        return

    points: list[dict[str, Any]] = []
    for count in args.tiles:
        per_side = math.isqrt(count)
        if per_side * per_side != count:
            raise SystemExit(f"--tiles takes square numbers (a k x k grid), got {count}")
        command = [sys.executable, __file__, "--child", str(per_side), "--tile", str(args.tile),
                   "--overlap", str(args.overlap), "--grid", str(args.grid)]  # fmt: skip
        env = {**os.environ, "SAMDROP_COMPILE": "off"}
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        point = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(point))
        points.append(point)
        write_results(args, points)  # after every point, so a cut-short run still leaves its figures


def write_results(args: argparse.Namespace, points: list[dict[str, Any]]) -> None:
    from pipeline.plots import line_chart
    from predictor.hardware import cpu_name

    report = {
        "what": "predictor.tiling.segment_tiles: automatic masks over a k x k tile grid, stitched",
        "model": "tiny (random weights)",
        "device": "cpu",
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine_shared": "yes: 2 cores shared with 3 other engineers' builds and tests; times are noisy",
        "compile": "off (SAMDROP_COMPILE=off: no compile warm-up inside the timing)",
        "tile": args.tile,
        "overlap": args.overlap,
        "points_per_side": args.grid,
        "thresholds": "pred_iou_thresh 0, stability_score_thresh 0",
        "points": points,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    title = f"tiny, {args.tile}-px tiles / {args.overlap} overlap, {args.grid}x{args.grid} grid per tile"
    args.out.with_suffix(".png").write_bytes(
        line_chart(
            {"wall time (s)": [(p["tiles"], p["wall_s"]) for p in points]},
            title=title,
            x_label="tiles",
            y_label="seconds",
        )
    )
    args.out.with_name(args.out.stem + "-memory.png").write_bytes(
        line_chart(
            {
                "image itself (MB)": [(p["tiles"], p["image_mb"]) for p in points],
                "peak RSS above image (MB)": [(p["tiles"], p["peak_rss_above_image_mb"]) for p in points],
                "tracemalloc peak (MB)": [(p["tiles"], p["tracemalloc_peak_mb"]) for p in points],
            },
            title=title,
            x_label="tiles",
            y_label="MB",
        )
    )


if __name__ == "__main__":
    main()
