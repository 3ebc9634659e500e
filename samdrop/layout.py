"""Where an input's outputs live: ``results/<input path>/…`` (shared by function and pipeline).

Every object written here carries custom metadata ``samdrop-input-generation`` (the input's
generation), so one listing of the folder tells which input generation each output belongs to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from samdrop.settings import Settings
from samdrop.storage import ObjectInfo, ObjectStore

GENERATION_KEY = "samdrop-input-generation"
# Uploaded last into batches/<id>/: starts the batch (the function routes on it, the pipeline reads it).
READY = "_READY"
MASKS_JSON = "masks.json"
ERROR_JSON = "error.json"
OVERLAY = "overlay.jpg"
# Written only after the completion was published; its presence for generation G means "done".
COMPLETION_JSON = "completion.json"


@dataclass(frozen=True)
class OutputPaths:
    """Object names (not URIs) of one input's outputs in ``bucket``; ``folder`` ends with ``/``."""

    bucket: str
    folder: str

    def mask(self, index: int) -> str:
        return f"{self.folder}mask_{index:03d}.png"

    @property
    def masks_json(self) -> str:
        return self.folder + MASKS_JSON

    @property
    def error_json(self) -> str:
        return self.folder + ERROR_JSON

    @property
    def overlay(self) -> str:
        return self.folder + OVERLAY

    @property
    def completion(self) -> str:
        return self.folder + COMPLETION_JSON

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket}/{name}"


def output_paths(settings: Settings, input_name: str) -> OutputPaths:
    """``results/incoming/cat.jpg/`` for ``incoming/cat.jpg`` (the whole input path is kept)."""
    return OutputPaths(bucket=settings.output_bucket, folder=f"{settings.results_prefix}{input_name}/")


def input_generation(metadata: Mapping[str, str] | None) -> int | None:
    """The input generation an output object was written for; None for objects samdrop did not write."""
    raw = (metadata or {}).get(GENERATION_KEY)
    # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
    return int(raw) if raw is not None and raw.isascii() and raw.isdigit() else None


def tag(generation: int) -> dict[str, str]:
    """Custom metadata for an output of input generation ``generation``."""
    return {GENERATION_KEY: str(generation)}


def json_record(doc: Mapping[str, Any]) -> bytes:
    """The bytes of a JSON record samdrop writes (``masks.json``, ``error.json``, plans, reports)."""
    return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")


def write_output(
    store: ObjectStore,
    bucket: str,
    name: str,
    data: bytes,
    content_type: str,
    *,
    seen: ObjectInfo | None,
    generation: int,
) -> int:
    """Write ``name`` as an output of input generation ``generation``: create it (``seen`` None), or
    replace exactly the version ``seen`` in a listing or stat, never one written meanwhile (that
    raises ``WriteConflict``). Returns the new object's generation."""
    return store.write(
        bucket,
        name,
        data,
        content_type=content_type,
        if_generation_match=seen.generation if seen is not None else 0,
        metadata=tag(generation),
    )
