"""Concept prompts for SAM 3 (``{"text": ["solar panel", "car"]}``), checked before any work.

Pure functions, no model: the function can refuse an upload's prompts and the predictor a request
with the same checks and messages. Token counts need the tokenizer: :mod:`predictor.concepts`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from samdrop.errors import InvalidPrompt

# Budgets, the defaults of SAMDROP_MAX_CONCEPTS and SAMDROP_MAX_CONCEPT_CHARS: concepts per image
# (each costs one detector + mask-decoder pass) and characters per concept (SAM 3's text encoder
# reads at most 32 tokens; a longer name is refused, never cut). Exemplar boxes per image are
# bounded too (each is a geometry-encoder token).
MAX_CONCEPTS_PER_IMAGE = 16
MAX_CONCEPT_CHARS = 64
MAX_EXEMPLAR_BOXES = 16

# An exemplar box: (x0, y0, x1, y1) pixels of the image as given, and whether it is an example of
# the concept (True) or of what the concept is not (False).
ExemplarBox = tuple[Sequence[float], bool]
# A checked exemplar box: [x0, y0, x1, y1] floats and whether it is positive.
CheckedBox = tuple[list[float], bool]


def check_concepts(
    concepts: Sequence[str],
    *,
    max_concepts: int | None = MAX_CONCEPTS_PER_IMAGE,
    max_chars: int | None = MAX_CONCEPT_CHARS,
) -> list[str]:
    """The concepts of one image, stripped; :class:`InvalidPrompt` for none, too many, an empty or
    over-long name, or a name listed twice. A limit of None is not checked (the prompt validator
    checks the shape; the budgets, which are settings, are checked where the settings are known)."""
    if isinstance(concepts, str) or not isinstance(concepts, Sequence):
        raise InvalidPrompt('"text" must be a list of concept names, e.g. {"text": ["solar panel", "car"]}')
    if not concepts:
        raise InvalidPrompt('"text" is empty: name at least one concept, e.g. {"text": ["car"]}')
    if max_concepts is not None and len(concepts) > max_concepts:
        raise InvalidPrompt(
            f'"text" names {len(concepts)} concepts; at most {max_concepts} per image '
            f"(SAMDROP_MAX_CONCEPTS={max_concepts}): split them over several requests"
        )
    names: list[str] = []
    for concept in concepts:
        if not isinstance(concept, str) or not concept.strip():
            raise InvalidPrompt(f'every "text" entry must be a non-empty string, got {concept!r}')
        name = concept.strip()
        if max_chars is not None and len(name) > max_chars:
            raise InvalidPrompt(
                f"concept {name[:max_chars]!r}... is {len(name)} characters; "
                f"at most {max_chars} (SAMDROP_MAX_CONCEPT_CHARS={max_chars}): use a shorter name"
            )
        if name in names:
            raise InvalidPrompt(f'concept {name!r} is listed twice in "text": list it once')
        names.append(name)
    return names


def check_exemplar_boxes(
    boxes: Sequence[ExemplarBox], width: int, height: int, *, limit: int = MAX_EXEMPLAR_BOXES
) -> list[CheckedBox]:
    """Exemplar boxes of one ``width x height`` image as ``([x0, y0, x1, y1], positive)``;
    :class:`InvalidPrompt` for too many, or a box that is malformed, empty or outside the image."""
    if len(boxes) > limit:
        raise InvalidPrompt(f"{len(boxes)} exemplar boxes; at most {limit} per image")
    checked = []
    for entry in boxes:
        box, positive = entry if isinstance(entry, Sequence) and len(entry) == 2 else (entry, None)
        if positive not in (True, False):  # also 1 and 0
            raise InvalidPrompt(f"exemplar {entry!r} must be (box, positive) with positive true or false")
        if not (isinstance(box, Sequence) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise InvalidPrompt(f"exemplar box {box!r} must be [x0, y0, x1, y1] in pixels")
        x0, y0, x1, y1 = coords = [float(v) for v in box]
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise InvalidPrompt(
                f"exemplar box {coords} must have x0 < x1, y0 < y1 and lie inside the {width}x{height} image"
            )
        checked.append((coords, bool(positive)))
    return checked


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
