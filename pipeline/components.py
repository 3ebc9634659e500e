"""The pipeline's lightweight Python components. Each body is an edge: it imports the project (the
components run in the predictor's serving image in Google Cloud, in this environment locally),
builds settings and clients from the task's environment plus the ``config`` parameter, and calls one
function of :mod:`pipeline.steps`.

``make_components(image)`` builds them for a container image; ``default_components()`` for
``DEFAULT_IMAGE`` (tests call them through ``.python_func``). No ``from __future__ import
annotations`` here: KFP reads the annotations as types.
"""

import functools
from dataclasses import dataclass
from typing import Any

from kfp import dsl

DEFAULT_IMAGE = "us-central1-docker.pkg.dev/samdrop-local/samdrop/predictor:latest"


def list_images(batch_id: str, bucket: str, marker_generation: str, config: dict) -> list:
    """Plan the batch under ``batches/<batch_id>/`` and return the shard indexes to segment."""
    import os

    from pipeline.steps import context_from_env, list_step

    return list_step(context_from_env(os.environ, config), batch_id, bucket, int(marker_generation))


def segment_shard(
    batch_id: str, bucket: str, shard: int, config: dict, gpu_type: str, gpu_count: int, cpu: str, memory: str
) -> dict:
    """Load the model once and segment every image of shard ``shard``; returns its counts and timings.

    ``gpu_type`` … ``memory`` repeat the task's resource request so the shard report records it
    (passing them also makes the compiler hand those parameters into the loop).
    """
    import gc
    import os

    from pipeline.steps import context_from_env, shard_step
    from predictor import Job  # noqa: F401  (loads torch and the model code, kept for the task's whole life)

    # Keep the ~300,000 objects those imports made out of every garbage collection: the one when the
    # task's process exits alone would cost about 1 s per shard.
    gc.freeze()
    requested = {
        "accelerator_type": gpu_type,
        "accelerator_count": int(gpu_count),
        "cpu": cpu,
        "memory": memory,
    }
    return shard_step(context_from_env(os.environ, config), batch_id, bucket, int(shard), requested=requested)


def aggregate(
    batch_id: str,
    bucket: str,
    config: dict,
    report: dsl.Output[dsl.Markdown],
    report_html: dsl.Output[dsl.HTML],
) -> dict:
    """Write manifest.jsonl, report.md, report.html and plots; expose the reports as KFP artifacts."""
    import os

    from pipeline.steps import aggregate_step, context_from_env

    summary, markdown, page = aggregate_step(context_from_env(os.environ, config), batch_id, bucket)
    with open(report.path, "w", encoding="utf-8") as out:
        out.write(markdown)
    with open(report_html.path, "w", encoding="utf-8") as out:
        out.write(page)
    return {key: summary[key] for key in ("status", "images", "succeeded", "failed", "resumed")}


def publish(
    batch_id: str, bucket: str, marker_generation: str, config: dict, status: dsl.PipelineTaskFinalStatus
) -> dict:
    """Exit task: publish the batch completion (``failed`` with the run's error if no report was made)."""
    import os

    from pipeline.steps import context_from_env, publish_step

    error = None if status.state == "SUCCEEDED" else f"{status.state}: {status.error_message or 'no message'}"
    ctx = context_from_env(os.environ, config, publisher=True)
    return publish_step(ctx, batch_id, bucket, int(marker_generation), run_error=error)


@dataclass(frozen=True)
class Components:
    list_images: Any
    segment_shard: Any
    aggregate: Any
    publish: Any


def make_components(image: str = DEFAULT_IMAGE) -> Components:
    """The four components with base image ``image``; KFP is not installed into it (it is already there)."""

    def build(func: Any) -> Any:
        return dsl.component(func, base_image=image, install_kfp_package=False)

    return Components(build(list_images), build(segment_shard), build(aggregate), build(publish))


@functools.cache
def default_components() -> Components:
    """The components with :data:`DEFAULT_IMAGE`, built on first use (not at import)."""
    return make_components()
