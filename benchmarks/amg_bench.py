"""Automatic masks: segment-anything's ``SamAutomaticMaskGenerator`` vs samdrop's engine, side by side.

Both run in this process, on the same images, with the same weights (seeded random weights for
``vit_b``/``vit_l``/``vit_h`` saved as a checkpoint and loaded by both, unless ``--checkpoint``) and the
same parameters: by default a 16x16 grid, thresholds at 0 (so random weights still give masks to
compare) and no box NMS. The reference is the library's generator, fp32, as published; ours is
``SamEngine`` with the precision and compilation its settings pick on this machine. Runs alternate
(reference, ours) per image after one warm-up image each, so drift in the machine's speed hits both.

Fidelity: for each image, the share of the reference's top-100 masks (by predicted IoU) that one of
ours matches with IoU >= 0.9. Prints a table; writes JSON and a PNG chart (default
``benchmarks/results/amg-<model>-<device>.{json,png}``). Not a test.

    python benchmarks/amg_bench.py                       # vit_b, 16x16, 3 images
    python benchmarks/amg_bench.py --model-type tiny --grid-sweep 8 12 16 24 32   # the CPU auto grid
    python benchmarks/amg_bench.py --device cuda --grid 32 --model-type vit_h
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.predictor_bench import seeded_checkpoint  # noqa: E402
from pipeline.plots import bar_chart, line_chart  # noqa: E402
from predictor.engine import Job, SamEngine, pick_device  # noqa: E402
from predictor.hardware import machine_record, resolve_compile, resolve_precision  # noqa: E402
from predictor.registry import build_sam, load_sam  # noqa: E402
from samdrop.documents import MaskRecord  # noqa: E402
from samdrop.masks import rle_to_mask  # noqa: E402

SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
MATCH_IOU = 0.9
TOP = 100


def sample_images(count: int) -> list[tuple[str, np.ndarray]]:
    from skimage import data

    out = []
    for name in SAMPLES[:count]:
        image = getattr(data, name)()
        image = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]
        out.append((name, np.ascontiguousarray(image)))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_masks(generator: Any, image: np.ndarray) -> tuple[float, list[dict[str, Any]]]:
    started = time.perf_counter()
    with torch.inference_mode():
        masks = generator.generate(image)
    sync(generator.predictor.device)
    return time.perf_counter() - started, masks


def our_masks(engine: SamEngine, image: np.ndarray, params: dict[str, Any]) -> tuple[float, Any]:
    engine.clear_cache()  # the encoder counts: no embedding from an earlier run
    started = time.perf_counter()
    result = engine.run([Job(image, None, params)])[0]
    sync(engine.device)
    return time.perf_counter() - started, result


def matched_share(reference: list[dict[str, Any]], ours: list[MaskRecord]) -> float:
    """Share of the reference's top masks that one of ours matches with IoU >= MATCH_IOU."""
    top = sorted(reference, key=lambda m: m["predicted_iou"], reverse=True)[:TOP]
    if not top:
        return 1.0
    theirs = np.stack([rle_to_mask(m["segmentation"]) for m in top]).reshape(len(top), -1)
    mine = np.stack([rle_to_mask(m.rle) for m in ours]).reshape(len(ours), -1)
    theirs_t = torch.as_tensor(theirs, dtype=torch.float32)
    mine_t = torch.as_tensor(mine, dtype=torch.float32)
    inter = theirs_t @ mine_t.T
    union = theirs_t.sum(1, keepdim=True) + mine_t.sum(1)[None] - inter
    best = (inter / union.clamp(min=1)).max(dim=1).values
    return float((best >= MATCH_IOU).float().mean())


