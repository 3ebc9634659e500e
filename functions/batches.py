"""The hand-off point for bulk drops: ``batches/<id>/_READY`` → :data:`StartBatch`.

``functions.main.build_deps`` picks the starter from ``SAMDROP_PIPELINE_RUNNER``: ``local`` and
``vertex`` use ``pipeline.start.starter_for`` (claim ``results/batches/<id>/_CLAIMED``, then run the
KFP pipeline with kfp.local or submit it to Vertex AI Pipelines); ``none`` keeps
:func:`pipelines_not_configured`, which answers every marker with a ``failed`` batch completion
that says so. It deliberately does not claim the batch, so re-uploading ``_READY`` once pipelines
are configured still runs the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from samdrop.batches import BatchPaths, failed_completion
from samdrop.messages import Publisher, publish_completion
from samdrop.settings import Settings
from samdrop.storage import ObjectStore


@dataclass(frozen=True)
class BatchStart:
    """A ready batch: the marker object ``batches/<id>/_READY`` at ``generation`` in ``bucket``."""

    batch_id: str
    bucket: str
    generation: str
    folder: str  # "batches/<id>/"

    @property
    def folder_uri(self) -> str:
        return f"gs://{self.bucket}/{self.folder}"


class StartBatch(Protocol):
    def __call__(
        self, request: BatchStart, *, settings: Settings, store: ObjectStore, publisher: Publisher
    ) -> str:
        """Start (or refuse) the batch; returns a short outcome for the log line."""
        ...


def pipelines_not_configured(
    request: BatchStart, *, settings: Settings, store: ObjectStore, publisher: Publisher
) -> str:
    """The starter when ``SAMDROP_PIPELINE_RUNNER=none``: publish a ``failed`` batch completion that
    says how to enable bulk drops."""
    message = failed_completion(
        BatchPaths.of(settings, request.batch_id, request.bucket),
        "pipelines_not_configured",
        f"batch {request.batch_id} was not started: this deployment runs no bulk drops "
        "(SAMDROP_PIPELINE_RUNNER=none). Set SAMDROP_PIPELINE_RUNNER=vertex (or local) and upload "
        f"{request.folder}_READY again, or upload the images under {settings.incoming_prefix} "
        "to segment them one by one",
    )
    publish_completion(publisher, settings.completions_topic, message)
    return "batch_not_started"
