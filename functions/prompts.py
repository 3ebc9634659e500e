"""Prompts that travel with an upload (custom metadata ``samdrop-prompts``) → a predictor instance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from functions.events import UploadEvent
from samdrop.budgets import DEFAULT_MAX_JSON_DEPTH
from samdrop.documents import PredictInstance
from samdrop.prompts import PROMPTS_METADATA_KEY, parse_prompts_json


def prompts_from_metadata(
    metadata: Mapping[str, str] | None, *, max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
) -> dict[str, Any] | None:
    """The upload's prompts (shape in :mod:`samdrop.prompts`); None (automatic masks) when the key
    is absent, blank or ``{}``. Raises ``InvalidPrompt`` saying what to fix."""
    raw = (metadata or {}).get(PROMPTS_METADATA_KEY)
    if raw is None or not raw.strip():
        return None
    return parse_prompts_json(raw, where=f"metadata {PROMPTS_METADATA_KEY}", max_json_depth=max_json_depth)


def build_instance(event: UploadEvent, prompts: Mapping[str, Any] | None) -> PredictInstance:
    """The predictor instance for one upload (:class:`~samdrop.documents.PredictInstance`)."""
    return PredictInstance(
        gcs_uri=event.uri, generation=event.generation, file_path=event.name, prompts=prompts
    )
