"""Weights in transformers' layout (SAM 2.1, SAM 3): ``config.json`` + ``model.safetensors``.

A checkpoint is one of

* nothing / ``auto`` — the type's Hugging Face repo (:data:`samdrop.models.MODELS`), fetched by
  ``huggingface_hub.snapshot_download`` into ``<SAMDROP_CACHE_DIR>/huggingface`` (its own cache:
  resumable, shared between processes). huggingface_hub reads ``HF_ENDPOINT`` (a mirror),
  ``HF_TOKEN`` (gated repos) and ``HF_HUB_OFFLINE`` itself;
* a local folder in that layout (what ``save_pretrained`` writes);
* a ``gs://`` folder in that layout, copied once into ``<cache>/checkpoints/<key>/``.

Only the files a model needs are fetched (Meta's repos also hold the original ``.pt``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from predictor import weights
from predictor.weights import DownloadError
from samdrop.errors import ConfigError
from samdrop.models import HF_REPO, ModelInfo

log = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "model.safetensors")
# Hiera backbones of Meta's SAM 2.1 checkpoints (width, blocks per stage): how ``auto`` tells the
# type of a save_pretrained folder whose name does not say it.
SAM2_BACKBONES: dict[tuple[int, tuple[int, ...]], str] = {
    (96, (1, 2, 7, 2)): "sam2.1_hiera_tiny",
    (96, (1, 2, 11, 2)): "sam2.1_hiera_small",
    (112, (2, 3, 16, 3)): "sam2.1_hiera_base_plus",
    (144, (2, 6, 36, 4)): "sam2.1_hiera_large",
}
ALLOW_PATTERNS = [
    "config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json",
    # SAM 3's text side: its tokenizer
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
]  # fmt: skip


def hf_description(
    info: ModelInfo, checkpoint: str | None, model_class: str, random_weights: bool
) -> dict[str, Any]:
    """The ``model`` record fields every transformers-backed engine shares: type, family,
    checkpoint, the backend that ran it, and the random-weights warning when it applies."""
    import transformers

    record: dict[str, Any] = {
        "type": info.name,
        "family": info.family,
        "checkpoint": checkpoint,
        "backend": f"transformers {transformers.__version__} {model_class}",
        "random_weights": random_weights,
    }
    if random_weights:
        record["note"] = "random weights: the masks are meaningless (testing only)"
    return record


def hub_cache(cache_dir: Path) -> Path:
    """huggingface_hub's cache folder inside samdrop's."""
    return cache_dir / "huggingface"


def resolve(info: ModelInfo, checkpoint: str | None, cache_dir: Path) -> Path:
    """A local folder holding ``info``'s weights for ``checkpoint`` (see the module docstring)."""
    if not checkpoint or checkpoint == "auto":
        return download(info, cache_dir)
    if checkpoint.startswith("gs://"):
        return fetch_gcs_folder(checkpoint, cache_dir)
    if checkpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"SAMDROP_CHECKPOINT={checkpoint}: {info.name} weights are a Hugging Face repo, a local folder "
            "or a gs:// folder (config.json + model.safetensors); for a mirror of the hub set HF_ENDPOINT"
        )
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return check_layout(path, checkpoint)
    raise ConfigError(
        f"checkpoint {checkpoint} does not exist (SAMDROP_CHECKPOINT / --checkpoint): {info.name} needs a "
        "folder with config.json and model.safetensors (as save_pretrained writes), or a gs:// folder"
    )


