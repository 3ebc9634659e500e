"""``samdrop demo``: the whole story on the local stack, the way a user would live it.

Start the stack (or reuse a running one), drop a few of scikit-image's sample photos into
``incoming/`` (some with prompts in their metadata, one for automatic masks), wait for their
completion messages, then print where the masks are and save the overlays to a local folder.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from deploy.harness import (
    Upload,
    await_completions,
    completion_clients,
    running_stack,
    sample_image,
    upload_file,
)
from deploy.own_subscription import own_subscription
from samdrop.errors import SamdropError
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S, Settings

if TYPE_CHECKING:
    from google.cloud import storage
    from tqdm import tqdm

    from deploy.local import LocalStack

DEMO_FOLDER = "demo/"  # under the incoming prefix
RANDOM_WEIGHTS_WARNING = (
    "The 'tiny' model has RANDOM WEIGHTS: the pipeline above is real, the masks are meaningless.\n"
    "For real masks: samdrop models pull vit_b && samdrop demo (or SAMDROP_MODEL_TYPE=classic, no weights)"
)
CLASSIC_NOTE = (
    "Masks by the 'classic' backend (OpenCV GrabCut for prompts, scikit-image graph segmentation for\n"
    "automatic masks; no weights). For SAM: samdrop models pull vit_b && samdrop demo\n"
    "(or SAMDROP_MODEL_TYPE=vit_b to fetch on first use; SAMDROP_WEIGHTS_URL for a mirror)."
)


@dataclass(frozen=True)
class Sample:
    """One scikit-image photo and the prompts it is uploaded with (None: automatic masks)."""

    name: str
    prompts: dict[str, Any] | None


# Pixel prompts for the photos as scikit-image ships them; the last one asks for automatic masks on
# the server's grid (SAMDROP_AMG_POINTS_PER_SIDE=auto: what keeps an image near 10 s on a CPU), with
# the thresholds at 0 so tiny's random weights still leave masks to draw.
SAMPLES = (
    Sample("astronaut", {"boxes": [[170, 20, 340, 220]], "points": [[255, 120]], "labels": [1]}),
    Sample("chelsea", {"boxes": [[80, 20, 330, 295]]}),
    Sample("coffee", {"points": [[300, 180], [80, 350]], "labels": [1, 0], "multimask": True}),
    Sample("rocket", {"boxes": [[290, 40, 380, 420]]}),
    Sample(
        "camera",
        {"amg": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}},
    ),
)


@dataclass
class DemoResult:
    uploads: list[Upload] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(u.completion is not None for u in self.uploads)

    @property
    def succeeded(self) -> bool:
        return self.complete and all(
            u.completion and u.completion["status"] == "succeeded" for u in self.uploads
        )

    def summary(self) -> dict[str, Any]:
        latencies = [u.latency_s for u in self.uploads if u.latency_s is not None]
        return {
            "images": len(self.uploads),
            "completed": sum(u.completion is not None for u in self.uploads),
            "succeeded": sum(
                bool(u.completion and u.completion["status"] == "succeeded") for u in self.uploads
            ),
            "latency_s": {"p50": statistics.median(latencies), "max": max(latencies)} if latencies else None,
            "completions": [u.completion for u in self.uploads],
            "overlays": [str(p) for p in self.overlays],
        }


def write_samples(samples: Sequence[Sample], folder: Path) -> list[Path]:
    """Save each sample as a JPEG in ``folder``; returns the files in order."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for sample in samples:
        path = folder / f"{sample.name}.jpg"
        Image.fromarray(sample_image(sample.name)).save(path, quality=92)
        files.append(path)
    return files


def save_overlays(client: storage.Client, uploads: Sequence[Upload], folder: Path) -> list[Path]:
    """Download each succeeded upload's ``overlay.jpg`` as ``<folder>/<name>.overlay.jpg``."""
    from google.cloud import storage as gcs

    saved = []
    for upload in uploads:
        overlay = ((upload.completion or {}).get("outputs") or {}).get("overlay")
        if not overlay:
            continue
        path = folder / f"{upload.name}.overlay.jpg"
        gcs.Blob.from_uri(overlay, client=client).download_to_filename(
            str(path), timeout=DEFAULT_REQUEST_TIMEOUT_S
        )
        saved.append(path)
    return saved