def compare(args: argparse.Namespace, device: torch.device, checkpoint: str) -> dict[str, Any]:
    from segment_anything import SamAutomaticMaskGenerator

    params = {
        "points_per_side": args.grid,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "box_nms_thresh": args.box_nms_thresh,
    }
    reference_model = build_sam(args.model_type)  # segment-anything's own modules and attention
    reference_model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    generator = SamAutomaticMaskGenerator(reference_model.to(device).eval(), output_mode="coco_rle", **params)
    engine = SamEngine(
        load_sam(args.model_type, checkpoint, Path(args.workdir), device),
        args.model_type,
        precision=resolve_precision(args.precision, device),
        compile=resolve_compile(args.compile, device),
        max_masks=100_000,
    )
    our_params = {**params, "max_masks": 100_000}
    images = sample_images(args.images)

    # Warm-up on the first image: lazy initialisation, and for ours the compile (timed on its own).
    reference_masks(generator, images[0][1])
    first_s, _ = our_masks(engine, images[0][1], our_params)
    rows = []
    for name, image in images:
        ref_s, ref = reference_masks(generator, image)
        ours_s, ours = our_masks(engine, image, our_params)
        rows.append(
            {
                "image": name,
                "size": list(image.shape[:2]),
                "reference_s": round(ref_s, 3),
                "ours_s": round(ours_s, 3),
                "speedup": round(ref_s / ours_s, 2),
                "reference_masks": len(ref),
                "our_masks": len(ours.masks),
                "top100_matched": round(matched_share(ref, ours.masks), 4),
                "our_stages_ms": ours.stages_ms,
                "our_counts": ours.counts,
            }
        )
        print(
            f"{name:>22} {rows[-1]['size']}: reference {ref_s:7.2f} s  ours {ours_s:6.2f} s  "
            f"x{rows[-1]['speedup']:.2f}  top-100 matched {rows[-1]['top100_matched']:.1%}  "
            f"stages {ours.stages_ms}"
        )
    reference_total = sum(r["reference_s"] for r in rows)
    ours_total = sum(r["ours_s"] for r in rows)
    return {
        "params": params,
        "engine": engine.description,
        "first_call_s": round(first_s, 2),
        "images": rows,
        "reference_s_per_image": round(reference_total / len(rows), 3),
        "ours_s_per_image": round(ours_total / len(rows), 3),
        "speedup": round(reference_total / ours_total, 2),
        "top100_matched_min": min(r["top100_matched"] for r in rows),
        "top100_matched_mean": round(statistics.mean(r["top100_matched"] for r in rows), 4),
    }


def grid_sweep(args: argparse.Namespace, device: torch.device, checkpoint: str) -> list[dict[str, Any]]:
    """Ours alone, SAM's default thresholds, seconds per image for each grid side."""
    engine = SamEngine(
        load_sam(args.model_type, checkpoint, Path(args.workdir), device),
        args.model_type,
        precision=resolve_precision(args.precision, device),
        compile=resolve_compile(args.compile, device),
    )
    images = sample_images(args.images)
    out = []
    for grid in args.grid_sweep:
        params = {"points_per_side": grid, "points_per_batch": args.points_per_batch}
        our_masks(engine, images[0][1], params)  # warm-up (and compile for a new batch shape)
        seconds = [our_masks(engine, image, params)[0] for _, image in images]
        out.append({"grid": grid, "s_per_image": round(statistics.mean(seconds), 3)})
        print(f"grid {grid:3d}: {out[-1]['s_per_image']:.2f} s per image")
    return out


