"""SAM 2.1 automatic masks: transformers' ``mask-generation`` pipeline vs samdrop's ``Sam2Engine``.

Both run in this process on the same ``Sam2Model`` (the same weights object), the same image, grid
and thresholds: by default an 8x8 grid, thresholds at 0 (so random weights still give masks to
count) and one crop layer off. Weights: ``--checkpoint`` (a ``save_pretrained`` folder, e.g. Meta's
``facebook/sam2.1-hiera-tiny`` fetched by ``samdrop models pull``), else seeded random weights of the
real hiera-tiny architecture (``Sam2Config()``'s defaults) — Meta's weights cannot be downloaded
where this was written, and the JSON says which was used. Images are square crops: the pipeline
scales grid points as SAM 1 does (longest side), which is right for SAM 2 only on square images.

The pipeline runs fp32 (as published; it has no autocast); ours runs the precision
``SAMDROP_PRECISION=auto`` picks here. Runs alternate (pipeline, ours) after one warm-up each.
Prints the ratio and writes ``benchmarks/results/sam2-amg-<device>-<precision>.json`` with the CPU
named. Not a test.

    python benchmarks/sam2_bench.py                   # 8x8 grid, 2 runs, random hiera-tiny weights
    python benchmarks/sam2_bench.py --grid 16 --runs 3 --checkpoint ~/sam2.1-hiera-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predictor.engine import pick_device  # noqa: E402
from predictor.hardware import machine_record, resolve_precision  # noqa: E402
from predictor.sam2_engine import Sam2Engine  # noqa: E402

SEED = 20261203


def load_model(checkpoint: str | None, device: torch.device) -> tuple[Any, str]:
    from transformers import Sam2Config, Sam2Model

    if checkpoint:
        model = Sam2Model.from_pretrained(checkpoint, attn_implementation="sdpa")
        return model.eval().to(device), checkpoint  # type: ignore[no-untyped-call]
    torch.manual_seed(SEED)
    model = Sam2Model(Sam2Config())  # transformers picks SDPA attention by default
    weights = f"random weights (seed {SEED}) of the sam2.1-hiera-tiny architecture"
    return model.eval().to(device), weights  # type: ignore[no-untyped-call]


def square_image(side: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())  # type: ignore[no-untyped-call]  # 512x512
    return np.asarray(astronaut.resize((side, side), Image.Resampling.BILINEAR))


def run_pipeline(generator: Any, image: np.ndarray, args: argparse.Namespace) -> tuple[float, int]:
    from PIL import Image

    started = time.perf_counter()
    out = generator(
        Image.fromarray(image),
        points_per_batch=args.points_per_batch,
        points_per_crop=args.grid,
        crops_n_layers=0,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crops_nms_thresh=args.box_nms_thresh,
    )
    return time.perf_counter() - started, len(out["masks"])


def run_ours(engine: Sam2Engine, image: np.ndarray, args: argparse.Namespace) -> tuple[float, int]:
    amg = {
        "points_per_side": args.grid,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": args.box_nms_thresh,
        "max_masks": 10_000,
    }
    engine.clear_cache()  # each run encodes the image, as the pipeline does
    started = time.perf_counter()
    result = engine.generate(image, amg)
    return time.perf_counter() - started, len(result.masks)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", help="a save_pretrained folder (real weights) instead of random ones")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--side", type=int, default=512, help="the square image's side, px")
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--box-nms-thresh", type=float, default=0.7)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import transformers
    from transformers import Sam2ImageProcessor, pipeline

    device = pick_device(args.device)
    model, weights = load_model(args.checkpoint, device)
    precision = resolve_precision(args.precision, device)
    engine = Sam2Engine(model, "sam2.1_hiera_tiny", precision=precision, checkpoint=args.checkpoint)
    generator = pipeline("mask-generation", model=model, image_processor=Sam2ImageProcessor(), device=device)
    image = square_image(args.side)
    machine = {
        **machine_record(device),
        "transformers": transformers.__version__,
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),  # a shared machine inflates both
    }
    print(f"{machine['gpu'] or machine['cpu']} ({machine['threads']} threads); weights: {weights}")
    run_pipeline(generator, image, args)  # warm-ups
    run_ours(engine, image, args)
    theirs, ours = [], []
    for _ in range(args.runs):
        theirs.append(run_pipeline(generator, image, args))
        ours.append(run_ours(engine, image, args))
    pipeline_s = statistics.median(t for t, _ in theirs)
    ours_s = statistics.median(t for t, _ in ours)
    doc = {
        "machine": machine,
        "weights": weights,
        "random_weights": args.checkpoint is None,
        "image": f"scikit-image astronaut resized to {args.side}x{args.side}",
        "grid": args.grid,
        "points_per_batch": args.points_per_batch,
        "thresholds": f"pred_iou_thresh 0, stability_score_thresh 0, NMS {args.box_nms_thresh}",
        "pipeline": {
            "precision": "fp32",
            "seconds": [round(t, 3) for t, _ in theirs],
            "masks": theirs[-1][1],
        },
        "ours": {"precision": precision, "seconds": [round(t, 3) for t, _ in ours], "masks": ours[-1][1]},
        "speedup": round(pipeline_s / ours_s, 2),
        "note": (
            "mask counts differ by design: the pipeline has no per-crop box NMS and keeps stability "
            "> thresh where Meta's generator (ours) keeps >= and NMSes within the crop first"
        ),
    }
    print(
        f"pipeline {pipeline_s:.2f} s ({theirs[-1][1]} masks), ours {ours_s:.2f} s ({ours[-1][1]} masks, "
        f"{precision}): {doc['speedup']}x"
    )
    args.output.mkdir(parents=True, exist_ok=True)
    doc["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    path = args.output / f"sam2-amg-{device.type}-{precision}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