def cached(info: ModelInfo, cache_dir: Path) -> Path | None:
    """The cached snapshot of ``info``'s repo, if complete (no network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if info.weights != HF_REPO or info.source is None:
        return None
    try:
        path = Path(
            snapshot_download(
                info.source,
                cache_dir=hub_cache(cache_dir),
                allow_patterns=ALLOW_PATTERNS,
                local_files_only=True,
            )
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return path if all((path / name).is_file() for name in REQUIRED_FILES) else None


def download(info: ModelInfo, cache_dir: Path) -> Path:
    """``info``'s repo snapshot, fetched once into the hub cache; errors say what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    repo = info.source
    if info.weights != HF_REPO or repo is None:
        raise ConfigError(f"model type {info.name} has no Hugging Face repo")
    try:
        path = snapshot_download(repo, cache_dir=hub_cache(cache_dir), allow_patterns=ALLOW_PATTERNS)
    except GatedRepoError:
        raise DownloadError(gated_message(info)) from None
    except RepositoryNotFoundError:
        # The hub answers 401 "not found" for a gated repo asked without a token.
        raise DownloadError(
            gated_message(info) if info.gated else f"Hugging Face repo {repo} was not found at {_endpoint()}"
        ) from None
    except LocalEntryNotFoundError:
        raise DownloadError(offline_message(info, cache_dir)) from None
    except (HfHubHTTPError, OSError) as exc:
        raise DownloadError(
            f"downloading {repo} from {_endpoint()} failed ({type(exc).__name__}: {exc}); "
            f"{offline_message(info, cache_dir)}"
        ) from None
    log.info("%s weights %s cached at %s", info.name, repo, path)
    return check_layout(Path(path), repo)


def gated_message(info: ModelInfo) -> str:
    return (
        f"{info.source} is gated: accept its licence at {info.source_url} with your Hugging Face account, "
        "then set HF_TOKEN to an access token of that account (https://huggingface.co/settings/tokens)"
    )


def offline_message(info: ModelInfo, cache_dir: Path) -> str:
    return (
        f"{info.name} weights ({info.source}) are not in {hub_cache(cache_dir)} and the hub at "
        f"{_endpoint()} cannot be reached (or HF_HUB_OFFLINE is set): run `samdrop models pull {info.name}` "
        "where it can, set HF_ENDPOINT to a mirror, or SAMDROP_CHECKPOINT to a save_pretrained folder"
    )


def type_of_folder(path: Path) -> str | None:
    """The SAM 2.1 type whose backbone ``path/config.json`` describes, if it is one of Meta's."""
    try:
        config = json.loads((path / "config.json").read_text())
        backbone = config["vision_config"]["backbone_config"]
        key = (int(backbone["hidden_size"]), tuple(int(n) for n in backbone["blocks_per_stage"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return SAM2_BACKBONES.get(key) if config.get("model_type") == "sam2" else None


def check_layout(path: Path, where: str) -> Path:
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ConfigError(
            f"checkpoint {where} lacks {', '.join(missing)}: a SAM 2.1 checkpoint is a folder with "
            "config.json and model.safetensors, as transformers' save_pretrained writes"
        )
    return path


def fetch_gcs_folder(uri: str, cache_dir: Path) -> Path:
    """Every file directly under the ``gs://`` folder ``uri``, copied once into the cache."""
    import google.cloud.storage as storage

    folder = uri.rstrip("/") + "/"
    target = cache_dir / "checkpoints" / hashlib.sha256(folder.encode()).hexdigest()[:16]
    done = target / ".complete"
    if done.is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with weights.lock(target / "folder"):
        if done.is_file():
            return target
        bucket_name, _, prefix = folder.removeprefix("gs://").partition("/")
        blobs = storage.Client().list_blobs(bucket_name, prefix=prefix, delimiter="/", timeout=60)
        names = [blob.name for blob in blobs if not blob.name.endswith("/")]
        files = [name.rsplit("/", 1)[-1] for name in names]
        if not set(REQUIRED_FILES) <= set(files):
            raise ConfigError(
                f"{folder} holds {files or 'nothing'}: a SAM 2.1 checkpoint folder needs config.json and "
                "model.safetensors (upload what save_pretrained writes)"
            )
        for name, file in zip(names, files, strict=True):
            part = target / (file + ".part")
            weights.fetch_gcs(f"gs://{bucket_name}/{name}", part)
            os.replace(part, target / file)
        done.touch()
    log.info("checkpoint folder %s cached at %s", folder, target)
    return target


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)