def compile_start(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Two fresh processes in turn, sharing one new Inductor cache: the first automatic-mask image
    of each (model already loaded), so the cold compile and the cached start are both measured."""
    import subprocess

    cache = Path(tempfile.mkdtemp(prefix="samdrop-inductor-"))
    code = (
        "import sys, time, torch; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; from benchmarks.amg_bench import sample_images;"
        "from predictor.engine import Job, SamEngine; from predictor.registry import load_sam;"
        "from predictor.hardware import resolve_precision;"
        "device = torch.device('cpu' if sys.argv[3] == 'auto' else sys.argv[3]);"
        "device = torch.device('cuda') if sys.argv[3] == 'auto' and torch.cuda.is_available() else device;"
        "engine = SamEngine(load_sam(sys.argv[2], None, Path(sys.argv[4]), device), sys.argv[2],"
        " precision=resolve_precision('auto', device), compile=True);"
        "image = sample_images(1)[0][1]; params = {'points_per_side': 4};"
        "t = time.perf_counter(); engine.run([Job(image, None, params)]); first = time.perf_counter() - t;"
        "engine.clear_cache(); t = time.perf_counter(); engine.run([Job(image, None, params)]);"
        "print(round(first, 2), round(time.perf_counter() - t, 2))"
    )
    out = []
    for label in ("cold", "cached"):
        done = subprocess.run(
            [sys.executable, "-c", code, str(ROOT), args.model_type, args.device, args.workdir],
            env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)},
            capture_output=True,
            text=True,
            check=True,
        )
        first, second = (float(v) for v in done.stdout.split()[-2:])
        out.append({"start": label, "first_image_s": first, "second_image_s": second})
        print(f"{label:>6}: first automatic-mask image {first:.2f} s (compile included), next {second:.2f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--checkpoint", help="real weights instead of seeded random ones")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=3, help=f"1..{len(SAMPLES)} scikit-image photos")
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.0)
    parser.add_argument("--stability-score-thresh", type=float, default=0.0)
    parser.add_argument("--box-nms-thresh", type=float, default=1.0, help="1.0: no box NMS")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--grid-sweep", type=int, nargs="*", help="time ours alone over these grid sides")
    parser.add_argument(
        "--compile-start", action="store_true", help="time a cold and a cached compile in new processes"
    )
    parser.add_argument("--workdir", default=tempfile.mkdtemp(prefix="samdrop-amg-"))
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    device = pick_device(args.device)
    checkpoint = seeded_checkpoint(args.model_type, args.checkpoint, Path(args.workdir))
    machine = machine_record(device)
    print(f"{machine['gpu'] or machine['cpu']} ({machine['threads']} threads), {args.model_type}")
    args.output.mkdir(parents=True, exist_ok=True)
    if args.compile_start:
        name = f"amg-compile-start-{args.model_type}-{device.type}"
        doc = {"machine": machine, "model_type": args.model_type, "starts": compile_start(args)}
        chart = bar_chart(
            [row["start"] for row in doc["starts"]],
            [row["first_image_s"] for row in doc["starts"]],
            title=f"first automatic-mask image, {args.model_type}, {machine['gpu'] or machine['cpu']}",
            x_label="Inductor cache",
            y_label="s",
        )
    elif args.grid_sweep:
        sweep = grid_sweep(args, device, checkpoint)
        compiled = resolve_compile(args.compile, device)
        name = f"amg-grid-{args.model_type}-{device.type}-{'compiled' if compiled else 'eager'}"
        doc = {"machine": machine, "model_type": args.model_type, "compiled": compiled, "sweep": sweep}
        chart = line_chart(
            {"ours": [(row["grid"], row["s_per_image"]) for row in sweep]},
            title=f"automatic masks, {args.model_type}, {machine['gpu'] or machine['cpu']}",
            x_label="points per side",
            y_label="s / image",
        )
    else:
        result = compare(args, device, checkpoint)
        name = f"amg-{args.model_type}-{device.type}"
        doc = {"machine": machine, "model_type": args.model_type, **result}
        print(
            f"reference {result['reference_s_per_image']:.2f} s/image, ours {result['ours_s_per_image']:.2f} "
            f"s/image: x{result['speedup']:.2f}; top-100 matched min {result['top100_matched_min']:.1%} "
            f"({result['engine']['precision']}, compiled={result['engine']['compiled']}; first call "
            f"{result['first_call_s']} s)"
        )
        stages = result["images"][-1]["our_stages_ms"]
        where = machine["gpu"] or machine["cpu"]
        chart = bar_chart(
            ["reference", "ours", *(f"ours: {k}" for k in stages)],
            [
                result["reference_s_per_image"],
                result["ours_s_per_image"],
                *(v / 1000 for v in stages.values()),
            ],
            title=f"automatic masks {args.grid}x{args.grid}, {args.model_type}, {where}"
            f" - x{result['speedup']:.2f}",
            x_label="(stages: last image)",
            y_label="s / image",
        )
    (args.output / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.output / f"{name}.png").write_bytes(chart)
    print(f"wrote {args.output / (name + '.json')} and {args.output / (name + '.png')}")


if __name__ == "__main__":
    main()
