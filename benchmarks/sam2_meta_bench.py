"""SAM 2.1 automatic masks: Meta's ``SAM2AutomaticMaskGenerator`` vs samdrop's ``Sam2Engine``.

Issue #20's second reference: ours >= 3x Meta's generator, with >= 90% of its top-100 masks (by
predicted IoU) matched by one of ours with mask IoU >= 0.9. Needs the ``bench-meta`` extra (Meta's
``sam2`` code; docs/benchmarks.md).

Same weights in both: a ``Sam2Model`` (``--checkpoint``, or seeded random weights of the real
hiera-tiny architecture, as ``sam2_bench.py`` builds it) converted to Meta's ``SAM2Base`` by
:mod:`benchmarks.meta_sam2` (the conversion is checked here, features and one point prompt, and in
tests/unit/test_meta_sam2.py). Same images (scikit-image's astronaut resized to 640x480, and its
coffee photo at 600x400), same 16x16 grid, three settings (:data:`SETTINGS`): Meta's defaults
(pred_iou 0.8, stability 0.95, box NMS 0.7); thresholds 0 with box NMS 0.7; thresholds 0 without box
NMS. Random weights leave no mask past Meta's thresholds, and their masks (logits near 0, boxes near
the whole image) mostly merge under box NMS, so agreement means something only in the last setting,
where all 768 candidates are kept. Meta's generator runs fp32 on the CPU as it does
there (``output_mode="coco_rle"``: RLEs, as ours returns); ours runs the precision ``auto`` picks,
its decoder compiled where ``SAMDROP_COMPILE=auto`` would (the warm-up pays the compile); a second,
fp32 eager engine gives the agreement figure without bf16's rounding. One warm-up each, then runs
alternate (Meta, ours) with the 1-minute load average beside each; process CPU seconds are
recorded too (a cross-check on a shared machine). Writes
``benchmarks/results/sam2-meta-<device>-<precision>.json``. Not a test.

    python benchmarks/sam2_meta_bench.py                 # 2 images x 3 settings, 1 run each
    python benchmarks/sam2_meta_bench.py --images 1 --settings meta zero-no-nms
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.amg_bench import MATCH_IOU, TOP, matched_share  # noqa: E402
from benchmarks.meta_sam2 import sam2_model_from_hf, tie_positional_embeddings  # noqa: E402
from benchmarks.sam2_bench import (  # noqa: E402
    THRESHOLDS,
    alternate,
    amg_params,
    astronaut,
    load,
    load_model,
    ours_amg,
    timed,
)
from predictor.engine import Job, pick_device  # noqa: E402
from predictor.hardware import machine_record, resolve_compile, resolve_precision  # noqa: E402
from predictor.sam2_engine import Sam2Engine  # noqa: E402

# (THRESHOLDS key, box_nms_thresh): Meta's defaults; thresholds 0; thresholds 0 without box NMS,
# where random weights' masks (near-whole-image boxes) are not all merged into a few.
SETTINGS = {"meta": ("meta", 0.7), "zero": ("zero", 0.7), "zero-no-nms": ("zero", 1.0)}
CONVERSION_POINTS = ((300.0, 500.0), (700.0, 100.0))  # model-input pixels


def coffee() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.coffee())  # type: ignore[no-untyped-call]


def conversion_check(
    hf_model: Any, meta_model: Any, engine: Sam2Engine, image: np.ndarray
) -> dict[str, float]:
    """Largest absolute differences between the two models on ``image``'s encoder features (Meta's
    preprocessing) and on single-point prompts' low-res logits and IoU (three masks each), and
    between ``engine``'s features (its own preprocessing) and Meta's; all fp32."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(meta_model)
    with torch.inference_mode():
        predictor.set_image(image)
        theirs = [*predictor._features["high_res_feats"], predictor._features["image_embed"]]
        pixels = predictor._transforms(image)[None]
        ours = hf_model.get_image_embeddings(pixels)
        points = torch.tensor(CONVERSION_POINTS)[:, None]
        labels = torch.ones(len(CONVERSION_POINTS), 1, dtype=torch.int)
        _, their_iou, their_logits = predictor._predict(
            points, labels, multimask_output=True, return_logits=True
        )
        out = hf_model(image_embeddings=ours, input_points=points[None], input_labels=labels[None])
        engine_features = engine.embed([image])[0].features
    return {
        "features_max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True)),
        "engine_features_max_abs_diff": max(
            float((a - b).abs().max()) for a, b in zip(engine_features, theirs, strict=True)
        ),
        "features_max_abs": max(float(a.abs().max()) for a in theirs),
        "low_res_logits_max_abs_diff": float((out.pred_masks[0] - their_logits).abs().max()),
        "low_res_logits_max_abs": float(their_logits.abs().max()),
        "iou_max_abs_diff": float((out.iou_scores[0] - their_iou).abs().max()),
    }


def cpu_timed(call: Callable[[], int], device: torch.device, cpu_s: list[float]) -> tuple[float, int]:
    """:func:`~benchmarks.sam2_bench.timed`, appending the process CPU seconds it took to ``cpu_s``."""
    started = time.process_time()
    seconds, count = timed(call, device)
    cpu_s.append(time.process_time() - started)
    return seconds, count


