"""Reference SAM path vs samdrop's engine, side by side on the same images, prompts and weights.

Reference: what the published SAM-on-Vertex workflow did — a fresh ``segment_anything.SamPredictor``,
``set_image`` + ``predict`` per image, one prompt per call, fp32, and ``SamAutomaticMaskGenerator``
for automatic masks. Ours: ``predictor.engine.SamEngine`` with its fast path (batched encoder, SDPA,
bf16 where the hardware has it (``--precision auto``), all prompts of an image in one FastDecoder
call, the fast automatic-mask generator with its decoder compiled where ``--compile auto`` says).

Each path runs in its own child process, so peak memory is measured per path. Prints a table and
writes JSON (default ``benchmarks/results/predictor-<model>-<device>.json``). Not a test.

    python benchmarks/predictor_bench.py --model-type tiny --images 8
    python benchmarks/predictor_bench.py --model-type vit_b --images 4 --amg-images 1   # random weights
    python benchmarks/predictor_bench.py --model-type vit_h --checkpoint sam_vit_h_4b8939.pth --device cuda
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predictor.engine import Job, SamEngine, pick_device  # noqa: E402
from predictor.hardware import cpu_name, resolve_compile, resolve_precision  # noqa: E402
from predictor.instances import parse_prompts  # noqa: E402
from predictor.registry import TINY_SEED, build_sam, resolve_checkpoint  # noqa: E402

SAMPLES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "retina",
    "immunohistochemistry",
    "hubble_deep_field",
)


def sample_images(count: int) -> list[np.ndarray]:
    """``count`` distinct RGB photos from scikit-image (flipped/rotated variants once they run out)."""
    from skimage import data

    base = []
    for name in SAMPLES:
        image = getattr(data, name)()
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        base.append(np.ascontiguousarray(image[:, :, :3]))
    variants = [lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: np.rot90(a)]
    return [np.ascontiguousarray(variants[(i // len(base)) % 4](base[i % len(base)])) for i in range(count)]


def boxes_for(image: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` box prompts (``Kx4`` XYXY pixels) inside the image; each box is one prompt."""
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    centres = rng.uniform(0, 1, (count, 2)) * [width - 1, height - 1]
    half = np.array([width, height]) * 0.3
    return np.concatenate(
        [np.maximum(centres - half, 0), np.minimum(centres + half, [width - 1, height - 1])], 1
    )


def seeded_checkpoint(model_type: str, checkpoint: str | None, workdir: Path) -> str:
    """The checkpoint both paths load: the given one, tiny's, or seeded random weights for timing."""
    if checkpoint:
        return str(resolve_checkpoint(model_type, checkpoint, workdir))
    if model_type == "tiny":
        return str(resolve_checkpoint("tiny", None, workdir))
    torch.manual_seed(TINY_SEED)
    path = workdir / f"{model_type}-random.pth"
    torch.save(build_sam(model_type).state_dict(), path)
    return str(path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_reference(args: dict[str, Any]) -> dict[str, Any]:
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    device = pick_device(args["device"])
    model = build_sam(args["model_type"])  # segment-anything's own modules, original attention
    model.load_state_dict(torch.load(args["checkpoint"], map_location="cpu", weights_only=True))
    model.to(device).eval()
    images = sample_images(args["images"])
    warm = SamPredictor(model)
    warm.set_image(images[0])
    warm.predict(np.array([[10.0, 10.0]]), np.array([1]))
    sync(device)
    encoder_s = prompt_s = 0.0
    started = time.perf_counter()
    for index, image in enumerate(images):
        predictor = SamPredictor(model)  # fresh per image, as the published workflow did
        t0 = time.perf_counter()
        predictor.set_image(image)
        sync(device)
        t1 = time.perf_counter()
        for box in boxes_for(image, args["prompts"], index):  # one predict call per prompt
            predictor.predict(box=box, multimask_output=False)
        sync(device)
        encoder_s += t1 - t0
        prompt_s += time.perf_counter() - t1
    total = time.perf_counter() - started
    amg_s = []
    for image in images[: args["amg_images"]]:
        generator = SamAutomaticMaskGenerator(model, points_per_side=args["points_per_side"])
        t0 = time.perf_counter()
        generator.generate(image)
        sync(device)
        amg_s.append(time.perf_counter() - t0)
    return summarise(args, device, total, encoder_s, prompt_s, amg_s)


def run_ours(args: dict[str, Any]) -> dict[str, Any]:
    from predictor.registry import load_sam

    device = pick_device(args["device"])
    model = load_sam(args["model_type"], args["checkpoint"], Path(args["workdir"]), device)
    engine = SamEngine(
        model,
        args["model_type"],
        fast=True,
        batch_size=args["batch_size"],
        points_per_batch=args["points_per_batch"],
        cache_size=0,
        max_masks=10_000,
        precision=resolve_precision(args["precision"], device),
        compile=resolve_compile(args["compile"], device),
    )
    images = sample_images(args["images"])
    engine.run([Job(images[0], parse_prompts([[10, 10]], [1], None))])
    sync(device)
    encoder_s = prompt_s = 0.0
    started = time.perf_counter()
    for start in range(0, len(images), args["batch_size"]):
        chunk = images[start : start + args["batch_size"]]
        t0 = time.perf_counter()
        embeddings = engine.embed(chunk)
        sync(device)
        t1 = time.perf_counter()
        for offset, (image, embedding) in enumerate(zip(chunk, embeddings, strict=True)):
            prompts = parse_prompts(
                None, None, boxes_for(image, args["prompts"], start + offset).tolist(), False
            )
            assert prompts is not None
            engine.segment(image, prompts, embedding)  # every prompt of the image in one decoder call
        sync(device)
        encoder_s += t1 - t0
        prompt_s += time.perf_counter() - t1
    total = time.perf_counter() - started
    amg_s = []
    for image in images[: args["amg_images"]]:
        t0 = time.perf_counter()
        engine.run([Job(image, None, {"points_per_side": args["points_per_side"]})])
        sync(device)
        amg_s.append(time.perf_counter() - t0)
    return summarise(args, device, total, encoder_s, prompt_s, amg_s)


def summarise(
    args: dict[str, Any],
    device: torch.device,
    total: float,
    encoder_s: float,
    prompt_s: float,
    amg_s: list[float],
) -> dict[str, Any]:
    count = args["images"]
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "device": str(device),
        "images": count,
        "prompts_per_image": args["prompts"],
        "images_per_s": round(count / total, 3),
        "encoder_ms_per_image": round(encoder_s * 1000 / count, 1),
        "prompt_ms_per_image": round(prompt_s * 1000 / count, 1),
        "automatic_s_per_image": round(sum(amg_s) / len(amg_s), 3) if amg_s else None,
        "peak_memory_mb": round(peak_mb, 1),
    }


