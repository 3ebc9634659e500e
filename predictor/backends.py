"""Which engine serves: ``load_engine(settings)`` is what every call site uses.

``SAMDROP_MODEL_TYPE=auto`` (the default) resolves without touching the network:

1. ``SAMDROP_CHECKPOINT`` set → the SAM type its file name says (``sam_vit_b…`` → ``vit_b``);
2. else the largest SAM type whose official checkpoint is already in ``<cache>/checkpoints/``
   (put there by ``samdrop models pull TYPE``, a hand copy, or an earlier run);
3. else ``classic`` (no weights).

"Fetchable" thus means "configured": auto never starts a multi-GB download or waits on a network
probe at start-up; naming a SAM type (``SAMDROP_MODEL_TYPE=vit_b``) fetches its weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from predictor import weights
from predictor.engine import Job, MaskSet
from samdrop.errors import ConfigError
from samdrop.settings import SAM_TYPES, Settings


class Engine(Protocol):
    """What the model server and the pipeline need from an engine (SAM's or ``classic``)."""

    model_type: str
    batch_size: int

    @property
    def description(self) -> dict[str, Any]: ...

    @property
    def auto_points_per_side(self) -> int: ...

    def run(self, jobs: Sequence[Job]) -> list[MaskSet]: ...

    def embed(self, images: Sequence[np.ndarray]) -> Sequence[Any]: ...

    def clear_cache(self) -> None: ...


def resolve_model(settings: Settings) -> Settings:
    """``settings`` with ``model_type`` never ``auto`` and, for Meta's types, a checkpoint URI
    (``auto`` → the official file under ``SAMDROP_WEIGHTS_URL`` or Meta's server)."""
    model_type = settings.model_type
    checkpoint = settings.checkpoint if settings.checkpoint != "auto" else None
    if model_type == "auto":
        model_type = _auto_type(checkpoint, settings)
    if model_type in SAM_TYPES and checkpoint is None:
        checkpoint = weights.official_url(model_type, settings.weights_url)
    return settings.replace(model_type=model_type, checkpoint=checkpoint)


def load_engine(settings: Settings, **overrides: Any) -> Engine:
    """The engine ``settings`` ask for (``overrides`` go to :meth:`SamEngine.from_settings`)."""
    settings = resolve_model(settings)
    if settings.model_type == "classic":
        from predictor.classic import ClassicEngine

        return ClassicEngine.from_settings(settings)
    from predictor.engine import SamEngine

    return SamEngine.from_settings(settings, **overrides)


def _auto_type(checkpoint: str | None, settings: Settings) -> str:
    if checkpoint:
        named = weights.type_from_name(checkpoint)
        if named is None:
            raise ConfigError(
                f"SAMDROP_MODEL_TYPE=auto cannot tell the SAM type of SAMDROP_CHECKPOINT={checkpoint}: "
                "set SAMDROP_MODEL_TYPE to vit_b, vit_l, vit_h or tiny"
            )
        return named
    for model_type in SAM_TYPES:
        if weights.cached(weights.official_url(model_type, settings.weights_url), settings.cache_dir):
            return model_type
    return "classic"
