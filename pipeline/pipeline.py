"""The KFP v2 pipeline: list → ``ParallelFor`` over shards → aggregate, with publish as exit task.

Shard tasks ask for ``accelerator_count`` GPUs of ``accelerator_type`` and ``cpu_limit``/``memory_limit``
(Vertex AI picks the machine type from them); all four are pipeline parameters. How many shards run
at once is fixed when compiling (KFP wants a number there).
"""

from typing import Any

from kfp import dsl

from pipeline.components import DEFAULT_IMAGE, make_components

PIPELINE_NAME = "samdrop-batch"
DEFAULT_PARALLELISM = 4
SHARD_RETRIES = 2  # a retried shard resumes: finished images are skipped


def build_pipeline(image: str = DEFAULT_IMAGE, parallelism: int = DEFAULT_PARALLELISM) -> Any:
    """The pipeline function for components in ``image``, running ``parallelism`` shards at once."""
    parts = make_components(image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Segment every image under batches/<id>/ with SAM; write masks, a report and plots; "
        "publish one batch completion message.",
    )
    def samdrop_batch(
        batch_id: str,
        bucket: str,
        marker_generation: str,
        config: dict,
        accelerator_type: str = "NVIDIA_L4",
        accelerator_count: int = 1,
        cpu_limit: str = "8",
        memory_limit: str = "32G",
    ) -> None:
        finish = parts.publish(
            batch_id=batch_id, bucket=bucket, marker_generation=marker_generation, config=config
        )
        finish.set_display_name("publish completion").set_caching_options(False)
        with dsl.ExitHandler(finish, name="segment batch"):
            listing = parts.list_images(
                batch_id=batch_id, bucket=bucket, marker_generation=marker_generation, config=config
            )
            listing.set_display_name("list and shard").set_caching_options(False)
            with dsl.ParallelFor(listing.output, parallelism=parallelism, name="shards") as shard:
                segment = parts.segment_shard(
                    batch_id=batch_id,
                    bucket=bucket,
                    shard=shard,
                    config=config,
                    gpu_type=accelerator_type,
                    gpu_count=accelerator_count,
                    cpu=cpu_limit,
                    memory=memory_limit,
                )
                segment.set_display_name("segment shard").set_caching_options(False)
                segment.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_count)
                segment.set_cpu_limit(cpu_limit).set_memory_limit(memory_limit)
                segment.set_retry(SHARD_RETRIES, backoff_duration="30s")
            report = parts.aggregate(batch_id=batch_id, bucket=bucket, config=config).after(segment)
            report.set_display_name("report").set_caching_options(False)

    return samdrop_batch
