"""Upload → completion message latency on the local stack, one image at a time. Not a test.

Starts a local stack of its own (empty buckets, free ports), uploads N scikit-image photos one
after another (each with a box prompt, as a user would; the next upload waits for the previous
completion, so the figure is latency, not queueing), and splits each latency using the
completion's timings:

- ``model_ms``: the predictor's own work (decode + encoder + decoder), from ``timings_ms.model``;
- ``function_ms``: the function's whole handling (read, endpoint call, PNG/overlay/JSON writes);
- ``outside_model_ms``: latency minus model time — notification, Pub/Sub push, function, storage.

    python benchmarks/latency_bench.py --images 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.burst_bench import own_stack_settings  # noqa: E402
from deploy.harness import (  # noqa: E402
    await_completions,
    completion_clients,
    running_stack,
    sample_image,
    upload_file,
)

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "camera",
    "cat",
    "coins",
    "horse",
    "colorwheel",
    "moon",
    "clock",
    "page",
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency-local.json")
    options = parser.parse_args()

    from PIL import Image

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as workdir:
        settings = own_stack_settings(Path(workdir))
        with running_stack(settings, keep_running=False, say=print) as stack:
            client, subscriber, subscription = completion_clients(stack, settings)
            run = time.strftime("%H%M%S")
            for index in range(options.images):
                name = PHOTOS[index % len(PHOTOS)]
                image = sample_image(name)
                if index >= len(PHOTOS):  # a different image, so the predictor's embedding cache cannot help
                    image = image[:, ::-1]
                path = Path(workdir) / f"{index:03d}-{name}.jpg"
                Image.fromarray(image).convert("RGB").save(path, quality=92)
                height, width = image.shape[:2]
                box = [width * 0.2, height * 0.2, width * 0.8, height * 0.8]
                upload = upload_file(
                    client,
                    settings.bucket,
                    path,
                    f"{settings.incoming_prefix}latency-{run}/{path.name}",
                    {"boxes": [box]},
                )
                await_completions(subscriber, subscription, [upload], timeout_s=300)
                message = upload.completion or {}
                timings = message.get("timings_ms") or {}
                assert upload.latency_s is not None, f"no completion for {upload.uri}"
                latency_ms = upload.latency_s * 1000
                rows.append(
                    {
                        "image": path.name,
                        "pixels": width * height,
                        "status": message.get("status"),
                        "latency_ms": round(latency_ms, 1),
                        "function_ms": timings.get("total"),
                        "endpoint_ms": timings.get("endpoint"),
                        "model_ms": timings.get("model"),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            subscriber.close()
            client.close()

    latencies = [r["latency_ms"] for r in rows]
    model = [r["model_ms"] for r in rows if r["model_ms"] is not None]
    outside = [r["latency_ms"] - r["model_ms"] for r in rows if r["model_ms"] is not None]
    summary = {
        "images": len(rows),
        "model_type": settings.model_type,
        "succeeded": sum(r["status"] == "succeeded" for r in rows),
        "latency_ms": {"p50": statistics.median(latencies), "p90": percentile(latencies, 0.9)},
        "model_ms_p50": statistics.median(model) if model else None,
        "outside_model_ms_p50": statistics.median(outside) if outside else None,
        "outside_model_share_p50": statistics.median(o / r for o, r in zip(outside, latencies, strict=False))
        if outside
        else None,
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
