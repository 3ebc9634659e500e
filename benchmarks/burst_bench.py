"""A burst of prompted uploads on the local stack against the bare engine, same images. Not a test.

Starts a fresh local stack of its own (empty buckets, free ports; the other settings come from
``SAMDROP_*`` variables, as for ``samdrop local up``), uploads N distinct photos with a box prompt
each as fast as 8 threads can, and waits for every completion: the stack's images/s run from the
first upload to the last completion. Each ``masks.json`` says which encoder batch embedded its
image (``model.encoder_batch``), so the figure shows whether concurrent requests really were
grouped. Then the bare engine (``SamEngine.run`` over the same decoded images and prompts,
``SAMDROP_BATCH_SIZE`` at a time, in this process, with the stack stopped) gives the ceiling.
Writes ``benchmarks/results/burst-local.json``.

``--split-cores`` gives the model the same cores in both runs and nothing else: the predictor (and
later the bare engine) on the first half of this process's CPUs, the emulators, function, bridge
and this script on the rest. In Google Cloud, storage, Pub/Sub and the function never share the
endpoint's cores; this asks whether the event path keeps the model as busy as a bare loop does.

    python benchmarks/burst_bench.py --images 100
    python benchmarks/burst_bench.py --split-cores --out benchmarks/results/burst-local-split.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.harness import (  # noqa: E402
    await_completions,
    completion_clients,
    running_stack,
    sample_image,
    upload_file,
)
from deploy.local import LocalStack, free_ports  # noqa: E402
from deploy.processes import live_members  # noqa: E402
from predictor.engine import Job, SamEngine  # noqa: E402
from predictor.hardware import cpu_name  # noqa: E402
from predictor.instances import parse_prompts  # noqa: E402
from samdrop.settings import Settings  # noqa: E402

# Eight different photos (skimage's `cat` is `chelsea` again: it gave cache hits, not encoder work).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "coins", "immunohistochemistry")


def distinct_images(count: int) -> list[np.ndarray]:
    """``count`` different RGB photos (shifted crops once the originals run out)."""
    out = []
    for index in range(count):
        image = sample_image(PHOTOS[index % len(PHOTOS)])
        image = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]
        shift = index // len(PHOTOS)
        out.append(np.ascontiguousarray(image[shift:, shift:]))
    return out


def box_for(image: np.ndarray) -> list[float]:
    height, width = image.shape[:2]
    return [width * 0.2, height * 0.2, width * 0.8, height * 0.8]


def burst(
    settings: Settings, files: list[Path], images: list[np.ndarray], model_cores: set[int] | None
) -> dict[str, Any]:
    with running_stack(settings, keep_running=False, say=print) as stack:
        if model_cores is not None:
            predictor = next(s for s in stack.status() if s.name == "predictor")
            pin_group(predictor.pid, model_cores)
        client, subscriber, subscription = completion_clients(stack, settings)
        run = time.strftime("%H%M%S")
        cpu_before = stack_cpu_s(stack)
        started = time.monotonic()

        def upload(item: tuple[Path, np.ndarray]) -> Any:
            path, image = item
            name = f"{settings.incoming_prefix}burst-{run}/{path.name}"
            return upload_file(client, settings.bucket, path, name, {"boxes": [box_for(image)]})

        with ThreadPoolExecutor(8) as pool:
            uploads = list(pool.map(upload, zip(files, images, strict=True)))
        uploaded_s = time.monotonic() - started
        await_completions(subscriber, subscription, uploads, timeout_s=1800)
        elapsed = max(u.uploaded_at + (u.latency_s or 0) for u in uploads) - started
        cpu_after = stack_cpu_s(stack)
        batches: collections.Counter[int] = collections.Counter()
        statuses: collections.Counter[str] = collections.Counter()
        for item in uploads:
            message = item.completion or {}
            statuses[str(message.get("status"))] += 1
            metadata = (message.get("outputs") or {}).get("metadata")
            if metadata:
                from google.cloud import storage as gcs

                doc = json.loads(gcs.Blob.from_uri(metadata, client=client).download_as_bytes())
                batches[int((doc.get("model") or {}).get("encoder_batch", 0))] += 1
        subscriber.close()
        client.close()
    return {
        "uploaded_in_s": round(uploaded_s, 2),
        "elapsed_s": round(elapsed, 2),
        "images_per_s": round(len(files) / elapsed, 3),
        "statuses": dict(statuses),
        "images_by_encoder_batch": {str(k): v for k, v in sorted(batches.items())},
        # CPU seconds each part used from the first upload to the last completion ("benchmark":
        # this script's uploads and completion pulls).
        "cpu_s": {name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_before},
    }


def stack_cpu_s(stack: LocalStack) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each service's process group, and this process."""
    used = {s.name: sum(_cpu_seconds(pid) for pid in live_members(s.pid)) for s in stack.status()}
    times = os.times()
    return {**used, "benchmark": times.user + times.system}