def compare(
    args: argparse.Namespace,
    device: torch.device,
    generator_for: Callable[[dict[str, Any]], Any],
    engine: Sam2Engine,
    fp32_engine: Sam2Engine,
    name: str,
    image: np.ndarray,
) -> dict[str, Any]:
    """Timings and agreement on one image with ``args.thresholds`` and ``args.box_nms_thresh``."""
    params = {**amg_params(args, args.grid), "box_nms_thresh": args.box_nms_thresh}
    meta = generator_for(params)
    last: dict[str, Any] = {}
    cpu: dict[str, list[float]] = {"reference": [], "ours": []}

    def theirs() -> int:
        last["reference"] = meta.generate(image)
        return len(last["reference"])

    def ours() -> int:
        engine.clear_cache()  # each run encodes the image, as Meta's generator does
        last["ours"] = engine.run([Job(image, None, params)])[0]
        return len(last["ours"].masks)

    figures = alternate(
        args.runs,
        lambda: cpu_timed(theirs, device, cpu["reference"]),
        lambda: cpu_timed(ours, device, cpu["ours"]),
    )
    reference, result = last["reference"], last["ours"]
    fp32 = fp32_engine.run([Job(image, None, params)])[0]  # from its cache after the first setting
    reference_cpu_s = statistics.median(cpu["reference"])
    ours_cpu_s = statistics.median(cpu["ours"])
    return {
        "image": f"{name} {image.shape[1]}x{image.shape[0]}",
        "thresholds": args.thresholds,
        "box_nms_thresh": args.box_nms_thresh,
        **figures,
        "reference_cpu_s": round(reference_cpu_s, 2),
        "ours_cpu_s": round(ours_cpu_s, 2),
        "cpu_speedup": round(reference_cpu_s / ours_cpu_s, 2),
        "our_stages_ms": result.stages_ms,
        "our_counts": result.counts,
        "masks": {"reference": len(reference), "ours": len(result.masks), "ours_fp32": len(fp32.masks)},
        "matched_top100": round(matched_share(reference, result.masks), 3) if result.masks else None,
        "matched_top100_fp32": round(matched_share(reference, fp32.masks), 3) if fp32.masks else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", help="a save_pretrained folder (real weights) instead of random ones")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--images", type=int, default=2, choices=(1, 2), help="astronaut, then coffee")
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help="our decoder")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.thresholds, args.box_nms_thresh = SETTINGS["meta"]  # amg_params reads args.thresholds

    from importlib.metadata import version

    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    device = pick_device("cpu")  # Meta's generator on the CPU: its fp32 path, as it runs there
    model, weights = load_model(args.checkpoint, device)
    tie_positional_embeddings(model)  # one tensor in Meta's model; already equal in trained weights
    meta_model = sam2_model_from_hf(model)
    precision = resolve_precision(args.precision, device)
    compiled = resolve_compile(args.compile, device)
    engine = Sam2Engine(model, "sam2.1_hiera_tiny", precision=precision, compile=compiled, max_masks=100_000)
    fp32_engine = Sam2Engine(model, "sam2.1_hiera_tiny", precision="fp32", max_masks=100_000)
    images = [
        ("scikit-image astronaut resized", astronaut(args.width, args.height)),
        ("scikit-image coffee", coffee()),
    ][: args.images]
    machine = {
        **machine_record(device),
        "sam2": version("sam2"),
        "transformers": version("transformers"),
        "load_1m_at_start": load(),
    }
    print(f"{machine['cpu']} ({machine['threads']} threads); weights: {weights}; ours {precision}")

    def generator_for(params: dict[str, Any]) -> Any:
        """Meta's generator with our parameters (the same names; ``max_masks`` is ours only)."""
        kept = {k: v for k, v in params.items() if k != "max_masks"}
        return SAM2AutomaticMaskGenerator(meta_model, **kept, output_mode="coco_rle")

    conversion = conversion_check(model, meta_model, fp32_engine, images[0][1])
    print(f"conversion: {conversion}")
    timed(lambda: len(generator_for(amg_params(args, 2)).generate(images[0][1])), device)  # warm-ups
    warmup_s, _ = timed(ours_amg(engine, images[0][1], amg_params(args, 2)), device)
    timed(ours_amg(fp32_engine, images[0][1], amg_params(args, 2)), device)
    doc: dict[str, Any] = {
        "machine": machine,
        "weights": weights,
        "random_weights": args.checkpoint is None,
        "grid": args.grid,
        "points_per_batch": args.points_per_batch,
        "settings": {
            name: {
                "pred_iou_thresh": THRESHOLDS[thresholds][0],
                "stability_score_thresh": THRESHOLDS[thresholds][1],
                "box_nms_thresh": box_nms,
            }
            for name, (thresholds, box_nms) in SETTINGS.items()
        },
        "reference": "Meta's SAM2AutomaticMaskGenerator (sam2 1.1.0), fp32, CPU, output_mode coco_rle",
        "ours": (
            f"Sam2Engine.generate, {precision}, decoder compiled: {compiled}; "
            "agreement also from an fp32 eager engine"
        ),
        "agreement": (
            f"share of Meta's top-{TOP} masks (by predicted IoU) that one of ours matches, IoU >= {MATCH_IOU}"
        ),
        "conversion_check": conversion,
        "our_warmup_s": round(warmup_s, 2),
        "comparisons": [],
    }
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"sam2-meta-{device.type}-{precision}.json"
    for setting in args.settings:
        args.thresholds, args.box_nms_thresh = SETTINGS[setting]
        for name, image in images:
            row = {
                "setting": setting,
                **compare(args, device, generator_for, engine, fp32_engine, name, image),
            }
            print(
                f"{row['image']}, {setting}: Meta {row['reference_s']:.2f} s, ours {row['ours_s']:.2f} s "
                f"({row['speedup']}x, CPU {row['cpu_speedup']}x); masks {row['masks']}; "
                f"top-{TOP} matched {row['matched_top100']} ({precision}), "
                f"{row['matched_top100_fp32']} (fp32)"
            )
            doc["comparisons"].append(row)
            doc["machine"]["load_1m_at_end"] = load()
            path.write_text(json.dumps(doc, indent=2) + "\n")  # after each row: a long run keeps what it has
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
