"""SAM 2.1 side by side: automatic masks, prompts, and SAM 2.1 tiny against SAM 1 vit_b.

``--mode amg`` (default): transformers' ``mask-generation`` pipeline vs samdrop's ``Sam2Engine`` on
the same ``Sam2Model`` object, image, grid and thresholds (issue #20's measurement: a 16x16 grid on a
640x480 image). ``--thresholds zero`` (default) keeps every candidate, the worst case for ours (every
mask upsampled, and random weights still leave masks); ``--thresholds meta`` uses Meta's 0.8 / 0.95,
where ours skips the upscaling of prompts that cannot pass. The pipeline scales grid points by the
longest side as SAM 1 does, which is SAM 2's geometry only on square images: on 640x480 the points
differ, not the work (the same number of prompts and masks).

``--mode prompts``: plain transformers use (``Sam2Processor`` -> ``Sam2Model(**inputs)`` ->
``post_process_masks``, one call per image and prompt set, as its docs show) vs ``Sam2Engine.run``
on the same images with 4 box prompts each.

``--mode families``: per-image automatic masks of SAM 2.1 tiny (``Sam2Engine``) and SAM 1 vit_b
(``SamEngine``) on the same image, grid and thresholds.

Both engines' automatic-mask decoders are compiled where ``SAMDROP_COMPILE=auto`` would (``--compile``);
the warm-up pays the compile, and its seconds are recorded.

Weights: ``--checkpoint`` (a ``save_pretrained`` folder) or seeded random weights of the real
hiera-tiny (and vit_b) architecture, which is what the JSON says: Meta's weights cannot be
downloaded where this was written, so the masks are meaningless and only the seconds count. The
reference runs fp32 (as published; it has no autocast); ours the precision ``auto`` picks. One
warm-up each on a 2x2 grid, then the two alternate run by run, so a shared machine's load hits both;
the 1-minute load average is recorded. Writes ``benchmarks/results/sam2-<mode>-<device>-<precision>.json``.
Not a test.

    python benchmarks/sam2_bench.py                          # amg, 16x16, 640x480, 1 run
    python benchmarks/sam2_bench.py --mode prompts --runs 2
    python benchmarks/sam2_bench.py --mode families
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.amg_bench import sample_images  # noqa: E402
from benchmarks.predictor_bench import boxes_for  # noqa: E402
from predictor.engine import Job, SamEngine, pick_device  # noqa: E402
from predictor.hardware import machine_record, resolve_compile, resolve_precision  # noqa: E402
from predictor.instances import Prompts  # noqa: E402
from predictor.registry import build_sam, load_sam  # noqa: E402
from predictor.sam2_engine import Sam2Engine  # noqa: E402

SEED = 20261203
THRESHOLDS = {"zero": (0.0, 0.0), "meta": (0.8, 0.95)}  # (pred_iou_thresh, stability_score_thresh)
BOXES = 4


def load_model(checkpoint: str | None, device: torch.device) -> tuple[Any, str]:
    from transformers import Sam2Config, Sam2Model

    if checkpoint:
        model = Sam2Model.from_pretrained(checkpoint, attn_implementation="sdpa")
        return model.eval().to(device), checkpoint  # type: ignore[no-untyped-call]
    torch.manual_seed(SEED)
    model = Sam2Model(Sam2Config())  # transformers picks SDPA attention by default
    weights = f"random weights (seed {SEED}) of the sam2.1-hiera-tiny architecture"
    return model.eval().to(device), weights  # type: ignore[no-untyped-call]


def astronaut(width: int, height: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut())  # type: ignore[no-untyped-call]  # 512x512
    return np.asarray(photo.resize((width, height), Image.Resampling.BILINEAR))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(call: Callable[[], int], device: torch.device) -> tuple[float, int]:
    """Seconds and mask count of one call."""
    started = time.perf_counter()
    with torch.inference_mode():
        count = call()
    sync(device)
    return time.perf_counter() - started, count


def load() -> float:
    return round(os.getloadavg()[0], 2)


def alternate(
    runs: int, reference: Callable[[], tuple[float, int]], ours: Callable[[], tuple[float, int]]
) -> dict[str, Any]:
    """``runs`` (reference, ours) pairs, each with the load average before it."""
    pairs = []
    for run in range(runs):
        load_before = load()
        ref_s, ref_n = reference()
        ours_s, ours_n = ours()
        pairs.append(
            {
                "load_1m": load_before,
                "reference_s": round(ref_s, 3),
                "ours_s": round(ours_s, 3),
                "ratio": round(ref_s / ours_s, 2),
            }
        )
        print(
            f"run {run + 1}: reference {ref_s:.2f} s ({ref_n} masks), ours {ours_s:.2f} s ({ours_n} masks), "
            f"{ref_s / ours_s:.2f}x, load {load_before}"
        )
    reference_s = statistics.median(p["reference_s"] for p in pairs)
    ours_s = statistics.median(p["ours_s"] for p in pairs)
    return {
        "runs": pairs,
        "reference_s": reference_s,
        "ours_s": ours_s,
        "speedup": round(reference_s / ours_s, 2),
        "masks": {"reference": ref_n, "ours": ours_n},
    }


def amg_params(args: argparse.Namespace, grid: int) -> dict[str, Any]:
    iou, stability = THRESHOLDS[args.thresholds]
    return {
        "points_per_side": grid,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": iou,
        "stability_score_thresh": stability,
        "box_nms_thresh": 0.7,
        "max_masks": 100_000,
    }


def ours_amg(engine: Sam2Engine | SamEngine, image: np.ndarray, params: dict[str, Any]) -> Callable[[], int]:
    def call() -> int:
        engine.clear_cache()  # each run encodes the image, as the pipeline does
        return len(engine.run([Job(image, None, params)])[0].masks)

    return call


def amg(args: argparse.Namespace, device: torch.device, model: Any, precision: str) -> dict[str, Any]:
    from PIL import Image
    from transformers import Sam2ImageProcessor, pipeline

    compiled = resolve_compile(args.compile, device)
    engine = Sam2Engine(model, "sam2.1_hiera_tiny", precision=precision, compile=compiled, max_masks=100_000)
    generator = pipeline("mask-generation", model=model, image_processor=Sam2ImageProcessor(), device=device)
    image = astronaut(args.width, args.height)

    def theirs(grid: int) -> Callable[[], int]:
        iou, stability = THRESHOLDS[args.thresholds]
        return lambda: len(
            generator(
                Image.fromarray(image),
                points_per_batch=args.points_per_batch,
                points_per_crop=grid,
                crops_n_layers=0,
                pred_iou_thresh=iou,
                stability_score_thresh=stability,
                crops_nms_thresh=0.7,
            )["masks"]
        )

    timed(theirs(2), device)  # warm-ups (ours compiles its decoder here when compiled)
    warmup_s, _ = timed(ours_amg(engine, image, amg_params(args, 2)), device)
    figures = alternate(
        args.runs,
        lambda: timed(theirs(args.grid), device),
        lambda: timed(ours_amg(engine, image, amg_params(args, args.grid)), device),
    )
    result = engine.run([Job(image, None, amg_params(args, args.grid))])[0]
    return {
        "image": f"scikit-image astronaut resized to {args.width}x{args.height}",
        "grid": args.grid,
        "points_per_batch": args.points_per_batch,
        "thresholds": amg_params(args, args.grid),
        "reference": "transformers mask-generation pipeline, fp32",
        "ours": f"Sam2Engine.generate, {precision}, decoder compiled: {compiled}",
        "our_warmup_s": round(warmup_s, 2),
        "our_stages_ms": result.stages_ms,
        "our_counts": result.counts,
        **figures,
        "note": (
            "mask counts differ by design: the pipeline has no per-crop box NMS and keeps stability "
            "> thresh where Meta's generator (ours) keeps >= and NMSes within the crop first"
        ),
    }


def prompts(args: argparse.Namespace, device: torch.device, model: Any, precision: str) -> dict[str, Any]:
    from transformers import Sam2ImageProcessor, Sam2Processor

    engine = Sam2Engine(model, "sam2.1_hiera_tiny", precision=precision, batch_size=args.images)
    processor = Sam2Processor(Sam2ImageProcessor())
    images = [image for _, image in sample_images(args.images)]
    boxes = [boxes_for(image, BOXES, seed) for seed, image in enumerate(images)]

    def theirs() -> int:
        count = 0
        for image, image_boxes in zip(images, boxes, strict=True):
            inputs = processor(images=image, input_boxes=[image_boxes.tolist()], return_tensors="pt").to(
                device
            )
            output = model(**inputs, multimask_output=False)
            masks = processor.post_process_masks(  # type: ignore[no-untyped-call]
                output.pred_masks.cpu(), inputs["original_sizes"].cpu()
            )
            count += int(masks[0].shape[0])
        return count

    def ours() -> int:
        engine.clear_cache()
        jobs = [
            Job(image, Prompts(boxes=b.astype(np.float32))) for image, b in zip(images, boxes, strict=True)
        ]
        return sum(len(result.masks) for result in engine.run(jobs))

    timed(theirs, device)  # warm-ups
    timed(ours, device)
    figures = alternate(args.runs, lambda: timed(theirs, device), lambda: timed(ours, device))
    return {
        "images": f"scikit-image photos {[list(i.shape[:2]) for i in images]}, {BOXES} boxes each",
        "reference": "Sam2Processor -> Sam2Model(**inputs) -> post_process_masks per image, fp32",
        "ours": (
            f"Sam2Engine.run ({engine.images_per_pass} image(s) per encoder pass, Sam2FastEncoder, "
            f"Sam2FastDecoder), {precision}"
        ),
        **figures,
    }


def families(args: argparse.Namespace, device: torch.device, model: Any, precision: str) -> dict[str, Any]:
    compile_sam1 = resolve_compile(args.compile, device)
    sam2 = Sam2Engine(
        model, "sam2.1_hiera_tiny", precision=precision, compile=compile_sam1, max_masks=100_000
    )
    with tempfile.TemporaryDirectory() as workdir:
        torch.manual_seed(SEED)
        checkpoint = Path(workdir) / "vit_b-random.pth"
        torch.save(build_sam("vit_b").state_dict(), checkpoint)
        sam1 = SamEngine(
            load_sam("vit_b", str(checkpoint), Path(workdir), device),
            "vit_b",
            precision=precision,
            compile=compile_sam1,
            max_masks=100_000,
        )
    image = astronaut(args.width, args.height)
    timed(ours_amg(sam1, image, amg_params(args, args.grid)), device)  # warm-ups (and SAM 1's compile)
    timed(ours_amg(sam2, image, amg_params(args, 2)), device)
    figures = alternate(
        args.runs,
        lambda: timed(ours_amg(sam1, image, amg_params(args, args.grid)), device),
        lambda: timed(ours_amg(sam2, image, amg_params(args, args.grid)), device),
    )
    return {
        "image": f"scikit-image astronaut resized to {args.width}x{args.height}",
        "grid": args.grid,
        "thresholds": amg_params(args, args.grid),
        "reference": f"SAM 1 vit_b SamEngine, {precision}, decoder compiled: {compile_sam1} (random weights)",
        "ours": f"SAM 2.1 tiny Sam2Engine, {precision}, decoder compiled: {compile_sam1} (random weights)",
        "ratio_meaning": "reference_s / ours_s: how many times faster SAM 2.1 tiny is than SAM 1 vit_b here",
        **figures,
    }


MODES = {"amg": amg, "prompts": prompts, "families": families}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=tuple(MODES), default="amg")
    parser.add_argument("--checkpoint", help="a save_pretrained folder (real weights) instead of random ones")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--thresholds", choices=tuple(THRESHOLDS), default="zero")
    parser.add_argument("--images", type=int, default=3, help="prompt mode: photos")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument(
        "--compile", default="auto", choices=("auto", "on", "off"), help="automatic-mask decoders"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import transformers

    device = pick_device(args.device)
    model, weights = load_model(args.checkpoint, device)
    precision = resolve_precision(args.precision, device)
    machine = {**machine_record(device), "transformers": transformers.__version__, "load_1m_at_start": load()}
    print(
        f"{machine['gpu'] or machine['cpu']} ({machine['threads']} threads); weights: {weights}; {args.mode}"
    )
    doc = {
        "machine": machine,
        "weights": weights,
        "random_weights": args.checkpoint is None,
        **MODES[args.mode](args, device, model, precision),
    }
    doc["machine"]["load_1m_at_end"] = load()
    print(f"{args.mode}: reference {doc['reference_s']:.2f} s, ours {doc['ours_s']:.2f} s: {doc['speedup']}x")
    args.output.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.mode != "amg" or args.thresholds == "zero" else f"-{args.thresholds}"
    path = args.output / f"sam2-{args.mode}{suffix}-{device.type}-{precision}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
