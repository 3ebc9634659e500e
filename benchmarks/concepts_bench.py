"""SAM 3 concept prompts: plain transformers use vs :class:`predictor.concepts.ConceptEngine`.

Reference: ``processor(images=image, text=concept)`` -> ``model(**inputs)`` ->
``processor.post_process_instance_segmentation``, one call per image and concept, fp32 — what
transformers' docs show. Ours: the engine's fast path (text once per concept, vision once per image
in batches, each image's concepts in one detector pass), at the precision ``auto`` picks, and again
in fp32 when that is bf16, so the ratio splits into what reuse buys and what bf16 adds.

Full-size SAM 3 weights cannot be downloaded here: ``--config full`` is the real ``Sam3Config()``
architecture (1008 px input, 32-layer ViT, 24-layer text encoder) with seeded random weights, so
the timings are real and the masks meaningless. The tokenizer is a CLIP tokenizer over single
letters (offline); concepts are padded to 32 tokens either way, so it does not change the cost.
``--config small`` cuts the ViT to 8 layers and the text encoder to 6 (everything else as full), for
when the full model cannot finish (two shared cores); ``--config tiny`` is the unit tests' model, to
check the script in seconds. Runs the paths once,
in one process, on scikit-image photos. Prints the figures and writes JSON (default
``benchmarks/results/concepts-<config>-cpu.json``). Not a test.

    python benchmarks/concepts_bench.py --config tiny                 # seconds
    python benchmarks/concepts_bench.py --config small                # ~1,100 CPU-s: ~10 min on 2 quiet cores
    python benchmarks/concepts_bench.py --config full --images 2 --reference-pairs 2
        # ~730 CPU-s: ~7 min on 2 quiet cores (25 min at load 8); all 16 pairs: ~45 min
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import transformers
from skimage import data
from transformers import Sam3Config, Sam3Model, Sam3Processor
from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predictor.concepts import ConceptEngine, ConceptMasks, ConceptThresholds  # noqa: E402
from predictor.hardware import machine_record, resolve_precision  # noqa: E402
from tests.sam3_models import SIDE, tiny_tokenizer  # noqa: E402
from tests.sam3_models import tiny_sam3_config as tiny_config  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
CONCEPTS = ["person", "cat", "cup", "rocket"]
SEED = 0


def small_config() -> Sam3Config:
    """``Sam3Config()`` with a quarter of the encoders' depth: ViT 8 layers (global attention at 3
    and 7, as the full model has one global layer in every 8), text encoder 6; input side (1008),
    widths, DETR encoder/decoder, 200 queries and mask decoder as the full model."""
    config = Sam3Config()
    backbone = cast(Any, config.vision_config).backbone_config
    backbone.num_hidden_layers = 8
    backbone.global_attn_indexes = [3, 7]
    cast(Any, config.text_config).num_hidden_layers = 6
    return config


def build_engine(config_name: str, device: torch.device) -> ConceptEngine:
    """A fp32 engine over a seeded random model of ``config_name``'s architecture on ``device``."""
    torch.manual_seed(SEED)
    config = {"full": Sam3Config, "small": small_config, "tiny": tiny_config}[config_name]()
    model = Sam3Model(config).eval().to(device)  # type: ignore[no-untyped-call]
    side = SIDE if config_name == "tiny" else config.image_size
    processor = Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": side, "width": side}), tokenizer=tiny_tokenizer()
    )
    return ConceptEngine(model, processor, precision="fp32")


