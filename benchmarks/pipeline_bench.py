"""The batch pipeline against the bare engine, on the same images (``tiny`` model by default).

For each size N: N prompted photos (scikit-image samples, resized, one box prompt each) are uploaded
to fake-gcs-server under ``batches/<id>/``; the pipeline runs with kfp.local exactly as the local
runner runs it (``python -m pipeline.worker``), and the bare engine segments the same decoded
images in this process (``SamEngine.run`` in batches, no storage at all). Reported: images/s end to
end (every kfp.local task start, model load, listing, report and publish included), images/s of
the shard tasks' steady state (after the model is loaded), images/s of the bare engine (mean of a
run before and one after the pipeline), the pipeline's time split, the time spent outside the shard
tasks' own work and each kfp.local task's wall time. With the default automatic shard size and
``--parallelism 1`` every run is one shard (kfp.local runs shards one after another anyway). Writes
JSON and an "execution time vs number of images" chart to ``benchmarks/results/``. Not a test.

    python benchmarks/pipeline_bench.py --sizes 50 200 1000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.local import LocalStack, emulator_storage_client, free_ports, pubsub_clients  # noqa: E402
from pipeline.compile import compile_pipeline  # noqa: E402
from pipeline.plots import line_chart  # noqa: E402
from predictor.engine import Job, SamEngine  # noqa: E402
from predictor.instances import parse_prompts  # noqa: E402
from samdrop.images import decode_image  # noqa: E402
from samdrop.settings import Settings  # noqa: E402

SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "camera")


def photos(count: int, side: int) -> list[bytes]:
    """``count`` distinct JPEGs, longest side about ``side`` px: random crops (80-100 %) of
    scikit-image samples, some mirrored. Distinct content, so no embedding-cache hit flatters anyone."""
    from skimage import data

    base = []
    for name in SAMPLES:
        image = getattr(data, name)()
        image = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]
        pil = Image.fromarray(np.ascontiguousarray(image))
        pil.thumbnail((side * 5 // 4, side * 5 // 4))
        base.append(np.asarray(pil))
    rng = np.random.default_rng(20261126)
    out = []
    for i in range(count):
        image = base[i % len(base)]
        height, width = image.shape[:2]
        h, w = int(height * rng.uniform(0.8, 1.0)), int(width * rng.uniform(0.8, 1.0))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        image = image[y : y + h, x : x + w]
        image = image[:, ::-1] if rng.random() < 0.5 else image
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def box_prompt(data: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return {"boxes": [[width * 0.2, height * 0.2, width * 0.8, height * 0.8]]}


def bare_engine(settings: Settings, images: list[bytes], prompts: list[dict[str, Any]]) -> dict[str, float]:
    """Decode and segment in this process: the engine's own throughput, model load excluded."""
    started = time.perf_counter()
    engine = SamEngine.from_settings(settings)
    load = time.perf_counter() - started
    started = time.perf_counter()
    decode = compute = 0.0
    step = engine.batch_size
    for start in range(0, len(images), step):
        t0 = time.perf_counter()
        decoded = [
            decode_image(d, max_pixels=settings.max_image_pixels) for d in images[start : start + step]
        ]
        jobs = [
            Job(image, parse_prompts(None, None, p["boxes"]))
            for image, p in zip(decoded, prompts[start : start + step], strict=True)
        ]
        t1 = time.perf_counter()
        engine.run(jobs)
        decode += t1 - t0
        compute += time.perf_counter() - t1
    wall = time.perf_counter() - started
    return {"load_model_s": load, "decode_s": decode, "compute_s": compute, "wall_s": wall}


