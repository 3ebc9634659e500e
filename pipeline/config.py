"""The ``config`` pipeline parameter: the settings a component needs, as ``SAMDROP_*`` variables.

A component's container knows nothing else about the deployment; a component overlays ``config``
on its own environment (see ``pipeline.steps.context_from_env``).
"""

from __future__ import annotations

from samdrop.settings import Settings

PIPELINE_SETTINGS = (
    "project",
    "bucket",
    "results_bucket",
    "batches_prefix",
    "results_prefix",
    "completions_topic",
    "model_type",
    "checkpoint",
    "weights_url",
    "device",
    "fast_path",
    "batch_size",
    "points_per_batch",
    "max_image_pixels",
    "max_masks",
    "io_threads",
    "shard_size",
    "pipeline_parallelism",
)


def pipeline_config(settings: Settings) -> dict[str, str]:
    """The ``config`` pipeline parameter for ``settings``."""
    env = settings.to_env()
    names = {f"SAMDROP_{name.upper()}" for name in PIPELINE_SETTINGS}
    return {key: value for key, value in env.items() if key in names}
