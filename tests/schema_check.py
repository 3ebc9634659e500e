"""Tests check every document they read against the committed JSON Schemas (``schemas/``), the
way a consumer of samdrop's outputs would: with ``jsonschema``, not with samdrop's own types."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text("utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def check_document(name: str, document: dict[str, Any]) -> dict[str, Any]:
    """Raise ``jsonschema.ValidationError`` unless ``document`` follows ``schemas/<name>.schema.json``
    (``masks``, ``error``, ``manifest-line`` or ``completion``); return it, so reads can wrap."""
    _validator(name).validate(document)
    return document


DOCUMENT_FILES = {"masks.json": "masks", "error.json": "error", "completion.json": "completion"}


def check_file(object_name: str, document: Any) -> Any:
    """``document`` read from ``object_name``: checked when its file name is a published document's
    (a ``completion.json`` record is the message plus ``message_id`` and ``published_at``)."""
    name = DOCUMENT_FILES.get(object_name.rsplit("/", 1)[-1])
    return check_document(name, document) if name else document