def timed(
    engine: ConceptEngine,
    images: list[np.ndarray],
    concepts: list[list[str]],
    thresholds: ConceptThresholds,
) -> dict[str, Any]:
    """One :meth:`ConceptEngine.segment` call over ``images``, ``concepts[i]`` asked of image ``i``."""
    engine.clear_cache()
    start, cpu_start = time.perf_counter(), time.process_time()
    results = engine.segment(images, concepts, thresholds=thresholds)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    pairs = sum(len(names) for names in concepts)
    stages: dict[str, float] = {}
    for result in results:
        for stage, ms in result.timings_ms.items():
            stages[stage] = stages.get(stage, 0.0) + ms
    if "text_call" in stages:
        stages["text_call"] /= len(results)  # the same call-wide figure on every image
    return {
        "pairs": pairs,
        "seconds": round(seconds, 2),
        # CPU time of all threads: steadier than wall time when other work shares the cores.
        "cpu_seconds": round(cpu_seconds, 2),
        "seconds_per_pair": round(seconds / pairs, 3),
        "cpu_seconds_per_pair": round(cpu_seconds / pairs, 3),
        "pairs_per_s": round(pairs / seconds, 4),
        "stages_ms": {stage: round(ms, 1) for stage, ms in stages.items()},
        "instances": sum(len(result.labels) for result in results),
        "results": results,
    }


