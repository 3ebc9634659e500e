"""Where a batch's own files live (``results/batches/<id>/`` beside the per-image output folders),
and the ``failed`` batch completion. Shared by the function (which refuses or starts a batch) and
the pipeline (which runs it).

Per-image outputs follow :mod:`samdrop.layout` (``results/batches/<id>/<file>/masks.json`` …). The
batch's files start with ``_`` or have no image extension, so no input can collide with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from samdrop.errors import ErrorInfo
from samdrop.layout import READY
from samdrop.messages import BatchCompletion
from samdrop.settings import Settings

__all__ = ["CLAIM", "PROMPTS_FILE", "READY", "BatchPaths", "failed_completion"]

CLAIM = "_CLAIMED"
PROMPTS_FILE = "prompts.json"


@dataclass(frozen=True)
class BatchPaths:
    """Object names for batch ``batch_id``: inputs in ``bucket``, outputs in ``output_bucket``."""

    batch_id: str
    bucket: str
    output_bucket: str
    input_folder: str  # "batches/<id>/"
    folder: str  # "results/batches/<id>/"

    @classmethod
    def of(cls, settings: Settings, batch_id: str, bucket: str | None = None) -> BatchPaths:
        input_folder = f"{settings.batches_prefix}{batch_id}/"
        return cls(
            batch_id=batch_id,
            bucket=bucket or settings.bucket,
            output_bucket=settings.output_bucket,
            input_folder=input_folder,
            folder=f"{settings.results_prefix}{input_folder}",
        )

    @property
    def marker(self) -> str:
        return self.input_folder + READY

    @property
    def claim(self) -> str:
        return self.folder + CLAIM

    @property
    def plan(self) -> str:
        """The batch plan (options, counts, warnings); written after every shard file (the commit)."""
        return self.folder + "_plan/plan.json"

    def shard_plan(self, index: int) -> str:
        return f"{self.folder}_plan/shard_{index:05d}.json"

    def shard_report(self, index: int) -> str:
        """What shard ``index`` did: its manifest lines, time split and model."""
        return f"{self.folder}_shards/shard_{index:05d}.json"

    @property
    def manifest(self) -> str:
        return self.folder + "manifest.jsonl"

    @property
    def summary(self) -> str:
        return self.folder + "summary.json"

    @property
    def completion(self) -> str:
        return self.folder + "completion.json"

    def report(self, name: str) -> str:
        """``report.md``, ``report.html`` or a plot's file name."""
        return self.folder + name

    @property
    def input_uri(self) -> str:
        return f"gs://{self.bucket}/{self.input_folder}"

    def input(self, name: str) -> str:
        return f"gs://{self.bucket}/{name}"

    def uri(self, name: str) -> str:
        return f"gs://{self.output_bucket}/{name}"

    def relative(self, name: str) -> str:
        """``cat.jpg`` for ``batches/<id>/cat.jpg`` (the key used in ``prompts.json``)."""
        return name[len(self.input_folder) :] if name.startswith(self.input_folder) else name


def failed_completion(paths: BatchPaths, code: str, message: str, *, images: int = 0) -> BatchCompletion:
    """The ``failed`` batch completion for a batch that did not run (or whose run failed as a whole)."""
    return BatchCompletion(
        status="failed",
        batch_id=paths.batch_id,
        input=paths.input_uri,
        images=images,
        succeeded=0,
        failed=images,
        error=ErrorInfo(code=code, message=message),
    )
