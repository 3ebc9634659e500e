"""Which engine serves: ``load_engine(settings)`` is what every call site uses.

Each family of :data:`samdrop.models.MODELS` has one engine class implementing :class:`Engine`:
``sam1`` (and ``tiny``) :class:`~predictor.engine.SamEngine`, ``sam2.1``
:class:`~predictor.sam2_engine.Sam2Engine`, ``sam3`` :class:`~predictor.sam3_engine.Sam3Engine`
(text concepts only), ``classic`` :class:`~predictor.classic.ClassicEngine`.

``SAMDROP_MODEL_TYPE=auto`` (the default) resolves without touching the network:

1. ``SAMDROP_CHECKPOINT`` set → the type its file or folder name says (``sam_vit_b…`` → ``vit_b``,
   ``…sam2.1-hiera-tiny`` → ``sam2.1_hiera_tiny``), else for a ``save_pretrained`` folder the SAM 2.1
   type whose backbone its ``config.json`` describes;
2. else the best type whose weights are already cached and that makes automatic masks (what an
   upload without prompts asks; SAM 3 here takes text only, so auto never picks it) — the newest
   family first (SAM 2.1 over SAM 1), then the largest (put there by ``samdrop models pull TYPE``,
   a hand copy, or an earlier run);
3. else ``classic`` (no weights).

"Fetchable" thus means "configured": auto never starts a multi-GB download or waits on a network
probe at start-up; naming a type (``SAMDROP_MODEL_TYPE=sam2.1_hiera_tiny``) fetches its weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from predictor import weights
from predictor.engine import Job, MaskSet
from samdrop.errors import ConfigError
from samdrop.models import META_FILE, auto_candidates, model_info, names, type_from_name
from samdrop.settings import Settings


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
    """``settings`` with ``model_type`` never ``auto`` and, for Meta's SAM 1 files, a checkpoint URI
    (``auto`` → the official file under ``SAMDROP_WEIGHTS_URL`` or Meta's server). Hugging Face
    types keep no checkpoint: their repo is the table's."""
    model_type = settings.model_type
    checkpoint = settings.checkpoint if settings.checkpoint != "auto" else None
    if model_type == "auto":
        model_type = _auto_type(checkpoint, settings)
    if model_info(model_type).weights == META_FILE and checkpoint is None:
        checkpoint = weights.official_url(model_type, settings.weights_url)
    return settings.replace(model_type=model_type, checkpoint=checkpoint)


def load_engine(settings: Settings, **overrides: Any) -> Engine:
    """The engine ``settings`` ask for (``overrides`` go to the engine's ``from_settings``)."""
    settings = resolve_model(settings)
    family = model_info(settings.model_type).family
    if family == "classic":
        from predictor.classic import ClassicEngine

        return ClassicEngine.from_settings(settings)
    if family == "sam2.1":
        from predictor.sam2_engine import Sam2Engine

        return Sam2Engine.from_settings(settings, **overrides)
    if family == "sam3":
        from predictor.sam3_engine import Sam3Engine

        return Sam3Engine.from_settings(settings, **overrides)
    from predictor.engine import SamEngine

    return SamEngine.from_settings(settings, **overrides)


def cached_weights(model_type: str, settings: Settings) -> Path | None:
    """Where ``model_type``'s official weights sit in the cache, if they do (no network)."""
    info = model_info(model_type)
    if info.weights == META_FILE:
        return weights.cached(weights.official_url(model_type, settings.weights_url), settings.cache_dir)
    from predictor import hf_weights

    return hf_weights.cached(info, settings.cache_dir)


def _auto_type(checkpoint: str | None, settings: Settings) -> str:
    if checkpoint:
        named = type_from_name(checkpoint)
        if named is None and Path(checkpoint).expanduser().is_dir():
            from predictor import hf_weights

            named = hf_weights.type_of_folder(Path(checkpoint).expanduser())
        if named is None:
            raise ConfigError(
                f"SAMDROP_MODEL_TYPE=auto cannot tell the model type of SAMDROP_CHECKPOINT={checkpoint}: "
                f"set SAMDROP_MODEL_TYPE to one of {', '.join(names(weights=META_FILE) + names('sam2.1'))} "
                "or tiny"
            )
        return named
    for model_type in auto_candidates():
        if cached_weights(model_type, settings) is not None:
            return model_type
    return "classic"