def reference_pairs(image_count: int, pairs: int) -> list[list[str]]:
    """The concepts the reference is asked per image when it runs ``pairs`` of the pairs only: the
    first concept of every image, then the second, ... (so every image is covered early)."""
    asked: list[list[str]] = [[] for _ in range(image_count)]
    for pair in range(pairs):
        asked[pair % image_count].append(CONCEPTS[pair // image_count])
    return asked


def restrict(results: list[ConceptMasks], asked: list[list[str]]) -> list[ConceptMasks]:
    """``results`` cut down to the concepts in ``asked`` (per image), for comparing with a reference
    that ran fewer pairs."""
    kept = []
    for result, names in zip(results, asked, strict=True):
        rows = [i for i, label in enumerate(result.labels) if label in names]
        kept.append(
            ConceptMasks(
                masks=result.masks[rows],
                scores=result.scores[rows],
                boxes=result.boxes[rows],
                labels=[result.labels[i] for i in rows],
                width=result.width,
                height=result.height,
            )
        )
    return kept


def agreement(ours: list[ConceptMasks], theirs: list[ConceptMasks]) -> dict[str, Any]:
    """How close two runs' answers are: same instances, score and mask differences."""
    same = all(a.labels == b.labels for a, b in zip(ours, theirs, strict=True))
    report: dict[str, Any] = {"same_instances": same}
    if same:
        report["max_score_diff"] = float(
            max(
                (np.abs(a.scores - b.scores).max(initial=0) for a, b in zip(ours, theirs, strict=True)),
                default=0,
            )
        )
        pixels = sum(a.masks.size for a in ours)
        differ = sum(int((a.masks != b.masks).sum()) for a, b in zip(ours, theirs, strict=True))
        report["mask_pixels_differing"] = differ / pixels if pixels else 0.0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=("full", "small", "tiny"), default="full")
    parser.add_argument(
        "--images-per-pass", type=int, help="images per vision-encoder pass (default: the device's; CPU: 1)"
    )
    # Random weights score every query near 0.25: 0 keeps all of them, so the agreement check
    # covers every mask (and both paths upsample 200 masks per pair, more than real weights keep).
    parser.add_argument("--score-threshold", type=float, default=0.0)
    parser.add_argument("--images", type=int, default=len(PHOTOS), help=f"photos to use (1-{len(PHOTOS)})")
    parser.add_argument(
        "--reference-pairs",
        type=int,
        help="run the reference on this many (image, concept) pairs only and scale its time per pair "
        "to all pairs (its cost per pair does not depend on the other pairs); default: all",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu.sh)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    photos = PHOTOS[: args.images]
    images = [getattr(data, name)() for name in photos]
    all_pairs = len(images) * len(CONCEPTS)
    reference_count = min(args.reference_pairs or all_pairs, all_pairs)
    asked = [list(CONCEPTS) for _ in images]
    reference_asked = reference_pairs(len(images), reference_count)
    load_before = os.getloadavg()
    thresholds = ConceptThresholds(score=args.score_threshold)
    start = time.perf_counter()
    fp32 = build_engine(args.config, device)
    fp32.images_per_pass = args.images_per_pass or fp32.images_per_pass
    build_s = time.perf_counter() - start
    precision = resolve_precision("auto", device)
    runs: dict[str, dict[str, Any]] = {}
    if precision == "bf16":
        per_pass = fp32.images_per_pass
        auto = ConceptEngine(fp32.model, fp32.processor, precision="bf16", images_per_pass=per_pass)
        runs["ours_bf16"] = timed(auto, images, asked, thresholds)
        print(
            f"ours (bf16): {runs['ours_bf16']['seconds']} s, {runs['ours_bf16']['cpu_seconds']} CPU-s",
            flush=True,
        )
    runs["ours_fp32"] = timed(fp32, images, asked, thresholds)
    print(
        f"ours (fp32): {runs['ours_fp32']['seconds']} s, {runs['ours_fp32']['cpu_seconds']} CPU-s", flush=True
    )
    reference = ConceptEngine(fp32.model, fp32.processor, fast=False)
    runs["reference"] = timed(reference, images, reference_asked, thresholds)
    print(
        f"reference (fp32): {runs['reference']['seconds']} s, {runs['reference']['cpu_seconds']} CPU-s "
        f"for {reference_count} of {all_pairs} pairs",
        flush=True,
    )

    results = {name: run.pop("results") for name, run in runs.items()}
    fastest = "ours_bf16" if "ours_bf16" in runs else "ours_fp32"
    # Every ratio is per pair: the reference's time per pair, over ours (which ran all pairs).
    per_pair = {name: run["seconds_per_pair"] for name, run in runs.items()}
    cpu_per_pair = {name: run["cpu_seconds_per_pair"] for name, run in runs.items()}
    report = {
        "config": args.config,
        "weights": f"random (torch.manual_seed({SEED}))",
        "architecture": {
            "full": "Sam3Config() as released",
            "small": small_config.__doc__,
            "tiny": "the unit tests' tiny config",
        }[args.config],
        "parameters": sum(p.numel() for p in fp32.model.parameters()),
        "image_side": fp32.processor.image_processor.size["height"],
        "attention": fp32.model.config._attn_implementation,
        "tokenizer": "CLIP BPE over single letters (offline); every concept padded to 32 tokens",
        "images": [
            f"skimage.data.{name} {image.shape[1]}x{image.shape[0]}"
            for name, image in zip(photos, images, strict=True)
        ],
        "concepts": CONCEPTS,
        "pairs": all_pairs,
        "reference_pairs_measured": reference_count,
        "reference_asked": {name: names for name, names in zip(photos, reference_asked, strict=True)},
        "reference_scaled": reference_count < all_pairs,
        "score_threshold": args.score_threshold,
        "images_per_pass": fp32.images_per_pass,
        "machine": {**machine_record(device), "transformers": transformers.__version__},
        "auto_precision": precision,
        "bf16_ran": "ours_bf16" in runs,
        "build_model_s": round(build_s, 1),
        "runs": runs,
        "speedup": {
            "basis": "seconds per (image, concept) pair"
            + (
                f"; the reference measured on {reference_count} of {all_pairs} pairs, ours on all"
                if reference_count < all_pairs
                else ""
            ),
            "fastest_vs_reference": round(per_pair["reference"] / per_pair[fastest], 2),
            "fp32_vs_reference": round(per_pair["reference"] / per_pair["ours_fp32"], 2),
            "fastest_vs_reference_cpu": round(cpu_per_pair["reference"] / cpu_per_pair[fastest], 2),
            "fp32_vs_reference_cpu": round(cpu_per_pair["reference"] / cpu_per_pair["ours_fp32"], 2),
        },
        "agreement_fp32_vs_reference": agreement(
            restrict(results["ours_fp32"], reference_asked), results["reference"]
        ),
        # The two cores are shared with other work; the 1-minute load says how much there was.
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "order": "ours (bf16), ours (fp32), reference; one run each, no warm-up",
        "agreement_on": "the pairs the reference ran",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if "ours_bf16" in results:
        report["agreement_bf16_vs_reference"] = agreement(
            restrict(results["ours_bf16"], reference_asked), results["reference"]
        )
    out = args.out or ROOT / "benchmarks" / "results" / f"concepts-{args.config}-{device.type}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("speedup", "bf16_ran", "peak_rss_mb")}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