def _cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:  # ended meanwhile
        return 0.0
    return float(times.user + times.system)


def own_stack_settings(workdir: Path) -> Settings:
    """Settings for a stack of its own under ``workdir`` (``tiny`` unless ``SAMDROP_MODEL_TYPE`` says
    otherwise): empty buckets and free ports, so a running `samdrop local up` is left alone.
    fake-gcs-server lists a folder in time proportional to the whole bucket (11 ms per listing with
    7,700 objects stored, 4 ms empty), and the function lists once per upload."""
    return Settings.from_env(
        {"SAMDROP_MODEL_TYPE": "tiny", **os.environ}, state_dir=workdir / "state", **free_ports()
    )


def bare_engine(settings: Settings, images: list[np.ndarray], model_cores: set[int] | None) -> dict[str, Any]:
    if model_cores is not None:
        import torch

        pin_tasks(os.getpid(), model_cores)
        torch.set_num_threads(len(model_cores))
    engine = SamEngine.from_settings(settings)
    jobs = [Job(image, parse_prompts(None, None, [box_for(image)])) for image in images]
    engine.run(jobs[: settings.batch_size])  # warm-up
    engine.clear_cache()
    cpu, started = time.process_time(), time.perf_counter()
    for start in range(0, len(jobs), settings.batch_size):
        engine.run(jobs[start : start + settings.batch_size])
    elapsed = time.perf_counter() - started
    return {
        "elapsed_s": round(elapsed, 2),
        "images_per_s": round(len(jobs) / elapsed, 3),
        "cpu_s": round(time.process_time() - cpu, 2),
    }


def split_cores() -> tuple[set[int], set[int]]:
    """(model cores, service cores): the first half of this process's CPUs, and the rest."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--split-cores needs at least 2 CPUs")
    half = len(cores) // 2
    return set(cores[:half]), set(cores[half:])


def pin_tasks(pid: int, cores: set[int]) -> None:
    """Every thread of ``pid`` onto ``cores`` (sched_setaffinity on a pid moves one thread only)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cores)


def pin_group(pgid: int, cores: set[int]) -> None:
    """Every thread of every process in group ``pgid`` onto ``cores``."""
    for pid in live_members(pgid):
        pin_tasks(pid, cores)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--split-cores", action="store_true", help="model and services on separate cores")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "burst-local.json")
    options = parser.parse_args()
    from PIL import Image

    model_cores: set[int] | None = None
    if options.split_cores:
        model_cores, service_cores = split_cores()
        os.sched_setaffinity(0, service_cores)  # the stack's servers inherit this
        os.environ["OMP_NUM_THREADS"] = str(len(model_cores))  # the predictor's torch threads
    images = distinct_images(options.images)
    with tempfile.TemporaryDirectory() as workdir:
        settings = own_stack_settings(Path(workdir))
        files = []
        for index, image in enumerate(images):
            path = Path(workdir) / f"{index:04d}.jpg"
            Image.fromarray(image).save(path, quality=92)
            files.append(path)
        # What the stack sees: the JPEGs as decoded, not the arrays before compression.
        decoded = [np.asarray(Image.open(path).convert("RGB")) for path in files]
        stack = burst(settings, files, images, model_cores)
    bare = bare_engine(settings, decoded, model_cores)
    summary = {
        "cpu": cpu_name(),
        "model_type": settings.model_type,
        "batch_size": settings.batch_size,
        "batch_window_ms": settings.batch_window_ms,
        "images": options.images,
        "model_cores": sorted(model_cores) if model_cores else "shared",
        "stack": stack,
        "bare_engine": bare,
        "stack_over_bare": round(stack["images_per_s"] / bare["images_per_s"], 3),
    }
    write_summary(summary, options.out)


def write_summary(summary: dict[str, Any], out: Path) -> None:
    """Print ``summary`` and commit-ready JSON to ``out``."""
    print(json.dumps(summary, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