def run_pipeline(
    stack_env: dict[str, str], settings: Settings, client: Any, images: list[bytes]
) -> dict[str, Any]:
    batch = f"bench-{len(images)}-{uuid.uuid4().hex[:6]}"
    bucket = client.bucket(settings.bucket)
    prompts = {}

    def put(index: int) -> None:
        name = f"img_{index:05d}.jpg"
        bucket.blob(f"batches/{batch}/{name}").upload_from_string(images[index], content_type="image/jpeg")
        prompts[name] = box_prompt(images[index])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(len(images))))
    bucket.blob(f"batches/{batch}/prompts.json").upload_from_string(json.dumps(prompts))
    marker = bucket.blob(f"batches/{batch}/_READY")
    marker.upload_from_string(b"")
    env = {**os.environ, **settings.to_env(), **stack_env}
    argv = [sys.executable, "-m", "pipeline.worker", "--batch-id", batch, "--bucket", settings.bucket]
    started = time.perf_counter()
    done = subprocess.run(
        [*argv, "--marker-generation", str(marker.generation)], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"pipeline worker failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    outputs = client.bucket(settings.output_bucket)
    summary = json.loads(outputs.blob(f"results/batches/{batch}/summary.json").download_as_bytes())
    if summary["succeeded"] != len(images):
        raise SystemExit(f"pipeline segmented {summary['succeeded']} of {len(images)} images: {summary}")
    return {"wall_s": wall, "summary": summary, "tasks_s": task_walls(done.stdout + done.stderr)}


TASK_LINE = re.compile(
    r"^(\d\d):(\d\d):(\d\d\.\d+) - INFO - (?:Executing task '([^']+)'|Task '([^']+)' finished)",
    re.MULTILINE,
)


def task_walls(log: str) -> dict[str, float]:
    """Wall seconds of each kfp.local task (process start, imports and exit included), from the
    runner's "Executing task 'x'" and "Task 'x' finished" log lines; repeated tasks add up."""
    started: dict[str, float] = {}
    walls: dict[str, float] = {}
    for match in TASK_LINE.finditer(re.sub(r"\x1b\[[0-9;]*m", "", log)):
        hours, minutes, seconds, begins, ends = match.groups()
        at = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        if begins:
            started[begins] = at
        elif ends in started:
            walls[ends] = round(walls.get(ends, 0.0) + at - started.pop(ends), 2)
    return walls


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--side", type=int, default=320, help="longest image side, px")
    parser.add_argument("--shard-size", type=int, default=0, help="0: automatic (one shard per worker)")
    parser.add_argument("--parallelism", type=int, default=1, help="shards at once (1 on a small CPU box)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model-type", default="tiny")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="samdrop-pipeline-bench-"))
    template = compile_pipeline(work / "pipeline.yaml", parallelism=args.parallelism)
    ports = free_ports()
    settings = Settings.from_env(
        {},
        state_dir=work / "state",
        cache_dir=work / "cache",
        model_type=args.model_type,
        device="cpu",
        shard_size=args.shard_size,
        pipeline_parallelism=args.parallelism,
        batch_size=args.batch_size,
        pipeline_template=str(template),
        # Outputs in a bucket without notifications: on one small box the emulated OBJECT_FINALIZE
        # notification of every mask written (and its push retries) would compete with the model;
        # in Google Cloud that work is not done by the pipeline's machine.
        results_bucket="samdrop-bench-results",
        **ports,
    )
    stack = LocalStack(settings, predictor=False, function=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the emulators
    stack.up()
    rows = []
    try:
        env = stack.client_env()
        _no_upload_deliveries(env, settings)
        client = emulator_storage_client(settings.project, env["STORAGE_EMULATOR_HOST"])
        if client.lookup_bucket(settings.output_bucket) is None:
            client.create_bucket(settings.output_bucket)
        for size in args.sizes:
            images = photos(size, args.side)
            prompts = [box_prompt(d) for d in images]
            # The engine runs before and after the pipeline: on a shared machine the load changes.
            before = bare_engine(settings, images, prompts)
            pipeline = run_pipeline(env, settings, client, images)
            after = bare_engine(settings, images, prompts)
            engine: dict[str, Any] = {key: (before[key] + after[key]) / 2 for key in before}
            engine["wall_s_runs"] = [before["wall_s"], after["wall_s"]]
            split = pipeline["summary"]["timings_ms"]
            steady_s = (split["wall"] - split["load_model"]) / 1000.0
            row = {
                "images": size,
                "engine_images_per_s": size / engine["wall_s"],
                "pipeline_images_per_s": size / pipeline["wall_s"],
                "shard_images_per_s": size / steady_s,
                "pipeline_wall_s": pipeline["wall_s"],
                "shard_steady_s": steady_s,
                # kfp.local task start-ups (a Python process each; the shard task imports torch),
                # the plan, the report and the completion: everything but the shard tasks' own work
                # (shards run one after another under kfp.local, so their walls add up)
                "outside_shards_s": pipeline["wall_s"] - split["wall"] / 1000.0,
                "tasks_s": pipeline["tasks_s"],
                "engine": engine,
                "split_s": {key: value / 1000.0 for key, value in split.items()},
                "shards": pipeline["summary"]["shards"],
            }
            row["shard_vs_engine"] = row["shard_images_per_s"] / row["engine_images_per_s"]
            row["end_to_end_vs_engine"] = row["pipeline_images_per_s"] / row["engine_images_per_s"]
            rows.append(row)
            _print_row(row)
    finally:
        stack.down()

    args.output.mkdir(parents=True, exist_ok=True)
    name = f"pipeline-{args.model_type}-cpu"
    rows = _merged(args.output / f"{name}.json", rows)
    result = {
        "model_type": args.model_type,
        "device": "cpu",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "image_side_px": args.side,
        "shard_size": args.shard_size,
        "parallelism": args.parallelism,
        "batch_size": args.batch_size,
        "rows": rows,
    }
    (args.output / f"{name}.json").write_text(json.dumps(result, indent=1))
    chart = line_chart(
        {
            "pipeline, end to end": [(r["images"], r["pipeline_wall_s"]) for r in rows],
            "pipeline shards, after model load": [(r["images"], r["shard_steady_s"]) for r in rows],
            "bare engine": [(r["images"], r["engine"]["wall_s"]) for r in rows],
        },
        title=f"Execution time vs number of images ({args.model_type}, CPU, {os.cpu_count()} cores)",
        x_label="images",
        y_label="seconds",
    )
    (args.output / f"{name}.png").write_bytes(chart)
    print(f"wrote {args.output / (name + '.json')} and {args.output / (name + '.png')}")
    return 0


def _no_upload_deliveries(env: dict[str, str], settings: Settings) -> None:
    """Delete the push subscription of upload notifications. No function runs here, and the emulator
    would keep retrying a push for every uploaded image (thousands), competing with the model and
    slowing whatever runs after the pipeline (an earlier version of this script measured that)."""
    publisher, subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])
    try:
        name = subscriber.subscription_path(settings.project, settings.uploads_subscription)
        subscriber.delete_subscription(request={"subscription": name})
    finally:
        subscriber.close()
        publisher.transport.close()


def _merged(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of an earlier run for other sizes are kept (``--sizes 1000`` adds to ``--sizes 50 200``)."""
    earlier = json.loads(path.read_text())["rows"] if path.exists() else []
    sizes = {row["images"] for row in rows}
    return sorted([r for r in earlier if r["images"] not in sizes] + rows, key=lambda r: r["images"])


def _print_row(row: dict[str, Any]) -> None:
    split = ", ".join(f"{k} {v:.1f}s" for k, v in row["split_s"].items())
    print(
        f"{row['images']:5d} images: engine {row['engine_images_per_s']:.2f} img/s | pipeline end to end "
        f"{row['pipeline_images_per_s']:.2f} img/s ({row['end_to_end_vs_engine']:.0%}) "
        f"in {row['pipeline_wall_s']:.1f}s"
        f" | shards after model load {row['shard_images_per_s']:.2f} img/s ({row['shard_vs_engine']:.0%})"
        f" | outside the shards {row['outside_shards_s']:.1f}s\n"
        f"       kfp.local tasks (s): {row['tasks_s']}\n"
        f"       split: {split}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