def child(path: str, args: dict[str, Any], queue: Any) -> None:
    torch.set_num_threads(args["threads"]) if args["threads"] else None
    queue.put((run_reference if path == "reference" else run_ours)(args))


def wait_for_result(process: Any, queue: Any, path: str) -> dict[str, Any]:
    """The child's result; a child that dies without one (OOM, crash) stops the benchmark loudly."""
    import queue as queues

    while True:
        try:
            result: dict[str, Any] = queue.get(timeout=5)
        except queues.Empty:
            if not process.is_alive():
                raise SystemExit(
                    f"the {path} run died with exit code {process.exitcode} before reporting"
                ) from None
            continue
        process.join()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-type", default="tiny", choices=("tiny", "vit_b", "vit_l", "vit_h"))
    parser.add_argument("--checkpoint", help="Meta's checkpoint; default: seeded random weights")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4, help="box prompts per image")
    parser.add_argument("--amg-images", type=int, default=2, help="images for the automatic-mask timing")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each path, alternating; best kept")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        args = {**vars(options), "workdir": workdir, "out": None}
        args["checkpoint"] = seeded_checkpoint(options.model_type, options.checkpoint, Path(workdir))
        context = multiprocessing.get_context("spawn")
        runs: dict[str, list[dict[str, Any]]] = {"reference": [], "ours": []}
        # Alternating order, best run of each: a busy machine slows whichever path it overlaps.
        for repeat in range(options.repeats):
            for path in ("reference", "ours") if repeat % 2 == 0 else ("ours", "reference"):
                queue = context.Queue()
                process = context.Process(target=child, args=(path, args, queue))
                process.start()
                runs[path].append(wait_for_result(process, queue, path))
                print(f"{path:9} {json.dumps(runs[path][-1])}", flush=True)

    ref, ours = (max(runs[path], key=lambda r: r["images_per_s"]) for path in ("reference", "ours"))
    ratios = {
        "images_per_s": round(ours["images_per_s"] / ref["images_per_s"], 2),
        "encoder_speedup": round(ref["encoder_ms_per_image"] / ours["encoder_ms_per_image"], 2),
        "prompt_speedup": round(ref["prompt_ms_per_image"] / max(ours["prompt_ms_per_image"], 1e-6), 2),
    }
    if ref["automatic_s_per_image"] and ours["automatic_s_per_image"]:
        ratios["automatic_speedup"] = round(ref["automatic_s_per_image"] / ours["automatic_s_per_image"], 2)
    report = {
        "model_type": options.model_type,
        "weights": "checkpoint"
        if options.checkpoint
        else ("seeded tiny" if options.model_type == "tiny" else "random"),
        "settings": {k: v for k, v in vars(options).items() if k not in ("out", "checkpoint")},
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": cpu_name(),
            "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "reference": ref,
        "ours": ours,
        "runs": runs,
        "ours_over_reference": ratios,
    }
    print(f"{'':24}{'reference':>12}{'ours':>12}")
    for key in (
        "images_per_s",
        "encoder_ms_per_image",
        "prompt_ms_per_image",
        "automatic_s_per_image",
        "peak_memory_mb",
    ):
        print(f"{key:24}{ref[key]!s:>12}{ours[key]!s:>12}")
    print("ours/reference:", json.dumps(ratios))
    out = (
        options.out
        or ROOT / "benchmarks" / "results" / f"predictor-{options.model_type}-{ours['device']}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
