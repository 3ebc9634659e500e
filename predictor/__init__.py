"""The predictor's public API: what ``pipeline/``, ``deploy/`` (and anything else outside
``predictor/``) may use. Its modules are private to it (docs/design.md "Layers").

``import predictor`` stays light (numpy): the prompt parsers load with it (the checks themselves are
the core's ``samdrop/prompts.py``). The engine, tiling, polygons and
names load on first use, from the module :data:`_LAZY` names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from predictor.instances import Prompts, check_model_takes, check_prompts_fit, parse_prompts, prompts_from

if TYPE_CHECKING:  # the same names for mypy; at run time __getattr__ imports them on first use
    from predictor.backends import Engine, load_engine
    from predictor.engine import Job, MaskSet
    from predictor.hf_weights import download as download_hf_weights
    from predictor.polygons import mask_polygons, with_exports
    from predictor.tiling import Tiling, resolve_tiling, run_jobs
    from predictor.weights import fetch as fetch_weights
    from predictor.weights import official_url

# name -> the private module it comes from (torch, segment-anything or OpenCV behind most of them);
# ``module:attribute`` where the public name differs from the module's own
_LAZY = {
    "Engine": "predictor.backends",
    "load_engine": "predictor.backends",
    "Job": "predictor.engine",
    "MaskSet": "predictor.engine",
    "mask_polygons": "predictor.polygons",
    "with_exports": "predictor.polygons",
    "Tiling": "predictor.tiling",
    "resolve_tiling": "predictor.tiling",
    "run_jobs": "predictor.tiling",
    # weights only (requests, huggingface_hub; no torch): deploy stages them into the models bucket
    "official_url": "predictor.weights",
    "fetch_weights": "predictor.weights:fetch",
    "download_hf_weights": "predictor.hf_weights:download",
}

__all__ = [
    "Engine",
    "Job",
    "MaskSet",
    "Prompts",
    "Tiling",
    "check_model_takes",
    "check_prompts_fit",
    "download_hf_weights",
    "fetch_weights",
    "load_engine",
    "mask_polygons",
    "official_url",
    "parse_prompts",
    "prompts_from",
    "resolve_tiling",
    "run_jobs",
    "with_exports",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'predictor' has no attribute {name!r}")
    module, _, attribute = _LAZY[name].partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value  # once loaded, a plain attribute
    return value