class ProgressBar:
    """A tqdm bar for :func:`deploy.harness.await_completions`: completions received of the uploads,
    elapsed time."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.bar: tqdm[Any] | None = None

    def __call__(self, done: int, total: int, elapsed_s: float) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="  waiting for completions", unit="image", file=self.stream)
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()


def run_demo(
    settings: Settings,
    out_dir: Path,
    *,
    samples: Sequence[Sample] = SAMPLES,
    timeout_s: float = 600.0,
    keep_running: bool = False,
    say: Callable[[str], None] = print,
    progress: Callable[[int, int, float], None] | None = None,
) -> DemoResult:
    """Run the demo; the result says what arrived. Raises ``SamdropError`` when set-up fails."""
    files = write_samples(samples, out_dir / "inputs")
    result = DemoResult()
    with running_stack(settings, keep_running=keep_running, say=say) as stack:
        client, subscriber, _ = completion_clients(stack, settings)
        try:
            # A subscription of the demo's own, made before the first upload: a user's consumer of
            # the shared one keeps every message.
            with own_subscription(subscriber, settings.project, settings.completions_topic) as subscription:
                say(
                    f"uploading {len(files)} photos to gs://{settings.bucket}/{settings.incoming_prefix}{DEMO_FOLDER}"
                )
                for sample, path in zip(samples, files, strict=True):
                    name = f"{settings.incoming_prefix}{DEMO_FOLDER}{path.name}"
                    result.uploads.append(upload_file(client, settings.bucket, path, name, sample.prompts))
                    mode = "automatic masks" if not sample.prompts or "amg" in sample.prompts else "prompts"
                    say(f"  {result.uploads[-1].uri}  ({mode})")
                await_completions(
                    subscriber,
                    subscription,
                    result.uploads,
                    timeout_s=timeout_s,
                    progress=progress or ProgressBar(),
                )
            result.overlays = save_overlays(client, result.uploads, out_dir)
        finally:
            subscriber.close()
            client.close()
        _report(result, settings, stack, out_dir, say)
    (out_dir / "summary.json").write_text(json.dumps(result.summary(), indent=1) + "\n")
    return result


def _report(
    result: DemoResult, settings: Settings, stack: LocalStack, out_dir: Path, say: Callable[[str], None]
) -> None:
    say("")
    for upload in result.uploads:
        message = upload.completion
        if message is None:
            say(f"  {upload.name:10} no completion yet (see {stack.state_dir / 'logs' / 'function.log'})")
        elif message["status"] == "succeeded":
            folder = message["outputs"]["metadata"].rsplit("/", 1)[0] + "/"
            say(f"  {upload.name:10} {message['mask_count']:3} masks in {upload.latency_s:5.1f} s → {folder}")
        else:
            error = message.get("error") or {}
            say(f"  {upload.name:10} failed: {error.get('code')}: {error.get('message')}")
    if result.overlays:
        say(f"overlays saved in {out_dir.resolve()}/ (*.overlay.jpg); summary in {out_dir / 'summary.json'}")
    models = {((u.completion or {}).get("model") or {}).get("type") for u in result.uploads}
    if "tiny" in models or settings.model_type == "tiny":
        say("")
        say(RANDOM_WEIGHTS_WARNING)
    if "classic" in models:
        say("")
        say(CLASSIC_NOTE)


def demo_command(args: Any, settings: Settings) -> int:
    result = run_demo(settings, args.out, timeout_s=args.timeout, keep_running=args.keep_running)
    if not result.complete:
        raise SamdropError(f"not every completion arrived within {args.timeout:.0f} s")
    return 0 if result.succeeded else 1
