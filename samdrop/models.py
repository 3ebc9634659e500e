"""The one table of model types: every name samdrop serves, its family, weights and capabilities.

Settings validation, ``samdrop models list|pull``, ``SAMDROP_MODEL_TYPE=auto``, deploy's
``--model-type`` and every "unknown model type" message read :data:`MODELS`; nothing else keeps a
list of names. Pure data (no torch): the core, the CLI and deploy import it without the ML stack.
Architecture numbers and builders stay in ``predictor/`` (``registry.py`` for SAM 1, the
``config.json`` of each Hugging Face repo for SAM 2.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from samdrop.errors import ConfigError

FAMILIES = ("sam3", "sam2.1", "sam1", "classic")  # newest generation first: ``auto``'s order

# Where a type's weights come from.
META_FILE = "meta-file"  # one .pth on Meta's server (segment-anything's official checkpoints)
HF_REPO = "hf-repo"  # a Hugging Face repo in transformers' layout (config.json + model.safetensors)
NO_WEIGHTS = "none"  # classic computer vision
BUILT = "built"  # samdrop builds seeded random weights itself

AUTO = "auto"


@dataclass(frozen=True)
class ModelInfo:
    """One model type.

    name: ``SAMDROP_MODEL_TYPE`` value; family: one of :data:`FAMILIES` (``tiny`` is ``sam1``);
    weights: :data:`META_FILE`, :data:`HF_REPO`, :data:`NO_WEIGHTS` or :data:`BUILT`; source: Meta's
    file name or the repo id (None for the others); gated: the repo asks each user to accept a licence
    and to send a token; prompts / automatic / text: points+boxes, automatic masks, text concepts;
    uses_gpu: runs faster on a GPU (False: CPU only, so deploy gives it a CPU machine and no GPU);
    deploy_default: what ``samdrop deploy`` serves when no model type is asked for (one type).
    """

    name: str
    family: str
    weights: str
    source: str | None
    licence: str
    gated: bool = False
    prompts: bool = True
    automatic: bool = True
    text: bool = False
    recommended: bool = False
    random_weights: bool = False
    uses_gpu: bool = True
    deploy_default: bool = False
    note: str = ""

    @property
    def needs_weights(self) -> bool:
        """Whether serving it needs a checkpoint from outside (Meta's file or a Hugging Face repo)."""
        return self.weights in (META_FILE, HF_REPO)

    @property
    def source_url(self) -> str | None:
        """Where a person reads about (and, for gated repos, accepts the licence of) the weights."""
        if self.weights == HF_REPO and self.source:
            return f"https://huggingface.co/{self.source}"
        return None


# Within a family, largest first: ``auto`` takes the first one it finds cached.
MODELS: tuple[ModelInfo, ...] = (
    ModelInfo(
        "sam3", "sam3", HF_REPO, "facebook/sam3", "SAM-License", gated=True, text=True,
        prompts=False, automatic=False,  # concepts only (optionally with exemplar boxes)
        note="text concepts; gated: accept the licence on Hugging Face and set HF_TOKEN",
    ),
    ModelInfo(
        "sam2.1_hiera_large", "sam2.1", HF_REPO, "facebook/sam2.1-hiera-large", "Apache-2.0",
        recommended=True, note="best SAM 2.1 masks; 224M parameters",
    ),
    ModelInfo(
        "sam2.1_hiera_base_plus", "sam2.1", HF_REPO, "facebook/sam2.1-hiera-base-plus", "Apache-2.0",
        note="81M parameters",
        # Deploy's default: real masks, points, boxes and automatic masks, an open licence (deploy
        # stages it with no token). Meta's SAM 2.1 table: 78.2 J&F on SA-V test against large's
        # 79.5, at 64.1 FPS against 39.5 on an A100, so each billed GPU hour segments more images,
        # and a third of large's weights to copy when a scaled-to-zero endpoint starts again.
        deploy_default=True,
    ),
    ModelInfo(
        "sam2.1_hiera_small", "sam2.1", HF_REPO, "facebook/sam2.1-hiera-small", "Apache-2.0",
        note="46M parameters",
    ),
    ModelInfo(
        "sam2.1_hiera_tiny", "sam2.1", HF_REPO, "facebook/sam2.1-hiera-tiny", "Apache-2.0",
        note="39M parameters; fastest SAM 2.1",
    ),
    ModelInfo(
        "vit_h", "sam1", META_FILE, "sam_vit_h_4b8939.pth", "Apache-2.0", note="SAM 1, 636M parameters",
    ),
    ModelInfo(
        "vit_l", "sam1", META_FILE, "sam_vit_l_0b3195.pth", "Apache-2.0", note="SAM 1, 308M parameters",
    ),
    ModelInfo(
        "vit_b", "sam1", META_FILE, "sam_vit_b_01ec64.pth", "Apache-2.0", note="SAM 1, 91M parameters",
    ),
    ModelInfo(
        "classic", "classic", NO_WEIGHTS, None, "n/a",
        note="GrabCut and graph segmentation (OpenCV, scikit-image); CPU only", uses_gpu=False,
    ),
    ModelInfo(
        "tiny", "sam1", BUILT, None, "n/a", random_weights=True,
        note="SAM 1 architecture with seeded random weights: pipeline tests only, masks are meaningless",
    ),
)  # fmt: skip

BY_NAME: dict[str, ModelInfo] = {info.name: info for info in MODELS}
MODEL_TYPES: tuple[str, ...] = (*BY_NAME, AUTO)  # what SAMDROP_MODEL_TYPE accepts
RECOMMENDED: str = next(info.name for info in MODELS if info.recommended)
DEPLOY_DEFAULT: str = next(info.name for info in MODELS if info.deploy_default)  # `samdrop deploy`'s

# File or folder names that say their type: Meta's SAM 1 files, SAM 2.1 repo / checkpoint names.
_NAME_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"sam2\.1[-_]hiera[-_]tiny"), "sam2.1_hiera_tiny"),
    (re.compile(r"sam2\.1[-_]hiera[-_]small"), "sam2.1_hiera_small"),
    (re.compile(r"sam2\.1[-_]hiera[-_]b(ase)?[-_+]?(plus|\+)"), "sam2.1_hiera_base_plus"),
    (re.compile(r"sam2\.1[-_]hiera[-_]large"), "sam2.1_hiera_large"),
    (re.compile(r"(^|[^a-z])sam3([^a-z0-9.]|$)"), "sam3"),
    (re.compile(r"vit_h"), "vit_h"),
    (re.compile(r"vit_l"), "vit_l"),
    (re.compile(r"vit_b"), "vit_b"),
)


