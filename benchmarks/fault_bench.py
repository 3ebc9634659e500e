"""An outage drill on a fresh local stack: what arrives when a server dies mid-burst. Not a test.

Starts a local stack in a temporary state dir on free ports (``SAMDROP_*`` variables apply; the
model defaults to ``tiny``, Pub/Sub's retry policy to the project's defaults), uploads N distinct
photos with a box prompt each, SIGKILLs the victim's process group ``--kill-after`` seconds after
the first upload, brings it back with ``samdrop local up`` ``--outage`` seconds later, and counts
what arrived: completed, succeeded, duplicates, dead letters, and how long the backlog took to
drain after the restart. Writes ``benchmarks/results/fault-local.json``.

    python benchmarks/fault_bench.py --uploads 200 --outage 60 --victim predictor
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.burst_bench import box_for, distinct_images, own_stack_settings, write_summary  # noqa: E402
from deploy.drill import outage_drill  # noqa: E402
from deploy.local import LocalStack  # noqa: E402
from predictor.hardware import cpu_name  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--kill-after", type=float, default=15.0, help="seconds after the first upload")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds until `samdrop local up`")
    parser.add_argument(
        "--victim", choices=("predictor", "function", "bridge", "pubsub"), default="predictor"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fault-local.json")
    options = parser.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory() as workdir:
        settings = own_stack_settings(Path(workdir))
        images = distinct_images(options.uploads)
        files = []
        for index, image in enumerate(images):
            path = Path(workdir) / f"{index:04d}.jpg"
            Image.fromarray(image).save(path, quality=92)
            files.append(path)
        env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")} | settings.to_env()

        def restart() -> str:
            result = subprocess.run(
                [sys.executable, "-m", "deploy.command", "local", "up"],
                env=env,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise SystemExit(f"samdrop local up failed:\n{result.stderr}")
            return result.stdout

        stack = LocalStack(settings)
        began = time.monotonic()
        stack.up()
        print(f"stack up in {time.monotonic() - began:.1f} s")
        try:
            report = outage_drill(
                stack,
                files,
                lambda i: {"boxes": [box_for(images[i])]},
                restart=restart,
                victim=options.victim,
                kill_after_s=options.kill_after,
                outage_s=options.outage,
                timeout_s=1800.0,
                say=print,
            )
        finally:
            stack.down()
    summary = {
        "cpu": cpu_name(),
        "model_type": settings.model_type,
        "delivery_concurrency": settings.delivery_concurrency,
        "retry_backoff_s": [settings.retry_min_backoff_s, settings.retry_max_backoff_s],
        "max_delivery_attempts": settings.max_delivery_attempts,
        **report.to_json(),
    }
    write_summary(summary, options.out)


if __name__ == "__main__":
    main()
