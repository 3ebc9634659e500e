"""Batch completion messages (docs/design.md "Completion messages", ``kind: batch``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.exports import DEFAULT_CATEGORY
from samdrop.batches import BatchPaths
from samdrop.errors import ErrorInfo
from samdrop.messages import BatchCompletion


def completion_from_summary(summary: Mapping[str, Any], paths: BatchPaths) -> BatchCompletion:
    status = summary["status"]
    raw = summary.get("error")
    error = ErrorInfo(code=str(raw["code"]), message=str(raw["message"])) if raw else None
    if status == "failed" and error is None:
        error = ErrorInfo(
            code="all_failed",
            message=(
                f"none of the {summary['images']} images could be segmented: see {paths.uri(paths.manifest)}"
            ),
        )
    return BatchCompletion(
        status=status,
        batch_id=paths.batch_id,
        input=paths.input_uri,
        images=int(summary["images"]),
        succeeded=int(summary["succeeded"]),
        failed=int(summary["failed"]),
        label_counts=_labelled(summary.get("label_counts")),
        outputs={
            "manifest": paths.uri(paths.manifest),
            "report": paths.uri(paths.report("report.html")),
            "report_md": paths.uri(paths.report("report.md")),
            "summary": paths.uri(paths.summary),
            **{name: str(uri) for name, uri in (summary.get("exports") or {}).items()},
        },
        error=error if status == "failed" else None,
    )


def _labelled(counts: Mapping[str, int] | None) -> dict[str, int] | None:
    """The batch's masks per label when any mask or concept had a label (not the unnamed default)."""
    if not counts or set(counts) == {DEFAULT_CATEGORY}:
        return None
    return dict(counts)