# Each family's automatic-mask ``pred_iou_thresh`` when a request leaves it out (null): Meta's defaults
# for SamAutomaticMaskGenerator and SAM2AutomaticMaskGenerator.
PRED_IOU_THRESH: dict[str, float] = {"sam1": 0.88, "sam2.1": 0.8}


def amg_used(amg: dict[str, Any] | None, model_type: str) -> dict[str, Any] | None:
    """``amg`` as ``model_type`` runs it: a left-out ``pred_iou_thresh`` is its family's default (what
    ``masks.json`` records, never null where a threshold was applied)."""
    if amg is None or amg.get("pred_iou_thresh") is not None:
        return amg
    info = BY_NAME.get(model_type)
    default = PRED_IOU_THRESH.get(info.family) if info is not None else None
    return amg if default is None else {**amg, "pred_iou_thresh": default}


def model_info(name: str, *, where: str = "SAMDROP_MODEL_TYPE") -> ModelInfo:
    """The table entry of ``name``; an unknown name raises :class:`ConfigError` listing the valid ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ConfigError(unknown_type_message(name, where=where)) from None


def unknown_type_message(name: str, *, where: str = "SAMDROP_MODEL_TYPE", allow_auto: bool = True) -> str:
    """``WHERE 'x' is not a model type: choose one of …`` with every valid name and the recommended one."""
    valid = ", ".join(MODEL_TYPES if allow_auto else tuple(BY_NAME))
    return f"{where} {name!r} is not a model type: choose one of {valid} (recommended: {RECOMMENDED})"


def names(family: str | None = None, *, weights: str | None = None) -> tuple[str, ...]:
    """Model types in table order, optionally only one ``family`` or one ``weights`` kind."""
    return tuple(
        info.name
        for info in MODELS
        if (family is None or info.family == family) and (weights is None or info.weights == weights)
    )


def auto_candidates() -> tuple[str, ...]:
    """The types ``auto`` looks for in the cache, best first: newest family, then largest. Only
    types that make automatic masks (an upload without prompts asks for them)."""
    ranked = sorted(
        (info for info in MODELS if info.needs_weights and info.automatic),
        key=lambda info: FAMILIES.index(info.family),
    )
    return tuple(info.name for info in ranked)


def text_models() -> tuple[str, ...]:
    """The types that take text concepts (for the refusal of text sent to any other)."""
    return tuple(info.name for info in MODELS if info.text)


def text_refused(model_type: str) -> str:
    """Why ``model_type`` cannot answer a text prompt, and which types can."""
    return (
        f"model {model_type} takes points and boxes, not text: text concepts need "
        f"{' or '.join(text_models())} (SAMDROP_MODEL_TYPE)"
    )


def type_from_name(checkpoint: str) -> str | None:
    """The model type a checkpoint's file or folder name says (``…/sam_vit_b_01ec64.pth`` → ``vit_b``,
    ``facebook/sam2.1-hiera-tiny`` → ``sam2.1_hiera_tiny``), if any."""
    name = checkpoint.rstrip("/").rsplit("/", 1)[-1].lower()
    for pattern, model_type in _NAME_PATTERNS:
        if pattern.search(name):
            return model_type
    return None
